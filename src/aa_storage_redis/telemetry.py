"""OpenTelemetry traces and metrics for the driver, at no cost while nobody listens.

Only this module imports ``opentelemetry`` (``opentelemetry-api``, installed by
the ``otel`` extra). Telemetry follows the API's global providers. While no
SDK stands behind them (or without the API, or with ``telemetry = false``), a
store operation costs one method call and one clock read more, and nothing is
built; a provider set later is picked up within :data:`LOOK_INTERVAL_SECS`.

With a tracer provider, each store operation that does I/O gets one span of
kind CLIENT, started as the operation starts but only once it sends something,
so a near-cache hit makes none. With a meter provider, the duration of each
such operation is recorded, and the counts of ``stats()`` are observed.
Which operation is under way is kept in a context variable, so the executor
below the stores can add the node, the commands and the events to its span.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import logging
import time
from collections.abc import Callable, Coroutine, Mapping
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from aa_storage_redis.operation import Operation
    from aa_storage_redis.stats import ExecutorStats

try:
    from opentelemetry import metrics, trace
except ImportError:  # the otel extra is not installed: telemetry stays off
    API = False
else:
    API = True

logger = logging.getLogger("aa_storage_redis")

LOOK_INTERVAL_SECS = 1.0
"""How often, at most, an operation looks for an SDK behind the global providers
while none is found."""

SCOPE = "aa_storage_redis"
"""The instrumentation scope: the tracer's and the meter's name."""

DURATION_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25)
"""Bucket bounds of ``db.client.operation.duration``, in seconds: finer than the
conventions' advice below a millisecond, where a Redis call on a LAN lies."""

_OPERATION: contextvars.ContextVar[Operation | None] = contextvars.ContextVar(
    "aa_storage_redis_operation", default=None
)


class Telemetry:
    """The tracer and instruments of one backend, built once an SDK is found.

    ``on`` is true once a tracer or meter provider from an SDK was found;
    :meth:`wanted` keeps it current. ``stats`` is read when metrics are
    collected (the backend points it at its own ``stats``).
    """

    def __init__(self, *, enabled: bool, pool_name: str, namespace: str) -> None:
        self.enabled = enabled and API
        self.pool_name = pool_name
        """``db.client.connection.pool.name``: tells apart the backends of a process."""
        self.namespace = namespace
        """``db.namespace``: the database index."""
        self.on = False
        self.tracer: Any = None
        self.duration: Any = None
        self.stats: Callable[[], ExecutorStats] | None = None
        self._operation: type[Operation] | None = None
        self._complete = False  # both providers found: nothing left to look for
        self._next_look = 0.0

    def wanted(self) -> bool:
        """Whether operations are observed: an SDK stands behind a global provider."""
        if self._complete:
            return True
        if not self.enabled:
            return False
        now = time.monotonic()
        if now >= self._next_look:
            self._next_look = now + LOOK_INTERVAL_SECS
            self._look()
        return self.on

    def state(self) -> str:
        """What telemetry does, as ``check`` shows it."""
        if not API:
            return "off: opentelemetry-api is not installed (pip install 'aa-storage[otel]')"
        if not self.enabled:
            return "off: telemetry = false"
        self._look()
        kinds = [
            kind
            for kind, built in (("traces", self.tracer), ("metrics", self.duration))
            if built is not None
        ]
        if not kinds:
            return "on, but no SDK is set up behind the OpenTelemetry API: nothing is emitted"
        return f"on: {' and '.join(kinds)}"

    def _look(self) -> None:
        # Imported here: they need the API, and are only needed once an SDK is found.
        from aa_storage_redis import gauges
        from aa_storage_redis.operation import Operation

        self._operation = Operation
        tracer_provider, meter_provider = global_providers()
        if self.tracer is None and _from_sdk(tracer_provider):
            self.tracer = tracer_provider.get_tracer(SCOPE, _version())
        if self.duration is None and _from_sdk(meter_provider):
            self._instrument(meter_provider, gauges.instrument)
        self.on = self.tracer is not None or self.duration is not None
        self._complete = self.tracer is not None and self.duration is not None

    def _instrument(
        self,
        provider: metrics.MeterProvider,
        observe: Callable[[metrics.Meter, Telemetry], None],
    ) -> None:
        # A meter of its own per backend (told apart by the pool's name), since a
        # meter keeps the first callbacks given for an instrument's name.
        meter = provider.get_meter(
            SCOPE, _version(), attributes={"db.client.connection.pool.name": self.pool_name}
        )
        self.duration = meter.create_histogram(
            "db.client.operation.duration",
            unit="s",
            description="Duration of store operations that did I/O",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
        )
        observe(meter, self)

    def operation(self, name: str) -> AbstractContextManager[object]:
        """The store operation ``name``, observed while the block runs; within another
        one (``get_or_load`` reading first), part of that one. Not observed, a shared
        context manager that does nothing."""
        if not self.wanted() or _OPERATION.get() is not None:
            return _UNOBSERVED
        assert self._operation is not None  # set by the look that found an SDK
        return self._operation(_OPERATION, name, self.tracer, self.duration, self.namespace)


_UNOBSERVED = contextlib.nullcontext()


def global_providers() -> tuple[trace.TracerProvider, metrics.MeterProvider]:
    """The API's global tracer and meter providers, which telemetry follows."""
    return trace.get_tracer_provider(), metrics.get_meter_provider()


def current() -> Operation | None:
    """The store operation under way in this context, when it is observed."""
    return _OPERATION.get()


def note(name: str, attributes: Mapping[str, str | int] | None = None) -> None:
    """Add a span event to the operation under way, if it is traced."""
    operation = _OPERATION.get()
    if operation is not None:
        operation.event(name, attributes)


def log_fields() -> dict[str, object]:
    """The trace context of the operation under way (else of the current span), in
    the fields opentelemetry-instrumentation-logging gives records; zeros outside one."""
    fields: dict[str, object] = {"otelTraceID": "0", "otelSpanID": "0", "otelTraceSampled": False}
    if not API:
        return fields
    operation = _OPERATION.get()
    span = operation.span if operation is not None and operation.span is not None else None
    context = (span or trace.get_current_span()).get_span_context()
    if context.is_valid:
        fields["otelTraceID"] = format(context.trace_id, "032x")
        fields["otelSpanID"] = format(context.span_id, "016x")
        fields["otelTraceSampled"] = context.trace_flags.sampled
    return fields


def log_in_context(emit: Callable[[], None]) -> None:
    """Run ``emit`` (a log call) with the operation's span current, so an SDK's
    logging handler ties the record to it too."""
    operation = _OPERATION.get()
    if not API or operation is None or operation.span is None:
        emit()
        return
    with trace.use_span(operation.span, end_on_exit=False):
        emit()


_R = TypeVar("_R")


def detached(coroutine: Coroutine[Any, Any, _R]) -> asyncio.Task[_R]:
    """A background task on the running loop, with an empty context: the caller whose
    call happened to start it is not its operation, so nothing it logs or sends
    later is put down to that caller's trace."""
    return asyncio.get_running_loop().create_task(coroutine, context=contextvars.Context())


def _from_sdk(provider: object) -> bool:
    # The API's own providers (the proxy and the no-op ones) live in its modules;
    # any other provider is an SDK's.
    module = type(provider).__module__
    return not module.startswith(("opentelemetry.trace", "opentelemetry.metrics"))


@functools.cache
def _version() -> str:
    from importlib.metadata import version

    return version("aa-storage")

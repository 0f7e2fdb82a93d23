"""One store operation under way, as telemetry sees it: its span and its duration.

Its span starts when the operation does, but is made only at its first I/O (or
first event), so an operation that sends nothing (a near-cache hit) has none.
Its server is the node it last sent to. Imported only once an SDK is found.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from collections.abc import Mapping
from types import TracebackType
from typing import Any

from opentelemetry import trace

from aa_storage import NotFoundError

logger = logging.getLogger("aa_storage_redis")


class Operation:
    """A context manager: the operation ``name`` is under way (in ``variable``) while
    its block runs; on leaving it, its span ends and its duration is recorded."""

    __slots__ = (
        "address",
        "batch_size",
        "commands",
        "duration",
        "name",
        "namespace",
        "port",
        "span",
        "started_ns",
        "status_code",
        "token",
        "tracer",
        "variable",
    )

    def __init__(
        self,
        variable: contextvars.ContextVar[Operation | None],
        name: str,
        tracer: Any,
        duration: Any,
        namespace: str,
    ) -> None:
        self.variable = variable
        self.name = name
        self.tracer = tracer
        """The tracer, or ``None`` when only metrics are wanted."""
        self.duration = duration
        """The ``db.client.operation.duration`` histogram, or ``None``."""
        self.namespace = namespace
        self.started_ns = 0
        self.token: contextvars.Token[Operation | None] | None = None
        self.span: Any = None
        self.address: str | None = None
        self.port = 0
        self.commands: list[str] = []
        self.status_code: str | None = None
        """The server's error prefix when it refused the last command."""
        self.batch_size = 0

    def __enter__(self) -> Operation:
        self.started_ns = time.time_ns()
        self.token = self.variable.set(self)
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        assert self.token is not None
        self.variable.reset(self.token)
        try:
            self._finish(exc)
        except Exception:  # an SDK's failure must not become the caller's
            logger.exception("recording telemetry of %s failed", self.name)

    def sent(self, node: str, command: str) -> None:
        """A command goes to ``node`` (``host:port``)."""
        host, _, port = node.rpartition(":")
        address, number = host.strip("[]"), int(port)
        moved = address != self.address or number != self.port
        self.address, self.port = address, number
        if command not in self.commands:
            self.commands.append(command)
        span = self.span
        if span is None:
            self._start()  # with every attribute known so far: the SDK cleans each it is given
        elif moved:
            span.set_attributes({"server.address": address, "server.port": number})

    def event(self, name: str, attributes: Mapping[str, str | int] | None = None) -> None:
        """A span event: a retry, a redirect, a lease wait, a failover hold..."""
        span = self.span or self._start()
        if span is not None:
            span.add_event(name, attributes)

    def _start(self) -> Any:
        if self.tracer is None:
            return None
        attributes = self._attributes()
        if self.commands:
            attributes["db.query.summary"] = self.commands[0]
        self.span = self.tracer.start_span(
            self.name, kind=trace.SpanKind.CLIENT, attributes=attributes, start_time=self.started_ns
        )
        return self.span

    def _attributes(self) -> dict[str, str | int]:
        attributes: dict[str, str | int] = {
            "db.system.name": "redis",
            "db.operation.name": self.name,
            "db.namespace": self.namespace,
        }
        if self.address is not None:
            attributes["server.address"] = self.address
            attributes["server.port"] = self.port
        return attributes

    def _finish(self, exc: BaseException | None) -> None:
        if self.address is None and self.span is None:
            return  # no I/O (a near-cache hit): nothing to show
        ended_ns = time.time_ns()
        outcome: dict[str, str | int] = {}
        if (error_type := _error_type(exc, self.status_code)) is not None:
            outcome["error.type"] = error_type
            if self.status_code is not None:
                outcome["db.response.status_code"] = self.status_code
        if self.duration is not None and self.address is not None:
            self.duration.record((ended_ns - self.started_ns) / 1e9, self._attributes() | outcome)
        span = self.span
        if span is None:
            return
        if len(self.commands) > 1:
            outcome["db.query.summary"] = "; ".join(self.commands)
        if self.batch_size:
            outcome["db.operation.batch.size"] = self.batch_size
        if self.address is not None and "server.address" not in span.attributes:
            outcome.update(self._attributes())  # an event came before the first command
        if outcome:
            span.set_attributes(outcome)
        if error_type is not None:
            span.set_status(trace.StatusCode.ERROR, f"{type(exc).__name__}: {exc}")
        span.end(end_time=ended_ns)


def _error_type(exc: BaseException | None, status_code: str | None) -> str | None:
    """``error.type`` of an operation's outcome: the server's error prefix when it
    refused the command, else the exception's class; a miss is no error."""
    if exc is None or isinstance(exc, NotFoundError):
        return None
    if isinstance(exc, asyncio.CancelledError):
        return "cancelled"
    if status_code is not None:
        return status_code
    return f"{type(exc).__module__}.{type(exc).__qualname__}"

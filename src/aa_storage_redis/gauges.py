"""The counts of ``stats()`` as OpenSource instruments, observed when the meter collects.

Reading them costs the hot path nothing: each collection takes one snapshot
per instrument. A backend that is gone observes nothing.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterable
from typing import Protocol

import attrs
from opentelemetry import metrics

from aa_storage_redis.stats import EVENT_COUNTS, ExecutorStats


class Source(Protocol):
    """What the instruments read: a backend's telemetry."""

    pool_name: str
    stats: Callable[[], ExecutorStats] | None


@attrs.frozen
class Gauge:
    """A count of ``stats()`` (the field ``stat``) that the meter observes; ``kind``
    names the ``create_observable_*`` method that makes its instrument."""

    name: str
    stat: str
    kind: str
    unit: str
    description: str


GAUGES = (
    Gauge(
        "aa_storage.redis.connections.open",
        "connections_open",
        "up_down_counter",
        "{connection}",
        "Connections open now",
    ),
    Gauge(
        "db.client.connection.pending_requests",
        "pending",
        "up_down_counter",
        "{request}",
        "Commands queued or awaiting their reply",
    ),
    Gauge(
        "aa_storage.redis.reconnects",
        "reconnects",
        "counter",
        "{connection}",
        "Connections opened to replace one that failed",
    ),
    Gauge(
        "aa_storage.redis.retries",
        "retries",
        "counter",
        "{command}",
        "Commands sent again after a connection error",
    ),
    Gauge(
        "aa_storage.redis.redirects",
        "redirects",
        "counter",
        "{command}",
        "MOVED, ASK and not-ready replies followed",
    ),
    Gauge(
        "aa_storage.redis.failovers",
        "failovers",
        "counter",
        "{failover}",
        "Primaries replaced by the sentinels",
    ),
    Gauge(
        "aa_storage.redis.near_cache.hits",
        "near_cache_hits",
        "counter",
        "{read}",
        "Policy reads answered in process",
    ),
    Gauge(
        "aa_storage.redis.near_cache.misses",
        "near_cache_misses",
        "counter",
        "{read}",
        "Policy reads the near-cache could not answer",
    ),
    Gauge(
        "aa_storage.redis.near_cache.flushes",
        "near_cache_flushes",
        "counter",
        "{flush}",
        "Times the near-cache was emptied",
    ),
    Gauge(
        "aa_storage.redis.lease_waits",
        "lease_waits",
        "counter",
        "{call}",
        "get_or_load calls that waited for another caller's load",
    ),
    Gauge(
        "aa_storage.redis.loads",
        "loads_run",
        "counter",
        "{load}",
        "Loaders run by this process",
    ),
)
"""The observed counts, each named after the ``stats()`` field it reads; every
observation carries ``db.system.name`` and ``db.client.connection.pool.name``."""


def instrument(meter: metrics.Meter, telemetry: Source) -> None:
    """Create the observed instruments on ``meter``, each reading ``telemetry.stats``;
    every observation carries ``db.system.name`` and ``db.client.connection.pool.name``."""
    owner = weakref.ref(telemetry)  # the meter provider must not keep a backend alive
    for gauge in GAUGES:
        create = getattr(meter, f"create_observable_{gauge.kind}")
        create(
            gauge.name,
            callbacks=[_observer(owner, gauge)],
            unit=gauge.unit,
            description=gauge.description,
        )
    meter.create_observable_counter(
        "aa_storage.redis.events",
        callbacks=[_events(owner)],
        unit="{event}",
        description="The driver's events (see aa_storage_redis.events), by aa_storage.event",
    )


_Callback = Callable[[metrics.CallbackOptions], Iterable[metrics.Observation]]


def _observer(owner: weakref.ref[Source], gauge: Gauge) -> _Callback:
    def observe(options: metrics.CallbackOptions) -> Iterable[metrics.Observation]:
        telemetry = owner()
        if telemetry is None or telemetry.stats is None:
            return ()
        value = getattr(telemetry.stats(), gauge.stat)
        return (metrics.Observation(value, _attributes(telemetry)),)

    return observe


def _events(owner: weakref.ref[Source]) -> _Callback:
    def observe(options: metrics.CallbackOptions) -> Iterable[metrics.Observation]:
        telemetry = owner()
        if telemetry is None or telemetry.stats is None:
            return ()
        stats = telemetry.stats()
        return tuple(
            metrics.Observation(
                getattr(stats, event), {**_attributes(telemetry), "aa_storage.event": event}
            )
            for event in EVENT_COUNTS
        )

    return observe


def _attributes(telemetry: Source) -> dict[str, str]:
    return {"db.system.name": "redis", "db.client.connection.pool.name": telemetry.pool_name}

"""The driver's events: what an operator is told of, as log records and as counts.

Each event is a ``WARNING`` record on its logger, counted in ``stats()`` under
the event's name, and, when it happens during a store operation, a span event
of that operation. Every record carries ``aa_storage_event`` (the name) and
the trace context in the fields opentelemetry-instrumentation-logging uses:
``otelTraceID``, ``otelSpanID`` and ``otelTraceSampled``; an event seen in the
background (a socket's callback, a sentinel watcher) belongs to no operation
and carries zeros.

==================  ===============================  ==============================
event               logger                           when
==================  ===============================  ==============================
connections_lost    aa_storage_redis.connection      an open connection failed or
                                                     timed out; its calls failed
failover_holds      aa_storage_redis.failover        sentinels began a failover:
                                                     calls wait for its end
failovers           aa_storage_redis.failover        the sentinels named another
                                                     primary
slot_map_changes    aa_storage_redis.cluster         a cluster slot changed owner
tracking_lost       aa_storage_redis.tracking        the near-cache lost its
                                                     invalidations, and is bypassed
tracking_restored   aa_storage_redis.tracking        they are back: the near-cache
                                                     serves again
==================  ===============================  ==============================
"""

from __future__ import annotations

import logging

import attrs

from aa_storage_redis.stats import EVENT_COUNTS, Counters
from aa_storage_redis.telemetry import log_fields, log_in_context, note


@attrs.frozen
class Event:
    """A kind of event: its name (the ``stats()`` field that counts it) and logger."""

    name: str = attrs.field(validator=attrs.validators.in_(EVENT_COUNTS))
    logger: logging.Logger


CONNECTION_LOST = Event("connections_lost", logging.getLogger("aa_storage_redis.connection"))
FAILOVER_HOLD = Event("failover_holds", logging.getLogger("aa_storage_redis.failover"))
FAILOVER = Event("failovers", logging.getLogger("aa_storage_redis.failover"))
SLOT_MAP_CHANGED = Event("slot_map_changes", logging.getLogger("aa_storage_redis.cluster"))
TRACKING_LOST = Event("tracking_lost", logging.getLogger("aa_storage_redis.tracking"))
TRACKING_RESTORED = Event("tracking_restored", logging.getLogger("aa_storage_redis.tracking"))

EVENTS = (
    CONNECTION_LOST,
    FAILOVER_HOLD,
    FAILOVER,
    SLOT_MAP_CHANGED,
    TRACKING_LOST,
    TRACKING_RESTORED,
)


def happened(event: Event, counters: Counters, message: str, *args: object) -> None:
    """Count ``event``, log ``message % args`` for it, and add it to the span of the
    operation under way, if any."""
    setattr(counters, event.name, getattr(counters, event.name) + 1)
    note(event.name)
    if event.logger.isEnabledFor(logging.WARNING):
        extra = {"aa_storage_event": event.name, **log_fields()}
        log_in_context(lambda: event.logger.warning(message, *args, extra=extra))

"""What the execution core has done: plain counters, bumped on the hot path, read at any time."""

from __future__ import annotations

from collections.abc import Iterable

import attrs


@attrs.frozen
class ExecutorStats:
    """A snapshot of one backend's counters since it was built.

    ``socket_writes`` below ``commands_sent`` is auto-pipelining at work: each
    write carried ``mean_commands_per_write`` commands. ``reconnects`` counts
    connections opened to replace one that failed; ``timeouts`` counts
    connections closed because the server did not answer in time.
    ``pending`` is the commands queued or awaiting a reply right now, and
    ``peak_pending`` its highest value. With ``near_cache`` on,
    ``near_cache_hits`` counts policy reads answered in process (no I/O),
    ``near_cache_misses`` the others, and ``near_cache_flushes`` how often
    the near-cache was emptied (tracking lost, topology changed, FLUSHDB).

    ``connections_open`` is the connections open right now. ``retries``
    counts commands sent again after a connection error, ``redirects`` the
    MOVED, ASK and not-ready replies followed. ``lease_waits`` counts
    ``get_or_load`` calls that waited for another caller's load, and
    ``loads_run`` the loaders this process ran. The driver's events count
    their log records (see :mod:`aa_storage_redis.events`):
    ``connections_lost``, ``failover_holds``, ``failovers``,
    ``slot_map_changes``, ``tracking_lost`` and ``tracking_restored``.
    """

    commands_sent: int
    socket_writes: int
    max_commands_per_write: int
    connections_opened: int
    reconnects: int
    timeouts: int
    pending: int
    peak_pending: int
    connections_open: int = 0
    retries: int = 0
    redirects: int = 0
    lease_waits: int = 0
    loads_run: int = 0
    connections_lost: int = 0
    failover_holds: int = 0
    failovers: int = 0
    slot_map_changes: int = 0
    tracking_lost: int = 0
    tracking_restored: int = 0
    near_cache_hits: int = 0
    near_cache_misses: int = 0
    near_cache_flushes: int = 0

    @property
    def mean_commands_per_write(self) -> float:
        """Commands per socket write; 0.0 before the first write."""
        return self.commands_sent / self.socket_writes if self.socket_writes else 0.0


EVENT_COUNTS = (
    "connections_lost",
    "failover_holds",
    "failovers",
    "slot_map_changes",
    "tracking_lost",
    "tracking_restored",
)
"""The fields of :class:`ExecutorStats` that count the driver's events, one per kind
(see :mod:`aa_storage_redis.events`)."""


@attrs.define
class Counters:
    """The mutable counters behind :class:`ExecutorStats`.

    Only the event loop's thread touches them, so plain integers need no lock.
    """

    commands_sent: int = 0
    socket_writes: int = 0
    max_commands_per_write: int = 0
    connections_opened: int = 0
    reconnects: int = 0
    timeouts: int = 0
    pending: int = 0
    peak_pending: int = 0
    connections_open: int = 0
    retries: int = 0
    redirects: int = 0
    lease_waits: int = 0
    loads_run: int = 0
    connections_lost: int = 0
    failover_holds: int = 0
    failovers: int = 0
    slot_map_changes: int = 0
    tracking_lost: int = 0
    tracking_restored: int = 0

    def wrote(self, commands: int) -> None:
        """One socket write carried ``commands`` commands."""
        self.commands_sent += commands
        self.socket_writes += 1
        self.max_commands_per_write = max(self.max_commands_per_write, commands)

    def add(self, other: Counters) -> None:
        """Fold ``other``'s counts into these; the maxima stay maxima."""
        for field in attrs.fields(Counters):
            mine, theirs = getattr(self, field.name), getattr(other, field.name)
            merged = (
                max(mine, theirs) if field.name.startswith(("max_", "peak_")) else mine + theirs
            )
            setattr(self, field.name, merged)

    def snapshot(self) -> ExecutorStats:
        return ExecutorStats(**attrs.asdict(self))


def sum_counters(counters: Iterable[Counters]) -> ExecutorStats:
    """One snapshot of several nodes' counters: sums, and the largest maxima."""
    total = Counters()
    for each in counters:
        total.add(each)
    return total.snapshot()

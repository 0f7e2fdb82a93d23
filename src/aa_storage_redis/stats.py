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
    """

    commands_sent: int
    socket_writes: int
    max_commands_per_write: int
    connections_opened: int
    reconnects: int
    timeouts: int
    pending: int
    peak_pending: int
    near_cache_hits: int = 0
    near_cache_misses: int = 0
    near_cache_flushes: int = 0

    @property
    def mean_commands_per_write(self) -> float:
        """Commands per socket write; 0.0 before the first write."""
        return self.commands_sent / self.socket_writes if self.socket_writes else 0.0


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
        return ExecutorStats(
            commands_sent=self.commands_sent,
            socket_writes=self.socket_writes,
            max_commands_per_write=self.max_commands_per_write,
            connections_opened=self.connections_opened,
            reconnects=self.reconnects,
            timeouts=self.timeouts,
            pending=self.pending,
            peak_pending=self.peak_pending,
        )


def sum_counters(counters: Iterable[Counters]) -> ExecutorStats:
    """One snapshot of several nodes' counters: sums, and the largest maxima."""
    total = Counters()
    for each in counters:
        total.add(each)
    return total.snapshot()

"""The near-cache: decoded policies held in process, kept only while the server's
invalidations are heard.

It does no I/O itself. The policy store asks :meth:`NearCache.lookup` first;
on a miss while tracking is up it hands :meth:`NearCache.fill` the read to
make (which runs it between :meth:`NearCache.begin_fill` and
:meth:`NearCache.finish_fill`). The tracker (``tracking.py``) feeds it the
server's invalidations, and :meth:`NearCache.suspend` /
:meth:`NearCache.resume` as tracking is lost and regained.

What a caller can rely on:

- A hit returns an entry whose key's Redis TTL has not run out by the local
  monotonic clock, counted from before the read that filled it was sent.
- Nothing is served or filled while tracking is down: every lookup misses.
- A fill is stored only if no invalidation of its key, no flush and no
  suspension happened between its ``begin_fill`` and its ``finish_fill``, so
  a read that raced a change never caches the value from before it.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable

import attrs

from aa_storage import AgentId, PolicyDocument


@attrs.define(eq=False)
class Fill:
    """One read in flight whose result may be cached; see :meth:`NearCache.begin_fill`."""

    agent: bytes
    epoch: int
    sent_at: float
    """The monotonic clock before the read was sent: the entry's TTL counts from here."""
    void: bool = False


@attrs.define
class NearCache:
    """An LRU of at most ``size`` policies, each with a deadline; see the module doc.

    Only the event loop's thread touches it, so it needs no lock.
    """

    size: int
    clock: Callable[[], float] = time.monotonic
    wake: Callable[[], None] = lambda: None
    """Called when a lookup finds tracking down: the tracker starts, if it has not."""
    hits: int = 0
    misses: int = 0
    flushes: int = 0
    live: bool = attrs.field(default=False, init=False)
    """Whether tracking is up on every primary, so entries may be served and filled."""
    _entries: OrderedDict[bytes, tuple[PolicyDocument, float]] = attrs.field(
        factory=OrderedDict, init=False, repr=False
    )
    _fills: dict[bytes, set[Fill]] = attrs.field(factory=dict, init=False, repr=False)
    _epoch: int = attrs.field(default=0, init=False, repr=False)

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(self, agent_id: AgentId) -> PolicyDocument | None:
        """The cached policy, or ``None`` on a miss (always while tracking is down)."""
        entry = self._entries.get(agent_id.bytes)
        if entry is not None:
            policy, deadline = entry
            if self.clock() < deadline:
                self._entries.move_to_end(agent_id.bytes)
                self.hits += 1
                return policy
            del self._entries[agent_id.bytes]
        self.misses += 1
        if not self.live:
            self.wake()
        return None

    async def fill(
        self, agent_id: AgentId, read: Callable[[], Awaitable[tuple[PolicyDocument, int]]]
    ) -> PolicyDocument:
        """The policy ``read()`` returns with its key's TTL in ms (``-1``: none),
        cached unless an invalidation, a flush or a suspension came while it was in
        flight (or tracking is down). Whatever ``read()`` raises is raised, and
        nothing is cached."""
        fill = self.begin_fill(agent_id)
        try:
            policy, ttl_ms = await read()
        except BaseException:
            if fill is not None:
                self.abandon_fill(fill)
            raise
        if fill is not None:
            self.finish_fill(fill, policy, ttl_ms)
        return policy

    def begin_fill(self, agent_id: AgentId) -> Fill | None:
        """Register a read of ``agent_id`` about to be sent; ``None`` when tracking is
        down, and the result must not be cached. End it with :meth:`finish_fill` or
        :meth:`abandon_fill`."""
        if not self.live:
            return None
        fill = Fill(agent_id.bytes, self._epoch, self.clock())
        self._fills.setdefault(fill.agent, set()).add(fill)
        return fill

    def finish_fill(self, fill: Fill, policy: PolicyDocument, ttl_ms: int) -> bool:
        """Cache ``policy`` for ``ttl_ms`` from ``fill.sent_at`` (``-1``: the key has no
        expiry) unless the fill was voided; returns whether it was cached."""
        self.abandon_fill(fill)
        if fill.void or fill.epoch != self._epoch or not self.live or ttl_ms == 0:
            return False
        deadline = math.inf if ttl_ms < 0 else fill.sent_at + ttl_ms / 1000
        self._entries[fill.agent] = (policy, deadline)
        self._entries.move_to_end(fill.agent)
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)
        return True

    def abandon_fill(self, fill: Fill) -> None:
        """The read failed or found nothing: forget the fill, cache nothing."""
        waiting = self._fills.get(fill.agent)
        if waiting is not None:
            waiting.discard(fill)
            if not waiting:
                del self._fills[fill.agent]

    def forget(self, agent_id: AgentId) -> None:
        """Drop ``agent_id``'s entry and void its fills in flight: this process changed it."""
        self.invalidate(agent_id.bytes)

    def invalidate(self, agent: bytes) -> None:
        """The server says the policy of the agent with these 16 bytes changed."""
        self._entries.pop(agent, None)
        for fill in self._fills.get(agent, ()):
            fill.void = True

    def flush(self) -> None:
        """Drop every entry and void every fill in flight."""
        self._entries.clear()
        self._epoch += 1
        self.flushes += 1

    def suspend(self) -> None:
        """Tracking is lost, or the topology changed: flush, and serve nothing until
        :meth:`resume`."""
        if self.live:
            self.flush()
        self.live = False

    def resume(self) -> None:
        """Tracking is up on every primary again: serve and fill from now on."""
        self.live = True

"""Redis Cluster: each key goes to the primary that owns its slot."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from typing import Any

from redis import exceptions as redis_errors
from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot

from aa_storage_redis.events import SLOT_MAP_CHANGED, happened
from aa_storage_redis.node import Node
from aa_storage_redis.stats import Counters
from aa_storage_redis.telemetry import detached
from aa_storage_redis.topology import (
    Address,
    Facts,
    NodeFactory,
    Nodes,
    Observed,
    Redirect,
    ask,
    not_ready,
)

logger = logging.getLogger("aa_storage_redis")

#: Least time between two reads of the slot map by one client, however many callers
#: want one: a cluster in trouble is not also flooded with CLUSTER SLOTS.
REFRESH_INTERVAL_SECS = 0.25
# How long one node has to answer CLUSTER SLOTS before the next is asked as well.
_STAGGER_SECS = 0.1


class Cluster(Observed):
    """A Redis Cluster: each key goes to the primary that owns its slot.

    The slot map comes from ``CLUSTER SLOTS``, asked of the known primaries and
    the seeds in turn, the next one as soon as one fails or is slow to answer;
    the first answer wins. Reads of the map are shared by
    every caller that needs one and come at most every
    :data:`REFRESH_INTERVAL_SECS`. ``MOVED`` updates one slot at once and the whole
    map soon after; ``ASK`` sends one command elsewhere and changes nothing; a
    failed node makes the commands for its slots wait for a fresh map. A slot no
    primary serves is read again, at that pace, until the caller's deadline.
    The primaries are exactly the nodes the map names, so an observer always sees
    every node that serves a slot.
    """

    def __init__(
        self, seeds: Iterable[Address], node_at: NodeFactory, *, counters: Counters | None = None
    ) -> None:
        super().__init__()
        self._counters = counters or Counters()
        self._seeds = tuple(seeds)
        self._nodes = Nodes(node_at)
        self._slots: list[Node | None] = [None] * REDIS_CLUSTER_HASH_SLOTS
        self._primaries: tuple[Node, ...] = ()
        self._refresh: asyncio.Task[None] | None = None
        self._refreshed_at: float | None = None  # when the last read of the map ended

    def node_for(self, key: bytes | None) -> Node | None:
        if key is None:
            return self._primaries[0] if self._primaries else None
        return self._slots[key_slot(key)]

    async def route(self, key: bytes | None, deadline: float) -> Node:
        """Read the map until it names a primary for ``key``; a slot it leaves
        uncovered is read again (at most every :data:`REFRESH_INTERVAL_SECS`) until
        ``deadline``, then raises ``ClusterDownError`` naming the slot."""
        loop = asyncio.get_running_loop()
        while (node := self.node_for(key)) is None:
            try:
                async with asyncio.timeout_at(deadline):
                    await self._read_map()
            except TimeoutError:
                pass
            if (node := self.node_for(key)) is not None:
                return node
            if loop.time() >= deadline:
                what = "no slot is" if key is None else f"slot {key_slot(key)} is"
                raise redis_errors.ClusterDownError(
                    f"{what} served by any primary of the cluster, by the slot map it gave"
                )
        return node

    def redirected(self, error: redis_errors.RedisError, node: Node) -> Redirect | None:
        if isinstance(error, redis_errors.MovedError):
            self._move(error.slot_id, (error.host, int(error.port)))
            return Redirect()
        if isinstance(error, redis_errors.AskError):
            # One command, during a migration: the map stays as it is.
            return Redirect(node=self.node((error.host, int(error.port))), asking=True)
        if isinstance(error, redis_errors.TryAgainError | redis_errors.ClusterDownError):
            # CLUSTERDOWN may mean the slot lost its primary: read the map again.
            self._refresh_soon()
            return Redirect(busy=True)
        if isinstance(error, redis_errors.ReadOnlyError):
            self.failed(node)  # a demoted primary: its slots went to another
            return Redirect(busy=True)
        return not_ready(error)

    def node(self, address: Address) -> Node:
        """The node at ``address``, opened on first use."""
        return self._nodes.at(address)

    def failed(self, node: Node) -> None:
        # Until a new map arrives, commands for the lost node's slots wait for it.
        if node in self._primaries:
            self._set_slots([None if owner is node else owner for owner in self._slots])
        self._refresh_soon()

    def primaries(self) -> tuple[Address, ...]:
        return tuple(address for address, node in self._nodes.items() if node in self._primaries)

    def nodes(self) -> Iterable[Node]:
        return tuple(self._nodes.values())

    async def describe(self) -> tuple[Facts, tuple[str, ...]]:
        """Primaries, replicas and slot coverage, from a fresh ``CLUSTER SLOTS``.

        Replicas are counted from ``CLUSTER NODES``, up and failed apart. A user
        whose ACL denies it sees the replicas ``CLUSTER SLOTS`` lists instead:
        those up that have replicated some data.
        """
        await self._read_map()
        if not self._primaries:
            raise redis_errors.ClusterDownError("the cluster serves no slot")
        asked = self._primaries[0]
        reply = await ask(asked, "CLUSTER", "SLOTS")
        covered = sum(end - start + 1 for start, end, *_ in reply)
        primaries = len({(entry[2][0], entry[2][1]) for entry in reply})
        try:
            replicas = _replica_health(await ask(asked, "CLUSTER", "NODES"))
        except redis_errors.NoPermissionError:
            listed = {(node[0], node[1]) for entry in reply for node in entry[3:]}
            replicas = f"{len(listed)} in sync (CLUSTER NODES is denied to this user)"
        facts = (
            ("topology", "cluster"),
            ("primaries", str(primaries)),
            ("replicas", replicas),
            ("slots_covered", f"{covered} of {REDIS_CLUSTER_HASH_SLOTS}"),
        )
        warnings: tuple[str, ...] = ()
        if covered < REDIS_CLUSTER_HASH_SLOTS:
            warnings = (
                f"{REDIS_CLUSTER_HASH_SLOTS - covered} slots have no primary: "
                "commands for their keys fail until the cluster covers them",
            )
        return facts, warnings

    async def aclose(self) -> None:
        if self._refresh is not None:
            self._refresh.cancel()
            await asyncio.gather(self._refresh, return_exceptions=True)
        await self._nodes.aclose()

    # --- the slot map ----------------------------------------------------------------

    def _move(self, slot: int, address: Address) -> None:
        """The server said ``slot`` now lives at ``address``."""
        slots = list(self._slots)
        slots[slot] = self.node(address)
        self._set_slots(slots)
        self._refresh_soon()

    def _set_slots(self, slots: list[Node | None]) -> None:
        """Use ``slots`` from now on; observers hear of it when a slot changed owner."""
        if slots == self._slots:
            return
        owners = {id(node): node for node in slots if node is not None}
        before, self._slots = self._slots, slots
        self._primaries = tuple(owners.values())
        if any(node is not None for node in before):  # not the first map
            moved = sum(old is not new for old, new in zip(before, slots, strict=True))
            happened(
                SLOT_MAP_CHANGED,
                self._counters,
                "cluster slot map changed: %d slots have another owner; %d primaries serve",
                moved,
                len(self._primaries),
            )
        self._changed()

    async def _read_map(self) -> None:
        """Join the read of the map under way, or start one (after the interval);
        raises what the read raised."""
        if self._refresh is None or self._refresh.done():
            self._refresh = detached(self._load_slot_map())
        await asyncio.shield(self._refresh)

    def _refresh_soon(self) -> None:
        if self._refresh is None or self._refresh.done():
            task = detached(self._load_slot_map())
            # A failed background read is retried by the next caller that needs one.
            task.add_done_callback(lambda done: done.cancelled() or done.exception())
            self._refresh = task

    async def _load_slot_map(self) -> None:
        loop = asyncio.get_running_loop()
        if self._refreshed_at is not None:
            await asyncio.sleep(self._refreshed_at + REFRESH_INTERVAL_SECS - loop.time())
        try:
            reply, asked = await self._first_slot_map()
            self._set_slots(_slot_owners(reply, asked, self.node))
        finally:
            self._refreshed_at = loop.time()

    async def _first_slot_map(self) -> tuple[list[Any], Address]:
        """``CLUSTER SLOTS`` from whichever known primary or seed answers first. One is
        asked, then the next as soon as one fails or after :data:`_STAGGER_SECS`
        without an answer: a healthy cluster is asked once per read, and seeds that
        hang cost a fraction of a second each, not a timeout each."""
        known = [address for address, node in self._nodes.items() if node in self._primaries]
        waiting = list(dict.fromkeys([*known, *self._seeds]))

        async def slots_of(address: Address) -> tuple[list[Any], Address]:
            return await ask(self.node(address), "CLUSTER", "SLOTS"), address

        asking: set[asyncio.Future[tuple[list[Any], Address]]] = set()
        error: BaseException = redis_errors.ConnectionError("no cluster node to ask")
        try:
            while waiting or asking:
                if waiting:
                    asking.add(asyncio.ensure_future(slots_of(waiting.pop(0))))
                stagger = _STAGGER_SECS if waiting else None
                done, _ = await asyncio.wait(
                    asking, timeout=stagger, return_when=asyncio.FIRST_COMPLETED
                )
                for answered in done:
                    asking.discard(answered)
                    try:
                        return answered.result()
                    except redis_errors.RedisError as exc:
                        error = exc
        finally:
            for task in asking:
                if not task.done():
                    task.cancel()
                elif not task.cancelled():
                    task.exception()  # a slower node's failure is no one's to report
        raise error


def _slot_owners(
    reply: list[Any], asked: Address, node: Callable[[Address], Node]
) -> list[Node | None]:
    """Each slot's primary, from a ``CLUSTER SLOTS`` reply of the node at ``asked``."""
    slots: list[Node | None] = [None] * REDIS_CLUSTER_HASH_SLOTS
    for start, end, primary, *_replicas in reply:
        host = primary[0].decode() if primary[0] else asked[0]
        slots[start : end + 1] = [node((host, int(primary[1])))] * (end - start + 1)
    return slots


def _replica_health(nodes: bytes) -> str:
    """``<up> up of <all>`` for the replicas in a ``CLUSTER NODES`` reply."""
    flags = [line.split()[2].split(b",") for line in nodes.splitlines() if line.strip()]
    replicas = [node for node in flags if b"slave" in node]
    up = [node for node in replicas if b"fail" not in node and b"fail?" not in node]
    return f"{len(up)} up of {len(replicas)}"

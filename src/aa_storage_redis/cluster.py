"""Redis Cluster: each key goes to the primary that owns its slot."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from typing import Any

from redis import exceptions as redis_errors
from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot

from aa_storage_redis.node import Node
from aa_storage_redis.topology import Address, Facts, NodeFactory, ask, unchanged


class Cluster:
    """A Redis Cluster: each key goes to the primary that owns its slot.

    The slot map comes from ``CLUSTER SLOTS``, asked of any node that
    answers: the known primaries first, then the seeds. ``MOVED`` updates one
    slot at once and the whole map soon after; a failed node makes the next
    command wait for a fresh map.
    """

    def __init__(self, seeds: Iterable[Address], node_at: NodeFactory) -> None:
        self._seeds = tuple(seeds)
        self._node_at = node_at
        self._nodes: dict[Address, Node] = {}
        self._slots: list[Node | None] = [None] * REDIS_CLUSTER_HASH_SLOTS
        self._primaries: list[Node] = []
        self._refresh: asyncio.Task[None] | None = None
        self.on_change: Callable[[], None] = unchanged

    def node_for(self, key: bytes | None) -> Node | None:
        if key is None:
            return self._primaries[0] if self._primaries else None
        return self._slots[key_slot(key)]

    def node(self, address: Address) -> Node:
        """The node at ``address``, opened on first use."""
        node = self._nodes.get(address)
        if node is None:
            node = self._nodes[address] = self._node_at(address)
        return node

    def moved(self, slot: int, address: Address) -> None:
        """The server said ``slot`` now lives at ``address``."""
        self._slots[slot] = self.node(address)
        self.on_change()
        self._refresh_soon()

    async def discover(self) -> None:
        """Load the slot map; concurrent callers share one load."""
        if self._refresh is None or self._refresh.done():
            self._refresh = asyncio.get_running_loop().create_task(self._load_slot_map())
        await asyncio.shield(self._refresh)

    def failed(self, node: Node) -> None:
        # Until a new map arrives, commands for the lost node's slots wait for it.
        self._slots = [None if owner is node else owner for owner in self._slots]
        self._primaries = [primary for primary in self._primaries if primary is not node]
        self.on_change()
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
        await self.discover()
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
        await asyncio.gather(*(node.aclose() for node in self._nodes.values()))

    def _refresh_soon(self) -> None:
        if self._refresh is None or self._refresh.done():
            task = asyncio.get_running_loop().create_task(self._load_slot_map())
            # A failed background load is retried by the next caller that needs it.
            task.add_done_callback(lambda done: done.cancelled() or done.exception())
            self._refresh = task

    async def _load_slot_map(self) -> None:
        error: redis_errors.RedisError = redis_errors.ConnectionError("no cluster node to ask")
        known = [address for address, node in self._nodes.items() if node in self._primaries]
        for address in dict.fromkeys([*known, *self._seeds]):
            try:
                reply = await ask(self.node(address), "CLUSTER", "SLOTS")
            except redis_errors.RedisError as exc:
                error = exc
                continue
            self._apply(reply, address)
            return
        raise error

    def _apply(self, reply: list[Any], asked: Address) -> None:
        slots: list[Node | None] = [None] * REDIS_CLUSTER_HASH_SLOTS
        primaries: dict[int, Node] = {}
        for start, end, primary, *_replicas in reply:
            host = primary[0].decode() if primary[0] else asked[0]
            node = self.node((host, int(primary[1])))
            primaries[id(node)] = node
            slots[start : end + 1] = [node] * (end - start + 1)
        changed = slots != self._slots
        self._slots = slots
        self._primaries = list(primaries.values())
        if changed:
            self.on_change()


def _replica_health(nodes: bytes) -> str:
    """``<up> up of <all>`` for the replicas in a ``CLUSTER NODES`` reply."""
    flags = [line.split()[2].split(b",") for line in nodes.splitlines() if line.strip()]
    replicas = [node for node in flags if b"slave" in node]
    up = [node for node in replicas if b"fail" not in node and b"fail?" not in node]
    return f"{len(up)} up of {len(replicas)}"

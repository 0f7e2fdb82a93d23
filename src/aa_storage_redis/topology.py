"""Which node serves a command: the shape of a deployment, and the lone server.

A topology alone knows the nodes and which one serves each key. The executor
asks it twice per command at most: :meth:`Topology.node_for` (no I/O, the hot
path), and :meth:`Topology.route` when that has no answer yet. When a node
answers with a redirection or says it is busy, the executor hands the error to
:meth:`Topology.redirected`, which says what to do next; a lost node goes to
:meth:`Topology.failed`. Every change to the set of nodes that serve keys (a
redirect, a refresh, a failover, a primary added or removed) goes through the
topology's own methods, which tell each :class:`TopologyObserver` that
:meth:`Topology.watch` registered. The nodes themselves are built by
``node_at``, so every topology runs on the same multiplexed connections.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from typing import Any, Protocol

import attrs
from redis import exceptions as redis_errors

from aa_storage_redis.node import Node
from aa_storage_redis.wire import NotSent, ReplyLost, pack

Address = tuple[str, int]
NodeFactory = Callable[[Address], Node]
Facts = tuple[tuple[str, str], ...]


class TopologyObserver(Protocol):
    """Told when the nodes that serve keys may have changed (the near-cache's tracker)."""

    def topology_changed(self) -> None:
        """Called, without I/O, after every change to which node serves some key."""


@attrs.frozen
class Redirect:
    """What to do with a command a node did not run: send it to ``node`` (``None``: look
    the key's node up again), with ``ASKING`` first when ``asking``, after a backoff
    when ``busy`` (the cluster or the server is not ready: TRYAGAIN, CLUSTERDOWN,
    LOADING)."""

    node: Node | None = None
    asking: bool = False
    busy: bool = False


class Topology(Protocol):
    """What the executor needs from a deployment's shape."""

    def node_for(self, key: bytes | None) -> Node | None:
        """The node for ``key`` (any primary when ``None``), or ``None`` when it is not
        known without I/O."""

    async def route(self, key: bytes | None, deadline: float) -> Node:
        """The node for ``key``, learning the deployment as needed; raises a
        ``redis.RedisError`` naming why when no node serves ``key`` by ``deadline``
        (the event loop's time)."""

    def redirected(self, error: redis_errors.RedisError, node: Node) -> Redirect | None:
        """``node`` answered ``error`` without running the command: where to send it
        next, or ``None`` when ``error`` is no redirection (the caller's to report)."""

    def failed(self, node: Node) -> None:
        """``node`` lost a connection: look again before using it."""

    def watch(self, observer: TopologyObserver) -> None:
        """Tell ``observer`` of every change to which node serves some key."""

    def primaries(self) -> tuple[Address, ...]:
        """Every node that serves keys, as known now; empty until known."""

    def nodes(self) -> Iterable[Node]:
        """Every node opened so far."""

    async def describe(self) -> tuple[Facts, tuple[str, ...]]:
        """What ``aa-storage check`` shows of the deployment's shape, and warnings."""

    async def aclose(self) -> None:
        """Close every node."""


class Nodes(dict[Address, Node]):
    """A deployment's nodes by address, each built by ``node_at`` on first use."""

    def __init__(self, node_at: NodeFactory) -> None:
        super().__init__()
        self._node_at = node_at

    def at(self, address: Address) -> Node:
        """The node at ``address``, built on first use."""
        node = self.get(address)
        if node is None:
            node = self[address] = self._node_at(address)
        return node

    async def aclose(self) -> None:
        """Close every node built so far."""
        await asyncio.gather(*(node.aclose() for node in self.values()))


class Observed:
    """The observers of a topology, told of each change in the order they came."""

    def __init__(self) -> None:
        self._observers: list[TopologyObserver] = []

    def watch(self, observer: TopologyObserver) -> None:
        self._observers.append(observer)

    def _changed(self) -> None:
        for observer in self._observers:
            observer.topology_changed()


_LOADING = Redirect(busy=True)


def not_ready(error: redis_errors.RedisError) -> Redirect | None:
    """A server loading its data (``LOADING``) ran nothing: try again after a backoff."""
    return _LOADING if isinstance(error, redis_errors.BusyLoadingError) else None


class Standalone(Observed):
    """One server."""

    def __init__(self, node: Node, address: Address) -> None:
        super().__init__()
        self._node = node
        self._address = address

    def node_for(self, key: bytes | None) -> Node:
        return self._node

    async def route(self, key: bytes | None, deadline: float) -> Node:
        return self._node

    def redirected(self, error: redis_errors.RedisError, node: Node) -> Redirect | None:
        return not_ready(error)

    def failed(self, node: Node) -> None:
        """A lone server has nowhere else to look."""

    def primaries(self) -> tuple[Address, ...]:
        return (self._address,)

    def nodes(self) -> Iterable[Node]:
        return (self._node,)

    async def describe(self) -> tuple[Facts, tuple[str, ...]]:
        return (("topology", "standalone"),), ()

    async def aclose(self) -> None:
        await self._node.aclose()


async def ask(node: Node, *command: str) -> Any:
    """Send ``command`` to ``node`` and return its reply, failures as redis-py errors."""
    try:
        return await node.submit(pack(*command))
    except (NotSent, ReplyLost) as failure:
        raise failure.cause from None

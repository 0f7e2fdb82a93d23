"""Which node serves a command: the shape of a deployment, and the lone server.

Every topology answers :meth:`node_for` without I/O once it knows the
deployment (``None`` until then: the executor awaits :meth:`discover`), and
hears from the executor when a node fails or a cluster redirects a command.
Whatever changes which node serves a key calls ``on_change``, which the
near-cache's tracker sets. The nodes themselves are built by ``node_at``, so
every topology runs on the same multiplexed connections.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from aa_storage_redis.node import Node
from aa_storage_redis.wire import NotSent, ReplyLost, pack

logger = logging.getLogger("aa_storage_redis")
Address = tuple[str, int]
NodeFactory = Callable[[Address], Node]
Facts = tuple[tuple[str, str], ...]


def unchanged() -> None:
    """The default ``on_change``: nobody is listening."""


class Topology(Protocol):
    """What the executor needs from a deployment's shape."""

    on_change: Callable[[], None]
    """Called when the node serving some key may have changed: a new slot map, a
    failed node, another primary."""

    def node_for(self, key: bytes | None) -> Node | None:
        """The node for ``key`` (any node when ``None``), or ``None`` until discovered."""

    async def discover(self) -> None:
        """Learn the deployment; raises ``redis.RedisError`` when no server answers."""

    def primaries(self) -> tuple[Address, ...]:
        """Every node that takes writes, as known now; empty until discovered."""

    def failed(self, node: Node) -> None:
        """``node`` lost a connection or refused a write as a replica: look again."""

    def nodes(self) -> Iterable[Node]:
        """Every node opened so far."""

    async def describe(self) -> tuple[Facts, tuple[str, ...]]:
        """What ``aa-storage check`` shows of the deployment's shape, and warnings."""

    async def aclose(self) -> None:
        """Close every node."""


class Standalone:
    """One server."""

    def __init__(self, node: Node, address: Address) -> None:
        self._node = node
        self._address = address
        self.on_change: Callable[[], None] = unchanged

    def node_for(self, key: bytes | None) -> Node:
        return self._node

    async def discover(self) -> None:
        """Nothing to learn."""

    def primaries(self) -> tuple[Address, ...]:
        return (self._address,)

    def failed(self, node: Node) -> None:
        """A lone server has nowhere else to look."""

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

"""One server (a node): a few multiplexed connections and a bound on what may wait for them."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from redis.asyncio.connection import AbstractConnection

from aa_storage_redis.connection import MultiplexedConnection
from aa_storage_redis.stats import Counters


class Overloaded(Exception):
    """The node already has ``max_pending`` commands waiting; this one was not queued."""


class Node:
    """``size`` multiplexed connections to one server, opened on first use.

    A command goes to the connection with the fewest commands pending, the
    first one on a tie: a lone caller always uses the first connection, and
    a burst spreads over all of them. At most ``max_pending`` commands may be
    queued or awaiting replies at once; past that, :meth:`submit` raises
    :class:`Overloaded` instead of letting memory grow.
    """

    def __init__(
        self,
        open_connection: Callable[[], AbstractConnection],
        *,
        address: str,
        size: int,
        max_pending: int,
        connect_timeout: float,
        socket_timeout: float,
    ) -> None:
        self.address = address
        """``host:port``, for messages."""
        self.counters = Counters()
        self.max_pending = max_pending
        self._connections = [
            MultiplexedConnection(
                open_connection,
                connect_timeout=connect_timeout,
                socket_timeout=socket_timeout,
                counters=self.counters,
            )
            for _ in range(size)
        ]

    def submit(self, packed: bytes) -> asyncio.Future[Any]:
        """Queue one packed command on the least busy connection; see
        :meth:`MultiplexedConnection.submit` for what the future holds."""
        if self.counters.pending >= self.max_pending:
            raise Overloaded()
        connections = self._connections
        chosen = connections[0]
        if chosen.pending:
            for connection in connections:
                if connection.pending < chosen.pending:
                    chosen = connection
        return chosen.submit(packed)

    def submit_together(self, *packed: bytes) -> list[asyncio.Future[Any]]:
        """Queue commands back to back on one connection, where nothing can come
        between them: ``ASKING`` and the command it is for, or a write and the
        ``WAIT`` for its replicas. One future per command, in order."""
        if self.counters.pending + len(packed) > self.max_pending:
            raise Overloaded()
        connections = self._connections
        chosen = min(connections, key=lambda connection: connection.pending)
        return [chosen.submit(command) for command in packed]

    async def aclose(self) -> None:
        """Close every connection once what is in flight has finished or failed."""
        await asyncio.gather(*(connection.aclose() for connection in self._connections))

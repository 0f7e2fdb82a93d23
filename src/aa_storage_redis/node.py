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
        size: int,
        max_pending: int,
        connect_timeout: float,
        socket_timeout: float,
    ) -> None:
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

    def submit_asking(self, packed: bytes) -> asyncio.Future[Any]:
        """``ASKING`` then ``packed``, back to back on one connection, as a cluster
        asks for a slot being imported; the future holds the command's reply."""
        if self.counters.pending + 1 >= self.max_pending:
            raise Overloaded()
        connection = self._connections[0]
        # Nothing can come between: both are queued before this returns.
        asking = connection.submit(_ASKING)
        asking.add_done_callback(_consume)
        return connection.submit(packed)

    async def aclose(self) -> None:
        """Close every connection once what is in flight has finished or failed."""
        await asyncio.gather(*(connection.aclose() for connection in self._connections))


_ASKING = b"*1\r\n$6\r\nASKING\r\n"


def _consume(future: asyncio.Future[Any]) -> None:
    # ASKING's own reply (or error) matters to no caller: the command's tells all.
    if not future.cancelled():
        future.exception()

"""One server (a node): a few multiplexed connections, and a few more for commands that
must wait on the server (``WAIT``), so they hold nobody else up."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import Any

from redis import exceptions as redis_errors
from redis.asyncio.connection import AbstractConnection

from aa_storage_redis.connection import MultiplexedConnection
from aa_storage_redis.stats import Counters
from aa_storage_redis.wire import NotSent


class Overloaded(Exception):
    """``max_pending`` commands already wait; this one was not queued."""


class Node:
    """``size`` multiplexed connections to one server, opened on first use.

    A command goes to the connection with the fewest commands pending, the
    first one on a tie: a lone caller always uses the first connection, and
    a burst spreads over all of them. At most ``max_pending`` commands may be
    queued or awaiting replies at once, counted in ``counters`` (which every
    node of a deployment shares, so the bound is the deployment's); past that,
    a submit raises :class:`Overloaded` instead of letting memory grow.

    :meth:`submit_alone` uses up to ``size`` other connections, each carrying
    one group of commands at a time: a write and its ``WAIT``, which the server
    answers only when replicas confirm or ``wait_timeout`` passes, so nothing
    queued behind it on a shared connection is held past ``socket_timeout``.
    """

    def __init__(
        self,
        open_connection: Callable[[], AbstractConnection],
        *,
        address: str,
        size: int,
        counters: Counters,
        max_pending: int,
        connect_timeout: float,
        socket_timeout: float,
    ) -> None:
        self.address = address
        """``host:port``, for messages."""
        self.counters = counters
        self.max_pending = max_pending
        self._size = size
        self._socket_timeout = socket_timeout

        def connection() -> MultiplexedConnection:
            return MultiplexedConnection(
                open_connection,
                connect_timeout=connect_timeout,
                socket_timeout=socket_timeout,
                counters=counters,
                address=address,
            )

        self._new_connection = connection
        self._connections = [connection() for _ in range(size)]
        self._alone: list[MultiplexedConnection] = []  # opened as they are needed
        self._waiting_for_alone: deque[asyncio.Future[None]] = deque()

    def submit(self, packed: bytes) -> asyncio.Future[Any]:
        """Queue one packed command on the least busy connection; see
        :meth:`MultiplexedConnection.submit` for what the future holds."""
        if self.counters.pending >= self.max_pending:
            raise Overloaded()
        connections = self._connections
        chosen = connections[0]
        least = chosen.pending
        if least:
            for connection in connections:
                pending = connection.pending
                if pending < least:
                    chosen, least = connection, pending
        return chosen.submit(packed)

    def submit_together(self, *packed: bytes) -> list[asyncio.Future[Any]]:
        """Queue commands back to back on one connection, where nothing can come
        between them: ``ASKING`` and the command it is for. One future per
        command, in order."""
        self._check_room(len(packed))
        chosen = min(self._connections, key=lambda connection: connection.pending)
        return [chosen.submit(command) for command in packed]

    async def submit_alone(self, *packed: bytes) -> list[asyncio.Future[Any]]:
        """Queue commands back to back on a connection that carries nothing else
        until every one is answered (a write and its ``WAIT``). When all ``size`` such
        connections are busy, waits for one, at most ``socket_timeout``; past that
        raises :class:`NotSent`. One future per command, in order."""
        self._check_room(len(packed))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._socket_timeout
        while True:
            free = next((each for each in self._alone if not each.pending), None)
            if free is None and len(self._alone) < self._size:
                free = self._new_connection()
                free.on_idle = self._alone_freed
                self._alone.append(free)
            if free is not None:
                return [free.submit(command) for command in packed]
            turn = loop.create_future()
            self._waiting_for_alone.append(turn)
            try:
                async with asyncio.timeout_at(deadline):
                    await turn
            except TimeoutError:
                raise NotSent(
                    redis_errors.TimeoutError(
                        f"all {self._size} connections for writes that wait on replicas "
                        f"stayed busy for socket_timeout={self._socket_timeout}s"
                    )
                ) from None
            finally:
                if turn in self._waiting_for_alone:
                    self._waiting_for_alone.remove(turn)

    def _alone_freed(self) -> None:
        """A connection of :meth:`submit_alone` has nothing pending: wake one waiter."""
        while self._waiting_for_alone:
            turn = self._waiting_for_alone.popleft()
            if not turn.done():
                turn.set_result(None)
                return

    def _check_room(self, commands: int) -> None:
        if self.counters.pending + commands > self.max_pending:
            raise Overloaded()

    async def aclose(self) -> None:
        """Close every connection once what is in flight has finished or failed."""
        everything = [*self._connections, *self._alone]
        await asyncio.gather(*(connection.aclose() for connection in everything))
        while self._waiting_for_alone:  # they find every connection closed now
            self._alone_freed()

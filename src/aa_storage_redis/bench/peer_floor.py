"""The asyncio floor of ``aa-storage bench --peers``: the least that any asyncio client
does for a command, measured beside the driver on the same workloads.

:func:`connect` opens as many sockets as the driver's ``pool_size``, logs in with
redis-py as the driver does, and then shares them among every caller the way the
driver does: a command goes to the socket with the fewest awaiting a reply; on an
idle socket it is written at once, those that come while others await their replies
go out together on the next turn of the event loop, and hiredis reads the replies
into one buffer and hands them out in order. Each call builds its command as every
peer's does (``peer_clients.COMMANDS``). It does nothing else: no argument checks,
no retries, counters, telemetry or decoding. Only so that the bench cannot hang, a
lost socket fails what waits on it, and so does a reply that does not come within
``socket_timeout`` (checked by one timer, armed when the socket turns busy).

So the driver's figure over the floor's shows what the driver's own work costs, and
the floor's over ``redis-benchmark``'s what asyncio and the interpreter cost: an
asyncio client that sends the same commands can pass the floor only by the run's
noise.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator
from typing import Any

import hiredis

from aa_storage_redis.backend import RedisBackend
from aa_storage_redis.bench.peer_clients import Calls, Command, PythonPeer, calls_of
from aa_storage_redis.builder import connection_options
from aa_storage_redis.redis_py import take_stream
from aa_storage_redis.replies import READ_BUFFER_BYTES


class FloorClient(asyncio.BufferedProtocol):
    """One socket that callers share; :meth:`send` is all it does."""

    def __init__(self, writer: asyncio.StreamWriter, timeout: float) -> None:
        self._loop = asyncio.get_running_loop()
        self._timeout = timeout
        # Kept, not only its transport: a StreamWriter closes its transport when collected.
        self._writer = writer
        self._transport = writer.transport
        self._reader = hiredis.Reader()
        self._buffer = memoryview(bytearray(READ_BUFFER_BYTES))
        self._waiting: deque[asyncio.Future[Any]] = deque()
        self._outbox: list[bytes] = []
        self._flush_handle: asyncio.Handle | None = None
        self._watchdog: asyncio.TimerHandle | None = None
        self._watched: asyncio.Future[Any] | None = None
        self._lost: ConnectionError | None = None

    @property
    def waiting(self) -> int:
        """Requests awaiting their reply."""
        return len(self._waiting)

    def send(self, packed: bytes) -> asyncio.Future[Any]:
        """The reply to ``packed``; an error reply is raised as ``hiredis.ReplyError``."""
        if self._lost is not None:
            raise self._lost
        future = self._loop.create_future()
        idle = not self._waiting
        self._waiting.append(future)
        if idle:
            self._transport.write(packed)
            if self._watchdog is None:
                self._watch()
        else:
            self._outbox.append(packed)
            if self._flush_handle is None:
                self._flush_handle = self._loop.call_soon(self._flush)
        return future

    def _flush(self) -> None:
        self._flush_handle = None
        self._transport.writelines(self._outbox)
        self._outbox = []

    def _watch(self) -> None:
        self._watched = self._waiting[0]
        self._watchdog = self._loop.call_later(self._timeout, self._check)

    def _check(self) -> None:
        """Give up on the socket if the request watched a timeout ago is still the oldest."""
        self._watchdog = None
        if self._waiting and self._waiting[0] is self._watched:
            self._transport.abort()  # connection_lost fails every request
        elif self._waiting:
            self._watch()

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._buffer

    def buffer_updated(self, nbytes: int) -> None:
        reader = self._reader
        reader.feed(self._buffer, 0, nbytes)  # type: ignore[arg-type]  # any buffer will do
        while (reply := reader.gets()) is not False:
            future = self._waiting.popleft()
            if future.done():
                continue  # its caller left (Ctrl-C); the reply is dropped
            if isinstance(reply, hiredis.ReplyError):
                future.set_exception(reply)
            else:
                future.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        for handle in (self._flush_handle, self._watchdog):
            if handle is not None:
                handle.cancel()
        self._lost = ConnectionError(f"the socket closed, or no reply came within {self._timeout}s")
        while self._waiting:
            future = self._waiting.popleft()
            if not future.done():
                future.set_exception(self._lost)

    def close(self) -> None:
        self._transport.close()


@contextlib.asynccontextmanager
async def connect(backend: RedisBackend, callers: int) -> AsyncIterator[Calls]:
    """``pool_size`` floor clients on the server of ``backend``'s standalone deployment,
    logged in as the driver logs in; every caller shares them."""
    config = backend.pool.config
    ((host, port),) = config.deployment.addresses
    connection_class, options = connection_options(config)
    clients: list[FloorClient] = []
    try:
        for _ in range(config.pool_size):
            connection = connection_class(host=host, port=port, **options)
            await connection.connect()  # type: ignore[no-untyped-call]
            writer = take_stream(connection)
            clients.append(FloorClient(writer, config.socket_timeout))
            writer.transport.set_protocol(clients[-1])
        first = clients[0]

        def least_busy() -> FloorClient:
            # The driver's rule: the first socket unless it is busy, then the least busy.
            return min(clients, key=_waiting) if first.waiting else first

        async def send(command: Command) -> Any:
            # A coroutine, as a client's call is: nothing is sent before it is awaited.
            # hiredis' stub types the argument as a 1-tuple; it takes any length.
            packed = hiredis.pack_command(tuple(command.argv()))  # type: ignore[arg-type]
            return await least_busy().send(packed)

        yield calls_of(send)
    finally:
        for client in clients:
            client.close()


def _waiting(client: FloorClient) -> int:
    return client.waiting


FLOOR = PythonPeer(
    "asyncio floor",
    "hiredis",
    "hiredis",
    connect,
    "pool_size sockets shared by every caller and pipelined as the driver's are, replies "
    "read by hiredis, and nothing else: no checks, retries, timeouts, counters or telemetry",
)
"""The floor, run as a peer; its column is not a Python client's, so no "best peer"."""

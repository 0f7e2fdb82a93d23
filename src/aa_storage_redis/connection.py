"""One multiplexed connection: many callers share one socket, and replies are matched in order.

redis-py opens the socket and runs the handshake (TLS, HELLO/AUTH, SELECT).
Then this module takes the transport over, and hiredis, the parser redis-py
uses, reads the replies as bytes arrive. It only decides when bytes are
written and whose reply each one is:

- A command on an idle connection (nothing awaiting a reply) is written at
  once. Commands that come while others are in flight are queued and go
  out together, in one write, on the next turn of the event loop
  (auto-pipelining).
- Replies are parsed in the transport's callback and handed, in order, to
  the request at the head of the queue: no reader task, so a reply costs
  its caller a single wake-up. A caller that gave up (cancelled, timed out)
  leaves its request in the queue: its reply is read and dropped, so the
  socket stays in step and cancelling never closes it.
- The connection is closed only when the socket fails or the oldest request
  gets no reply within ``socket_timeout``. Every request on it then fails:
  with :class:`NotSent` if it was never written, else with :class:`ReplyLost`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable
from typing import Any

from redis import exceptions as redis_errors
from redis.asyncio.connection import AbstractConnection

from aa_storage_redis.events import CONNECTION_LOST, happened
from aa_storage_redis.redis_py import take_stream
from aa_storage_redis.replies import ReplyReader, resolve
from aa_storage_redis.stats import Counters
from aa_storage_redis.telemetry import detached
from aa_storage_redis.wire import Closed, NotSent, ReplyLost


class _Request:
    __slots__ = ("future", "submitted")

    def __init__(self, future: asyncio.Future[Any], submitted: float) -> None:
        self.future = future
        self.submitted = submitted


_IDLE, _CONNECTING, _OPEN, _CLOSED = "idle", "connecting", "open", "closed"


class MultiplexedConnection:
    """A socket to one server that any number of callers share; see the module doc."""

    def __init__(
        self,
        open_connection: Callable[[], AbstractConnection],
        *,
        connect_timeout: float,
        socket_timeout: float,
        counters: Counters,
        address: str = "",
    ) -> None:
        self.address = address
        """``host:port``, for the log."""
        self._open_connection = open_connection
        self._connect_timeout = connect_timeout
        self._socket_timeout = socket_timeout
        self._counters = counters
        self._state = _IDLE
        self._loop: asyncio.AbstractEventLoop | None = None  # the callers' loop, once known
        self._pending: deque[_Request] = deque()
        self._outbox: list[bytes] = []
        self._unwritten = 0  # the last this-many pending requests are still in the outbox
        self._transport: asyncio.WriteTransport | None = None
        # Held only to keep it alive: a collected StreamWriter closes its transport.
        self._stream_writer: asyncio.StreamWriter | None = None
        self._replies: ReplyReader | None = None
        self._flush_handle: asyncio.Handle | None = None
        self._watchdog: asyncio.TimerHandle | None = None
        self._opened_at = 0.0
        self._ever_opened = False
        self._connect_task: asyncio.Task[None] | None = None
        self._drained: asyncio.Future[None] | None = None
        self.on_idle: Callable[[], None] | None = None
        """Called each time the last pending request is answered or failed."""

    @property
    def pending(self) -> int:
        """Requests queued or awaiting their reply."""
        return len(self._pending)

    def submit(self, packed: bytes) -> asyncio.Future[Any]:
        """Queue one packed command; the future gets its reply, or an error reply,
        :class:`NotSent`, :class:`ReplyLost` or :class:`Closed`."""
        if self._state is _CLOSED:
            raise Closed()
        # Every caller is in one loop (the executor sees to it), so it is asked for once:
        # on Python 3.11 asking costs a system call.
        loop = self._loop or asyncio.get_running_loop()
        self._loop = loop
        future: asyncio.Future[Any] = loop.create_future()
        idle = not self._pending
        self._pending.append(_Request(future, loop.time()))
        counters = self._counters
        counters.pending += 1
        if counters.pending > counters.peak_pending:
            counters.peak_pending = counters.pending
        if self._state is _OPEN and idle:
            assert self._transport is not None
            self._transport.write(packed)
            counters.wrote(1)
            if self._watchdog is None:
                self._arm_watchdog()
            return future
        # Commands that come while others are in flight wait for the next
        # turn of the loop, and all that came by then go out in one write.
        self._outbox.append(packed)
        self._unwritten += 1
        if self._state is _OPEN:
            if self._flush_handle is None:
                self._flush_handle = loop.call_soon(self._flush)
        elif self._state is _IDLE:
            self._state = _CONNECTING
            task = self._connect_task = detached(self._connect())
            task.add_done_callback(self._connect_ended)
        return future

    async def aclose(self) -> None:
        """Let pending requests finish or fail (each is bounded by the timeouts), then
        close the socket. Requests submitted afterwards raise :class:`Closed`."""
        if self._pending:
            self._drained = asyncio.get_running_loop().create_future()
            # The watchdog and the connect timeout end every request; this bound
            # only guards against a bug leaving one behind.
            bound = self._connect_timeout + 2 * self._socket_timeout
            try:
                async with asyncio.timeout(bound):
                    await asyncio.shield(self._drained)
            except TimeoutError:
                pass
        self._state = _CLOSED
        if self._connect_task is not None and not self._connect_task.done():
            self._connect_task.cancel()
            await asyncio.gather(self._connect_task, return_exceptions=True)
        replies = self._replies
        self._fail_all(Closed, Closed)
        if replies is not None:
            await replies.closed

    # --- writing ---------------------------------------------------------------------

    def _flush(self) -> None:
        self._flush_handle = None
        if self._outbox and self._state is _OPEN:
            assert self._transport is not None
            self._transport.writelines(self._outbox)
            self._counters.wrote(self._unwritten)
            self._outbox = []
            self._unwritten = 0
            if self._watchdog is None:
                self._arm_watchdog()

    # --- connecting ------------------------------------------------------------------

    async def _connect(self) -> None:
        """Open the socket, run the handshake and see the server answer, all within
        ``connect_timeout``; any failure is raised, and :meth:`_connect_ended` fails
        the requests waiting for it."""
        connection: AbstractConnection | None = None
        try:
            async with asyncio.timeout(self._connect_timeout):
                connection = self._open_connection()
                await connection.connect()  # type: ignore[no-untyped-call]
                await _prove_alive(connection)
            self._adopt(connection)
        except BaseException:
            if connection is not None:
                # Closes the socket before its first await, so even when cancelled;
                # a failure here must not hide the one being raised.
                with contextlib.suppress(Exception):
                    await connection.disconnect(nowait=True)
            raise
        self._counters.connections_opened += 1
        self._counters.connections_open += 1
        if self._ever_opened:
            self._counters.reconnects += 1
        self._ever_opened = True
        self._flush()

    def _connect_ended(self, task: asyncio.Task[None]) -> None:
        """Fail the requests waiting for a connect task that ended without a socket,
        whatever ended it, so no caller waits on a task that is gone."""
        if self._state is not _CONNECTING or task is not self._connect_task:
            return  # opened, or aclose() took over
        self._state = _IDLE
        if task.cancelled():
            cause: redis_errors.RedisError = redis_errors.ConnectionError(
                "connecting was cancelled"
            )
        else:
            cause = _connect_failure(task.exception(), self._connect_timeout)
        self._fail_all(lambda: NotSent(cause), lambda: NotSent(cause))

    def _adopt(self, connection: AbstractConnection) -> None:
        """Take the transport over from redis-py once its handshake is done."""
        # From here on this object owns the socket, so redis-py must not close it.
        writer = take_stream(connection)
        transport = writer.transport
        self._replies = ReplyReader(self, asyncio.get_running_loop().create_future())
        transport.set_protocol(self._replies)
        self._stream_writer = writer
        self._transport = transport
        self._state = _OPEN
        self._opened_at = asyncio.get_running_loop().time()

    # --- reading (called by ReplyReader from the transport) -----------------------------

    def deliver(self, replies: ReplyReader, reply: Any) -> None:
        """Hand ``reply`` to the oldest pending request, or drop it if its caller left."""
        if replies is not self._replies:
            return  # from a socket already given up
        if not self._pending:
            self._break(redis_errors.InvalidResponse("the server sent a reply nobody asked for"))
            return
        future = self._pending.popleft().future
        self._counters.pending -= 1
        if not future.done():
            # hiredis turns an error reply into redis-py's exception for it
            # (ResponseError, or AuthenticationError for NOAUTH); no other reply is one.
            if isinstance(reply, redis_errors.RedisError):
                future.set_exception(reply)
            else:
                future.set_result(reply)
        if not self._pending:
            self._idle()

    def lost(self, replies: ReplyReader, cause: redis_errors.RedisError) -> None:
        """The socket under ``replies`` failed or was closed by the server."""
        if replies is self._replies:
            self._break(cause)

    # --- failing ---------------------------------------------------------------------

    def _oldest_deadline(self) -> float:
        """When the oldest pending request will have waited ``socket_timeout``: counted
        from its submission, or from the opening if it was queued while connecting."""
        head = self._pending[0]
        return max(head.submitted, self._opened_at) + self._socket_timeout

    def _arm_watchdog(self) -> None:
        deadline = self._oldest_deadline()
        self._watchdog = asyncio.get_running_loop().call_at(deadline, self._check_oldest)

    def _check_oldest(self) -> None:
        """Close the connection when its oldest request has waited socket_timeout."""
        self._watchdog = None
        if self._state is not _OPEN or not self._pending:
            return
        if asyncio.get_running_loop().time() < self._oldest_deadline():
            self._arm_watchdog()
            return
        self._counters.timeouts += 1
        self._break(
            redis_errors.TimeoutError(f"no reply within socket_timeout={self._socket_timeout}s")
        )

    def _break(self, cause: redis_errors.RedisError) -> None:
        """Close the socket and fail what is pending; the next submit reconnects."""
        self._state = _IDLE
        happened(
            CONNECTION_LOST,
            self._counters,
            "connection to %s lost: %s; %d commands on it failed",
            self.address,
            cause,
            len(self._pending),
        )
        self._fail_all(lambda: ReplyLost(cause), lambda: NotSent(cause))

    def _fail_all(
        self, written: Callable[[], BaseException], unwritten: Callable[[], BaseException]
    ) -> None:
        for handle in (self._watchdog, self._flush_handle):
            if handle is not None:
                handle.cancel()
        self._watchdog = self._flush_handle = None
        if self._transport is not None:
            self._transport.abort()  # drops unsent bytes: nothing stale reaches the server
            self._counters.connections_open -= 1
        self._transport = self._replies = self._stream_writer = None
        requests, self._pending = self._pending, deque()
        first_unwritten = len(requests) - self._unwritten
        self._outbox, self._unwritten = [], 0
        self._counters.pending -= len(requests)
        for index, request in enumerate(requests):
            if not request.future.done():
                failure = written() if index < first_unwritten else unwritten()
                request.future.set_exception(failure)
        self._idle()

    def _idle(self) -> None:
        if self._drained is not None:
            resolve(self._drained)
        if self.on_idle is not None:
            self.on_idle()


async def _prove_alive(connection: AbstractConnection) -> None:
    """Have the server answer once before any caller's command is written.

    Without a password, redis-py's handshake sends nothing, so a server that
    accepts and at once drops connections would only be found out by the
    first command, which could then not be known to be unsent. Any reply
    will do, a NOPERM under a strict ACL or a LOADING too: it proves the server
    is there.
    """
    await connection.send_command("PING", check_health=False)
    with contextlib.suppress(redis_errors.ResponseError, redis_errors.BusyLoadingError):
        # redis-py takes LOADING for a lost connection and would close it.
        await connection.read_response(disconnect_on_error=False)


def _connect_failure(exc: BaseException | None, connect_timeout: float) -> redis_errors.RedisError:
    """What callers are told when no connection could be opened: redis-py's error
    as it is, or one that names whatever else went wrong."""
    if isinstance(exc, TimeoutError | redis_errors.TimeoutError):
        # The words redis-py uses, which errors.translate recognises.
        return redis_errors.TimeoutError(
            f"Timeout connecting to server (connect_timeout={connect_timeout}s)"
        )
    if isinstance(exc, redis_errors.RedisError):
        return exc
    # Not redis-py's: a bug, or a redis-py release the driver does not know.
    cause = redis_errors.ConnectionError(
        f"opening a connection failed: {type(exc).__name__}: {exc}"
    )
    cause.__context__ = exc
    return cause

"""A TCP proxy on 127.0.0.1 that injects network faults between a client and a loopback server.

The proxy runs its own asyncio event loop in a daemon thread, so it works the same under sync
tests and under any event loop a test uses. Mode switches are thread-safe and take effect before
the switching method returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import ipaddress
import socket
import struct
import threading
from collections.abc import Awaitable, Callable, Coroutine
from types import TracebackType
from typing import Any, Self, TypeVar

LOOPBACK = "127.0.0.1"
CHUNK_SIZE = 65536
CONTROL_TIMEOUT = 5.0

T = TypeVar("T")
Forwarder = Callable[[bytes, asyncio.StreamWriter], Awaitable[bool]]
FaultProxyFactory = Callable[[int], "FaultProxy"]
"""Type of the ``fault_proxy`` fixture: ``fault_proxy(upstream_port)`` -> a started FaultProxy."""


class _Mode(enum.Enum):
    PASSTHROUGH = enum.auto()
    BLACKHOLE = enum.auto()
    REFUSE = enum.auto()


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _linger_zero(sock: socket.socket | None) -> None:
    """Make closing ``sock`` send RST instead of FIN, as a crashed peer would."""
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close a stream abruptly (RST), discarding anything still buffered."""
    _linger_zero(writer.get_extra_info("socket"))
    writer.transport.abort()


class FaultProxy:
    """Forwards 127.0.0.1:``port`` to a loopback upstream, with switchable faults.

    Modes (each replaces the previous one):

    * ``passthrough()`` - forward both ways untouched (the initial mode).
    * ``latency(seconds)`` - passthrough, but every server->client chunk is delayed.
    * ``drop_mid_reply()`` - passthrough, except that the next server->client chunk on any
      connection is cut: its first half (at least one byte) is forwarded, then the client
      connection is reset. After that one cut the proxy is back to plain passthrough.
    * ``blackhole()`` - connections are accepted and kept, but nothing is forwarded either way;
      data is held back (as TCP would during a partition) and flows again after a switch to
      another mode.
    * ``refuse(count)`` - new connections are reset right after being accepted; open ones carry
      on. With a ``count``, only that many are refused, then the proxy is back to passthrough.

    ``sever()`` resets every open connection, whatever the mode. The counters
    ``replies_cut``, ``chunks_delayed``, ``chunks_held`` and ``connections_refused``
    let a test prove that the fault it set up actually fired; ``chunks_to_server`` (the chunks
    read from clients, a count of their socket writes when they write faster than the proxy
    reads, a lower one otherwise) and ``open_connections`` let it count what a client did.
    """

    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        """Start listening at once; only loopback upstreams are accepted (ValueError otherwise)."""
        if not _is_loopback(upstream_host):
            raise ValueError(f"FaultProxy only forwards to loopback, not {upstream_host!r}")
        self.upstream = (upstream_host, upstream_port)
        self._accepted = 0
        self.replies_cut = 0
        self.chunks_delayed = 0
        self.chunks_held = 0
        self.connections_refused = 0
        self.chunks_to_server = 0
        self._refusals_left: int | None = None
        self._mode = _Mode.PASSTHROUGH
        self._delay = 0.0
        self._cut_next_reply = False
        self._closed = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._listener = socket.create_server((LOOPBACK, 0))
        self._listener.setblocking(False)
        self.port: int = self._listener.getsockname()[1]
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name=f"FaultProxy->{upstream_port}", daemon=True
        )
        self._thread.start()
        self._acceptor = self._run(self._start_accepting())

    @property
    def host(self) -> str:
        """The address the proxy listens on (always 127.0.0.1)."""
        return LOOPBACK

    @property
    def connections_accepted(self) -> int:
        """Client connections accepted so far, including those reset by ``refuse()``."""
        return self._accepted

    @property
    def open_connections(self) -> int:
        """Client connections accepted and not yet closed by either side."""
        return len(self._tasks)

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:PORT`` (no credentials: pass them to the client separately)."""
        return f"redis://{LOOPBACK}:{self.port}"

    @property
    def tls_url(self) -> str:
        """``rediss://127.0.0.1:PORT``, for a proxy placed in front of a TLS port."""
        return f"rediss://{LOOPBACK}:{self.port}"

    # --- modes -----------------------------------------------------------------------------

    def passthrough(self) -> None:
        """Forward everything untouched."""
        self._switch(_Mode.PASSTHROUGH)

    def latency(self, seconds: float) -> None:
        """Forward everything, delaying each server->client chunk by ``seconds``."""
        if seconds < 0:
            raise ValueError("latency must be >= 0")
        self._switch(_Mode.PASSTHROUGH, delay=seconds)

    def drop_mid_reply(self) -> None:
        """Cut the next server->client chunk in half and reset that client connection."""
        self._switch(_Mode.PASSTHROUGH, cut_next_reply=True)

    def blackhole(self) -> None:
        """Accept and keep connections but forward nothing in either direction."""
        self._switch(_Mode.BLACKHOLE)

    def refuse(self, count: int | None = None) -> None:
        """Reset new connections as soon as they are accepted: all of them, or the next
        ``count``, after which the proxy is back to passthrough."""
        if count is not None and count < 1:
            raise ValueError("count must be >= 1")
        self._switch(_Mode.REFUSE, refusals=count)

    def sever(self) -> None:
        """Reset every open connection, as a network that drops them would."""

        async def reset_all() -> None:
            for writer in list(self._writers):
                _reset(writer)
            await asyncio.sleep(0)

        self._run(reset_all())

    # --- lifecycle -------------------------------------------------------------------------

    def close(self) -> None:
        """Stop listening, reset every connection and stop the thread. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._run(self._shutdown())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(CONTROL_TIMEOUT)
        self._loop.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # --- control plumbing (caller's thread) ------------------------------------------------

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        if threading.current_thread() is self._thread:
            raise RuntimeError("FaultProxy must be controlled from outside its own thread")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(CONTROL_TIMEOUT)

    def _switch(
        self,
        mode: _Mode,
        *,
        delay: float = 0.0,
        cut_next_reply: bool = False,
        refusals: int | None = None,
    ) -> None:
        if self._closed:
            raise RuntimeError("FaultProxy is closed")

        async def apply() -> None:
            self._apply(mode, delay=delay, cut_next_reply=cut_next_reply, refusals=refusals)

        self._run(apply())

    def _apply(
        self, mode: _Mode, *, delay: float, cut_next_reply: bool, refusals: int | None
    ) -> None:
        self._mode = mode
        self._delay = delay
        self._cut_next_reply = cut_next_reply
        self._refusals_left = refusals
        if mode is _Mode.BLACKHOLE:
            self._flowing.clear()
        else:
            self._flowing.set()

    # --- proxying (event-loop thread) ------------------------------------------------------

    async def _start_accepting(self) -> asyncio.Task[None]:
        return asyncio.create_task(self._accept_forever())

    async def _accept_forever(self) -> None:
        # A hand-rolled accept loop rather than asyncio.start_server: closing a Server while an
        # accept is in flight trips an assertion in CPython 3.11 and leaks that socket.
        loop = asyncio.get_running_loop()
        while True:
            conn, _ = await loop.sock_accept(self._listener)
            self._accepted += 1
            task = asyncio.create_task(self._handle(conn))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _shutdown(self) -> None:
        self._acceptor.cancel()
        await asyncio.gather(self._acceptor, return_exceptions=True)
        self._listener.close()
        for writer in list(self._writers):
            _reset(writer)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await asyncio.sleep(0)  # let aborted transports run connection_lost and close sockets

    async def _handle(self, conn: socket.socket) -> None:
        if self._mode is _Mode.REFUSE:
            self.connections_refused += 1
            _linger_zero(conn)
            conn.close()
            if self._refusals_left is not None:
                self._refusals_left -= 1
                if not self._refusals_left:
                    self._apply(_Mode.PASSTHROUGH, delay=0.0, cut_next_reply=False, refusals=None)
            return
        try:
            reader, writer = await asyncio.open_connection(sock=conn)
        except BaseException:
            conn.close()
            raise
        self._writers.add(writer)
        try:
            await self._proxy(reader, writer)
        finally:
            self._writers.discard(writer)
            writer.close()

    async def _proxy(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # A blackholed proxy must not even reach the upstream, or an unreachable upstream
        # would show up as a closed connection instead of silence.
        await self._flowing.wait()
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            _reset(writer)
            return
        self._writers.add(up_writer)
        try:
            await self._pump_both(reader, writer, up_reader, up_writer)
        finally:
            self._writers.discard(up_writer)
            up_writer.close()

    async def _pump_both(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        up_reader: asyncio.StreamReader,
        up_writer: asyncio.StreamWriter,
    ) -> None:
        pumps = [
            asyncio.create_task(self._pump(reader, up_writer, self._to_server)),
            asyncio.create_task(self._pump(up_reader, writer, self._to_client)),
        ]
        try:
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for pump in pumps:
                pump.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)

    async def _pump(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        forward: Forwarder,
    ) -> None:
        """Copy chunks until EOF, an error, or ``forward`` returning False."""
        with contextlib.suppress(OSError):
            while chunk := await reader.read(CHUNK_SIZE):
                if not self._flowing.is_set():
                    self.chunks_held += 1
                await self._flowing.wait()
                if not await forward(chunk, writer):
                    return

    async def _to_server(self, chunk: bytes, writer: asyncio.StreamWriter) -> bool:
        self.chunks_to_server += 1
        writer.write(chunk)
        await writer.drain()
        return True

    async def _to_client(self, chunk: bytes, writer: asyncio.StreamWriter) -> bool:
        if self._cut_next_reply:
            self._cut_next_reply = False
            self.replies_cut += 1
            await self._send_fully(writer, chunk[: max(1, len(chunk) // 2)])
            _reset(writer)
            return False
        if self._delay:
            self.chunks_delayed += 1
            await asyncio.sleep(self._delay)
            await self._flowing.wait()  # a blackhole() during the delay still holds the chunk
        writer.write(chunk)
        await writer.drain()
        return True

    @staticmethod
    async def _send_fully(writer: asyncio.StreamWriter, data: bytes) -> None:
        # abort() discards whatever the transport still buffers; with a zero high-water mark
        # drain() returns only once the partial reply has been handed to the kernel.
        writer.transport.set_write_buffer_limits(high=0)
        writer.write(data)
        await writer.drain()

"""Hearing the server's invalidations: ``CLIENT TRACKING`` in BCAST mode, one
connection per primary, for the near-cache.

Each tracking connection speaks RESP3 (``HELLO 3``) and turns on
``CLIENT TRACKING ON BCAST PREFIX <prefix>policy:``: the server then pushes an
``invalidate`` message on that same connection for every write to a policy
key, by any client. RESP3 rather than RESP2 with ``REDIRECT`` to a subscribed
connection, because here the pushes and the connection are one thing: a
closed or failed socket is the loss of the invalidations, and this process
sees it at once. With ``REDIRECT`` the tracking client and the subscriber are
two connections, and when the subscriber goes the server reports it only to
the tracking client, in a push that RESP2 cannot carry, so invalidations
could stop with nothing noticed. A heartbeat ``PING`` covers a silent
network: its reply (a refusal under a strict ACL will do) comes after every
push sent before it, and a reply later than ``socket_timeout`` counts as a
lost connection.

Any loss of a tracking connection and any topology change suspends the
near-cache (flushed, bypassed) at once; a supervisor task then brings
tracking back on every primary, with a bounded backoff, and resumes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

import hiredis
from redis import exceptions as redis_errors
from redis._parsers import BaseParser
from redis.asyncio.connection import AbstractConnection

from aa_storage_redis.errors import translate
from aa_storage_redis.near_cache import NearCache
from aa_storage_redis.topology import Address, Topology
from aa_storage_redis.wire import pack

logger = logging.getLogger("aa_storage_redis")

# How often an idle tracking connection is asked for a PING reply.
HEARTBEAT_SECS = 1.0
# Backoff between attempts to bring tracking back: 50 ms doubling to at most 1 s.
_BACKOFF_BASE, _BACKOFF_CAP = 0.05, 1.0
# aclose() waits this long for the tracking tasks; they hold no caller's work.
_CLOSE_SECS = 1.0
_PING = pack("PING")

ACL_COMMANDS = ("client|tracking",)
"""What tracking needs the ACL to grant. redis-py's handshake sends ``HELLO 3``
(with ``AUTH`` in it when there is a password), which no ACL denies, and the
heartbeat's ``PING`` needs no grant: a refusal is a reply too."""

TrackingConnector = Callable[[Address], AbstractConnection]
"""Opens a RESP3 connection to a primary (TLS, login and database as the pool's)."""


class _Link:
    """One tracking connection: its pushes go to the near-cache until it is lost."""

    def __init__(self, address: Address, connection: AbstractConnection) -> None:
        self.address = address
        self._connection = connection
        self._reader = hiredis.Reader(
            protocolError=redis_errors.InvalidResponse, replyError=BaseParser.parse_error
        )
        self.task: asyncio.Task[None] | None = None

    @classmethod
    async def open(
        cls, connect: TrackingConnector, address: Address, prefix: bytes, bound: float
    ) -> _Link:
        """A connection with tracking on; raises ``redis.RedisError`` when it cannot be had."""
        link = cls(address, connect(address))
        try:
            async with asyncio.timeout(bound):
                await link._connection.connect()  # type: ignore[no-untyped-call]
                link._write(pack("CLIENT", "TRACKING", "ON", "BCAST", "PREFIX", prefix))
                reply = await link._reply(lambda _: None)
        except TimeoutError:
            link.close()
            raise redis_errors.TimeoutError(
                f"tracking on {address[0]}:{address[1]} timed out after {bound}s"
            ) from None
        except BaseException:
            link.close()
            raise
        if isinstance(reply, redis_errors.RedisError):
            link.close()
            raise reply
        return link

    def start(
        self,
        invalidated: Callable[[list[bytes] | None], None],
        patience: float,
        lost: Callable[[_Link, str], None],
    ) -> None:
        """Hand the keys of each push to ``invalidated`` from now on (``None``: every
        key); ``lost`` is called once if the connection goes, or a PING waits
        ``patience`` seconds for its reply."""
        loop = asyncio.get_running_loop()
        self.task = loop.create_task(self._serve(invalidated, patience, lost))

    async def _serve(
        self,
        invalidated: Callable[[list[bytes] | None], None],
        patience: float,
        lost: Callable[[_Link, str], None],
    ) -> None:
        loop = asyncio.get_running_loop()
        pinged_at: float | None = None

        def on_push(push: list[Any]) -> None:
            invalidated(push[1])

        try:
            while True:
                try:
                    async with asyncio.timeout(HEARTBEAT_SECS):
                        await self._reply(on_push)
                except TimeoutError:
                    if pinged_at is None:
                        self._write(_PING)
                        pinged_at = loop.time()
                    elif loop.time() - pinged_at > patience:
                        lost(self, f"no PING reply within socket_timeout={patience}s")
                        return
                    continue
                # Any reply will do, a NOPERM for PING too: it came after every push
                # sent before it, so the stream is alive and in order.
                pinged_at = None
        except Exception as exc:  # whatever ends the reading ends the invalidations
            lost(self, str(exc) or type(exc).__name__)

    async def _reply(self, on_push: Callable[[list[Any]], None]) -> Any:
        """The next reply that is not a push, handing pushes to ``on_push`` meanwhile."""
        stream = self._connection._reader
        assert stream is not None
        while True:
            while (message := self._reader.gets()) is not False:
                # hiredis reads a RESP3 push as a list; no reply on this connection is one.
                if isinstance(message, list):
                    if message and message[0] == b"invalidate":
                        on_push(message)
                    continue
                return message
            # Read the stream directly: redis-py's read_response would hand pushes to
            # its own handler, and its endless wait ends slowly when cancelled.
            data = await stream.read(65536)
            if not data:
                raise redis_errors.ConnectionError("Connection closed by server.")
            self._reader.feed(data)

    def _write(self, packed: bytes) -> None:
        writer = self._connection._writer
        if writer is None:
            raise redis_errors.ConnectionError("the tracking connection is closed")
        writer.write(packed)

    def close(self) -> None:
        """Stop reading and close the socket at once."""
        if self.task is not None:
            self.task.cancel()
        self._connection._close()  # type: ignore[no-untyped-call]


class Tracker:
    """Keeps tracking up on every primary of ``topology`` for ``near``; see the module doc.

    Starts on the near-cache's first lookup; :meth:`aclose` stops it.
    """

    def __init__(
        self,
        near: NearCache,
        topology: Topology,
        connect: TrackingConnector,
        *,
        prefix: bytes,
        connect_timeout: float,
        socket_timeout: float,
        server: str,
        secret: str | None,
    ) -> None:
        self._near = near
        self._topology = topology
        self._connect = connect
        self._prefix = prefix
        self._open_timeout = connect_timeout + socket_timeout
        self._socket_timeout = socket_timeout
        self._server = server
        self._secret = secret
        self._links: dict[Address, _Link] = {}
        self._dirty = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self.problem: str | None = None
        """Why tracking is down, once an attempt to bring it up has failed."""
        near.wake = self.start
        topology.on_change = self._changed

    @property
    def state(self) -> str:
        """``up on N primaries``, ``starting``, ``stopped`` or ``down: <why>``, for ``check``."""
        if self._near.live:
            count = len(self._links)
            return f"up on {count} {'primary' if count == 1 else 'primaries'}"
        if self._closed:
            return "stopped"
        if self._task is None or self.problem is None:
            return "starting"
        return f"down: {self.problem}"

    def start(self) -> None:
        """Bring tracking up in the background, unless it is already on its way."""
        if self._task is None and not self._closed:
            self._task = asyncio.get_running_loop().create_task(self._supervise())

    async def aclose(self) -> None:
        """Stop tracking and close its connections; bounded by about a second."""
        self._closed = True
        self._near.suspend()
        tasks = [link.task for link in self._links.values() if link.task is not None]
        if self._task is not None:
            tasks.append(self._task)
            self._task.cancel()
        self._drop_links()
        if tasks:
            await asyncio.wait(tasks, timeout=_CLOSE_SECS)

    def _drop_links(self) -> None:
        for link in self._links.values():
            link.close()
        self._links.clear()

    def _changed(self) -> None:
        """The topology changed: the primaries tracked may no longer be the right ones."""
        self._near.suspend()
        self._dirty.set()

    def _invalidated(self, keys: list[bytes] | None) -> None:
        if keys is None:  # FLUSHDB, FLUSHALL, or the server dropped its tracking state
            self._near.flush()
            return
        start = len(self._prefix)
        for key in keys:
            # A key under the prefix that names no agent is nobody's entry.
            with contextlib.suppress(ValueError):
                self._near.invalidate(bytes.fromhex(key[start:].decode()))

    def _lost(self, link: _Link, why: str) -> None:
        if self._links.get(link.address) is link:
            del self._links[link.address]
            link.close()
            self.problem = f"tracking connection to {link.address[0]}:{link.address[1]} lost: {why}"
            logger.warning("near-cache flushed and bypassed: %s", self.problem)
            self._near.suspend()
            self._dirty.set()

    async def _supervise(self) -> None:
        try:
            await self._keep_tracking()
        finally:
            # Cancelled by aclose(), or by the end of the event loop: nobody hears
            # the invalidations any more.
            self._near.suspend()

    async def _keep_tracking(self) -> None:
        attempt = 0
        while not self._closed:
            self._dirty.clear()
            try:
                await self._track_every_primary()
            except Exception as exc:  # whatever it was, tracking is down: retry
                problem = self._describe(exc)
                if self.problem is None:
                    logger.warning("near-cache bypassed: tracking failed: %s", problem)
                self.problem = problem
                self._near.suspend()
                attempt += 1
                await asyncio.sleep(min(_BACKOFF_BASE * 2**attempt, _BACKOFF_CAP))
                continue
            if self._dirty.is_set():
                continue  # changed while connecting: look at the primaries again
            attempt = 0
            self.problem = None
            self._near.resume()
            await self._dirty.wait()

    def _describe(self, exc: Exception) -> str:
        if isinstance(exc, redis_errors.RedisError):
            return str(translate(exc, server=self._server, secret=self._secret))
        return f"{type(exc).__name__}: {exc}"

    async def _track_every_primary(self) -> None:
        """Open a tracking connection to each primary that lacks one; close the others."""
        if not self._topology.primaries():
            await self._topology.discover()
        wanted = self._topology.primaries()
        if not wanted:
            raise redis_errors.ConnectionError("no primary is known")
        for address in [address for address in self._links if address not in wanted]:
            self._links.pop(address).close()
        missing = [address for address in wanted if address not in self._links]
        opening = [
            _Link.open(self._connect, address, self._prefix, self._open_timeout)
            for address in missing
        ]
        opened = await asyncio.gather(*opening, return_exceptions=True)
        failure: BaseException | None = None
        for link in opened:
            if isinstance(link, _Link):
                if self._closed:
                    link.close()
                    continue
                self._links[link.address] = link
                link.start(self._invalidated, self._socket_timeout, self._lost)
            elif failure is None:
                failure = link
        if failure is not None:
            raise failure

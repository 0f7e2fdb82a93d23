"""One tracking connection: ``CLIENT TRACKING`` in BCAST mode over RESP3, its
pushes read as they come, and a heartbeat.

The connection speaks RESP3 (``HELLO 3``) and turns on
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
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from redis import exceptions as redis_errors
from redis.asyncio.connection import AbstractConnection

from aa_storage_redis.redis_py import close_now
from aa_storage_redis.replies import StreamReplies
from aa_storage_redis.telemetry import detached
from aa_storage_redis.topology import Address
from aa_storage_redis.wire import pack

# How often an idle tracking connection is asked for a PING reply.
HEARTBEAT_SECS = 1.0
_PING = pack("PING")

ACL_COMMANDS = ("client|tracking",)
"""What tracking needs the ACL to grant. redis-py's handshake sends ``HELLO 3``
(with ``AUTH`` in it when there is a password), which no ACL denies, and the
heartbeat's ``PING`` needs no grant: a refusal is a reply too."""

TrackingConnector = Callable[[Address], AbstractConnection]
"""Opens a RESP3 connection to a primary (TLS, login and database as the pool's)."""


class TrackingConnection:
    """One tracking connection: its pushes go to the near-cache until it is lost."""

    def __init__(self, address: Address, connection: AbstractConnection) -> None:
        self.address = address
        self._connection = connection
        self._replies: StreamReplies | None = None  # once the connection is open
        self.task: asyncio.Task[None] | None = None

    @classmethod
    async def open(
        cls, connect: TrackingConnector, address: Address, prefix: bytes, bound: float
    ) -> TrackingConnection:
        """A connection with tracking on, within ``bound`` seconds; raises
        ``redis.RedisError`` when it cannot be had, or whatever else went wrong."""
        opened: TrackingConnection | None = None
        try:
            async with asyncio.timeout(bound):
                opened = cls(address, connect(address))
                await opened._connection.connect()  # type: ignore[no-untyped-call]
                await opened._write(pack("CLIENT", "TRACKING", "ON", "BCAST", "PREFIX", prefix))
                reply = await opened._reply(lambda _: None)
            if isinstance(reply, redis_errors.RedisError):
                raise reply
        except BaseException as exc:
            if opened is not None:
                opened.close()
            if isinstance(exc, TimeoutError):
                raise redis_errors.TimeoutError(
                    f"tracking on {address[0]}:{address[1]} timed out after {bound}s"
                ) from None
            raise
        return opened

    def start(
        self,
        invalidated: Callable[[list[bytes] | None], None],
        patience: float,
        lost: Callable[[TrackingConnection, str], None],
    ) -> None:
        """Hand the keys of each push to ``invalidated`` from now on (``None``: every
        key); ``lost`` is called once if the connection goes, or a PING waits
        ``patience`` seconds for its reply."""
        self.task = detached(self._serve(invalidated, patience, lost))

    async def _serve(
        self,
        invalidated: Callable[[list[bytes] | None], None],
        patience: float,
        lost: Callable[[TrackingConnection, str], None],
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
                        await self._write(_PING)
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
        if self._replies is None:
            self._replies = StreamReplies(self._connection)
        while True:
            message = await self._replies.next()
            # hiredis reads a RESP3 push as a list; no reply on this connection is one.
            if not isinstance(message, list):
                return message
            if message and message[0] == b"invalidate":
                on_push(message)

    async def _write(self, packed: bytes) -> None:
        if not self._connection.is_connected:
            # send_packed_command would open a new socket, without tracking on it.
            raise redis_errors.ConnectionError("the tracking connection is closed")
        await self._connection.send_packed_command(packed, check_health=False)

    def close(self) -> None:
        """Stop reading and close the socket at once."""
        if self.task is not None:
            self.task.cancel()
        close_now(self._connection)

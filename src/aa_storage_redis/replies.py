"""Reading replies with hiredis: in the transport's callback as bytes arrive
(:class:`ReplyReader`, the multiplexed connections), or awaited one at a time
from a redis-py connection's stream (:class:`StreamReplies`, the sentinel
watchers and the tracking connections)."""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

import hiredis
from redis import exceptions as redis_errors
from redis.asyncio.connection import AbstractConnection

from aa_storage_redis.redis_py import error_reply, stream_of

READ_BUFFER_BYTES = 64 * 1024
"""The most one read of a multiplexed connection's socket takes; a longer reply
takes several reads."""


def _parser() -> hiredis.Reader:
    # Error replies become redis-py's exception classes, as in redis-py itself.
    return hiredis.Reader(protocolError=redis_errors.InvalidResponse, replyError=error_reply)


class ReplyOwner(Protocol):
    """Who gets the replies: the multiplexed connection."""

    def deliver(self, replies: ReplyReader, reply: Any) -> None:
        """Hand one reply, or error reply, to the oldest pending request."""

    def lost(self, replies: ReplyReader, cause: redis_errors.RedisError) -> None:
        """The socket failed or was closed."""


class ReplyReader(asyncio.BufferedProtocol):
    """The transport's protocol once a connection is open: parses replies as bytes arrive.

    Buffered: the transport reads into one buffer this reader keeps, which hiredis
    copies from. A plain protocol would be handed a new ``bytes`` per read, and
    asyncio's selector loop allocates each at its largest read size (256 KiB), so
    every reply would cost an allocation the size of a ``mmap`` and its release.
    """

    def __init__(self, owner: ReplyOwner, closed: asyncio.Future[None]) -> None:
        self._owner = owner
        self._reader = _parser()
        self._buffer = bytearray(READ_BUFFER_BYTES)
        # Handed out as a view: asyncio's TLS transport fills the buffer past its first
        # read through buf[offset:], which of a bytearray would be a copy, losing the bytes.
        self._view = memoryview(self._buffer)
        self.closed = closed
        """Resolved once the transport is closed."""

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._view

    def buffer_updated(self, nbytes: int) -> None:
        reader = self._reader
        # hiredis' stub types the buffer as bytes; it takes any buffer, and copies it.
        reader.feed(self._buffer, 0, nbytes)  # type: ignore[arg-type]
        try:
            while (reply := reader.gets()) is not False:
                self._owner.deliver(self, reply)
        except redis_errors.InvalidResponse as exc:
            self._owner.lost(self, exc)

    def eof_received(self) -> bool:
        return False  # let the transport close; connection_lost reports it

    def connection_lost(self, exc: Exception | None) -> None:
        cause = redis_errors.ConnectionError("Connection closed by server.")
        cause.__context__ = exc
        self._owner.lost(self, cause)
        resolve(self.closed)


def resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class StreamReplies:
    """The replies and RESP3 pushes of an open redis-py connection, read from its
    stream directly. An error reply is returned as redis-py's exception, not
    raised; a closed stream raises ``redis.ConnectionError``.

    Not redis-py's ``read_response``: it hands pushes to a handler of its own, and
    an endless wait in it ends slowly when its task is cancelled. Cancelling
    :meth:`next` loses nothing: unread bytes stay in the stream.
    """

    def __init__(self, connection: AbstractConnection) -> None:
        self._stream = stream_of(connection)
        self._parser = _parser()

    async def next(self) -> Any:
        """The next reply or push, as hiredis reads it (a push is a list)."""
        while (message := self._parser.gets()) is False:
            data = await self._stream.read(65536)
            if not data:
                raise redis_errors.ConnectionError("Connection closed by server.")
            self._parser.feed(data)
        return message

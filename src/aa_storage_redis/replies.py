"""Reading replies in the transport's callback: hiredis parses them as bytes arrive."""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

import hiredis
from redis import exceptions as redis_errors
from redis._parsers import BaseParser


class ReplyOwner(Protocol):
    """Who gets the replies: the multiplexed connection."""

    def deliver(self, replies: ReplyReader, reply: Any) -> None:
        """Hand one reply, or error reply, to the oldest pending request."""

    def lost(self, replies: ReplyReader, cause: redis_errors.RedisError) -> None:
        """The socket failed or was closed."""


class ReplyReader(asyncio.Protocol):
    """The transport's protocol once a connection is open: parses replies as bytes arrive."""

    def __init__(self, owner: ReplyOwner, closed: asyncio.Future[None]) -> None:
        self._owner = owner
        # Error replies become redis-py's exception classes, as in redis-py itself.
        self._reader = hiredis.Reader(
            protocolError=redis_errors.InvalidResponse, replyError=BaseParser.parse_error
        )
        self.closed = closed
        """Resolved once the transport is closed."""

    def data_received(self, data: bytes) -> None:
        reader = self._reader
        reader.feed(data)
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

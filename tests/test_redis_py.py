"""What the driver relies on in redis-py's private names (``aa_storage_redis.redis_py``)
still holds in the installed redis-py; if a release changes it, these fail at once and
name what moved, and never hang. ``tox -e floor`` and ``tox -e latest`` run them at the
lowest and the newest redis-py the package allows."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from redis import exceptions as redis_errors
from redis.asyncio.connection import AbstractConnection, Connection

from aa_storage import StorageError
from aa_storage_redis import redis_py
from servers import RedisServer

# Far above what a loopback round trip takes; only stops a test that would hang.
BOUND = 10.0


@pytest_asyncio.fixture
async def connection(redis_server: RedisServer) -> AsyncIterator[Connection]:
    """An open redis-py connection to the session server, logged in as admin."""
    opened = Connection(
        host=redis_server.host, port=redis_server.port, password=redis_server.admin_password
    )
    async with asyncio.timeout(BOUND):
        await opened.connect()
    yield opened
    await opened.disconnect(nowait=True)


class TestVerify:
    def test_the_installed_redis_py_has_every_name(self) -> None:
        """verify() passes on the redis-py this suite runs with."""
        redis_py.verify()

    @pytest.mark.parametrize("name", ["_close"])
    def test_a_missing_method_is_named(self, monkeypatch: pytest.MonkeyPatch, name: str) -> None:
        """A redis-py without one of the private methods fails verify() with a
        StorageError that names it and the installed version."""
        monkeypatch.delattr(AbstractConnection, name)
        redis_py._verified.cache_clear()
        try:
            with pytest.raises(redis_py.RedisPyChanged, match=name) as caught:
                redis_py.verify()
        finally:
            monkeypatch.undo()
            redis_py._verified.cache_clear()
        assert isinstance(caught.value, StorageError)
        assert "redis-py" in str(caught.value)

    def test_a_missing_error_table_is_named(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(redis_py, "_PARSE_ERROR", None)
        redis_py._verified.cache_clear()
        try:
            with pytest.raises(redis_py.RedisPyChanged, match="parse_error"):
                redis_py.verify()
        finally:
            monkeypatch.undo()
            redis_py._verified.cache_clear()


@pytest.mark.asyncio
class TestTheConnectionsInternals:
    async def test_the_stream_is_read_directly(self, connection: Connection) -> None:
        """stream_of gives the stream that the server's replies arrive on."""
        await connection.send_packed_command(b"*1\r\n$4\r\nPING\r\n", check_health=False)
        stream = redis_py.stream_of(connection)
        async with asyncio.timeout(BOUND):
            assert await stream.readexactly(7) == b"+PONG\r\n"

    async def test_the_socket_is_handed_over(self, connection: Connection) -> None:
        """take_stream hands the open socket over: redis-py forgets it, and the socket
        still carries commands."""
        writer = redis_py.take_stream(connection)
        assert not connection.is_connected
        replies: asyncio.Queue[bytes] = asyncio.Queue()

        class Collect(asyncio.Protocol):
            def data_received(self, data: bytes) -> None:
                replies.put_nowait(data)

        writer.transport.set_protocol(Collect())
        writer.transport.write(b"*1\r\n$4\r\nPING\r\n")
        try:
            async with asyncio.timeout(BOUND):
                assert await replies.get() == b"+PONG\r\n"
        finally:
            writer.transport.abort()

    async def test_closing_at_once(self, connection: Connection) -> None:
        """close_now closes the socket; redis-py then sees no connection."""
        stream = redis_py.stream_of(connection)
        redis_py.close_now(connection)
        assert not connection.is_connected
        async with asyncio.timeout(BOUND):
            assert await stream.read() == b""  # the socket is gone

    async def test_a_closed_connection_is_refused(self, connection: Connection) -> None:
        await connection.disconnect(nowait=True)
        with pytest.raises(redis_errors.ConnectionError):
            redis_py.stream_of(connection)
        with pytest.raises(redis_errors.ConnectionError):
            redis_py.take_stream(connection)


class TestErrorReplies:
    @pytest.mark.parametrize(
        ("reply", "error"),
        [
            ("MOVED 3999 127.0.0.1:6381", redis_errors.MovedError),
            ("ASK 3999 127.0.0.1:6381", redis_errors.AskError),
            ("NOSCRIPT No matching script.", redis_errors.NoScriptError),
            ("NOPERM this user has no permissions", redis_errors.NoPermissionError),
            ("READONLY You can't write against a read only replica.", redis_errors.ReadOnlyError),
            ("TRYAGAIN Multiple keys request during rehashing", redis_errors.TryAgainError),
            ("CLUSTERDOWN The cluster is down", redis_errors.ClusterDownError),
            ("ERR unknown command 'X'", redis_errors.ResponseError),
        ],
    )
    def test_each_prefix_is_redis_pys_class(
        self, reply: str, error: type[redis_errors.RedisError]
    ) -> None:
        """The executor tells redirections and refusals apart by these classes."""
        assert type(redis_py.error_reply(reply)) is error

    def test_a_redirect_keeps_its_slot_and_address(self) -> None:
        moved = redis_py.error_reply("MOVED 3999 127.0.0.1:6381")
        assert isinstance(moved, redis_errors.MovedError)
        assert (moved.slot_id, moved.host, moved.port) == (3999, "127.0.0.1", 6381)

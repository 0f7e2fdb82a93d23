"""Scripts under a server that refuses part of them: an ACL, full memory, no EVALSHA.

Redis does not roll a script back when one of its commands fails, so the
increment script is ordered such that no failure leaves a counter without an
expiry or half counted.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
import redis

from aa_storage import AgentId, BackendError, SerializationError, SessionId, SessionRecord
from aa_storage_redis import RedisBackend, RedisStorageConfig
from conftest import _started
from servers import RedisServer

pytestmark = pytest.mark.asyncio
PASSWORD = "scripts-pw"
KEY = b"aa:ratelimit:k"


@pytest.fixture
def user_without(
    redis_server: RedisServer, raw: redis.Redis
) -> Iterator[Callable[[str], RedisBackend]]:
    """``user_without("pexpire")``: a backend whose user may run every command but that one."""
    made: list[str] = []

    def make(command: str) -> RedisBackend:
        name = f"no-{command}"
        raw.acl_setuser(
            name,
            enabled=True,
            passwords=[f"+{PASSWORD}"],
            keys=["aa:*"],
            commands=["+@all", f"-{command}"],
            reset=True,
        )
        made.append(name)
        url = redis_server.url_for(name, PASSWORD)
        return RedisBackend.connect(RedisStorageConfig(url=url, retries=0))

    yield make
    for name in made:
        raw.acl_deluser(name)


class TestIncrementIsNeverHalfApplied:
    async def test_without_pexpire_a_new_counter_still_gets_its_window(
        self, user_without: Callable[[str], RedisBackend], raw: redis.Redis
    ) -> None:
        """A user denied PEXPIRE creates counters with their window, armed by SET ... PX."""
        backend = user_without("pexpire")
        try:
            assert await backend.rate_limiter().increment("k", 5, 60) == 5
            assert 0 < raw.pttl(KEY) <= 60_000
        finally:
            await backend.aclose()

    async def test_without_pexpire_a_counter_lacking_expiry_is_left_as_it_was(
        self, user_without: Callable[[str], RedisBackend], raw: redis.Redis
    ) -> None:
        """When arming a found counter's window is denied, the increment is refused whole."""
        raw.set(KEY, 7)
        backend = user_without("pexpire")
        try:
            with pytest.raises(BackendError, match="permission denied"):
                await backend.rate_limiter().increment("k", 5, 60)
            assert raw.get(KEY) == b"7"
        finally:
            await backend.aclose()

    async def test_without_set_no_counter_is_created(
        self, user_without: Callable[[str], RedisBackend], raw: redis.Redis
    ) -> None:
        """A user denied SET cannot create a counter at all, so none exists without expiry."""
        backend = user_without("set")
        try:
            with pytest.raises(BackendError, match="permission denied"):
                await backend.rate_limiter().increment("k", 5, 60)
            assert raw.exists(KEY) == 0
        finally:
            await backend.aclose()

    async def test_a_key_of_another_type_is_left_untouched(
        self, redis_backend: RedisBackend, raw: redis.Redis
    ) -> None:
        """A hash where a counter belongs is a SerializationError, and gets no expiry."""
        raw.hset(KEY, "f", "v")
        with pytest.raises(SerializationError):
            await redis_backend.rate_limiter().increment("k", 1, 60)
        assert raw.pttl(KEY) == -1
        assert raw.hgetall(KEY) == {b"f": b"v"}

    async def test_out_of_memory_leaves_no_counter(self, fresh_redis_server: RedisServer) -> None:
        """With the server out of memory, the increment fails and leaves nothing behind."""
        client = fresh_redis_server.client()
        backend = RedisBackend.connect(RedisStorageConfig(url=fresh_redis_server.url))
        try:
            client.config_set("maxmemory-policy", "noeviction")
            client.config_set("maxmemory", 1)
            with pytest.raises(BackendError, match="out of memory"):
                await backend.rate_limiter().increment("k", 5, 60)
            client.config_set("maxmemory", 0)
            assert client.exists(KEY) == 0
        finally:
            client.close()
            await backend.aclose()
            client.close()


@pytest.fixture(params=["denied by the ACL", "renamed away"])
def evalsha_refused(
    request: pytest.FixtureRequest, user_without: Callable[[str], RedisBackend]
) -> Iterator[RedisBackend]:
    """A backend on a server that refuses EVALSHA but runs EVAL."""
    if request.param == "denied by the ACL":
        yield user_without("evalsha")
        return
    server = _started(extra_args=["--rename-command", "EVALSHA", ""])
    try:
        yield RedisBackend.connect(RedisStorageConfig(url=server.url, retries=0))
    finally:
        server.close()


class TestServerRefusingEvalsha:
    async def test_scripts_keep_working(self, evalsha_refused: RedisBackend) -> None:
        """Every call after the first, when the script would go by SHA, still runs it."""
        counter, sessions = evalsha_refused.rate_limiter(), evalsha_refused.sessions()
        try:
            assert [await counter.increment("k", 1, 60) for _ in range(4)] == [1, 2, 3, 4]
            assert evalsha_refused.pool.evalsha_refused
            record = SessionRecord(SessionId.new(), AgentId.new(), 9)
            for _ in range(2):
                await sessions.save(record)
            assert await sessions.load(record.session_id) == record
        finally:
            await evalsha_refused.aclose()

    async def test_check_reports_it(self, evalsha_refused: RedisBackend) -> None:
        """describe(), which check prints, says scripts are sent in full."""
        try:
            facts = dict((await evalsha_refused.describe()).facts)
        finally:
            await evalsha_refused.aclose()
        assert facts["scripts"] == "sent in full with EVAL: the server refuses EVALSHA"

    async def test_a_server_accepting_evalsha_is_reported_so(
        self, redis_backend: RedisBackend
    ) -> None:
        """On an ordinary server, describe() says scripts go by SHA."""
        facts = dict((await redis_backend.describe()).facts)
        assert facts["scripts"] == "by SHA (EVALSHA)"
        assert not redis_backend.pool.evalsha_refused

"""Failures of the network and the server: bounded waits, safe retries, recovery.

Every call under a fault either returns the right answer or raises
BackendError; none hangs, none returns a wrong answer, and none lets a
redis-py exception through. The generous ``wait_for`` bounds below only stop
a hung test; they are not latency assertions.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import pytest_asyncio
import redis

from aa_storage import AgentId, BackendError, PolicyDocument, SessionId, SessionRecord
from aa_storage.testing import bounded
from aa_storage_redis import RedisBackend, RedisStorageConfig
from faultproxy import FaultProxy
from servers import RedisServer
from waiting import eventually

pytestmark = pytest.mark.asyncio
FAST = {"connect_timeout": 0.3, "socket_timeout": 0.3}


def connect(url: str, **settings: Any) -> RedisBackend:
    return RedisBackend.connect(RedisStorageConfig(url=url, **{**FAST, **settings}))


@pytest_asyncio.fixture
async def proxied(
    redis_server: RedisServer, redis_url: str, fault_proxy: Callable[[int], FaultProxy]
) -> AsyncIterator[tuple[RedisBackend, FaultProxy]]:
    proxy = fault_proxy(redis_server.port)
    backend = connect(proxy.url)
    yield backend, proxy
    await backend.aclose()


class TestFrozenServer:
    async def test_frozen_server_gives_backend_error_not_a_hang(
        self, fresh_redis_server: RedisServer
    ) -> None:
        """With the server SIGSTOPped, warm and new connections both fail with BackendError."""
        backend = connect(fresh_redis_server.url, pool_size=2)
        try:
            await backend.rate_limiter().increment("k", 1, 60)  # one warm connection
            fresh_redis_server.freeze()
            calls = [
                backend.rate_limiter().current("k"),
                backend.rate_limiter().increment("k", 1, 60),
            ]
            for outcome in await bounded(asyncio.gather(*calls, return_exceptions=True)):
                assert isinstance(outcome, BackendError)
                assert "did not answer in time" in str(outcome)
            fresh_redis_server.thaw()
            assert await bounded(backend.rate_limiter().current("k")) in (1, 2)
        finally:
            fresh_redis_server.thaw()
            await backend.aclose()


class TestRestart:
    async def test_same_backend_recovers_after_a_restart(
        self, fresh_redis_server: RedisServer
    ) -> None:
        """Killed, the server gives fast BackendErrors; restarted, the same backend works again,
        scripts included."""
        backend = connect(fresh_redis_server.url)
        counter = backend.rate_limiter()
        try:
            assert await counter.increment("k", 1, 60) == 1
            fresh_redis_server.kill()
            with pytest.raises(BackendError, match="cannot reach redis"):
                await bounded(counter.increment("k", 1, 60))
            with pytest.raises(BackendError, match="cannot reach redis"):
                await bounded(counter.current("k"))
            fresh_redis_server.restart()
            assert await bounded(counter.increment("k", 5, 60)) == 5  # empty server, no scripts
            record = SessionRecord(SessionId.new(), AgentId.new(), 1)
            await backend.sessions().save(record)
            assert await backend.sessions().load(record.session_id) == record
        finally:
            await backend.aclose()


class TestPool:
    async def test_fifty_callers_share_two_connections(self, redis_url: str) -> None:
        """With pool_size=2, 50 concurrent callers all complete, exactly."""
        backend = connect(redis_url, pool_size=2, socket_timeout=5.0)
        try:
            counter = backend.rate_limiter()
            await bounded(asyncio.gather(*(counter.increment("k", 1, 60) for _ in range(50))))
            assert await counter.current("k") == 50
        finally:
            await backend.aclose()


class TestRetries:
    async def test_a_read_is_retried_after_a_dropped_reply(
        self, proxied: tuple[RedisBackend, FaultProxy]
    ) -> None:
        """A read whose reply is cut mid-way is retried on a new connection and answers right."""
        backend, proxy = proxied
        await backend.rate_limiter().increment("k", 7, 60)
        accepted = proxy.connections_accepted
        proxy.drop_mid_reply()
        assert await bounded(backend.rate_limiter().current("k")) == 7
        assert proxy.replies_cut == 1
        assert proxy.connections_accepted == accepted + 1

    @pytest.mark.parametrize(
        ("write", "command"),
        [
            ("save", "evalsha"),
            ("delete", "del"),
            ("increment", "evalsha"),
            ("reset", "del"),
            ("cache_policy", "evalsha"),
            ("invalidate", "evalsha"),
        ],
    )
    async def test_a_write_whose_reply_is_lost_runs_once(
        self,
        proxied: tuple[RedisBackend, FaultProxy],
        redis_server: RedisServer,
        raw: redis.Redis,
        write: str,
        command: str,
    ) -> None:
        """A write whose reply is lost is a BackendError, and the server ran it exactly once:
        running it again could undo other callers' writes acknowledged in between."""
        backend, proxy = proxied
        calls = operations(backend)
        for name in ("save", "increment", "cache_policy", "invalidate"):  # load every script
            await calls[name]()
        raw.config_resetstat()
        proxy.drop_mid_reply()
        with pytest.raises(BackendError, match="cannot reach redis"):
            await bounded(calls[write]())
        assert proxy.replies_cut == 1
        assert redis_server.commandstats().get(command) == 1

    async def test_a_lost_reset_does_not_wipe_later_increments(
        self, proxied: tuple[RedisBackend, FaultProxy], raw: redis.Redis
    ) -> None:
        """Increments acknowledged after a reset whose reply was lost all survive."""
        backend, proxy = proxied
        counter = backend.rate_limiter()
        await counter.increment("k", 5, 60)
        proxy.drop_mid_reply()
        with pytest.raises(BackendError):
            await bounded(counter.reset("k"))
        assert await counter.increment("k", 2, 60) == 2
        assert raw.get("aa:ratelimit:k") == b"2"

    async def test_a_write_that_was_never_sent_is_retried(
        self, proxied: tuple[RedisBackend, FaultProxy]
    ) -> None:
        """A write that could not get a connection at first is sent once one opens."""
        _, proxy = proxied
        proxy.refuse()
        # A new backend has no open connection, so its first try must connect.
        backend = connect(proxy.url, retries=10)
        try:
            refused = asyncio.ensure_future(backend.rate_limiter().increment("fresh", 1, 60))
            await eventually(
                lambda: proxy.connections_refused > 0 or refused.done(), "a connection refused"
            )
            proxy.passthrough()
            assert await bounded(refused) == 1
            assert proxy.connections_refused >= 1
        finally:
            await backend.aclose()

    async def test_unreachable_server_is_retried_then_reported(
        self, proxied: tuple[RedisBackend, FaultProxy]
    ) -> None:
        """Refused connections are tried 1 + retries times, then reported as BackendError."""
        backend, proxy = proxied
        proxy.refuse()
        with pytest.raises(BackendError, match="cannot reach redis"):
            await bounded(backend.rate_limiter().increment("k", 1, 60))
        assert proxy.connections_refused == 1 + backend.pool.config.retries
        proxy.passthrough()
        assert await bounded(backend.rate_limiter().increment("k", 1, 60)) == 1


class TestLateReplies:
    async def test_a_timed_out_connection_is_never_reused(
        self, proxied: tuple[RedisBackend, FaultProxy], redis_server: RedisServer
    ) -> None:
        """After a timeout, the late reply is never read as the answer to the next command."""
        backend, proxy = proxied
        counter = backend.rate_limiter()
        await counter.increment("a", 111, 60)
        await counter.increment("b", 222, 60)
        proxy.blackhole()
        with pytest.raises(BackendError, match="did not answer in time"):
            await bounded(counter.current("a"))
        proxy.passthrough()  # the held-back command goes on; its reply has no socket to reach
        await eventually(lambda: proxy.open_connections == 0, "the timed-out connection closed")
        assert await bounded(counter.current("b")) == 222
        assert await bounded(counter.current("a")) == 111

    async def test_a_cancelled_call_never_leaves_its_reply_behind(
        self, redis_server: RedisServer, redis_url: str, fault_proxy: Callable[[int], FaultProxy]
    ) -> None:
        """A caller that gives up (cancels) mid-call does not leave a reply for the next caller."""
        proxy = fault_proxy(redis_server.port)
        backend = connect(proxy.url, pool_size=1, socket_timeout=5.0)
        counter = backend.rate_limiter()
        try:
            await counter.increment("a", 111, 60)
            await counter.increment("b", 222, 60)
            proxy.blackhole()
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(counter.current("a"), 0.2)
            proxy.passthrough()
            # The late reply to current("a") arrives and is dropped, on the same connection.
            await eventually(lambda: backend.stats().pending == 0, "the late reply was read")
            assert await bounded(counter.current("b")) == 222
            assert backend.stats().connections_opened == 1
        finally:
            await backend.aclose()


RECORD = SessionRecord(SessionId.from_hex("ab" * 16), AgentId.from_hex("cd" * 16), 42)
POLICY = PolicyDocument(1, "p", [])


def operations(backend: RedisBackend) -> dict[str, Callable[[], Awaitable[Any]]]:
    sessions, counter, policies = backend.sessions(), backend.rate_limiter(), backend.policies()
    return {
        "save": lambda: sessions.save(RECORD),
        "load": lambda: sessions.load(RECORD.session_id),
        "delete": lambda: sessions.delete(RECORD.session_id),
        "increment": lambda: counter.increment("seen", 1, 60),
        "current": lambda: counter.current("seen"),
        "reset": lambda: counter.reset("seen"),
        "cache_policy": lambda: policies.cache_policy(RECORD.agent_id, POLICY, 60),
        "get_policy": lambda: policies.get_policy(RECORD.agent_id),
        "invalidate": lambda: policies.invalidate(RECORD.agent_id),
    }


# What each operation returns when the counter "seen" holds 3 and the session
# and policy are stored.
EXPECTED = {
    "save": None,
    "load": RECORD,
    "delete": None,
    "increment": 4,
    "current": 3,
    "reset": None,
    "cache_policy": None,
    "get_policy": POLICY,
    "invalidate": None,
}
READS = {"load", "current", "get_policy"}


async def prepare(backend: RedisBackend) -> None:
    """Store the session, the policy, and 3 in the counter "seen"."""
    calls = operations(backend)
    await calls["save"]()
    await calls["cache_policy"]()
    await calls["reset"]()
    await backend.rate_limiter().increment("seen", 3, 60)


class TestUnderFaults:
    """Each fault is proven to fire, then each operation gives exactly what the fault allows."""

    @pytest.mark.parametrize("operation", EXPECTED)
    async def test_latency_below_the_timeout_changes_no_result(
        self, proxied: tuple[RedisBackend, FaultProxy], operation: str
    ) -> None:
        """Replies slower than usual but within socket_timeout give the right result."""
        warm, proxy = proxied
        await prepare(warm)
        # socket_timeout far above the latency, so a loaded machine can't turn it into one.
        backend = connect(proxy.url, socket_timeout=5.0)
        try:
            proxy.latency(0.1)
            assert await bounded(operations(backend)[operation]()) == EXPECTED[operation]
            assert proxy.chunks_delayed >= 1
        finally:
            await backend.aclose()

    @pytest.mark.parametrize("operation", EXPECTED)
    async def test_a_cut_reply_is_retried_for_reads_only(
        self, proxied: tuple[RedisBackend, FaultProxy], operation: str
    ) -> None:
        """A reply cut mid-way: a read answers right after a retry, a write is a BackendError."""
        backend, proxy = proxied
        await prepare(backend)
        proxy.drop_mid_reply()
        call = operations(backend)[operation]
        if operation in READS:
            assert await bounded(call()) == EXPECTED[operation]
        else:
            with pytest.raises(BackendError, match="cannot reach redis"):
                await bounded(call())
        assert proxy.replies_cut == 1

    @pytest.mark.parametrize("operation", EXPECTED)
    async def test_a_blackhole_times_out(
        self, proxied: tuple[RedisBackend, FaultProxy], operation: str
    ) -> None:
        """A network that delivers nothing gives BackendError after the timeout, then recovers."""
        backend, proxy = proxied
        await prepare(backend)
        proxy.blackhole()
        with pytest.raises(BackendError, match="did not answer in time"):
            await bounded(operations(backend)[operation]())
        assert proxy.chunks_held >= 1
        proxy.passthrough()
        await prepare(backend)
        assert await bounded(operations(backend)[operation]()) == EXPECTED[operation]

    @pytest.mark.parametrize("operation", EXPECTED)
    async def test_refused_connections_are_reported(
        self, proxied: tuple[RedisBackend, FaultProxy], operation: str
    ) -> None:
        """With new connections refused, every operation is retried (none was sent) and then
        fails; once connections are accepted it is right again."""
        warm, proxy = proxied
        await prepare(warm)
        proxy.refuse()
        backend = connect(proxy.url)  # no open connection: every try must connect
        try:
            with pytest.raises(BackendError, match="cannot reach redis"):
                await bounded(operations(backend)[operation]())
            assert proxy.connections_refused == 1 + backend.pool.config.retries
            proxy.passthrough()
            assert await bounded(operations(backend)[operation]()) == EXPECTED[operation]
        finally:
            await backend.aclose()

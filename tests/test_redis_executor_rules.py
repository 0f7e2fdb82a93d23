"""Each rule of the execution core, with a test that fails when the rule is broken.

Attempts and connections are counted from outside the driver: the fault proxy counts the
connections it accepts and refuses, the server counts the commands it ran (commandstats, or the
counters' own values). The rules: reads are retried after a connection error, writes only when
never sent; timeouts and refused logins are never retried; at most ``retries`` extra tries are
made; a connection that timed out is never used again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import redis

from aa_storage import BackendError
from aa_storage.testing import bounded
from aa_storage_redis import RedisBackend
from executor_support import (
    KNOWN,
    SHORT,
    WINDOW,
    OpenBackend,
    ProxiedBackend,
    plant,
)
from faultproxy import FaultProxyFactory
from servers import ADMIN_PASSWORD, DRIVER_USER, RedisServer, build_url
from waiting import Clock, eventually

pytestmark = pytest.mark.asyncio

SLOT = KNOWN[3]

# Each read, the command it sends, and its answer once KNOWN is planted.
READS: dict[str, tuple[Callable[[RedisBackend], Awaitable[Any]], str, Any]] = {
    "current": (lambda b: b.rate_limiter().current(SLOT.counter), "get", SLOT.total),
    "load": (lambda b: b.sessions().load(SLOT.record.session_id), "hmget", SLOT.record),
    "get_policy": (lambda b: b.policies().get_policy(SLOT.record.agent_id), "get", SLOT.policy),
}


class TestReadsAndWrites:
    @pytest.mark.parametrize("read", READS)
    async def test_a_read_is_retried_on_a_new_connection_after_its_reply_is_cut(
        self, redis_server: RedisServer, read: str, proxied_backend: ProxiedBackend
    ) -> None:
        """A read whose reply is cut answers right: it ran twice, the second time on a new
        connection."""
        call, command, expected = READS[read]
        proxy, backend = proxied_backend(pool_size=1)
        await plant(backend)
        accepted, ran = proxy.connections_accepted, redis_server.commandstats().get(command, 0)
        proxy.drop_mid_reply()
        assert await bounded(call(backend)) == expected
        assert proxy.replies_cut == 1
        assert proxy.connections_accepted == accepted + 1
        assert redis_server.commandstats()[command] == ran + 2

    async def test_batched_writes_whose_replies_are_cut_run_at_most_once(
        self, raw: redis.Redis, proxied_backend: ProxiedBackend
    ) -> None:
        """When a batch's replies are cut, each increment either answers (and ran once) or
        fails with BackendError (and ran at most once); the reads in the batch answer right."""
        proxy, backend = proxied_backend(pool_size=1)
        await plant(backend)
        counter = backend.rate_limiter()
        proxy.drop_mid_reply()
        writes = [counter.increment(f"cut{i}", 1, WINDOW) for i in range(40)]
        reads = [counter.current(slot.counter) for slot in KNOWN]
        outcomes = await bounded(asyncio.gather(*writes, *reads, return_exceptions=True))

        assert proxy.replies_cut == 1
        assert outcomes[40:] == [slot.total for slot in KNOWN]
        failed = 0
        for i, outcome in enumerate(outcomes[:40]):
            stored = raw.get(f"aa:ratelimit:cut{i}")
            if isinstance(outcome, BackendError):
                failed += 1
                assert "cannot reach redis" in str(outcome)
                assert stored in (None, b"1"), (i, stored)
            else:
                assert outcome == 1, (i, outcome)
                assert stored == b"1", (i, stored)
        assert failed, "the cut hit no write, so the test proved nothing"

    async def test_writes_that_never_left_are_sent_once_a_connection_opens(
        self, raw: redis.Redis, proxied_backend: ProxiedBackend
    ) -> None:
        """Writes queued while the first connection is refused are sent on the next one, each
        exactly once."""
        proxy, backend = proxied_backend(pool_size=1, retries=2)
        proxy.refuse(1)  # before the first call: the backend connects only then
        counter = backend.rate_limiter()
        writes = [counter.increment(f"queued{i}", 1, WINDOW) for i in range(20)]
        assert await bounded(asyncio.gather(*writes)) == [1] * 20
        assert proxy.connections_refused == 1
        assert proxy.connections_accepted == 2
        for i in range(20):
            assert raw.get(f"aa:ratelimit:queued{i}") == b"1"


class TestTimeouts:
    @pytest.mark.parametrize("read", READS)
    async def test_a_timeout_is_never_retried(
        self, redis_server: RedisServer, read: str, proxied_backend: ProxiedBackend
    ) -> None:
        """A read the server does not answer in time fails after one attempt: no connection
        is opened for a retry, and the server runs the command once when the network heals."""
        call, command, _ = READS[read]
        proxy, backend = proxied_backend(pool_size=1, retries=3, **SHORT)
        await plant(backend)
        accepted, ran = proxy.connections_accepted, redis_server.commandstats().get(command, 0)
        proxy.blackhole()
        with pytest.raises(BackendError, match="did not answer in time"):
            await bounded(call(backend))
        assert proxy.connections_accepted == accepted
        proxy.passthrough()  # the held-back command now reaches the server
        await eventually(lambda: proxy.open_connections == 0, "the timed-out connection closed")
        await eventually(
            lambda: redis_server.commandstats().get(command, 0) > ran, "the held command ran"
        )
        assert redis_server.commandstats()[command] == ran + 1
        assert proxy.connections_accepted == accepted

    async def test_a_lone_command_after_an_idle_spell_still_times_out(
        self, proxied_backend: ProxiedBackend, clock: Clock
    ) -> None:
        """A command written at once on a connection that has been idle for longer than
        socket_timeout is still bounded by it: a silent network fails it with BackendError."""
        proxy, backend = proxied_backend(pool_size=1, **SHORT)
        counter = backend.rate_limiter()
        await counter.increment("k", 1, WINDOW)
        await clock.advance(2 * SHORT["socket_timeout"])  # every earlier deadline has passed
        proxy.blackhole()
        try:
            with pytest.raises(BackendError, match="did not answer in time"):
                await bounded(counter.current("k"))
        finally:
            proxy.passthrough()
        assert backend.stats().timeouts == 1

    async def test_a_timed_out_connection_is_replaced_and_its_late_reply_never_read(
        self, proxied_backend: ProxiedBackend
    ) -> None:
        """After a timeout the next call opens a new connection, so the late reply to the
        timed-out call is never read as another command's answer."""
        proxy, backend = proxied_backend(pool_size=1, **SHORT)
        counter = backend.rate_limiter()
        await counter.increment("a", 111, WINDOW)
        await counter.increment("b", 222, WINDOW)
        accepted = proxy.connections_accepted
        proxy.blackhole()
        with pytest.raises(BackendError, match="did not answer in time"):
            await bounded(counter.current("a"))
        proxy.passthrough()  # the reply to current("a") is now on its way
        assert await bounded(counter.current("b")) == 222
        assert proxy.connections_accepted == accepted + 1
        assert await bounded(counter.current("a")) == 111
        stats = backend.stats()
        assert (stats.timeouts, stats.reconnects) == (1, 1)

    async def test_a_timeout_fails_every_command_pending_on_the_connection(
        self, proxied_backend: ProxiedBackend
    ) -> None:
        """When the oldest pending command times out, every command pending on that
        connection fails with BackendError, and none of their late replies is misread."""
        proxy, backend = proxied_backend(pool_size=1, **SHORT)
        await plant(backend)
        counter = backend.rate_limiter()
        proxy.blackhole()
        calls = [counter.current(slot.counter) for slot in KNOWN]
        for outcome in await bounded(asyncio.gather(*calls, return_exceptions=True)):
            assert isinstance(outcome, BackendError), outcome
            assert "did not answer in time" in str(outcome)
        proxy.passthrough()
        answers = await bounded(asyncio.gather(*(counter.current(s.counter) for s in KNOWN)))
        assert answers == [slot.total for slot in KNOWN]
        assert backend.stats().timeouts == 1


class TestLogins:
    @pytest.mark.parametrize(
        ("user", "password"),
        [(None, "wrong-password"), (DRIVER_USER, "wrong-password"), ("nobody", ADMIN_PASSWORD)],
    )
    async def test_a_refused_login_is_never_retried(
        self,
        acl_redis_server: RedisServer,
        fault_proxy: FaultProxyFactory,
        open_backend: OpenBackend,
        user: str | None,
        password: str,
    ) -> None:
        """A login the server refuses costs each call exactly one connection, however many
        retries are allowed."""
        proxy = fault_proxy(acl_redis_server.port)
        url = build_url(proxy.host, proxy.port, user=user, password=password)
        backend = open_backend(url, retries=3)
        for calls in range(1, 4):
            with pytest.raises(BackendError, match="refused the login"):
                await bounded(backend.rate_limiter().current("k"))
            assert proxy.connections_accepted == calls


class TestRetryCount:
    @pytest.mark.parametrize("retries", [0, 1, 3])
    @pytest.mark.parametrize("operation", ["current", "increment"])
    async def test_exactly_retries_extra_tries_are_made(
        self, retries: int, operation: str, proxied_backend: ProxiedBackend
    ) -> None:
        """With every connection refused, a call (read or never-sent write) is tried exactly
        1 + retries times, then fails; once connections are accepted it works."""
        proxy, backend = proxied_backend(retries=retries)
        proxy.refuse()  # before the first call: the backend connects only then
        counter = backend.rate_limiter()
        call = {"current": counter.current, "increment": lambda k: counter.increment(k, 1, 60)}
        with pytest.raises(BackendError, match="cannot reach redis"):
            await bounded(call[operation]("k"))
        assert proxy.connections_refused == 1 + retries
        assert proxy.connections_accepted == 1 + retries
        proxy.passthrough()
        assert await bounded(call[operation]("k")) == {"current": 0, "increment": 1}[operation]
        assert proxy.connections_accepted == 2 + retries

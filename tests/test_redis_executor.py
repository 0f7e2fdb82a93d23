"""The execution core under concurrency: batching, reply matching, fairness, bounds, backpressure.

Every test runs against a real redis-server, most through the fault proxy so that connections
and socket writes are counted from outside the driver, not inferred from its own code. Waits
are bounded by a hang guard only; no assertion depends on how fast the machine is, except the
frozen-server bound, which is three times the documented one.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable
from typing import Any

import pytest
import redis

from aa_storage import BackendError
from aa_storage.testing import HANG_SECS, bounded
from aa_storage_redis import RedisBackend
from aa_storage_redis.replies import READ_BUFFER_BYTES
from executor_support import (
    KNOWN,
    SHORT,
    WINDOW,
    OpenBackend,
    ProxiedBackend,
    Slot,
    known_read,
    plant,
    read_all_known,
)
from servers import RedisServer
from waiting import eventually

pytestmark = pytest.mark.asyncio


class TestBatching:
    @pytest.mark.parametrize("operation", ["current", "increment"])
    async def test_concurrent_commands_share_socket_writes(
        self, raw: redis.Redis, operation: str, proxied_backend: ProxiedBackend
    ) -> None:
        """200 concurrent commands over one connection reach the server in far fewer socket
        writes than commands, and each caller gets its own answer."""
        proxy, backend = proxied_backend(pool_size=1)
        counter = backend.rate_limiter()
        for i in range(200):
            raw.set(f"aa:ratelimit:b{i}", i)
        await counter.increment("warm", 1, WINDOW)  # the connection is open, the script loaded
        before, chunks_before = backend.stats(), proxy.chunks_to_server

        if operation == "current":
            calls = [counter.current(f"b{i}") for i in range(200)]
            expected = list(range(200))
        else:
            calls = [counter.increment(f"b{i}", 1000, WINDOW) for i in range(200)]
            expected = [i + 1000 for i in range(200)]
        assert await bounded(asyncio.gather(*calls)) == expected

        after = backend.stats()
        commands = after.commands_sent - before.commands_sent
        writes = after.socket_writes - before.socket_writes
        assert commands == 200
        assert writes < commands / 4, after
        assert after.max_commands_per_write > 1
        assert after.mean_commands_per_write > 1.0
        assert proxy.chunks_to_server - chunks_before < commands / 4
        assert proxy.connections_accepted == 1

    @pytest.mark.parametrize("tls", [False, True], ids=["tcp", "tls"])
    async def test_replies_longer_than_the_read_buffer_reach_their_callers(
        self, tls: bool, tls_redis_server: RedisServer
    ) -> None:
        """A reply several times the connection's read buffer, split across reads and
        pipelined between small ones, reaches its own caller whole, and the ones after
        it stay matched: over TCP, and over TLS, whose transport fills the buffer in
        pieces."""
        server = tls_redis_server
        server.flushall()
        # One connection, and no retry that could hide a lost one.
        backend = RedisBackend.connect(server.backend_config(tls=tls, pool_size=1, retries=0))
        try:
            executor = backend.pool
            sizes = [0, 1, READ_BUFFER_BYTES - 1, READ_BUFFER_BYTES, 3 * READ_BUFFER_BYTES + 7]
            values = {f"big{i}".encode(): bytes([65 + i]) * n for i, n in enumerate(sizes)}
            raw = server.client()
            for key, value in values.items():
                raw.set(key, value)
            await executor.execute("PING", key=None, read=True)  # the connection is open

            keys = [key for key in values for _ in range(3)]
            calls = (executor.execute("GET", key, key=key, read=True) for key in keys)
            assert await bounded(asyncio.gather(*calls)) == [values[key] for key in keys]
            stats = backend.stats()
            assert stats.max_commands_per_write > 1  # they did share socket writes
            assert (stats.connections_opened, stats.connections_lost) == (1, 0)
        finally:
            await backend.aclose()

    async def test_a_lone_command_is_written_at_once(self, proxied_backend: ProxiedBackend) -> None:
        """On an idle connection a call is written in the caller's own step, one write for one
        command, so sequential callers never wait for a batch to fill."""
        proxy, backend = proxied_backend(pool_size=1)
        counter = backend.rate_limiter()
        await counter.increment("k", 5, WINDOW)
        for _ in range(20):
            before, chunks_before = backend.stats(), proxy.chunks_to_server
            call = asyncio.ensure_future(counter.current("k"))
            await asyncio.sleep(0)  # the call takes its first step, up to awaiting its reply
            assert backend.stats().socket_writes == before.socket_writes + 1
            assert await bounded(call) == 5
            after = backend.stats()
            assert after.commands_sent == before.commands_sent + 1
            assert after.socket_writes == before.socket_writes + 1
            # The proxy counts a chunk before forwarding it, so before the reply exists.
            assert proxy.chunks_to_server == chunks_before + 1

    async def test_a_sequential_caller_uses_one_connection(
        self, proxied_backend: ProxiedBackend
    ) -> None:
        """Commands go to the connection with the fewest pending, the first on ties, so one
        caller at a time never opens a second connection however large the pool."""
        proxy, backend = proxied_backend(pool_size=4)
        counter = backend.rate_limiter()
        for total in range(1, 51):
            assert await counter.increment("k", 1, WINDOW) == total
        assert proxy.connections_accepted == 1
        assert backend.stats().connections_opened == 1

    async def test_concurrent_callers_never_exceed_pool_size(
        self, proxied_backend: ProxiedBackend
    ) -> None:
        """Hundreds of concurrent callers share at most pool_size connections."""
        proxy, backend = proxied_backend(pool_size=3)
        await plant(backend)
        rng = random.Random(3)
        reads = [known_read(backend, rng) for _ in range(600)]
        answers = await bounded(asyncio.gather(*(call for call, _ in reads)))
        assert answers == [expected for _, expected in reads]
        assert 1 <= proxy.connections_accepted <= 3
        assert backend.stats().connections_opened == proxy.connections_accepted


class TestCancellation:
    @pytest.mark.parametrize("pool_size", [1, 2])
    async def test_cancelled_calls_never_misdeliver_a_reply(
        self, raw: redis.Redis, pool_size: int, proxied_backend: ProxiedBackend
    ) -> None:
        """Thousands of calls cancelled or timed out at random points, among normal calls,
        leave every completed call its own key's value and close no connection."""
        proxy, backend = proxied_backend(pool_size=pool_size)
        await plant(backend)
        rng = random.Random(pool_size)
        increments: dict[str, tuple[int, bool]] = {}  # key -> (amount, acknowledged)
        finished = given_up = 0

        for wave in range(30):
            calls: list[tuple[asyncio.Future[Any], Any, str | None]] = []
            cancellers = []
            for n in range(100):
                call, expected, key = self._random_call(backend, rng, f"w{wave}n{n}")
                style = rng.randrange(4)
                if style == 1:
                    call = asyncio.wait_for(call, rng.uniform(0, 0.002))
                task = asyncio.ensure_future(call)
                if style == 2:
                    asyncio.get_running_loop().call_later(rng.uniform(0, 0.002), task.cancel)
                elif style == 3:
                    cancellers.append(asyncio.ensure_future(_cancel_after(task, rng.randrange(6))))
                calls.append((task, expected, key))
            await bounded(asyncio.wait([task for task, _, _ in calls] + cancellers))
            for task, expected, key in calls:
                if task.cancelled() or isinstance(task.exception(), TimeoutError):
                    given_up += 1
                    if key is not None:
                        increments[key] = (expected, False)
                    continue
                assert task.result() == expected
                finished += 1
                if key is not None:
                    increments[key] = (expected, True)

        assert given_up > 300, "too few calls were cancelled for the test to mean anything"
        assert finished > 300, "too few calls completed for the test to mean anything"
        await read_all_known(backend)
        for key, (amount, acknowledged) in increments.items():
            stored = raw.get(f"aa:ratelimit:{key}")
            allowed = {str(amount).encode()} if acknowledged else {None, str(amount).encode()}
            assert stored in allowed, (key, stored)
        stats = backend.stats()
        assert (stats.reconnects, stats.timeouts) == (0, 0)
        assert proxy.connections_accepted == stats.connections_opened <= pool_size
        assert proxy.open_connections == proxy.connections_accepted

    @staticmethod
    def _random_call(
        backend: RedisBackend, rng: random.Random, fresh_key: str
    ) -> tuple[Awaitable[Any], Any, str | None]:
        """A read of known data, or an increment of a key of its own; the increment's key
        comes back so that the test can check the server ran it at most once."""
        if rng.randrange(4) == 0:
            amount = rng.randrange(1, 1000)
            return backend.rate_limiter().increment(fresh_key, amount, WINDOW), amount, fresh_key
        call, expected = known_read(backend, rng)
        return call, expected, None

    @pytest.mark.parametrize("pool_size", [1, 2])
    async def test_a_caller_cancelled_as_its_turn_comes_costs_the_others_nothing(
        self, redis_url: str, open_backend: OpenBackend, pool_size: int
    ) -> None:
        """A caller cancelled just as its turn comes (its reply has arrived but it has not
        run yet, or its command waits to be written) leaves every other caller its answer,
        and the next call does not stall."""
        # A stall would wait for socket_timeout: past the hang guard, so it fails the test.
        backend = open_backend(redis_url, pool_size=pool_size, socket_timeout=3 * HANG_SECS)
        await plant(backend)
        counter = backend.rate_limiter()
        effective = 0
        for round_ in range(200):
            slots = KNOWN[round_ % 5 : round_ % 5 + 4]
            victim = 1 + round_ % 3
            tasks: list[asyncio.Future[int]] = []
            cancelled: list[bool] = []

            async def first_caller(
                slot: Slot = slots[0],
                tasks: list[asyncio.Future[int]] = tasks,
                victim: int = victim,
                cancelled: list[bool] = cancelled,
            ) -> int:
                total = await counter.current(slot.counter)
                # On one connection the victim's reply came with this one's or comes later:
                # it is cancelled between its reply and its next step, or while it waits.
                cancelled.append(tasks[victim].cancel())
                return total

            cancel_on_reply = round_ % 2 == 0
            if cancel_on_reply:
                tasks.append(asyncio.ensure_future(first_caller()))
            calls = slots[1:] if cancel_on_reply else slots
            tasks += [asyncio.ensure_future(counter.current(slot.counter)) for slot in calls]
            if not cancel_on_reply:
                # Every caller has queued its command; all but the first wait to be written.
                await asyncio.sleep(0)
                cancelled.append(tasks[victim].cancel())
            await bounded(asyncio.wait(tasks))
            assert len(cancelled) == 1
            effective += cancelled[0]
            for index, (task, slot) in enumerate(zip(tasks, slots, strict=True)):
                if index == victim and cancelled[0]:
                    assert task.cancelled()
                else:
                    assert task.result() == slot.total
            assert await bounded(counter.current(KNOWN[0].counter)) == KNOWN[0].total
        # With two connections the victim's reply may come before the first caller's.
        assert effective == 200 if pool_size == 1 else effective >= 100
        assert backend.stats().reconnects == 0


async def _cancel_after(task: asyncio.Future[Any], turns: int) -> None:
    """Cancel ``task`` after ``turns`` turns of the event loop."""
    for _ in range(turns):
        await asyncio.sleep(0)
    task.cancel()


class TestFairness:
    @pytest.mark.parametrize("pool_size", [1, 2])
    async def test_tight_loops_each_get_a_fair_share(
        self, redis_url: str, open_backend: OpenBackend, pool_size: int
    ) -> None:
        """16 tasks calling current() back to back on 1-2 connections, until they have made
        4000 calls between them, all succeed, and none makes fewer than half the mean."""
        backend = open_backend(redis_url, pool_size=pool_size)
        counter = backend.rate_limiter()
        await counter.increment("k", 3, WINDOW)
        counts = [0] * 16
        wrong: list[object] = []
        running = True
        enough = asyncio.Event()

        async def tight_loop(index: int) -> None:
            while running:
                try:
                    total = await counter.current("k")
                except Exception as exc:  # every failure is what the test counts
                    wrong.append(exc)
                else:
                    if total != 3:
                        wrong.append(total)
                    counts[index] += 1
                    if sum(counts) >= 4000:
                        enough.set()

        tasks = [asyncio.ensure_future(tight_loop(i)) for i in range(16)]
        await bounded(enough.wait())
        running = False
        await bounded(asyncio.gather(*tasks))
        assert wrong == []
        mean = sum(counts) / len(counts)
        assert min(counts) >= 0.5 * mean, counts


class TestBounds:
    async def test_a_frozen_server_fails_every_waiting_caller_within_the_bound(
        self, fresh_redis_server: RedisServer, open_backend: OpenBackend
    ) -> None:
        """With the server SIGSTOPped, 20 callers arriving over time each fail with "did not
        answer in time" well within connect_timeout + socket_timeout; after SIGCONT calls work."""
        backend = open_backend(fresh_redis_server.url, pool_size=2, **SHORT)
        bound = SHORT["connect_timeout"] + SHORT["socket_timeout"] + 0.5
        await plant(backend)
        loop = asyncio.get_running_loop()
        rng = random.Random(20)

        async def timed(call: Awaitable[Any]) -> tuple[object, float]:
            start = loop.time()
            try:
                outcome: object = await call
            except Exception as exc:  # the outcome is what the test checks
                outcome = exc
            return outcome, loop.time() - start

        fresh_redis_server.freeze()
        try:
            waiting: list[asyncio.Future[tuple[object, float]]] = []
            for wave in range(4):
                for n in range(5):
                    if n == 0:
                        call = backend.rate_limiter().increment(f"frozen{wave}", 1, WINDOW)
                    else:
                        call, _ = known_read(backend, rng)
                    waiting.append(asyncio.ensure_future(timed(call)))
                await asyncio.sleep(SHORT["socket_timeout"] / 2)
            outcomes = await bounded(asyncio.gather(*waiting))
        finally:
            fresh_redis_server.thaw()

        for outcome, elapsed in outcomes:
            assert isinstance(outcome, BackendError), outcome
            assert "did not answer in time" in str(outcome)
            assert elapsed < 3 * bound, (elapsed, bound)
        assert await bounded(backend.rate_limiter().increment("thawed", 1, WINDOW)) == 1
        await bounded(read_all_known(backend))

    async def test_past_max_pending_a_call_fails_at_once(
        self, proxied_backend: ProxiedBackend
    ) -> None:
        """With max_pending=5 and a silent network, further calls fail at once naming
        max_pending, never run, and the pending count never passes 5."""
        # No timeout may fire while calls are held; a failed test heals the network first.
        proxy, backend = proxied_backend(pool_size=1, max_pending=5, socket_timeout=60.0)
        counter = backend.rate_limiter()
        await counter.increment("k", 3, WINDOW)
        proxy.blackhole()
        try:
            held = [asyncio.ensure_future(counter.current("k")) for _ in range(5)]
            await eventually(lambda: backend.stats().pending == 5, "five calls pending")
            rejected = [counter.increment("k", 1, WINDOW) if i % 2 else counter.current("k")
                        for i in range(100)]  # fmt: skip
            outcomes = await bounded(asyncio.gather(*rejected, return_exceptions=True))
            assert not any(call.done() for call in held), "the rejections waited for them"
        finally:
            proxy.passthrough()

        for outcome in outcomes:
            assert isinstance(outcome, BackendError), outcome
            assert "pending" in str(outcome)
            assert "max_pending=5" in str(outcome)
        assert await bounded(asyncio.gather(*held)) == [3] * 5
        assert await bounded(counter.current("k")) == 3  # no rejected increment ran
        assert backend.stats().pending == 0
        assert backend.stats().peak_pending == 5


class TestScripts:
    async def test_a_batched_evalsha_answered_noscript_is_resent_alone(
        self,
        redis_server: RedisServer,
        raw: redis.Redis,
        open_backend: OpenBackend,
    ) -> None:
        """After SCRIPT FLUSH, 50 increments batched with 50 reads all answer right, each
        increment counted once, though every EVALSHA in the batch met NOSCRIPT."""
        backend = open_backend(redis_server.url, pool_size=1)
        counter = backend.rate_limiter()
        for _ in range(2):  # the second goes by SHA, whatever the first did
            await counter.increment("warm", 1, WINDOW)
        for i in range(50):
            raw.set(f"aa:ratelimit:g{i}", 1000 + i)
        raw.script_flush()
        raw.config_resetstat()
        before = backend.stats()

        calls = []
        for i in range(50):
            calls += [counter.increment(f"i{i}", i + 1, WINDOW), counter.current(f"g{i}")]
        answers = await bounded(asyncio.gather(*calls))

        assert answers == [answer for i in range(50) for answer in (i + 1, 1000 + i)]
        for i in range(50):
            assert raw.get(f"aa:ratelimit:i{i}") == str(i + 1).encode()
        stats = redis_server.commandstats()
        assert stats.get("evalsha", 0) >= 1, stats  # the batch went by SHA and met NOSCRIPT
        assert stats.get("eval", 0) >= 1, stats
        after = backend.stats()
        assert after.max_commands_per_write > 1
        assert after.reconnects == before.reconnects

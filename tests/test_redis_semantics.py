"""TTLs, windows, script caching, round trips and concurrency, observed on a real redis-server."""

from __future__ import annotations

import asyncio
import json
import sys
import textwrap
import time
from collections.abc import Awaitable, Callable
from subprocess import PIPE
from typing import Any

import attrs
import pytest
import redis

from aa_storage import AgentId, NotFoundError, PolicyDocument, SessionId, SessionRecord
from aa_storage_redis import SESSION_TTL_SECS, RedisBackend
from servers import EXPIRY_PATIENCE_SECS, RedisServer, server_clock_ms

pytestmark = pytest.mark.asyncio


class TestWindows:
    async def test_first_increment_arms_the_window_in_milliseconds(
        self, redis_backend: RedisBackend, raw: redis.Redis
    ) -> None:
        """The increment that creates a counter sets a PTTL of at most the window."""
        await redis_backend.rate_limiter().increment("k", 1, 5)
        assert 4_000 < raw.pttl(b"aa:ratelimit:k") <= 5_000

    async def test_later_increments_leave_the_expiry_alone(
        self, redis_backend: RedisBackend, raw: redis.Redis
    ) -> None:
        """A later increment, of 0 or with a longer window, does not touch the expiry."""
        counter = redis_backend.rate_limiter()
        await counter.increment("k", 1, 5)
        raw.pexpire(b"aa:ratelimit:k", 2_000)  # a marker only the first increment could have set
        await counter.increment("k", 0, 5)
        await counter.increment("k", 3, 600)
        assert 0 < raw.pttl(b"aa:ratelimit:k") <= 2_000
        assert await counter.current("k") == 4

    async def test_counter_found_without_expiry_gets_one(
        self, redis_backend: RedisBackend, raw: redis.Redis
    ) -> None:
        """A counter that lost its TTL is given the window on the next increment."""
        raw.set(b"aa:ratelimit:k", b"10")
        assert await redis_backend.rate_limiter().increment("k", 1, 30) == 11
        assert 29_000 < raw.pttl(b"aa:ratelimit:k") <= 30_000

    async def test_totals_past_two_to_the_53_stay_exact(self, redis_backend: RedisBackend) -> None:
        """Totals beyond a double's precision come back exact (Lua numbers are doubles)."""
        counter = redis_backend.rate_limiter()
        await counter.increment("k", 2**62 + 1, 60)
        assert await counter.increment("k", 2, 60) == 2**62 + 3


class TestTtls:
    async def test_every_save_rearms_the_full_session_ttl(
        self, redis_backend: RedisBackend, raw: redis.Redis
    ) -> None:
        """Saving again makes the session expire SESSION_TTL_SECS after that save, by the
        server's clock, whatever TTL it had left."""
        record = SessionRecord(SessionId.new(), AgentId.new(), 1)
        await redis_backend.sessions().save(record)
        key = b"aa:session:" + record.session_id.hex.encode()
        raw.pexpire(key, 60_000)  # a shorter TTL that only a re-arm can lift
        before = server_clock_ms(raw)
        await redis_backend.sessions().save(record)
        after = server_clock_ms(raw)
        expires_at = raw.pexpiretime(key)
        assert before <= expires_at - SESSION_TTL_SECS * 1000 <= after

    async def test_a_session_is_not_found_once_its_ttl_lapses(
        self, redis_backend: RedisBackend, raw: redis.Redis
    ) -> None:
        """A session loads until its TTL lapses, then load raises NotFoundError and the key
        is gone; saving it again brings it back."""
        sessions = redis_backend.sessions()
        record = SessionRecord(SessionId.new(), AgentId.new(), 1)
        key = b"aa:session:" + record.session_id.hex.encode()
        await sessions.save(record)
        assert await sessions.load(record.session_id) == record
        raw.pexpire(key, 1)  # the hour cut short
        deadline = time.monotonic() + EXPIRY_PATIENCE_SECS
        while True:
            try:
                assert await sessions.load(record.session_id) == record
            except NotFoundError:
                break
            assert time.monotonic() < deadline, "the session outlived a 1 ms TTL"
            await asyncio.sleep(0.001)
        assert raw.exists(key) == 0
        await sessions.save(record)
        assert await sessions.load(record.session_id) == record

    async def test_policy_ttl_is_the_one_given(
        self, redis_backend: RedisBackend, raw: redis.Redis
    ) -> None:
        """cache_policy sets the TTL it is given, replacing the previous one."""
        agent = AgentId.new()
        await redis_backend.policies().cache_policy(agent, PolicyDocument(1, "p", []), 600)
        await redis_backend.policies().cache_policy(agent, PolicyDocument(2, "p", []), 20)
        assert 0 < raw.ttl(b"aa:policy:" + agent.hex.encode()) <= 20


class TestScripts:
    async def test_scripts_survive_script_flush(
        self, redis_backend: RedisBackend, raw: redis.Redis
    ) -> None:
        """After SCRIPT FLUSH the next call reloads the script and still counts exactly once."""
        counter = redis_backend.rate_limiter()
        await counter.increment("k", 1, 60)
        await counter.increment("k", 1, 60)
        raw.script_flush()
        assert await counter.increment("k", 1, 60) == 3
        assert await counter.increment("k", 1, 60) == 4

    async def test_scripts_run_by_sha_once_loaded(
        self, redis_backend: RedisBackend, redis_server: RedisServer
    ) -> None:
        """Only the first call sends the script body; later calls send its SHA."""
        for _ in range(5):
            await redis_backend.rate_limiter().increment("k", 1, 60)
        stats = redis_server.commandstats()
        assert (stats.get("eval"), stats.get("evalsha")) == (1, 4)


def _operations(redis_backend: RedisBackend) -> dict[str, Callable[[], Awaitable[Any]]]:
    record = SessionRecord(SessionId.new(), AgentId.new(), 1)
    agent = AgentId.new()
    sessions, counter, policies = (
        redis_backend.sessions(),
        redis_backend.rate_limiter(),
        redis_backend.policies(),
    )
    return {
        "save": lambda: sessions.save(record),
        "load": lambda: sessions.load(record.session_id),
        "delete": lambda: sessions.delete(record.session_id),
        "increment": lambda: counter.increment("k", 1, 60),
        "current": lambda: counter.current("k"),
        "reset": lambda: counter.reset("k"),
        "cache_policy": lambda: policies.cache_policy(agent, PolicyDocument(1, "p", []), 60),
        "get_policy": lambda: policies.get_policy(agent),
        "invalidate": lambda: policies.invalidate(agent),
    }


class CommandLog:
    """What the server runs, read from MONITOR: the commands clients send and, apart, the
    commands their Lua scripts call."""

    SENTINEL = "aa-storage-sentinel"

    def __init__(self, server: RedisServer) -> None:
        self._marker = server.client()
        self._marker.echo(self.SENTINEL)  # connect now, so no handshake shows up later
        self._watcher = server.client()
        self._monitor = self._watcher.monitor()
        self._monitor.__enter__()

    def sent_since_last_call(self) -> list[str]:
        """Commands sent by anyone but this log since it was last read, in order."""
        return [words[0] for words, by_script in self.run_since_last_call() if not by_script]

    def run_since_last_call(self) -> list[tuple[list[str], bool]]:
        """Every command run since the log was last read, in order: its words (the name
        upper-cased), and whether a Lua script called it rather than a client."""
        self._marker.echo(self.SENTINEL)
        commands = []
        while True:
            entry = self._monitor.next_command()
            if entry["command"] == f"ECHO {self.SENTINEL}":
                return commands
            name, *arguments = entry["command"].split()
            commands.append(([name.upper(), *arguments], entry["client_type"] == "lua"))

    def close(self) -> None:
        self._monitor.__exit__()
        self._watcher.close()
        self._marker.close()


class TestRoundTrips:
    async def test_each_operation_sends_exactly_one_command(
        self, redis_backend: RedisBackend, redis_server: RedisServer
    ) -> None:
        """Once warm, every operation sends the server exactly one command: one round trip."""
        operations = _operations(redis_backend)
        for operation in operations.values():  # warm up: connect, load scripts
            await operation()
        log = CommandLog(redis_server)
        try:
            sent = {}
            for name, operation in operations.items():
                await operation()
                sent[name] = log.sent_since_last_call()
        finally:
            log.close()
        assert sent == {
            "save": ["EVALSHA"],
            "load": ["HMGET"],
            "delete": ["DEL"],
            "increment": ["EVALSHA"],
            "current": ["GET"],
            "reset": ["DEL"],
            "cache_policy": ["EVALSHA"],
            "get_policy": ["GET"],
            "invalidate": ["EVALSHA"],
        }


class TestConcurrency:
    async def test_200_concurrent_increments_on_a_small_pool(
        self, redis_server: RedisServer, redis_url: str
    ) -> None:
        """200 increments racing through 4 connections sum exactly."""
        redis_backend = RedisBackend.connect(redis_server.backend_config(pool_size=4))
        try:
            counter = redis_backend.rate_limiter()
            await asyncio.gather(*(counter.increment("race", 1, 60) for _ in range(200)))
            assert await counter.current("race") == 200
        finally:
            await redis_backend.aclose()

    async def test_four_processes_sum_exactly(
        self, redis_server: RedisServer, redis_url: str
    ) -> None:
        """4 OS processes x 500 increments each leave the counter at exactly 2000."""
        script = textwrap.dedent(
            """
            import asyncio, json, sys
            from aa_storage_redis import RedisBackend, RedisStorageConfig

            async def main():
                config = RedisStorageConfig(**json.loads(sys.argv[1]))
                redis_backend = RedisBackend.connect(config)
                counter = redis_backend.rate_limiter()
                await asyncio.gather(*(counter.increment("procs", 1, 120) for _ in range(500)))
                await redis_backend.aclose()

            asyncio.run(main())
            """
        )
        config = redis_server.backend_config()
        settings = json.dumps(attrs.asdict(config))
        workers = [
            await asyncio.create_subprocess_exec(sys.executable, "-c", script, settings)
            for _ in range(4)
        ]
        statuses = await asyncio.wait_for(asyncio.gather(*(w.wait() for w in workers)), 120)
        assert statuses == [0, 0, 0, 0]
        redis_backend = RedisBackend.connect(config)
        try:
            assert await redis_backend.rate_limiter().current("procs") == 2000
        finally:
            await redis_backend.aclose()

    async def test_a_session_saved_in_one_process_loads_in_another(
        self, redis_backend: RedisBackend, redis_server: RedisServer
    ) -> None:
        """A record saved here is loaded, equal, by a separate Python process."""
        record = SessionRecord(SessionId.new(), AgentId.new(), 123_456_789)
        await redis_backend.sessions().save(record)
        script = textwrap.dedent(
            """
            import asyncio, json, sys
            from aa_storage import SessionId
            from aa_storage_redis import RedisBackend, RedisStorageConfig

            async def main():
                config = RedisStorageConfig(**json.loads(sys.argv[1]))
                redis_backend = RedisBackend.connect(config)
                record = await redis_backend.sessions().load(SessionId.from_hex(sys.argv[2]))
                print(record.agent_id.hex, record.started_at_ns)
                await redis_backend.aclose()

            asyncio.run(main())
            """
        )
        settings = json.dumps(attrs.asdict(redis_server.backend_config()))
        reader = await asyncio.create_subprocess_exec(
            sys.executable, "-c", script, settings, record.session_id.hex, stdout=PIPE
        )
        output, _ = await asyncio.wait_for(reader.communicate(), 60)
        assert reader.returncode == 0
        assert output.decode().split() == [record.agent_id.hex, "123456789"]

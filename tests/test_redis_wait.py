"""wait_replicas: each write followed by WAIT in the same round trip; too few replicas."""

from __future__ import annotations

import pytest
import redis

from aa_storage import AgentId, BackendError, SessionId, SessionRecord
from aa_storage_redis import RedisBackend, RedisStorageConfig
from servers import RedisServer


def waiting(server: RedisServer, replicas: int) -> RedisBackend:
    return RedisBackend.connect(
        server.backend_config(wait_replicas=replicas, wait_timeout=0.05, socket_timeout=5.0)
    )


class TestWaitReplicas:
    @pytest.mark.asyncio
    async def test_an_unconfirmed_write_is_applied_reported_and_not_retried(
        self, redis_server: RedisServer, raw: redis.Redis
    ) -> None:
        """With no replica to confirm it, a write raises BackendError saying it is applied on
        the primary, and the server ran it once."""
        raw.config_resetstat()
        backend = waiting(redis_server, 1)
        try:
            with pytest.raises(BackendError, match=r"applied on the primary .* only 0 of"):
                await backend.rate_limiter().increment("k", 5, 60)
        finally:
            await backend.aclose()
        assert raw.get("aa:ratelimit:k") == b"5"
        stats = redis_server.commandstats()
        assert (stats.get("eval"), stats.get("wait")) == (1, 1)

    @pytest.mark.asyncio
    async def test_reads_never_wait(self, redis_server: RedisServer, raw: redis.Redis) -> None:
        """A read is sent alone, without WAIT, and answers as usual."""
        raw.set("aa:ratelimit:k", 3)
        raw.config_resetstat()
        backend = waiting(redis_server, 1)
        try:
            assert await backend.rate_limiter().current("k") == 3
        finally:
            await backend.aclose()
        assert "wait" not in redis_server.commandstats()

    @pytest.mark.asyncio
    async def test_zero_replicas_sends_no_wait(
        self, redis_server: RedisServer, raw: redis.Redis
    ) -> None:
        """The default, wait_replicas = 0, adds nothing to a write."""
        raw.config_resetstat()
        backend = waiting(redis_server, 0)
        try:
            record = SessionRecord(SessionId.new(), AgentId.new(), 1)
            await backend.sessions().save(record)
            assert await backend.sessions().load(record.session_id) == record
        finally:
            await backend.aclose()
        assert "wait" not in redis_server.commandstats()

    def test_wait_timeout_must_be_below_socket_timeout(self) -> None:
        """WAIT may hold its reply wait_timeout: at socket_timeout or more the connection
        would be closed first, so such a config is refused."""
        with pytest.raises(ValueError, match="wait_timeout: must be below socket_timeout"):
            RedisStorageConfig(wait_replicas=1, wait_timeout=1.0, socket_timeout=1.0)

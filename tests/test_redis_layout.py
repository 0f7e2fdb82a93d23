"""Key bytes and value formats on the wire, compatible with the Rust driver both ways."""

from __future__ import annotations

import pytest
import redis

from aa_storage import (
    AgentId,
    EnforcementMode,
    PolicyDecision,
    PolicyDocument,
    PolicyRule,
    SessionId,
    SessionRecord,
)
from aa_storage_redis import (
    SESSION_TTL_SECS,
    RedisBackend,
    RedisPolicyStore,
    RedisRateLimitCounter,
    RedisSessionStore,
    RedisStorageConfig,
    build_pool,
)

SESSION = SessionId.from_hex("00112233445566778899aabbccddeeff")
AGENT = AgentId.from_hex("0f1e2d3c4b5a69788796a5b4c3d2e1f0")
# What the Rust driver's serde_json writes for this policy.
RUST_POLICY_JSON = (
    b'{"version":3,"name":"default","rules":[{"action_pattern":"tool:*","decision":"Allow"},'
    b'{"action_pattern":"net:*","decision":"RequireApproval"}],"enforcement_mode":"observe"}'
)
POLICY = PolicyDocument(
    3,
    "default",
    [
        PolicyRule("tool:*", PolicyDecision.ALLOW),
        PolicyRule("net:*", PolicyDecision.REQUIRE_APPROVAL),
    ],
    EnforcementMode.OBSERVE,
)

pytestmark = pytest.mark.asyncio


class TestSessionLayout:
    async def test_save_writes_the_rust_hash(
        self, redis_backend: RedisBackend, raw: redis.Redis
    ) -> None:
        """A saved session is a hash of raw agent bytes and decimal nanoseconds, TTL 3600 s."""
        await redis_backend.sessions().save(
            SessionRecord(SESSION, AGENT, 1_700_000_000_123_456_789)
        )
        key = b"aa:session:00112233445566778899aabbccddeeff"
        assert raw.keys(b"*") == [key]
        assert raw.hgetall(key) == {
            b"agent_id": AGENT.bytes,
            b"started_at_ns": b"1700000000123456789",
        }
        assert 0 < raw.ttl(key) <= SESSION_TTL_SECS

    async def test_a_rust_written_session_loads(
        self, redis_backend: RedisBackend, raw: redis.Redis
    ) -> None:
        """A hash written the way the Rust driver writes it loads as the same record."""
        key = b"aa:session:00112233445566778899aabbccddeeff"
        raw.hset(key, mapping={b"agent_id": AGENT.bytes, b"started_at_ns": b"18446744073709551615"})
        raw.expire(key, SESSION_TTL_SECS)
        assert await redis_backend.sessions().load(SESSION) == SessionRecord(
            SESSION, AGENT, 2**64 - 1
        )


class TestRateLimitLayout:
    async def test_counter_is_a_plain_integer_key(
        self, redis_backend: RedisBackend, raw: redis.Redis
    ) -> None:
        """A counter is the decimal integer at aa:ratelimit:<key>, with the key's bytes as given."""
        await redis_backend.rate_limiter().increment("agent:42/tool \u00e9", 7, 60)
        key = "aa:ratelimit:agent:42/tool \u00e9".encode()
        assert raw.keys(b"*") == [key]
        assert raw.get(key) == b"7"
        assert 0 < raw.pttl(key) <= 60_000

    async def test_a_rust_written_counter_is_read(
        self, redis_backend: RedisBackend, raw: redis.Redis
    ) -> None:
        """A counter another process wrote with INCRBY and EXPIRE is read and added to."""
        raw.incrby(b"aa:ratelimit:shared", 5)
        raw.expire(b"aa:ratelimit:shared", 60)
        assert await redis_backend.rate_limiter().current("shared") == 5
        assert await redis_backend.rate_limiter().increment("shared", 1, 60) == 6


class TestPolicyLayout:
    async def test_cache_writes_serde_json(
        self, redis_backend: RedisBackend, raw: redis.Redis
    ) -> None:
        """A cached policy is the exact serde_json bytes at aa:policy:<hex32>, with its TTL."""
        await redis_backend.policies().cache_policy(AGENT, POLICY, 300)
        key = b"aa:policy:0f1e2d3c4b5a69788796a5b4c3d2e1f0"
        assert raw.keys(b"*") == [key]
        assert raw.get(key) == RUST_POLICY_JSON
        assert 0 < raw.ttl(key) <= 300

    async def test_a_rust_written_policy_loads(
        self, redis_backend: RedisBackend, raw: redis.Redis
    ) -> None:
        """serde_json bytes written by another process load as the same document."""
        raw.set(b"aa:policy:0f1e2d3c4b5a69788796a5b4c3d2e1f0", RUST_POLICY_JSON, ex=300)
        assert await redis_backend.policies().get_policy(AGENT) == POLICY

    async def test_older_documents_without_a_mode_mean_enforce(
        self, redis_backend: RedisBackend, raw: redis.Redis
    ) -> None:
        """A document with no enforcement_mode and an unknown field decodes as enforce."""
        raw.set(
            b"aa:policy:0f1e2d3c4b5a69788796a5b4c3d2e1f0",
            b'{"version":1,"name":"old","rules":[],"added_later":true}',
        )
        policy = await redis_backend.policies().get_policy(AGENT)
        assert policy == PolicyDocument(1, "old", [], EnforcementMode.ENFORCE)


class TestKeyPrefix:
    async def test_prefix_replaces_aa(self, redis_url: str, raw: redis.Redis) -> None:
        """With key_prefix = "t1:", every key starts with t1: instead of aa:."""
        redis_backend = RedisBackend.connect(RedisStorageConfig(url=redis_url, key_prefix="t1:"))
        try:
            await redis_backend.sessions().save(SessionRecord(SESSION, AGENT, 1))
            await redis_backend.rate_limiter().increment("k", 1, 60)
            await redis_backend.policies().cache_policy(AGENT, POLICY, 60)
        finally:
            await redis_backend.aclose()
        assert sorted(raw.keys(b"*")) == [
            b"t1:policy:0f1e2d3c4b5a69788796a5b4c3d2e1f0",
            b"t1:ratelimit:k",
            b"t1:session:00112233445566778899aabbccddeeff",
        ]


class TestStoresOverAPool:
    async def test_stores_built_directly_share_one_pool(self, redis_url: str) -> None:
        """Stores built from one Pool work together and honour the pool's key prefix."""
        pool = build_pool(RedisStorageConfig(url=redis_url, key_prefix="direct:"))
        try:
            sessions, counter, policies = (
                RedisSessionStore(pool),
                RedisRateLimitCounter(pool),
                RedisPolicyStore(pool),
            )
            await sessions.save(SessionRecord(SESSION, AGENT, 5))
            assert await sessions.load(SESSION) == SessionRecord(SESSION, AGENT, 5)
            assert await counter.increment("k", 2, 60) == 2
            await policies.cache_policy(AGENT, POLICY, 60)
            assert await policies.get_policy(AGENT) == POLICY
            assert counter.keys.rate_limit("k") == b"direct:ratelimit:k"
        finally:
            await pool.aclose()

"""The bad-input catalogue: every bad argument or stored value gets a clear, typed error.

Bad arguments are rejected before any I/O, so nothing reaches Redis; odd but
valid keys work and stay inside the prefix; corrupt stored values are
reported, never crash, and are left as they were.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
import redis

from aa_storage import (
    AgentId,
    NotFoundError,
    PolicyDocument,
    SerializationError,
    SessionId,
    SessionRecord,
    StorageError,
)
from aa_storage_redis import RedisBackend
from servers import RedisServer

pytestmark = pytest.mark.asyncio
AGENT = AgentId.from_hex("0f1e2d3c4b5a69788796a5b4c3d2e1f0")
SESSION = SessionId.from_hex("00112233445566778899aabbccddeeff")
SESSION_KEY = b"aa:session:00112233445566778899aabbccddeeff"
POLICY_KEY = b"aa:policy:0f1e2d3c4b5a69788796a5b4c3d2e1f0"


class TestBadIds:
    @pytest.mark.parametrize(
        ("make", "error", "message"),
        [
            (lambda: AgentId(b"\x00" * 15), ValueError, "AgentId takes 16 bytes, got 15"),
            (lambda: SessionId(b"\x00" * 17), ValueError, "SessionId takes 16 bytes, got 17"),
            (lambda: AgentId(""), TypeError, "AgentId takes 16 bytes, got str"),
            (lambda: SessionId.from_hex("abc"), ValueError, "takes 32 hex characters, got 3"),
            (lambda: SessionId.from_hex("zz" * 16), ValueError, "is not hex"),
        ],
    )
    async def test_bad_ids_cannot_be_built(self, make: Any, error: type, message: str) -> None:
        """An id of the wrong length, type or text is refused when it is built."""
        with pytest.raises(error, match=re.escape(message)):
            make()

    @pytest.mark.parametrize(
        "call",
        [
            lambda b: b.sessions().load(AGENT),
            lambda b: b.sessions().delete(SESSION.bytes),
            lambda b: b.sessions().save((SESSION, AGENT, 1)),
            lambda b: b.policies().get_policy(SESSION),
            lambda b: b.policies().invalidate(AGENT.hex),
            lambda b: b.policies().cache_policy(AGENT, {"version": 1}, 60),
        ],
    )
    async def test_wrong_types_are_refused_before_any_io(
        self, redis_backend: RedisBackend, redis_server: RedisServer, call: Any
    ) -> None:
        """A value of the wrong type is a TypeError that names the parameter; nothing is sent."""
        before = redis_server.commandstats()
        with pytest.raises(TypeError, match=r"(session_id|agent_id|record|policy) must be"):
            await call(redis_backend)
        sent = {
            name for name, calls in redis_server.commandstats().items() if calls != before.get(name)
        }
        assert sent <= {"info", "hello"}  # what commandstats itself sends


class TestBadCounterArguments:
    @pytest.mark.parametrize(
        ("amount", "window_secs", "error", "message"),
        [
            (-1, 60, ValueError, "amount must lie in [0, 2**63-1], got -1"),
            (1.0, 60, TypeError, "amount must be an int, got float"),
            ("1", 60, TypeError, "amount must be an int, got str"),
            (None, 60, TypeError, "amount must be an int, got NoneType"),
            (1, 0, ValueError, "window_secs must be at least 1 second, got 0"),
            (1, -3, ValueError, "window_secs must be at least 1 second, got -3"),
            (1, 0.5, TypeError, "window_secs must be an int number of seconds, got float"),
            (1, 2**40, ValueError, "window_secs must be at most 2147483647 seconds"),
        ],
    )
    async def test_bad_amounts_and_windows(
        self,
        redis_backend: RedisBackend,
        raw: redis.Redis,
        amount: Any,
        window_secs: Any,
        error: type,
        message: str,
    ) -> None:
        """A bad amount or window raises with a message naming it, and writes nothing."""
        with pytest.raises(error, match=re.escape(message)):
            await redis_backend.rate_limiter().increment("k", amount, window_secs)
        assert raw.dbsize() == 0

    @pytest.mark.parametrize(
        ("key", "error", "message"),
        [
            ("", ValueError, "key must not be empty"),
            (b"k", TypeError, "key must be str, got bytes"),
            (None, TypeError, "key must be str, got NoneType"),
            ("\ud800", ValueError, "holds a lone surrogate"),
        ],
    )
    async def test_bad_keys(
        self, redis_backend: RedisBackend, raw: redis.Redis, key: Any, error: type, message: str
    ) -> None:
        """An empty, non-str or unencodable key is refused by every counter method."""
        counter = redis_backend.rate_limiter()
        for call in (
            lambda: counter.increment(key, 1, 60),
            lambda: counter.current(key),
            lambda: counter.reset(key),
        ):
            with pytest.raises(error, match=re.escape(message)):
                await call()
        assert raw.dbsize() == 0

    async def test_overflow_leaves_the_counter_unchanged(
        self, redis_backend: RedisBackend, raw: redis.Redis
    ) -> None:
        """A counter at 2**63-1 plus 1 is a StorageError naming the overflow; it keeps its value."""
        counter = redis_backend.rate_limiter()
        await counter.increment("k", 2**63 - 1, 60)
        with pytest.raises(StorageError, match="overflow past 2\\*\\*63-1"):
            await counter.increment("k", 1, 60)
        assert raw.get(b"aa:ratelimit:k") == b"9223372036854775807"


ODD_KEYS = {
    "newline": "a\nb",
    "spaces": "  a b  ",
    "braces": "{tenant}:x",
    "glob": "*",
    "non-ascii": "r\u00e9gion/\u6771\u4eac/\U0001f512",
    "nul": "a\x00b",
    "huge": "k" * (1 << 20),
}


class TestOddKeys:
    @pytest.mark.parametrize("key", ODD_KEYS.values(), ids=ODD_KEYS.keys())
    async def test_odd_keys_work_and_stay_inside_the_prefix(
        self, redis_backend: RedisBackend, raw: redis.Redis, key: str
    ) -> None:
        """Any non-empty text is a key of its own, stored as aa:ratelimit: plus its UTF-8 bytes."""
        counter = redis_backend.rate_limiter()
        assert await counter.increment(key, 2, 60) == 2
        assert await counter.current(key) == 2
        assert raw.keys(b"*") == [b"aa:ratelimit:" + key.encode()]
        await counter.reset(key)
        assert raw.dbsize() == 0

    async def test_glob_key_does_not_touch_other_keys(self, redis_backend: RedisBackend) -> None:
        """Resetting the key "*" resets only that key, not every counter."""
        counter = redis_backend.rate_limiter()
        await counter.increment("other", 1, 60)
        await counter.increment("*", 1, 60)
        await counter.reset("*")
        assert await counter.current("other") == 1


class TestCorruptValues:
    @pytest.mark.parametrize(
        ("stored", "message"),
        [
            (b"{not json", "stored policy is invalid at policy (byte 1): expected a string"),
            (b"[1, 2]", "at policy.name (byte 4): expected a string"),
            (b'{"version":1,"name":"x"}', "missing field 'rules'"),
            (
                b'{"version":"1","name":"x","rules":[]}',
                "policy.version (byte 11): expected an integer",
            ),
            (
                b'{"version":1,"name":"x","rules":[{"action_pattern":"a","decision":"allow"}]}',
                "policy.rules[0].decision (byte 73): unknown variant 'allow'",
            ),
            (b"\xff\xfe", "stored policy is invalid at policy (byte 0): expected a JSON object"),
        ],
    )
    async def test_corrupt_policies(
        self, redis_backend: RedisBackend, raw: redis.Redis, stored: bytes, message: str
    ) -> None:
        """A stored policy that is not a valid document is a SerializationError; it stays put."""
        raw.set(POLICY_KEY, stored)
        with pytest.raises(SerializationError, match=re.escape(message)):
            await redis_backend.policies().get_policy(AGENT)
        assert raw.get(POLICY_KEY) == stored

    @pytest.mark.parametrize(
        ("fields", "message"),
        [
            ({b"agent_id": b"\x01" * 16}, "lacks a field"),
            ({b"started_at_ns": b"5"}, "lacks a field"),
            ({b"agent_id": b"\x01" * 15, b"started_at_ns": b"5"}, "agent_id holds 15 bytes"),
            ({b"agent_id": b"\x01" * 16, b"started_at_ns": b"-5"}, "is not a u64"),
            ({b"agent_id": b"\x01" * 16, b"started_at_ns": b"1.5"}, "is not a u64"),
            ({b"agent_id": b"\x01" * 16, b"started_at_ns": b"18446744073709551616"}, "2**64-1"),
        ],
    )
    async def test_corrupt_sessions(
        self,
        redis_backend: RedisBackend,
        raw: redis.Redis,
        fields: dict[bytes, bytes],
        message: str,
    ) -> None:
        """A partial or undecodable session hash is a SerializationError, not a crash."""
        raw.hset(SESSION_KEY, mapping=fields)
        with pytest.raises(SerializationError, match=re.escape(message)):
            await redis_backend.sessions().load(SESSION)
        assert raw.hgetall(SESSION_KEY) == fields

    async def test_string_where_a_hash_belongs(
        self, redis_backend: RedisBackend, raw: redis.Redis
    ) -> None:
        """A session key holding a string is WRONGTYPE: a SerializationError on load and save."""
        raw.set(SESSION_KEY, b"oops")
        with pytest.raises(SerializationError, match="wrong type"):
            await redis_backend.sessions().load(SESSION)
        with pytest.raises(SerializationError, match="wrong type"):
            await redis_backend.sessions().save(SessionRecord(SESSION, AGENT, 1))
        assert raw.get(SESSION_KEY) == b"oops"

    async def test_hash_where_a_policy_belongs(
        self, redis_backend: RedisBackend, raw: redis.Redis
    ) -> None:
        """A policy key holding a hash is a SerializationError on read."""
        raw.hset(POLICY_KEY, b"f", b"v")
        with pytest.raises(SerializationError, match="wrong type"):
            await redis_backend.policies().get_policy(AGENT)

    @pytest.mark.parametrize(
        "stored",
        [
            b"abc",
            b"1.5",
            b"",
            b" 7",
            b"1_000",
            b"0005",
            b"00",
            b"-0",
            b"+5",
            b"9223372036854775808",
            b"-9223372036854775809",
        ],
    )
    async def test_non_integer_counter(
        self, redis_backend: RedisBackend, raw: redis.Redis, stored: bytes
    ) -> None:
        """A counter key holding what INCRBY refuses (a leading zero, "-0", a sign "+", a value
        outside i64) is a SerializationError on read and increment alike."""
        raw.set(b"aa:ratelimit:k", stored)
        with pytest.raises(SerializationError, match="not an integer"):
            await redis_backend.rate_limiter().current("k")
        with pytest.raises(SerializationError, match="not an integer"):
            await redis_backend.rate_limiter().increment("k", 1, 60)
        assert raw.get(b"aa:ratelimit:k") == stored

    @pytest.mark.parametrize(
        "stored",
        [b"0", b"7", b"-5", b"999999999999999999", b"9223372036854775807", b"-9223372036854775808"],
    )
    async def test_counter_written_elsewhere_reads_as_increment_counts_it(
        self, redis_backend: RedisBackend, raw: redis.Redis, stored: bytes
    ) -> None:
        """Any integer INCRBY accepts, negative and the i64 extremes too, is read as it is,
        and an increment of 0 (which never overflows) returns the same total."""
        raw.set(b"aa:ratelimit:k", stored)
        counter = redis_backend.rate_limiter()
        assert await counter.current("k") == int(stored)
        assert await counter.increment("k", 0, 60) == int(stored)

    async def test_hash_where_a_counter_belongs(
        self, redis_backend: RedisBackend, raw: redis.Redis
    ) -> None:
        """A counter key holding a hash is WRONGTYPE: a SerializationError, counted nowhere."""
        raw.hset(b"aa:ratelimit:k", b"f", b"v")
        with pytest.raises(SerializationError, match="wrong type"):
            await redis_backend.rate_limiter().increment("k", 1, 60)
        with pytest.raises(SerializationError, match="wrong type"):
            await redis_backend.rate_limiter().current("k")

    async def test_miss_after_corruption_is_cleared(
        self, redis_backend: RedisBackend, raw: redis.Redis
    ) -> None:
        """invalidate() clears a corrupt policy, after which reads simply miss."""
        raw.set(POLICY_KEY, b"{bad")
        await redis_backend.policies().invalidate(AGENT)
        with pytest.raises(NotFoundError):
            await redis_backend.policies().get_policy(AGENT)
        await redis_backend.policies().cache_policy(AGENT, PolicyDocument(1, "ok", []), 60)
        assert (await redis_backend.policies().get_policy(AGENT)).name == "ok"

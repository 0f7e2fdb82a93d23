"""The policies and session records a backend keeps decoded: by the bytes they came from,
bounded, never stale, and shared by the stores of one backend only."""

from __future__ import annotations

import pytest

from aa_storage import (
    AgentId,
    NotFoundError,
    PolicyDecision,
    PolicyDocument,
    PolicyRule,
    SerializationError,
    SessionId,
    SessionRecord,
)
from aa_storage import policy_to_json as encoded
from aa_storage_redis import decoded
from aa_storage_redis.decoded import Decoded
from aa_storage_redis.policies import RedisPolicyStore
from executor_support import OpenBackend
from servers import RedisServer

AGENT = AgentId(bytes(range(16)))
SESSION = SessionId(bytes(range(16, 32)))


def a_policy(name: str, decision: PolicyDecision = PolicyDecision.ALLOW) -> PolicyDocument:
    return PolicyDocument(1, name, [PolicyRule("tool:*", decision)])


class TestDecoded:
    def test_a_key_seen_before_gives_the_value_kept(self) -> None:
        kept: Decoded[bytes, object] = Decoded()
        first = kept.get(b"k", object)
        assert kept.get(bytes(bytearray(b"k")), object) is first  # equal bytes, another object
        assert kept.get(b"other", object) is not first

    def test_what_decode_raises_is_raised_and_nothing_is_kept(self) -> None:
        kept: Decoded[bytes, object] = Decoded()

        def fails() -> object:
            raise SerializationError("no")

        for _ in range(2):
            with pytest.raises(SerializationError):
                kept.get(b"bad", fails)
        assert len(kept) == 0

    def test_at_most_its_entries_are_kept_and_the_oldest_goes(self) -> None:
        kept: Decoded[int, object] = Decoded()
        first = kept.get(0, object)
        for number in range(1, decoded.ENTRIES + 1):
            kept.get(number, object)
        assert len(kept) == decoded.ENTRIES
        assert kept.get(0, object) is not first  # 0 went first, and is decoded again


@pytest.mark.asyncio
class TestThroughTheStores:
    async def test_the_same_policy_bytes_give_the_same_document(
        self, open_backend: OpenBackend, redis_url: str
    ) -> None:
        backend = open_backend(redis_url)
        assert backend.policies().decoded is backend.policies().decoded
        await backend.policies().cache_policy(AGENT, a_policy("read"), 60)
        first = await backend.policies().get_policy(AGENT)
        assert first == a_policy("read")
        assert await backend.policies().get_policy(AGENT) is first  # kept, and shared

    async def test_a_changed_policy_is_read_at_once(
        self, open_backend: OpenBackend, redis_url: str, redis_server: RedisServer
    ) -> None:
        """Re-cached from Allow to Deny, by this process or by another one, the policy
        reads as Deny at once: the key is the whole encoding, never the agent."""
        policies = open_backend(redis_url).policies()
        await policies.cache_policy(AGENT, a_policy("p"), 60)
        assert (await policies.get_policy(AGENT)).rules[0].decision is PolicyDecision.ALLOW
        await policies.cache_policy(AGENT, a_policy("p", PolicyDecision.DENY), 60)
        assert (await policies.get_policy(AGENT)).rules[0].decision is PolicyDecision.DENY
        with redis_server.client() as raw:
            raw.set(policies.keys.policy(AGENT), encoded(a_policy("p")))
        assert (await policies.get_policy(AGENT)).rules[0].decision is PolicyDecision.ALLOW
        await policies.invalidate(AGENT)
        with pytest.raises(NotFoundError):
            await policies.get_policy(AGENT)

    async def test_long_policies_and_bad_values_are_not_kept(
        self, open_backend: OpenBackend, redis_url: str, redis_server: RedisServer
    ) -> None:
        policies = open_backend(redis_url).policies()
        long = a_policy("l" * decoded.MAX_POLICY_BYTES)
        await policies.cache_policy(AGENT, long, 60)
        assert await policies.get_policy(AGENT) == long
        assert await policies.get_policy(AGENT) is not await policies.get_policy(AGENT)
        with redis_server.client() as raw:
            raw.set(policies.keys.policy(AGENT), b'{"version":"1"}')
        for _ in range(2):
            with pytest.raises(SerializationError):
                await policies.get_policy(AGENT)
        assert len(policies.decoded) == 0

    async def test_the_same_session_fields_give_the_same_record(
        self, open_backend: OpenBackend, redis_url: str
    ) -> None:
        backend = open_backend(redis_url)
        assert backend.sessions().decoded is backend.sessions().decoded
        await backend.sessions().save(SessionRecord(SESSION, AGENT, 1))
        first = await backend.sessions().load(SESSION)
        assert first == SessionRecord(SESSION, AGENT, 1)
        assert await backend.sessions().load(SESSION) is first
        await backend.sessions().save(SessionRecord(SESSION, AgentId(bytes(16)), 2))
        assert await backend.sessions().load(SESSION) == SessionRecord(
            SESSION, AgentId(bytes(16)), 2
        )
        await backend.sessions().delete(SESSION)
        with pytest.raises(NotFoundError):
            await backend.sessions().load(SESSION)

    async def test_backends_do_not_share_them(
        self, open_backend: OpenBackend, redis_url: str
    ) -> None:
        one, other = open_backend(redis_url), open_backend(redis_url)
        assert one.policies().decoded is not other.policies().decoded
        assert one.sessions().decoded is not other.sessions().decoded
        assert one.policies().decoded is not one.sessions().decoded
        alone = RedisPolicyStore(one.pool)
        assert alone.decoded is not one.policies().decoded

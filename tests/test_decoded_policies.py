"""The policies a backend keeps decoded: by their bytes, bounded, never stale, and shared by
the stores of one backend only."""

from __future__ import annotations

import pytest

from aa_storage import AgentId, PolicyDecision, PolicyDocument, PolicyRule, SerializationError
from aa_storage import policy_to_json as encoded
from aa_storage_redis import decoded
from aa_storage_redis.decoded import DecodedPolicies
from executor_support import OpenBackend

AGENT = AgentId(bytes(range(16)))


def a_policy(name: str, decision: PolicyDecision = PolicyDecision.ALLOW) -> PolicyDocument:
    return PolicyDocument(1, name, [PolicyRule("tool:*", decision)])


def test_the_same_bytes_give_the_same_document() -> None:
    policies = DecodedPolicies()
    data = encoded(a_policy("same"))
    first = policies.policy(data)
    assert first == a_policy("same")
    assert policies.policy(bytes(bytearray(data))) is first  # equal bytes, another object


def test_changed_bytes_give_the_changed_document() -> None:
    """A policy rewritten from Allow to Deny reads as Deny at once: the key is the whole
    encoding, so a revocation is never answered from what is kept."""
    policies = DecodedPolicies()
    allow, deny = encoded(a_policy("p")), encoded(a_policy("p", PolicyDecision.DENY))
    assert policies.policy(allow).rules[0].decision is PolicyDecision.ALLOW
    assert policies.policy(deny).rules[0].decision is PolicyDecision.DENY
    assert policies.policy(allow).rules[0].decision is PolicyDecision.ALLOW


def test_a_value_that_is_no_policy_fails_every_time_and_is_not_kept() -> None:
    policies = DecodedPolicies()
    for _ in range(2):
        with pytest.raises(SerializationError):
            policies.policy(b'{"version":"1"}')
    assert policies.kept() == 0


def test_only_encodings_up_to_the_limit_are_kept() -> None:
    policies = DecodedPolicies()
    short = encoded(a_policy("s"))
    long = encoded(a_policy("l" * decoded.MAX_BYTES))
    assert len(long) > decoded.MAX_BYTES
    assert policies.policy(short) is policies.policy(short)
    assert policies.policy(long) == policies.policy(long) == a_policy("l" * decoded.MAX_BYTES)
    assert policies.policy(long) is not policies.policy(long)
    assert policies.kept() == 1


def test_at_most_its_entries_are_kept() -> None:
    policies = DecodedPolicies()
    for number in range(decoded.ENTRIES + 10):
        policies.policy(encoded(a_policy(f"p{number}")))
    assert policies.kept() == decoded.ENTRIES


@pytest.mark.asyncio
async def test_the_stores_of_a_backend_share_one_and_backends_do_not(
    open_backend: OpenBackend, redis_url: str
) -> None:
    one, other = open_backend(redis_url), open_backend(redis_url)
    assert one.policies().decoded is one.policies().decoded
    assert one.policies().decoded is not other.policies().decoded
    await one.policies().cache_policy(AGENT, a_policy("read"), 60)
    first = await one.policies().get_policy(AGENT)
    assert await one.policies().get_policy(AGENT) is first  # kept, shared by the stores
    await one.policies().cache_policy(AGENT, a_policy("read", PolicyDecision.DENY), 60)
    assert (await one.policies().get_policy(AGENT)).rules[0].decision is PolicyDecision.DENY

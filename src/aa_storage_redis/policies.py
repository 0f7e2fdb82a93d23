"""The policy cache: ``<prefix>policy:<hex32>`` holds the policy's serde JSON, with a TTL."""

from __future__ import annotations

import attrs

from aa_storage import AgentId, NotFoundError, PolicyDocument, policy_from_json, policy_to_json
from aa_storage.validation import check_agent_id, check_policy, check_ttl_secs
from aa_storage_redis.pool import Pool


@attrs.frozen
class RedisPolicyStore:
    """A read-through cache in front of the authoritative policy store.

    Read with :meth:`get_policy`; on ``NotFoundError`` load from the
    authoritative store and :meth:`cache_policy` the result. After a
    revocation, :meth:`invalidate` so the next read misses. Each method is
    one round trip.
    """

    pool: Pool

    async def get_policy(self, agent_id: AgentId) -> PolicyDocument:
        """The cached policy; ``NotFoundError`` on a miss, ``SerializationError``
        when the stored value is not a policy document."""
        agent_id = check_agent_id(agent_id)
        reply = await self.pool.execute("GET", self.pool.keys.policy(agent_id), read=True)
        if reply is None:
            raise NotFoundError(f"no policy cached for agent {agent_id.hex}")
        return policy_from_json(reply)

    async def cache_policy(self, agent_id: AgentId, policy: PolicyDocument, ttl_secs: int) -> None:
        """Cache ``policy`` for ``ttl_secs`` seconds, replacing any cached one."""
        agent_id = check_agent_id(agent_id)
        data = policy_to_json(check_policy(policy))
        ttl_secs = check_ttl_secs(ttl_secs)
        await self.pool.execute(
            "SET", self.pool.keys.policy(agent_id), data, "EX", ttl_secs, read=False
        )

    async def invalidate(self, agent_id: AgentId) -> None:
        """Drop the cached policy so the next read misses; idempotent."""
        key = self.pool.keys.policy(check_agent_id(agent_id))
        await self.pool.execute("DEL", key, read=False)

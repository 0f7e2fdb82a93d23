"""The policy cache: ``<prefix>policy:<hex32>`` holds the policy's serde JSON, with a TTL."""

from __future__ import annotations

import asyncio

import attrs

from aa_storage import AgentId, NotFoundError, PolicyDocument, policy_from_json, policy_to_json
from aa_storage.contracts import DEFAULT_POLICY_CACHE_TTL_SECS, PolicyLoader
from aa_storage.readthrough import Patience, SingleFlight
from aa_storage.validation import check_agent_id, check_loader, check_policy, check_ttl_secs
from aa_storage_redis.decoded import MAX_POLICY_BYTES, Decoded
from aa_storage_redis.executor import Executor
from aa_storage_redis.keys import KeySpace
from aa_storage_redis.leases import Leases
from aa_storage_redis.near_cache import NearCache
from aa_storage_redis.scripts import CACHE_POLICY, GET_POLICY_WITH_TTL, INVALIDATE


@attrs.frozen
class RedisPolicyStore:
    """A read-through cache in front of the authoritative policy store.

    :meth:`get_or_load` reads it, and on a miss loads from the authoritative
    store under a lease (see :mod:`aa_storage_redis.leases`). After a
    revocation, :meth:`invalidate` so the next read misses. Every method but
    ``get_or_load`` is one round trip; so is a ``get_or_load`` hit, and a
    near-cache hit (``near_cache = true``) makes none. A change made by this
    process is seen by its next read; one made elsewhere, once the server's
    invalidation arrives (see the README). ``flights`` coalesces concurrent
    misses in this process, and ``near_cache`` (when on) holds policies in it;
    the stores of one backend share both, its ``leases``, and the documents it
    last ``decoded``. Built over an executor alone, a store has its own, and no
    near-cache.
    """

    executor: Executor
    flights: SingleFlight = attrs.field(factory=SingleFlight, repr=False)
    keys: KeySpace = attrs.field(
        default=attrs.Factory(lambda self: KeySpace(self.executor.config.key_prefix), True)
    )
    near_cache: NearCache | None = attrs.field(default=None, repr=False)
    leases: Leases = attrs.field(
        default=attrs.Factory(
            lambda self: Leases(
                self.executor,
                self.keys,
                self.executor.config.lease_ttl,
                self.executor.config.lease_wait,
            ),
            True,
        ),
        repr=False,
    )
    decoded: Decoded[bytes, PolicyDocument] = attrs.field(factory=Decoded, repr=False)
    """The policies last decoded (``decoded.py``), which the stores of a backend share."""

    async def get_policy(self, agent_id: AgentId) -> PolicyDocument:
        """The cached policy; ``NotFoundError`` on a miss, ``SerializationError``
        when the stored value is not a policy document."""
        agent_id = check_agent_id(agent_id)
        near = self.near_cache
        if near is not None:
            self.executor.check_loop()  # a hit sends nothing, so execute would not check
            if (cached := near.lookup(agent_id)) is not None:
                return cached  # before telemetry: a hit makes no span, and costs no more
            if near.live:
                with self.executor.telemetry.operation("get_policy"):
                    return await near.fill(agent_id, lambda: self._read_with_ttl(agent_id))
        key = self.keys.policy(agent_id)
        with self.executor.telemetry.operation("get_policy"):
            reply = await self.executor.execute("GET", key, key=key, read=True)
            if reply is None:
                raise _not_cached(agent_id)
            return self._decode(reply)

    def _decode(self, data: bytes) -> PolicyDocument:
        if len(data) > MAX_POLICY_BYTES:
            return policy_from_json(data)
        return self.decoded.get(data, lambda: policy_from_json(data))

    async def cache_policy(self, agent_id: AgentId, policy: PolicyDocument, ttl_secs: int) -> None:
        """Cache ``policy`` for ``ttl_secs`` seconds, replacing any cached one; a
        ``get_or_load`` under way, in any process, no longer caches its load."""
        agent_id = check_agent_id(agent_id)
        data = policy_to_json(check_policy(policy))
        ttl_secs = check_ttl_secs(ttl_secs)
        keys = self.keys.policy_with_lease(agent_id)
        try:
            with self.executor.telemetry.operation("cache_policy"):
                await self.executor.run_script(CACHE_POLICY, keys, [data, ttl_secs], read=False)
        finally:
            self._written(agent_id)

    async def get_or_load(
        self,
        agent_id: AgentId,
        loader: PolicyLoader,
        ttl_secs: int = DEFAULT_POLICY_CACHE_TTL_SECS,
    ) -> PolicyDocument:
        """The cached policy, else ``loader``'s, cached for ``ttl_secs`` (see
        :class:`aa_storage.PolicyCache`). A hit is one ``GET``, or none from the
        near-cache."""
        agent_id = check_agent_id(agent_id)
        ttl_secs = check_ttl_secs(ttl_secs)
        loader = check_loader(loader)
        with self.executor.telemetry.operation("get_or_load"):
            try:
                return await self.get_policy(agent_id)
            except NotFoundError:
                pass
            # The caller's lease_wait bounds its wait for loads run by others, in this
            # process as in others: past it, the caller loads itself and caches nothing.
            until = asyncio.get_running_loop().time() + self.leases.wait
            return await self.flights.run(
                agent_id,
                lambda flight: self.leases.read_through(agent_id, loader, ttl_secs, flight, until),
                Patience(until, lambda: self.leases.load(loader, agent_id)),
            )

    async def invalidate(self, agent_id: AgentId) -> None:
        """Drop the cached policy so the next read misses; idempotent. A
        ``get_or_load`` under way, in any process, no longer caches its load."""
        agent_id = check_agent_id(agent_id)
        try:
            with self.executor.telemetry.operation("invalidate"):
                await self.executor.run_script(
                    INVALIDATE, self.keys.policy_with_lease(agent_id), [], read=False
                )
        finally:
            self._written(agent_id)

    def _written(self, agent_id: AgentId) -> None:
        """After a write to the agent's policy, whatever its outcome: this process's
        next read goes to the server, and no read or load under way here caches what
        it got. The near-cache drops the entry and voids its reads in flight, and
        the load under way is voided."""
        if self.near_cache is not None:
            self.near_cache.forget(agent_id)
        self.flights.void(agent_id)

    async def _read_with_ttl(self, agent_id: AgentId) -> tuple[PolicyDocument, int]:
        """The policy and its key's TTL in ms, read together, for the near-cache."""
        key = self.keys.policy(agent_id)
        data, ttl_ms = await self.executor.run_script(GET_POLICY_WITH_TTL, [key], [], read=True)
        if data is None:
            raise _not_cached(agent_id)
        return policy_from_json(data), ttl_ms


def _not_cached(agent_id: AgentId) -> NotFoundError:
    return NotFoundError(f"no policy cached for agent {agent_id.hex}")

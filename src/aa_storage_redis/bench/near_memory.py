"""What the near-cache's policies cost in memory, for ``aa-storage bench --scale``:
10,000 distinct policies cached through the driver and read once each, in this
process, on a backend with ``near_cache = true``.

The growth is what ``tracemalloc`` counts as still allocated after the reads
(the near-cache's entries and whatever else they keep alive), against before
them; the policies were written first, so that their writing is not counted.
The resident set (``/proc/self/statm``) is read too, where there is one: it
also holds memory the allocator keeps but no object uses, so it is rougher.
"""

from __future__ import annotations

import contextlib
import gc
import os
import tracemalloc
import uuid
from collections.abc import Iterator

import attrs

from aa_storage import (
    AgentId,
    NotFoundError,
    PolicyDecision,
    PolicyDocument,
    PolicyRule,
    StorageError,
)
from aa_storage_redis.backend import RedisBackend
from aa_storage_redis.bench.near import tracking_up
from aa_storage_redis.bench.operations import POLICY_TTL_SECS, delete_keys
from aa_storage_redis.bench.timing import together
from aa_storage_redis.config import RedisStorageConfig

POLICIES = 10_000
# A gateway's policy of a few rules, as an operator writes them.
RULES = (
    PolicyRule("tool:search.*", PolicyDecision.ALLOW),
    PolicyRule("tool:fs.read:*", PolicyDecision.ALLOW),
    PolicyRule("tool:fs.write:*", PolicyDecision.REQUIRE_APPROVAL),
    PolicyRule("tool:shell.*", PolicyDecision.DENY),
    PolicyRule("*", PolicyDecision.DENY),
)
# Calls in flight at once: enough to keep the connections busy, few enough that
# the reads' transient allocations stay small beside what is measured.
_BATCH = 200
# Reads of those policies a fill missed, which an invalidation racing it voided.
_ROUNDS = 5
_MIB = 1024 * 1024


@attrs.frozen
class NearMemory:
    """The growth over ``held`` policies in the near-cache: by tracemalloc, and of the
    resident set (None where ``/proc/self/statm`` is not there)."""

    policies: int
    rules: int
    held: int
    traced_bytes: int
    rss_bytes: int | None

    @property
    def bytes_per_policy(self) -> float:
        return self.traced_bytes / self.held if self.held else 0.0

    def lines(self) -> Iterator[str]:
        """The bench's lines about it."""
        per_10k = self.bytes_per_policy * 10_000 / _MIB
        rss = (
            f"; the resident set grew {self.rss_bytes / _MIB:,.1f} MiB"
            if self.rss_bytes is not None
            else "; no resident set to read (no /proc/self/statm)"
        )
        yield (
            f"near-cache memory: {self.held:,} of {self.policies:,} distinct policies of "
            f"{self.rules} rules held after one read each"
        )
        yield (
            f"  {self.bytes_per_policy:,.0f} bytes per policy (tracemalloc), "
            f"{per_10k:,.1f} MiB per 10,000{rss}"
        )


async def near_memory(config: RedisStorageConfig, policies: int = POLICIES) -> NearMemory:
    """Measure ``policies`` policies in the near-cache, under a fresh prefix below
    ``config.key_prefix``; their keys are deleted, however this ends. ``BackendError``
    if the near-cache's tracking does not come up."""
    config = attrs.evolve(
        config,
        key_prefix=f"{config.key_prefix}bench-{uuid.uuid4().hex[:12]}:",
        near_cache=True,
        near_cache_size=max(config.near_cache_size, policies),
    )
    agents = [AgentId.new() for _ in range(policies)]
    backend = RedisBackend.connect(config)
    keys = [key for agent in agents for key in backend.keys.policy_with_lease(agent)]
    try:
        memory = await _measure(backend, agents)
    except BaseException:
        # The failure says more than the deletion's, which it may well cause.
        with contextlib.suppress(StorageError):
            await delete_keys(config, keys)
        raise
    else:
        await delete_keys(config, keys)
    finally:
        await backend.aclose()
    return memory


async def _measure(backend: RedisBackend, agents: list[AgentId]) -> NearMemory:
    near = await tracking_up(backend)
    store = backend.policies()
    for start in range(0, len(agents), _BATCH):
        await together(
            store.cache_policy(agent, _policy(start + index), POLICY_TTL_SECS)
            for index, agent in enumerate(agents[start : start + _BATCH])
        )
    gc.collect()
    rss_before = _rss()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        await _read_each(backend, agents)
        gc.collect()
        traced = tracemalloc.get_traced_memory()[0] - before
        # Less tracemalloc's own bookkeeping, which the resident set holds too.
        rss_after = _rss()
        bookkeeping = tracemalloc.get_tracemalloc_memory()
    finally:
        tracemalloc.stop()
    rss = None if rss_before is None or rss_after is None else rss_after - bookkeeping - rss_before
    return NearMemory(len(agents), len(RULES), len(near), traced, rss)


def _policy(index: int) -> PolicyDocument:
    return PolicyDocument(1, f"aa-storage bench near-cache memory {index}", RULES)


async def _read_each(backend: RedisBackend, agents: list[AgentId]) -> None:
    """Read each agent's policy until the near-cache holds it: a fill is voided when
    the invalidation of this process's own write arrives while it runs."""
    near = backend.near_cache
    assert near is not None, "the backend was built with near_cache = true"
    store = backend.policies()

    async def read(agent: AgentId) -> None:
        # Evicted by the server: then it is counted as not held.
        with contextlib.suppress(NotFoundError):
            await store.get_policy(agent)

    missing = agents
    for _ in range(_ROUNDS):
        for start in range(0, len(missing), _BATCH):
            await together(read(agent) for agent in missing[start : start + _BATCH])
        missing = [agent for agent in missing if near.lookup(agent) is None]
        if not missing:
            return


def _rss() -> int | None:
    """The resident set's size in bytes, or None where /proc/self/statm is not there."""
    try:
        with open("/proc/self/statm") as statm:
            pages = int(statm.read().split()[1])
    except (OSError, IndexError, ValueError):
        return None
    return pages * os.sysconf("SC_PAGE_SIZE")

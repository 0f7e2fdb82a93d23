"""The driver on uvloop: the tests run on the loop ``--loop`` names (tox -e floor and
latest run the contract suite on both), and these check that it is in force and that
a gateway's calls, the near-cache and a reconnection work on uvloop from any test run."""

from __future__ import annotations

import asyncio

import pytest
import uvloop

from aa_storage import AgentId, PolicyDocument, SessionId, SessionRecord
from aa_storage.testing import a_policy, bounded
from aa_storage_redis import RedisBackend, RedisStorageConfig
from servers import RedisServer


@pytest.mark.asyncio
async def test_the_tests_run_on_the_loop_named(request: pytest.FixtureRequest) -> None:
    """``--loop uvloop`` puts every async test on uvloop; the default is asyncio's."""
    loop = asyncio.get_running_loop()
    on_uvloop = isinstance(loop, uvloop.Loop)
    assert on_uvloop == (request.config.getoption("loop") == "uvloop")


def test_a_gateway_works_on_uvloop(redis_server: RedisServer, redis_url: str) -> None:
    """On a uvloop loop: a gateway action, a near-cache hit, get_or_load, and a call
    after the server dropped every connection (which reconnects)."""

    async def gateway() -> None:
        assert isinstance(asyncio.get_running_loop(), uvloop.Loop)
        config = RedisStorageConfig(url=redis_url, near_cache=True)
        backend = RedisBackend.connect(config)
        try:
            agent = AgentId.new()
            policies = backend.policies()
            await policies.cache_policy(agent, a_policy(), 60)
            policy, total, _ = await bounded(
                asyncio.gather(
                    policies.get_policy(agent),
                    backend.rate_limiter().increment("uvloop", 1, 60),
                    backend.sessions().save(SessionRecord(SessionId.new(), agent, 1)),
                )
            )
            assert (policy, total) == (a_policy(), 1)

            async def a_near_cache_hit() -> None:
                while backend.stats().near_cache_hits == 0:
                    await policies.get_policy(agent)
                    await asyncio.sleep(0.01)

            await bounded(a_near_cache_hit())
            other = AgentId.new()
            assert await bounded(policies.get_or_load(other, _load, 60)) == a_policy()
            assert backend.stats().loads_run == 1
            with redis_server.client() as admin:
                admin.client_kill_filter(skipme=True, _type="normal")
            assert await bounded(backend.rate_limiter().current("uvloop")) == 1
        finally:
            await backend.aclose()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(gateway())


async def _load(agent: AgentId) -> PolicyDocument:
    return a_policy()

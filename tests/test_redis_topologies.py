"""The driver on Redis Cluster and on Sentinel: the contract, and exact totals through
resharding, failover and a killed primary, on redis-server and on valkey-server."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from aa_storage import AgentId, BackendError, SessionId, SessionRecord
from aa_storage.testing import ContractSuite
from aa_storage_redis import RedisBackend, RedisStorageConfig
from cluster import LocalCluster
from sentinel import SentinelSet
from servers import LOADED_MACHINE_TIMEOUTS, free_ports
from test_redis_security import readme_acl_rule

HANG_GUARD = 60.0


@asynccontextmanager
async def connected(url: str, **settings: Any) -> AsyncIterator[RedisBackend]:
    """A driver backend patient enough for failovers and slot moves (unless ``settings``
    say otherwise), closed when the block is left."""
    backend = RedisBackend.connect(
        RedisStorageConfig(url=url, **{**LOADED_MACHINE_TIMEOUTS, "retries": 10, **settings})
    )
    try:
        yield backend
    finally:
        await backend.aclose()


async def found_past_a_dead_first_seed(url: str, key: str) -> None:
    """Check that ``url`` with a closed port put before its seeds still reaches the
    deployment: an increment of ``key`` answers (and is undone)."""
    scheme, live = url.split("://", 1)
    [dead_port] = free_ports(1)
    async with connected(f"{scheme}://127.0.0.1:{dead_port},{live}") as backend:
        try:
            assert await backend.rate_limiter().increment(key, 1, 60) == 1
        finally:
            await backend.rate_limiter().reset(key)


class TestClusterContract(ContractSuite):
    @pytest_asyncio.fixture
    async def backend(self, redis_cluster: LocalCluster) -> AsyncIterator[RedisBackend]:
        redis_cluster.flushall()
        async with connected(redis_cluster.url) as backend:
            yield backend


class TestSentinelContract(ContractSuite):
    @pytest_asyncio.fixture
    async def backend(self, sentinel_set: SentinelSet) -> AsyncIterator[RedisBackend]:
        sentinel_set.flushall()
        async with connected(sentinel_set.url) as backend:
            yield backend


class Load:
    """Callers incrementing their keys in a loop, counting what was acknowledged."""

    def __init__(self, backend: RedisBackend, keys: list[str], callers: int) -> None:
        self.counter = backend.rate_limiter()
        self.keys = keys
        self.callers = callers
        self.acknowledged = dict.fromkeys(keys, 0)
        self.errors: list[tuple[float, str]] = []
        self._running = True

    async def run_while(self, disturbance: Any) -> None:
        """Run the callers until ``disturbance`` (a blocking function) has returned."""
        workers = [asyncio.create_task(self._work(i)) for i in range(self.callers)]
        try:
            await asyncio.to_thread(disturbance)
            await asyncio.sleep(0.5)  # calls go on after the change, too
        finally:
            self._running = False
            await asyncio.wait_for(asyncio.gather(*workers), HANG_GUARD)

    async def totals(self) -> dict[str, int]:
        return {key: await self.counter.current(key) for key in self.keys}

    async def _work(self, index: int) -> None:
        mine = self.keys[index :: self.callers]
        while self._running:
            for key in mine:
                try:
                    await self.counter.increment(key, 1, 3600)
                except BackendError as exc:
                    self.errors.append((time.monotonic(), str(exc)))
                    await asyncio.sleep(0.01)
                else:
                    self.acknowledged[key] += 1


@pytest.mark.asyncio
class TestClusterUnderLoad:
    async def test_resharding_loses_and_fails_nothing(
        self, fresh_redis_cluster: LocalCluster
    ) -> None:
        """20 callers increment 500 keys on every primary while slots move between two
        primaries: no call fails, and every total is exactly what was acknowledged."""
        cluster = fresh_redis_cluster
        async with connected(cluster.url) as backend:
            load = Load(backend, [f"key-{i}" for i in range(500)], callers=20)
            source, target = cluster.primaries()[:2]
            moved: list[int] = []
            await load.run_while(lambda: moved.extend(cluster.reshard(200, source, target)))
            assert load.errors == []
            assert await load.totals() == load.acknowledged
        assert len(moved) == 200
        assert set(moved) <= set(cluster.slots_of(target))

    async def test_manual_failover_keeps_every_total_exact(
        self, fresh_redis_cluster: LocalCluster
    ) -> None:
        """CLUSTER FAILOVER under load: totals are exact, and calls go on afterwards."""
        cluster = fresh_redis_cluster
        async with connected(cluster.url) as backend:
            load = Load(backend, [f"key-{i}" for i in range(100)], callers=20)
            replica = cluster.replica_of(cluster.primaries()[0])
            await load.run_while(lambda: cluster.manual_failover(replica))
            assert await load.totals() == load.acknowledged
            assert load.errors == []

    async def test_a_killed_primary_is_replaced_and_calls_resume(
        self, fresh_redis_cluster: LocalCluster
    ) -> None:
        """SIGKILL of a primary: once its replica is promoted, every key answers again."""
        cluster = fresh_redis_cluster
        async with connected(cluster.url, socket_timeout=2.0, connect_timeout=1.0) as backend:
            load = Load(backend, [f"key-{i}" for i in range(100)], callers=20)
            victim = cluster.primaries()[0]

            def kill_and_wait() -> None:
                cluster.kill(victim)
                cluster.wait_until_converged()

            await load.run_while(kill_and_wait)
            after = await asyncio.gather(*(load.counter.increment(k, 1, 60) for k in load.keys))
        # Replication is asynchronous: the kill may lose what the replica had not yet
        # received, so only "calls resume" is promised here.
        assert all(total >= 1 for total in after)
        assert load.errors, "the kill should have failed some calls in flight"
        # Each failure names the node that failed, which the cluster URL alone doesn't.
        assert any(f"(node 127.0.0.1:{victim.port})" in error for _, error in load.errors)

    async def test_a_kill_loses_nothing_confirmed_by_a_replica(
        self, fresh_redis_cluster: LocalCluster
    ) -> None:
        """With wait_replicas=1, SIGKILL of a primary under load: every session saved
        before loads afterwards, and no total falls below what was acknowledged."""
        cluster = fresh_redis_cluster
        async with connected(
            cluster.url, wait_replicas=1, wait_timeout=1.0, socket_timeout=2.0
        ) as backend:
            sessions = backend.sessions()
            records = [SessionRecord(SessionId.new(), AgentId.new(), i) for i in range(100)]
            load = Load(backend, [f"key-{i}" for i in range(100)], callers=20)
            victim = cluster.primaries()[0]

            def kill_and_wait() -> None:
                cluster.kill(victim)
                cluster.wait_until_converged()

            await asyncio.gather(*(sessions.save(record) for record in records))
            await load.run_while(kill_and_wait)
            loaded = [await sessions.load(record.session_id) for record in records]
            totals = await load.totals()
        assert loaded == records
        assert all(totals[key] >= load.acknowledged[key] for key in totals)
        assert sum(load.acknowledged.values()) > 0

    async def test_a_dead_seed_does_not_stop_discovery(self, redis_cluster: LocalCluster) -> None:
        """A URL whose first node is down still finds the cluster through the others."""
        await found_past_a_dead_first_seed(redis_cluster.url, "seeded")


@pytest.mark.asyncio
class TestSentinelUnderLoad:
    async def test_failover_keeps_every_total_exact(self, fresh_sentinel_set: SentinelSet) -> None:
        """SENTINEL FAILOVER under load, with no replica acknowledgement: calls wait
        out the failover instead of reaching the old primary, so every total is
        exactly what was acknowledged and no call fails."""
        sentinels = fresh_sentinel_set
        old = sentinels.current_primary()
        async with connected(sentinels.url) as backend:
            load = Load(backend, [f"key-{i}" for i in range(50)], callers=10)
            await load.run_while(sentinels.failover)
            totals = await load.totals()
            facts = dict((await backend.describe()).facts)
        assert load.errors == []
        assert totals == load.acknowledged
        assert sum(load.acknowledged.values()) > 0
        assert facts["primary"] != f"127.0.0.1:{old.port}"

    async def test_a_client_that_starts_during_a_failover_waits_for_it(
        self, fresh_sentinel_set: SentinelSet
    ) -> None:
        """Calls that begin after SENTINEL FAILOVER, before any event they could hear:
        discovery sees the failover under way and holds them, instead of writing to
        the old primary (which takes writes the promotion drops), so every total is
        exact."""
        sentinels = fresh_sentinel_set
        old = await asyncio.to_thread(sentinels.start_failover)
        async with connected(sentinels.url) as backend:
            load = Load(backend, [f"key-{i}" for i in range(50)], callers=10)
            await load.run_while(lambda: sentinels.wait_for_new_primary(old))
            totals = await load.totals()
        assert load.errors == []
        assert totals == load.acknowledged
        assert sum(load.acknowledged.values()) > 0

    async def test_failover_loses_no_write_confirmed_by_a_replica(
        self, fresh_sentinel_set: SentinelSet
    ) -> None:
        """SENTINEL FAILOVER under load, every write confirmed by a replica: the
        sentinels promote the replica that has the most, so no acknowledged
        increment is lost, and calls go on on the new primary."""
        sentinels = fresh_sentinel_set
        async with connected(sentinels.url, wait_replicas=1, wait_timeout=1.0) as backend:
            load = Load(backend, [f"key-{i}" for i in range(50)], callers=10)
            await load.run_while(sentinels.failover)
            after = await asyncio.wait_for(
                backend.rate_limiter().increment("after", 1, 60), HANG_GUARD
            )
            totals = await load.totals()
        assert after == 1
        lost = {k: (totals[k], n) for k, n in load.acknowledged.items() if totals[k] < n}
        assert lost == {}, f"(total, acknowledged) per key; errors: {load.errors[:5]}"
        assert sum(load.acknowledged.values()) > 0

    async def test_sessions_saved_before_a_kill_load_afterwards(
        self, fresh_sentinel_set: SentinelSet
    ) -> None:
        """With wait_replicas=1, every session acknowledged before the primary is killed
        loads from the promoted replica."""
        sentinels = fresh_sentinel_set
        async with connected(sentinels.url, wait_replicas=1, wait_timeout=1.0) as backend:
            sessions = backend.sessions()
            records = [SessionRecord(SessionId.new(), AgentId.new(), i) for i in range(200)]
            for record in records:
                await sessions.save(record)
            old = await asyncio.to_thread(sentinels.kill_primary)
            await asyncio.to_thread(sentinels.wait_for_new_primary, old)
            loaded = [await sessions.load(record.session_id) for record in records]
        assert loaded == records

    async def test_a_dead_sentinel_does_not_stop_discovery(self, sentinel_set: SentinelSet) -> None:
        """A URL whose first sentinel is down still finds the primary through the others."""
        await found_past_a_dead_first_seed(sentinel_set.url, "sentinel-seed")


class TestTopologySecrets:
    @pytest.mark.asyncio
    async def test_cluster_and_sentinel_passwords_never_show(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        """Passwords in cluster and sentinel URLs, and sentinel_password, appear in no repr,
        log line or error, even when every server is unreachable."""
        secret, sentinel_secret = "cl-Pw-4f1", "sn-Pw-9c2"
        [a, b] = free_ports(2)
        configs = [
            RedisStorageConfig(url=f"redis+cluster://u:{secret}@127.0.0.1:{a},127.0.0.1:{b}"),
            RedisStorageConfig(
                url=f"redis+sentinel://u:{secret}@127.0.0.1:{a}/svc",
                sentinel_password=sentinel_secret,
            ),
        ]
        caplog.set_level(logging.DEBUG)
        shown: list[str] = []
        for config in configs:
            backend = RedisBackend.connect(config)
            shown += [repr(config), repr(backend)]
            with pytest.raises(BackendError) as caught:
                await backend.rate_limiter().current("k")
            shown += [str(caught.value), repr(caught.value)]
            await backend.aclose()
        text = "\n".join([*shown, caplog.text])
        assert secret not in text
        assert sentinel_secret not in text
        assert "***" in text


def readme_setuser_rule(user: str, password: str) -> str:
    """The ACL SETUSER rule the README gives ``user``, user name included, with
    ``password`` in place of the README's CHANGE-ME."""
    readme = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")
    match = re.search(rf"^\s*ACL SETUSER ({re.escape(user)} .+)$", readme, re.MULTILINE)
    assert match, f"README.md must give the ACL SETUSER rule of {user}"
    return match.group(1).replace(">CHANGE-ME", f">{password}")


def readme_cluster_acl_rule() -> str:
    """The cluster driver user's rule the README gives."""
    return readme_setuser_rule("aa-driver-cluster", CLUSTER_USER_PASSWORD)


CLUSTER_USER_PASSWORD = "cluster-user-pw"


@pytest.fixture(scope="module")
def acl_cluster() -> Iterator[LocalCluster]:
    """A cluster whose nodes have the README's cluster driver user."""
    with LocalCluster("redis-server", acl_users=[readme_cluster_acl_rule()]) as cluster:
        yield cluster


class TestClusterUnderTheReadmeRule(ContractSuite):
    """The whole contract holds on a cluster for a user with exactly the README's rule."""

    @pytest_asyncio.fixture
    async def backend(self, acl_cluster: LocalCluster) -> AsyncIterator[RedisBackend]:
        acl_cluster.flushall()
        url = acl_cluster.url_for(user="aa-driver-cluster", password=CLUSTER_USER_PASSWORD)
        async with connected(url) as backend:
            yield backend

    @pytest.mark.asyncio
    async def test_check_counts_replicas_without_cluster_nodes(self, backend: Any) -> None:
        """The README's rule denies CLUSTER NODES: check falls back to CLUSTER SLOTS."""
        await backend.rate_limiter().increment("replicated", 1, 60)
        facts = dict((await backend.describe()).facts)
        assert facts["replicas"].endswith("in sync (CLUSTER NODES is denied to this user)")
        assert facts["slots_covered"] == "16384 of 16384"


def readme_sentinel_acl_rule() -> str:
    """The sentinel-side user's rule the README gives."""
    return readme_setuser_rule("aa-sentinel-watch", SENTINEL_USER_PASSWORD)


SENTINEL_USER_PASSWORD = "sentinel-user-pw"


@pytest.mark.asyncio
class TestSentinelUnderTheReadmeRule:
    async def test_failover_is_followed_as_the_readme_sentinel_user(
        self, fresh_sentinel_set: SentinelSet, caplog: pytest.LogCaptureFixture
    ) -> None:
        """As a sentinel user with exactly the README's rule, the driver finds the
        primary, shows the sentinels, and waits out a failover with exact totals."""
        sentinels = fresh_sentinel_set
        for sentinel in sentinels.sentinels:
            with sentinel.client() as client:
                client.execute_command("ACL", "SETUSER", *readme_sentinel_acl_rule().split())
        async with connected(
            sentinels.url,
            sentinel_username="aa-sentinel-watch",
            sentinel_password=SENTINEL_USER_PASSWORD,
        ) as backend:
            load = Load(backend, [f"key-{i}" for i in range(20)], callers=5)
            facts = dict((await backend.describe()).facts)
            await load.run_while(sentinels.failover)
            totals = await load.totals()
        assert facts["sentinels_answering"] == "3 of 3"
        assert "refuses to report failovers" not in caplog.text
        assert load.errors == []
        assert totals == load.acknowledged


DATA_USER_PASSWORD = "sentinel-data-pw"


def readme_sentinel_data_rule() -> str:
    """What the README asks of a data node behind sentinels: the standalone rule,
    plus ``+role`` so the primary's role is checked."""
    rule = " ".join(readme_acl_rule()).replace(">CHANGE-ME", f">{DATA_USER_PASSWORD}")
    return f"aa-driver-data {rule} +role"


@pytest.fixture(scope="module")
def acl_sentinel_set() -> Iterator[SentinelSet]:
    """A sentinel set whose data nodes have the README's user for them."""
    with SentinelSet("redis-server", acl_users=[readme_sentinel_data_rule()]) as sentinels:
        yield sentinels


class TestSentinelContractUnderTheReadmeRule(ContractSuite):
    """The whole contract holds behind sentinels for a data-node user with exactly the
    README's rule (the standalone rule plus +role), the near-cache on."""

    @pytest_asyncio.fixture
    async def backend(self, acl_sentinel_set: SentinelSet) -> AsyncIterator[RedisBackend]:
        acl_sentinel_set.flushall()
        url = acl_sentinel_set.url_for(user="aa-driver-data", password=DATA_USER_PASSWORD)
        async with connected(url, near_cache=True) as backend:
            yield backend

"""Where features meet: an uncovered cluster slot, a slot moved to a new primary under
a near-cache, WAIT with a replica missing, frozen seeds, the max_pending bound across
nodes, an argument too large for the server, and the messages for a refused WAIT and
a refused sentinel login."""

from __future__ import annotations

import asyncio
import itertools
import socket
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from redis.crc import key_slot

from aa_storage import AgentId, BackendError, NotFoundError
from aa_storage.testing import HANG_SECS, a_policy, bounded
from aa_storage_redis import RedisBackend, executor
from aa_storage_redis.cluster import REFRESH_INTERVAL_SECS
from cluster import ClusterNode, LocalCluster
from executor_support import OpenBackend
from sentinel import SentinelSet
from servers import RedisServer
from waiting import eventually

pytestmark = pytest.mark.asyncio

PREFIX = b"aa:ratelimit:"


def counter_in_slot(slot: int) -> str:
    """A rate-limit key whose Redis key hashes to ``slot``."""
    return next(
        name
        for name in (f"edge:{i}" for i in itertools.count())
        if key_slot(PREFIX + name.encode()) == slot
    )


def slot_map_reads(cluster: LocalCluster) -> int:
    """CLUSTER SLOTS calls served by the cluster's running nodes so far."""
    return sum(
        node.server.commandstats().get("cluster|slots", 0) for node in cluster.nodes if node.running
    )


def set_on_every_node(cluster: LocalCluster, *config: str) -> None:
    for node in cluster.nodes:
        with node.client() as client:
            client.config_set(*config)


async def uncover_a_slot(
    cluster: LocalCluster, backend: RedisBackend
) -> tuple[ClusterNode, int, str]:
    """Once ``backend`` has read the slot map, take a slot from its primary (the others
    stay served); returns that primary, the slot, and a counter key in it."""
    set_on_every_node(cluster, "cluster-require-full-coverage", "no")
    owner = cluster.primaries()[0]
    slot = cluster.slots_of(owner)[0]
    assert await backend.rate_limiter().current("edge:warm") == 0  # the map is read
    with owner.client() as client:
        client.execute_command("CLUSTER", "DELSLOTS", slot)
    return owner, slot, counter_in_slot(slot)


class TestUncoveredSlot:
    """B1: a slot no primary serves."""

    async def test_calls_fail_naming_the_slot_and_the_map_is_read_a_few_times_a_second(
        self, fresh_redis_cluster: LocalCluster, open_backend: OpenBackend
    ) -> None:
        """Callers for a key whose slot has no primary get a BackendError naming the
        slot, within connect_timeout + socket_timeout, and however many they are, the
        slot map is read at most about once per REFRESH_INTERVAL_SECS meanwhile."""
        cluster = fresh_redis_cluster
        backend = open_backend(cluster.url, connect_timeout=1.0, socket_timeout=1.0)
        _, slot, counter = await uncover_a_slot(cluster, backend)
        before = slot_map_reads(cluster)
        calls = [backend.rate_limiter().current(counter) for _ in range(20)]
        async with asyncio.timeout(1.0 + 1.0 + 3.0):
            outcomes = await asyncio.gather(*calls, return_exceptions=True)
        reads = slot_map_reads(cluster) - before
        for outcome in outcomes:
            assert isinstance(outcome, BackendError), outcome
            assert f"slot {slot}" in str(outcome)
        # The calls lasted at most 2 s (plus a loaded machine's slack): a read every
        # REFRESH_INTERVAL_SECS is at most 8 and a few more, never one per caller or
        # a busy loop.
        assert 1 <= reads <= (2.0 + 3.0) / REFRESH_INTERVAL_SECS + 2

    async def test_calls_wait_for_the_slot_to_be_covered(
        self, fresh_redis_cluster: LocalCluster, open_backend: OpenBackend
    ) -> None:
        """A call for an uncovered slot waits, reading the map again, and goes through
        once a primary serves the slot again."""
        cluster = fresh_redis_cluster
        backend = open_backend(cluster.url, connect_timeout=5.0, socket_timeout=5.0)
        owner, slot, counter = await uncover_a_slot(cluster, backend)
        before = slot_map_reads(cluster)
        calls = asyncio.gather(*(backend.rate_limiter().current(counter) for _ in range(10)))
        # The callers have found the slot uncovered once they read the map again.
        await eventually(lambda: slot_map_reads(cluster) > before + 1, "the map is read again")
        with owner.client() as client:
            client.execute_command("CLUSTER", "ADDSLOTS", slot)
        assert await bounded(calls) == [0] * 10


class TestSlotMovedToANewPrimary:
    """B2: a near-cache reader while a slot moves to a primary added after it started."""

    async def test_the_reader_sees_every_later_change_from_the_new_primary(
        self, fresh_redis_cluster: LocalCluster, open_backend: OpenBackend
    ) -> None:
        """After the slot of a cached policy moves to a new primary, the near-cache
        tracks that primary too: a hit is served from it, and a later cache_policy or
        invalidate by another process reaches the reader."""
        cluster = fresh_redis_cluster
        reader = open_backend(cluster.url, near_cache=True)
        writer = open_backend(cluster.url)
        agent = AgentId.new()
        await writer.policies().cache_policy(agent, a_policy("v1"), 600)
        assert await reader.policies().get_policy(agent) == a_policy("v1")
        await eventually(
            lambda: "tracking up on 3 primaries" in reader.near_cache_state(), "tracking"
        )
        slot = key_slot(reader.keys.policy(agent))
        source = cluster.primary_for_slot(slot)
        added = await asyncio.to_thread(cluster.add_primary)
        await asyncio.to_thread(cluster.migrate_slot, slot, source, added)

        # The reader learns of the move (MOVED) and tracks all four primaries.
        assert await reader.policies().get_policy(agent) == a_policy("v1")
        await eventually(
            lambda: "tracking up on 4 primaries" in reader.near_cache_state(),
            "tracking on the new primary",
        )
        hits = reader.stats().near_cache_hits
        while reader.stats().near_cache_hits == hits:  # filled again, then a hit
            assert await bounded(reader.policies().get_policy(agent)) == a_policy("v1")
            await asyncio.sleep(0)

        await writer.policies().cache_policy(agent, a_policy("v2"), 600)
        await eventually_reads(reader, agent, a_policy("v2"))
        await writer.policies().invalidate(agent)
        await eventually_reads(reader, agent, None)


async def eventually_reads(backend: RedisBackend, agent: AgentId, expected: Any) -> None:
    """Wait until ``backend`` reads ``expected`` for ``agent`` (``None``: not found)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + HANG_SECS
    while True:
        try:
            seen: Any = await backend.policies().get_policy(agent)
        except NotFoundError:
            seen = None
        if seen == expected:
            return
        assert loop.time() < deadline, f"still reads {seen!r}, not {expected!r}"
        await asyncio.sleep(0.01)


class TestWaitWithAReplicaMissing:
    """B3: writes that wait on replicas that are not there."""

    async def test_other_callers_are_not_held_up(
        self, redis_url: str, open_backend: OpenBackend
    ) -> None:
        """With wait_replicas = 1 and no replica, every write waits wait_timeout and
        fails as unconfirmed, while reads made meanwhile on the same backend all answer:
        no WAIT is queued ahead of them on their connection."""
        backend = open_backend(
            redis_url, wait_replicas=1, wait_timeout=0.6, socket_timeout=1.0, pool_size=2
        )
        counter = backend.rate_limiter()
        writes = [counter.increment(f"edge:wait:{i}", 1, 60) for i in range(4)]
        reads = [counter.current(f"edge:wait:{i % 4}") for i in range(75)]
        outcomes = await bounded(asyncio.gather(*writes, *reads, return_exceptions=True))
        written, read = outcomes[:4], outcomes[4:]
        for outcome in written:
            assert isinstance(outcome, BackendError), outcome
            assert "replicas confirmed it" in str(outcome)
        assert all(isinstance(outcome, int) for outcome in read), read
        assert backend.stats().timeouts == 0

    async def test_a_refused_wait_says_so(
        self, redis_server: RedisServer, redis_url: str, open_backend: OpenBackend
    ) -> None:
        """Under an ACL without +wait, the error is the refusal, not "0 replicas"."""
        user, password = "edge-no-wait", "edge-no-wait-pw"
        with redis_server.client() as admin:
            admin.execute_command("ACL", "SETUSER", user, "on", f">{password}", "~*", "+@all")
            admin.execute_command("ACL", "SETUSER", user, "-wait")
        try:
            url = redis_url.replace("redis://", f"redis://{user}:{password}@", 1)
            backend = open_backend(url, wait_replicas=1, wait_timeout=0.5)
            with pytest.raises(BackendError) as caught:
                await backend.rate_limiter().increment("edge:no-wait", 1, 60)
            assert "WAIT failed" in str(caught.value)
            assert "permission" in str(caught.value)
            assert password not in str(caught.value)
        finally:
            with redis_server.client() as admin:
                admin.execute_command("ACL", "DELUSER", user)


@pytest.fixture
def frozen_ports() -> Iterator[list[int]]:
    """Six loopback ports that accept connections and never answer."""
    listeners = []
    try:
        for _ in range(6):
            listener = socket.socket()
            listener.bind(("127.0.0.1", 0))
            listener.listen(16)
            listeners.append(listener)
        yield [listener.getsockname()[1] for listener in listeners]
    finally:
        for listener in listeners:
            listener.close()


class TestSeeds:
    async def test_frozen_seeds_cost_the_first_call_nothing_while_one_answers(
        self, redis_cluster: LocalCluster, frozen_ports: list[int], open_backend: OpenBackend
    ) -> None:
        """The seeds are asked at once: six that never answer, listed first, do not
        hold up the first call past one connect_timeout (one at a time: six)."""
        live = redis_cluster.url.split("://", 1)[1]
        frozen = ",".join(f"127.0.0.1:{port}" for port in frozen_ports)
        backend = open_backend(
            f"redis+cluster://{frozen},{live}", connect_timeout=3.0, socket_timeout=3.0
        )
        async with asyncio.timeout(3.0):
            assert await backend.rate_limiter().current("edge:seeds") == 0


class TestPendingBound:
    async def test_max_pending_bounds_the_whole_cluster(
        self, redis_cluster: LocalCluster, open_backend: OpenBackend
    ) -> None:
        """max_pending counts the commands waiting on every node together, as stats()
        shows them: the peak never passes it, and the calls past it are refused."""
        backend = open_backend(redis_cluster.url, max_pending=4)
        counter = backend.rate_limiter()
        await counter.current("edge:warm")
        outcomes = await bounded(
            asyncio.gather(
                *(counter.current(f"edge:pending:{i}") for i in range(60)),
                return_exceptions=True,
            )
        )
        refused = [outcome for outcome in outcomes if isinstance(outcome, BackendError)]
        assert refused, "60 calls at once never passed max_pending=4"
        assert all("max_pending=4" in str(outcome) for outcome in refused)
        assert backend.stats().peak_pending <= 4


class TestOversizedArgument:
    async def test_is_refused_before_it_is_sent_and_others_go_on(
        self, monkeypatch: pytest.MonkeyPatch, redis_url: str, open_backend: OpenBackend
    ) -> None:
        """A value over the argument limit is a ValueError before any I/O; the
        connection, and the calls in flight on it, are untouched."""
        monkeypatch.setattr(executor, "MAX_ARGUMENT_BYTES", 1024)
        counter = open_backend(redis_url).rate_limiter()
        others = [counter.increment(f"edge:size:{i}", 1, 60) for i in range(20)]
        in_flight = asyncio.gather(*others)
        with pytest.raises(ValueError, match="over the 1024 bytes"):
            await counter.increment("x" * 2000, 1, 60)
        assert await bounded(in_flight) == [1] * 20
        assert await counter.current("edge:size:0") == 1
        assert counter.executor.stats().reconnects == 0  # no connection was lost


class TestSentinelLogin:
    async def test_a_refused_sentinel_login_names_the_sentinels(
        self, sentinel_set: SentinelSet, open_backend: OpenBackend
    ) -> None:
        """A wrong sentinel_password is reported as the sentinels' refusal, naming the
        setting, and without the password."""
        user, right, wrong = "edge-watch", "edge-watch-pw", "not-the-edge-pw"
        for sentinel in sentinel_set.sentinels:
            with sentinel.client() as client:
                client.execute_command("ACL", "SETUSER", user, "on", f">{right}", "+@all")
        try:
            backend = open_backend(
                sentinel_set.url, sentinel_username=user, sentinel_password=wrong
            )
            with pytest.raises(BackendError) as caught:
                await backend.rate_limiter().current("edge:sentinel")
        finally:
            for sentinel in sentinel_set.sentinels:
                with sentinel.client() as client:
                    client.execute_command("ACL", "DELUSER", user)
        message = str(caught.value)
        assert "sentinel" in message
        assert "sentinel_password" in message
        assert wrong not in message


class TestLoading:
    async def test_reads_and_writes_wait_for_a_server_loading_its_data(
        self, open_backend: OpenBackend
    ) -> None:
        """A server that answers LOADING after a restart ran nothing: a read and a
        write made while it loads are tried again until it has loaded, and answer."""
        slow_load = ["--key-load-delay", "200", "--loading-process-events-interval-bytes", "1024"]
        with RedisServer("redis-server", extra_args=slow_load) as server:
            with server.client() as admin:
                admin.eval("for i = 1, 10000 do redis.call('SET', 'k' .. i, i) end", 0)
                admin.save()
            restarting = asyncio.ensure_future(asyncio.to_thread(server.restart))
            try:
                await eventually(lambda: server_is_loading(server), "the server loads")
                counter = open_backend(server.url, connect_timeout=5.0, socket_timeout=5.0)
                assert await bounded(counter.rate_limiter().current("edge:loading")) == 0
                increment = counter.rate_limiter().increment("edge:loading", 1, 60)
                assert await bounded(increment) == 1
            finally:
                await bounded(restarting)


def server_is_loading(server: RedisServer) -> bool:
    """Whether ``server`` answers LOADING now (False while it is not up yet)."""
    try:
        with server.client(socket_timeout=0.5, socket_connect_timeout=0.5) as client:
            client.ping()
    except redis.BusyLoadingError:
        return True
    except redis.RedisError:
        return False
    return False


class TestRedirections:
    async def test_ask_is_followed_with_asking_and_moved_updates_the_map(
        self, fresh_redis_cluster: LocalCluster, open_backend: OpenBackend
    ) -> None:
        """While a slot migrates, ASK sends ASKING and the command to the importing node
        and leaves the map as it is; once the slot has moved, MOVED points the map at
        the new owner."""
        cluster = fresh_redis_cluster
        backend = open_backend(cluster.url)
        counter = backend.rate_limiter()
        name = counter_in_slot(0)
        key = PREFIX + name.encode()
        assert await counter.increment(name, 1, 600) == 1
        source = cluster.primary_for_slot(0)
        target = next(node for node in cluster.primaries() if node is not source)
        with target.client() as client:
            client.execute_command("CLUSTER", "SETSLOT", 0, "IMPORTING", source.node_id)
        with source.client() as client:
            client.execute_command("CLUSTER", "SETSLOT", 0, "MIGRATING", target.node_id)
            client.execute_command("MIGRATE", "127.0.0.1", target.port, key, 0, 5000)
        topology = backend.pool._topology  # which node the map names, read without I/O

        assert await counter.current(name) == 1  # ASK, then ASKING + GET on the target
        assert await counter.increment(name, 1, 600) == 2
        assert served_by(topology, key) == source.address

        for node in [target, source]:
            with node.client() as client:
                client.execute_command("CLUSTER", "SETSLOT", 0, "NODE", target.node_id)
        assert await counter.increment(name, 1, 600) == 3  # MOVED, then the target
        assert served_by(topology, key) == target.address


def served_by(topology: Any, key: bytes) -> str:
    node = topology.node_for(key)
    assert node is not None
    address: str = node.address
    return address

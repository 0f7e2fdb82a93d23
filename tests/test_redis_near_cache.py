"""The near-cache (``near_cache = true``) against real servers: hits without I/O, changes
made elsewhere seen once the server's invalidation arrives, flushed on every loss of
tracking and topology change, fills fenced against invalidations, TTL and LRU bounds,
on standalone, cluster and sentinel, and under the README's ACL rule."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import pytest_asyncio
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from redis.asyncio.connection import Connection

from aa_storage import (
    AgentId,
    InvalidConfigError,
    NotFoundError,
    PolicyDecision,
    PolicyDocument,
    PolicyRule,
    SerializationError,
    StorageError,
    load_config,
    policy_to_json,
)
from aa_storage.testing import HANG_SECS, PolicyContract, ReadThroughContract
from aa_storage_redis import RedisBackend, RedisStorageConfig
from aa_storage_redis.near_cache import Fill, NearCache
from aa_storage_redis.policies import RedisPolicyStore
from aa_storage_redis.tracking_connection import ACL_COMMANDS
from cluster import LocalCluster
from executor_support import PATIENT, OpenBackend
from faultproxy import FaultProxyFactory
from sentinel import SentinelSet
from servers import RedisServer
from test_redis_security import readme_acl_rule
from test_redis_topologies import CLUSTER_USER_PASSWORD, readme_cluster_acl_rule
from waiting import eventually

NEAR = {"near_cache": True}


def policy(version: int) -> PolicyDocument:
    return PolicyDocument(version, f"v{version}", [PolicyRule("tool:*", PolicyDecision.ALLOW)])


def near_of(backend: RedisBackend) -> NearCache:
    near = backend.near_cache
    assert near is not None, "the backend has near_cache on"
    return near


async def tracking_up(backend: RedisBackend) -> NearCache:
    """Wake the near-cache's tracking (a lookup does) and wait until it is up."""
    near = near_of(backend)
    with pytest.raises(NotFoundError):
        await backend.policies().get_policy(AgentId.new())
    await eventually(lambda: near.live, "tracking is up")
    return near


@asynccontextmanager
async def tracked(backend: RedisBackend) -> AsyncIterator[RedisBackend]:
    """``backend`` (near-cache on) with its tracking up, so that reads are served and
    filled; closed when the block is left."""
    try:
        await tracking_up(backend)
        yield backend
    finally:
        await backend.aclose()


async def read(policies: RedisPolicyStore, agent: AgentId) -> PolicyDocument | None:
    try:
        return await policies.get_policy(agent)
    except NotFoundError:
        return None


async def sees(policies: RedisPolicyStore, agent: AgentId, expected: PolicyDocument | None) -> None:
    """Return once ``get_policy`` answers ``expected`` (None: NotFoundError); fail the
    test if it still does not after HANG_SECS. No bound on the time is asserted."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + HANG_SECS
    while (got := await read(policies, agent)) != expected:
        if loop.time() > deadline:
            pytest.fail(f"still read {got} instead of {expected} after {HANG_SECS}s")
        await asyncio.sleep(0.005)


async def cached_hit(backend: RedisBackend, agent: AgentId, expected: PolicyDocument) -> None:
    """Read ``agent``'s policy until a read is a hit, and prove that hit sent nothing.

    A fill may be voided, or its entry dropped, by an invalidation that was still on
    its way for a change made before it: then the next read fills again.
    """
    policies = backend.policies()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + HANG_SECS
    while True:
        before = backend.stats()
        assert await policies.get_policy(agent) == expected
        after = backend.stats()
        if after.near_cache_hits > before.near_cache_hits:
            assert after.commands_sent == before.commands_sent
            return
        if loop.time() > deadline:
            pytest.fail(f"no read was a hit after {HANG_SECS}s")
        await asyncio.sleep(0.005)


def tracking_clients(server: Any) -> list[dict[str, Any]]:
    """The connections to ``server`` that have BCAST tracking on."""
    with server.client() as admin:
        return [info for info in admin.client_list() if "t" in info["flags"]]


def kill_tracking(server: Any) -> None:
    (tracking,) = tracking_clients(server)
    with server.client() as admin:
        admin.client_kill_filter(_id=tracking["id"])


@pytest_asyncio.fixture
async def backend(redis_server: RedisServer, redis_url: str, open_backend: OpenBackend) -> Any:
    """A backend with the near-cache on, on the emptied session server."""
    return open_backend(redis_url, **NEAR)


class TestConfig:
    def test_off_by_default_with_a_bounded_size(self) -> None:
        """The near-cache is opt-in; its size defaults to 10000 entries."""
        config = RedisStorageConfig()
        assert (config.near_cache, config.near_cache_size) == (False, 10_000)
        assert RedisBackend.connect(config).near_cache is None
        near = RedisBackend.connect(
            RedisStorageConfig(near_cache=True, near_cache_size=5)
        ).near_cache
        assert near is not None
        assert near.size == 5

    @pytest.mark.parametrize(
        ("settings", "problem"),
        [
            (
                {"near_cache_size": 0},
                "storage.redis.near_cache_size: must lie in [1, 10000000], got 0",
            ),
            (
                {"near_cache_size": 10_000_001},
                "storage.redis.near_cache_size: must lie in [1, 10000000], got 10000001",
            ),
            ({"near_cache_size": "big"}, "storage.redis.near_cache_size: expected int, got str"),
            ({"near_cache": "yes"}, "storage.redis.near_cache: expected bool, got str"),
        ],
    )
    def test_bad_values_name_their_field(self, settings: dict[str, Any], problem: str) -> None:
        """Each bad value is a ConfigError whose line names the field."""
        with pytest.raises(InvalidConfigError) as caught:
            load_config({"storage": {"backend": "redis", "redis": settings}})
        assert caught.value.problems == [problem]


class TestNearCacheUnit:
    """The in-process part alone, on a clock the test moves."""

    def make(self, size: int = 10) -> tuple[NearCache, list[float]]:
        now = [100.0]
        near = NearCache(size, clock=lambda: now[0])
        near.resume()
        return near, now

    def test_an_entry_lives_until_its_ttl_from_before_the_read(self) -> None:
        """The deadline counts from the clock taken before the read was sent."""
        near, now = self.make()
        agent = AgentId.new()
        fill = near.begin_fill(agent)
        assert fill is not None
        now[0] += 0.2  # the read took 200 ms
        assert near.finish_fill(fill, policy(1), 500)
        now[0] = 100.499
        assert near.lookup(agent) == policy(1)
        now[0] = 100.5
        assert near.lookup(agent) is None
        assert len(near) == 0

    @pytest.mark.parametrize("interrupt", ["invalidate", "forget", "flush", "suspend"])
    def test_an_invalidation_or_flush_during_the_read_voids_the_fill(self, interrupt: str) -> None:
        """A fill in flight when its key is invalidated, or the cache flushed or
        suspended, caches nothing; another key's fill survives an invalidation."""
        near, _ = self.make()
        agent, other = AgentId.new(), AgentId.new()
        fill, untouched = near.begin_fill(agent), near.begin_fill(other)
        assert fill is not None
        assert untouched is not None
        if interrupt == "invalidate":
            near.invalidate(agent.bytes)
        elif interrupt == "forget":
            near.forget(agent)
        elif interrupt == "flush":
            near.flush()
        else:
            near.suspend()
            near.resume()
        assert not near.finish_fill(fill, policy(1), -1)
        assert near.lookup(agent) is None
        survives = interrupt in ("invalidate", "forget")
        assert near.finish_fill(untouched, policy(2), -1) == survives

    def test_nothing_is_filled_or_served_while_tracking_is_down(self) -> None:
        """Suspended, every lookup misses and no fill begins; resumed, fills work again."""
        near, _ = self.make()
        agent = AgentId.new()
        fill = near.begin_fill(agent)
        assert fill is not None
        assert near.finish_fill(fill, policy(1), -1)
        near.suspend()
        assert near.lookup(agent) is None
        assert near.begin_fill(agent) is None
        near.resume()
        assert near.lookup(agent) is None  # the suspension flushed it

    def test_least_recently_used_entries_go_first(self) -> None:
        """Past ``size`` entries, the one least recently read or filled is dropped."""
        near, _ = self.make(size=2)
        agents = [AgentId.new() for _ in range(3)]
        for agent in agents[:2]:
            fill = near.begin_fill(agent)
            assert fill is not None
            near.finish_fill(fill, policy(1), -1)
        assert near.lookup(agents[0]) is not None  # now agents[1] is the oldest
        fill = near.begin_fill(agents[2])
        assert fill is not None
        near.finish_fill(fill, policy(1), -1)
        assert len(near) == 2
        assert near.lookup(agents[1]) is None
        assert near.lookup(agents[0]) is not None
        assert near.lookup(agents[2]) is not None


class NearCacheAgainstAServer(RuleBasedStateMachine):
    """The near-cache, driven through every interleaving of writes by other clients,
    the invalidations they push (in order, perhaps late), reads in flight, and losses
    of tracking. Whatever it serves is either the server's value, or one whose next
    change still has its invalidation on the way: staleness only ever lasts until a
    push arrives."""

    def __init__(self) -> None:
        super().__init__()
        self.near = NearCache(3)
        self.near.resume()
        self.agents = [AgentId.from_hex(f"{index:032x}") for index in range(1, 4)]
        self.server = dict.fromkeys(range(3), 1)
        self.pushes: list[tuple[int, int]] = []  # (agent, version written), oldest first
        self.reads: list[tuple[int, Fill, int | None]] = []  # agent, fill, version served

    @rule(agent=st.integers(0, 2))
    def another_client_writes(self, agent: int) -> None:
        self.server[agent] += 1
        if self.near.live:  # while tracking is lost, the server pushes to nobody
            self.pushes.append((agent, self.server[agent]))

    @precondition(lambda self: self.pushes)
    @rule()
    def a_push_arrives(self) -> None:
        agent, _ = self.pushes.pop(0)
        self.near.invalidate(self.agents[agent].bytes)

    @rule(agent=st.integers(0, 2))
    def a_read_is_sent(self, agent: int) -> None:
        fill = self.near.begin_fill(self.agents[agent])
        if fill is not None:
            self.reads.append((agent, fill, None))

    @precondition(lambda self: any(served is None for _, _, served in self.reads))
    @rule(data=st.data())
    def the_server_answers_a_read(self, data: st.DataObject) -> None:
        waiting = [index for index, read in enumerate(self.reads) if read[2] is None]
        index = data.draw(st.sampled_from(waiting))
        agent, fill, _ = self.reads[index]
        self.reads[index] = (agent, fill, self.server[agent])

    @precondition(lambda self: any(served is not None for _, _, served in self.reads))
    @rule(data=st.data())
    def a_reply_arrives(self, data: st.DataObject) -> None:
        answered = [index for index, read in enumerate(self.reads) if read[2] is not None]
        _, fill, served = self.reads.pop(data.draw(st.sampled_from(answered)))
        assert served is not None
        self.near.finish_fill(fill, policy(served), -1)

    @rule()
    def tracking_is_lost(self) -> None:
        self.near.suspend()
        self.pushes.clear()  # gone with the connection

    @precondition(lambda self: not self.near.live)
    @rule()
    def tracking_comes_back(self) -> None:
        self.near.resume()

    @invariant()
    def served_values_are_current_or_have_a_push_on_the_way(self) -> None:
        for agent, agent_id in enumerate(self.agents):
            cached = self.near.lookup(agent_id)
            if cached is not None and cached.version != self.server[agent]:
                assert (agent, cached.version + 1) in self.pushes, (cached, self.server)


class TestNearCacheModel(NearCacheAgainstAServer.TestCase):  # type: ignore[misc]
    settings = settings(max_examples=300, stateful_step_count=40, deadline=None)


@pytest.mark.asyncio
class TestStandalone:
    async def test_a_hit_does_no_io(self, backend: RedisBackend, redis_server: RedisServer) -> None:
        """Once filled, a read is answered in process: no command reaches the server."""
        await tracking_up(backend)
        agent = AgentId.new()
        await backend.policies().cache_policy(agent, policy(1), 600)
        assert await backend.policies().get_policy(agent) == policy(1)
        before_server = redis_server.commandstats()
        before = backend.stats()
        for _ in range(50):
            assert await backend.policies().get_policy(agent) == policy(1)
        after, after_server = backend.stats(), redis_server.commandstats()
        assert after.commands_sent == before.commands_sent
        assert after.near_cache_hits == before.near_cache_hits + 50
        sent = {
            command: after_server[command] - before_server.get(command, 0)
            for command in after_server
            if after_server[command] != before_server.get(command, 0)
        }
        # Only commandstats' own HELLO and INFO, and tracking's heartbeat if one fell due.
        assert set(sent) <= {"hello", "info", "ping"}

    async def test_off_every_read_goes_to_the_server(
        self, redis_url: str, open_backend: OpenBackend
    ) -> None:
        """Without near_cache, each read is a command, and the stats count no hits."""
        backend = open_backend(redis_url)
        agent = AgentId.new()
        await backend.policies().cache_policy(agent, policy(1), 600)
        before = backend.stats()
        for _ in range(3):
            assert await backend.policies().get_policy(agent) == policy(1)
        after = backend.stats()
        assert after.commands_sent == before.commands_sent + 3
        assert after.near_cache_hits == 0
        assert dict((await backend.describe()).facts)["near_cache"] == "off"

    @pytest.mark.parametrize(
        "change",
        [
            "raw SET in the Rust layout",
            "cache_policy",
            "invalidate",
            "raw DEL",
            "another process's cache_policy",
        ],
    )
    async def test_a_change_made_elsewhere_is_seen(
        self,
        change: str,
        backend: RedisBackend,
        redis_server: RedisServer,
        open_backend: OpenBackend,
    ) -> None:
        """A cached policy changed by another client is read anew once the server's
        invalidation arrives, however the change was made."""
        await tracking_up(backend)
        agent = AgentId.new()
        key = b"aa:policy:" + agent.hex.encode()
        with redis_server.client() as raw:
            raw.set(key, policy_to_json(policy(1)), ex=600)
            await cached_hit(backend, agent, policy(1))
            other = open_backend(redis_server.url).policies()
            expected: PolicyDocument | None = policy(2)
            if change == "raw SET in the Rust layout":
                raw.set(key, policy_to_json(policy(2)))
            elif change == "cache_policy":
                await other.cache_policy(agent, policy(2), 600)
            elif change == "invalidate":
                await other.invalidate(agent)
                expected = None
            elif change == "another process's cache_policy":
                await _in_another_process(_CACHE_VERSION_2, redis_server.url, agent.hex)
            else:
                raw.delete(key)
                expected = None
        await sees(backend.policies(), agent, expected)

    @pytest.mark.parametrize("pushes", ["heard", "ignored"])
    async def test_own_writes_take_effect_at_once(
        self, backend: RedisBackend, monkeypatch: pytest.MonkeyPatch, pushes: str
    ) -> None:
        """cache_policy and invalidate through this backend are seen by its very next read,
        even with the server's invalidations ignored: the store drops its entry itself.
        (Heard, the pushes usually arrive first and would hide a missing drop.)"""
        if pushes == "ignored":
            tracker = backend._tracker
            assert tracker is not None
            monkeypatch.setattr(tracker, "_invalidated", lambda keys: None)
        await tracking_up(backend)
        policies, agent = backend.policies(), AgentId.new()
        await policies.cache_policy(agent, policy(1), 600)
        await cached_hit(backend, agent, policy(1))
        await policies.cache_policy(agent, policy(2), 600)
        assert await policies.get_policy(agent) == policy(2)
        await cached_hit(backend, agent, policy(2))
        await policies.invalidate(agent)
        with pytest.raises(NotFoundError):
            await policies.get_policy(agent)

    async def test_a_flushdb_flushes(
        self, backend: RedisBackend, redis_server: RedisServer
    ) -> None:
        """FLUSHALL (an invalidation of every key) empties the near-cache."""
        near = await tracking_up(backend)
        agent = AgentId.new()
        await backend.policies().cache_policy(agent, policy(1), 600)
        await cached_hit(backend, agent, policy(1))
        flushes = near.flushes
        redis_server.flushall()
        await eventually(lambda: near.flushes > flushes, "FLUSHALL flushed the near-cache")
        assert len(near) == 0
        with pytest.raises(NotFoundError):
            await backend.policies().get_policy(agent)

    async def test_a_killed_tracking_connection_flushes_and_comes_back(
        self, backend: RedisBackend, redis_server: RedisServer
    ) -> None:
        """CLIENT KILL of the tracking connection flushes the near-cache at once, reads
        stay correct while tracking is down, and tracking comes back by itself."""
        near = await tracking_up(backend)
        policies, agent = backend.policies(), AgentId.new()
        await policies.cache_policy(agent, policy(1), 600)
        await cached_hit(backend, agent, policy(1))
        flushes = near.flushes
        kill_tracking(redis_server)
        await eventually(lambda: near.flushes > flushes, "the lost connection flushed")
        assert len(near) == 0
        with redis_server.client() as raw:
            raw.set(b"aa:policy:" + agent.hex.encode(), policy_to_json(policy(2)))
        assert await policies.get_policy(agent) == policy(2)
        await eventually(lambda: near.live, "tracking is back")
        assert len(tracking_clients(redis_server)) == 1
        await cached_hit(backend, agent, policy(2))
        assert "tracking up on 1 primary" in dict((await backend.describe()).facts)["near_cache"]

    async def test_a_silent_network_flushes(
        self, redis_server: RedisServer, redis_url: str, fault_proxy: FaultProxyFactory
    ) -> None:
        """A tracking connection that stops carrying anything, with no reset (a partition),
        is found out by its heartbeat within socket_timeout: flushed, then back once the
        network is."""
        proxy = fault_proxy(redis_server.port)
        backend = RedisBackend.connect(
            RedisStorageConfig(url=proxy.url, **NEAR, socket_timeout=0.5)
        )
        try:
            near = await tracking_up(backend)
            agent = AgentId.new()
            await backend.policies().cache_policy(agent, policy(1), 600)
            await cached_hit(backend, agent, policy(1))
            flushes = near.flushes
            proxy.blackhole()
            await eventually(lambda: near.flushes > flushes, "the heartbeat found it out")
            assert not near.live
            assert "no PING reply" in backend.near_cache_state()
            proxy.passthrough()
            await eventually(lambda: near.live, "tracking is back")
            await cached_hit(backend, agent, policy(1))
        finally:
            await backend.aclose()

    async def test_a_server_restart_flushes_and_reads_stay_correct(
        self, fresh_redis_server: RedisServer, open_backend: OpenBackend
    ) -> None:
        """A restarted server (its data gone) is never answered for from the near-cache."""
        backend = open_backend(fresh_redis_server.url, **NEAR)
        near = await tracking_up(backend)
        policies, agent = backend.policies(), AgentId.new()
        await policies.cache_policy(agent, policy(1), 600)
        await cached_hit(backend, agent, policy(1))
        fresh_redis_server.restart()
        await sees(policies, agent, None)
        await eventually(lambda: near.live, "tracking is back after the restart")
        await policies.cache_policy(agent, policy(2), 600)
        await cached_hit(backend, agent, policy(2))

    async def test_an_invalidation_during_the_read_voids_the_fill(
        self, redis_server: RedisServer, redis_url: str, fault_proxy: FaultProxyFactory
    ) -> None:
        """A read whose reply is held while another client changes the key returns the
        old value, but does not cache it: the invalidation arrived while it was in flight."""
        proxy = fault_proxy(redis_server.port)
        backend = RedisBackend.connect(RedisStorageConfig(url=proxy.url, **PATIENT, **NEAR))
        # The data connections go through the proxy, tracking straight to the server, so
        # the reply can be held while the invalidation comes through.
        backend._tracker._connect = lambda _: Connection(  # type: ignore[union-attr]
            host=redis_server.host, port=redis_server.port, protocol=3
        )
        try:
            near = await tracking_up(backend)
            agent = AgentId.new()
            with redis_server.client() as raw:
                key = b"aa:policy:" + agent.hex.encode()
                raw.set(key, policy_to_json(policy(1)), ex=600)
                scripts = _script_calls(redis_server)
                proxy.latency(5.0)
                racing = asyncio.ensure_future(backend.policies().get_policy(agent))
                await eventually(
                    lambda: _script_calls(redis_server) > scripts, "the read reached the server"
                )
                raw.set(key, policy_to_json(policy(2)), ex=600)
                assert await asyncio.wait_for(racing, HANG_SECS) == policy(1)
            assert len(near) == 0
            proxy.passthrough()
            assert await backend.policies().get_policy(agent) == policy(2)
        finally:
            await backend.aclose()

    async def test_an_entry_never_outlives_its_redis_ttl(
        self, debug_redis_server: RedisServer, open_backend: OpenBackend
    ) -> None:
        """With the server's active expiry off (no invalidation when the key expires), the
        entry still ends with the key's TTL, counted by the local clock."""
        backend = open_backend(debug_redis_server.url, **NEAR)
        await tracking_up(backend)
        agent = AgentId.new()
        with debug_redis_server.client() as raw:
            raw.execute_command("DEBUG", "SET-ACTIVE-EXPIRE", "0")
            try:
                raw.set(b"aa:policy:" + agent.hex.encode(), policy_to_json(policy(1)), px=300)
                await cached_hit(backend, agent, policy(1))
                await asyncio.sleep(0.4)  # the key's 300 ms run out
                with pytest.raises(NotFoundError):
                    await backend.policies().get_policy(agent)
            finally:
                raw.execute_command("DEBUG", "SET-ACTIVE-EXPIRE", "1")

    @pytest.mark.parametrize(
        ("plant", "message"),
        [("json", "policy"), ("hash", "wrong type")],
        ids=["corrupt-json", "a-hash"],
    )
    async def test_a_bad_stored_value_is_an_error_and_never_cached(
        self, plant: str, message: str, backend: RedisBackend, redis_server: RedisServer
    ) -> None:
        """A miss that reads a value that is no policy (bad JSON, a hash) raises
        SerializationError, each time, and caches nothing."""
        near = await tracking_up(backend)
        agent = AgentId.new()
        key = b"aa:policy:" + agent.hex.encode()
        with redis_server.client() as raw:
            if plant == "json":
                raw.set(key, b"{bad")
            else:
                raw.hset(key, b"f", b"v")
        for _ in range(2):
            with pytest.raises(SerializationError, match=message):
                await backend.policies().get_policy(agent)
        assert len(near) == 0

    async def test_a_key_without_expiry_stays_until_invalidated(
        self, backend: RedisBackend, redis_server: RedisServer
    ) -> None:
        """A policy written with no TTL (a plain SET) is served until it changes."""
        await tracking_up(backend)
        agent = AgentId.new()
        with redis_server.client() as raw:
            raw.set(b"aa:policy:" + agent.hex.encode(), policy_to_json(policy(1)))
        await cached_hit(backend, agent, policy(1))

    async def test_the_size_bounds_the_entries(
        self, redis_url: str, open_backend: OpenBackend
    ) -> None:
        """With near_cache_size = 3, five policies read leave the three last read
        cached; the oldest costs a round trip again."""
        backend = open_backend(redis_url, near_cache=True, near_cache_size=3)
        near = await tracking_up(backend)
        policies = backend.policies()
        agents = [AgentId.new() for _ in range(5)]
        for agent in agents:
            await policies.cache_policy(agent, policy(1), 600)
            await policies.get_policy(agent)
        assert len(near) == 3
        for agent in agents[2:]:
            await cached_hit(backend, agent, policy(1))
        before = backend.stats()
        await policies.get_policy(agents[0])
        assert backend.stats().commands_sent == before.commands_sent + 1
        facts = dict((await backend.describe()).facts)
        assert facts["near_cache"] == "on, tracking up on 1 primary, 3 of 3 entries"

    async def test_aclose_stops_tracking(
        self, redis_server: RedisServer, redis_url: str, open_backend: OpenBackend
    ) -> None:
        """Once aclose() returns, the tracking connection is gone from the server."""
        backend = open_backend(redis_url, **NEAR)
        await tracking_up(backend)
        assert len(tracking_clients(redis_server)) == 1
        await backend.aclose()
        await eventually(lambda: not tracking_clients(redis_server), "tracking closed")
        assert near_of(backend).lookup(AgentId.new()) is None


# Run by another Python process: cache version 2 of the test's policy for the agent.
_CACHE_VERSION_2 = """
import asyncio, sys
from aa_storage import AgentId, PolicyDecision, PolicyDocument, PolicyRule
from aa_storage_redis import RedisBackend, RedisStorageConfig

async def main():
    backend = RedisBackend.connect(RedisStorageConfig(url=sys.argv[1]))
    policy = PolicyDocument(2, "v2", [PolicyRule("tool:*", PolicyDecision.ALLOW)])
    await backend.policies().cache_policy(AgentId.from_hex(sys.argv[2]), policy, 600)
    await backend.aclose()

asyncio.run(main())
"""


async def _in_another_process(script: str, *args: str) -> None:
    process = await asyncio.create_subprocess_exec(sys.executable, "-c", script, *args)
    assert await asyncio.wait_for(process.wait(), HANG_SECS) == 0


def _script_calls(server: RedisServer) -> int:
    calls = server.commandstats()
    return calls.get("evalsha", 0) + calls.get("eval", 0)


@pytest.fixture(scope="module")
def debug_redis_server() -> Iterator[RedisServer]:
    """A redis-server that takes DEBUG from loopback, to turn its active expiry off."""
    server = RedisServer(extra_args=["--enable-debug-command", "local"])
    server.start()
    yield server
    server.close()


# The near-cache changes only the policy store, so its suites inherit only the policy
# contracts; sessions and counters run with the same servers in the other contract suites.


class TestNearCacheContract(PolicyContract, ReadThroughContract):
    """The policy contract holds with the near-cache on."""

    @pytest_asyncio.fixture
    async def backend(
        self, redis_server: RedisServer, redis_url: str
    ) -> AsyncIterator[RedisBackend]:
        async with tracked(RedisBackend.connect(redis_server.backend_config(**NEAR))) as backend:
            yield backend


class TestValkeyNearCacheContract(PolicyContract, ReadThroughContract):
    """The policy contract holds on valkey-server with the near-cache on."""

    @pytest_asyncio.fixture
    async def backend(self, valkey_server: RedisServer) -> AsyncIterator[RedisBackend]:
        valkey_server.flushall()
        async with tracked(RedisBackend.connect(valkey_server.backend_config(**NEAR))) as backend:
            yield backend


# A user of its own, so that the session server's other users stay as other tests
# expect them.
NEAR_USER = "aa-near-cache"


def _set_user(server: RedisServer, rule: list[str]) -> str:
    """``NEAR_USER`` with ``rule`` (the README's, after its user name); its URL."""
    with server.client() as admin:
        admin.execute_command("ACL", "SETUSER", NEAR_USER, "reset", *rule)
    return server.url_for(user=NEAR_USER, password="CHANGE-ME")


class TestNearCacheUnderTheReadmeRule(PolicyContract, ReadThroughContract):
    """The policy contract holds with the near-cache on, as a user with exactly the
    README's ACL rule."""

    @pytest_asyncio.fixture
    async def backend(self, acl_redis_server: RedisServer) -> AsyncIterator[RedisBackend]:
        acl_redis_server.flushall()
        url = _set_user(acl_redis_server, readme_acl_rule())
        config = acl_redis_server.backend_config(url=url, **NEAR)
        async with tracked(RedisBackend.connect(config)) as backend:
            yield backend
        acl_redis_server.flushall()


@pytest.fixture
def acl_server(acl_redis_server: RedisServer) -> Iterator[RedisServer]:
    """The session ACL server, emptied after the test, as other tests expect it."""
    yield acl_redis_server
    acl_redis_server.flushall()


@pytest.mark.asyncio
class TestAcl:
    async def test_the_readme_rule_lets_tracking_up(
        self, acl_server: RedisServer, open_backend: OpenBackend
    ) -> None:
        """As the README's user, tracking comes up and reads are hits."""
        backend = open_backend(_set_user(acl_server, readme_acl_rule()), **NEAR)
        await tracking_up(backend)
        agent = AgentId.new()
        await backend.policies().cache_policy(agent, policy(1), 600)
        await cached_hit(backend, agent, policy(1))

    @pytest.mark.parametrize("command", ACL_COMMANDS)
    async def test_each_command_of_the_rule_is_needed(
        self, command: str, acl_server: RedisServer, open_backend: OpenBackend
    ) -> None:
        """Without any one of the near-cache's commands, tracking stays down, saying the
        permission was denied, and reads still go to the server."""
        rule = [part for part in readme_acl_rule() if part != f"+{command}"]
        assert len(rule) == len(readme_acl_rule()) - 1
        backend = open_backend(_set_user(acl_server, rule), **NEAR)
        agent = AgentId.new()
        await backend.policies().cache_policy(agent, policy(1), 600)
        assert await backend.policies().get_policy(agent) == policy(1)
        await eventually(lambda: "permission" in backend.near_cache_state(), "tracking is refused")
        assert not near_of(backend).live
        before = backend.stats()
        assert await backend.policies().get_policy(agent) == policy(1)
        assert backend.stats().commands_sent == before.commands_sent + 1


# --- cluster and sentinel ---


# Near-cache on, and patient enough to wait out failovers and slot moves.
TOPOLOGY = {**PATIENT, "retries": 10, **NEAR}


def topology_backend(url: str) -> RedisBackend:
    return RedisBackend.connect(RedisStorageConfig(url=url, **TOPOLOGY))


@pytest.fixture
def open_topology(open_backend: OpenBackend) -> OpenBackend:
    """``open_topology(url)``: a ``topology_backend``, closed after the test."""
    return lambda url: open_backend(url, **TOPOLOGY)


def spread_agents(count: int) -> list[AgentId]:
    """``count`` agents, whose policy keys fall in slots all over the cluster."""
    return [AgentId.from_hex(f"{index:032x}") for index in range(1, count + 1)]


class TestClusterNearCacheContract(PolicyContract, ReadThroughContract):
    """The policy contract holds on a cluster with the near-cache on."""

    @pytest_asyncio.fixture
    async def backend(self, redis_cluster: LocalCluster) -> AsyncIterator[RedisBackend]:
        redis_cluster.flushall()
        async with tracked(topology_backend(redis_cluster.url)) as backend:
            yield backend


class TestSentinelNearCacheContract(PolicyContract, ReadThroughContract):
    """The policy contract holds behind sentinels with the near-cache on."""

    @pytest_asyncio.fixture
    async def backend(self, sentinel_set: SentinelSet) -> AsyncIterator[RedisBackend]:
        sentinel_set.flushall()
        async with tracked(topology_backend(sentinel_set.url)) as backend:
            yield backend


@pytest.fixture(scope="module")
def readme_rule_cluster() -> Iterator[LocalCluster]:
    """A cluster whose nodes have the README's cluster driver user."""
    with LocalCluster("redis-server", acl_users=[readme_cluster_acl_rule()]) as cluster:
        yield cluster


class TestClusterNearCacheUnderTheReadmeRule(PolicyContract, ReadThroughContract):
    """The policy contract holds on a cluster with the near-cache on, as a user with
    exactly the README's cluster rule."""

    @pytest_asyncio.fixture
    async def backend(self, readme_rule_cluster: LocalCluster) -> AsyncIterator[RedisBackend]:
        readme_rule_cluster.flushall()
        url = readme_rule_cluster.url_for(user="aa-driver-cluster", password=CLUSTER_USER_PASSWORD)
        async with tracked(topology_backend(url)) as backend:
            yield backend


@pytest.mark.asyncio
class TestCluster:
    async def test_every_primary_is_tracked_and_changes_are_seen(
        self, redis_cluster: LocalCluster, open_topology: OpenBackend
    ) -> None:
        """One tracking connection per primary; a change made by another client to a key
        on any primary reaches the near-cache."""
        redis_cluster.flushall()
        backend, other = open_topology(redis_cluster.url), open_topology(redis_cluster.url)
        await tracking_up(backend)
        for primary in redis_cluster.primaries():
            assert len(tracking_clients(primary)) == 1, primary
        assert "up on 3 primaries" in backend.near_cache_state()
        agents = spread_agents(12)
        for agent in agents:
            await other.policies().cache_policy(agent, policy(1), 600)
            await cached_hit(backend, agent, policy(1))
        for agent in agents:
            await other.policies().cache_policy(agent, policy(2), 600)
        for agent in agents:
            await sees(backend.policies(), agent, policy(2))

    async def test_a_killed_tracking_connection_flushes_and_comes_back(
        self, redis_cluster: LocalCluster, open_topology: OpenBackend
    ) -> None:
        """CLIENT KILL of one primary's tracking connection flushes everything; tracking
        comes back on that primary."""
        redis_cluster.flushall()
        backend = open_topology(redis_cluster.url)
        near = await tracking_up(backend)
        agent = AgentId.new()
        await backend.policies().cache_policy(agent, policy(1), 600)
        await cached_hit(backend, agent, policy(1))
        flushes = near.flushes
        victim = redis_cluster.primaries()[1]
        kill_tracking(victim)
        await eventually(lambda: near.flushes > flushes, "the lost connection flushed")
        await eventually(lambda: near.live, "tracking is back")
        assert len(tracking_clients(victim)) == 1
        await cached_hit(backend, agent, policy(1))

    async def test_a_failover_flushes_and_changes_after_it_are_seen(
        self, fresh_redis_cluster: LocalCluster, open_topology: OpenBackend
    ) -> None:
        """After CLUSTER FAILOVER, writes to the new primary reach the near-cache, and
        tracking ends up on the new set of primaries."""
        cluster = fresh_redis_cluster
        backend, other = open_topology(cluster.url), open_topology(cluster.url)
        near = await tracking_up(backend)
        agents = spread_agents(12)
        for agent in agents:
            await other.policies().cache_policy(agent, policy(1), 600)
            await cached_hit(backend, agent, policy(1))
        cluster.manual_failover(cluster.replica_of(cluster.primaries()[0]))
        for agent in agents:
            await other.policies().cache_policy(agent, policy(2), 600)
        for agent in agents:
            await sees(backend.policies(), agent, policy(2))
        await eventually(lambda: near.live, "tracking is up again")
        await eventually(
            lambda: all(len(tracking_clients(node)) == 1 for node in cluster.primaries()),
            "every new primary is tracked",
        )


@pytest.mark.asyncio
class TestSentinel:
    async def test_the_primary_is_tracked_and_changes_are_seen(
        self, sentinel_set: SentinelSet, open_topology: OpenBackend
    ) -> None:
        """Tracking runs on the primary the sentinels name; changes there are seen."""
        sentinel_set.flushall()
        backend, other = open_topology(sentinel_set.url), open_topology(sentinel_set.url)
        await tracking_up(backend)
        assert len(tracking_clients(sentinel_set.current_primary())) == 1
        agent = AgentId.new()
        await other.policies().cache_policy(agent, policy(1), 600)
        await cached_hit(backend, agent, policy(1))
        await other.policies().invalidate(agent)
        await sees(backend.policies(), agent, None)

    async def test_a_failover_flushes_and_tracking_follows_the_new_primary(
        self, fresh_sentinel_set: SentinelSet, open_topology: OpenBackend
    ) -> None:
        """SENTINEL FAILOVER flushes the near-cache; tracking comes back on the new
        primary, and changes made there are seen."""
        sentinels = fresh_sentinel_set
        backend, other = open_topology(sentinels.url), open_topology(sentinels.url)
        near = await tracking_up(backend)
        agent = AgentId.new()
        await other.policies().cache_policy(agent, policy(1), 600)
        await cached_hit(backend, agent, policy(1))
        flushes = near.flushes
        new_primary = sentinels.failover()
        await eventually(lambda: near.flushes > flushes, "the failover flushed")
        await other.policies().cache_policy(agent, policy(2), 600)
        await sees(backend.policies(), agent, policy(2))
        await eventually(lambda: near.live, "tracking is back")
        await eventually(
            lambda: len(tracking_clients(new_primary)) == 1, "the new primary is tracked"
        )
        await cached_hit(backend, agent, policy(2))

    async def test_a_refused_login_is_shown_without_the_password(
        self, acl_server: RedisServer, open_backend: OpenBackend, caplog: Any
    ) -> None:
        """Tracking that cannot log in says so, in check and in the log, never showing
        the password."""
        _set_user(acl_server, readme_acl_rule())
        secret = "pa55-near-never-shown"
        backend = open_backend(acl_server.url_for(NEAR_USER, secret), **NEAR)
        with pytest.raises(StorageError):
            await backend.policies().get_policy(AgentId.new())
        await eventually(
            lambda: "refused the login" in backend.near_cache_state(), "tracking refused"
        )
        assert secret not in backend.near_cache_state()
        assert secret not in caplog.text
        assert "near-cache bypassed" in caplog.text

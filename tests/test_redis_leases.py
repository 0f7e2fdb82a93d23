"""get_or_load on Redis: one load per agent across processes, its write-back fenced by a lease.

Two backends stand for two processes (each has its own in-process single flight); the
stampede and the crashed loader use real processes.
"""

from __future__ import annotations

import asyncio
import json
import sys
import textwrap
from asyncio.subprocess import PIPE

import attrs
import pytest
import redis
from redis.cluster import key_slot

from aa_storage import (
    AgentId,
    NotFoundError,
    PolicyDecision,
    PolicyDocument,
    PolicyRule,
    policy_from_json,
    policy_to_json,
)
from aa_storage.readthrough import Flight
from aa_storage.testing import ScriptedLoader, bounded
from aa_storage_redis import RedisBackend
from aa_storage_redis.bench.stampede import stampede
from aa_storage_redis.keys import KeySpace
from cluster import LocalCluster
from executor_support import OpenBackend
from faultproxy import FaultProxyFactory
from servers import RedisServer
from waiting import eventually

OLD = PolicyDocument(1, "old", [PolicyRule("tool:*", PolicyDecision.ALLOW)])
NEW = PolicyDocument(2, "new", [PolicyRule("tool:*", PolicyDecision.DENY)])
KEYS = KeySpace()
# What RedisServer.commandstats() itself sends: a new connection's HELLO, and INFO.
HELPER_COMMANDS = {"hello", "info"}
# Long enough that no lease runs out in a test that does not wait for one to.
PATIENT_LEASE = {"lease_ttl": 30.0, "lease_wait": 30.0}


def gated(outcome: object) -> ScriptedLoader:
    return ScriptedLoader([outcome], gate=asyncio.Event())


async def polling(backend: RedisBackend) -> None:
    """Return once ``backend`` has sent a get_or_load's GET and two lease polls: it has
    found the lease held and is waiting for the load."""
    before = backend.stats().commands_sent
    await eventually(lambda: backend.stats().commands_sent >= before + 3, "a second poll")


async def led_here(
    backend: RedisBackend, loader: ScriptedLoader
) -> tuple[AgentId, asyncio.Future[PolicyDocument]]:
    """A get_or_load of a new agent on ``backend``, returned once its (gated) loader runs."""
    agent = AgentId.new()
    led = asyncio.ensure_future(backend.policies().get_or_load(agent, loader, 60))
    await bounded(loader.entered.wait())
    return agent, led


async def a_load_invalidated_midway(backend: RedisBackend, agent: AgentId) -> None:
    """A get_or_load whose loader (returning OLD) an invalidate overtakes: its caller gets
    OLD, and the cache is left empty."""
    loader = gated(OLD)
    call = asyncio.ensure_future(backend.policies().get_or_load(agent, loader, 60))
    await bounded(loader.entered.wait())
    await backend.policies().invalidate(agent)
    loader.release()
    assert await bounded(call) == OLD
    with pytest.raises(NotFoundError):
        await backend.policies().get_policy(agent)


@attrs.frozen
class WaitedOnLoad:
    """A load whose loader failed while a caller in another process waited on its lease."""

    led: asyncio.Future[PolicyDocument]
    waited: asyncio.Future[PolicyDocument]
    waiter_loader: ScriptedLoader
    waiting: RedisBackend
    agent: AgentId


async def a_failed_load_waited_on_elsewhere(
    redis_url: str, open_backend: OpenBackend, failure: Exception
) -> WaitedOnLoad:
    """Lead a load on one backend, have another backend's get_or_load wait on its lease
    (its own loader would return NEW), then let the leader's loader raise ``failure``."""
    leading = open_backend(redis_url, **PATIENT_LEASE)
    waiting = open_backend(redis_url, **PATIENT_LEASE)
    leader_loader = gated(failure)
    agent, led = await led_here(leading, leader_loader)
    waiter_loader = ScriptedLoader([NEW])
    waited = asyncio.ensure_future(waiting.policies().get_or_load(agent, waiter_loader, 60))
    await polling(waiting)
    leader_loader.release()
    return WaitedOnLoad(led, waited, waiter_loader, waiting, agent)


class TestStampede:
    def test_100_callers_in_4_processes_run_the_loader_once(
        self, redis_server: RedisServer, redis_url: str
    ) -> None:
        """100 concurrent callers spread over 4 spawned processes miss one cold key: the
        loader runs once, every caller gets its policy, and no key is left behind."""
        result = stampede(redis_server.backend_config(), processes=4, callers=100)
        assert (result.loader_runs, result.right_answers) == (1, 100)
        with redis_server.client() as admin:
            assert admin.dbsize() == 0


@pytest.mark.asyncio
class TestCrashedLoader:
    async def test_a_killed_leader_holds_the_others_up_until_its_lease_expires(
        self, redis_server: RedisServer, raw: redis.Redis, open_backend: OpenBackend
    ) -> None:
        """A process killed while it holds the lease: the next caller waits the lease
        out, then loads under a new, larger token, and caches its policy."""
        agent = AgentId.new()
        config = redis_server.backend_config(lease_ttl=1.0)
        script = textwrap.dedent(
            """
            import asyncio, json, sys
            from aa_storage import AgentId
            from aa_storage_redis import RedisBackend, RedisStorageConfig

            async def main():
                backend = RedisBackend.connect(RedisStorageConfig(**json.loads(sys.argv[1])))

                async def hang(agent_id):
                    print("loading", flush=True)
                    await asyncio.Event().wait()

                await backend.policies().get_or_load(AgentId.from_hex(sys.argv[2]), hang, 60)

            asyncio.run(main())
            """
        )
        settings = json.dumps(attrs.asdict(config))
        leader = await asyncio.create_subprocess_exec(
            sys.executable, "-c", script, settings, agent.hex, stdout=PIPE
        )
        assert leader.stdout is not None
        assert await bounded(leader.stdout.readline()) == b"loading\n"
        crashed = raw.get(KEYS.policy_lease(agent))
        assert crashed is not None
        assert crashed.startswith(b"+")
        leader.kill()
        await bounded(leader.wait())

        leases_seen: list[bytes | None] = []

        async def loader(agent_id: AgentId) -> PolicyDocument:
            leases_seen.append(raw.get(KEYS.policy_lease(agent)))
            return NEW

        backend = open_backend(config.url, lease_ttl=1.0, lease_wait=10.0)
        assert await bounded(backend.policies().get_or_load(agent, loader, 60)) == NEW
        [lease] = leases_seen
        assert lease is not None
        assert lease.startswith(b"+")
        assert int(lease[1:]) > int(crashed[1:])
        assert await backend.policies().get_policy(agent) == NEW

    async def test_a_hung_loader_holds_the_others_up_until_its_lease_expires(
        self, redis_url: str, open_backend: OpenBackend
    ) -> None:
        """A loader that hangs past lease_ttl: another process loads and caches its policy,
        and the hung load's late write-back is refused."""
        hung_side = open_backend(redis_url, lease_ttl=0.5)
        other_side = open_backend(redis_url, lease_ttl=0.5, lease_wait=10.0)
        agent, hung, fresh = AgentId.new(), gated(OLD), ScriptedLoader([NEW])
        late = asyncio.ensure_future(hung_side.policies().get_or_load(agent, hung, 60))
        await bounded(hung.entered.wait())
        assert await bounded(other_side.policies().get_or_load(agent, fresh, 60)) == NEW
        assert fresh.runs == 1
        hung.release()
        assert await bounded(late) == OLD
        assert await other_side.policies().get_policy(agent) == NEW


async def waiting_here(
    backend: RedisBackend, agent: AgentId, loader: ScriptedLoader, count: int
) -> list[asyncio.Future[PolicyDocument]]:
    """``count`` get_or_load calls on ``backend`` while its own leader's loader runs, returned
    once every GET they sent has its reply (a miss): each then waits on that leader's flight."""
    before = backend.stats().commands_sent
    calls = [
        asyncio.ensure_future(backend.policies().get_or_load(agent, loader, 60))
        for _ in range(count)
    ]

    def answered() -> bool:
        stats = backend.stats()
        return stats.commands_sent >= before + count and stats.pending == 0

    await eventually(answered, "every caller's GET answered")
    return calls


@pytest.mark.asyncio
class TestOneProcess:
    """Callers that wait on a load run in their own process are held up no longer than
    callers in other processes: lease_ttl for the load, lease_wait in all."""

    async def test_a_hung_loader_holds_callers_here_until_its_lease_runs_out(
        self, redis_url: str, open_backend: OpenBackend
    ) -> None:
        """When the load under way here hangs past lease_ttl, one of the callers waiting on
        it loads again, and the others get that load's policy: one more load, not one each."""
        backend = open_backend(redis_url, lease_ttl=1.0, lease_wait=30.0)
        hung, fresh = gated(OLD), ScriptedLoader([NEW])
        agent, led = await led_here(backend, hung)
        waiters = await waiting_here(backend, agent, fresh, 9)
        assert await bounded(asyncio.gather(*waiters)) == [NEW] * 9
        assert fresh.runs == 1
        hung.release()
        assert await bounded(led) == OLD
        assert await backend.policies().get_policy(agent) == NEW

    async def test_past_lease_wait_a_caller_here_loads_for_itself(
        self, redis_url: str, open_backend: OpenBackend
    ) -> None:
        """A caller that waits out lease_wait on a load run here runs its own loader and
        caches nothing, as a caller in another process would; the load's write-back lands."""
        backend = open_backend(redis_url, lease_ttl=30.0, lease_wait=0.2)
        hung, own = gated(OLD), ScriptedLoader([NEW])
        agent, led = await led_here(backend, hung)
        assert await bounded(backend.policies().get_or_load(agent, own, 60)) == NEW
        assert own.runs == 1
        with pytest.raises(NotFoundError):
            await backend.policies().get_policy(agent)
        hung.release()
        assert await bounded(led) == OLD
        assert await backend.policies().get_policy(agent) == OLD

    async def test_after_a_failed_load_one_caller_here_loads_again(
        self, redis_url: str, open_backend: OpenBackend
    ) -> None:
        """The leader's loader raises: its caller gets the error, and of the nine callers
        that waited on it, one loads again and all get that policy."""
        backend = open_backend(redis_url, **PATIENT_LEASE)
        failing, fresh = gated(RuntimeError("upstream")), ScriptedLoader([NEW])
        agent, led = await led_here(backend, failing)
        waiters = await waiting_here(backend, agent, fresh, 9)
        failing.release()
        with pytest.raises(RuntimeError, match="upstream"):
            await bounded(led)
        assert await bounded(asyncio.gather(*waiters)) == [NEW] * 9
        assert fresh.runs == 1


@pytest.mark.asyncio
class TestLostReplies:
    async def test_a_retried_lease_request_waits_on_its_own_lease_and_caches_nothing(
        self,
        redis_server: RedisServer,
        redis_url: str,
        raw: redis.Redis,
        fault_proxy: FaultProxyFactory,
        open_backend: OpenBackend,
    ) -> None:
        """As the README says: when the reply that issued a lease is lost, the retry finds
        that lease held, so the caller waits out lease_wait, loads for itself and caches
        nothing; the orphaned lease is left to expire."""
        proxy = fault_proxy(redis_server.port)
        backend = open_backend(proxy.url, lease_ttl=30.0, lease_wait=0.2)
        leases, agent, loader = backend.policies().leases, AgentId.new(), ScriptedLoader([OLD])
        loop = asyncio.get_running_loop()
        warm, warm_agent = Flight(loop.create_future()), AgentId.new()
        await leases.read_through(warm_agent, ScriptedLoader([OLD]), 60, warm, loop.time() + 0.2)
        accepted = proxy.connections_accepted
        proxy.drop_mid_reply()
        flight = Flight(loop.create_future())
        assert (
            await bounded(leases.read_through(agent, loader, 60, flight, loop.time() + 0.2)) == OLD
        )
        assert proxy.connections_accepted == accepted + 1
        assert loader.runs == 1
        assert raw.get(KEYS.policy(agent)) is None
        orphan = raw.get(KEYS.policy_lease(agent))
        assert orphan is not None
        assert orphan.startswith(b"+")


@pytest.mark.asyncio
class TestFencing:
    @pytest.mark.parametrize("overtake", ["invalidate", "cache_policy"])
    async def test_another_process_overtaking_a_load_keeps_it_out(
        self, redis_url: str, open_backend: OpenBackend, overtake: str
    ) -> None:
        """An invalidate or cache_policy from another process while a load runs: the
        load's caller gets its policy, but the cache holds nothing, or the newer policy."""
        loading, other = open_backend(redis_url), open_backend(redis_url)
        agent, loader = AgentId.new(), gated(OLD)
        call = asyncio.ensure_future(loading.policies().get_or_load(agent, loader, 60))
        await bounded(loader.entered.wait())
        if overtake == "invalidate":
            await other.policies().invalidate(agent)
        else:
            await other.policies().cache_policy(agent, NEW, 60)
        loader.release()
        assert await bounded(call) == OLD
        if overtake == "invalidate":
            with pytest.raises(NotFoundError):
                await other.policies().get_policy(agent)
        else:
            assert await other.policies().get_policy(agent) == NEW

    async def test_callers_here_that_waited_on_an_overtaken_load_load_again(
        self, redis_url: str, open_backend: OpenBackend
    ) -> None:
        """When another process's invalidate overtakes a load, only the caller who ran it
        gets its policy: the callers in its process that waited on it load afresh."""
        loading, other = open_backend(redis_url), open_backend(redis_url)
        loader = ScriptedLoader([OLD, NEW], asyncio.Event())
        agent, led = await led_here(loading, loader)
        waiters = await waiting_here(loading, agent, loader, 2)
        await other.policies().invalidate(agent)
        loader.release()
        assert sorted(p.name for p in await bounded(asyncio.gather(led, *waiters))) == [
            "new",
            "new",
            "old",
        ]
        assert loader.runs == 2
        assert await other.policies().get_policy(agent) == NEW

    async def test_a_load_overtaken_by_cache_policy_stays_out_once_that_policy_goes(
        self, redis_url: str, open_backend: OpenBackend, raw: redis.Redis
    ) -> None:
        """cache_policy kills the lease of a load under way: when the policy it cached is
        gone again (expired, or a plain DEL), the older load still does not write back."""
        loading, other = open_backend(redis_url), open_backend(redis_url)
        agent, loader = AgentId.new(), gated(OLD)
        call = asyncio.ensure_future(loading.policies().get_or_load(agent, loader, 60))
        await bounded(loader.entered.wait())
        await other.policies().cache_policy(agent, NEW, 60)
        raw.delete(KEYS.policy(agent))
        loader.release()
        assert await bounded(call) == OLD
        with pytest.raises(NotFoundError):
            await other.policies().get_policy(agent)

    async def test_waiters_elsewhere_get_the_loaders_not_found(
        self, redis_url: str, open_backend: OpenBackend
    ) -> None:
        """A caller in another process waiting on a load whose loader found no policy
        gets NotFoundError without running its own loader."""
        load = await a_failed_load_waited_on_elsewhere(
            redis_url, open_backend, NotFoundError("none upstream")
        )
        with pytest.raises(NotFoundError, match="none upstream"):
            await bounded(load.led)
        with pytest.raises(NotFoundError, match="found none"):
            await bounded(load.waited)
        assert load.waiter_loader.runs == 0

    async def test_waiters_elsewhere_load_again_after_another_error(
        self, redis_url: str, open_backend: OpenBackend
    ) -> None:
        """A waiter whose leader's loader failed otherwise takes the released lease at once,
        loads, and caches its policy."""
        load = await a_failed_load_waited_on_elsewhere(
            redis_url, open_backend, RuntimeError("upstream timeout")
        )
        with pytest.raises(RuntimeError, match="upstream timeout"):
            await bounded(load.led)
        assert await bounded(load.waited) == NEW
        assert load.waiter_loader.runs == 1
        assert await load.waiting.policies().get_policy(load.agent) == NEW

    async def test_past_lease_wait_a_caller_loads_for_itself_and_caches_nothing(
        self, redis_url: str, open_backend: OpenBackend
    ) -> None:
        """A caller that waits out lease_wait runs its loader and returns its policy without
        caching it; the leader's write-back still lands."""
        leading = open_backend(redis_url, **PATIENT_LEASE)
        impatient = open_backend(redis_url, lease_ttl=30.0, lease_wait=0.05)
        agent, leader_loader, own = AgentId.new(), gated(OLD), ScriptedLoader([NEW])
        led = asyncio.ensure_future(leading.policies().get_or_load(agent, leader_loader, 60))
        await bounded(leader_loader.entered.wait())
        assert await bounded(impatient.policies().get_or_load(agent, own, 60)) == NEW
        with pytest.raises(NotFoundError):
            await impatient.policies().get_policy(agent)
        leader_loader.release()
        assert await bounded(led) == OLD
        assert await impatient.policies().get_policy(agent) == OLD

    async def test_a_plain_del_drops_the_policy_but_not_the_lease(
        self, redis_backend: RedisBackend, raw: redis.Redis
    ) -> None:
        """What the README says of a Rust process's DEL: the next read misses, but a load
        already under way still writes back what it loaded before the DEL."""
        agent, loader = AgentId.new(), gated(OLD)
        await redis_backend.policies().cache_policy(agent, NEW, 60)
        await redis_backend.policies().invalidate(agent)
        call = asyncio.ensure_future(redis_backend.policies().get_or_load(agent, loader, 60))
        await bounded(loader.entered.wait())
        raw.delete(KEYS.policy(agent))
        loader.release()
        assert await bounded(call) == OLD
        assert await redis_backend.policies().get_policy(agent) == OLD

    async def test_a_plain_set_during_a_load_is_kept(
        self, redis_backend: RedisBackend, raw: redis.Redis
    ) -> None:
        """A policy a Rust process SETs while a load runs is not overwritten by the load."""
        agent, loader = AgentId.new(), gated(OLD)
        call = asyncio.ensure_future(redis_backend.policies().get_or_load(agent, loader, 60))
        await bounded(loader.entered.wait())
        raw.set(KEYS.policy(agent), policy_to_json(NEW), ex=60)
        loader.release()
        assert await bounded(call) == OLD
        assert await redis_backend.policies().get_policy(agent) == NEW


# Lease values no driver writes: a state without a token, a token that is not decimal, or
# one too long for the script's arithmetic. Each is set with an expiry, as if a lease.
FOREIGN_LEASES = [b"n", b"", b"+", b"-", b"nfoo", b"+abc", b"garbage", b"+" + b"9" * 20]


@pytest.mark.asyncio
class TestForeignLeases:
    @pytest.mark.parametrize("value", FOREIGN_LEASES)
    async def test_a_foreign_lease_is_taken_over(
        self, redis_url: str, open_backend: OpenBackend, raw: redis.Redis, value: bytes
    ) -> None:
        """A lease key holding what no driver writes neither holds a caller up nor answers
        NotFoundError: the caller takes a lease of its own, loads and caches its policy."""
        backend = open_backend(redis_url, lease_ttl=30.0, lease_wait=0.2)
        agent, loader = AgentId.new(), ScriptedLoader([NEW])
        raw.set(KEYS.policy_lease(agent), value, px=60_000)
        assert await bounded(backend.policies().get_or_load(agent, loader, 60)) == NEW
        assert loader.runs == 1
        assert await backend.policies().get_policy(agent) == NEW
        lease = raw.get(KEYS.policy_lease(agent))
        assert lease is not None
        assert lease.startswith(b"-")
        assert lease[1:].isdigit()

    async def test_a_load_that_took_over_a_foreign_lease_is_still_fenced(
        self, redis_backend: RedisBackend, raw: redis.Redis
    ) -> None:
        """An invalidate during the load that took a foreign lease over keeps it out."""
        agent = AgentId.new()
        raw.set(KEYS.policy_lease(agent), b"n", px=60_000)
        await a_load_invalidated_midway(redis_backend, agent)


class TestLayout:
    @pytest.mark.asyncio
    async def test_a_loaded_policy_is_stored_as_the_rust_driver_stores_it(
        self, redis_backend: RedisBackend, raw: redis.Redis
    ) -> None:
        """The write-back is the policy's serde JSON, a plain string with the TTL given,
        and the lease beside it is released and expiring."""
        agent = AgentId.new()
        assert await redis_backend.policies().get_or_load(agent, ScriptedLoader([OLD]), 77) == OLD
        stored = raw.get(KEYS.policy(agent))
        assert stored == policy_to_json(OLD)
        assert policy_from_json(stored) == OLD
        assert raw.type(KEYS.policy(agent)) == b"string"
        assert 0 < raw.ttl(KEYS.policy(agent)) <= 77
        lease = raw.get(KEYS.policy_lease(agent))
        assert lease is not None
        assert lease.startswith(b"-")
        assert 0 < raw.pttl(KEYS.policy_lease(agent)) <= 5000

    @pytest.mark.asyncio
    async def test_a_hit_is_one_get(
        self, redis_backend: RedisBackend, redis_server: RedisServer
    ) -> None:
        """A hit sends one GET, as get_policy does, and nothing else."""
        agent = AgentId.new()
        await redis_backend.policies().cache_policy(agent, OLD, 60)
        await redis_backend.policies().get_or_load(agent, ScriptedLoader([NEW]), 60)
        before = redis_server.commandstats()
        assert await redis_backend.policies().get_or_load(agent, ScriptedLoader([NEW]), 60) == OLD
        after = redis_server.commandstats()
        sent = {
            name: after[name] - before.get(name, 0)
            for name in after
            if name not in HELPER_COMMANDS and after[name] != before.get(name, 0)
        }
        assert sent == {"get": 1}

    @pytest.mark.asyncio
    async def test_tokens_only_grow(self, redis_backend: RedisBackend, raw: redis.Redis) -> None:
        """Each lease of an agent has a larger token than the last, also once the lease key
        is gone and the server's clock alone decides."""
        agent, tokens = AgentId.new(), []
        policies = redis_backend.policies()

        async def loader(agent_id: AgentId) -> PolicyDocument:
            lease = raw.get(KEYS.policy_lease(agent))
            assert lease is not None
            tokens.append(int(lease[1:]))
            return OLD

        for forget_the_lease in (False, False, True, False):
            await policies.get_or_load(agent, loader, 60)
            await policies.invalidate(agent)
            if forget_the_lease:
                raw.delete(KEYS.policy_lease(agent))
        assert tokens == sorted(set(tokens))
        assert len(tokens) == 4

    @pytest.mark.asyncio
    async def test_a_token_is_past_the_last_one_even_if_the_clock_is_not(
        self, redis_backend: RedisBackend, raw: redis.Redis
    ) -> None:
        """A lease key that remembers a token past the server's clock (issued in the same
        microsecond, or before the clock stepped back) makes the next token one more."""
        agent, last = AgentId.new(), 9_000_000_000_000_000  # about 2255 in microseconds
        raw.set(KEYS.policy_lease(agent), f"-{last}", px=60_000)
        leases: list[bytes | None] = []

        async def loader(agent_id: AgentId) -> PolicyDocument:
            leases.append(raw.get(KEYS.policy_lease(agent)))
            return OLD

        await redis_backend.policies().get_or_load(agent, loader, 60)
        assert leases == [f"+{last + 1}".encode()]

    @pytest.mark.parametrize("prefix", ["aa:", "{tenant}:", "x{y:", "{{t}}:"])
    def test_the_lease_is_in_the_policy_keys_slot(self, prefix: str) -> None:
        """For plain prefixes and prefixes that hold a hash tag, a cluster hashes the lease
        and its policy key to one slot."""
        keys, agent = KeySpace(prefix), AgentId.new()
        assert key_slot(keys.policy_lease(agent)) == key_slot(keys.policy(agent))
        assert keys.policy_lease(agent) != keys.policy(agent)

    @pytest.mark.asyncio
    @pytest.mark.parametrize("prefix", ["aa:", "{tenant}:"])
    async def test_leases_work_on_a_cluster(
        self, redis_cluster: LocalCluster, open_backend: OpenBackend, prefix: str
    ) -> None:
        """On a cluster, with and without a hash tag in the prefix, a load is fenced by an
        invalidate and the next one is cached."""
        redis_cluster.flushall()
        backend = open_backend(redis_cluster.url, key_prefix=prefix)
        agent = AgentId.new()
        await a_load_invalidated_midway(backend, agent)
        assert await backend.policies().get_or_load(agent, ScriptedLoader([NEW]), 60) == NEW
        assert await backend.policies().get_policy(agent) == NEW

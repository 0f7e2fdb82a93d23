"""Hypothesis drives get_or_load, invalidate, cache_policy, lease expiry and a Rust process's
plain writes against one real redis-server, in any interleaving, and checks the cache against
a model after every step.

The invariant, in words: the cache only ever holds a policy that nothing has overtaken. A load
writes back only while it holds the agent's live lease and nothing is cached; invalidate,
cache_policy and the lease's expiry each take the lease away; a plain DEL or SET (a Rust
process) leaves it. A caller that finds a policy cached gets exactly that policy.

Each load runs through a backend of its own, as if in a process of its own. With a lease_wait
of a few milliseconds, a caller that finds the lease held soon loads for itself without
caching, so every step ends in a state the model can name.
"""

from __future__ import annotations

import asyncio
import itertools
import uuid
from collections.abc import Iterator
from typing import Any, ClassVar

import attrs
import pytest
import redis
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test

from aa_storage import (
    AgentId,
    NotFoundError,
    PolicyDecision,
    PolicyDocument,
    PolicyRule,
    policy_to_json,
)
from aa_storage.testing import HANG_SECS
from aa_storage_redis import RedisBackend, RedisStorageConfig
from aa_storage_redis.keys import KeySpace
from servers import RedisServer

TTL_SECS = 600
ENDINGS = ("policy", "not found", "error")
CHANGES = ("invalidate", "cache_policy", "lease expires", "plain DEL", "plain SET")


def policy(version: int) -> PolicyDocument:
    return PolicyDocument(version, f"v{version}", [PolicyRule("tool:*", PolicyDecision.ALLOW)])


@attrs.define
class Load:
    """One get_or_load under way, whose loader waits for the test to say how it ends."""

    number: int
    version: int
    task: asyncio.Future[PolicyDocument]
    outcome: asyncio.Future[object]
    entered: asyncio.Event


class LeaseModel(RuleBasedStateMachine):
    config: ClassVar[RedisStorageConfig]
    raw: ClassVar[redis.Redis]

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        prefix = f"model-{uuid.uuid4().hex[:12]}:"
        self.config = attrs.evolve(self.config, key_prefix=prefix)
        self.keys = KeySpace(prefix)
        self.agent = AgentId.new()
        self.versions = itertools.count(1)
        self.backends: list[RedisBackend] = []
        self.pending: list[Load] = []
        self.admin = self._backend()
        # The model: what is cached, and which load holds the live lease.
        self.cached: PolicyDocument | None = None
        self.holder: int | None = None

    def _backend(self) -> RedisBackend:
        backend = RedisBackend.connect(self.config)
        self.backends.append(backend)
        return backend

    def _run(self, coroutine: Any) -> Any:
        return self.loop.run_until_complete(asyncio.wait_for(coroutine, HANG_SECS))

    @rule(data=st.data())
    def step(self, data: st.DataObject) -> None:
        """The next event, drawn from all that can happen now. One rule for all of them,
        so Hypothesis's swarm testing never switches a kind of event off for a whole run;
        two loads under way at once, or an overtake between a load's start and end, stay
        likely."""
        events = ["get_or_load"] * 3 + ["finish"] * 3 * bool(self.pending) + list(CHANGES)
        event = data.draw(st.sampled_from(events), label="event")
        if event == "get_or_load":
            self.get_or_load()
        elif event == "finish":
            load = data.draw(st.sampled_from(self.pending), label="load")
            self.finish(load, data.draw(st.sampled_from(ENDINGS), label="ending"))
        else:
            self.overtake(event)

    def get_or_load(self) -> None:
        """A caller misses or hits; on a miss it leads a load if the lease is free."""
        version = next(self.versions)

        async def start() -> Load:
            outcome: asyncio.Future[object] = self.loop.create_future()
            entered = asyncio.Event()

            async def loader(agent_id: AgentId) -> PolicyDocument:
                entered.set()
                result = await outcome
                if isinstance(result, BaseException):
                    raise result
                assert isinstance(result, PolicyDocument)
                return result

            backend = self._backend()
            task = asyncio.ensure_future(
                backend.policies().get_or_load(self.agent, loader, TTL_SECS)
            )
            started = asyncio.ensure_future(entered.wait())
            await asyncio.wait([task, started], return_when=asyncio.FIRST_COMPLETED)
            started.cancel()
            return Load(version, version, task, outcome, entered)

        load = self._run(start())
        if self.cached is not None:
            assert load.task.done()
            assert not load.entered.is_set()
            assert load.task.result() == self.cached
            return
        assert load.entered.is_set()
        assert not load.task.done()
        self.pending.append(load)
        if self.holder is None:
            self.holder = load.number

    def finish(self, load: Load, ending: str) -> None:
        """The loader returns its policy, finds none, or fails; the caller sees just that."""
        result: object = {
            "policy": policy(load.version),
            "not found": NotFoundError("no policy upstream"),
            "error": RuntimeError("upstream failed"),
        }[ending]
        load.outcome.set_result(result)
        self.pending.remove(load)

        async def outcome() -> object:
            try:
                return await load.task
            except (NotFoundError, RuntimeError) as exc:
                return exc

        assert self._run(outcome()) is result
        if self.holder == load.number:
            if ending == "policy" and self.cached is None:
                self.cached = policy(load.version)
            self.holder = None

    def overtake(self, change: str) -> None:
        """Something other than a load changes the cache or the lease: invalidate and
        cache_policy take the lease away, and so does its expiry; a Rust process's plain
        DEL or SET changes the policy and leaves the lease."""
        policies, newer = self.admin.policies(), policy(next(self.versions))
        if change == "invalidate":
            self._run(policies.invalidate(self.agent))
            self.cached, self.holder = None, None
        elif change == "cache_policy":
            self._run(policies.cache_policy(self.agent, newer, TTL_SECS))
            self.cached, self.holder = newer, None
        elif change == "lease expires":
            self.raw.delete(self.keys.policy_lease(self.agent))
            self.holder = None
        elif change == "plain DEL":
            self.raw.delete(self.keys.policy(self.agent))
            self.cached = None
        else:
            self.raw.set(self.keys.policy(self.agent), policy_to_json(newer), ex=TTL_SECS)
            self.cached = newer

    @invariant()
    def cache_matches_the_model(self) -> None:
        async def read() -> PolicyDocument | None:
            try:
                return await self.admin.policies().get_policy(self.agent)
            except NotFoundError:
                return None

        assert self._run(read()) == self.cached

    def teardown(self) -> None:
        async def close() -> None:
            for load in self.pending:
                load.task.cancel()
            await asyncio.gather(*(load.task for load in self.pending), return_exceptions=True)
            for backend in self.backends:
                await backend.aclose()

        try:
            self._run(close())
        finally:
            self.raw.delete(self.keys.policy(self.agent), self.keys.policy_lease(self.agent))
            self.loop.close()


@pytest.fixture
def model(redis_server: RedisServer, redis_url: str) -> Iterator[type[LeaseModel]]:
    with redis_server.client() as raw:
        LeaseModel.config = redis_server.backend_config(lease_ttl=60.0, lease_wait=0.003)
        LeaseModel.raw = raw
        yield LeaseModel


def test_the_cache_never_holds_an_overtaken_load(model: type[LeaseModel]) -> None:
    """Any interleaving of loads, their endings, invalidations, cached policies, lease
    expiry and plain writes leaves the cache as the model says."""
    run_state_machine_as_test(
        model, settings=settings(max_examples=250, stateful_step_count=16, deadline=None)
    )

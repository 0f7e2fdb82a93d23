"""Single flight within one process (aa_storage.readthrough), through the memory driver:
who waits for whom, what waiters get when the load fails or is cancelled, and voiding."""

from __future__ import annotations

import asyncio

import pytest

from aa_storage import AgentId, NotFoundError, PolicyDecision, PolicyDocument, PolicyRule
from aa_storage.memory import MemoryBackend
from aa_storage.readthrough import SingleFlight, load
from aa_storage.testing import ScriptedLoader, bounded

pytestmark = pytest.mark.asyncio

OLD = PolicyDocument(1, "old", [PolicyRule("tool:*", PolicyDecision.ALLOW)])
NEW = PolicyDocument(2, "new", [PolicyRule("tool:*", PolicyDecision.DENY)])


async def callers_waiting(
    backend: MemoryBackend, agent: AgentId, loader: ScriptedLoader, count: int
) -> list[asyncio.Future[PolicyDocument]]:
    """``count`` get_or_load calls, the first one leading the load, the others waiting on it.

    The memory store awaits nothing before a caller runs the loader or waits on the load,
    and tasks take their first steps in the order they were created: so once the leader's
    loader has set ``entered``, every later caller waits on its load too."""
    calls = [
        asyncio.ensure_future(backend.policies().get_or_load(agent, loader, 60))
        for _ in range(count)
    ]
    await bounded(loader.entered.wait())
    assert loader.runs == 1
    return calls


class TestWaiters:
    async def test_waiters_share_the_leaders_not_found(self) -> None:
        """The load's NotFoundError goes to every caller that waited on it; the loader runs
        once, so an agent with no policy costs one load, not one per caller."""
        backend, agent = MemoryBackend(), AgentId.new()
        missing = NotFoundError("no policy upstream")
        loader = ScriptedLoader([missing, OLD], asyncio.Event())
        calls = await callers_waiting(backend, agent, loader, 5)
        loader.release()
        outcomes = await bounded(asyncio.gather(*calls, return_exceptions=True))
        assert outcomes == [missing] * 5
        assert loader.runs == 1

    async def test_after_another_error_one_waiter_leads_the_next_load(self) -> None:
        """The leader's caller alone gets its RuntimeError; the waiters run one more load
        between them and all get its policy."""
        backend, agent = MemoryBackend(), AgentId.new()
        failure = RuntimeError("upstream timeout")
        loader = ScriptedLoader([failure, OLD], asyncio.Event())
        calls = await callers_waiting(backend, agent, loader, 5)
        loader.release()
        outcomes = await bounded(asyncio.gather(*calls, return_exceptions=True))
        assert outcomes == [failure, OLD, OLD, OLD, OLD]
        assert loader.runs == 2

    async def test_when_the_next_load_fails_too_its_waiters_get_its_error(self) -> None:
        """An upstream that keeps failing costs two loads, not one per caller in turn: the
        waiters that tried again after the first failure get the second load's error."""
        backend, agent = MemoryBackend(), AgentId.new()
        first, second = RuntimeError("upstream timeout"), RuntimeError("upstream down")
        loader = ScriptedLoader([first, second, OLD], asyncio.Event())
        calls = await callers_waiting(backend, agent, loader, 5)
        loader.release()
        outcomes = await bounded(asyncio.gather(*calls, return_exceptions=True))
        assert outcomes == [first, second, second, second, second]
        assert loader.runs == 2

    async def test_a_cancelled_leader_hands_the_load_to_a_waiter(self) -> None:
        """Cancelling the leader's caller cancels only that caller: a waiter loads next."""
        backend, agent = MemoryBackend(), AgentId.new()
        loader = ScriptedLoader([OLD], asyncio.Event())
        leader, *waiters = await callers_waiting(backend, agent, loader, 3)
        loader.entered.clear()
        leader.cancel()
        await bounded(loader.entered.wait())
        assert loader.runs == 2
        loader.release()
        assert await bounded(asyncio.gather(*waiters)) == [OLD, OLD]
        assert leader.cancelled()

    async def test_a_cancelled_waiter_leaves_the_others_waiting(self) -> None:
        """Cancelling a waiter does not cancel the load or the other waiters."""
        backend, agent = MemoryBackend(), AgentId.new()
        loader = ScriptedLoader([OLD], asyncio.Event())
        leader, quitter, stayer = await callers_waiting(backend, agent, loader, 3)
        quitter.cancel()
        await asyncio.wait([quitter])
        loader.release()
        assert await bounded(asyncio.gather(leader, stayer)) == [OLD, OLD]
        assert quitter.cancelled()
        assert loader.runs == 1


class TestVoiding:
    async def test_a_voided_load_answers_only_the_caller_who_ran_it(self) -> None:
        """A load that an invalidate overtook gives its policy to its own caller; the callers
        that waited on it, and a caller after the invalidate, get a fresh load's."""
        backend, agent = MemoryBackend(), AgentId.new()
        loader = ScriptedLoader([OLD, NEW], asyncio.Event())
        calls = await callers_waiting(backend, agent, loader, 3)
        await backend.policies().invalidate(agent)
        loader.entered.clear()
        later = asyncio.ensure_future(backend.policies().get_or_load(agent, loader, 60))
        await bounded(loader.entered.wait())
        assert loader.runs == 2
        loader.release()
        assert await bounded(asyncio.gather(*calls, later)) == [OLD, NEW, NEW, NEW]
        assert loader.runs == 2
        assert await backend.policies().get_policy(agent) == NEW

    async def test_stores_of_one_backend_share_their_flights(self) -> None:
        """A load through one policies() object is voided by an invalidate through another."""
        backend, agent = MemoryBackend(), AgentId.new()
        loader = ScriptedLoader([OLD], asyncio.Event())
        [call] = await callers_waiting(backend, agent, loader, 1)
        await backend.policies().invalidate(agent)
        loader.release()
        assert await bounded(call) == OLD
        with pytest.raises(NotFoundError):
            await backend.policies().get_policy(agent)

    async def test_a_finished_flight_leaves_a_newer_one_to_be_voided(self) -> None:
        """A voided load that finishes after a newer load of its agent began takes only itself
        off the table: an invalidate still voids the newer load, which caches nothing."""
        backend, agent = MemoryBackend(), AgentId.new()
        first, second = (
            ScriptedLoader([OLD], asyncio.Event()),
            ScriptedLoader([NEW], asyncio.Event()),
        )
        older = asyncio.ensure_future(backend.policies().get_or_load(agent, first, 60))
        await bounded(first.entered.wait())
        await backend.policies().invalidate(agent)
        newer = asyncio.ensure_future(backend.policies().get_or_load(agent, second, 60))
        await bounded(second.entered.wait())
        first.release()
        assert await bounded(older) == OLD
        await backend.policies().invalidate(agent)
        second.release()
        assert await bounded(newer) == NEW
        with pytest.raises(NotFoundError):
            await backend.policies().get_policy(agent)

    async def test_voiding_an_agent_with_no_load_under_way_does_nothing(self) -> None:
        """void() of an agent nothing is loading is harmless, and the next load caches."""
        flights, agent, stored = SingleFlight(), AgentId.new(), []
        flights.void(agent)

        async def attempt(flight: object) -> PolicyDocument:
            policy = await load(ScriptedLoader([OLD]), agent)
            stored.append(not flight.voided)
            return policy

        assert await flights.run(agent, attempt) == OLD
        assert stored == [True]


class TestLoad:
    async def test_a_loader_that_returns_no_awaitable_is_a_type_error(self) -> None:
        """A plain function where an async one belongs is a TypeError naming the problem."""

        def not_async(agent_id: AgentId) -> PolicyDocument:
            return OLD

        with pytest.raises(TypeError, match="not an awaitable"):
            await load(not_async, AgentId.new())  # type: ignore[arg-type]

    async def test_a_loader_result_that_is_no_policy_is_a_type_error(self) -> None:
        """An awaitable of something else is a TypeError that names what came back."""
        with pytest.raises(TypeError, match="got dict; nothing was cached"):
            await load(ScriptedLoader([{"version": 1}]), AgentId.new())

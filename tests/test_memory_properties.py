"""Hypothesis invariants of the memory driver's windows and TTLs, on a fake clock."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeAlias

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aa_storage import (
    DEFAULT_POLICY_CACHE_TTL_SECS,
    SESSION_TTL_SECS,
    AgentId,
    EnforcementMode,
    NotFoundError,
    PolicyDecision,
    PolicyDocument,
    PolicyRule,
    SessionId,
    SessionRecord,
    StorageError,
)
from aa_storage.memory import MemoryBackend
from aa_storage.testing import FakeClock

SETTINGS = settings(max_examples=150, deadline=None)
Op: TypeAlias = tuple[Any, ...]
I64_MAX = 2**63 - 1
# Small amounts, and amounts whose totals pass 2**53 (past a double's precision) or 2**63-1.
_amounts = st.one_of(st.integers(0, 1000), st.integers(2**53 - 1000, I64_MAX))


def _run(body: Coroutine[Any, Any, None]) -> None:
    asyncio.run(body)


def _fresh() -> tuple[FakeClock, MemoryBackend]:
    clock = FakeClock()
    return clock, MemoryBackend(clock=clock)


# Half-second steps are exact in binary floating point, so the model and the
# driver agree on every comparison with the window's end.
_half_seconds = st.integers(min_value=0, max_value=12).map(lambda n: n / 2)


@attrs.define
class _Window:
    total: int
    ends_at: float


@attrs.define
class WindowModel:
    """Fixed windows, by the contract: the creating increment starts a window nothing moves."""

    now: float
    windows: dict[str, _Window] = attrs.field(factory=dict)

    def _live(self, key: str) -> _Window | None:
        window = self.windows.get(key)
        if window is not None and self.now >= window.ends_at:
            del self.windows[key]
            return None
        return window

    def increment(self, key: str, amount: int, window_secs: int) -> int | None:
        """The new total, or None when it would pass 2**63-1 (and nothing changes)."""
        window = self._live(key)
        if window is None:
            self.windows[key] = _Window(amount, self.now + window_secs)
            return amount
        if window.total + amount > I64_MAX:
            return None
        window.total += amount
        return window.total

    def current(self, key: str) -> int:
        window = self._live(key)
        return 0 if window is None else window.total

    def reset(self, key: str) -> None:
        self.windows.pop(key, None)


@st.composite
def counter_programs(draw: st.DrawFn) -> tuple[list[str], list[Op]]:
    """1 to 3 keys, and up to 40 operations on them."""
    keys = ["k0", "k1", "k2"][: draw(st.integers(min_value=1, max_value=3))]
    key = st.sampled_from(keys)
    operation = st.one_of(
        st.tuples(
            st.just("increment"),
            key,
            _amounts,
            st.integers(min_value=1, max_value=5),
        ),
        st.tuples(st.just("advance"), _half_seconds),
        st.tuples(st.just("current"), key),
        st.tuples(st.just("reset"), key),
    )
    return keys, draw(st.lists(operation, max_size=40))


class TestRateLimitProperties:
    @SETTINGS
    @given(program=counter_programs())
    def test_matches_fixed_window_model(self, program: tuple[list[str], list[Op]]) -> None:
        """Any run of increments, clock steps, reads and resets matches the fixed-window model.

        The model: the increment that finds no live counter starts a window of its
        window_secs at that instant; later increments only add to the total and never
        move or extend the window; an increment that would pass 2**63-1 is a StorageError
        and changes nothing; the counter is gone (reads 0) once now >= start + window;
        reset drops it at once; and keys never affect one another.
        """
        keys, operations = program

        async def body() -> None:
            clock, backend = _fresh()
            counter = backend.rate_limiter()
            model = WindowModel(now=clock.now)
            for step, operation in enumerate(operations):
                name, *args = operation
                if name == "advance":
                    await clock.advance(args[0])
                    model.now = clock.now
                elif name == "increment":
                    expected = model.increment(*args)
                    if expected is None:
                        with pytest.raises(StorageError, match="overflow"):
                            await counter.increment(*args)
                    else:
                        assert await counter.increment(*args) == expected, (step, operation)
                elif name == "current":
                    assert await counter.current(args[0]) == model.current(args[0]), (
                        step,
                        operation,
                    )
                else:
                    await counter.reset(args[0])
                    model.reset(args[0])
            for key in keys:
                assert await counter.current(key) == model.current(key), key

        _run(body())

    @SETTINGS
    @given(
        window_secs=st.integers(min_value=1, max_value=5),
        steps=st.lists(
            # Up to 20 amounts whose sum stays within 2**63-1 but mostly passes 2**53.
            st.tuples(st.integers(min_value=0, max_value=I64_MAX // 20), st.integers(0, 9)),
            min_size=1,
            max_size=20,
        ),
    )
    def test_totals_within_one_window_are_running_sums(
        self, window_secs: int, steps: list[tuple[int, int]]
    ) -> None:
        """Within one window each increment returns the sum of every amount so far.

        The increments land at sorted instants strictly inside [start, start + window);
        each returns the running sum of the amounts, current() then reads the full sum,
        and at start + window exactly the counter reads 0 and the next increment starts
        a new window with just its own amount.
        """
        amounts = [amount for amount, _ in steps]
        # Offsets from the first increment (which starts the window), in tenths of the
        # window, all below the window's end.
        tenths = sorted(tenth for _, tenth in steps)
        offsets = [(tenth - tenths[0]) * window_secs / 10 for tenth in tenths]

        async def body() -> None:
            clock, backend = _fresh()
            counter = backend.rate_limiter()
            start = clock.now
            totals = []
            for amount, offset in zip(amounts, offsets, strict=True):
                clock.now = start + offset
                totals.append(await counter.increment("k", amount, window_secs))
            assert totals == [sum(amounts[: i + 1]) for i in range(len(amounts))]
            assert await counter.current("k") == sum(amounts)
            clock.now = start + window_secs
            assert await counter.current("k") == 0
            assert await counter.increment("k", 7, window_secs) == 7

        _run(body())


@st.composite
def session_programs(draw: st.DrawFn) -> list[Op]:
    """Up to 30 saves, loads, deletes and clock jumps over two sessions."""
    which = st.integers(min_value=0, max_value=1)
    jump = st.one_of(
        st.sampled_from([0, 1, SESSION_TTL_SECS - 1, SESSION_TTL_SECS, SESSION_TTL_SECS + 1]),
        st.integers(min_value=0, max_value=2 * SESSION_TTL_SECS),
    )
    operation = st.one_of(
        st.tuples(st.just("save"), which, st.integers(min_value=0, max_value=2**64 - 1)),
        st.tuples(st.just("advance"), jump),
        st.tuples(st.just("load"), which),
        st.tuples(st.just("delete"), which),
    )
    return draw(st.lists(operation, max_size=30))


class TestSessionProperties:
    @SETTINGS
    @given(operations=session_programs())
    def test_session_lives_ttl_after_its_last_save(self, operations: list[Op]) -> None:
        """A session loads (as last saved) iff it was saved less than SESSION_TTL_SECS ago.

        Each save replaces the record and re-arms the TTL from that instant; the record
        is gone exactly when now >= last save + SESSION_TTL_SECS, and at once after a
        delete; other sessions are unaffected.
        """
        ids = [SessionId.new(), SessionId.new()]
        agent = AgentId.new()

        async def body() -> None:
            clock, backend = _fresh()
            sessions = backend.sessions()
            saved: dict[int, tuple[SessionRecord, float]] = {}
            for step, operation in enumerate(operations):
                name, *args = operation
                if name == "advance":
                    await clock.advance(args[0])
                elif name == "save":
                    record = SessionRecord(ids[args[0]], agent, args[1])
                    await sessions.save(record)
                    saved[args[0]] = (record, clock.now)
                elif name == "delete":
                    await sessions.delete(ids[args[0]])
                    saved.pop(args[0], None)
                else:
                    await _check_session(sessions, ids[args[0]], saved.get(args[0]), clock, step)
            for index, session_id in enumerate(ids):
                await _check_session(sessions, session_id, saved.get(index), clock, -1)

        _run(body())

    @pytest.mark.asyncio
    async def test_session_expires_exactly_at_the_ttl(self) -> None:
        """A session saved at t loads at t + SESSION_TTL_SECS - 1 and is gone at t + TTL."""
        clock, backend = _fresh()
        record = SessionRecord(SessionId.new(), AgentId.new(), 5)
        await backend.sessions().save(record)
        await clock.advance(SESSION_TTL_SECS - 1)
        assert await backend.sessions().load(record.session_id) == record
        await clock.advance(1)
        with pytest.raises(NotFoundError):
            await backend.sessions().load(record.session_id)


async def _check_session(
    sessions: Any,
    session_id: SessionId,
    expected: tuple[SessionRecord, float] | None,
    clock: FakeClock,
    step: int,
) -> None:
    if expected is not None and clock.now < expected[1] + SESSION_TTL_SECS:
        assert await sessions.load(session_id) == expected[0], step
    else:
        with pytest.raises(NotFoundError):
            await sessions.load(session_id)


def _policy(version: int, mode: EnforcementMode = EnforcementMode.ENFORCE) -> PolicyDocument:
    return PolicyDocument(version, "p", [PolicyRule("tool:*", PolicyDecision.ALLOW)], mode)


@st.composite
def policy_programs(draw: st.DrawFn) -> list[Op]:
    """Up to 30 caches, reads, invalidations and clock jumps over two agents."""
    which = st.integers(min_value=0, max_value=1)
    operation = st.one_of(
        st.tuples(
            st.just("cache"),
            which,
            st.integers(min_value=1, max_value=600),
            # A u32, with both bounds drawn often.
            st.one_of(st.sampled_from([0, 2**32 - 1]), st.integers(0, 2**32 - 1)),
            st.sampled_from(EnforcementMode),
        ),
        st.tuples(st.just("advance"), st.integers(min_value=0, max_value=700)),
        st.tuples(st.just("get"), which),
        st.tuples(st.just("invalidate"), which),
    )
    return draw(st.lists(operation, max_size=30))


class TestPolicyProperties:
    @SETTINGS
    @given(operations=policy_programs())
    def test_policy_lives_for_its_ttl(self, operations: list[Op]) -> None:
        """A cached policy reads back (as last cached) iff it was cached less than its TTL ago.

        Each cache_policy replaces the agent's policy and its TTL from that instant; the
        policy is gone exactly when now >= cached at + ttl_secs, and at once after
        invalidate; other agents are unaffected.
        """
        agents = [AgentId.new(), AgentId.new()]

        async def body() -> None:
            clock, backend = _fresh()
            policies = backend.policies()
            cached: dict[int, tuple[PolicyDocument, float]] = {}
            for step, operation in enumerate(operations):
                name, *args = operation
                if name == "advance":
                    await clock.advance(args[0])
                elif name == "cache":
                    index, ttl_secs, version, mode = args
                    await policies.cache_policy(agents[index], _policy(version, mode), ttl_secs)
                    cached[index] = (_policy(version, mode), clock.now + ttl_secs)
                elif name == "invalidate":
                    await policies.invalidate(agents[args[0]])
                    cached.pop(args[0], None)
                else:
                    expected = cached.get(args[0])
                    if expected is not None and clock.now < expected[1]:
                        assert await policies.get_policy(agents[args[0]]) == expected[0], step
                    else:
                        with pytest.raises(NotFoundError):
                            await policies.get_policy(agents[args[0]])

        _run(body())

    @pytest.mark.asyncio
    async def test_default_ttl_is_honoured(self) -> None:
        """A policy cached for DEFAULT_POLICY_CACHE_TTL_SECS reads back until exactly then."""
        clock, backend = _fresh()
        agent = AgentId.new()
        await backend.policies().cache_policy(agent, _policy(1), DEFAULT_POLICY_CACHE_TTL_SECS)
        await clock.advance(DEFAULT_POLICY_CACHE_TTL_SECS - 1)
        assert await backend.policies().get_policy(agent) == _policy(1)
        await clock.advance(1)
        with pytest.raises(NotFoundError):
            await backend.policies().get_policy(agent)

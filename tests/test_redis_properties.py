"""Hypothesis checks the counter, window, TTL and policy invariants against a real redis-server.

Each example runs on its own keys, through a fresh backend, in its own event loop.
"""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import pytest
import redis
from hypothesis import given, settings
from hypothesis import strategies as st

from aa_storage import (
    SESSION_TTL_SECS,
    AgentId,
    EnforcementMode,
    PolicyDecision,
    PolicyDocument,
    PolicyRule,
    SessionId,
    SessionRecord,
    StorageError,
)
from aa_storage_redis import RedisBackend
from servers import EXPIRY_PATIENCE_SECS, RedisServer, server_clock_ms

T = TypeVar("T")
examples = settings(max_examples=40, deadline=None)
amounts = st.integers(min_value=0, max_value=10**12)
I64_MAX = 2**63 - 1


Runner = Callable[[Callable[[RedisBackend], Awaitable[T]]], T]


# Module-scoped, so they are the same for every example; examples never share keys.
@pytest.fixture(scope="module")
def run(redis_server: RedisServer) -> Runner[Any]:
    """Runs ``body(backend)`` to completion on a fresh backend."""
    config = redis_server.backend_config()

    def run_body(body: Callable[[RedisBackend], Awaitable[T]]) -> T:
        async def main() -> T:
            backend = RedisBackend.connect(config)
            try:
                return await body(backend)
            finally:
                await backend.aclose()

        return asyncio.run(main())

    return run_body


@pytest.fixture(scope="module")
def raw(redis_server: RedisServer) -> Iterator[redis.Redis]:
    with redis_server.client() as client:
        yield client


def fresh_key() -> str:
    return f"prop:{uuid.uuid4().hex}"


@st.composite
def amounts_past_2_to_the_53(draw: st.DrawFn) -> list[int]:
    """Amounts whose running total ends in (2**53, 2**63-1]: past what a double holds exactly."""
    final = draw(st.integers(2**53 + 1, I64_MAX))
    totals = sorted(draw(st.lists(st.integers(0, final), max_size=8)))
    return [later - earlier for earlier, later in itertools.pairwise([0, *totals, final])]


@examples
@given(
    amounts=amounts_past_2_to_the_53(),
    window=st.integers(5, 3600),
    excess=st.integers(1, 2**53),
)
def test_totals_are_exact_up_to_the_i64_limit(
    run: Runner[Any], amounts: list[int], window: int, excess: int
) -> None:
    """Each increment returns the exact running sum, up to 2**63-1; an amount that would
    pass it is a StorageError that leaves the total as it was."""
    key = fresh_key()
    total = sum(amounts)
    overflowing = I64_MAX - total + excess

    async def body(backend: RedisBackend) -> tuple[list[int], int]:
        counter = backend.rate_limiter()
        totals = [await counter.increment(key, n, window) for n in amounts]
        with pytest.raises(StorageError, match="overflow"):
            await counter.increment(key, overflowing, window)
        return totals, await counter.current(key)

    assert run(body) == (list(itertools.accumulate(amounts)), total)


@examples
@given(
    first=amounts,
    first_window=st.integers(5, 3600),
    later=st.lists(st.tuples(amounts, st.integers(1, 7200)), min_size=1, max_size=9),
)
def test_the_window_end_never_moves(
    run: Runner[Any],
    raw: redis.Redis,
    first: int,
    first_window: int,
    later: list[tuple[int, int]],
) -> None:
    """The first increment ends its window first_window after itself, by the server's clock;
    later increments, whatever window they pass, leave that end where it is, to the ms."""
    key = fresh_key()
    name = f"aa:ratelimit:{key}"

    async def body(backend: RedisBackend) -> tuple[int, int, list[int]]:
        counter = backend.rate_limiter()
        before = server_clock_ms(raw)
        await counter.increment(key, first, first_window)
        after = server_clock_ms(raw)
        ends = [raw.pexpiretime(name)]
        for amount, window in later:
            await counter.increment(key, amount, window)
            ends.append(raw.pexpiretime(name))
        return before, after, ends

    before, after, ends = run(body)
    assert before <= ends[0] - first_window * 1000 <= after
    assert ends == [ends[0]] * len(ends)


async def _lapse(raw: redis.Redis, name: str) -> None:
    """Cut the key's remaining TTL to 1 ms and return once the server no longer has it."""
    raw.pexpire(name, 1)
    deadline = time.monotonic() + EXPIRY_PATIENCE_SECS
    while raw.exists(name):
        assert time.monotonic() < deadline, f"{name} outlived a 1 ms TTL"
        await asyncio.sleep(0.001)


@settings(max_examples=30, deadline=None)
@given(
    before=st.lists(st.integers(1, 10**12), min_size=1, max_size=3),
    after=amounts,
    window=st.integers(5, 3600),
)
def test_a_lapsed_window_gives_way_to_a_new_one(
    run: Runner[Any], raw: redis.Redis, before: list[int], after: int, window: int
) -> None:
    """Once a window has lapsed the counter reads 0, and the next increment returns just its
    own amount and starts a window of its own length at that moment."""
    key = fresh_key()
    name = f"aa:ratelimit:{key}"

    async def body(backend: RedisBackend) -> tuple[int, int, int, int, int]:
        counter = backend.rate_limiter()
        for amount in before:
            await counter.increment(key, amount, window)
        await _lapse(raw, name)  # instead of waiting out the window
        lapsed = await counter.current(key)
        started = server_clock_ms(raw)
        total = await counter.increment(key, after, window)
        armed = server_clock_ms(raw)
        return lapsed, total, started, raw.pexpiretime(name) - window * 1000, armed

    lapsed, total, started, window_start, armed = run(body)
    assert (lapsed, total) == (0, after)
    assert started <= window_start <= armed


@examples
@given(saves=st.integers(1, 4), started=st.integers(0, 2**64 - 1))
def test_each_save_rearms_the_session_ttl(
    run: Runner[Any], raw: redis.Redis, saves: int, started: int
) -> None:
    """After every save the session's TTL is back at SESSION_TTL_SECS."""
    record = SessionRecord(SessionId.new(), AgentId.new(), started)
    key = f"aa:session:{record.session_id.hex}"

    async def body(backend: RedisBackend) -> list[int]:
        ttls = []
        for _ in range(saves):
            raw.expire(key, 7)  # a lower TTL that only a re-arm can lift
            await backend.sessions().save(record)
            ttls.append(raw.ttl(key))
        return ttls

    assert all(SESSION_TTL_SECS - 2 <= ttl <= SESSION_TTL_SECS for ttl in run(body))


# A u32, with both bounds drawn often.
versions = st.one_of(st.sampled_from([0, 2**32 - 1]), st.integers(0, 2**32 - 1))
policies = st.builds(
    PolicyDocument,
    version=versions,
    name=st.text(max_size=30),
    rules=st.lists(
        st.builds(PolicyRule, st.text(max_size=20), st.sampled_from(PolicyDecision)), max_size=4
    ),
    enforcement_mode=st.sampled_from(EnforcementMode),
)


@examples
@given(policy=policies, ttl=st.integers(1, 10**6))
def test_policy_ttl_is_at_most_ttl_secs(
    run: Runner[Any], raw: redis.Redis, policy: PolicyDocument, ttl: int
) -> None:
    """A cached policy reads back equal, with a TTL of at most ttl_secs."""
    agent = AgentId.new()

    async def body(backend: RedisBackend) -> PolicyDocument:
        await backend.policies().cache_policy(agent, policy, ttl)
        return await backend.policies().get_policy(agent)

    started = time.monotonic()
    assert run(body) == policy
    remaining = raw.ttl(f"aa:policy:{agent.hex}")
    assert ttl - (time.monotonic() - started) - 1 <= remaining <= ttl

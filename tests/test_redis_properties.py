"""Hypothesis checks the TTL and window invariants against a real redis-server.

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
    PolicyDecision,
    PolicyDocument,
    PolicyRule,
    SessionId,
    SessionRecord,
)
from aa_storage_redis import RedisBackend, RedisStorageConfig
from servers import RedisServer

T = TypeVar("T")
examples = settings(max_examples=40, deadline=None)
amounts = st.integers(min_value=0, max_value=10**12)


Runner = Callable[[Callable[[RedisBackend], Awaitable[T]]], T]


# Module-scoped, so they are the same for every example; examples never share keys.
@pytest.fixture(scope="module")
def run(redis_server: RedisServer) -> Runner[Any]:
    """Runs ``body(backend)`` to completion on a fresh backend."""
    redis_url = redis_server.url

    def run_body(body: Callable[[RedisBackend], Awaitable[T]]) -> T:
        async def main() -> T:
            backend = RedisBackend.connect(RedisStorageConfig(url=redis_url))
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


@examples
@given(amounts=st.lists(amounts, min_size=1, max_size=20), window=st.integers(5, 3600))
def test_totals_are_running_sums(run: Runner[Any], amounts: list[int], window: int) -> None:
    """Within one window, each increment returns the sum of all amounts so far."""
    key = fresh_key()

    async def body(backend: RedisBackend) -> list[int]:
        return [await backend.rate_limiter().increment(key, n, window) for n in amounts]

    expected = [sum(amounts[: i + 1]) for i in range(len(amounts))]
    assert run(body) == expected


@examples
@given(amounts=st.lists(amounts, min_size=1, max_size=10), windows=st.data())
def test_pttl_never_increases_within_a_window(
    run: Runner[Any], raw: redis.Redis, amounts: list[int], windows: st.DataObject
) -> None:
    """The first increment arms 0 < PTTL <= window; later ones, whatever window they pass,
    never raise the PTTL."""
    key = fresh_key()
    first_window = windows.draw(st.integers(5, 3600))
    later_windows = [windows.draw(st.integers(1, 7200)) for _ in amounts]

    async def body(backend: RedisBackend) -> list[int]:
        counter = backend.rate_limiter()
        await counter.increment(key, amounts[0], first_window)
        pttls = [raw.pttl(f"aa:ratelimit:{key}")]
        for amount, window in zip(amounts[1:], later_windows, strict=False):
            await counter.increment(key, amount, window)
            pttls.append(raw.pttl(f"aa:ratelimit:{key}"))
        return pttls

    pttls = run(body)
    assert 0 < pttls[0] <= first_window * 1000
    assert all(later <= earlier for earlier, later in itertools.pairwise(pttls))


@settings(max_examples=3, deadline=None)
@given(before=st.lists(amounts, min_size=1, max_size=3), after=amounts)
def test_a_new_window_starts_at_its_own_amount(
    run: Runner[Any], before: list[int], after: int
) -> None:
    """Once a 1 s window has passed, the next increment returns just its own amount."""
    key = fresh_key()

    async def body(backend: RedisBackend) -> int:
        for amount in before:
            await backend.rate_limiter().increment(key, amount, 1)
        await asyncio.sleep(1.1)
        return await backend.rate_limiter().increment(key, after, 1)

    assert run(body) == after


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


policies = st.builds(
    PolicyDocument,
    version=st.integers(0, 2**32),
    name=st.text(max_size=30),
    rules=st.lists(
        st.builds(PolicyRule, st.text(max_size=20), st.sampled_from(PolicyDecision)), max_size=4
    ),
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

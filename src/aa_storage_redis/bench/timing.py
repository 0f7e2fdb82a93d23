"""How ``aa-storage bench`` times a case: a budget of calls or seconds, callers
calling in a loop until it is spent, and nearest-rank percentiles of their
latencies.

Every case times its calls with :func:`timed`, so the figures of every case
mean the same thing.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Coroutine, Iterable
from typing import Any

import attrs

from aa_storage_redis.bench.operations import Call, Caller, Operation, Subject
from aa_storage_redis.bench.report import MIN_P99_SAMPLES, Measurement


@attrs.frozen
class Budget:
    """How long each case runs: ``requests`` calls in all when set, else ``seconds``."""

    seconds: float
    requests: int | None = None

    def allowance(self) -> Callable[[], bool]:
        """A fresh check for one case, asked before each call: may it go ahead?"""
        if self.requests is None:
            deadline = time.perf_counter() + self.seconds
            return lambda: time.perf_counter() < deadline
        left = self.requests

        def another() -> bool:
            nonlocal left
            left -= 1
            return left >= 0

        return another

    def __str__(self) -> str:
        return f"{self.requests} calls" if self.requests is not None else f"{self.seconds:g} s"


WARM_UP_CALLS = 2
"""Untimed calls per caller before a case is timed: connections open, scripts cached."""


async def warm(call: Call, subject: Subject, callers: list[Caller]) -> None:
    """Each caller makes ``call`` :data:`WARM_UP_CALLS` times, all at once."""

    async def warm_one(caller: Caller) -> None:
        for _ in range(WARM_UP_CALLS):
            await call(subject, caller)

    await together(warm_one(caller) for caller in callers)


async def ready(
    operation: Operation, call: Call, subject: Subject, callers: int, made: list[Caller]
) -> list[Caller]:
    """``callers`` new callers (added to ``made``), each with what ``call`` reads
    written by ``operation.prepare``, and ``call`` warmed up."""
    new = [Caller.new() for _ in range(callers)]
    made.extend(new)

    async def prepare(caller: Caller) -> None:
        await operation.prepare(subject, caller)

    await together(prepare(caller) for caller in new)
    await warm(call, subject, new)
    return new


async def timed(call: Call, subject: Subject, callers: list[Caller], budget: Budget) -> Measurement:
    """Each caller makes ``call`` again and again, all at once, until ``budget`` is spent;
    their throughput together, the percentiles of every call's latency, and the
    process's CPU time per call (the event loop's work for the calls, the client's
    parsing included, and anything else the process ran meanwhile)."""
    allowed = budget.allowance()
    latencies: list[float] = []

    async def calls(caller: Caller) -> None:
        while allowed():
            started = time.perf_counter()
            await call(subject, caller)
            latencies.append(time.perf_counter() - started)

    cpu, started = time.process_time(), time.perf_counter()
    await together(calls(caller) for caller in callers)
    cpu, elapsed = time.process_time() - cpu, time.perf_counter() - started
    latencies.sort()
    return Measurement(
        ops_per_sec=len(latencies) / elapsed,
        p50_us=percentile(latencies, 0.50) * 1e6,
        p99_us=p99_us(latencies),
        cpu_us=cpu / max(len(latencies), 1) * 1e6,
        calls=len(latencies),
    )


def percentile(ordered: list[float], fraction: float) -> float:
    """The nearest-rank percentile of a sorted, non-empty list."""
    return ordered[max(math.ceil(fraction * len(ordered)) - 1, 0)]


def p99_us(ordered: list[float]) -> float | None:
    """The p99 of a sorted list of seconds, in microseconds; None below
    ``MIN_P99_SAMPLES``, where it would only be the slowest sample."""
    if len(ordered) < MIN_P99_SAMPLES:
        return None
    return percentile(ordered, 0.99) * 1e6


async def together(coroutines: Iterable[Coroutine[Any, Any, Any]]) -> None:
    """Run them concurrently; the first failure cancels the others and is raised."""
    try:
        async with asyncio.TaskGroup() as group:
            for coroutine in coroutines:
                group.create_task(coroutine)
    except ExceptionGroup as failures:
        raise failures.exceptions[0] from None

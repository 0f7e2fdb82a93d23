"""How ``aa-storage bench --scale`` grows the number of processes on one Redis, as a
gateway's workers do: the throughput of 1, 2, 4, … processes together.

Each process is started with ``spawn``, opens its own backend, readies its
callers (their counter and policy written, each call made once), and waits at
a barrier with the others and this one, so that all start together. Its
callers then make ``increment`` and ``get_policy`` calls in turns until the
budget (per process) is spent, and it sends back its calls' latencies and when
it began and ended on the machine's monotonic clock, which all processes share.
Meanwhile this process reads the server's ``connected_clients``.

The callers are made here, so that their keys are deleted here at the end,
also when a process had to be killed (Ctrl-C, SIGTERM, a failure).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import multiprocessing
import queue
import signal
import threading
import time
from collections.abc import Iterator, Sequence
from multiprocessing.synchronize import Barrier
from typing import Any

import attrs
import redis.asyncio as aioredis
from redis import exceptions as redis_errors

from aa_storage import StorageError
from aa_storage_redis.backend import RedisBackend
from aa_storage_redis.bench.operations import (
    POLICY,
    POLICY_TTL_SECS,
    WINDOW_SECS,
    Caller,
    Subject,
    delete_keys,
    raw_client,
)
from aa_storage_redis.bench.report import MIN_P99_SAMPLES
from aa_storage_redis.bench.timing import Budget, p99_us, percentile, together
from aa_storage_redis.config import RedisStorageConfig
from aa_storage_redis.keys import KeySpace

SATURATION = 0.05
"""A step adding processes whose total throughput grows by no more than this fraction
marks the server's saturation."""
# Far above what starting the processes and a case take on a loaded machine.
_PATIENCE_SECS = 120.0
_POLL_SECS = 0.05
# How long a failed process may take to say why and end: a message and an exit.
_ANSWER_SECS = 10.0


@attrs.frozen
class ScalePoint:
    """What ``processes`` processes did together.

    ``total_ops_per_sec`` is every call over the span from the first process's
    start to the last one's end. Latencies are in microseconds over every
    process's calls (``p99_us`` is None below ``MIN_P99_SAMPLES`` calls).
    ``driver_connections`` is the mean of the processes' ``connections_opened``;
    ``server_connections`` the server's ``connected_clients`` at its highest
    while they ran, less before they started, per process: None when the
    server's ACL refuses ``INFO``.
    """

    processes: int
    calls: int
    total_ops_per_sec: float
    p50_us: float
    p99_us: float | None
    driver_connections: float
    server_connections: float | None

    @property
    def ops_per_process(self) -> float:
        return self.total_ops_per_sec / self.processes


@attrs.frozen
class _Share:
    """What one process sends back: its calls' latencies in seconds, when it began
    and ended on the monotonic clock, and its backend's ``connections_opened``."""

    latencies: list[float]
    began: float
    ended: float
    connections_opened: int


def process_counts(max_processes: int) -> list[int]:
    """1, 2, 4, … up to ``max_processes``, which ends the list also when it is no
    power of two."""
    counts = [1]
    while counts[-1] * 2 <= max_processes:
        counts.append(counts[-1] * 2)
    if counts[-1] != max_processes:
        counts.append(max_processes)
    return counts


def saturation(points: Sequence[ScalePoint]) -> ScalePoint | None:
    """The first point whose total is within ``SATURATION`` of the point before it
    (or below it): there, adding processes stopped adding throughput. None if every
    step added more."""
    for before, point in itertools.pairwise(points):
        if point.total_ops_per_sec <= before.total_ops_per_sec * (1 + SATURATION):
            return point
    return None


async def scale_point(
    config: RedisStorageConfig, processes: int, concurrency: int, budget: Budget
) -> ScalePoint:
    """Run ``processes`` processes of ``concurrency`` callers each on ``config``'s
    server, under ``config.key_prefix``; every key they make is deleted, however this
    ends. A process's failure is raised as a ``StorageError``."""
    groups = [[Caller.new() for _ in range(concurrency)] for _ in range(processes)]
    space = KeySpace(config.key_prefix)
    keys = [key for group in groups for caller in group for key in caller.keys(space)]
    try:
        async with raw_client(config, 1) as client:
            point = await _run(config, groups, budget, client)
    except BaseException:
        # The step's failure says more than the deletion's, which it may well cause.
        with contextlib.suppress(StorageError):
            await delete_keys(config, keys)
        raise
    await delete_keys(config, keys)
    return point


async def _run(
    config: RedisStorageConfig, groups: list[list[Caller]], budget: Budget, client: aioredis.Redis
) -> ScalePoint:
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(len(groups) + 1)  # this process is a party: it sees the start
    answers = context.Queue()
    baseline = await _connected_clients(client)
    workers = [
        context.Process(target=_worker, args=(config, group, budget, barrier, answers), daemon=True)
        for group in groups
    ]
    for worker in workers:
        worker.start()
    shares: list[_Share] = []
    try:
        start = asyncio.create_task(asyncio.to_thread(barrier.wait, _PATIENCE_SECS))
        # Its failure is awaited below, unless another failure came first.
        start.add_done_callback(lambda task: task.cancelled() or task.exception())
        while not start.done():
            shares.extend(_answers(answers, workers))
            await asyncio.wait({start}, timeout=_POLL_SECS)
        await start  # a broken barrier says why below, from a process's answer
        peak = baseline
        deadline = time.monotonic() + _PATIENCE_SECS
        while len(shares) < len(workers):
            peak = _higher(peak, await _connected_clients(client))
            shares.extend(_answers(answers, workers))
            if time.monotonic() > deadline:
                raise StorageError(f"a --scale step took over {_PATIENCE_SECS:g}s")
            await asyncio.sleep(_POLL_SECS)
    except threading.BrokenBarrierError:
        # A process failed before the start and broke the barrier; the others then
        # fail at it too. Once all have ended, the first one's answer says why.
        for worker in workers:
            await asyncio.to_thread(worker.join, _ANSWER_SECS)
        raise StorageError(f"a --scale step failed: {_first_failure(answers)}") from None
    except BaseException:
        # Interrupted or failed: the other processes' answers no longer matter.
        barrier.abort()  # frees the thread waiting at it, or asyncio.run would wait for it
        for worker in workers:
            worker.kill()
        raise
    finally:
        for worker in workers:
            await asyncio.to_thread(worker.join, _PATIENCE_SECS)
            if worker.is_alive():
                worker.kill()
    return _point(shares, baseline, peak)


def _answers(answers: Any, workers: list[Any]) -> Iterator[_Share]:
    """The answers that have come, without waiting; a process's failure as a
    ``StorageError``."""
    while True:
        try:
            answer: _Share | str = answers.get_nowait()
        except queue.Empty:
            if any(worker.exitcode not in (None, 0) for worker in workers):
                raise StorageError("a --scale process died; see its error above") from None
            return
        if isinstance(answer, str):
            raise StorageError(f"a --scale process failed: {answer}")
        yield answer


def _first_failure(answers: Any) -> str:
    """The failure that broke the barrier, rather than those it caused."""
    failures = []
    with contextlib.suppress(queue.Empty):
        while True:
            answer = answers.get(timeout=_POLL_SECS)
            if isinstance(answer, str):
                failures.append(answer)
    caused = threading.BrokenBarrierError.__name__
    first = [failure for failure in failures if not failure.startswith(caused)]
    fallback = f"the processes were not all ready within {_PATIENCE_SECS:g}s"
    return (first or failures or [fallback])[0]


def _point(shares: list[_Share], baseline: int | None, peak: int | None) -> ScalePoint:
    processes = len(shares)
    latencies = sorted(latency for share in shares for latency in share.latencies)
    span = max(share.ended for share in shares) - min(share.began for share in shares)
    server = None if baseline is None or peak is None else (peak - baseline) / processes
    return ScalePoint(
        processes=processes,
        calls=len(latencies),
        total_ops_per_sec=len(latencies) / span if span > 0 else 0.0,
        p50_us=percentile(latencies, 0.50) * 1e6 if latencies else 0.0,
        p99_us=p99_us(latencies),
        driver_connections=sum(share.connections_opened for share in shares) / processes,
        server_connections=server,
    )


def _higher(peak: int | None, seen: int | None) -> int | None:
    return None if peak is None or seen is None else max(peak, seen)


async def _connected_clients(client: aioredis.Redis) -> int | None:
    """The server's ``connected_clients``; None when the ACL refuses ``INFO``."""
    try:
        info = await client.info("clients")
    except redis_errors.NoPermissionError:
        return None
    return int(info["connected_clients"])


def _worker(
    config: RedisStorageConfig,
    callers: list[Caller],
    budget: Budget,
    barrier: Barrier,
    answers: Any,
) -> None:
    # Ctrl-C reaches the whole process group: the parent stops this one, and deletes the keys.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        share = asyncio.run(_callers(config, callers, budget, barrier))
    except (StorageError, threading.BrokenBarrierError) as exc:
        answers.put(f"{type(exc).__name__}: {exc}")
        # Then break the barrier, so that the others do not wait for this one until
        # they give up; a no-op if it is broken already.
        barrier.abort()
    else:
        answers.put(share)


async def _callers(
    config: RedisStorageConfig, callers: list[Caller], budget: Budget, barrier: Barrier
) -> _Share:
    backend = RedisBackend.connect(config)
    try:
        subject = Subject.over(backend)
        await together(_ready(subject, caller) for caller in callers)
        await asyncio.to_thread(barrier.wait, _PATIENCE_SECS)
        allowed = budget.allowance()
        latencies: list[float] = []

        async def calls(caller: Caller) -> None:
            while True:
                for call in (_increment, _get_policy):
                    if not allowed():
                        return
                    started = time.perf_counter()
                    await call(subject, caller)
                    latencies.append(time.perf_counter() - started)

        began = time.monotonic()  # CLOCK_MONOTONIC: every process's clock
        await together(calls(caller) for caller in callers)
        ended = time.monotonic()
        return _Share(latencies, began, ended, backend.stats().connections_opened)
    finally:
        await backend.aclose()


async def _ready(subject: Subject, caller: Caller) -> None:
    """The caller's policy written and each call made once: connections open, the
    script cached, before the start."""
    await subject.policies.cache_policy(caller.agent, POLICY, POLICY_TTL_SECS)
    await _increment(subject, caller)
    await _get_policy(subject, caller)


async def _increment(subject: Subject, caller: Caller) -> None:
    await subject.rate_limiter.increment(caller.counter, 1, WINDOW_SECS)


async def _get_policy(subject: Subject, caller: Caller) -> None:
    await subject.policies.get_policy(caller.agent)


def scale_lines(points: Sequence[ScalePoint], concurrency: int, budget: Budget) -> Iterator[str]:
    """The table of ``points``, then the saturation line."""
    yield (
        f"scale: processes of {concurrency} callers each, increment and get_policy in turns, "
        f"{budget} per process, all released together:"
    )
    yield (
        f"  {'processes':>9}{'total ops/s':>13}{'per process':>13}{'p50 us':>9}{'p99 us':>9}"
        f"{'driver conns':>14}{'server conns':>14}"
    )
    for point in points:
        p99 = f"{point.p99_us:>9,.0f}" if point.p99_us is not None else f"{'-':>9}"
        server = point.server_connections
        yield (
            f"  {point.processes:>9}{point.total_ops_per_sec:>13,.0f}"
            f"{point.ops_per_process:>13,.0f}{point.p50_us:>9,.0f}{p99}"
            f"{point.driver_connections:>14.1f}"
            f"{(f'{server:.1f}' if server is not None else '-'):>14}"
        )
    yield (
        "  (conns: per process, the driver's connections_opened, and the server's "
        "connected_clients while they ran less before)"
    )
    if any(point.server_connections is None for point in points):
        yield "  (server conns is - where the ACL refuses INFO)"
    if any(point.p99_us is None for point in points):
        yield f"  (p99 us is - below {MIN_P99_SAMPLES} calls)"
    saturated = saturation(points)
    if saturated is None:
        yield (
            f"  saturation: not reached up to {as_processes(points[-1].processes)} "
            f"(each step added more than {SATURATION:.0%})"
        )
    else:
        before = points[points.index(saturated) - 1]
        yield (
            f"  saturation: at {as_processes(saturated.processes)}, whose total is no more than "
            f"{SATURATION:.0%} above that of {as_processes(before.processes)}: adding processes "
            "stopped adding throughput"
        )


def as_processes(count: int) -> str:
    """``1 process``, ``2 processes``, …"""
    return f"{count} process" if count == 1 else f"{count} processes"

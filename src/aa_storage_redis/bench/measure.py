"""Timing the cases of ``aa-storage bench``.

Raw redis-py gets as many connections as the driver's ``pool_size``
sequentially, and one per caller concurrently. Every caller has keys of its
own under ``<key_prefix>bench-<random>:``, and every key the run made is
deleted at the end, also after Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import signal
import time
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable
from typing import TYPE_CHECKING, Any

import attrs
import redis.asyncio as aioredis
from redis import exceptions as redis_errors

from aa_storage.redaction import redact_url
from aa_storage_redis import ExecutorStats
from aa_storage_redis.backend import RedisBackend
from aa_storage_redis.bench.operations import OPERATIONS, Call, Caller, Operation, Subject
from aa_storage_redis.bench.report import (
    MIN_P99_SAMPLES,
    Measurement,
    Progress,
    Propagation,
    Row,
    mode_of,
)
from aa_storage_redis.config import RedisStorageConfig
from aa_storage_redis.errors import translate

if TYPE_CHECKING:
    from aa_storage_redis.bench.missing_replica import MissingReplica

# Untimed calls per caller before a case is timed: connections open, scripts cached.
WARM_UP_CALLS = 2
_DELETE_BATCH = 500


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


async def run(
    config: RedisStorageConfig, concurrency: int, budget: Budget, progress: Progress
) -> tuple[list[Row], ExecutorStats, Propagation, MissingReplica]:
    """Measure every operation, sequentially and then with ``concurrency`` callers,
    then the near-cache, then reads while a replica is missing; returns the rows in
    that order, the driver's stats over the operations (and the near-cache's
    counters), how fast invalidations reach the near-cache, and the reads' figures."""
    # These cases time their calls with this module's helpers.
    from aa_storage_redis.bench.missing_replica import missing_replica_case
    from aa_storage_redis.bench.near import near_cache_cases

    config = attrs.evolve(config, key_prefix=f"{config.key_prefix}bench-{uuid.uuid4().hex[:12]}:")
    backend = RedisBackend.connect(config)
    made: list[Caller] = []
    loop = asyncio.get_running_loop()
    this_run = asyncio.current_task()
    assert this_run is not None, "a coroutine awaited by asyncio.run runs in a task"
    # SIGTERM stops the run as Ctrl-C does: this task is cancelled, and the
    # cleanup below still runs.
    loop.add_signal_handler(signal.SIGTERM, this_run.cancel)
    try:
        rows = [
            await _case(backend, operation, callers, budget, made, progress)
            for operation in OPERATIONS
            for callers in (1, concurrency)
        ]
        stats = backend.stats()
        near_hit, propagation, near = await near_cache_cases(config, budget, made, progress)
        # The near-cache ran on a backend of its own: its counters join the run's.
        stats = attrs.evolve(
            stats,
            near_cache_hits=near.near_cache_hits,
            near_cache_misses=near.near_cache_misses,
            near_cache_flushes=near.near_cache_flushes,
        )
        missing = await missing_replica_case(config, concurrency, budget, progress)
        return [*rows, near_hit], stats, propagation, missing
    finally:
        try:
            await _delete_keys(backend, made)
        finally:
            await backend.aclose()
            loop.remove_signal_handler(signal.SIGTERM)


async def _case(
    backend: RedisBackend,
    operation: Operation,
    callers: int,
    budget: Budget,
    made: list[Caller],
    progress: Progress,
) -> Row:
    mode = mode_of(callers)
    progress.start(f"{operation.name}, {mode}, driver")
    subject = Subject.over(backend)
    ready = await _ready(operation, operation.driver, subject, callers, made)
    before = backend.stats()
    driver = await timed(operation.driver, subject, ready, budget)
    after = backend.stats()
    progress.end(driver)
    progress.start(f"{operation.name}, {mode}, raw redis-py")
    connections = backend.pool.config.pool_size if callers == 1 else callers
    async with raw_client(backend.pool.config, connections) as raw:
        subject = Subject.over(backend, raw)
        ready = await _ready(operation, operation.raw, subject, callers, made)
        measured = await timed(operation.raw, subject, ready, budget)
    progress.end(measured)
    writes = after.socket_writes - before.socket_writes
    sent = after.commands_sent - before.commands_sent
    return Row(operation.name, callers, driver, measured, sent / max(writes, 1))


async def _ready(
    operation: Operation, call: Call, subject: Subject, callers: int, made: list[Caller]
) -> list[Caller]:
    """New callers, their data written and ``call`` warmed up."""
    ready = [Caller.new() for _ in range(callers)]
    made.extend(ready)

    async def prepare(caller: Caller) -> None:
        await operation.prepare(subject, caller)
        for _ in range(WARM_UP_CALLS):
            await call(subject, caller)

    await _together(prepare(caller) for caller in ready)
    return ready


async def timed(call: Call, subject: Subject, callers: list[Caller], budget: Budget) -> Measurement:
    allowed = budget.allowance()
    latencies: list[float] = []

    async def calls(caller: Caller) -> None:
        while allowed():
            started = time.perf_counter()
            await call(subject, caller)
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await _together(calls(caller) for caller in callers)
    elapsed = time.perf_counter() - started
    latencies.sort()
    return Measurement(
        ops_per_sec=len(latencies) / elapsed,
        p50_us=percentile(latencies, 0.50) * 1e6,
        p99_us=p99_us(latencies),
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


async def _together(coroutines: Iterable[Coroutine[Any, Any, Any]]) -> None:
    """Run them concurrently; the first failure cancels the others and is raised."""
    try:
        async with asyncio.TaskGroup() as group:
            for coroutine in coroutines:
                group.create_task(coroutine)
    except ExceptionGroup as failures:
        raise failures.exceptions[0] from None


@contextlib.asynccontextmanager
async def raw_client(config: RedisStorageConfig, connections: int) -> AsyncIterator[aioredis.Redis]:
    """A raw redis-py client with ``connections`` connections at most; its
    failures become the driver's errors, so they read the same."""
    options: dict[str, Any] = {}
    if config.uses_tls:
        options.update(
            ssl_ca_certs=config.ca_file, ssl_certfile=config.cert_file, ssl_keyfile=config.key_file
        )
    pool = aioredis.BlockingConnectionPool.from_url(
        config.effective_url,
        max_connections=connections,
        socket_connect_timeout=config.connect_timeout,
        socket_timeout=config.socket_timeout,
        **options,
    )
    client = aioredis.Redis.from_pool(pool)
    try:
        yield client
    except redis_errors.RedisError as exc:
        password = pool.connection_kwargs.get("password")
        raise translate(
            exc,
            server=redact_url(config.effective_url),
            secret=password if isinstance(password, str) else None,
        ) from None
    finally:
        await client.aclose()


async def _delete_keys(backend: RedisBackend, callers: list[Caller]) -> None:
    """Delete every key the callers' calls may have created."""
    keys = [key for caller in callers for key in caller.keys(backend.keys)]
    async with raw_client(backend.pool.config, 1) as client:
        for start in range(0, len(keys), _DELETE_BATCH):
            await client.delete(*keys[start : start + _DELETE_BATCH])

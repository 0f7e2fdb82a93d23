"""The run of ``aa-storage bench``, case by case, and what it prints.

First each operation of :data:`~aa_storage_redis.bench.operations.OPERATIONS`,
sequentially and then with ``concurrency`` callers, through the driver and
through raw redis-py; then the near-cache's cases (``near.py``), reads while a
replica is missing (``missing_replica.py``), the stampede (``stampede.py``) and
what telemetry costs (``telemetry_cost.py``).
Every case is timed by ``timing.py``, and ``report.py`` prints the results.

Raw redis-py gets as many connections as the driver's ``pool_size``
sequentially, and one per caller concurrently. Every caller has keys of its
own under ``<key_prefix>bench-<random>:``, and every key the run made is
deleted at the end, also after Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import TextIO

import attrs

from aa_storage.redaction import redact_url
from aa_storage_redis.backend import RedisBackend
from aa_storage_redis.bench.missing_replica import MissingReplica, missing_replica_case
from aa_storage_redis.bench.near import near_cache_cases
from aa_storage_redis.bench.operations import (
    OPERATIONS,
    Caller,
    Operation,
    Subject,
    delete_made,
    raw_client,
)
from aa_storage_redis.bench.peers import compare_peers
from aa_storage_redis.bench.profile import profile
from aa_storage_redis.bench.report import (
    Progress,
    Propagation,
    Row,
    action_lines,
    mode_of,
    p99_note,
    propagation_lines,
    stats_lines,
    table,
)
from aa_storage_redis.bench.scaling import ScaleOptions, run_scaling
from aa_storage_redis.bench.stampede import CALLERS, PROCESSES, stampede
from aa_storage_redis.bench.stopping import sigterm_cancels_this_task
from aa_storage_redis.bench.telemetry_cost import telemetry_cost
from aa_storage_redis.bench.timing import Budget, ready, timed
from aa_storage_redis.bench.uvloop_cases import uvloop_cases, uvloop_installed, uvloop_lines
from aa_storage_redis.config import RedisStorageConfig
from aa_storage_redis.stats import ExecutorStats

# Each operation in two modes on two sides, then the near-cache's hit on two sides
# and its propagation, then reads with a replica missing, with and without writers.
CASES = len(OPERATIONS) * 2 * 2 + 3 + 2


@attrs.frozen
class Extras:
    """What the run does after its cases, as its flags ask: ``peers`` (``--peers``),
    ``profiled`` (``--profile``), ``scale`` (``--scale``, with its options)."""

    peers: bool = False
    profiled: bool = False
    scale: ScaleOptions | None = None


NO_EXTRAS = Extras()


def measure(
    config: RedisStorageConfig,
    concurrency: int,
    budget: Budget,
    out: TextIO,
    err: TextIO,
    extras: Extras = NO_EXTRAS,
) -> int:
    """Run every case against ``config``'s server, saying on ``err`` which one runs,
    then write the table and the figures after it to ``out``; then what ``extras``
    asks for: the driver beside every installed peer (``peers.py``), where a call's
    CPU time goes (``profile.py``), the ``--scale`` part (``scaling.py``). Returns
    the exit status."""
    # Then, with uvloop installed, the driver's side of each operation's cases on it.
    cases = CASES + (len(OPERATIONS) * 2 if uvloop_installed() else 0)
    err.write(
        f"aa-storage bench: redis at {redact_url(config.effective_url)}, "
        f"pool_size={config.pool_size}; {cases} cases of {budget} each\n"
    )
    progress = Progress(err, cases)
    try:
        rows, stats, propagation, missing = asyncio.run(
            _cases(config, concurrency, budget, progress)
        )
        on_uvloop = uvloop_cases(config, concurrency, budget, progress)
    finally:
        progress.stop()
    err.write(f"aa-storage bench: stampede, {CALLERS} callers in {PROCESSES} processes ...\n")
    crowd = stampede(config)
    err.write("aa-storage bench: what telemetry costs, in a process of its own ...\n")
    cost = telemetry_cost(config, concurrency, budget)
    tail = (
        *propagation_lines(propagation),
        "",
        *missing.lines(),
        "",
        crowd.line(),
        "",
        *cost.lines(),
        "",
        *stats_lines(stats),
    )
    head = (*table(rows), "", *p99_note(rows), *action_lines(rows))
    for line in (*head, *uvloop_lines(rows, on_uvloop), "", *tail):
        out.write(line + "\n")
    if extras.peers:
        compare_peers(config, concurrency, budget, out, err)
    if extras.profiled:
        err.write("aa-storage bench: increment under cProfile ...\n")
        out.write("\n".join(["", *profile(config, concurrency, budget).lines(concurrency)]) + "\n")
    if extras.scale is not None:
        return run_scaling(config, concurrency, budget, extras.scale, out, err)
    return 0


async def _cases(
    config: RedisStorageConfig, concurrency: int, budget: Budget, progress: Progress
) -> tuple[list[Row], ExecutorStats, Propagation, MissingReplica]:
    """Measure every operation, sequentially and then with ``concurrency`` callers,
    then the near-cache, then reads while a replica is missing; returns the rows in
    that order, the driver's stats over the operations (and the near-cache's
    counters), how fast invalidations reach the near-cache, and the reads' figures."""
    config = attrs.evolve(config, key_prefix=f"{config.key_prefix}bench-{uuid.uuid4().hex[:12]}:")
    backend = RedisBackend.connect(config)
    made: list[Caller] = []
    with sigterm_cancels_this_task():
        try:
            return await _all_cases(config, backend, concurrency, budget, made, progress)
        finally:
            try:
                await delete_made(backend, made)
            finally:
                await backend.aclose()


async def _all_cases(
    config: RedisStorageConfig,
    backend: RedisBackend,
    concurrency: int,
    budget: Budget,
    made: list[Caller],
    progress: Progress,
) -> tuple[list[Row], ExecutorStats, Propagation, MissingReplica]:
    """The cases of :func:`_cases`, each caller it makes added to ``made``."""
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
    callers_ready = await ready(operation, operation.driver, subject, callers, made)
    before = backend.stats()
    driver = await timed(operation.driver, subject, callers_ready, budget)
    after = backend.stats()
    progress.end(driver)
    progress.start(f"{operation.name}, {mode}, raw redis-py")
    pool_size = backend.pool.config.pool_size
    # One connection per command in flight: one caller, or each of many, may send
    # several at once (a gateway action), which redis-py cannot put on one connection.
    connections = (
        max(pool_size, operation.commands) if callers == 1 else callers * operation.commands
    )
    async with raw_client(backend.pool.config, connections) as raw:
        subject = Subject.over(backend, raw)
        callers_ready = await ready(operation, operation.raw, subject, callers, made)
        measured = await timed(operation.raw, subject, callers_ready, budget)
    progress.end(measured)
    writes = after.socket_writes - before.socket_writes
    sent = after.commands_sent - before.commands_sent
    return Row(operation.name, callers, driver, measured, sent / max(writes, 1))

"""The driver's cases of ``aa-storage bench`` again on uvloop, when it is installed.

Each operation, sequentially and with the run's callers, through the driver only,
on a backend of its own in a uvloop event loop: the same calls, keys of their own,
deleted at the end. The table after the main one sets each beside asyncio's.
"""

from __future__ import annotations

import asyncio
import importlib.util
import uuid
from collections.abc import Callable, Coroutine, Iterator, Sequence
from typing import Any, TypeVar

import attrs

from aa_storage_redis.backend import RedisBackend
from aa_storage_redis.bench.operations import OPERATIONS, Caller, Subject, delete_made
from aa_storage_redis.bench.report import Measurement, Progress, Row, mode_of
from aa_storage_redis.bench.timing import Budget, ready, timed
from aa_storage_redis.config import RedisStorageConfig

T = TypeVar("T")


def uvloop_installed() -> bool:
    return importlib.util.find_spec("uvloop") is not None


def run_on_uvloop(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run ``coroutine`` to its end in a new uvloop event loop (uvloop must be installed)."""
    import uvloop

    loop_factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        return runner.run(coroutine)


@attrs.frozen
class LoopRow:
    """One driver case on uvloop."""

    operation: str
    callers: int
    measured: Measurement


def uvloop_cases(
    config: RedisStorageConfig, concurrency: int, budget: Budget, progress: Progress
) -> list[LoopRow]:
    """Every operation's driver cases on a uvloop loop; ``[]`` without uvloop."""
    if not uvloop_installed():
        return []
    return run_on_uvloop(_cases(config, concurrency, budget, progress))


async def _cases(
    config: RedisStorageConfig, concurrency: int, budget: Budget, progress: Progress
) -> list[LoopRow]:
    config = attrs.evolve(config, key_prefix=f"{config.key_prefix}bench-{uuid.uuid4().hex[:12]}:")
    backend = RedisBackend.connect(config)
    made: list[Caller] = []
    try:
        subject = Subject.over(backend)
        found = []
        for operation in OPERATIONS:
            for callers in (1, concurrency):
                progress.start(f"{operation.name}, {mode_of(callers)}, driver on uvloop")
                new = await ready(operation, operation.driver, subject, callers, made)
                measured = await timed(operation.driver, subject, new, budget)
                progress.end(measured)
                found.append(LoopRow(operation.name, callers, measured))
        return found
    finally:
        try:
            await delete_made(backend, made)
        finally:
            await backend.aclose()


def uvloop_lines(rows: Sequence[Row], on_uvloop: Sequence[LoopRow]) -> Iterator[str]:
    """The uvloop table, each case beside its asyncio row; or why there is none."""
    if not on_uvloop:
        yield (
            "uvloop is not installed (pip install 'aa-storage[uvloop]'): the driver ran "
            "on asyncio only"
        )
        return
    on_asyncio = {(row.operation, row.callers): row.driver for row in rows}
    yield "the driver on uvloop (the same cases; asyncio's figures are the table's):"
    yield (
        f"{'operation':<16}{'mode':<12}{'uvloop ops/s':>13}{'p50 us':>9}{'cpu us':>8}"
        f"{'asyncio cpu us':>15}{'vs asyncio':>12}"
    )
    for row in on_uvloop:
        asyncio_side = on_asyncio[(row.operation, row.callers)]
        yield (
            f"{row.operation:<16}{mode_of(row.callers):<12}"
            f"{row.measured.ops_per_sec:>13,.0f}{row.measured.p50_us:>9.0f}"
            f"{row.measured.cpu_us:>8.1f}{asyncio_side.cpu_us:>15.1f}"
            f"{row.measured.ops_per_sec / asyncio_side.ops_per_sec:>11.2f}x"
        )

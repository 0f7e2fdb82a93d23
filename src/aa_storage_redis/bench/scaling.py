"""The ``--scale`` part of ``aa-storage bench``, after the rest of the run: processes
added until the server saturates (``scale.py``), the near-cache's memory per
10,000 policies (``near_memory.py``), and optionally their plot (``plot.py``).

Every key it makes is under ``<key_prefix>bench-<random>:`` and deleted at the
end, also after Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import TextIO

import attrs

from aa_storage_redis.bench.near_memory import POLICIES, NearMemory, near_memory
from aa_storage_redis.bench.plot import PlotError, write_plot
from aa_storage_redis.bench.report import Progress
from aa_storage_redis.bench.scale import (
    ScalePoint,
    as_processes,
    process_counts,
    scale_lines,
    scale_point,
)
from aa_storage_redis.bench.stopping import sigterm_cancels_this_task
from aa_storage_redis.bench.timing import Budget
from aa_storage_redis.config import RedisStorageConfig

MAX_PROCESSES = 8


@attrs.frozen
class ScaleOptions:
    """What ``--scale`` was asked for: up to ``max_processes`` processes, and where to
    write the plot (no plot when None)."""

    max_processes: int = MAX_PROCESSES
    plot: str | None = None


def run_scaling(
    config: RedisStorageConfig,
    concurrency: int,
    budget: Budget,
    options: ScaleOptions,
    out: TextIO,
    err: TextIO,
) -> int:
    """Measure, then write the lines to ``out`` and the plot to its file; progress and
    a failure to write the plot go to ``err``. Returns the exit status: 1 when the plot
    could not be written, else 0."""
    out.flush()  # the lines before this part show while it runs
    points, memory = asyncio.run(_measure(config, concurrency, budget, options, err))
    for line in ("", *scale_lines(points, concurrency, budget), "", *memory.lines()):
        out.write(line + "\n")
    if options.plot is None:
        return 0
    try:
        write_plot(points, options.plot)
    except PlotError as exc:
        err.write(f"aa-storage bench: {exc}\n")
        return 1
    out.write(f"scale plot: {options.plot}\n")
    return 0


async def _measure(
    config: RedisStorageConfig,
    concurrency: int,
    budget: Budget,
    options: ScaleOptions,
    err: TextIO,
) -> tuple[list[ScalePoint], NearMemory]:
    config = attrs.evolve(config, key_prefix=f"{config.key_prefix}bench-{uuid.uuid4().hex[:12]}:")
    counts = process_counts(options.max_processes)
    progress = Progress(err, len(counts) + 1)
    with sigterm_cancels_this_task():
        try:
            points = []
            for processes in counts:
                progress.start(f"scale, {as_processes(processes)} of {concurrency} callers")
                point = await scale_point(config, processes, concurrency, budget)
                progress.finish(f"{point.total_ops_per_sec:,.0f} ops/s")
                points.append(point)
            progress.start(f"near-cache memory, {POLICIES:,} policies")
            memory = await near_memory(config)
            progress.finish(f"{memory.bytes_per_policy:,.0f} bytes per policy")
            return points, memory
        finally:
            progress.stop()

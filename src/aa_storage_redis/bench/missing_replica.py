"""The bench's case of a replica missing: how long other callers' reads take while
writes wait on ``WAIT`` for a replica that is not there.

The backend asks for one replica more than the server has, so every write waits
``wait_timeout`` and fails unconfirmed. Reads on the same backend are timed with
those writers running, and without them, side by side.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator

import attrs

from aa_storage import BackendError
from aa_storage_redis.backend import RedisBackend
from aa_storage_redis.bench.operations import Caller, Subject
from aa_storage_redis.bench.report import Measurement, Progress
from aa_storage_redis.bench.timing import Budget, timed
from aa_storage_redis.config import RedisStorageConfig

WRITERS = 4


@attrs.frozen
class MissingReplica:
    """Reads timed with and without writers waiting on a missing replica."""

    wait_replicas: int
    wait_timeout: float
    readers: int
    alone: Measurement
    beside_writers: Measurement
    failed_reads: int
    unconfirmed_writes: int

    def lines(self) -> Iterator[str]:
        yield (
            f"reads while {WRITERS} writers wait for a replica that is missing "
            f"(wait_replicas={self.wait_replicas}, wait_timeout={self.wait_timeout:g} s), "
            f"{self.readers} readers:"
        )
        for label, measured in (
            ("beside the writers", self.beside_writers),
            ("without them", self.alone),
        ):
            p99 = f"{measured.p99_us:,.0f} us" if measured.p99_us is not None else "-"
            yield f"  {label}: p50 {measured.p50_us:,.0f} us, p99 {p99}"
        yield (
            f"  reads failed: {self.failed_reads}; writes unconfirmed, as expected: "
            f"{self.unconfirmed_writes}"
        )


async def missing_replica_case(
    config: RedisStorageConfig, readers: int, budget: Budget, progress: Progress
) -> MissingReplica:
    """Time ``readers`` callers reading counters, without and then beside writers whose
    every write waits for a missing replica."""
    config = attrs.evolve(config, key_prefix=f"{config.key_prefix}bench-{uuid.uuid4().hex[:12]}:")
    # Without WAIT: it counts the replicas, and deletes the writers' counters after.
    plain = RedisBackend.connect(config)
    try:
        replicas = await _replicas(plain)
        wait_timeout = round(min(0.2, config.socket_timeout / 2), 3)
        waiting = attrs.evolve(config, wait_replicas=replicas + 1, wait_timeout=wait_timeout)
        return await _measure(RedisBackend.connect(waiting), readers, budget, progress)
    finally:
        try:
            for index in range(WRITERS):
                await plain.rate_limiter().reset(f"writer-{index}")
        finally:
            await plain.aclose()


async def _measure(
    backend: RedisBackend, readers: int, budget: Budget, progress: Progress
) -> MissingReplica:
    counter = backend.rate_limiter()
    writing = asyncio.Event()
    unconfirmed = 0

    async def writer(index: int) -> None:
        nonlocal unconfirmed
        while writing.is_set():
            try:
                await counter.increment(f"writer-{index}", 1, 60)
            except BackendError:
                unconfirmed += 1

    try:
        progress.start("reads, a replica missing, no writers")
        alone, _ = await _reads(backend, readers, budget)
        progress.end(alone)
        progress.start(f"reads, a replica missing, beside {WRITERS} writers")
        writing.set()
        writers = [asyncio.ensure_future(writer(index)) for index in range(WRITERS)]
        try:
            beside, failed = await _reads(backend, readers, budget)
        finally:
            writing.clear()
            await asyncio.gather(*writers)
        progress.end(beside)
    finally:
        await backend.aclose()
    config = backend.pool.config
    return MissingReplica(
        config.wait_replicas, config.wait_timeout, readers, alone, beside, failed, unconfirmed
    )


async def _reads(backend: RedisBackend, readers: int, budget: Budget) -> tuple[Measurement, int]:
    """Counter reads by ``readers`` callers within ``budget``, and how many failed."""
    failed = 0

    async def read(subject: Subject, caller: Caller) -> None:
        nonlocal failed
        try:
            await subject.rate_limiter.current(caller.counter)
        except BackendError:
            failed += 1

    callers = [Caller.new() for _ in range(readers)]
    measured = await timed(read, Subject.over(backend), callers, budget)
    return measured, failed


async def _replicas(backend: RedisBackend) -> int:
    """How many replicas the server has now (0 when INFO is denied)."""
    try:
        reply: bytes = await backend.pool.execute("INFO", "replication", key=None, read=True)
    except BackendError:
        return 0
    for line in reply.decode(errors="replace").splitlines():
        if line.startswith("connected_slaves:"):
            return int(line.split(":", 1)[1])
    return 0

"""The cases of ``aa-storage bench --peers``, round by round: each operation of
:data:`PEER_OPERATIONS`, sequentially and with ``concurrency`` callers, first through the
driver and then through each installed peer in turn, each side on callers of its own
whose data the driver wrote. Each side keeps its best round.

A peer's failure, whatever its kind, marks its cell and keeps its first reason, the
password hidden; the driver's is raised. Keys are made under
``<key_prefix>bench-<random>:`` and deleted at the end, also after Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable

import attrs

from aa_storage_redis.backend import RedisBackend
from aa_storage_redis.bench import peer_benchmark
from aa_storage_redis.bench.operations import (
    OPERATIONS,
    Caller,
    Operation,
    Subject,
    delete_made,
    raw_client,
)
from aa_storage_redis.bench.peer_clients import COMMANDS, PythonPeer
from aa_storage_redis.bench.peer_report import C_COLUMN, PeerRow
from aa_storage_redis.bench.report import Progress, mode_of
from aa_storage_redis.bench.stopping import sigterm_cancels_this_task
from aa_storage_redis.bench.timing import Budget, timed, together, warm
from aa_storage_redis.config import RedisStorageConfig
from aa_storage_redis.scripts import INCREMENT, SAVE_SESSION

PEER_OPERATIONS = tuple(operation for operation in OPERATIONS if operation.name in COMMANDS)
_REASON_CHARS = 200


async def run_rounds(
    config: RedisStorageConfig,
    concurrency: int,
    rounds: int,
    share: Budget,
    installed: list[tuple[PythonPeer, str]],
    benchmark: str | None,
    progress: Progress,
    loop: str = "",
) -> tuple[list[PeerRow], dict[str, str]]:
    """Every round of every case; the rows, and each failed peer's first reason.
    ``loop`` names the event loop in the progress lines when it is not asyncio's."""
    config = attrs.evolve(config, key_prefix=f"{config.key_prefix}bench-{uuid.uuid4().hex[:12]}:")
    backend = RedisBackend.connect(config)
    subject = Subject.over(backend)
    rows = {
        (operation.name, callers): PeerRow(operation.name, callers)
        for operation in PEER_OPERATIONS
        for callers in (1, concurrency)
    }
    sides = _Sides(backend, subject, installed, benchmark, rates={}, reasons={})
    made: list[Caller] = []
    with sigterm_cancels_this_task():
        try:
            async with raw_client(config, 1) as raw:
                for script in (INCREMENT, SAVE_SESSION):
                    await raw.script_load(script.body)
            for number in range(1, rounds + 1):
                for operation in PEER_OPERATIONS:
                    for callers in (1, concurrency):
                        await _case(
                            rows[operation.name, callers],
                            sides,
                            operation,
                            share,
                            made,
                            progress,
                            f"peers round {number}{loop and f' on {loop}'}, "
                            f"{operation.name}, {mode_of(callers)}",
                        )
            return list(rows.values()), sides.reasons
        finally:
            try:
                await delete_made(backend, made)
            finally:
                await backend.aclose()


@attrs.frozen
class _Sides:
    """What the run measures, and what it learns as it goes: redis-benchmark's last
    rate of each case, and each failed peer's first reason."""

    backend: RedisBackend
    subject: Subject
    installed: list[tuple[PythonPeer, str]]
    benchmark: str | None
    rates: dict[str, float]
    reasons: dict[str, str]


async def _case(
    row: PeerRow,
    sides: _Sides,
    operation: Operation,
    share: Budget,
    made: list[Caller],
    progress: Progress,
    label: str,
) -> None:
    """One round of one case: the driver, then each peer, each on callers of its own."""
    subject, callers = sides.subject, row.callers
    progress.start(f"{label}, driver")
    ready = await _prepared(operation, subject, callers, made)
    await warm(operation.driver, subject, ready)
    measured = await timed(operation.driver, subject, ready, share)
    row.driver = max(row.driver, measured.ops_per_sec)
    progress.end(measured)
    for peer, _ in sides.installed:
        progress.start(f"{label}, {peer.name}")
        if peer.name in row.failed:
            # Failing again would say nothing new, after its timeouts perhaps.
            progress.finish("skipped: it failed in an earlier round")
            continue
        ready = await _prepared(operation, subject, callers, made)
        try:
            async with peer.connect(sides.backend, callers) as calls:
                call = calls(operation)
                await warm(call, subject, ready)
                measured = await timed(call, subject, ready, share)
        except Exception as exc:  # the peer's own errors, whatever their kind
            _failed(row, peer.name, exc, sides, progress)
            continue
        row.keep(peer.name, measured.ops_per_sec)
        progress.end(measured)
    if sides.benchmark is not None:
        progress.start(f"{label}, {C_COLUMN}")
        if C_COLUMN in row.failed:
            progress.finish("skipped: it failed in an earlier round")
            return
        ready = await _prepared(operation, subject, 1, made, _fits_a_command_line)
        command = COMMANDS[operation.name](subject.keys, ready[0])
        try:
            rate = await peer_benchmark.case_rate(
                sides.benchmark,
                sides.backend.pool.config,
                command,
                callers,
                share,
                sides.rates,
                f"{operation.name} {callers}",
            )
        except peer_benchmark.BenchmarkFailed as exc:
            _failed(row, C_COLUMN, exc, sides, progress)
            return
        row.keep(C_COLUMN, rate)
        progress.finish(f"{rate:,.0f} ops/s")


def _fits_a_command_line(caller: Caller) -> bool:
    # A command line cannot hold a NUL byte, which a session's raw agent id may.
    return b"\0" not in caller.record.agent_id.bytes


async def _prepared(
    operation: Operation,
    subject: Subject,
    callers: int,
    made: list[Caller],
    fit: Callable[[Caller], bool] = lambda _: True,
) -> list[Caller]:
    """New callers that ``fit``, their data written by the driver."""
    ready = [_new_caller(fit) for _ in range(callers)]
    made.extend(ready)

    async def prepare(caller: Caller) -> None:
        await operation.prepare(subject, caller)

    await together(prepare(caller) for caller in ready)
    return ready


def _new_caller(fit: Callable[[Caller], bool]) -> Caller:
    caller = Caller.new()
    while not fit(caller):
        caller = Caller.new()
    return caller


def _failed(row: PeerRow, column: str, exc: Exception, sides: _Sides, progress: Progress) -> None:
    """Mark ``column`` failed in ``row``, keeping its first reason, the password hidden."""
    row.fail(column)
    said = str(exc).splitlines()[0] if str(exc) else ""
    password = sides.backend.pool.config.deployment.password
    if password:
        said = said.replace(password, "***")
    reason = f"{type(exc).__name__}: {said}" if said else type(exc).__name__
    reason = reason[:_REASON_CHARS]
    sides.reasons.setdefault(column, reason)
    progress.finish(f"failed: {reason}")

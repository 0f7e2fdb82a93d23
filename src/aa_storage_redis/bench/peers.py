"""``aa-storage bench --peers``: the driver beside every peer that is installed, on the
same server and the same workloads, in one run.

The peers are the Python clients of ``peer_clients.py`` (redis-py, coredis,
valkey-glide), each sending exactly the driver's command; the C limit,
``redis-benchmark`` (``peer_benchmark.py``); and the asyncio floor
(``peer_floor.py``), the least any asyncio client does for the same command.
``peer_cases.py`` runs the cases: each operation of :data:`PEER_OPERATIONS`,
sequentially and with ``concurrency`` callers, the driver first and then each peer
in turn. The whole sweep runs in two rounds of half the budget each (one round of
all of it when half would be too little to measure), and each side keeps its best
round, so that the drift of a shared machine falls on every side alike.
``peer_report.py`` makes the lines.

A peer that is not installed, or that fails, costs the run nothing: its cells
say so, and a line under the table says why. Failures of the driver itself are
raised, as in the rest of the bench. Keys are made under
``<key_prefix>bench-<random>:`` (a prefix of their own, apart from the main
run's) and deleted at the end, also after Ctrl-C or SIGTERM.

The modules, each importing only those listed after it: ``peers``,
``peer_cases``, ``peer_floor``, ``peer_benchmark``, ``peer_clients``, ``peer_report``.
"""

from __future__ import annotations

import asyncio
from typing import TextIO

from aa_storage_redis.bench import peer_benchmark
from aa_storage_redis.bench.peer_cases import PEER_OPERATIONS, run_rounds
from aa_storage_redis.bench.peer_clients import PYTHON_PEERS, PythonPeer
from aa_storage_redis.bench.peer_floor import FLOOR
from aa_storage_redis.bench.peer_report import C_COLUMN, Comparison, PeerRow, comparison_lines
from aa_storage_redis.bench.report import Progress
from aa_storage_redis.bench.timing import Budget
from aa_storage_redis.bench.uvloop_cases import run_on_uvloop, uvloop_installed
from aa_storage_redis.config import RedisStorageConfig
from aa_storage_redis.urls import STANDALONE

ROUNDS = 2
# The least budget a round gets; below twice this, one round gets it all.
MIN_ROUND_SECS = 0.25
MIN_ROUND_REQUESTS = 20


def rounds_of(budget: Budget) -> tuple[int, Budget]:
    """How many rounds the peers' cases run, and each round's budget."""
    if budget.requests is not None:
        half = budget.requests // ROUNDS
        return (ROUNDS, Budget(budget.seconds, half)) if half >= MIN_ROUND_REQUESTS else (1, budget)
    half_secs = budget.seconds / ROUNDS
    return (ROUNDS, Budget(half_secs)) if half_secs >= MIN_ROUND_SECS else (1, budget)


def compare_peers(
    config: RedisStorageConfig, concurrency: int, budget: Budget, out: TextIO, err: TextIO
) -> None:
    """Measure the driver and every installed peer on ``config``'s server, saying on
    ``err`` which case runs, then write a blank line and the comparison to ``out``.

    Only a failure of the driver is raised (``StorageError``); a peer's is reported
    in the table. On a cluster or behind Sentinel, one line says that peers are
    measured on a standalone server only.
    """
    topology = config.deployment.topology
    if topology != STANDALONE:
        out.write(f"\npeers: measured against a standalone server only; this one is {topology}\n")
        return
    installed = [(peer, version) for peer in PYTHON_PEERS if (version := peer.version())]
    floor = (FLOOR, FLOOR.version() or "")  # hiredis, which the driver needs too
    installed.append(floor)
    benchmark = peer_benchmark.find()
    rounds, share = rounds_of(budget)
    on_uvloop = uvloop_installed()
    sides = 1 + len(installed) + (benchmark is not None) + 2 * on_uvloop
    cases = len(PEER_OPERATIONS) * 2 * sides
    err.write(f"aa-storage bench: peers, {rounds} round(s) of {cases} cases of {share} each\n")
    progress = Progress(err, rounds * cases)
    uvloop_rows: list[PeerRow] = []
    try:
        rows, reasons = asyncio.run(
            run_rounds(config, concurrency, rounds, share, installed, benchmark, progress)
        )
        if on_uvloop:
            # The driver and the floor again, on uvloop; the C limit is the same.
            uvloop_rows, uvloop_reasons = run_on_uvloop(
                run_rounds(config, concurrency, rounds, share, [floor], None, progress, "uvloop")
            )
            for column, reason in uvloop_reasons.items():
                reasons.setdefault(column, f"on uvloop: {reason}")
    finally:
        progress.stop()
    lines = _peer_lines(installed, benchmark, reasons, concurrency)
    comparison = Comparison(rows, rounds, str(share), lines, uvloop_rows)
    for line in ("", *comparison_lines(comparison)):
        out.write(line + "\n")


def _peer_lines(
    installed: list[tuple[PythonPeer, str]],
    benchmark: str | None,
    reasons: dict[str, str],
    concurrency: int,
) -> list[str]:
    """One line per peer: its version and how it ran, or why it did not."""
    versions = {peer.name: version for peer, version in installed}
    lines = []
    for peer in PYTHON_PEERS:
        if peer.name in versions:
            name = f"{peer.name} {versions[peer.name]}"
            lines.append(_peer_line(name, peer.how, reasons.get(peer.name)))
        else:
            lines.append(f"  {peer.name}: not installed (pip install {peer.distribution})")
    if benchmark is None:
        lines.append(f"  {C_COLUMN}: not found on PATH ({peer_benchmark.INSTALL_HINT})")
    else:
        how = (
            f"-P 1, -c 1 sequentially and -c {concurrency} with {concurrency} callers, "
            f"-n sized to the round's budget, at least {peer_benchmark.MIN_REQUESTS:,}"
        )
        name = f"{C_COLUMN} {peer_benchmark.version(benchmark)}"
        lines.append(_peer_line(name, how, reasons.get(C_COLUMN)))
    lines.append(_peer_line(FLOOR.name, FLOOR.how, reasons.get(FLOOR.name)))
    return lines


def _peer_line(name: str, how: str, reason: str | None) -> str:
    return f"  {name}: {how}" if reason is None else f"  {name}: failed: {reason}"

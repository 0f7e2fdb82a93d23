"""The results of ``aa-storage bench --peers`` and their lines: a table of ops/s, the
driver beside each peer, then one line per peer saying how it ran, or why it did not."""

from __future__ import annotations

from collections.abc import Iterator

import attrs

from aa_storage_redis.bench.report import mode_of

PYTHON_COLUMNS = ("redis-py", "coredis", "valkey-glide")
C_COLUMN = "redis-benchmark"
FLOOR_COLUMN = "asyncio floor"
COLUMNS = (*PYTHON_COLUMNS, C_COLUMN, FLOOR_COLUMN)

NOT_MEASURED = "-"
FAILED = "failed"


@attrs.define
class PeerRow:
    """One operation at one number of callers: the best ops/s of the driver and of
    each peer over the rounds. A peer in ``failed`` failed in at least one round and
    shows no figure; one in neither mapping was not measured (not installed)."""

    operation: str
    callers: int
    driver: float = 0.0
    peers: dict[str, float] = attrs.field(factory=dict)
    failed: set[str] = attrs.field(factory=set)

    def keep(self, column: str, ops_per_sec: float) -> None:
        """Count a round's figure: the best one is kept."""
        if column not in self.failed:
            self.peers[column] = max(self.peers.get(column, 0.0), ops_per_sec)

    def fail(self, column: str) -> None:
        self.failed.add(column)
        self.peers.pop(column, None)

    def cell(self, column: str) -> str:
        if column in self.failed:
            return FAILED
        figure = self.peers.get(column)
        return NOT_MEASURED if figure is None else f"{figure:,.0f}"

    @property
    def best_python_peer(self) -> float | None:
        """The fastest Python client's figure; None when none has one."""
        return max(
            (self.peers[name] for name in PYTHON_COLUMNS if name in self.peers), default=None
        )


@attrs.frozen
class Comparison:
    """The rows, how many rounds of what budget each side ran, and one line per peer."""

    rows: list[PeerRow]
    rounds: int
    round_budget: str
    peer_lines: list[str]
    uvloop_rows: list[PeerRow] = attrs.field(factory=list)
    """The driver and the floor on uvloop, in the same cases; empty without uvloop."""


_HEADER = (
    f"{'operation':<12}{'mode':<12}{'driver ops/s':>13}"
    f"{'redis-py':>11}{'coredis':>11}{'valkey-glide':>14}{'redis-benchmark':>17}"
    f"{'asyncio floor':>15}{'driver/best peer':>18}{'driver/C':>10}{'driver/floor':>14}"
)


def comparison_lines(comparison: Comparison) -> Iterator[str]:
    """A title, the header, a line per row, a blank line, then the peers' lines."""
    yield (
        f"peers on the same server and workloads, in ops/s (the best of {comparison.rounds} "
        f"round(s) of {comparison.round_budget} a case, driver and peers taking turns):"
    )
    yield _HEADER
    for row in comparison.rows:
        yield (
            f"{row.operation:<12}{mode_of(row.callers):<12}{row.driver:>13,.0f}"
            f"{row.cell('redis-py'):>11}{row.cell('coredis'):>11}"
            f"{row.cell('valkey-glide'):>14}{row.cell(C_COLUMN):>17}"
            f"{row.cell(FLOOR_COLUMN):>15}"
            f"{_ratio(row.driver, row.best_python_peer):>18}"
            f"{_ratio(row.driver, row.peers.get(C_COLUMN)):>10}"
            f"{_ratio(row.driver, row.peers.get(FLOOR_COLUMN)):>14}"
        )
    yield ""
    yield from comparison.peer_lines
    if comparison.uvloop_rows:
        yield ""
        yield from _uvloop_lines(comparison)


_UVLOOP_HEADER = (
    f"{'operation':<12}{'mode':<12}{'driver ops/s':>13}{'asyncio floor':>15}"
    f"{'driver/C':>10}{'floor/C':>9}{'driver/floor':>14}"
)


def _uvloop_lines(comparison: Comparison) -> Iterator[str]:
    """The driver and the floor again on uvloop, set against the C limit's figures above."""
    yield (
        f"the driver and the asyncio floor on uvloop (the best of {comparison.rounds} round(s) "
        f"of {comparison.round_budget} a case; {C_COLUMN}'s figures are the table's above):"
    )
    yield _UVLOOP_HEADER
    limits = {(row.operation, row.callers): row.peers.get(C_COLUMN) for row in comparison.rows}
    for row in comparison.uvloop_rows:
        limit, floor = limits.get((row.operation, row.callers)), row.peers.get(FLOOR_COLUMN)
        yield (
            f"{row.operation:<12}{mode_of(row.callers):<12}{row.driver:>13,.0f}"
            f"{row.cell(FLOOR_COLUMN):>15}{_ratio(row.driver, limit):>10}"
            f"{_ratio(floor, limit):>9}"
            f"{_ratio(row.driver, floor):>14}"
        )


def _ratio(figure: float | None, over: float | None) -> str:
    return f"{figure / over:.2f}x" if figure and over else NOT_MEASURED

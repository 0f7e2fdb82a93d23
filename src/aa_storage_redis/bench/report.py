"""The results of ``aa-storage bench`` and the lines that show them: the table, the
near-cache's propagation and the driver's stats on stdout, and each case's progress
on stderr. The rows' targets are a read-only mapping."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from types import MappingProxyType
from typing import TextIO

import attrs

from aa_storage_redis.stats import ExecutorStats

# The targets, as driver/raw throughput ratios on loopback, keyed by
# (operation, callers): sequential, and 50 callers against raw redis-py with 50
# connections.
TARGETS: Mapping[tuple[str, int], float] = MappingProxyType(
    {
        ("increment", 1): 1.5,
        ("get_policy", 1): 1.5,
        ("save", 1): 1.5,
        ("load", 1): 1.5,
        ("increment", 50): 3.5,
        ("get_policy", 50): 3.5,
        # A near-cache hit against raw redis-py GET + decode.
        ("get_policy_near", 1): 20.0,
    }
)


GATEWAY_ACTION = "gateway_action"
"""The row of one gateway action: ``get_policy``, ``increment`` and ``save`` awaited
together, which the driver sends in one write, so it costs one round trip."""

# Below this many samples a p99 is only the slowest one, so none is shown.
MIN_P99_SAMPLES = 100


@attrs.frozen
class Measurement:
    """One side of one case: throughput, latency percentiles in microseconds
    (``p99_us`` is None for fewer than ``MIN_P99_SAMPLES`` calls), and the CPU time
    (user + system) this process spent per call."""

    ops_per_sec: float
    p50_us: float
    p99_us: float | None
    cpu_us: float
    calls: int


@attrs.frozen
class Row:
    """One operation at one number of callers, through the driver and raw redis-py."""

    operation: str
    callers: int
    driver: Measurement
    raw: Measurement
    commands_per_write: float
    """The driver's mean commands per socket write while the case was timed."""

    @property
    def mode(self) -> str:
        return mode_of(self.callers)

    @property
    def ratio(self) -> float:
        """Driver throughput over raw redis-py's."""
        return self.driver.ops_per_sec / self.raw.ops_per_sec

    @property
    def target(self) -> float | None:
        return TARGETS.get((self.operation, self.callers))


@attrs.frozen
class Propagation:
    """How long a change made by another process took to stop this one's near-cache
    serving the old policy, over ``changes`` changes."""

    changes: int
    p50_us: float
    p99_us: float | None


def propagation_lines(figures: Propagation) -> Iterator[str]:
    """The propagation figures, after the table."""
    yield (
        "near-cache invalidation from another process (SET or DEL there, until this one "
        "stops serving the old policy):"
    )
    p99 = (
        f"p99 {figures.p99_us:,.0f} us"
        if figures.p99_us is not None
        else f"no p99 (it needs {MIN_P99_SAMPLES} changes)"
    )
    yield f"  {figures.changes} changes, p50 {figures.p50_us:,.0f} us, {p99}"


def _p99_cell(p99_us: float | None) -> str:
    return f"{p99_us:>9.0f}" if p99_us is not None else f"{'-':>9}"


def mode_of(callers: int) -> str:
    """How a case with ``callers`` callers is named: sequential, or N callers."""
    return "sequential" if callers == 1 else f"{callers} callers"


_HEADER = (
    f"{'operation':<16}{'mode':<12}"
    f"{'driver ops/s':>13}{'p50 us':>9}{'p99 us':>9}{'cpu us':>8}{'cmds/write':>11}"
    f"{'raw ops/s':>12}{'p50 us':>9}{'p99 us':>9}{'cpu us':>8}"
    f"{'ratio':>8}  target"
)


def table(rows: Sequence[Row]) -> Iterator[str]:
    """The table's lines: a header, then one line per row."""
    yield _HEADER
    for row in rows:
        target = "" if row.target is None else f">={row.target}x {_verdict(row)}"
        yield (
            f"{row.operation:<16}{row.mode:<12}"
            f"{row.driver.ops_per_sec:>13,.0f}{row.driver.p50_us:>9.0f}"
            f"{_p99_cell(row.driver.p99_us)}{row.driver.cpu_us:>8.1f}"
            f"{row.commands_per_write:>11.2f}"
            f"{row.raw.ops_per_sec:>12,.0f}{row.raw.p50_us:>9.0f}{_p99_cell(row.raw.p99_us)}"
            f"{row.raw.cpu_us:>8.1f}"
            f"{row.ratio:>7.2f}x  {target}".rstrip()
        )


def p99_note(rows: Sequence[Row]) -> Iterator[str]:
    """A line saying why a p99 cell is ``-``, when one is; then a blank line."""
    if any(side.p99_us is None for row in rows for side in (row.driver, row.raw)):
        yield (
            f"p99 us is - for a case of fewer than {MIN_P99_SAMPLES} calls, where it would "
            "only be the slowest call; use --seconds or --requests to make more"
        )
        yield ""


def action_lines(rows: Sequence[Row]) -> Iterator[str]:
    """The gateway action's latency beside a single command's, sequentially; then a
    blank line."""
    by_case = {(row.operation, row.callers): row for row in rows}
    action, single = by_case.get((GATEWAY_ACTION, 1)), by_case.get(("get_policy", 1))
    if action is None or single is None:
        return
    yield (
        "one gateway action (get_policy, increment and save awaited together), "
        f"sequential: p50 {action.driver.p50_us:,.0f} us, beside {single.driver.p50_us:,.0f} us "
        f"for a single get_policy: {action.driver.p50_us / single.driver.p50_us:.2f}x; "
        f"raw redis-py on three connections: {action.raw.p50_us / single.raw.p50_us:.2f}x"
    )
    yield ""


def _verdict(row: Row) -> str:
    return "met" if row.target is not None and row.ratio >= row.target else "missed"


def stats_lines(stats: ExecutorStats) -> Iterator[str]:
    """The driver's execution counters over the whole run, one per line."""
    yield "driver stats over the run:"
    for name, value in attrs.asdict(stats).items():
        yield f"  {name}: {value}"
    yield f"  mean_commands_per_write: {stats.mean_commands_per_write:.2f}"


class Progress:
    """Says on ``stream`` which case runs and then how it went, one line per case."""

    def __init__(self, stream: TextIO, total: int) -> None:
        self._stream = stream
        self._total = total
        self._started = 0
        self._line_open = False

    def start(self, label: str) -> None:
        self._started += 1
        self._say(f"aa-storage bench: [{self._started}/{self._total}] {label} ... ")
        self._line_open = True

    def end(self, measurement: Measurement) -> None:
        self.finish(f"{measurement.ops_per_sec:,.0f} ops/s")

    def finish(self, outcome: str) -> None:
        self._say(f"{outcome}\n")
        self._line_open = False

    def stop(self) -> None:
        """End the line of a case cut short, so that what follows starts a line."""
        if self._line_open:
            self._say("stopped\n")
            self._line_open = False

    def _say(self, text: str) -> None:
        self._stream.write(text)
        self._stream.flush()

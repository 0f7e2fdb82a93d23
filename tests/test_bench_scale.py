"""``aa-storage bench --scale`` against a real redis-server: the table of processes, the
saturation line, the near-cache's memory, the plot, the cleanup, and the refusals made
before any measuring. No figure is asserted against another run, only the output's
shape and the figures' agreement with each other."""

from __future__ import annotations

import contextlib
import io
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import attrs
import pytest

from aa_storage.cli import main
from aa_storage_redis.bench import Budget
from aa_storage_redis.bench.scale import ScalePoint, process_counts, saturation, scale_lines
from servers import RedisServer
from test_bench import (
    _HELPER_COMMANDS,
    PATIENCE_SECS,
    TIMEOUTS,
    _alive,
    _spawned_by,
    _stderr_until,
)
from test_redis_cli import config_file

CONCURRENCY = 3
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MISSING = (
    "aa-storage bench: --plot needs matplotlib, which is not installed: pip install matplotlib\n"
)
_NUMBER = r"[\d,]+(?:\.\d+)?"
_ROW = re.compile(
    rf"  +(?P<processes>\d+) +(?P<total>{_NUMBER}) +(?P<per>{_NUMBER}) +(?P<p50>{_NUMBER}) "
    rf"+(?P<p99>{_NUMBER}|-) +(?P<driver>\d+\.\d) +(?P<server>\d+\.\d|-)"
)


@attrs.frozen
class Run:
    status: int
    out: str
    err: str
    png: Path
    keys_left: int


def figure(text: str) -> float:
    return float(text.replace(",", ""))


@pytest.fixture(scope="module")
def run(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Run:
    """One ``bench --scale --max-processes 2 --requests 50 --plot`` run, shared by the
    tests that read its output: the whole bench takes tens of seconds."""
    folder = tmp_path_factory.mktemp("scale")
    config = config_file(folder, redis_server.url, **TIMEOUTS)
    png = folder / "scale.png"
    redis_server.flushall()  # the server is the session's: other tests' keys go first
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = main(
            [
                "bench",
                *("--concurrency", str(CONCURRENCY), "--config", config),
                *("--scale", "--max-processes", "2", "--requests", "50", "--plot", str(png)),
            ]
        )
    with redis_server.client() as admin:
        keys_left = admin.dbsize()
    return Run(status, out.getvalue(), err.getvalue(), png, keys_left)


def scale_section(out: str) -> list[str]:
    """The lines from ``scale:`` to the blank line after them."""
    after = out.partition("\nscale: ")[2]
    assert after, out
    return ("scale: " + after).split("\n\n")[0].splitlines()


class TestARun:
    def test_ends_well_after_the_rest_of_the_bench(self, run: Run) -> None:
        """Exit status 0; the scale lines come after the driver's stats, which end the
        bench's usual output; progress says each step on stderr."""
        assert run.status == 0, run.err
        stats = run.out.index("driver stats over the run:\n")
        assert stats < run.out.index("\n\nscale: ")
        assert "Traceback" not in run.err
        for step, label in enumerate(
            ["scale, 1 process of", "scale, 2 processes of", "near-cache memory"], start=1
        ):
            assert re.search(rf"\[{step}/3\] {re.escape(label)}.* \.\.\. {_NUMBER} ", run.err)

    def test_has_one_row_per_process_count_with_every_figure(self, run: Run) -> None:
        """A header, then a row for 1 and 2 processes: the total is the per-process
        figure times the processes, p50 is at most p99, and every process opened
        connections, which the server saw."""
        lines = scale_section(run.out)
        assert lines[0] == (
            f"scale: processes of {CONCURRENCY} callers each, increment and get_policy in "
            "turns, 50 calls per process, all released together:"
        )
        assert lines[1].split() == [
            "processes",
            "total",
            "ops/s",
            "per",
            "process",
            "p50",
            "us",
            "p99",
            "us",
            "driver",
            "conns",
            "server",
            "conns",
        ]
        rows = [_ROW.fullmatch(line) for line in lines[2:4]]
        assert all(rows), lines
        assert [int(row["processes"]) for row in rows if row] == [1, 2]
        for row in filter(None, rows):
            processes, total, per = int(row["processes"]), figure(row["total"]), figure(row["per"])
            assert total > 0
            assert per * processes == pytest.approx(total, rel=0.01, abs=processes)
            if row["p99"] != "-":
                assert figure(row["p50"]) <= figure(row["p99"])
            assert float(row["driver"]) >= 1
            assert row["server"] != "-"
            assert float(row["server"]) >= 1

    def test_names_the_saturation_point_as_the_totals_show_it(self, run: Run) -> None:
        """The saturation line names 2 processes exactly when their total is within 5% of
        one process's (or below it), and says "not reached" otherwise."""
        lines = scale_section(run.out)
        totals = [figure(match["total"]) for line in lines if (match := _ROW.fullmatch(line))]
        (said,) = [line for line in lines if line.startswith("  saturation: ")]
        if totals[1] <= totals[0] * 1.05:
            assert said == (
                "  saturation: at 2 processes, whose total is no more than 5% above that of "
                "1 process: adding processes stopped adding throughput"
            )
        else:
            assert said == (
                "  saturation: not reached up to 2 processes (each step added more than 5%)"
            )

    def test_reports_the_near_cache_memory_per_policy(self, run: Run) -> None:
        """All 10,000 policies held, a positive size per policy, and the MiB per 10,000
        that it makes."""
        match = re.search(
            rf"\nnear-cache memory: 10,000 of 10,000 distinct policies of (\d+) rules held "
            rf"after one read each\n  ({_NUMBER}) bytes per policy \(tracemalloc\), "
            rf"({_NUMBER}) MiB per 10,000; the resident set grew (-?{_NUMBER}) MiB\n",
            run.out,
        )
        assert match, run.out
        assert int(match[1]) > 1
        per_policy = figure(match[2])
        assert per_policy > 0
        assert figure(match[3]) == pytest.approx(per_policy * 10_000 / 2**20, abs=0.06)

    def test_writes_the_plot_as_a_png(self, run: Run) -> None:
        """The file named by --plot is a PNG, and the last line says where it is."""
        assert run.png.read_bytes().startswith(PNG_SIGNATURE)
        assert run.out.splitlines()[-1] == f"scale plot: {run.png}"

    def test_leaves_no_key(self, run: Run) -> None:
        """Every key the run made, the processes' and the near-cache's, is deleted."""
        assert run.keys_left == 0


class TestRefusedBeforeMeasuring:
    def test_plot_without_matplotlib_says_how_to_install_it(
        self,
        redis_server: RedisServer,
        tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        """With matplotlib not importable, --plot is one line naming the pip command and
        exit status 2, and the server sees no command."""
        for name in [name for name in sys.modules if name.split(".")[0] == "matplotlib"]:
            monkeypatch.setitem(sys.modules, name, None)
        monkeypatch.setitem(sys.modules, "matplotlib", None)  # an import of it now fails
        config = config_file(tmp_path, redis_server.url, **TIMEOUTS)
        before = redis_server.commandstats()
        png = tmp_path / "scale.png"
        status = main(["bench", "--config", config, "--scale", "--plot", str(png)])
        out, err = capsys.readouterr()
        assert (status, out, err) == (2, "", MISSING)
        assert not png.exists()
        after = redis_server.commandstats()
        for helper in _HELPER_COMMANDS:  # commandstats()'s own
            after.pop(helper, None)
            before.pop(helper, None)
        assert after == before

    def test_plot_into_a_missing_directory_is_refused(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        folder = tmp_path / "nowhere"
        status = main(["bench", "--scale", "--plot", str(folder / "scale.png")])
        assert (status, capsys.readouterr().err) == (
            2,
            f"aa-storage bench: --plot {folder / 'scale.png'}: there is no directory {folder}\n",
        )

    def test_plot_needs_scale(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        status = main(["bench", "--plot", str(tmp_path / "scale.png")])
        assert (status, capsys.readouterr().err) == (2, "aa-storage bench: --plot needs --scale\n")

    @pytest.mark.parametrize("arguments", [["--max-processes", "0"], ["--max-processes", "x"]])
    def test_bad_max_processes(
        self, arguments: list[str], capsys: pytest.CaptureFixture[str]
    ) -> None:
        with pytest.raises(SystemExit) as exited:
            main(["bench", "--scale", *arguments])
        assert exited.value.code == 2
        assert "aa-storage bench: error:" in capsys.readouterr().err


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=lambda s: s.name)
def test_stopping_a_scale_step_deletes_its_keys_and_ends_its_processes(
    stop: signal.Signals, redis_server: RedisServer, tmp_path: Path
) -> None:
    """Ctrl-C or SIGTERM while the processes run: exit status 130, no key left, no
    process left. Only the --scale part runs (the rest of the bench is stubbed out), for
    30 s a step, so that the signal finds it running."""
    config = config_file(tmp_path, redis_server.url, **TIMEOUTS)
    script = (
        "import sys\n"
        "import aa_storage_redis.bench as bench\n"
        "from aa_storage_redis.bench.scaling import ScaleOptions, run_scaling\n"
        "bench.measure = lambda config, c, budget, out, err, extras: "
        "run_scaling(config, c, budget, extras.scale, out, err)\n"
        f"sys.exit(bench.command({config!r}, {CONCURRENCY}, bench.Budget({PATIENCE_SECS}), "
        "sys.stdout, sys.stderr, bench.Extras(scale=ScaleOptions(2))))\n"
    )
    process = subprocess.Popen(
        [sys.executable, "-c", script],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        with redis_server.client() as admin:
            err = _stderr_until(process, "[1/")
            deadline = time.monotonic() + PATIENCE_SECS
            while not (workers := _spawned_by(process.pid)) or admin.dbsize() == 0:
                assert time.monotonic() < deadline, "no process started, or no key was made"
                time.sleep(0.05)
            process.send_signal(stop)
            assert process.wait(PATIENCE_SECS) == 130
            assert process.stderr is not None
            assert "aa-storage bench: interrupted" in err + process.stderr.read()
            assert admin.dbsize() == 0
        assert [pid for pid in workers if _alive(pid)] == []
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        if process.stderr is not None:
            process.stderr.close()


class TestPureParts:
    @pytest.mark.parametrize(
        ("most", "counts"),
        [(1, [1]), (2, [1, 2]), (6, [1, 2, 4, 6]), (8, [1, 2, 4, 8]), (9, [1, 2, 4, 8, 9])],
    )
    def test_process_counts_double_up_to_the_most(self, most: int, counts: list[int]) -> None:
        assert process_counts(most) == counts

    def test_saturation_is_the_first_step_adding_5_percent_or_less(self) -> None:
        assert saturation(points(100.0)) is None
        assert saturation(points(100.0, 190.0, 300.0)) is None
        assert saturation(points(100.0, 190.0, 199.0, 250.0)) == points(100.0, 190.0, 199.0)[2]
        assert saturation(points(100.0, 90.0)) == points(100.0, 90.0)[1]

    def test_lines_name_the_saturation_or_its_absence(self) -> None:
        """Both forms of the saturation line, and a - for a p99 of too few calls or
        server connections the ACL kept from INFO, each with a note saying why."""
        budget = Budget(seconds=1.0)
        saturated = list(scale_lines(points(100.0, 104.0), 50, budget))
        assert saturated[-1] == (
            "  saturation: at 2 processes, whose total is no more than 5% above that of "
            "1 process: adding processes stopped adding throughput"
        )
        growing = list(scale_lines(points(100.0, 200.0, 400.0), 50, budget))
        assert growing[-1] == (
            "  saturation: not reached up to 4 processes (each step added more than 5%)"
        )
        unknown = attrs.evolve(points(100.0)[0], server_connections=None)
        lines = list(scale_lines([unknown], 50, budget))
        assert re.fullmatch(r" +1 +100 +100 +1 +- +2\.0 +-", lines[2])
        assert "  (server conns is - where the ACL refuses INFO)" in lines
        assert "  (p99 us is - below 100 calls)" in lines


def points(*totals: float) -> list[ScalePoint]:
    """Points of 1, 2, 4, … processes with these totals."""
    return [
        ScalePoint(2**index, 1, total, 1.0, None, 2.0, 2.0) for index, total in enumerate(totals)
    ]

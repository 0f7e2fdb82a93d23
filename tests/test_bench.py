"""``aa-storage bench`` against real redis-servers: its table, its progress, its cleanup,
the throwaway server it starts, and its errors. No figure is asserted, only its shape."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from aa_storage.cli import main
from aa_storage_redis import RedisBackend
from aa_storage_redis.bench.operations import OPERATIONS, Caller, Operation, Subject
from aa_storage_redis.bench.profile import LAYERS, OTHER
from aa_storage_redis.bench.uvloop_cases import uvloop_installed
from servers import DRIVER_PASSWORD, DRIVER_USER, RedisServer, free_ports
from test_redis_cli import config_file

CONCURRENCY = 3
MODES = ("sequential", f"{CONCURRENCY} callers")
# Every operation in both modes on both sides, then the near-cache's hit on both
# sides and its propagation.
# Each operation in each mode on two sides, the near-cache's three, a missing replica's two.
# With uvloop installed (the dev extra has it), each operation's driver cases run on it too.
UVLOOP_CASES = len(OPERATIONS) * len(MODES) if uvloop_installed() else 0
CASES = len(OPERATIONS) * len(MODES) * 2 + 3 + 2 + UVLOOP_CASES
NEAR_ROW = ("get_policy_near", "sequential")
TIMEOUTS = {"connect_timeout": "10.0", "socket_timeout": "10.0"}
# Long enough that a signal sent during the first case finds it still running.
PATIENCE_SECS = 30.0

# What RedisServer.commandstats() itself sends: a new connection's HELLO, and INFO.
_HELPER_COMMANDS = {"hello", "info"}
_NUMBER = r"[\d,]+(?:\.\d+)?"
# A p99 is a figure, or - for a case of too few calls.
_P99 = rf"(?:{_NUMBER}|-)"
_ROW = re.compile(
    rf"(?P<operation>\w+) +(?P<mode>sequential|\d+ callers) +"
    rf"(?P<driver>{_NUMBER}) +{_NUMBER} +(?P<driver_p99>{_P99}) +(?P<driver_cpu>{_NUMBER}) +"
    rf"{_NUMBER} +(?P<raw>{_NUMBER}) +{_NUMBER} +(?P<raw_p99>{_P99}) +(?P<raw_cpu>{_NUMBER}) +"
    rf"(?P<ratio>\d+\.\d\d)x(?P<target>.*)"
)


def bench(*args: str) -> int:
    return main(["bench", "--concurrency", str(CONCURRENCY), *args])


def rows(out: str) -> list[re.Match[str]]:
    """The table's rows, each checked to have every figure."""
    found = []
    for line in out.splitlines()[1:]:
        if not line:
            break
        match = _ROW.fullmatch(line)
        assert match is not None, f"not a full row: {line!r}"
        found.append(match)
    return found


def figure(text: str) -> float:
    return float(text.replace(",", ""))


@pytest.fixture
def config(redis_url: str, tmp_path: Path) -> str:
    return config_file(tmp_path, redis_url, **TIMEOUTS)


class TestAgainstAConfig:
    def test_table_has_every_operation_in_both_modes_with_a_ratio(
        self, config: str, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """One row per operation and mode, each with figures for both sides and their ratio."""
        assert bench("--config", config, "--requests", "30") == 0
        found = rows(capsys.readouterr().out)
        assert [(row["operation"], row["mode"]) for row in found] == [
            *((operation.name, mode) for operation in OPERATIONS for mode in MODES),
            NEAR_ROW,
        ]
        for row in found:
            driver, raw = figure(row["driver"]), figure(row["raw"])
            assert driver > 0
            assert raw > 0
            assert figure(row["ratio"]) == pytest.approx(driver / raw, rel=0.02, abs=0.01)

    def test_targets_stand_beside_the_sequential_rows_they_apply_to(
        self, config: str, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Sequential increment, get_policy, save and load show the 1.5x target, the
        near-cache hit 20x; no other row shows one when the concurrency is not the
        targets' 50."""
        assert bench("--config", config, "--requests", "20") == 0
        targets = {
            (row["operation"], row["mode"]): row["target"].strip()
            for row in rows(capsys.readouterr().out)
        }
        targeted = {(name, "sequential") for name in ("increment", "get_policy", "save", "load")}
        assert re.fullmatch(r">=20\.0x (met|missed)", targets.pop(NEAR_ROW))
        for case, target in targets.items():
            if case in targeted:
                assert re.fullmatch(r">=1\.5x (met|missed)", target), case
            else:
                assert target == "", case

    def test_progress_goes_to_stderr_and_the_table_to_stdout(
        self, config: str, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Each case says on stderr when it starts and how it went; stdout holds only
        the table and the driver's stats."""
        assert bench("--config", config, "--requests", "20") == 0
        out, err = capsys.readouterr()
        progress = [line for line in err.splitlines() if re.search(r"\[\d+/\d+\]", line)]
        assert len(progress) == CASES
        near = CASES - UVLOOP_CASES - 2
        for number, line in enumerate(progress, start=1):
            if number > CASES - UVLOOP_CASES:
                assert re.fullmatch(
                    rf"aa-storage bench: \[{number}/{CASES}\] \w+, [\w ]+, driver on uvloop "
                    rf"\.\.\. {_NUMBER} ops/s",
                    line,
                ), line
                continue
            if number == near:
                assert re.fullmatch(
                    rf"aa-storage bench: \[{number}/{CASES}\] near-cache invalidation from "
                    rf"another process \.\.\. p50 {_NUMBER} us",
                    line,
                ), line
                continue
            if number > near:
                assert re.fullmatch(
                    rf"aa-storage bench: \[{number}/{CASES}\] reads, a replica missing, "
                    rf"(no writers|beside 4 writers) \.\.\. {_NUMBER} ops/s",
                    line,
                ), line
                continue
            assert re.fullmatch(
                rf"aa-storage bench: \[{number}/{CASES}\] \w+, [\w ]+, "
                rf"(driver|raw redis-py) \.\.\. {_NUMBER} ops/s",
                line,
            ), line
        assert "aa-storage bench" not in out
        assert out.splitlines()[0].split()[:2] == ["operation", "mode"]

    def test_reads_beside_writes_waiting_for_a_missing_replica_all_answer(
        self, config: str, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """The missing-replica case prints both latencies, and no read failed while the
        writers' WAITs held their connections."""
        assert bench("--config", config, "--requests", "200") == 0
        out = capsys.readouterr().out
        figures = out.partition("reads while 4 writers wait for a replica that is missing")[2]
        lines = figures.splitlines()
        assert re.fullmatch(r" \(wait_replicas=1, wait_timeout=0\.2 s\), \d+ readers:", lines[0])
        assert re.fullmatch(rf"  beside the writers: p50 {_NUMBER} us, p99 {_NUMBER} us", lines[1])
        assert re.fullmatch(rf"  without them: p50 {_NUMBER} us, p99 {_NUMBER} us", lines[2])
        assert re.fullmatch(r"  reads failed: 0; writes unconfirmed, as expected: \d+", lines[3])

    def test_prints_the_drivers_stats_after_the_table(
        self, config: str, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """The driver's stats over the run follow the table, and count what was sent."""
        assert bench("--config", config, "--requests", "20") == 0
        out = capsys.readouterr().out
        stats = out.partition("driver stats over the run:\n")[2]
        counters = dict(line.strip().split(": ") for line in stats.splitlines())
        assert int(counters["commands_sent"]) >= len(OPERATIONS) * len(MODES) * 20
        assert 0 < int(counters["socket_writes"]) <= int(counters["commands_sent"])
        assert float(counters["mean_commands_per_write"]) >= 1.0

    def test_prints_how_fast_a_change_reaches_the_near_cache(
        self, config: str, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """After the table: how many changes another process made (one per request), and
        the p50 and p99 of the time until this process stopped serving the old policy, and
        every row's p99, once there are 100 samples."""
        assert bench("--config", config, "--requests", "100") == 0
        out = capsys.readouterr().out
        assert all(row["driver_p99"] != "-" != row["raw_p99"] for row in rows(out))
        match = re.search(
            rf"\nnear-cache invalidation from another process \(.*\):\n"
            rf"  (\d+) changes, p50 ({_NUMBER}) us, p99 ({_NUMBER}) us\n",
            out,
        )
        assert match, out
        assert int(match[1]) == 100
        assert 0 < figure(match[2]) <= figure(match[3])

    def test_shows_cpu_per_call_and_a_gateway_action_beside_one_command(
        self, config: str, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Each side of each row has its CPU time per call; the gateway action (three
        calls awaited together) has rows of its own, and a line sets its sequential
        p50 beside a single get_policy's, as the ratio of the two rows' figures."""
        assert bench("--config", config, "--requests", "30") == 0
        out = capsys.readouterr().out
        found = {(row["operation"], row["mode"]): row for row in rows(out)}
        assert all(figure(row["driver_cpu"]) > 0 < figure(row["raw_cpu"]) for row in found.values())
        assert ("gateway_action", "sequential") in found
        assert ("gateway_action", f"{CONCURRENCY} callers") in found
        match = re.search(
            rf"\none gateway action \(get_policy, increment and save awaited together\), "
            rf"sequential: p50 ({_NUMBER}) us, beside ({_NUMBER}) us for a single get_policy: "
            rf"({_NUMBER})x; raw redis-py on three connections: {_NUMBER}x\n",
            out,
        )
        assert match, out
        # The p50s are printed rounded to the microsecond, the ratio from the exact ones.
        action, single, ratio = (figure(match[index]) for index in (1, 2, 3))
        assert (action - 0.5) / (single + 0.5) - 0.01 <= ratio
        assert ratio <= (action + 0.5) / max(single - 0.5, 0.5) + 0.01

    def test_shows_the_driver_on_uvloop_beside_asyncio(
        self, config: str, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """With uvloop installed, a table after the main one has every operation's driver
        cases on uvloop, each with its CPU time per call beside asyncio's (the main
        table's) and its throughput over asyncio's."""
        assert bench("--config", config, "--requests", "30") == 0
        out = capsys.readouterr().out
        main_rows = {(row["operation"], row["mode"]): row for row in rows(out)}
        lines = (
            out.partition(
                "\nthe driver on uvloop (the same cases; asyncio's figures are the table's):\n"
            )[2]
            .split("\n\n")[0]
            .splitlines()
        )
        assert lines[0].split() == [
            "operation",
            "mode",
            "uvloop",
            "ops/s",
            "p50",
            "us",
            "cpu",
            "us",
            "asyncio",
            "cpu",
            "us",
            "vs",
            "asyncio",
        ]
        cases = [(operation.name, mode) for operation in OPERATIONS for mode in MODES]
        assert len(lines) == 1 + len(cases)
        for (name, mode), line in zip(cases, lines[1:], strict=True):
            match = re.fullmatch(
                rf"{name} +{mode} +({_NUMBER}) +{_NUMBER} +{_NUMBER} +({_NUMBER}) +"
                rf"({_NUMBER})x",
                line,
            )
            assert match, line
            row = main_rows[(name, mode)]
            assert figure(match[2]) == figure(row["driver_cpu"])
            assert figure(match[3]) == pytest.approx(
                figure(match[1]) / figure(row["driver"]), abs=0.02
            )

    def test_without_uvloop_says_how_to_add_it(
        self, config: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Without uvloop, one line says the driver ran on asyncio only, and how to add it."""
        # The package's name "measure" is the function: the module is in sys.modules.
        for module in ("aa_storage_redis.bench.measure", "aa_storage_redis.bench.uvloop_cases"):
            monkeypatch.setattr(sys.modules[module], "uvloop_installed", lambda: False)
        assert bench("--config", config, "--requests", "10") == 0
        out = capsys.readouterr().out
        assert (
            "\nuvloop is not installed (pip install 'aa-storage[uvloop]'): the driver ran on "
            "asyncio only\n"
        ) in out
        assert "driver on uvloop" not in out

    def test_profile_says_where_a_calls_cpu_time_goes(
        self, config: str, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """With --profile, increment with the run's callers runs under cProfile, and its
        own time is shared out over the layers (adding up to all of it) and shown for
        the costliest functions."""
        assert bench("--config", config, "--requests", "300", "--profile") == 0
        out = capsys.readouterr().out
        profile = out.partition("\nprofile of increment with ")[2].splitlines()
        assert re.fullmatch(
            rf"{CONCURRENCY} callers, {_NUMBER} calls under cProfile \(read the shares, not "
            r"the times: cProfile slows every Python call\):",
            profile[0],
        )
        layers = [re.fullmatch(rf" +({_NUMBER})%  (.+)", line) for line in profile[1:8]]
        assert all(layers), profile
        assert {match[2] for match in layers if match} == {
            *(name for name, _ in LAYERS),
            OTHER,
        }
        assert sum(figure(match[1]) for match in layers if match) == pytest.approx(100, abs=0.5)
        assert profile[8] == "  the 12 functions with the most own time:"
        assert all(re.fullmatch(rf" +{_NUMBER}%  .+ \(.+:\d+\)", line) for line in profile[9:21])

    def test_prints_what_telemetry_costs(
        self, config: str, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """After the stampede: the run's callers counting with telemetry off, on with no
        SDK, and on with the SDK (spans recorded, then exported to a collector stand-in),
        each with its throughput and CPU time per call; then the hooks' own cost."""
        assert bench("--config", config, "--requests", "200") == 0
        out = capsys.readouterr().out
        lines = out.partition(f"\ntelemetry, increment with {CONCURRENCY} callers ")[2]
        lines = lines.split("\n\n")[0].splitlines()
        assert lines[0] == "(the median of 10 rounds; with the SDK, one):"
        labels = [
            "off (telemetry = false)",
            "on, no SDK",
            "on, SDK, spans not exported",
            "on, SDK, OTLP/HTTP to a local collector",
        ]
        for label, line in zip(labels, lines[1:5], strict=True):
            compared = "" if label.startswith("off") else r"   [+-]\d+\.\d% CPU per operation"
            pattern = rf"  {re.escape(label)} +{_NUMBER} ops/s +{_NUMBER} us CPU per operation"
            assert re.fullmatch(pattern + compared, line), line
        assert re.fullmatch(
            rf"  no SDK against off, round by round: [+-]{_NUMBER}% CPU per operation at the "
            rf"median, the middle half of 10 rounds between [+-]{_NUMBER}% and [+-]{_NUMBER}%",
            lines[5],
        )
        assert re.fullmatch(
            rf"  the telemetry hooks with no SDK, timed alone: {_NUMBER} us per operation, "
            rf"{_NUMBER}% of its CPU",
            lines[6],
        )
        assert len(lines) == 7

    def test_a_p99_needs_100_samples(self, config: str, capsys: pytest.CaptureFixture[str]) -> None:
        """With 20 calls a case, no p99 is shown, in the table or for the near-cache's
        changes, and a line says why."""
        assert bench("--config", config, "--requests", "20") == 0
        out = capsys.readouterr().out
        assert {(row["driver_p99"], row["raw_p99"]) for row in rows(out)} == {("-", "-")}
        assert (
            "\np99 us is - for a case of fewer than 100 calls, where it would only be the "
            "slowest call; use --seconds or --requests to make more\n"
        ) in out
        assert "\n  20 changes, p50 " in out
        assert out.count(", no p99 (it needs 100 changes)\n") == 1

    def test_stampede_runs_the_loader_once(
        self, config: str, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Between the table and the stats, one line says that 100 get_or_load callers in 4
        processes on a cold key ran the loader once, and that each got its policy."""
        assert bench("--config", config, "--requests", "10") == 0
        out, err = capsys.readouterr()
        before_telemetry = out.partition("\ntelemetry, ")[0].splitlines()
        assert before_telemetry[-2:] == [
            "",
            "stampede: 100 get_or_load callers in 4 processes on a cold key: the loader ran "
            "1 time(s), as it must; 100 of 100 callers got its policy",
        ]
        assert "driver stats over the run:" not in before_telemetry
        assert "aa-storage bench: stampede, 100 callers in 4 processes ...\n" in err

    def test_deletes_every_key_it_made(self, redis_server: RedisServer, config: str) -> None:
        """Once the run ends the server holds no key, though the run wrote to it."""
        assert bench("--config", config, "--requests", "20") == 0
        calls = redis_server.commandstats()
        assert calls.get("evalsha", 0) + calls.get("eval", 0) > 0
        assert calls.get("set", 0) > 0
        with redis_server.client() as admin:
            assert admin.dbsize() == 0

    def test_keeps_its_keys_under_the_configured_prefix(
        self, acl_redis_server: RedisServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A user allowed only the keys aa:* can run the benchmark: every key it
        touches starts with the key_prefix, and none is left."""
        acl_redis_server.flushall()  # the server is shared: start from no keys
        url = acl_redis_server.url_for(DRIVER_USER, DRIVER_PASSWORD)
        path = config_file(tmp_path, url, **TIMEOUTS)
        assert bench("--config", path, "--requests", "10") == 0, capsys.readouterr().err
        with acl_redis_server.client() as admin:
            assert admin.dbsize() == 0

    def test_unreachable_server_is_one_line_and_exit_1(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Nothing listening: exit status 1 and one BackendError line, no traceback."""
        (port,) = free_ports(1)
        path = config_file(tmp_path, f"redis://127.0.0.1:{port}", retries="0")
        assert bench("--config", path, "--requests", "10") == 1
        err = capsys.readouterr().err
        (last,) = [line for line in err.splitlines() if line.startswith("aa-storage: ")]
        assert last.startswith(
            f"aa-storage: BackendError: cannot reach redis at redis://127.0.0.1:{port}"
        )
        assert "Traceback" not in err

    def test_config_without_a_redis_section_is_refused(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A config that uses no Redis gives a ConfigError saying bench measures the driver."""
        path = tmp_path / "memory.toml"
        path.write_text('[storage]\nbackend = "memory"\n')
        assert bench("--config", str(path)) == 1
        assert capsys.readouterr().err == (
            f"aa-storage: ConfigError: {path}: no [storage.redis] section, and no store uses "
            "the redis driver; bench measures the Redis driver\n"
        )


class TestThrowawayServer:
    def test_is_started_and_stopped(self, capsys: pytest.CaptureFixture[str]) -> None:
        """Without a config, bench measures a redis-server of its own, gone once it ends."""
        assert bench("--requests", "10") == 0
        out, err = capsys.readouterr()
        assert len(rows(out)) == len(OPERATIONS) * len(MODES) + 1
        pid = int(
            re.search(r"started redis-server \(pid (\d+)\) at redis://127\.0\.0\.1:\d+", err)[1]
        )  # type: ignore[index]
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)

    @pytest.mark.parametrize("ignoring", [False, True], ids=["foreground", "sigint-ignored"])
    @pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=lambda s: s.name)
    def test_is_stopped_when_the_run_is_interrupted(
        self, stop: signal.Signals, ignoring: bool
    ) -> None:
        """Ctrl-C or SIGTERM mid-run ends bench with status 130, and its server with it,
        also when it was started with SIGINT ignored (`bench &` in a script, nohup)."""
        with _bench_process("--seconds", str(PATIENCE_SECS), sigint_ignored=ignoring) as process:
            err = _stderr_until(process, "[1/")
            pid = int(re.search(r"\(pid (\d+)\)", err)[1])  # type: ignore[index]
            process.send_signal(stop)
            assert process.wait(PATIENCE_SECS) == 130
            assert "aa-storage bench: interrupted" in err + process.stderr.read()  # type: ignore[union-attr]
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)

    @pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=lambda s: s.name)
    def test_stopping_during_the_stampede_stops_its_processes(self, stop: signal.Signals) -> None:
        """Ctrl-C or SIGTERM while the stampede's processes run ends bench with status 130
        and leaves none of them behind, nor the server, also when bench was started with
        SIGINT ignored."""
        with _bench_process("--requests", "5", sigint_ignored=True) as process:
            err = _stderr_until(process, "stampede, ")
            server = int(re.search(r"\(pid (\d+)\)", err)[1])  # type: ignore[index]
            deadline = time.monotonic() + PATIENCE_SECS
            while not (workers := _spawned_by(process.pid)) and time.monotonic() < deadline:
                time.sleep(0.01)
            assert workers, "the stampede started no process"
            process.send_signal(stop)
            assert process.wait(PATIENCE_SECS) == 130
            assert "aa-storage bench: interrupted" in err + process.stderr.read()  # type: ignore[union-attr]
        assert [pid for pid in [*workers, server] if _alive(pid)] == []

    def test_without_redis_server_on_path_says_what_to_do(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Neither a config nor a redis-server on PATH: one line naming both ways out."""
        monkeypatch.setenv("PATH", str(tmp_path))
        assert bench() == 1
        assert capsys.readouterr().err == (
            "aa-storage: ConfigError: bench needs a Redis server: pass --config FILE with a "
            "[storage.redis] section, or put redis-server on PATH (apt-get install "
            "redis-server) so bench starts a throwaway one\n"
        )


def test_interrupt_deletes_the_keys_made_so_far(redis_server: RedisServer, config: str) -> None:
    """Ctrl-C while a case runs still deletes every key the run made."""
    with (
        _bench_process("--config", config, "--seconds", str(PATIENCE_SECS)) as process,
        redis_server.client() as admin,
    ):
        _stderr_until(process, "[1/")
        deadline = time.monotonic() + PATIENCE_SECS
        while admin.dbsize() == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert admin.dbsize() > 0
        process.send_signal(signal.SIGINT)
        assert process.wait(PATIENCE_SECS) == 130
        assert admin.dbsize() == 0


@pytest.mark.asyncio
@pytest.mark.parametrize("operation", OPERATIONS, ids=lambda operation: operation.name)
async def test_raw_redis_py_sends_the_drivers_command(
    operation: Operation, redis_server: RedisServer, redis_backend: RedisBackend
) -> None:
    """For each operation, raw redis-py makes the server run exactly the commands the
    driver's call makes it run, those its script calls included."""
    async with aioredis.Redis.from_url(redis_server.url) as raw:
        subject, caller = Subject.over(redis_backend, raw), Caller.new()
        await operation.prepare(subject, caller)
        sent = {}
        for side, call in (("driver", operation.driver), ("raw", operation.raw)):
            await call(subject, caller)  # connections opened, scripts cached
            before = redis_server.commandstats()
            await call(subject, caller)
            after = redis_server.commandstats()
            sent[side] = {
                command: after[command] - before.get(command, 0)
                for command in after
                if command not in _HELPER_COMMANDS and after[command] != before.get(command, 0)
            }
    assert sent["driver"]
    assert sent["raw"] == sent["driver"]


@pytest.mark.parametrize(
    "arguments",
    [
        ["--concurrency", "1"],
        ["--seconds", "0"],
        ["--requests", "0"],
        ["--requests", "2.5"],
        ["--seconds", "1", "--requests", "5"],
    ],
)
def test_bad_arguments_are_refused(
    arguments: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """Fewer than 2 callers, a budget that is not positive, or both budgets: usage error."""
    with pytest.raises(SystemExit) as exited:
        main(["bench", *arguments])
    assert exited.value.code == 2
    assert "aa-storage bench: error:" in capsys.readouterr().err


@contextlib.contextmanager
def _bench_process(*args: str, sigint_ignored: bool = False) -> Iterator[subprocess.Popen[str]]:
    """``aa-storage bench`` in a process of its own, killed on the way out whatever the
    test did, so that a failed test leaves no bench writing to a shared server. With
    ``sigint_ignored``, started as a shell starts a background job: SIGINT ignored."""
    command = [sys.executable, "-m", "aa_storage", "bench", "--concurrency", str(CONCURRENCY)]
    if sigint_ignored:
        # `trap '' INT` ignores SIGINT, and exec keeps it ignored, as `bench &` would.
        command = ["sh", "-c", 'trap "" INT; exec "$@"', "sh", *command]
    process = subprocess.Popen(
        [*command, *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        assert process.stderr is not None
        process.stderr.close()


def _spawned_by(pid: int) -> list[int]:
    """The multiprocessing ``spawn`` workers whose parent is ``pid``, from /proc."""
    found = []
    for status in Path("/proc").glob("[0-9]*/status"):
        with contextlib.suppress(OSError):
            parent = re.search(r"^PPid:\s+(\d+)$", status.read_text(), re.M)
            command = (status.parent / "cmdline").read_bytes()
            if parent and int(parent[1]) == pid and b"spawn_main" in command:
                found.append(int(status.parent.name))
    return found


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs: it exists and is not a zombie waiting to be reaped."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return re.search(r"^State:\s+Z", status, re.M) is None


def _stderr_until(process: subprocess.Popen[str], mark: str) -> str:
    """Read the process's stderr until ``mark`` appears (the text read so far)."""
    assert process.stderr is not None
    said = ""
    while mark not in said:
        char = process.stderr.read(1)
        assert char, f"bench ended before saying {mark!r}: {said}"
        said += char
    return said

"""``aa-storage bench --peers`` against a real redis-server: the second table, its rows,
columns and ratios, the line under it for each peer, a peer that is not installed,
fails or is not on PATH, and the keys it leaves (none). No figure is asserted, only
its shape and that the ratios are the figures' quotients."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import io
import re
import shutil
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import attrs
import pytest

from aa_storage.testing import bounded
from aa_storage_redis import RedisBackend
from aa_storage_redis.bench import peer_benchmark, peers
from aa_storage_redis.bench.operations import Caller, Operation, Subject
from aa_storage_redis.bench.peer_cases import PEER_OPERATIONS
from aa_storage_redis.bench.peer_clients import COMMANDS, PYTHON_PEERS, Calls
from aa_storage_redis.bench.peer_floor import FLOOR
from aa_storage_redis.bench.timing import Budget
from aa_storage_redis.bench.uvloop_cases import uvloop_installed
from servers import RedisServer
from test_bench import _HELPER_COMMANDS, MODES, TIMEOUTS, bench, figure
from test_redis_cli import config_file

OPERATION_NAMES = ("increment", "get_policy", "save", "load")
PEERS = ("redis-py", "coredis", "valkey-glide", "redis-benchmark", "asyncio floor")
HEADER = [
    "operation",
    "mode",
    "driver ops/s",
    *PEERS,
    "driver/best peer",
    "driver/C",
    "driver/floor",
]
_NUMBER = r"[\d,]+"
_CELL = rf"(?:{_NUMBER}|-|failed)"
_RATIO = r"(?:\d+\.\d\dx|-)"
_ROW = re.compile(
    rf"(?P<operation>\w+) +(?P<mode>sequential|\d+ callers) +(?P<driver>{_NUMBER})"
    rf" +(?P<peers>{_CELL} +{_CELL} +{_CELL} +{_CELL} +{_CELL})"
    rf" +(?P<best>{_RATIO}) +(?P<c>{_RATIO}) +(?P<floor>{_RATIO})"
)
_PEER_LINE = re.compile(r"  (redis-py|coredis|valkey-glide|redis-benchmark|asyncio floor)\b.*")
_TITLE = re.compile(
    r"peers on the same server and workloads, in ops/s \(the best of (\d) round\(s\) of "
    r"(\d+) calls a case, driver and peers taking turns\):"
)


@attrs.frozen
class Run:
    status: int
    out: str
    err: str
    keys_left: int
    commands: dict[str, int]

    @property
    def section(self) -> list[str]:
        """The lines from the peers' title on."""
        lines = self.out.splitlines()
        (start,) = [number for number, line in enumerate(lines) if _TITLE.fullmatch(line)]
        return lines[start:]

    def rows(self) -> list[dict[str, str]]:
        """The table's rows: operation, mode, driver, each peer's cell, the three ratios."""
        return rows_of(self.section)

    def peer_lines(self) -> list[str]:
        return peer_lines_of(self.section)


def rows_of(section: list[str]) -> list[dict[str, str]]:
    """The rows of a peers table whose title is ``section[0]``."""
    found = []
    for line in section[2:]:
        if not line:
            break
        match = _ROW.fullmatch(line)
        assert match is not None, f"not a full row: {line!r}"
        names = ("operation", "mode", "driver", "best", "c", "floor")
        row = {name: match[name] for name in names}
        row.update(zip(PEERS, match["peers"].split(), strict=True))
        found.append(row)
    return found


def peer_lines_of(section: list[str]) -> list[str]:
    """The lines under a peers table whose title is ``section[0]``, up to the next blank."""
    start = section.index("", 2) + 1
    end = section.index("", start) if "" in section[start:] else len(section)
    return section[start:end]


_UVLOOP_TITLE = re.compile(
    r"the driver and the asyncio floor on uvloop \(the best of (\d) round\(s\) of "
    r"(.+) a case; redis-benchmark's figures are the table's above\):"
)
_UVLOOP_ROW = re.compile(
    rf"(?P<operation>\w+) +(?P<mode>sequential|\d+ callers) +(?P<driver>{_NUMBER})"
    rf" +(?P<floor_figure>{_CELL}) +(?P<c>{_RATIO}) +(?P<floor_c>{_RATIO}) +(?P<floor>{_RATIO})"
)


def uvloop_rows_of(section: list[str]) -> list[dict[str, str]]:
    """The rows of the uvloop table after the peers' lines; [] when there is none."""
    titles = [number for number, line in enumerate(section) if _UVLOOP_TITLE.fullmatch(line)]
    if not titles:
        return []
    (title,) = titles
    assert re.split(r"  +", section[title + 1]) == [
        "operation",
        "mode",
        "driver ops/s",
        "asyncio floor",
        "driver/C",
        "floor/C",
        "driver/floor",
    ]
    found = []
    for line in section[title + 2 :]:
        if not line:
            break
        match = _UVLOOP_ROW.fullmatch(line)
        assert match is not None, f"not a full row: {line!r}"
        found.append(match.groupdict())
    return found


def check_uvloop_rows(section: list[str], modes: tuple[str, ...]) -> None:
    """The uvloop table has every case, and its ratios are its figures' over the C
    limit's in the main table, as printed."""
    limits = {(row["operation"], row["mode"]): row["redis-benchmark"] for row in rows_of(section)}
    rows = uvloop_rows_of(section)
    assert [(row["operation"], row["mode"]) for row in rows] == [
        (operation, mode) for operation in OPERATION_NAMES for mode in modes
    ]
    for row in rows:
        driver, floor = figure(row["driver"]), figure(row["floor_figure"])
        limit = limits[row["operation"], row["mode"]]
        assert driver > 0, row
        assert floor > 0, row
        assert figure(row["floor"].removesuffix("x")) == pytest.approx(driver / floor, abs=0.006)
        if limit in ("-", "failed"):
            assert row["c"] == row["floor_c"] == "-"
            continue
        for name, value in (("c", driver), ("floor_c", floor)):
            ratio = figure(row[name].removesuffix("x"))
            assert ratio == pytest.approx(value / figure(limit), abs=0.006), (row, name)


def run_bench(server: RedisServer, tmp_path: Path, requests: int) -> Run:
    """``bench --peers --requests N`` against ``server``, its output captured."""
    server.reset()
    path = config_file(tmp_path, server.url, **TIMEOUTS)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = bench("--config", path, "--peers", "--requests", str(requests))
    with server.client() as admin:
        left = admin.dbsize()
    return Run(status, out.getvalue(), err.getvalue(), left, server.commandstats())


def installed(peer: str) -> bool:
    if peer == "asyncio floor":
        return True  # it needs hiredis only, as the driver does
    if peer == "redis-benchmark":
        return shutil.which(peer) is not None
    (module,) = [each.module for each in PYTHON_PEERS if each.name == peer]
    return importlib.util.find_spec(module) is not None


@pytest.fixture(scope="module")
def every_peer(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Run:
    """One run with every peer that is installed here; the tests below read it."""
    return run_bench(redis_server, tmp_path_factory.mktemp("peers"), 50)


class TestWithEveryPeer:
    def test_exits_0_and_prints_the_table_after_the_rest(self, every_peer: Run) -> None:
        """The peers' title, header and rows come last on stdout, after the driver's stats."""
        assert every_peer.status == 0, every_peer.err
        after = every_peer.out.partition("\ndriver stats over the run:\n")[2]
        stats, _, rest = after.partition("\n\n")
        assert all(line.startswith("  ") for line in stats.splitlines())
        assert rest.splitlines() == every_peer.section
        title = _TITLE.fullmatch(every_peer.section[0])
        assert title is not None
        # 50 calls: two rounds of 25.
        assert title.groups() == ("2", "25")
        assert re.split(r"  +", every_peer.section[1]) == HEADER

    def test_has_each_operation_in_both_modes(self, every_peer: Run) -> None:
        assert [(row["operation"], row["mode"]) for row in every_peer.rows()] == [
            (operation, mode) for operation in OPERATION_NAMES for mode in MODES
        ]
        assert [operation.name for operation in PEER_OPERATIONS] == list(OPERATION_NAMES)

    def test_each_installed_peer_has_a_figure_in_every_row(self, every_peer: Run) -> None:
        for row in every_peer.rows():
            assert figure(row["driver"]) > 0
            for peer in PEERS:
                if installed(peer):
                    assert re.fullmatch(_NUMBER, row[peer]), (row, peer)
                    assert figure(row[peer]) > 0
                else:
                    assert row[peer] == "-", (row, peer)

    def test_ratios_are_the_driver_over_the_figures_as_printed(self, every_peer: Run) -> None:
        """driver/best peer divides by the fastest Python client (the floor is none),
        driver/C by redis-benchmark, driver/floor by the asyncio floor."""
        for row in every_peer.rows():
            driver = figure(row["driver"])
            python = [figure(row[peer]) for peer in PEERS[:3] if row[peer] not in ("-", "failed")]
            if python:
                best = figure(row["best"].removesuffix("x"))
                assert best == pytest.approx(driver / max(python), rel=0.02, abs=0.01), row
            else:
                assert row["best"] == "-"
            if row["redis-benchmark"] in ("-", "failed"):
                assert row["c"] == "-"
            else:
                c = figure(row["c"].removesuffix("x"))
                assert c == pytest.approx(driver / figure(row["redis-benchmark"]), 0.02, 0.01)
            floor = figure(row["floor"].removesuffix("x"))
            assert floor == pytest.approx(driver / figure(row["asyncio floor"]), 0.02, 0.01)

    def test_a_line_per_peer_says_how_it_ran(self, every_peer: Run) -> None:
        lines = every_peer.peer_lines()
        names = [match[1] for line in lines if (match := _PEER_LINE.fullmatch(line))]
        assert names == list(PEERS)
        for name, line in zip(names, lines, strict=True):
            assert "failed" not in line, line
            if name == "asyncio floor":
                assert line.startswith("  asyncio floor: pool_size sockets shared by every caller")
            elif installed(name):
                assert re.fullmatch(r"  [\w-]+ \d[\w.]*: .+", line), line

    def test_progress_names_every_case_of_both_rounds(self, every_peer: Run) -> None:
        # On uvloop, the driver and the floor run the cases again.
        sides = 1 + sum(installed(peer) for peer in PEERS) + 2 * uvloop_installed()
        total = 2 * len(OPERATION_NAMES) * len(MODES) * sides
        assert f"aa-storage bench: peers, 2 round(s) of {total // 2} cases of 25 calls each\n" in (
            every_peer.err
        )
        progress = re.findall(
            rf"\[\d+/{total}\] peers round (\d)(?: on uvloop)?, .* \.\.\. (.*)", every_peer.err
        )
        assert len(progress) == total
        assert {number for number, _ in progress} == {"1", "2"}
        assert all(re.fullmatch(rf"{_NUMBER} ops/s", outcome) for _, outcome in progress)

    def test_the_driver_and_the_floor_run_again_on_uvloop(self, every_peer: Run) -> None:
        if not uvloop_installed():
            assert uvloop_rows_of(every_peer.section) == []
            return
        driver_cases = re.findall(r"peers round \d on uvloop, .*, driver \.\.\.", every_peer.err)
        assert len(driver_cases) == 2 * len(OPERATION_NAMES) * len(MODES)  # 2 rounds
        check_uvloop_rows(every_peer.section, MODES)

    def test_deletes_every_key_it_made(self, every_peer: Run) -> None:
        """The peers wrote and read (scripts, GET, HMGET), and no key is left."""
        for command in ("evalsha", "get", "hmget", "script|load"):
            assert every_peer.commands.get(command, 0) > 0, command
        assert every_peer.keys_left == 0


def test_a_peer_missing_or_failing_is_named_and_the_run_goes_on(
    redis_server: RedisServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """coredis not importable, valkey-glide failing on every call, redis-benchmark not on
    PATH: their cells say so, a line each says why, the others are measured, the exit
    status is 0 and no key is left. 20 calls make one round."""
    monkeypatch.setitem(sys.modules, "coredis", None)  # `import coredis` raises ImportError
    monkeypatch.setenv("PATH", str(tmp_path))

    @contextlib.asynccontextmanager
    async def failing(backend: RedisBackend, callers: int) -> AsyncIterator[Calls]:
        async def call(subject: Subject, caller: Caller) -> None:
            raise ConnectionRefusedError("no glide today")

        yield lambda operation: call

    glide = [peer for peer in PYTHON_PEERS if peer.name == "valkey-glide"]
    others = [peer for peer in PYTHON_PEERS if peer.name != "valkey-glide"]
    patched = (*others, *(attrs.evolve(peer, connect=failing, module="sys") for peer in glide))
    monkeypatch.setattr(peers, "PYTHON_PEERS", patched)

    run = run_bench(redis_server, tmp_path, 20)
    assert run.status == 0, run.err
    assert _TITLE.fullmatch(run.section[0]).groups() == ("1", "20")  # type: ignore[union-attr]
    for row in run.rows():
        assert re.fullmatch(_NUMBER, row["redis-py"]), row
        assert (row["coredis"], row["valkey-glide"], row["redis-benchmark"]) == (
            "-",
            "failed",
            "-",
        )
        assert row["c"] == "-"
    lines = dict(line.split(": ", 1) for line in run.peer_lines())
    assert lines["  coredis"] == "not installed (pip install coredis)"
    assert lines["  redis-benchmark"] == "not found on PATH (apt-get install redis-tools)"
    [glide_line] = [value for key, value in lines.items() if "valkey-glide" in key]
    assert glide_line == "failed: ConnectionRefusedError: no glide today"
    assert "Traceback" not in run.err
    assert run.keys_left == 0


@pytest.mark.parametrize(
    ("budget", "rounds", "share"),
    [
        (Budget(2.0), 2, Budget(1.0)),
        (Budget(0.5), 2, Budget(0.25)),
        (Budget(0.4), 1, Budget(0.4)),
        (Budget(2.0, 50), 2, Budget(2.0, 25)),
        (Budget(2.0, 39), 1, Budget(2.0, 39)),
    ],
)
def test_two_rounds_of_half_the_budget_when_half_is_enough(
    budget: Budget, rounds: int, share: Budget
) -> None:
    assert peers.rounds_of(budget) == (rounds, share)


@pytest.mark.asyncio
@pytest.mark.parametrize("operation", PEER_OPERATIONS, ids=lambda operation: operation.name)
async def test_each_peer_sends_the_drivers_command(
    operation: Operation, redis_server: RedisServer, redis_backend: RedisBackend
) -> None:
    """For each operation, each installed peer, redis-benchmark too, makes the server run
    exactly the commands the driver's call makes it run, those its script calls included."""
    subject, caller = Subject.over(redis_backend), Caller.new()
    while b"\0" in caller.record.agent_id.bytes:  # what a command line cannot hold
        caller = Caller.new()
    await operation.prepare(subject, caller)

    async def sent(call: object) -> dict[str, int]:
        before = redis_server.commandstats()
        await call  # type: ignore[misc]
        after = redis_server.commandstats()
        return {
            command: after[command] - before.get(command, 0)
            for command in after
            if command not in _HELPER_COMMANDS and after[command] != before.get(command, 0)
        }

    await operation.driver(subject, caller)  # scripts cached
    expected = await sent(operation.driver(subject, caller))
    assert expected
    for peer in (*PYTHON_PEERS, FLOOR):
        if not installed(peer.name):
            continue
        async with peer.connect(redis_backend, 1) as calls:
            call = calls(operation)
            await call(subject, caller)  # connected
            assert await sent(call(subject, caller)) == expected, peer.name
    path = peer_benchmark.find()
    if path is not None:
        command = COMMANDS[operation.name](subject.keys, caller)
        requests = peer_benchmark.MIN_REQUESTS
        ran = await sent(
            peer_benchmark.requests_per_sec(path, redis_backend.pool.config, command, 1, requests)
        )
        # It asks for the server's settings first.
        ran.pop("config|get", None)
        assert ran == {name: requests * count for name, count in expected.items()}


def test_the_readmes_peer_table_is_one_the_bench_prints() -> None:
    """The README quotes a --peers table: its title, header and rows are in the bench's
    format, its ratios are its figures' as printed, and a line per peer follows."""
    readme = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")
    lines = readme.splitlines()
    (start,) = [number for number, line in enumerate(lines) if line.startswith("peers on the same")]
    end = lines.index("```", start)
    section = lines[start:end]
    assert re.fullmatch(
        r"peers on the same server and workloads, in ops/s \(the best of 2 round\(s\) of "
        r"[\d.]+ s a case, driver and peers taking turns\):",
        section[0],
    )
    assert re.split(r"  +", section[1]) == HEADER
    rows = rows_of(section)
    assert [(row["operation"], row["mode"]) for row in rows] == [
        (operation, mode) for operation in OPERATION_NAMES for mode in ("sequential", "50 callers")
    ]
    for row in rows:
        driver = figure(row["driver"])
        best = max(figure(row[peer]) for peer in PEERS[:3])
        assert figure(row["best"].removesuffix("x")) == pytest.approx(driver / best, abs=0.006)
        for column, ratio in (("redis-benchmark", "c"), ("asyncio floor", "floor")):
            expected = driver / figure(row[column])
            assert figure(row[ratio].removesuffix("x")) == pytest.approx(expected, abs=0.006)
    names = [match[1] for line in peer_lines_of(section) if (match := _PEER_LINE.fullmatch(line))]
    assert names == list(PEERS)
    check_uvloop_rows(section, ("sequential", "50 callers"))


@pytest.mark.asyncio
class TestFloor:
    """The floor does nothing a client need not, but it never hangs the bench."""

    async def test_a_caller_that_left_costs_the_next_one_nothing(
        self, redis_backend: RedisBackend
    ) -> None:
        """A call cancelled while its reply is on the way: the reply is dropped, and the
        calls after it on the same sockets get their own replies."""
        operation = next(each for each in PEER_OPERATIONS if each.name == "increment")
        subject, caller = Subject.over(redis_backend), Caller.new()
        await operation.prepare(subject, caller)
        async with FLOOR.connect(redis_backend, 1) as calls:
            call = calls(operation)
            first = asyncio.ensure_future(call(subject, caller))
            await asyncio.sleep(0)  # written, its reply not read yet
            first.cancel()
            totals = [int(await bounded(call(subject, caller))) for _ in range(3)]
        assert totals == sorted(totals)
        assert totals[1:] == [totals[0] + 1, totals[0] + 2]

    async def test_a_lost_socket_fails_the_calls_instead_of_hanging(
        self, redis_backend: RedisBackend, redis_server: RedisServer
    ) -> None:
        operation = next(each for each in PEER_OPERATIONS if each.name == "get_policy")
        subject, caller = Subject.over(redis_backend), Caller.new()
        await operation.prepare(subject, caller)
        async with FLOOR.connect(redis_backend, 1) as calls:
            call = calls(operation)
            assert await bounded(call(subject, caller))
            with redis_server.client() as admin:
                admin.client_kill_filter(_type="normal", skipme=True)

            async def until_one_fails() -> ConnectionError:
                for _ in range(1000):  # until the loop sees the socket gone
                    try:
                        await bounded(call(subject, caller))
                    except ConnectionError as exc:
                        return exc
                    await asyncio.sleep(0.01)
                raise AssertionError("the calls went on after their sockets were killed")

            assert "the socket closed" in str(await until_one_fails())

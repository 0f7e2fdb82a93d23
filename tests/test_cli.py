"""Unit tests of the aa-storage CLI: `drivers`, `check` and the commands drivers add, their
output and exit status."""

from __future__ import annotations

import argparse
import importlib.metadata
import logging
import os
import re
import subprocess
import sys
import textwrap
import tomllib
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import pytest

from aa_storage import (
    CONFIG_ENV_VAR,
    ENTRY_POINT_GROUP,
    BackendError,
    BackendInfo,
    Driver,
    Kind,
    load_config,
)
from aa_storage.cli import main
from aa_storage.commands import Commands
from aa_storage.hookspecs import hookimpl
from aa_storage.memory import MemoryBackend, MemoryConfig, MemoryRateLimitCounter

PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"

ALL_KINDS = "policy_store, rate_limit_counter, session_store"
HEADER = f"{'kind':<20}{'driver':<10}{'operation':<14}{'ok':<5}{'latency':>10}"
OPERATIONS = [
    ("session_store", "save"),
    ("session_store", "load"),
    ("session_store", "delete"),
    ("rate_limit_counter", "increment"),
    ("rate_limit_counter", "current"),
    ("rate_limit_counter", "reset"),
    ("policy_store", "get_or_load"),
    ("policy_store", "cache_policy"),
    ("policy_store", "get_policy"),
    ("policy_store", "invalidate"),
]
MEMORY_CONFIG_TAIL = """
effective config:
  [storage]
  backend = "memory"
  session_store = "memory"
  rate_limit_counter = "memory"
  policy_store = "memory"
  [storage.memory]
"""


@attrs.define
class LyingCounter:
    """A counter whose current() is one more than the truth."""

    inner: MemoryRateLimitCounter

    async def increment(self, key: str, amount: int, window_secs: int) -> int:
        return await self.inner.increment(key, amount, window_secs)

    async def current(self, key: str) -> int:
        return await self.inner.current(key) + 1

    async def reset(self, key: str) -> None:
        await self.inner.reset(key)


@attrs.define
class LiarBackend(MemoryBackend):
    """A memory backend whose rate limiter lies."""

    def rate_limiter(self) -> LyingCounter:  # type: ignore[override]
        return LyingCounter(super().rate_limiter())


@attrs.define
class BrokenSessions:
    """A session store whose loads fail as an unreachable server would."""

    async def save(self, record: object) -> None:
        return None

    async def load(self, session_id: object) -> object:
        raise BackendError("connection refused")

    async def delete(self, session_id: object) -> None:
        return None


@attrs.define
class BrokenBackend(MemoryBackend):
    def sessions(self) -> BrokenSessions:  # type: ignore[override]
        return BrokenSessions()


class ShardDownError(BackendError):
    """A driver's own error class, whose constructor takes more than a message."""

    def __init__(self, shard: int, reason: str) -> None:
        self.shard = shard
        super().__init__(f"shard {shard} is down: {reason}")


@attrs.define
class ShardedCounter:
    """A counter whose every call fails with the driver's own error class."""

    async def increment(self, key: str, amount: int, window_secs: int) -> int:
        raise ShardDownError(3, "no quorum")

    async def current(self, key: str) -> int:
        raise ShardDownError(3, "no quorum")

    async def reset(self, key: str) -> None:
        raise ShardDownError(3, "no quorum")


@attrs.define
class ShardedBackend(MemoryBackend):
    def rate_limiter(self) -> ShardedCounter:  # type: ignore[override]
        return ShardedCounter()


@attrs.frozen
class VaultConfig:
    url: str = "redis://app:hunter2@cache:7000/0"
    password: str = "s3cret"
    pool_size: int = 3
    timeout: float = 0.5
    verify: bool = False
    ca_file: str | None = None
    label: str = 'say "hi"\\\tthere'


@attrs.define
class VaultBackend(MemoryBackend):
    async def describe(self) -> BackendInfo:
        return BackendInfo(facts=(("server", "cache:7000"),), warnings=("not encrypted",))


def chatty_backend() -> MemoryBackend:
    """A memory backend, opened with a logged warning as the redis driver logs one."""
    logging.getLogger("aa_storage_chatty").warning("traffic travels in the clear")
    return MemoryBackend()


def _driver(name: str, backend: Callable[[], Any], config_class: type = MemoryConfig) -> Driver:
    return Driver(
        name=name, config_class=config_class, kinds=set(Kind), open=lambda config: backend()
    )


TEST_DRIVERS = {
    "liar": _driver("liar", LiarBackend),
    "broken": _driver("broken", BrokenBackend),
    "sharded": _driver("sharded", ShardedBackend),
    "vault": _driver("vault", VaultBackend, VaultConfig),
    "chatty": _driver("chatty", chatty_backend),
}


def _plugin_module(module_name: str, driver: Driver) -> types.ModuleType:
    """A driver plugin module whose register() hook returns ``driver``."""
    module = types.ModuleType(module_name)

    @hookimpl
    def register() -> Driver:
        return driver

    module.register = register  # type: ignore[attr-defined]
    return module


@pytest.fixture
def fake_drivers(monkeypatch: pytest.MonkeyPatch) -> None:
    """Install the test drivers as entry points, next to the real ones."""
    extra = []
    for name, driver in TEST_DRIVERS.items():
        module_name = f"aa_storage_test_cli_{name}"
        monkeypatch.setitem(sys.modules, module_name, _plugin_module(module_name, driver))
        extra.append(
            importlib.metadata.EntryPoint(name=name, value=module_name, group=ENTRY_POINT_GROUP)
        )
    real = importlib.metadata.entry_points

    def entry_points(*, group: str) -> list[importlib.metadata.EntryPoint]:
        return [*real(group=group), *extra]

    monkeypatch.setattr("aa_storage._registry.entry_points", entry_points)


@pytest.fixture(autouse=True)
def no_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(CONFIG_ENV_VAR, raising=False)


def _config(tmp_path: Path, text: str | bytes) -> str:
    path = tmp_path / "agent-assembly.toml"
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return str(path)


def _failure(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    """Run a command that must fail; return its single stderr line."""
    status = main(argv)
    out, err = capsys.readouterr()
    assert status == 1
    assert out == ""
    assert err.endswith("\n")
    assert err.count("\n") == 1, err
    assert "Traceback" not in err
    return err.rstrip("\n")


class TestDrivers:
    def test_lists_memory_and_redis_with_their_kinds(
        self, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """`drivers` prints one line per driver: its name, then its kinds, sorted."""
        assert main(["drivers"]) == 0
        out, err = capsys.readouterr()
        lines = out.splitlines()
        assert f"memory    {ALL_KINDS}" in lines
        assert f"redis     {ALL_KINDS}" in lines
        assert lines == sorted(lines)
        assert err == ""

    def test_runs_as_a_module(self) -> None:
        """`python -m aa_storage drivers` exits 0 and prints the same lines."""
        result = subprocess.run(
            [sys.executable, "-m", "aa_storage", "drivers"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        assert f"memory    {ALL_KINDS}" in result.stdout.splitlines()
        assert f"redis     {ALL_KINDS}" in result.stdout.splitlines()
        assert result.stderr == ""

    def test_bare_command_prints_the_help(self, capsys: pytest.CaptureFixture[str]) -> None:
        """Without a command, the full help (usage, every command, --version) goes to stderr,
        and the exit status is 2."""
        assert main([]) == 2
        out, err = capsys.readouterr()
        assert out == ""
        assert err.startswith("usage: aa-storage ")
        commands = err.split("\ncommands:\n")[1]
        assert re.search(r"^ +drivers +list installed drivers", commands, re.M)
        assert re.search(r"^ +check +round-trip every operation", commands, re.M)
        assert "--version" in err

    def test_version_is_the_packages(self, capsys: pytest.CaptureFixture[str]) -> None:
        """`--version` prints the program name and the version pyproject.toml declares."""
        with pytest.raises(SystemExit) as info:
            main(["--version"])
        assert info.value.code == 0
        version = tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))["project"]["version"]
        assert capsys.readouterr().out == f"aa-storage {version}\n"


def _closed_pipe_run(*args: str) -> subprocess.CompletedProcess[str]:
    """Run ``python -m aa_storage args`` with stdout a pipe whose reader is already gone."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        return subprocess.run(
            [sys.executable, "-m", "aa_storage", *args],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
            check=False,
        )
    finally:
        os.close(write_end)


class TestClosedPipe:
    @pytest.mark.parametrize("command", ["check", "drivers"])
    def test_reader_gone_is_a_quiet_exit(self, command: str) -> None:
        """When the reader of stdout has gone (`| head -1`), the command exits 1 in silence:
        no BrokenPipeError traceback and no "Exception ignored" on stderr."""
        result = _closed_pipe_run(command)
        assert result.stderr == ""
        assert result.returncode == 1

    @pytest.mark.parametrize("args", [["--help"], ["check", "--help"], ["--version"]])
    def test_help_to_a_reader_that_is_gone_is_silent(self, args: list[str]) -> None:
        """Help and version text sent to a reader that has gone leave stderr empty."""
        assert _closed_pipe_run(*args).stderr == ""

    def test_reader_that_reads_one_line(self) -> None:
        """`aa-storage check | head -1` prints the header and no traceback."""
        with subprocess.Popen(
            [sys.executable, "-m", "aa_storage", "check"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        ) as process:
            assert process.stdout is not None
            assert process.stderr is not None
            first = process.stdout.readline()
            process.stdout.close()
            stderr = process.stderr.read()
            process.wait(timeout=60)
        assert first.startswith("kind ")
        assert stderr == ""


class TestCheck:
    def test_memory_defaults(self, capsys: pytest.CaptureFixture[str]) -> None:
        """`check` without a config runs all 10 operations on memory and exits 0."""
        assert main(["check"]) == 0
        out, err = capsys.readouterr()
        assert err == ""
        lines = out.splitlines()
        assert lines[0] == HEADER
        rows = [
            re.fullmatch(r"(\w+) +(\w+) +(\w+) +yes +\d+\.\d\dms", line) for line in lines[1:11]
        ]
        assert [
            row.groups() if row else line for row, line in zip(rows, lines[1:11], strict=True)
        ] == [(kind, "memory", operation) for kind, operation in OPERATIONS]
        assert lines[11:14] == ["", "[memory]", "  storage: in this process; lost when it exits"]
        assert out.endswith(MEMORY_CONFIG_TAIL)

    def test_config_file(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        """`check --config` reads the file and reports the drivers it selects."""
        path = _config(tmp_path, '[storage]\nbackend = "memory"\n[storage.memory]\n')
        assert main(["check", "--config", path]) == 0
        assert capsys.readouterr().out.endswith(MEMORY_CONFIG_TAIL)

    def test_help_says_where_the_config_comes_from(
        self, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """`check --help` says that without --config, AA_STORAGE_CONFIG is read, and
        without that, the memory driver is used."""
        with pytest.raises(SystemExit) as info:
            main(["check", "--help"])
        assert info.value.code == 0
        text = " ".join(capsys.readouterr().out.split())
        assert (
            "--config FILE TOML config file; without it, the file named by the "
            "AA_STORAGE_CONFIG environment variable, and when that is unset, "
            "the embedded memory driver"
        ) in text

    def test_env_var_naming_no_file_names_the_variable(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A missing file named by AA_STORAGE_CONFIG is one ConfigError line naming the variable."""
        path = str(tmp_path / "absent.toml")
        monkeypatch.setenv(CONFIG_ENV_VAR, path)
        assert _failure(capsys, ["check"]) == (
            f"aa-storage: ConfigError: AA_STORAGE_CONFIG names {path!r}, but there is no such file"
        )

    def test_env_var_is_read_without_config_option(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Without --config, `check` reads the file named by AA_STORAGE_CONFIG."""
        monkeypatch.setenv(CONFIG_ENV_VAR, _config(tmp_path, "[storage]\npool_sise = 3\n"))
        assert _failure(capsys, ["check"]) == (
            "aa-storage: InvalidConfigError: invalid storage configuration: "
            "storage.pool_sise: unknown key"
        )

    def test_bad_config_is_one_line(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """An unknown key exits 1 with one InvalidConfigError line and no traceback."""
        path = _config(tmp_path, "[storage]\npool_sise = 3\n")
        line = _failure(capsys, ["check", "--config", path])
        assert line.startswith("aa-storage: InvalidConfigError:")
        assert line == (
            "aa-storage: InvalidConfigError: invalid storage configuration: "
            "storage.pool_sise: unknown key"
        )

    def test_missing_file_is_one_line(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A config file that does not exist exits 1 with one ConfigError line."""
        path = str(tmp_path / "absent.toml")
        assert _failure(capsys, ["check", "--config", path]) == (
            f"aa-storage: ConfigError: {path}: cannot read config file: No such file or directory"
        )

    def test_unknown_driver_is_one_line(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A config naming an unknown driver exits 1 with one UnknownDriverError line."""
        path = _config(tmp_path, '[storage]\nbackend = "nope"\n')
        line = _failure(capsys, ["check", "--config", path])
        assert line.startswith(
            "aa-storage: UnknownDriverError: storage.backend: unknown driver 'nope'; "
            "installed drivers: "
        )

    def test_message_with_newlines_stays_one_line(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A message holding newlines (here from a quoted TOML key) is printed on one line."""
        path = _config(tmp_path, '[storage]\n"pool\\nsise" = 3\n')
        assert _failure(capsys, ["check", "--config", path]) == (
            "aa-storage: InvalidConfigError: invalid storage configuration: "
            "storage.pool sise: unknown key"
        )

    def test_config_that_is_not_utf8_is_one_line(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A config file that is not UTF-8 exits 1 with one ConfigError line."""
        path = _config(tmp_path, b'[storage]\nbackend = "\xff"\n')
        assert _failure(capsys, ["check", "--config", path]).startswith(
            f"aa-storage: ConfigError: {path}: "
        )

    @pytest.mark.usefixtures("fake_drivers")
    def test_wrong_answer_is_check_failed(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A store that answers wrongly exits 1 with one CheckFailed line saying what it got."""
        path = _config(tmp_path, '[storage]\nrate_limit_counter = "liar"\n')
        assert _failure(capsys, ["check", "--config", path]) == (
            "aa-storage: CheckFailed: current returned 2, expected 1"
        )

    @pytest.mark.usefixtures("fake_drivers")
    def test_storage_error_names_the_operation(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A failing store exits 1 with one line: the error's class, kind, operation and driver."""
        path = _config(tmp_path, '[storage]\nbackend = "broken"\n')
        assert _failure(capsys, ["check", "--config", path]) == (
            "aa-storage: BackendError: session_store load via broken: connection refused"
        )

    @pytest.mark.usefixtures("fake_drivers")
    def test_driver_error_class_with_own_constructor(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A driver's own StorageError subclass still gives one line, exit 1, no traceback."""
        path = _config(tmp_path, '[storage]\nrate_limit_counter = "sharded"\n')
        line = _failure(capsys, ["check", "--config", path])
        assert line.startswith("aa-storage: ")
        assert line.endswith("shard 3 is down: no quorum")

    @pytest.mark.usefixtures("fake_drivers")
    def test_report_shows_facts_warnings_and_redacted_settings(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """The report lists each backend's facts and warnings, and settings without secrets."""
        path = _config(tmp_path, '[storage]\nbackend = "memory"\npolicy_store = "vault"\n')
        assert main(["check", "--config", path]) == 0
        out = capsys.readouterr().out
        assert "\n[vault]\n  server: cache:7000\n  WARNING: not encrypted\n" in out
        assert out.endswith(
            "\neffective config:\n"
            "  [storage]\n"
            '  backend = "memory"\n'
            '  session_store = "memory"\n'
            '  rate_limit_counter = "memory"\n'
            '  policy_store = "vault"\n'
            "  [storage.memory]\n"
            "  [storage.vault]\n"
            '  url = "redis://app:***@cache:7000/0"\n'
            '  password = "***"\n'
            "  pool_size = 3\n"
            "  timeout = 0.5\n"
            "  verify = false\n"
            "  # ca_file is not set\n"
            '  label = "say \\"hi\\"\\\\\\tthere"\n'
        )
        assert "hunter2" not in out
        assert "s3cret" not in out
        policy_rows = [line.split()[:2] for line in out.splitlines() if "policy_store" in line]
        assert policy_rows[:3] == [["policy_store", "vault"]] * 3

    @pytest.mark.usefixtures("fake_drivers")
    def test_effective_config_is_toml_that_loads_back(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """The effective config parses as TOML, and loading it gives the config checked
        (the drivers' own settings included), apart from the masked secrets."""
        path = _config(tmp_path, '[storage]\nbackend = "memory"\npolicy_store = "vault"\n')
        assert main(["check", "--config", path]) == 0
        printed = capsys.readouterr().out.partition("\neffective config:\n")[2]
        document = tomllib.loads(textwrap.dedent(printed))
        vault = document["storage"]["vault"]
        assert vault == {
            "url": "redis://app:***@cache:7000/0",
            "password": "***",
            "pool_size": 3,
            "timeout": 0.5,
            "verify": False,
            "label": 'say "hi"\\\tthere',
        }
        expected = load_config(path)
        unmasked = {**vault, "url": VaultConfig().url, "password": VaultConfig().password}
        document["storage"]["vault"] = unmasked
        loaded = load_config(document)
        assert loaded.drivers == expected.drivers
        assert [loaded.driver_for(kind) for kind in Kind] == [
            expected.driver_for(kind) for kind in Kind
        ]

    @pytest.mark.usefixtures("fake_drivers")
    def test_driver_warnings_in_the_log_are_labelled(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A warning a driver logs while check runs reaches stderr labelled WARNING, like
        the report's own warnings."""
        path = _config(tmp_path, '[storage]\nbackend = "chatty"\n')
        assert main(["check", "--config", path]) == 0
        err = capsys.readouterr().err
        assert err == "aa-storage: WARNING: traffic travels in the clear\n"


def _greet(args: argparse.Namespace) -> int:
    print(f"hello, {args.name}")
    return args.status  # type: ignore[no-any-return]


def _add_greet(commands: Commands) -> None:
    greet = commands.add("greet", _greet, help="say hello", description="Say hello to NAME.")
    greet.add_argument("name")
    greet.add_argument("--status", type=int, default=0)


def _add_failing(commands: Commands) -> None:
    def fail(args: argparse.Namespace) -> int:
        raise BackendError("the shard is down")

    commands.add("fail", fail, help="fail", description="Fail.")


def _add_check(commands: Commands) -> None:
    commands.add("check", _greet, help="a second check", description="Clash.")


def _add_no_status(commands: Commands) -> None:
    commands.add("mute", lambda args: None, help="return nothing", description="Mute.")  # type: ignore[arg-type,return-value]


def _add_two_words(commands: Commands) -> None:
    commands.add("two words", _greet, help="a bad name", description="Bad.")


def _raise_in_hook(commands: Commands) -> None:
    raise RuntimeError("no config for my commands")


@pytest.fixture
def command_plugins(monkeypatch: pytest.MonkeyPatch) -> Callable[..., None]:
    """Install driver plugins, each with an ``add_commands`` hook, as entry points."""
    extra: list[importlib.metadata.EntryPoint] = []
    real = importlib.metadata.entry_points
    monkeypatch.setattr(
        "aa_storage._registry.entry_points",
        lambda *, group: [*real(group=group), *extra],
    )

    def install(name: str, add_commands: Callable[..., None]) -> None:
        module_name = f"aa_storage_test_commands_{name}"
        module = _plugin_module(module_name, _driver(name, MemoryBackend))
        module.add_commands = hookimpl(add_commands)  # type: ignore[attr-defined]
        monkeypatch.setitem(sys.modules, module_name, module)
        extra.append(
            importlib.metadata.EntryPoint(name=name, value=module_name, group=ENTRY_POINT_GROUP)
        )

    return install


class TestDriverCommands:
    def test_a_drivers_command_runs_with_its_arguments(
        self, command_plugins: Callable[..., None], capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A command a plugin adds parses its arguments, and its return is the exit status."""
        command_plugins("greeter", _add_greet)
        assert main(["greet", "Ada", "--status", "3"]) == 3
        assert capsys.readouterr() == ("hello, Ada\n", "")

    def test_is_listed_in_the_help_after_the_built_in_commands(
        self, command_plugins: Callable[..., None], capsys: pytest.CaptureFixture[str]
    ) -> None:
        """`aa-storage` without a command lists the plugin's command with its help line."""
        command_plugins("greeter", _add_greet)
        assert main([]) == 2
        listed = capsys.readouterr().err.split("\ncommands:\n")[1]
        names = re.findall(r"^ {4}(\w+) ", listed, re.M)
        assert names[:2] == ["drivers", "check"]
        assert "greet" in names[2:]
        assert re.search(r"^ +greet +say hello$", listed, re.M)

    def test_its_storage_error_is_one_line_and_exit_1(
        self, command_plugins: Callable[..., None], capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A StorageError raised by a plugin's command is printed as the built-ins' are."""
        command_plugins("failing", _add_failing)
        assert _failure(capsys, ["fail"]) == "aa-storage: BackendError: the shard is down"

    def test_a_hook_that_raises_is_one_line_naming_the_plugin(
        self, command_plugins: Callable[..., None], capsys: pytest.CaptureFixture[str]
    ) -> None:
        """An exception in add_commands is a PluginError naming the plugin's entry point."""
        command_plugins("sulky", _raise_in_hook)
        assert _failure(capsys, ["bench"]) == (
            "aa-storage: PluginError: add_commands() of entry point sulky = "
            "aa_storage_test_commands_sulky failed: no config for my commands"
        )

    @pytest.mark.parametrize("argv", [["drivers"], ["check"]])
    def test_a_broken_hook_stops_no_built_in_command(
        self,
        argv: list[str],
        command_plugins: Callable[..., None],
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        """`drivers` and `check` never ask plugins for commands, so a broken hook spares them."""
        command_plugins("sulky", _raise_in_hook)
        assert main(argv) == 0
        assert capsys.readouterr().err == ""

    def test_a_name_taken_by_a_built_in_is_refused(
        self, command_plugins: Callable[..., None], capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A plugin adding `check` is refused, naming the plugin and aa-storage itself."""
        command_plugins("rival", _add_check)
        assert _failure(capsys, ["greet"]) == (
            "aa-storage: PluginError: add_commands() of entry point rival = "
            "aa_storage_test_commands_rival failed: command 'check' is already added by "
            "aa-storage itself"
        )

    def test_a_name_taken_by_another_plugin_names_both(
        self, command_plugins: Callable[..., None], capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Two plugins adding one command: the second is refused, naming the first."""
        command_plugins("greeter", _add_greet)
        command_plugins("greeter2", _add_greet)
        assert _failure(capsys, ["greet", "Ada"]) == (
            "aa-storage: PluginError: add_commands() of entry point greeter2 = "
            "aa_storage_test_commands_greeter2 failed: command 'greet' is already added by "
            "entry point greeter = aa_storage_test_commands_greeter"
        )

    def test_a_name_of_two_words_is_refused(
        self, command_plugins: Callable[..., None], capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A command name that is not one word is refused, quoting it."""
        command_plugins("wordy", _add_two_words)
        assert _failure(capsys, ["greet"]).endswith(
            "failed: a command's name is one word not starting with '-', got 'two words'"
        )

    def test_a_hook_with_the_wrong_arguments_is_invalid(
        self, command_plugins: Callable[..., None], capsys: pytest.CaptureFixture[str]
    ) -> None:
        """An add_commands implementation whose argument the hookspec lacks makes the plugin
        invalid, one line naming it, with no pluggy traceback."""

        def add_commands(parser: argparse.ArgumentParser) -> None:
            """Takes the argument the hookspec does not have."""

        command_plugins("misfit", add_commands)
        line = _failure(capsys, ["greet"])
        assert line.startswith(
            "aa-storage: PluginError: driver plugin entry point misfit = "
            "aa_storage_test_commands_misfit is invalid: "
        )
        assert "Argument(s) {'parser'} are declared in the hookimpl" in line

    def test_a_command_that_returns_no_status_is_a_plugin_error(
        self, command_plugins: Callable[..., None], capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A plugin's command that returns None, not an exit status, is a PluginError."""
        command_plugins("mute", _add_no_status)
        assert _failure(capsys, ["mute"]) == (
            "aa-storage: PluginError: command 'mute' of entry point mute = "
            "aa_storage_test_commands_mute returned None, not an exit status"
        )

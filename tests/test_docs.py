"""Keep the docs honest: README.md and plugins.md, checked against the code they describe."""

from __future__ import annotations

import argparse
import ast
import asyncio
import importlib
import importlib.metadata
import inspect
import os
import re
import subprocess
import sys
import textwrap
import tomllib
import types
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import attrs
import pytest

import aa_storage
import aa_storage_redis
from aa_storage import (
    ENTRY_POINT_GROUP,
    AgentId,
    BackendError,
    InvalidConfigError,
    Kind,
    NotFoundError,
    PolicyDecision,
    PolicyDocument,
    PolicyRule,
    Registry,
    SessionId,
    SessionRecord,
    load_config,
    open_storage,
    policy_from_json,
)
from aa_storage import cli as aa_storage_cli
from aa_storage.redaction import redact_url
from aa_storage_redis import (
    RedisPolicyStore,
    RedisRateLimitCounter,
    RedisSessionStore,
    RedisStorageConfig,
    scripts,
)
from aa_storage_redis.keys import KeySpace
from aa_storage_redis.leases import Leases
from aa_storage_redis.pool import Pool
from aa_storage_redis.tracking_connection import ACL_COMMANDS
from test_contract_suite import suite_tests

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
PLUGINS = ROOT / "plugins.md"
STORES = (RedisSessionStore, RedisRateLimitCounter, RedisPolicyStore)
# The README shows these None defaults in words, not as a value.
WORD_DEFAULTS = {
    "ca_file": "system CAs",
    "cert_file": "none",
    "key_file": "none",
    "sentinel_username": "none",
    "sentinel_password": "none",
}
EXAMPLE_MODULE = "aa_storage_dict"
EXAMPLE_FILES = (
    "pyproject.toml",
    f"{EXAMPLE_MODULE}.py",
    "try_dict.py",
    "agent-assembly.toml",
    "test_dict_contract.py",
)

# --- reading Markdown ---

_FENCE = re.compile(r"^```(?P<lang>[\w-]*)[ \t]*\n(?P<code>.*?)^```[ \t]*$", re.M | re.S)
_FILE_MARKER = re.compile(r"# file: (?P<name>\S+)")


@attrs.frozen
class Block:
    """One fenced code block of a Markdown file."""

    lang: str
    code: str
    line: int

    @property
    def file_name(self) -> str | None:
        """``NAME`` when the block's first line is ``# file: NAME``: a complete file."""
        match = _FILE_MARKER.fullmatch(self.code.partition("\n")[0])
        return match["name"] if match else None


def code_blocks(text: str, lang: str | None = None) -> list[Block]:
    """Every fenced block of ``text`` (of language ``lang`` when given), in order."""
    blocks = [
        Block(match["lang"], match["code"], text.count("\n", 0, match.start()) + 1)
        for match in _FENCE.finditer(text)
    ]
    return [block for block in blocks if lang is None or block.lang == lang]


def _headings(text: str) -> Iterator[tuple[int, int, str]]:
    """(line index, level, title) of every heading outside code blocks."""
    in_fence = False
    for index, line in enumerate(text.splitlines()):
        if line.startswith("```"):
            in_fence = not in_fence
        elif not in_fence and (match := re.match(r"(#{1,6}) (.+)", line)):
            yield index, len(match[1]), match[2].strip()


def section(text: str, title: str) -> str:
    """The text under the heading ``title``, up to the next heading of its level or higher."""
    lines = text.splitlines()
    headings = list(_headings(text))
    for position, (index, level, heading) in enumerate(headings):
        if heading == title:
            end = next((i for i, lvl, _ in headings[position + 1 :] if lvl <= level), len(lines))
            return "\n".join(lines[index:end])
    raise AssertionError(f"no heading {title!r}")


def table(text: str, header: list[str]) -> list[list[str]]:
    """The body rows of the Markdown table in ``text`` whose header cells are ``header``."""
    rows: list[list[str]] | None = None
    for line in text.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if rows is None:
            if line.startswith("|") and cells == header:
                rows = []
        elif not line.startswith("|"):
            break
        elif not set(line) <= set("|-: "):
            assert len(cells) == len(header), f"row {line!r} has {len(cells)} cells"
            rows.append(cells)
    assert rows, f"no table with header {header}"
    return rows


def slug(title: str) -> str:
    """GitHub's anchor for a heading."""
    return re.sub(r"[^\w\- ]", "", title.strip().lower()).replace(" ", "-")


def anchors(text: str) -> set[str]:
    """The anchors of every heading in ``text``."""
    return {slug(title) for _, _, title in _headings(text)}


def words(text: str) -> str:
    """``text`` with every run of whitespace made one space, to find wrapped phrases."""
    return " ".join(text.split())


def backticked(text: str) -> list[str]:
    """The contents of every ``code span`` in ``text``."""
    return re.findall(r"`([^`]+)`", text)


def commands_in(text: str) -> list[str]:
    """The upper-case command names in ``text``: ``SET … EX ttl`` gives SET and EX."""
    return re.findall(r"\b[A-Z]{2,}\b", text)


@pytest.fixture(scope="module")
def readme() -> str:
    return README.read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def plugins_md() -> str:
    return PLUGINS.read_text(encoding="utf-8")


# --- reading the Redis driver's source ---


def pool_calls(function: Callable[..., Any]) -> list[ast.Call]:
    """The ``execute(...)`` and ``run_script(...)`` calls in ``function``'s source."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(function)))
    calls = [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr in {"execute", "run_script"}
    ]
    return sorted(calls, key=lambda call: (call.lineno, call.col_offset))


def literal_strings(call: ast.Call) -> list[str]:
    """The positional string literals of ``call``, in order."""
    return [
        arg.value
        for arg in call.args
        if isinstance(arg, ast.Constant) and isinstance(arg.value, str)
    ]


def script_commands(store: type, call: ast.Call) -> list[str]:
    """The commands the Lua script run by ``call`` (a ``run_script`` in ``store``) sends."""
    assert isinstance(call.args[0], ast.Name), "run_script's first argument names a Script"
    script = getattr(sys.modules[store.__module__], call.args[0].id)
    return re.findall(r"redis\.call\('([A-Z]+)'", script.body.decode())


def store_methods() -> dict[str, tuple[type, Callable[..., Any]]]:
    """Every public coroutine method of the three Redis stores, by name, but
    ``get_or_load``: it runs the lease protocol, which the README describes
    apart (see the tests of "Read-through with leases")."""
    methods: dict[str, tuple[type, Callable[..., Any]]] = {}
    for store in STORES:
        for name, member in vars(store).items():
            if name == "get_or_load":
                continue
            if not name.startswith("_") and inspect.iscoroutinefunction(member):
                assert name not in methods, f"{name} is a method of two stores"
                methods[name] = (store, member)
    return methods


def one_pool_call(function: Callable[..., Any]) -> ast.Call:
    """The single pool call of ``function``; more than one would be more than one round trip."""
    calls = pool_calls(function)
    assert len(calls) == 1, f"{function.__qualname__} makes {len(calls)} pool calls"
    return calls[0]


def read_flag(call: ast.Call) -> bool:
    """The constant passed as ``read=`` to ``call``."""
    flags = [kw.value for kw in call.keywords if kw.arg == "read"]
    assert len(flags) == 1, "read= is passed once"
    assert isinstance(flags[0], ast.Constant), "read= is a literal"
    return bool(flags[0].value)


# --- README: configuration reference ---


def config_rows(readme: str) -> dict[str, list[str]]:
    """The configuration reference table, by key: [key, type, default, meaning]."""
    rows = table(section(readme, "Configuration reference"), ["key", "type", "default", "meaning"])
    by_key: dict[str, list[str]] = {}
    for row in rows:
        match = re.fullmatch(r"`(\w+)`", row[0])
        assert match, f"key cell {row[0]!r} is not one `name`"
        by_key[match[1]] = row
    return by_key


def shown_default(cell: str) -> object:
    """The value a backticked default cell shows, read as TOML when it is a TOML value."""
    match = re.fullmatch(r"`([^`]*)`", cell)
    assert match, f"default cell {cell!r} is not one `value`"
    try:
        return tomllib.loads(f"value = {match[1]}")["value"]
    except tomllib.TOMLDecodeError:
        return match[1]  # a bare string such as aa: or redis://127.0.0.1:PORT


def test_every_config_field_is_in_the_reference_table(readme: str) -> None:
    """Every field of RedisStorageConfig has a row in the README table, and every row a field."""
    fields = [field.name for field in attrs.fields(RedisStorageConfig)]
    assert sorted(config_rows(readme)) == sorted(fields)


def test_reference_table_defaults_match_the_code(readme: str) -> None:
    """Each default in the README table is the field's real default, of the same type."""
    rows = config_rows(readme)
    for field in attrs.fields(RedisStorageConfig):
        cell = rows[field.name][2]
        if field.name in WORD_DEFAULTS:
            assert field.default is None, f"{field.name} defaults to {field.default!r}"
            assert cell == WORD_DEFAULTS[field.name], f"{field.name}: README shows {cell!r}"
        else:
            shown = shown_default(cell)
            assert (type(shown), shown) == (type(field.default), field.default), field.name
    none_defaults = {f.name for f in attrs.fields(RedisStorageConfig) if f.default is None}
    assert none_defaults == set(WORD_DEFAULTS)


def type_name(field: attrs.Attribute[Any]) -> str:
    """A field's declared type as written: ``int``, ``str | None``."""
    declared: Any = field.type
    if isinstance(declared, str):
        return declared
    return declared.__name__ if isinstance(declared, type) else str(declared)


def config_with(name: str, value: object) -> RedisStorageConfig:
    """A RedisStorageConfig with one field set; validators raise as they would for a section."""
    settings: dict[str, Any] = {name: value}
    return RedisStorageConfig(**settings)


def test_reference_table_types_and_ranges_match_the_validators(readme: str) -> None:
    """The type column names each field's type, and the ranges it gives are the ones enforced."""
    for name, (_, type_cell, _, _) in config_rows(readme).items():
        declared = type_name(attrs.fields_dict(RedisStorageConfig)[name])
        if declared == "str | None":
            assert type_cell == ("path" if name.endswith("_file") else "str"), name
            continue
        assert type_cell.split(",")[0].split(" ")[0] == declared, f"{name}: {type_cell!r}"
        if match := re.search(r"(\d+)\N{EN DASH}(\d+)", type_cell):
            low, high = int(match[1]), int(match[2])
            config_with(name, low)
            config_with(name, high)
            for outside in (low - 1, high + 1):
                with pytest.raises(ValueError, match=f"^{name}: "):
                    config_with(name, outside)
        if "> 0" in type_cell:
            config_with(name, 0.001)
            with pytest.raises(ValueError, match=f"^{name}: "):
                config_with(name, 0.0)
        if "non-empty" in type_cell:
            with pytest.raises(ValueError, match=f"^{name}: "):
                config_with(name, "")


def readme_toml_example(readme: str) -> Block:
    blocks = code_blocks(section(readme, "Configuration reference"), "toml")
    assert blocks, "no toml block under ## Configuration reference"
    return blocks[0]


def test_readme_toml_example_loads(readme: str) -> None:
    """The TOML example of the configuration reference loads and selects the redis driver."""
    config = load_config(tomllib.loads(readme_toml_example(readme).code))
    assert config.backend == "redis"
    assert all(config.driver_for(kind) == "redis" for kind in Kind)
    assert isinstance(config.drivers["redis"], RedisStorageConfig)


def test_readme_toml_example_gives_exactly_the_defaults(readme: str) -> None:
    """The uncommented [storage.redis] lines of the example are exactly the defaults."""
    config = load_config(tomllib.loads(readme_toml_example(readme).code))
    assert attrs.asdict(config.drivers["redis"]) == attrs.asdict(RedisStorageConfig())


def test_readme_toml_example_comments_name_real_keys(readme: str) -> None:
    """Commented-out keys are real settings, and the stated default backend is the real one."""
    table_name = ""
    commented: dict[str, list[str]] = {}
    for line in readme_toml_example(readme).code.splitlines():
        if match := re.fullmatch(r"\[([\w.]+)\].*", line):
            table_name = match[1]
        elif match := re.match(r"#\s*(\w+)\s*=", line):
            commented.setdefault(table_name, []).append(match[1])
    assert set(commented) == {"storage", "storage.redis"}
    assert set(commented["storage"]) <= {kind.value for kind in Kind}
    assert set(commented["storage.redis"]) <= set(attrs.fields_dict(RedisStorageConfig))
    stated = re.search(r'backend = .*\(default "(\w+)"\)', readme_toml_example(readme).code)
    assert stated, "the backend line states its default"
    assert load_config({"storage": {}}).backend == stated[1]


def test_readme_every_out_of_range_value_is_reported_at_once() -> None:
    """Two out-of-range values in one section give two problems, as the README promises."""
    with pytest.raises(InvalidConfigError) as caught:
        load_config({"storage": {"redis": {"pool_size": 0, "retries": 99}}})
    assert [problem.split(":")[0] for problem in caught.value.problems] == [
        "storage.redis.pool_size",
        "storage.redis.retries",
    ]


def test_readme_config_problems_are_listed_in_one_error(
    readme: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """One InvalidConfigError lists each problem as a line of `problems`, joined by '; ' in its
    message, and `aa-storage check` prints that message on its one line."""
    assert "its message joins them with `; `" in readme
    config = tmp_path / "bad.toml"
    config.write_text('[storage.redis]\npool_size = "10"\ntls = 1\n', encoding="utf-8")
    assert aa_storage_cli.main(["check", "--config", str(config)]) == 1
    assert capsys.readouterr().err == (
        "aa-storage: InvalidConfigError: invalid storage configuration: "
        "storage.redis.pool_size: expected int, got str; "
        "storage.redis.tls: expected bool, got int\n"
    )


def test_readme_prefix_isolation_claim_holds(readme: str) -> None:
    """Prefixes of which neither begins with the other give disjoint keys, as the README says,
    and the README warns about prefixes that begin with another."""
    assert (
        "prefixes of which neither begins with the other never share a key"
        in (config_rows(readme)["key_prefix"][3])
    )
    assert "`aa:` and `aa:ratelimit:x:`" in readme
    first, second = KeySpace("tenant1:"), KeySpace("tenant2:")
    for key in ("k", "x:ratelimit:k", "tenant2:ratelimit:k", "\x00"):
        assert not first.rate_limit(key).startswith(b"tenant2:")
        assert not second.rate_limit(key).startswith(b"tenant1:")
    # The counter-example the README warns about really collides.
    assert KeySpace("aa:").rate_limit("x:ratelimit:k") == KeySpace("aa:ratelimit:x:").rate_limit(
        "k"
    )


# --- README: names, commands and set-up ---


@pytest.mark.parametrize("module", [aa_storage, aa_storage_redis], ids=lambda m: m.__name__)
def test_every_public_name_is_importable(module: types.ModuleType) -> None:
    """Every name in __all__ exists, and `from module import *` gives exactly those names."""
    assert module.__all__, f"{module.__name__}.__all__ is empty"
    for name in module.__all__:
        assert getattr(module, name, None) is not None, f"{module.__name__}.{name}"
    namespace: dict[str, Any] = {}
    exec(f"from {module.__name__} import *", namespace)
    assert set(namespace) - {"__builtins__"} == set(module.__all__)


def cli_subcommands(monkeypatch: pytest.MonkeyPatch) -> set[str]:
    """The subcommands of the parser that ``aa_storage.cli.main`` builds."""
    built: list[argparse.ArgumentParser] = []

    class Parsed(Exception):
        pass

    def capture(self: argparse.ArgumentParser, *args: object, **kwargs: object) -> None:
        built.append(self)
        raise Parsed

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", capture)
    with pytest.raises(Parsed):
        aa_storage_cli.main([])
    [subparsers] = [a for a in built[0]._actions if isinstance(a, argparse._SubParsersAction)]
    return set(subparsers.choices)


def test_every_cli_subcommand_is_in_the_readme(
    readme: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each subcommand of `aa-storage` is mentioned in the README as `aa-storage <command>`."""
    commands = cli_subcommands(monkeypatch)
    assert {"check", "drivers"} <= commands
    for command in commands:
        assert f"aa-storage {command}" in readme, command


def test_setup_commands_are_the_first_code_block(readme: str) -> None:
    """The README opens with `./dev check` and `./dev test`, and ./dev handles both."""
    first = code_blocks(readme)[0]
    commands = [line.partition("#")[0].strip() for line in first.code.splitlines()]
    assert [command for command in commands if command] == ["./dev check", "./dev test"]
    dev = ROOT / "dev"
    assert os.access(dev, os.X_OK)
    cases = re.findall(r"^\s*(\w+)\)", dev.read_text(encoding="utf-8"), re.M)
    assert {"check", "test"} <= set(cases)


def test_ci_runs_dev_test() -> None:
    """.ci/run is executable and runs ./dev test."""
    run = ROOT / ".ci" / "run"
    assert os.access(run, os.X_OK)
    lines = [line.strip() for line in run.read_text(encoding="utf-8").splitlines()]
    assert "./dev test" in [line for line in lines if not line.startswith("#")]


def test_license_file_matches_the_declared_license() -> None:
    """LICENSE holds the Apache License 2.0 that pyproject.toml declares, and is the
    license file the wheel ships."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert project["license"] == "Apache-2.0"
    assert project["license-files"] == ["LICENSE"]
    text = words((ROOT / "LICENSE").read_text(encoding="utf-8"))
    assert text.startswith("Apache License Version 2.0, January 2004")
    assert "END OF TERMS AND CONDITIONS" in text


def test_quick_start_compiles_and_uses_real_names(readme: str) -> None:
    """The quick start compiles, imports only real names and calls only real store methods."""
    [block] = code_blocks(section(readme, "Quick start"), "python")
    tree = ast.parse(block.code)
    compile(tree, "README.md quick start", "exec")
    imported = [
        alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module == "aa_storage"
        for alias in node.names
    ]
    assert imported, "the quick start imports from aa_storage"
    assert all(hasattr(aa_storage, name) for name in imported), imported
    storage = open_storage({"storage": {}})
    called = [
        (node.value.attr, node.attr)
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Attribute)
        and isinstance(node.value.value, ast.Name)
        and node.value.value.id == "storage"
    ]
    assert len(called) >= 4
    for store, method in called:
        assert callable(getattr(getattr(storage, store), method, None)), f"{store}.{method}"


@attrs.frozen
class QuickStart:
    """The quick start as a reader copies it: its script, its two configs, and the
    output the README says the script prints."""

    script: Block
    memory_config: Block
    redis_config: Block
    output: list[str]

    @classmethod
    def of(cls, readme: str) -> QuickStart:
        text = section(readme, "Quick start")
        memory_config, redis_config = code_blocks(text, "toml")
        [script] = code_blocks(text, "python")
        [output] = code_blocks(text, "")
        return cls(script, memory_config, redis_config, output.code.splitlines())

    def run(self, directory: Path, config: str) -> list[str]:
        """Run the script by its file name in ``directory``, beside ``config`` saved as
        ``agent-assembly.toml``; the lines it printed."""
        assert self.memory_config.file_name == "agent-assembly.toml"
        (directory / "agent-assembly.toml").write_text(config, encoding="utf-8")
        name = str(self.script.file_name)
        (directory / name).write_text(self.script.code, encoding="utf-8")
        result = run_in(directory, name)
        assert (result.returncode, result.stderr) == (0, "")
        return result.stdout.splitlines()


def test_quick_start_runs_as_shown_on_memory(readme: str, tmp_path: Path) -> None:
    """The quick start, beside the memory config the README shows, prints the lines the
    README shows, and the same on a second run (memory starts empty in each process)."""
    quick = QuickStart.of(readme)
    assert load_config(tomllib.loads(quick.memory_config.code)).backend == "memory"
    assert len(quick.output) == 3
    assert quick.run(tmp_path, quick.memory_config.code) == quick.output
    assert quick.run(tmp_path, quick.memory_config.code) == quick.output


def test_quick_start_runs_as_shown_on_redis(
    readme: str, raw: Any, redis_url: str, tmp_path: Path
) -> None:
    """With the Redis config the README shows (its URL pointed at a test server), the quick
    start prints what the README shows and stores the counter, the policy and a session;
    run again, it counts 2 and reads the policy from the cache, as the README says."""
    quick = QuickStart.of(readme)
    shown = load_config(tomllib.loads(quick.redis_config.code))
    assert shown.backend == "redis"
    shown_url = shown.drivers["redis"].url
    config = quick.redis_config.code.replace(f'"{shown_url}"', f'"{redis_url}"')
    assert config != quick.redis_config.code
    assert quick.run(tmp_path, config) == quick.output
    agent = AgentId.from_hex("0f1e2d3c4b5a69788796a5b4c3d2e1f0")
    cached = policy_from_json(raw.get(f"aa:policy:{agent.hex}"))
    assert [rule.decision for rule in cached.rules] == [
        PolicyDecision.ALLOW,
        PolicyDecision.REQUIRE_APPROVAL,
        PolicyDecision.DENY,
    ]
    assert raw.get("aa:ratelimit:agent:42:tool-calls") == b"1"
    assert len(raw.keys("aa:session:*")) == 1
    again = quick.run(tmp_path, config)
    assert again[:2] == [
        "agent:42:tool-calls: 2 of 100 this minute",
        "policy 'default' v1: read from the cache",
    ]
    assert again[2] == quick.output[2]
    assert len(raw.keys("aa:session:*")) == 2
    text = words(section(readme, "Quick start"))
    assert "on Redis, where the state outlives the process, it counts `2 of 100` and reads" in text


def test_readme_stats_and_describe_are_reached_from_open_storage(
    readme: str,
    redis_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The README's snippet reaches stats() and describe() through open_storage(): run on a
    real server, it prints the commands sent so far and the topology."""
    [block] = [
        block
        for block in code_blocks(section(readme, "Connections"), "python")
        if "storage.backends" in block.code
    ]
    (tmp_path / "agent-assembly.toml").write_text(
        f'[storage]\nbackend = "redis"\n[storage.redis]\nurl = "{redis_url}"\n'
    )
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, Any] = {"open_storage": open_storage}
    body = textwrap.indent(block.code, "    ")
    exec(compile(f"async def snippet():\n{body}", "README.md stats", "exec"), namespace)
    asyncio.run(namespace["snippet"]())
    sent, shape = capsys.readouterr().out.splitlines()
    assert int(sent) >= 1
    assert shape == "standalone ()"


def test_readme_wait_timeout_rule_is_the_one_enforced(readme: str) -> None:
    """wait_timeout must be below socket_timeout when wait_replicas > 0, and only then, as
    the reference table says."""
    assert (
        "when `wait_replicas` > 0, must be below `socket_timeout`"
        in (config_rows(readme)["wait_timeout"][3])
    )
    assert RedisStorageConfig(wait_timeout=2.0, socket_timeout=1.0).wait_timeout == 2.0
    with pytest.raises(ValueError, match=r"^wait_timeout: must be below socket_timeout"):
        RedisStorageConfig(wait_replicas=1, wait_timeout=2.0, socket_timeout=1.0)


# --- README: what the Redis driver sends ---


def cost_rows(readme: str) -> list[list[str]]:
    return table(section(readme, "Cost of each operation"), ["operation", "command", "atomic"])


def test_cost_table_names_the_commands_the_driver_sends(readme: str) -> None:
    """Each row's command is the one its store method sends, and a script's commands are its own."""
    methods = store_methods()
    for operation_cell, command_cell, _ in cost_rows(readme):
        [operation] = backticked(operation_cell)
        assert operation in methods, f"{operation} is not a method of a Redis store"
        store, method = methods[operation]
        call = one_pool_call(method)
        spans = backticked(command_cell)
        if commands_in(spans[0]) == ["EVALSHA"]:
            assert call.func.attr == "run_script", f"{operation} runs no script"  # type: ignore[attr-defined]
            listed = [command for span in spans[1:] for command in commands_in(span)]
            assert listed == script_commands(store, call), operation
        else:
            assert call.func.attr == "execute", operation  # type: ignore[attr-defined]
            assert commands_in(spans[0]) == literal_strings(call), operation


def test_cost_table_covers_every_store_method(readme: str) -> None:
    """The cost table has one row for each public method of the three Redis stores."""
    operations = [backticked(row[0])[0] for row in cost_rows(readme)]
    assert sorted(operations) == sorted(store_methods())


def test_every_operation_is_one_round_trip() -> None:
    """Each store method makes exactly one pool call, as the README's cost section says."""
    for _, method in store_methods().values():
        one_pool_call(method)


def test_scripts_are_run_by_sha_with_eval_as_fallback() -> None:
    """Pool.run_script sends EVALSHA, then EVAL, as the README describes."""
    first_words = [literal_strings(call)[0] for call in pool_calls(Pool.run_script)]
    assert first_words == ["EVALSHA", "EVAL"]


def test_retry_rule_lists_reads_and_writes_as_sent(readme: str) -> None:
    """The README's reads are exactly the calls sent with read=True, its writes those with False."""
    bullet = next(
        line
        for line in words(section(readme, "Failures")).split("- ")
        if line.startswith("One rule decides what is tried again")
    )
    reads_text, _, writes_text = bullet.partition("a write (")
    reads = set(backticked(reads_text.partition("a read (")[2]))
    writes = set(backticked(writes_text.partition(")")[0]))
    flags = {name: read_flag(one_pool_call(m)) for name, (_, m) in store_methods().items()}
    assert reads == {name for name, read in flags.items() if read}
    assert writes == {name for name, read in flags.items() if not read}


def test_acl_allows_exactly_the_commands_sent(readme: str) -> None:
    """The README's ACL line grants the default prefix and every command the driver sends."""
    acl = next(
        block.code
        for block in code_blocks(section(readme, "ACL for the driver's user"))
        if "ACL SETUSER" in block.code
    )
    assert f"~{RedisStorageConfig().key_prefix}*" in acl.split()
    granted = {word[1:].upper() for word in acl.split() if word.startswith("+")}
    sent = {literal_strings(call)[0] for call in pool_calls(Pool.run_script)}
    for script in vars(scripts).values():  # get_or_load's scripts too
        if isinstance(script, scripts.Script):
            sent |= set(re.findall(r"redis\.call\('([A-Z]+)'", script.body.decode()))
    for store, method in store_methods().values():
        call = one_pool_call(method)
        if call.func.attr == "run_script":  # type: ignore[attr-defined]
            sent |= set(script_commands(store, call))
        else:
            sent.add(literal_strings(call)[0])
    # The near-cache's tracking connections send these (tracking.py).
    sent |= {command.upper() for command in ACL_COMMANDS}
    assert granted == sent


def test_lease_section_states_the_layout_and_the_round_trips(readme: str) -> None:
    """The read-through section gives the lease key as KeySpace builds it, and its round
    trips are the scripts get_or_load runs: GET_OR_LEASE, then FILL or RELEASE."""
    text = words(section(readme, "Read-through with leases"))
    agent = AgentId.from_hex("0f1e2d3c4b5a69788796a5b4c3d2e1f0")
    assert KeySpace().policy_lease(agent) == f"{{aa:policy:{agent.hex}}}:lease".encode()
    assert "`{<prefix>policy:<hex32>}:lease`" in text
    run = {
        call.args[0].id  # type: ignore[attr-defined]
        for function in (Leases.read_through, Leases._lead, Leases._release)
        for call in pool_calls(function)
    }
    assert run == {"GET_OR_LEASE", "FILL", "RELEASE"}
    for script in run:
        assert f"`{getattr(scripts, script).name}`" in text, script
    for setting in ("lease_ttl", "lease_wait"):
        assert f"`{setting}`" in text, setting


# --- plugins.md: code blocks ---


def test_plugins_python_blocks_compile(plugins_md: str) -> None:
    """Every Python block of plugins.md compiles."""
    blocks = code_blocks(plugins_md, "python")
    assert len(blocks) >= 3
    for block in blocks:
        compile(block.code, f"plugins.md:{block.line}", "exec")


def test_plugins_toml_blocks_parse(plugins_md: str) -> None:
    """Every TOML block of plugins.md is valid TOML."""
    blocks = code_blocks(plugins_md, "toml")
    assert len(blocks) >= 3
    for block in blocks:
        tomllib.loads(block.code)


# --- plugins.md: the example project, built from its `# file:` blocks ---


def write_example(plugins_md: str, directory: Path) -> Path:
    """``directory``, holding every `# file:` block of plugins.md, as a reader would copy
    them."""
    blocks = [block for block in code_blocks(plugins_md) if block.file_name]
    assert sorted(str(block.file_name) for block in blocks) == sorted(EXAMPLE_FILES)
    directory.mkdir(exist_ok=True)
    for block in blocks:
        (directory / str(block.file_name)).write_text(block.code, encoding="utf-8")
    return directory


@pytest.fixture
def example_project(plugins_md: str, tmp_path: Path) -> Path:
    """A directory holding every `# file:` block of plugins.md."""
    return write_example(plugins_md, tmp_path)


@pytest.fixture
def example_registry(example_project: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Registry]:
    """The installed drivers plus the example, found through the example pyproject's entry point."""
    pyproject = tomllib.loads((example_project / "pyproject.toml").read_text(encoding="utf-8"))
    declared = pyproject["project"]["entry-points"][ENTRY_POINT_GROUP]
    monkeypatch.syspath_prepend(str(example_project))
    found = [
        *importlib.metadata.entry_points(group=ENTRY_POINT_GROUP),
        *(importlib.metadata.EntryPoint(n, v, ENTRY_POINT_GROUP) for n, v in declared.items()),
    ]
    yield Registry(found=found)
    sys.modules.pop(EXAMPLE_MODULE, None)


def run_in(directory: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run this Python with ``args`` in ``directory``, as a reader would run the example."""
    return subprocess.run(
        [sys.executable, *args], cwd=directory, capture_output=True, text=True, timeout=300
    )


def run_example_suite(project: Path) -> subprocess.CompletedProcess[str]:
    """Run the example's tests with every warning an error, each test's outcome on its line."""
    return run_in(project, "-m", "pytest", "-W", "error", "-v", "-rs", "-p", "no:cacheprovider")


def test_example_driver_is_found_through_its_entry_point(example_registry: Registry) -> None:
    """The pyproject's entry point names a module whose register() gives the `dict` driver."""
    driver = example_registry.driver("dict")
    assert driver.kinds == frozenset(Kind)
    assert driver.config_class.__module__ == EXAMPLE_MODULE
    assert driver.config_class().max_entries >= 1


def test_example_driver_works_through_open_storage(
    example_project: Path, example_registry: Registry
) -> None:
    """The example TOML selects the example driver, whose stores follow the contracts."""

    async def exercise() -> None:
        config = example_project / "agent-assembly.toml"
        async with open_storage(config, registry=example_registry) as storage:
            assert set(storage.backends) == {"dict"}
            record = SessionRecord(SessionId.new(), AgentId.new(), 42)
            await storage.sessions.save(record)
            assert await storage.sessions.load(record.session_id) == record
            assert await storage.rate_limiter.increment("agent:1", 2, window_secs=60) == 2
            assert await storage.rate_limiter.increment("agent:1", 3, window_secs=60) == 5
            agent = AgentId.new()
            policy = PolicyDocument(1, "p", [PolicyRule("tool:*", PolicyDecision.ALLOW)])
            await storage.policies.cache_policy(agent, policy, ttl_secs=60)
            assert await storage.policies.get_policy(agent) == policy
            await storage.policies.invalidate(agent)
            with pytest.raises(NotFoundError):
                await storage.policies.get_policy(agent)
            info = await storage.backends["dict"].describe()
            assert ("entries", "2") in info.facts

        full = {"storage": {"backend": "dict", "dict": {"max_entries": 1}}}
        async with open_storage(full, registry=example_registry) as storage:
            await storage.rate_limiter.increment("a", 1, window_secs=60)
            with pytest.raises(BackendError, match="full"):
                await storage.rate_limiter.increment("b", 1, window_secs=60)

    asyncio.run(exercise())


def test_example_config_errors_read_as_documented(
    plugins_md: str, example_registry: Registry
) -> None:
    """The config errors and the redaction plugins.md quotes are the ones the code gives."""
    text = words(plugins_md)

    def problems(section_: Mapping[str, object]) -> list[str]:
        with pytest.raises(InvalidConfigError) as caught:
            load_config(
                {"storage": {"backend": "dict", "dict": section_}}, registry=example_registry
            )
        return caught.value.problems

    for section_, expected in [
        ({"max_entries": 0}, "storage.dict.max_entries: must be at least 1, got 0"),
        (
            {"max_entry": 5},
            "storage.dict.max_entry: unknown key; did you mean max_entries?",
        ),
    ]:
        assert problems(section_) == [expected]
        assert f"`{expected}`" in text
    for wrong in ("10", True, 1.5):
        assert problems({"max_entries": wrong})[0].startswith("storage.dict.max_entries: ")
    assert redact_url("redis://driver:s3cret@cache:7000") == "redis://driver:***@cache:7000"
    assert "`redis://driver:s3cret@cache:7000` into `redis://driver:***@cache:7000`" in text


def test_example_try_script_prints_what_the_text_says(
    plugins_md: str, example_project: Path
) -> None:
    """`python try_dict.py` in the example project prints 1 then 3, as plugins.md says."""
    result = run_in(example_project, "try_dict.py")
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout.splitlines() == ["1", "3"]
    assert "It prints `1`, then `3`" in words(plugins_md)


def test_example_contract_suite_passes_without_a_warning(example_project: Path) -> None:
    """`pytest -W error` in the example project passes the whole contract suite, none skipped."""
    result = run_example_suite(example_project)
    assert result.returncode == 0, result.stdout + result.stderr
    summary = result.stdout.splitlines()[-1]
    match = re.fullmatch(r"=+ (\d+) passed in [\d.]+s =+", summary)
    assert match, summary
    assert int(match[1]) > len(suite_tests())


def test_example_builds_in_a_fresh_venv_as_the_page_says(plugins_md: str, tmp_path: Path) -> None:
    """The set-up commands of plugins.md, run as shown in the example's directory with this
    clone beside it as ../aa-storage, make a fresh venv in which `aa-storage drivers` lists
    the example driver and its contract suite passes."""
    [block] = code_blocks(section(plugins_md, "Setting up the environment"), "sh")
    project = write_example(plugins_md, tmp_path / "aa-storage-dict")
    (tmp_path / "aa-storage").symlink_to(ROOT, target_is_directory=True)
    result = subprocess.run(
        ["bash", "-euc", block.code],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=600,
        # The venv must come from the commands alone, not from the one running this test.
        env={key: value for key, value in os.environ.items() if key != "VIRTUAL_ENV"},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    listed = dict(
        line.split(None, 1) for line in result.stdout.splitlines() if re.match(r"\w+ {2,}", line)
    )
    assert listed["dict"] == "policy_store, rate_limit_counter, session_store"
    assert {"memory", "redis"} <= set(listed)
    summary = result.stdout.splitlines()[-1]
    match = re.fullmatch(r"=+ (\d+) passed in [\d.]+s(?: \(\S+\))? =+", summary)
    assert match, summary
    assert int(match[1]) > len(suite_tests())
    installed = project / ".venv" / "bin" / "python"
    where = subprocess.run(
        [installed, "-c", "import aa_storage; print(aa_storage.__file__)"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert Path(where.stdout.strip()).resolve().is_relative_to(ROOT / "src")


def test_example_pytest_config_is_what_silences_pytest_asyncio(example_project: Path) -> None:
    """Without the shown asyncio_default_fixture_loop_scope, `pytest -W error` fails (a control)."""
    pyproject = example_project / "pyproject.toml"
    shown = pyproject.read_text(encoding="utf-8")
    setting = 'asyncio_default_fixture_loop_scope = "function"\n'
    assert setting in shown
    pyproject.write_text(shown.replace(setting, ""), encoding="utf-8")
    result = run_example_suite(example_project)
    assert result.returncode != 0
    assert "asyncio_default_fixture_loop_scope" in result.stdout + result.stderr


def test_example_as_a_partial_driver_runs_only_its_kinds(
    plugins_md: str, example_project: Path
) -> None:
    """Listing one kind in the example's register() makes its suite run that kind's tests only,
    skipping the rest with a reason naming their kind, as plugins.md says."""
    module = example_project / f"{EXAMPLE_MODULE}.py"
    every_kind = "kinds=set(Kind)"
    assert every_kind in module.read_text(encoding="utf-8")
    partial = module.read_text(encoding="utf-8").replace(
        every_kind, "kinds={Kind.RATE_LIMIT_COUNTER}"
    )
    module.write_text(partial, encoding="utf-8")
    result = run_example_suite(example_project)
    assert result.returncode == 0, result.stdout + result.stderr
    outcomes: dict[str, set[Kind | None]] = {}
    for test, outcome in re.findall(
        r"::TestDictContract::(\w+)\S* (PASSED|SKIPPED)", result.stdout
    ):
        outcomes.setdefault(outcome, set()).add(suite_tests()[test])
    assert outcomes == {
        "PASSED": {Kind.RATE_LIMIT_COUNTER},
        "SKIPPED": {Kind.SESSION_STORE, Kind.POLICY_STORE},
    }
    for kind in (Kind.SESSION_STORE, Kind.POLICY_STORE):
        assert f"the driver does not provide {kind.value}" in result.stdout
    assert "skips the tests of any other kind, each with a reason naming the kind" in words(
        plugins_md
    )


# --- plugins.md: names and links ---


def resolve(dotted: str) -> object:
    """The object a dotted name such as ``aa_storage.testing.FakeClock`` names."""
    parts = dotted.split(".")
    found: object = importlib.import_module(parts[0])
    for index, part in enumerate(parts[1:], start=2):
        if hasattr(found, part):
            found = getattr(found, part)
        else:
            found = importlib.import_module(".".join(parts[:index]))
    return found


def test_plugins_aa_storage_names_exist(plugins_md: str) -> None:
    """Every `aa_storage.<name>` that plugins.md mentions exists (the entry-point group aside)."""
    names = {name.rstrip(".") for name in re.findall(r"\baa_storage(?:\.\w+)+\.?", plugins_md)}
    assert ENTRY_POINT_GROUP in names
    names.discard(ENTRY_POINT_GROUP)
    assert len(names) >= 10
    missing = []
    for name in sorted(names):
        try:
            resolve(name)
        except ImportError:
            missing.append(name)
    assert not missing, f"plugins.md names what does not exist: {missing}"


@pytest.mark.parametrize("doc", [README, PLUGINS], ids=lambda path: path.name)
def test_relative_links_resolve(doc: Path) -> None:
    """Every relative link in the doc names an existing file and, after #, one of its headings."""
    text = doc.read_text(encoding="utf-8")
    links = [link for link in re.findall(r"\]\(([^)\s]+)\)", text) if "://" not in link]
    assert links
    for link in links:
        path, _, anchor = link.partition("#")
        target = doc.parent / path if path else doc
        assert target.is_file(), link
        if anchor:
            assert anchor in anchors(target.read_text(encoding="utf-8")), link


@pytest.mark.parametrize("doc", [README, PLUGINS], ids=lambda path: path.name)
def test_no_merge_conflict_markers(doc: Path) -> None:
    """No line of the doc is a leftover merge-conflict marker."""
    markers = re.compile(r"^(<{7}|={7}|>{7})( |$)", re.M)
    assert not markers.findall(doc.read_text(encoding="utf-8"))


# --- plugins.md: a driver's command (section 9), run through the real CLI ---


class TestPluginsAddCommands:
    """The example driver with section 9's hook, installed through an entry point the way
    pip would, and run by ``python -m aa_storage`` as plugins.md says."""

    SECTION = "9. Add a command to `aa-storage`"

    @pytest.fixture
    def installed(self, plugins_md: str, tmp_path: Path) -> Path:
        """The example project, its module with section 9's block added, and the
        entry point a wheel of it would install."""
        project = write_example(plugins_md, tmp_path)
        [block] = code_blocks(section(plugins_md, self.SECTION), "python")
        with (project / f"{EXAMPLE_MODULE}.py").open("a", encoding="utf-8") as module:
            module.write("\n\n" + block.code)
        dist_info = project / "aa_storage_dict-0.1.0.dist-info"
        dist_info.mkdir()
        (dist_info / "METADATA").write_text(
            "Metadata-Version: 2.1\nName: aa-storage-dict\nVersion: 0.1.0\n", encoding="utf-8"
        )
        (dist_info / "entry_points.txt").write_text(
            f"[{ENTRY_POINT_GROUP}]\ndict = {EXAMPLE_MODULE}\n", encoding="utf-8"
        )
        return project

    @staticmethod
    def aa_storage(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
        """``aa-storage ARGS`` run in ``project``, with the project on the path."""
        return subprocess.run(
            [sys.executable, "-m", "aa_storage", *args],
            cwd=project,
            env={**os.environ, "PYTHONPATH": str(project)},
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    def test_the_command_prints_what_the_page_shows(self, plugins_md: str, installed: Path) -> None:
        """`aa-storage dict-settings agent-assembly.toml` prints the page's output, exit 0."""
        [session] = code_blocks(section(plugins_md, self.SECTION), "console")
        command, *output = session.code.splitlines()
        result = self.aa_storage(installed, *command.removeprefix("$ aa-storage ").split())
        assert (result.returncode, result.stderr) == (0, "")
        assert result.stdout.splitlines() == output

    def test_help_lists_it_after_the_built_in_commands(
        self, plugins_md: str, installed: Path
    ) -> None:
        """`aa-storage --help` lists the command after drivers and check, with its help line,
        and its own --help starts with its description."""
        listed = self.aa_storage(installed, "--help").stdout.split("\ncommands:\n")[1]
        names = re.findall(r"^ {4}([\w-]+) ", listed, re.M)
        assert names[:2] == ["drivers", "check"]
        assert "dict-settings" in names[2:]
        assert re.search(
            r"^ +dict-settings +print the \[storage\.dict\] settings of a config file$",
            listed,
            re.M,
        )
        own = self.aa_storage(installed, "dict-settings", "--help").stdout
        assert own.split("\n\n")[1] == (
            "Print the [storage.dict] settings of FILE, defaults filled in."
        )

    def test_a_config_error_is_the_line_the_page_quotes(
        self, plugins_md: str, installed: Path
    ) -> None:
        """With `max_entries = 0`, the command prints the one line plugins.md quotes, exit 1."""
        (installed / "bad.toml").write_text(
            '[storage]\nbackend = "dict"\n\n[storage.dict]\nmax_entries = 0\n', encoding="utf-8"
        )
        result = self.aa_storage(installed, "dict-settings", "bad.toml")
        assert result.returncode == 1
        [line] = result.stderr.splitlines()
        assert line.startswith("aa-storage: InvalidConfigError: ")
        assert f"prints `{line}`" in words(section(plugins_md, self.SECTION))

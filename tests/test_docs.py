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
from collections.abc import Awaitable, Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import attrs
import pytest
import redis

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
from aa_storage.testing import ContractSuite, RateLimitContract, ScriptedLoader, bounded
from aa_storage_redis import (
    RedisBackend,
    RedisPolicyStore,
    RedisRateLimitCounter,
    RedisSessionStore,
    RedisStorageConfig,
    scripts,
)
from aa_storage_redis.keys import KeySpace
from executor_support import ProxiedBackend
from servers import RedisServer
from test_contract_suite import names_of_tests
from test_redis_near_cache import tracked
from test_redis_reliability import EXPECTED, POLICY, RECORD, operations, prepare
from test_redis_security import readme_acl_rule
from test_redis_semantics import CommandLog
from waiting import eventually

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


# --- the Redis driver's stores ---


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


# --- README: what the Redis driver sends, as the server sees it ---


def cost_rows(readme: str) -> list[list[str]]:
    return table(section(readme, "Cost of each operation"), ["operation", "command", "atomic"])


def documented_costs(readme: str) -> dict[str, tuple[str, set[str]]]:
    """The cost table by operation: the one command a call sends, and the commands its
    script calls (none for a plain command)."""
    costs = {}
    for operation_cell, command_cell, _ in cost_rows(readme):
        [operation] = backticked(operation_cell)
        sent, *called = backticked(command_cell)
        [command] = commands_in(sent)
        costs[operation] = (command, {name for span in called for name in commands_in(span)})
    return costs


Observe = Callable[[str, Callable[[], Awaitable[Any]]], Awaitable[None]]


async def every_documented_case(
    backend: RedisBackend, admin: redis.Redis, observe: Observe
) -> None:
    """Run each operation of the cost table through ``observe(operation, call)`` in every
    state its row names: a new counter, one in its window and one found without an expiry;
    a policy with no load under way, and one whose lease a load holds. Every script is
    loaded, and every connection open, before the first call is observed."""
    calls = operations(backend)
    for call in calls.values():
        await call()
    for name, call in calls.items():
        await observe(name, call)
    await observe("increment", calls["increment"])  # a counter in its window
    admin.persist(f"{RedisStorageConfig().key_prefix}ratelimit:seen")
    await observe("increment", calls["increment"])  # a counter without an expiry
    for name in ("invalidate", "cache_policy"):  # each while a load holds the lease
        await backend.policies().invalidate(RECORD.agent_id)
        loader = ScriptedLoader([POLICY], gate=asyncio.Event())
        load = asyncio.ensure_future(backend.policies().get_or_load(RECORD.agent_id, loader, 60))
        await bounded(loader.entered.wait())
        await observe(name, calls[name])
        loader.release()
        assert await bounded(load) == POLICY


@pytest.mark.asyncio
async def test_cost_table_names_the_commands_the_server_runs(
    readme: str, redis_backend: RedisBackend, redis_server: RedisServer, raw: redis.Redis
) -> None:
    """Each operation sends the server exactly the one command its row names, in every
    state, and the commands its script calls, over those states, are the ones listed."""
    sent: dict[str, set[tuple[str, ...]]] = {}
    called: dict[str, set[str]] = {}

    async def observe(name: str, call: Callable[[], Awaitable[Any]]) -> None:
        log.run_since_last_call()  # what the set-up sent
        await call()
        run = log.run_since_last_call()
        sent.setdefault(name, set()).add(tuple(words[0] for words, by in run if not by))
        called.setdefault(name, set()).update(words[0] for words, by in run if by)

    log = CommandLog(redis_server)
    try:
        await every_documented_case(redis_backend, raw, observe)
    finally:
        log.close()
    costs = documented_costs(readme)
    assert set(costs) == set(sent)
    for operation, (command, script_calls) in costs.items():
        assert sent[operation] == {(command,)}, operation
        assert called[operation] == script_calls, operation


def test_cost_table_covers_every_store_method(readme: str) -> None:
    """The cost table has one row for each public method of the three Redis stores."""
    operations_ = [backticked(row[0])[0] for row in cost_rows(readme)]
    assert sorted(operations_) == sorted(store_methods())


@pytest.mark.asyncio
async def test_every_operation_is_one_round_trip(readme: str, redis_backend: RedisBackend) -> None:
    """Once warm, each operation of the cost table sends one command, as the README's cost
    section says."""
    assert "Every operation below is one network round trip, and one command" in words(readme)
    calls = operations(redis_backend)
    for call in calls.values():
        await call()
    for name in documented_costs(readme):
        before = redis_backend.stats().commands_sent
        await calls[name]()
        assert redis_backend.stats().commands_sent == before + 1, name


@pytest.mark.asyncio
async def test_scripts_are_sent_in_full_once_then_by_sha(
    readme: str, redis_backend: RedisBackend, redis_server: RedisServer, raw: redis.Redis
) -> None:
    """A backend's first run of a script sends EVAL, later runs EVALSHA, and after SCRIPT
    FLUSH the EVALSHA meets NOSCRIPT and the script goes again in full, as the README says."""
    text = words(section(readme, "Cost of each operation"))
    assert "Scripts are sent with `EVAL` the first time a backend runs them, then by SHA." in text
    assert "it is sent again at the cost of one more round trip" in text
    counter = redis_backend.rate_limiter()
    await counter.current("k")  # connected: the handshake is not logged below
    log = CommandLog(redis_server)
    try:
        sent = []
        for flush in (False, False, True, False):
            if flush:
                raw.script_flush()
            log.sent_since_last_call()
            await counter.increment("k", 1, 60)
            sent.append(log.sent_since_last_call())
    finally:
        log.close()
    assert sent == [["EVAL"], ["EVALSHA"], ["EVALSHA", "EVAL"], ["EVALSHA"]]
    assert await counter.current("k") == 4


def retry_rule(readme: str) -> tuple[set[str], set[str]]:
    """The operations the README's retry rule names as reads, and as writes."""
    bullet = next(
        line
        for line in words(section(readme, "Failures")).split("- ")
        if line.startswith("One rule decides what is tried again")
    )
    reads_text, _, writes_text = bullet.partition("a write (")
    reads = set(backticked(reads_text.partition("a read (")[2]))
    writes = set(backticked(writes_text.partition(")")[0]))
    return reads, writes


@pytest.mark.asyncio
async def test_retry_rule_lists_reads_and_writes_as_the_server_runs_them(
    readme: str, redis_server: RedisServer, raw: redis.Redis, proxied_backend: ProxiedBackend
) -> None:
    """With its reply cut, each operation the README calls a read runs twice on the server
    and answers; each one it calls a write runs once and is a BackendError."""
    reads, writes = retry_rule(readme)
    costs = documented_costs(readme)
    assert reads | writes == set(costs)
    assert not reads & writes
    for name in sorted(reads | writes):
        proxy, backend = proxied_backend()
        for call in operations(backend).values():  # every script loaded: the next are EVALSHA
            await call()
        await prepare(backend)
        raw.config_resetstat()
        proxy.drop_mid_reply()
        if name in reads:
            assert await bounded(operations(backend)[name]()) == EXPECTED[name]
        else:
            with pytest.raises(BackendError):
                await bounded(operations(backend)[name]())
        assert proxy.replies_cut == 1, name
        runs = redis_server.commandstats().get(costs[name][0].lower())
        assert runs == (2 if name in reads else 1), name


# Sent by the driver, yet in no rule: the login (no ACL denies HELLO or AUTH) and
# the PING a new connection waits for, whose refusal is an answer too.
NEEDS_NO_GRANT = {"hello", "auth", "ping"}


@pytest.mark.asyncio
async def test_acl_grants_exactly_the_commands_the_server_sees(
    readme: str, acl_redis_server: RedisServer
) -> None:
    """As a user with exactly the README's rule, the near-cache on, every documented case
    and every path of get_or_load runs, and the commands the server counted (scripts'
    included) are the rule's grants, no more and no fewer."""
    acl = next(
        block.code
        for block in code_blocks(section(readme, "ACL for the driver's user"))
        if "ACL SETUSER" in block.code
    )
    assert f"~{RedisStorageConfig().key_prefix}*" in acl.split()
    granted = {word[1:].lower() for word in acl.split() if word.startswith("+")}
    acl_redis_server.reset()
    with acl_redis_server.client() as admin:
        admin.execute_command("ACL", "SETUSER", "aa-docs", "reset", *readme_acl_rule())
        url = acl_redis_server.url_for(user="aa-docs", password="CHANGE-ME")
        config = acl_redis_server.backend_config(url=url, near_cache=True)
        before = acl_redis_server.commandstats()
        try:
            async with tracked(RedisBackend.connect(config)) as backend:
                await every_documented_case(backend, admin, lambda _, call: call())
                await every_path_of_get_or_load(backend)
            after = acl_redis_server.commandstats()
        finally:
            acl_redis_server.flushall()
            admin.execute_command("ACL", "DELUSER", "aa-docs")
    # The admin's own: the first INFO, and the PERSIST that planted a counter without expiry.
    admin_sent = {"info": 1, "persist": 1}
    seen = {
        name
        for name, calls in after.items()
        if calls - before.get(name, 0) - admin_sent.get(name, 0) > 0
    }
    assert seen - NEEDS_NO_GRANT == granted
    assert "client|tracking" in granted
    assert "time" in granted


async def every_path_of_get_or_load(backend: RedisBackend) -> None:
    """A hit; a miss that leads and fills; a miss whose loader raises and releases; and
    one that waits on another backend's lease until it is filled."""
    policies = backend.policies()
    agent = AgentId.new()
    assert await policies.get_or_load(agent, ScriptedLoader([POLICY]), 60) == POLICY
    assert await policies.get_or_load(agent, ScriptedLoader([AssertionError()]), 60) == POLICY
    missing = NotFoundError("no policy upstream")
    with pytest.raises(NotFoundError):
        await policies.get_or_load(AgentId.new(), ScriptedLoader([missing]), 60)
    agent = AgentId.new()
    leader = ScriptedLoader([POLICY], gate=asyncio.Event())
    led = asyncio.ensure_future(policies.get_or_load(agent, leader, 60))
    await bounded(leader.entered.wait())
    config = attrs.evolve(backend.pool.config, near_cache=False)
    waiter = RedisBackend.connect(config)
    try:
        waiting = asyncio.ensure_future(
            waiter.policies().get_or_load(agent, ScriptedLoader([AssertionError()]), 60)
        )
        before = waiter.stats().commands_sent
        await eventually(lambda: waiter.stats().commands_sent >= before + 3, "a second poll")
        leader.release()
        assert await bounded(led) == POLICY
        assert await bounded(waiting) == POLICY
    finally:
        await waiter.aclose()


@pytest.mark.asyncio
async def test_lease_section_states_the_layout_and_the_round_trips(
    readme: str, redis_backend: RedisBackend, redis_server: RedisServer, raw: redis.Redis
) -> None:
    """The lease lives under the key the README gives and reads `+<token>` while a load
    holds it and `-<token>` once filled; a miss that leads costs GET, get_or_lease and
    fill, one that fails GET, get_or_lease and release, and a hit one GET."""
    text = words(section(readme, "Read-through with leases"))
    assert "`{<prefix>policy:<hex32>}:lease`" in text
    assert "It reads `+<token>` while a load holds it, `-<token>` once released" in text
    for setting in ("lease_ttl", "lease_wait"):
        assert f"`{setting}`" in text, setting
    by_sha = {
        script.sha: script.name
        for script in vars(scripts).values()
        if isinstance(script, scripts.Script)
    }
    policies = redis_backend.policies()
    await policies.get_or_load(AgentId.new(), ScriptedLoader([POLICY]), 60)  # scripts loaded
    with pytest.raises(RuntimeError):
        await policies.get_or_load(AgentId.new(), ScriptedLoader([RuntimeError()]), 60)
    agent = AgentId.from_hex("0f1e2d3c4b5a69788796a5b4c3d2e1f0")
    lease = f"{{aa:policy:{agent.hex}}}:lease"
    log = CommandLog(redis_server)

    def sent() -> list[str]:
        return [
            by_sha.get(words[1], words[1]) if words[0] == "EVALSHA" else words[0]
            for words, by_script in log.run_since_last_call()
            if not by_script
        ]

    try:
        loader = ScriptedLoader([POLICY], gate=asyncio.Event())
        load = asyncio.ensure_future(policies.get_or_load(agent, loader, 60))
        await bounded(loader.entered.wait())
        leading = sent()
        held = raw.get(lease)
        sent()  # the GET just above
        loader.release()
        assert await bounded(load) == POLICY
        assert [*leading, *sent()] == ["GET", "get_or_lease", "fill"]
        assert re.fullmatch(rb"\+\d+", held or b""), held
        assert raw.get(lease) == b"-" + held[1:]
        assert policy_from_json(raw.get(f"aa:policy:{agent.hex}")) == POLICY
        sent()  # the GETs just above
        assert await policies.get_or_load(agent, ScriptedLoader([AssertionError()]), 60) == POLICY
        assert sent() == ["GET"]
        with pytest.raises(RuntimeError):
            await policies.get_or_load(AgentId.new(), ScriptedLoader([RuntimeError()]), 60)
        assert sent() == ["GET", "get_or_lease", "release"]
    finally:
        log.close()
    assert "a miss that leads, `GET`, `get_or_lease`, the loader, then `fill`: 3" in text
    for name in ("get_or_lease", "fill", "release"):
        assert f"`{name}`" in text, name


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
    assert int(match[1]) > len(names_of_tests(ContractSuite))


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
    assert int(match[1]) > len(names_of_tests(ContractSuite))
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


def test_example_as_a_partial_driver_runs_only_its_contracts(
    plugins_md: str, example_project: Path
) -> None:
    """The example made counter-only, as plugins.md shows (one kind in register(), its test
    class inheriting RateLimitContract alone), runs and passes exactly that contract's
    tests, with nothing skipped or deselected."""
    text = words(plugins_md)
    shown = "class TestDictContract(RateLimitContract):"
    assert f"`{shown}`" in text
    assert "`{Kind.RATE_LIMIT_COUNTER}`" in text
    module = example_project / f"{EXAMPLE_MODULE}.py"
    tests = example_project / "test_dict_contract.py"
    every_kind, every_contract = "kinds=set(Kind)", "class TestDictContract(ContractSuite):"
    assert every_kind in module.read_text(encoding="utf-8")
    assert every_contract in tests.read_text(encoding="utf-8")
    module.write_text(
        module.read_text(encoding="utf-8").replace(every_kind, "kinds={Kind.RATE_LIMIT_COUNTER}"),
        encoding="utf-8",
    )
    tests.write_text(
        tests.read_text(encoding="utf-8")
        .replace(every_contract, shown)
        .replace("import ContractSuite,", "import RateLimitContract,"),
        encoding="utf-8",
    )
    result = run_example_suite(example_project)
    assert result.returncode == 0, result.stdout + result.stderr
    ran = set(re.findall(r"::TestDictContract::(\w+)\S* PASSED", result.stdout))
    assert ran == names_of_tests(RateLimitContract)
    summary = result.stdout.splitlines()[-1]
    assert re.fullmatch(r"=+ \d+ passed in [\d.]+s =+", summary), summary


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

"""``aa-storage``: list the installed drivers, check a config end to end, and
benchmark the Redis driver.

``check`` loads the config (the file ``--config`` or ``AA_STORAGE_CONFIG``
names, else memory defaults), runs every operation of every kind once against
the real stores, and prints what each cost and the effective config as TOML. Any
failure is one line on stderr and exit status 1, never a traceback; so is a
reader that stops early (``aa-storage check | head -1``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.metadata
import logging
import os
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import Any

import attrs

from aa_storage import (
    CONFIG_ENV_VAR,
    AgentId,
    ConfigError,
    Kind,
    PolicyDecision,
    PolicyDocument,
    PolicyRule,
    Registry,
    SessionId,
    SessionRecord,
    Storage,
    StorageConfig,
    StorageError,
    open_storage,
)
from aa_storage._toml_text import toml_key, toml_value
from aa_storage.redaction import redacted_settings

_DIST = "aa-storage"


class CheckFailed(Exception):
    """A store answered, but not what the contract says it must."""


class StepFailed(Exception):
    """One operation of the check raised; ``error`` is what the store raised."""

    def __init__(self, step: str, error: StorageError) -> None:
        super().__init__(f"{step}: {error}")
        self.error = error


@attrs.frozen
class Row:
    kind: str
    driver: str
    operation: str
    latency_ms: float


async def _timed(
    rows: list[Row], kind: Kind, driver: str, operation: str, call: Awaitable[Any]
) -> Any:
    started = time.perf_counter()
    try:
        result = await call
    except StorageError as exc:
        raise StepFailed(f"{kind.value} {operation} via {driver}", exc) from None
    rows.append(Row(kind.value, driver, operation, (time.perf_counter() - started) * 1000))
    return result


def _expect(actual: object, expected: object, what: str) -> None:
    if actual != expected:
        raise CheckFailed(f"{what} returned {actual!r}, expected {expected!r}")


async def _check_kinds(storage: Storage) -> list[Row]:
    rows: list[Row] = []
    sessions_driver = storage.config.driver_for(Kind.SESSION_STORE)
    record = SessionRecord(SessionId.new(), AgentId.new(), time.time_ns())

    def step(kind: Kind, driver: str) -> Callable[[str, Awaitable[Any]], Awaitable[Any]]:
        return lambda operation, call: _timed(rows, kind, driver, operation, call)

    session = step(Kind.SESSION_STORE, sessions_driver)
    await session("save", storage.sessions.save(record))
    _expect(await session("load", storage.sessions.load(record.session_id)), record, "load")
    await session("delete", storage.sessions.delete(record.session_id))

    counter = step(Kind.RATE_LIMIT_COUNTER, storage.config.driver_for(Kind.RATE_LIMIT_COUNTER))
    key = f"aa-storage-check:{uuid.uuid4().hex}"
    _expect(await counter("increment", storage.rate_limiter.increment(key, 1, 60)), 1, "increment")
    _expect(await counter("current", storage.rate_limiter.current(key)), 1, "current")
    await counter("reset", storage.rate_limiter.reset(key))

    policy_driver = storage.config.driver_for(Kind.POLICY_STORE)
    policy = step(Kind.POLICY_STORE, policy_driver)
    agent = AgentId.new()
    loaded = PolicyDocument(1, "aa-storage check", [PolicyRule("tool:*", PolicyDecision.ALLOW)])
    loads: list[AgentId] = []

    async def loader(agent_id: AgentId) -> PolicyDocument:
        loads.append(agent_id)
        return loaded

    # A cold agent: the read-through path (on Redis, its lease) loads it once.
    got = await policy("get_or_load", storage.policies.get_or_load(agent, loader, 60))
    _expect(got, loaded, "get_or_load")
    _expect(loads, [agent], "get_or_load's loader calls")
    document = attrs.evolve(loaded, version=2)
    await policy("cache_policy", storage.policies.cache_policy(agent, document, 60))
    cached = await policy("get_policy", storage.policies.get_policy(agent))
    _expect(cached, document, "get_policy")
    await policy("invalidate", storage.policies.invalidate(agent))
    return rows


async def _check(config_path: str | None) -> int:
    async with open_storage(config_path) as storage:
        rows = await _check_kinds(storage)
        print(f"{'kind':<20}{'driver':<10}{'operation':<14}{'ok':<5}{'latency':>10}")
        for row in rows:
            print(
                f"{row.kind:<20}{row.driver:<10}{row.operation:<14}{'yes':<5}{row.latency_ms:>8.2f}ms"
            )
        for name, backend in storage.backends.items():
            info = await backend.describe()
            print(f"\n[{name}]")
            for fact, value in info.facts:
                print(f"  {fact}: {value}")
            for warning in info.warnings:
                print(f"  WARNING: {warning}")
        print("\neffective config:")
        for line in _config_as_toml(storage.config):
            print(f"  {line}")
    return 0


def _config_as_toml(config: StorageConfig) -> Iterator[str]:
    """The config as TOML lines, secrets masked; unset settings are comments."""
    yield "[storage]"
    yield f"backend = {toml_value(config.backend)}"
    for kind in Kind:
        yield f"{kind.value} = {toml_value(config.driver_for(kind))}"
    for name, settings in config.drivers.items():
        yield f"[storage.{toml_key(name)}]"
        for setting, shown in redacted_settings(settings).items():
            if shown is None:
                yield f"# {toml_key(setting)} is not set"
            else:
                yield f"{toml_key(setting)} = {toml_value(shown)}"


DRIVERS_DESCRIPTION = (
    "List the installed drivers and the kinds each provides. A plugin that fails to load "
    "is listed as broken, with its error, after which the others are still listed; the "
    "exit status is then 1, else 0."
)


def _drivers() -> int:
    """List every driver with its kinds, a broken plugin with its error; 1 if any is broken."""
    found = Registry().load_all()
    width = max([10, *(len(name) + 2 for name in found)])
    for name, loaded in found.items():
        if isinstance(loaded, ConfigError):
            shown = "broken: " + " ".join(str(loaded).split())
        else:
            shown = ", ".join(sorted(kind.value for kind in loaded.kinds))
        print(f"{name:<{width}}{shown}")
    return 1 if any(isinstance(loaded, ConfigError) for loaded in found.values()) else 0


def _bench(args: argparse.Namespace) -> int:
    # The benchmark compares the Redis driver with raw redis-py, so it lives with
    # that driver; importing it only here keeps redis out of every other command.
    from aa_storage_redis.bench import Budget, command

    budget = Budget(seconds=args.seconds, requests=args.requests)
    return command(args.config, args.concurrency, budget, sys.stdout, sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status."""
    try:
        try:
            return _run(argv)
        finally:
            sys.stdout.flush()  # here, where a closed pipe can still be handled
    except BrokenPipeError:
        # The reader went away (`aa-storage check | head -1`). As the Python docs
        # advise, point stdout at devnull so the interpreter's own final flush
        # does not fail again with a traceback, and exit quietly.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1


def _run(argv: Sequence[str] | None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        with _labelled_log_lines():
            if args.command == "drivers":
                return _drivers()
            if args.command == "bench":
                return _bench(args)
            return asyncio.run(_check(args.config))
    except (ConfigError, StorageError, CheckFailed, StepFailed) as exc:
        kind = type(exc.error if isinstance(exc, StepFailed) else exc).__name__
        # One line, whatever the message held.
        message = " ".join(str(exc).split())
        print(f"aa-storage: {kind}: {message}", file=sys.stderr)
        return 1


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="aa-storage",
        description="List storage drivers, check a storage config, and benchmark the Redis driver.",
    )
    parser.add_argument(
        "--version", action="version", version=f"%(prog)s {importlib.metadata.version(_DIST)}"
    )
    commands = parser.add_subparsers(dest="command", title="commands")
    commands.add_parser(
        "drivers",
        help="list installed drivers and their kinds (exit 1 if a plugin is broken)",
        description=DRIVERS_DESCRIPTION,
    )
    check = commands.add_parser(
        "check",
        help="round-trip every operation of every kind",
        description=(
            "Run every operation of every kind of store once, and print each "
            "latency, what each backend reports about itself, and the effective config."
        ),
    )
    check.add_argument(
        "--config",
        metavar="FILE",
        help=(
            f"TOML config file; without it, the file named by the {CONFIG_ENV_VAR} "
            "environment variable, and when that is unset, the embedded memory driver"
        ),
    )
    _add_bench(commands)
    return parser


def _add_bench(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    bench = commands.add_parser(
        "bench",
        help="measure the Redis driver's throughput and latency beside raw redis-py",
        description=(
            "Run each store operation sequentially and with C concurrent callers, through "
            "the Redis driver and as the same command sent with raw redis-py, and print "
            "ops/s, p50 and p99 latency, and their ratio. Progress goes to stderr, the "
            "table to stdout. Keys are made under <key_prefix>bench-<random>: and deleted "
            "at the end."
        ),
    )
    bench.add_argument(
        "--config",
        metavar="FILE",
        help=(
            "TOML config whose [storage.redis] section names the server; without it, a "
            "throwaway redis-server from PATH on a free loopback port"
        ),
    )
    bench.add_argument(
        "--concurrency",
        metavar="C",
        type=_at_least(2, int),
        default=50,
        help="callers of the concurrent cases (default 50)",
    )
    budget = bench.add_mutually_exclusive_group()
    budget.add_argument(
        "--seconds",
        type=_at_least(0.001, float),
        default=2.0,
        help="how long each case runs (default 2)",
    )
    budget.add_argument(
        "--requests",
        metavar="N",
        type=_at_least(1, int),
        help="calls per case, instead of --seconds",
    )


def _at_least(low: float, number: Callable[[str], Any]) -> Callable[[str], Any]:
    """An argparse type: ``number(text)``, refused below ``low``."""

    def parse(text: str) -> Any:
        try:
            value = number(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {number.__name__}, got {text!r}") from None
        if not value >= low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {text}")
        return value

    return parse


@contextlib.contextmanager
def _labelled_log_lines() -> Iterator[None]:
    """Show warnings that drivers log while the command runs, labelled like check's own."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setLevel(logging.WARNING)
    handler.setFormatter(logging.Formatter("aa-storage: %(levelname)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield
    finally:
        root.removeHandler(handler)


if __name__ == "__main__":
    sys.exit(main())

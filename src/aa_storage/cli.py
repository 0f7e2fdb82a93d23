"""``aa-storage``: list the installed drivers, check a config end to end, and run
the subcommands that drivers add (the Redis driver's ``bench``).

``check`` loads the config (the file ``--config`` or ``AA_STORAGE_CONFIG``
names, else memory defaults), runs every operation of every kind once against
the real stores, and prints what each cost and the effective config as TOML. Any
failure is one line on stderr and exit status 1, never a traceback; so is a
reader that stops early (``aa-storage check | head -1``). A driver's
subcommands, added through the ``add_commands`` hook, fail the same way.

Drivers' subcommands are asked for only when the command line names a command
that is not built in, or asks for the list of commands: so ``drivers`` and
``check`` import no driver they don't use, and a plugin that is broken does not
stop them.
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
from aa_storage.commands import Commands
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
    words = sys.argv[1:] if argv is None else list(argv)
    parser, commands = _parser()
    try:
        if _named_command(words) not in commands:
            Registry().add_commands(commands)
        args = parser.parse_args(words)
        if args.command is None:
            parser.print_help(sys.stderr)
            return 2
        with _labelled_log_lines():
            return commands.run(args)
    except (ConfigError, StorageError, CheckFailed, StepFailed) as exc:
        kind = type(exc.error if isinstance(exc, StepFailed) else exc).__name__
        # One line, whatever the message held.
        message = " ".join(str(exc).split())
        print(f"aa-storage: {kind}: {message}", file=sys.stderr)
        return 1


def _named_command(words: Sequence[str]) -> str | None:
    """The command ``words`` name: the first that is not an option, as the only
    options before it (``--help``, ``--version``) take no value."""
    return next((word for word in words if not word.startswith("-")), None)


def _parser() -> tuple[argparse.ArgumentParser, Commands]:
    """The parser of the built-in commands, and its subcommands, for drivers to add to."""
    parser = argparse.ArgumentParser(
        prog="aa-storage",
        description=(
            "List storage drivers, check a storage config, and run the commands drivers add."
        ),
    )
    parser.add_argument(
        "--version", action="version", version=f"%(prog)s {importlib.metadata.version(_DIST)}"
    )
    commands = Commands.of(parser)
    commands.add(
        "drivers",
        lambda args: _drivers(),
        help="list installed drivers and their kinds (exit 1 if a plugin is broken)",
        description=DRIVERS_DESCRIPTION,
    )
    check = commands.add(
        "check",
        lambda args: asyncio.run(_check(args.config)),
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
    return parser, commands


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

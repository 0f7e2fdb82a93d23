"""``aa-storage bench``: the Redis driver's throughput and latency, beside raw redis-py.

Each store operation runs sequentially and with ``concurrency`` callers, once
through the driver and once as the same command sent with raw redis-py async
(hiredis), against the server a config names or a throwaway redis-server.
Then the near-cache, a replica missing, and a stampede: ``get_or_load``
callers in several processes on one cold key; and what telemetry costs, off,
on without an SDK and on with one. It prints one table, the lines of the later
cases, and the driver's stats over the run. With ``--peers``, then a second table:
the driver beside every installed peer (redis-py, coredis, valkey-glide and
``redis-benchmark``) on the same workloads (``peers.py``); with ``--profile``, where
a call's CPU time goes; with ``--scale``, throughput as processes are added, the
near-cache's memory per 10,000 policies, and a plot.

The driver's plugin adds the subcommand with :func:`add_command`. The modules,
each importing only those listed after it:

- ``measure``: the run, case by case, and what it prints;
- ``scaling``: the ``--scale`` part: ``scale`` (processes added), ``near_memory`` and
  ``plot``, which alone imports matplotlib, and only when a plot is asked for;
- ``peers``: with ``--peers``, the driver beside its peers (its own modules: ``peer_*``);
- ``near``, ``missing_replica``, ``stampede``, ``telemetry_cost``: one kind of case each;
- ``timing``: the budget of a case, and how its calls are timed;
- ``operations``: what a case calls, through the driver and raw redis-py;
- ``report``: the results and their lines; ``server``: the throwaway redis-server.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Callable
from types import FrameType
from typing import Any, TextIO

from aa_storage import ConfigError, load_config
from aa_storage.commands import Commands
from aa_storage_redis.bench.measure import NO_EXTRAS, Extras, measure
from aa_storage_redis.bench.plot import plot_problem
from aa_storage_redis.bench.scaling import MAX_PROCESSES, ScaleOptions
from aa_storage_redis.bench.server import BINARY, throwaway_server
from aa_storage_redis.bench.timing import Budget
from aa_storage_redis.config import DRIVER_NAME, RedisStorageConfig

__all__ = ["Budget", "Extras", "ScaleOptions", "add_command", "command"]


def add_command(commands: Commands) -> None:
    """Add ``bench`` and its arguments to ``commands``."""
    bench = commands.add(
        "bench",
        _run,
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
    bench.add_argument(
        "--peers",
        action="store_true",
        help=(
            "then measure increment, get_policy, save and load through the driver and "
            "through every installed peer on the same server, and print a second table: "
            "redis-py, coredis and valkey-glide (a client not installed is named as such), "
            "redis-benchmark, the C limit, and the asyncio floor, the least any asyncio "
            "client does for the same command; each runs two rounds of half the budget "
            "(one of all of it below 0.5 s or 40 calls), taking turns with the driver, and "
            "keeps its best; with uvloop installed, the driver and the floor run again on it"
        ),
    )
    bench.add_argument(
        "--profile",
        action="store_true",
        help=(
            "then: increment with C callers under cProfile, its CPU time by layer (store, "
            "telemetry, executor, connections, parsing, event loop) and costliest functions"
        ),
    )
    bench.add_argument(
        "--scale",
        action="store_true",
        help=(
            "then: aggregate throughput of 1, 2, 4, ... processes of C callers each "
            "(increment and get_policy, the budget per process), the point where the "
            "server saturates, and the near-cache's memory per 10,000 policies"
        ),
    )
    bench.add_argument(
        "--max-processes",
        metavar="N",
        type=_at_least(1, int),
        default=MAX_PROCESSES,
        help=f"the most processes --scale runs (default {MAX_PROCESSES})",
    )
    bench.add_argument(
        "--plot",
        metavar="FILE",
        help="with --scale: write a PNG of total and per-process ops/s (needs matplotlib)",
    )


def _run(args: argparse.Namespace) -> int:
    budget = Budget(seconds=args.seconds, requests=args.requests)
    scale = ScaleOptions(args.max_processes, args.plot) if args.scale else None
    # Refused before any measuring, so that a run of minutes is not wasted.
    if args.plot is not None:
        problem = "--plot needs --scale" if scale is None else plot_problem(args.plot)
        if problem is not None:
            sys.stderr.write(f"aa-storage bench: {problem}\n")
            return 2
    extras = Extras(peers=args.peers, profiled=args.profile, scale=scale)
    return command(args.config, args.concurrency, budget, sys.stdout, sys.stderr, extras)


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


def command(
    config_path: str | None,
    concurrency: int,
    budget: Budget,
    out: TextIO,
    err: TextIO,
    extras: Extras = NO_EXTRAS,
) -> int:
    """Run the benchmark against ``config_path``'s Redis, else a throwaway server;
    the table goes to ``out``, progress to ``err``, then what ``extras`` asks for
    (the peers' table, the profile, the ``--scale`` part). Returns the exit status.

    Ctrl-C (SIGINT) stops the run however it was started, in the background too,
    and so does SIGTERM; either way the exit status is 130.
    Raises ``ConfigError`` when there is no server to measure, and
    ``StorageError`` when the server fails a call.
    """
    inherited = signal.getsignal(signal.SIGINT)
    if inherited is signal.SIG_IGN:
        # A shell starts a background job (`cmd &`), and nohup and some CI runners
        # start their commands, with SIGINT ignored, which a process inherits: then
        # Ctrl-C and `kill -INT` would not stop the run.
        signal.signal(signal.SIGINT, signal.default_int_handler)
    # SIGTERM stops the run as Ctrl-C does, outside the timed cases too (the
    # server's start, the stampede); during them, measure.py cancels its task.
    terminate = signal.signal(signal.SIGTERM, _interrupt)
    try:
        return _measure_somewhere(config_path, concurrency, budget, out, err, extras)
    except (KeyboardInterrupt, asyncio.CancelledError):
        # Ctrl-C or SIGTERM: the keys are deleted, the server stopped.
        err.write("aa-storage bench: interrupted\n")
        return 130
    finally:
        signal.signal(signal.SIGTERM, terminate)
        if inherited is signal.SIG_IGN:
            signal.signal(signal.SIGINT, inherited)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def _measure_somewhere(
    config_path: str | None,
    concurrency: int,
    budget: Budget,
    out: TextIO,
    err: TextIO,
    extras: Extras,
) -> int:
    if config_path is not None:
        config = config_from_file(config_path)
        return measure(config, concurrency, budget, out, err, extras)
    with throwaway_server() as server:
        err.write(
            f"aa-storage bench: started {BINARY} (pid {server.pid}) at {server.url}, "
            "stopped when the run ends\n"
        )
        config = RedisStorageConfig(url=server.url)
        return measure(config, concurrency, budget, out, err, extras)


def config_from_file(path: str) -> RedisStorageConfig:
    """The ``[storage.redis]`` settings of the config file at ``path``."""
    settings = load_config(path).drivers.get(DRIVER_NAME)
    if not isinstance(settings, RedisStorageConfig):
        raise ConfigError(
            f"{path}: no [storage.{DRIVER_NAME}] section, and no store uses the "
            f"{DRIVER_NAME} driver; bench measures the Redis driver"
        )
    return settings

"""``aa-storage bench``: the Redis driver's throughput and latency, beside raw redis-py.

Each store operation runs sequentially and with ``concurrency`` callers, once
through the driver and once as the same command sent with raw redis-py async
(hiredis), against the server a config names or a throwaway redis-server.
Then a stampede: ``get_or_load`` callers in several processes on one cold key.
:func:`command` is the CLI's entry; it prints one table, the stampede's
line, and the driver's stats over the run.
"""

from __future__ import annotations

import asyncio
import signal
from typing import TextIO

from aa_storage import ConfigError, load_config
from aa_storage.redaction import redact_url
from aa_storage_redis.bench.measure import Budget, run
from aa_storage_redis.bench.operations import OPERATIONS
from aa_storage_redis.bench.report import (
    Progress,
    p99_note,
    propagation_lines,
    stats_lines,
    table,
)
from aa_storage_redis.bench.server import BINARY, throwaway_server
from aa_storage_redis.bench.stampede import CALLERS, PROCESSES, stampede
from aa_storage_redis.config import RedisStorageConfig
from aa_storage_redis.hooks import DRIVER_NAME

__all__ = ["Budget", "command"]


def command(
    config_path: str | None, concurrency: int, budget: Budget, out: TextIO, err: TextIO
) -> int:
    """Run the benchmark against ``config_path``'s Redis, else a throwaway server;
    the table goes to ``out``, progress to ``err``. Returns the exit status.

    Ctrl-C (SIGINT) stops the run however it was started, in the background too.
    Raises ``ConfigError`` when there is no server to measure, and
    ``StorageError`` when the server fails a call.
    """
    inherited = signal.getsignal(signal.SIGINT)
    if inherited is signal.SIG_IGN:
        # A shell starts a background job (`cmd &`), and nohup and some CI runners
        # start their commands, with SIGINT ignored, which a process inherits: then
        # Ctrl-C and `kill -INT` would not stop the run.
        signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        return _measure_somewhere(config_path, concurrency, budget, out, err)
    except (KeyboardInterrupt, asyncio.CancelledError):
        # Ctrl-C, or SIGTERM (see run): the keys are deleted, the server stopped.
        err.write("aa-storage bench: interrupted\n")
        return 130
    finally:
        if inherited is signal.SIG_IGN:
            signal.signal(signal.SIGINT, inherited)


def _measure_somewhere(
    config_path: str | None, concurrency: int, budget: Budget, out: TextIO, err: TextIO
) -> int:
    if config_path is not None:
        return _bench(config_from_file(config_path), concurrency, budget, out, err)
    with throwaway_server() as server:
        err.write(
            f"aa-storage bench: started {BINARY} (pid {server.pid}) at {server.url}, "
            "stopped when the run ends\n"
        )
        return _bench(RedisStorageConfig(url=server.url), concurrency, budget, out, err)


def config_from_file(path: str) -> RedisStorageConfig:
    """The ``[storage.redis]`` settings of the config file at ``path``."""
    settings = load_config(path).drivers.get(DRIVER_NAME)
    if not isinstance(settings, RedisStorageConfig):
        raise ConfigError(
            f"{path}: no [storage.{DRIVER_NAME}] section, and no store uses the "
            f"{DRIVER_NAME} driver; bench measures the Redis driver"
        )
    return settings


def _bench(
    config: RedisStorageConfig, concurrency: int, budget: Budget, out: TextIO, err: TextIO
) -> int:
    # Each operation in two modes on two sides, then the near-cache's hit on two
    # sides and its propagation, then reads with a replica missing, with and
    # without writers.
    cases = len(OPERATIONS) * 2 * 2 + 3 + 2
    err.write(
        f"aa-storage bench: redis at {redact_url(config.effective_url)}, "
        f"pool_size={config.pool_size}; {cases} cases of {budget} each\n"
    )
    progress = Progress(err, cases)
    try:
        rows, stats, propagation, missing = asyncio.run(run(config, concurrency, budget, progress))
    finally:
        progress.stop()
    err.write(f"aa-storage bench: stampede, {CALLERS} callers in {PROCESSES} processes ...\n")
    crowd = stampede(config)
    tail = (
        *propagation_lines(propagation),
        "",
        *missing.lines(),
        "",
        crowd.line(),
        "",
        *stats_lines(stats),
    )
    for line in (*table(rows), "", *p99_note(rows), *tail):
        out.write(line + "\n")
    return 0

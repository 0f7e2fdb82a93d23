"""``redis-benchmark``, the C limit of ``aa-storage bench --peers``: the driver's command
sent by C clients, one request in flight each (``-P 1``), ``-c 1`` for the sequential
case and ``-c C`` for C callers. Its throughput is read from its ``--csv`` output.
"""

from __future__ import annotations

import asyncio
import math
import re
import shutil
import subprocess

from aa_storage_redis.bench.peer_clients import Command
from aa_storage_redis.bench.timing import Budget
from aa_storage_redis.config import RedisStorageConfig

BINARY = "redis-benchmark"
INSTALL_HINT = "apt-get install redis-tools"
# With --seconds, the first run of a case is this many requests, to learn the rate
# that sizes -n to the budget.
PROBE_REQUESTS = 2_000
# The last line of --csv output: the test's name, then rps and six latencies.
_RESULT = re.compile(r'"([^",]*)"(?:,"[^",]*"){6}\Z')
# It times a run in whole milliseconds: a run of fewer requests than this can take
# 0 ms (an infinite rate) or 1 ms where it took 1.4, so -n is never below it.
MIN_REQUESTS = 1_000
_PATIENCE_SECS = 30.0


class BenchmarkFailed(Exception):
    """redis-benchmark exited with an error, or printed no rate; the message says why."""


def find() -> str | None:
    """redis-benchmark's path on PATH, or None."""
    return shutil.which(BINARY)


def version(path: str) -> str:
    """What ``redis-benchmark --version`` says, less the name: ``7.0.15``, say."""
    try:
        said = subprocess.run(
            [path, "--version"], capture_output=True, text=True, timeout=10, check=False
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return "version unknown"
    return said.strip().removeprefix(f"{BINARY} ").split(" ")[0] or "version unknown"


async def case_rate(
    path: str,
    config: RedisStorageConfig,
    command: Command,
    clients: int,
    budget: Budget,
    rates: dict[str, float],
    case: str,
) -> float:
    """redis-benchmark's requests per second for ``command`` from ``clients`` clients:
    ``budget.requests`` of them, or as many as fill ``budget.seconds`` at the case's
    last rate, ``rates[case]``, which a short probe run finds the first time; never
    fewer than :data:`MIN_REQUESTS`. ``rates`` gets the new rate.
    Raises :class:`BenchmarkFailed`."""
    if budget.requests is not None:
        requests = budget.requests
    else:
        if case not in rates:
            rates[case] = await requests_per_sec(path, config, command, clients, PROBE_REQUESTS)
        requests = math.ceil(budget.seconds * rates[case])
    requests = max(requests, MIN_REQUESTS, clients)
    rates[case] = await requests_per_sec(path, config, command, clients, requests)
    return rates[case]


async def requests_per_sec(
    path: str, config: RedisStorageConfig, command: Command, clients: int, requests: int
) -> float:
    """Run ``command`` ``requests`` times from ``clients`` clients; their requests per
    second. Raises :class:`BenchmarkFailed`, also when it has not finished after 30 s
    plus one per 1,000 requests; when cancelled, the process is killed."""
    deployment = config.deployment
    ((host, port),) = deployment.addresses
    argv = [path, "-h", host, "-p", str(port), "--dbnum", str(deployment.database)]
    if deployment.password is not None:
        # redis-benchmark takes a password on its command line only.
        argv += ["-a", deployment.password]
        if deployment.username is not None:
            argv += ["--user", deployment.username]
    if config.uses_tls:
        argv += ["--tls"]
        for flag, file in (("--cacert", config.ca_file), ("--cert", config.cert_file)):
            if file is not None:
                argv += [flag, file]
        if config.key_file is not None:
            argv += ["--key", config.key_file]
    options = ["-c", str(clients), "-n", str(requests), "-P", "1", "-q", "--csv"]
    process = await asyncio.create_subprocess_exec(
        *argv,
        *options,
        *command.argv(),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    # It waits for ever on a server it cannot reach; C clients make 1,000 requests a
    # second on the slowest machine.
    limit = _PATIENCE_SECS + requests / 1_000
    try:
        async with asyncio.timeout(limit):
            out, err = await process.communicate()
    except TimeoutError:
        raise BenchmarkFailed(f"no result within {limit:.0f} s, so it was stopped") from None
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    said = _scrubbed(err.decode(errors="replace"), deployment.password)
    if process.returncode != 0:
        raise BenchmarkFailed(f"exit status {process.returncode}: {_last_line(said)}")
    return _rate(_scrubbed(out.decode(errors="replace"), deployment.password))


def _rate(out: str) -> float:
    """The ``rps`` of the one test in ``--csv`` output."""
    # Read from the end: the test's name is the command, whose raw bytes may hold a
    # quote or a line break.
    found = _RESULT.search(out.rstrip())
    try:
        rate = float(found[1]) if found else math.nan
    except ValueError:
        rate = math.nan
    if math.isnan(rate):
        raise BenchmarkFailed(f"no requests per second in its output: {_last_line(out)}")
    if not 0 < rate < math.inf:
        raise BenchmarkFailed(
            f"its rate is {found[1] if found else rate}: too few requests to time"
        )
    return rate


def _scrubbed(text: str, secret: str | None) -> str:
    return text.replace(secret, "***") if secret else text


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else "nothing said"

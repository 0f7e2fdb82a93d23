"""A throwaway redis-server for ``aa-storage bench`` when no config names a server.

It listens on 127.0.0.1 only, on a port that was free a moment before, with
persistence off, and is stopped when the benchmark ends, however it ends.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from typing import IO

import attrs
import redis

from aa_storage import BackendError, ConfigError

BINARY = "redis-server"
_LOOPBACK = "127.0.0.1"
_START_TIMEOUT_SECS = 10.0
_STOP_TIMEOUT_SECS = 5.0
# Another process may take the port between picking it and the server binding it.
_PORT_ATTEMPTS = 3


@attrs.frozen
class ThrowawayServer:
    """A running redis-server that this process started and will stop."""

    url: str
    pid: int


@contextlib.contextmanager
def throwaway_server() -> Iterator[ThrowawayServer]:
    """Start ``redis-server`` from ``PATH`` and stop it (SIGTERM, then SIGKILL) on exit.

    Raises ``ConfigError`` when no ``redis-server`` is on ``PATH``, naming what
    to install or pass instead, and ``BackendError`` when it does not come up.
    """
    binary = shutil.which(BINARY)
    if binary is None:
        raise ConfigError(
            f"bench needs a Redis server: pass --config FILE with a [storage.redis] section, "
            f"or put {BINARY} on PATH (apt-get install redis-server) so bench starts a "
            "throwaway one"
        )
    with tempfile.TemporaryFile() as log:
        process, port = _start(binary, log)
        try:
            yield ThrowawayServer(url=f"redis://{_LOOPBACK}:{port}", pid=process.pid)
        finally:
            process.terminate()
            try:
                process.wait(_STOP_TIMEOUT_SECS)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _start(binary: str, log: IO[bytes]) -> tuple[subprocess.Popen[bytes], int]:
    for _ in range(_PORT_ATTEMPTS):
        port = _free_port()
        log.seek(0)
        log.truncate()
        process = subprocess.Popen(
            [binary, "--port", str(port), "--bind", _LOOPBACK, "--save", "", "--appendonly", "no"],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            # Out of the terminal's process group, so that Ctrl-C reaches only the
            # benchmark, which deletes its keys while the server still runs.
            start_new_session=True,
        )
        try:
            if _answers(process, port):
                return process, port
        except BaseException:
            process.kill()
            process.wait()
            raise
        log.seek(0)
        said = log.read().decode(errors="replace")
        if "Address already in use" not in said:
            process.kill()
            process.wait()
            last_line = (said.strip().splitlines() or ["no output"])[-1]
            raise BackendError(f"{binary} did not start on port {port}: {last_line}")
    raise BackendError(f"{binary} found no free port in {_PORT_ATTEMPTS} attempts")


def _answers(process: subprocess.Popen[bytes], port: int) -> bool:
    """True once the server answers PING; False if it exits first or never answers."""
    deadline = time.monotonic() + _START_TIMEOUT_SECS
    with redis.Redis(host=_LOOPBACK, port=port, socket_timeout=0.5) as probe:
        while time.monotonic() < deadline and process.poll() is None:
            try:
                if probe.ping():
                    return True
            except redis.ConnectionError:
                time.sleep(0.02)
    return False


def _free_port() -> int:
    """A loopback TCP port that was free a moment ago (redis-server refuses port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((_LOOPBACK, 0))
        port: int = probe.getsockname()[1]
        return port

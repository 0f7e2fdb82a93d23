"""The Python clients ``aa-storage bench --peers`` measures beside the driver, and the
command each store operation sends, written once for all of them.

Each client is used the way its library recommends for many concurrent callers,
with its fastest settings:

- ``redis-py``: the asyncio client over a ``BlockingConnectionPool`` of one
  connection per caller, with hiredis; the same calls as the main table's raw
  redis-py (``operations.py``);
- ``coredis``: one client shared by every caller; its pool multiplexes commands
  on its connections;
- ``valkey-glide``: one ``GlideClient`` shared by every caller, which multiplexes
  them on one connection; scripts run with ``invoke_script`` (``EVALSHA`` by the
  script's SHA).

Each sends exactly the driver's command: :data:`COMMANDS` says what it is.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.metadata
from collections.abc import AsyncIterator, Callable, Mapping
from types import MappingProxyType
from typing import Any

import attrs

from aa_storage import SESSION_TTL_SECS
from aa_storage_redis.backend import RedisBackend
from aa_storage_redis.bench.operations import (
    WINDOW_SECS,
    Call,
    Caller,
    Operation,
    Subject,
    raw_client,
)
from aa_storage_redis.config import RedisStorageConfig
from aa_storage_redis.keys import KeySpace
from aa_storage_redis.scripts import INCREMENT, SAVE_SESSION, Script


@attrs.frozen
class Command:
    """One command as the server receives it: ``name``, then ``script``'s SHA and the
    key count for ``EVALSHA``, then ``key`` and ``args``."""

    name: str
    key: bytes
    args: tuple[bytes, ...] = ()
    script: Script | None = None

    def argv(self) -> list[bytes]:
        """The whole command, word by word."""
        if self.script is not None:
            return [self.name.encode(), self.script.sha.encode(), b"1", self.key, *self.args]
        return [self.name.encode(), self.key, *self.args]


def _increment(keys: KeySpace, caller: Caller) -> Command:
    window_ms = str(WINDOW_SECS * 1000).encode()
    return Command("EVALSHA", keys.rate_limit(caller.counter), (b"1", window_ms), INCREMENT)


def _save(keys: KeySpace, caller: Caller) -> Command:
    record = caller.record
    args = (record.agent_id.bytes, str(record.started_at_ns).encode(), b"%d" % SESSION_TTL_SECS)
    return Command("EVALSHA", keys.session(record.session_id), args, SAVE_SESSION)


# The command each measured operation sends, as operations.py's raw calls send it.
COMMANDS: Mapping[str, Callable[[KeySpace, Caller], Command]] = MappingProxyType(
    {
        "increment": _increment,
        "get_policy": lambda keys, caller: Command("GET", keys.policy(caller.agent)),
        "save": _save,
        "load": lambda keys, caller: Command(
            "HMGET", keys.session(caller.record.session_id), (b"agent_id", b"started_at_ns")
        ),
    }
)

# A connected client: the call it makes for an operation.
Calls = Callable[[Operation], Call]


@attrs.frozen
class PythonPeer:
    """A Python client: its column's name, the distribution and module that hold it,
    and how it connects, given the driver's backend and the number of callers."""

    name: str
    distribution: str
    module: str
    connect: Callable[[RedisBackend, int], contextlib.AbstractAsyncContextManager[Calls]]
    how: str
    """How it is used, for the line under the table."""

    def version(self) -> str | None:
        """Its installed version; None when its module cannot be imported."""
        try:
            importlib.import_module(self.module)
            return importlib.metadata.version(self.distribution)
        except ImportError:  # PackageNotFoundError is one too
            return None


@contextlib.asynccontextmanager
async def _redis_py(backend: RedisBackend, callers: int) -> AsyncIterator[Calls]:
    async with raw_client(backend.pool.config, callers) as raw:
        subject = Subject.over(backend, raw)

        def calls(operation: Operation) -> Call:
            # The subject the orchestrator passes has no raw client; this one has.
            return lambda _, caller: operation.raw(subject, caller)

        yield calls


@contextlib.asynccontextmanager
async def _coredis(backend: RedisBackend, callers: int) -> AsyncIterator[Calls]:
    import coredis

    config = backend.pool.config
    options = _server(config)
    client = coredis.Redis(
        host=options["host"],
        port=options["port"],
        db=options["db"],
        username=options["username"],
        password=options["password"],
        connect_timeout=config.connect_timeout,
        stream_timeout=config.socket_timeout,
        ssl=config.uses_tls,
        ssl_ca_certs=config.ca_file,
        ssl_certfile=config.cert_file,
        ssl_keyfile=config.key_file,
    )

    async def send(command: Command) -> Any:
        if command.script is not None:
            return await client.evalsha(command.script.sha, [command.key], command.args)
        if command.name == "GET":
            return await client.get(command.key)
        return await client.hmget(command.key, command.args)

    async with client:
        yield calls_of(send)


@contextlib.asynccontextmanager
async def _glide(backend: RedisBackend, callers: int) -> AsyncIterator[Calls]:
    import glide

    config = backend.pool.config
    options = _server(config)
    credentials = (
        glide.ServerCredentials(password=options["password"], username=options["username"])
        if options["password"] is not None
        else None
    )
    tls = None
    if config.uses_tls and (config.ca_file or config.cert_file):
        tls = glide.TlsAdvancedConfiguration(
            root_pem_cacerts=_read(config.ca_file),
            client_cert_path=config.cert_file,
            client_key_path=config.key_file,
        )
    client = await glide.GlideClient.create(
        glide.GlideClientConfiguration(
            [glide.NodeAddress(options["host"], options["port"])],
            use_tls=config.uses_tls,
            credentials=credentials,
            database_id=options["db"],
            request_timeout=round(config.socket_timeout * 1000),
            advanced_config=glide.AdvancedGlideClientConfiguration(
                connection_timeout=round(config.connect_timeout * 1000), tls_config=tls
            ),
        )
    )
    # glide keeps a script's body on its side, and sends EVALSHA with its SHA.
    scripts = {
        # glide.Script's __init__ has no annotations.
        script.sha: glide.Script(script.body)  # type: ignore[no-untyped-call]
        for script in (INCREMENT, SAVE_SESSION)
    }

    async def send(command: Command) -> Any:
        if command.script is not None:
            script = scripts[command.script.sha]
            return await client.invoke_script(script, [command.key], list(command.args))
        if command.name == "GET":
            return await client.get(command.key)
        return await client.hmget(command.key, list(command.args))

    try:
        yield calls_of(send)
    finally:
        await client.close()


def calls_of(send: Callable[[Command], Any]) -> Calls:
    """The calls of a client whose ``send`` takes a :class:`Command` and returns an
    awaitable of its reply."""

    def calls(operation: Operation) -> Call:
        build = COMMANDS[operation.name]
        return lambda subject, caller: send(build(subject.keys, caller))

    return calls


def _server(config: RedisStorageConfig) -> dict[str, Any]:
    """Where the standalone server is, and who to log in as."""
    deployment = config.deployment
    ((host, port),) = deployment.addresses
    return {
        "host": host,
        "port": port,
        "db": deployment.database,
        "username": deployment.username,
        "password": deployment.password,
    }


def _read(path: str | None) -> bytes | None:
    if path is None:
        return None
    with open(path, "rb") as file:
        return file.read()


PYTHON_PEERS = (
    PythonPeer(
        "redis-py",
        "redis",
        "redis",
        _redis_py,
        "the asyncio client, hiredis, a BlockingConnectionPool of one connection per caller",
    ),
    PythonPeer(
        "coredis",
        "coredis",
        "coredis",
        _coredis,
        "one client shared by every caller, its pool multiplexing commands",
    ),
    PythonPeer(
        "valkey-glide",
        "valkey-glide",
        "glide",
        _glide,
        "one GlideClient shared by every caller, multiplexed on one connection",
    ),
)

"""The one execution path: every command the driver sends goes through :class:`Pool`.

It owns what all commands share: borrowing a connection, the timeouts, the
retry policy, running scripts by SHA, and turning redis-py's exceptions into
the core errors. Stores never touch redis-py themselves.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from typing import Any

import attrs
from redis import exceptions as redis_errors
from redis.asyncio.connection import AbstractConnection, BlockingConnectionPool, parse_url
from redis.backoff import EqualJitterBackoff

from aa_storage import BackendError
from aa_storage.redaction import redact_url
from aa_storage_redis.config import RedisStorageConfig
from aa_storage_redis.errors import translate
from aa_storage_redis.keys import KeySpace
from aa_storage_redis.scripts import Script

logger = logging.getLogger("aa_storage_redis")

# Backoff between retries: 10 ms doubling to at most 200 ms, half of it random
# so that many clients reconnecting at once spread out.
_BACKOFF = EqualJitterBackoff(cap=0.2, base=0.01)


class _NotSent(Exception):
    """Wraps a failure to get a connection: the command never left this process."""

    def __init__(self, cause: redis_errors.RedisError) -> None:
        self.cause = cause


@attrs.define
class Pool:
    """A bounded pool of connections to one deployment, and the path every command takes.

    ``execute`` retries a call after a connection error up to ``retries``
    times, with jittered exponential backoff: a read (``read=True``) after
    any connection error, a write only when it certainly never left this
    process (no connection could be opened for it). A write that may have
    run is never sent again: a retried ``DEL`` or ``SET`` would undo other
    callers' writes acknowledged in between. A timeout is never retried: the
    server may be frozen, and the caller asked for a bounded wait. A
    connection that failed or timed out is closed, never reused, so a late
    reply can't be read as the answer to another command.
    """

    config: RedisStorageConfig
    keys: KeySpace
    _connections: BlockingConnectionPool = attrs.field(repr=False)
    _loaded_scripts: set[str] = attrs.field(factory=set, repr=False)
    evalsha_refused: bool = attrs.field(default=False, init=False)
    """True once the server refused ``EVALSHA`` (renamed, disabled or denied by
    ACL) while running scripts; from then on every script is sent in full."""

    @property
    def server(self) -> str:
        """The deployment's URL without its password, for messages."""
        return redact_url(self.config.effective_url)

    async def execute(self, *args: bytes | str | int, read: bool) -> Any:
        """Send one command and return its raw reply; failures are core errors.

        ``read`` says the command changes nothing, so it may be retried after
        it reached the server.
        """
        attempt = 0
        while True:
            try:
                return await self._send(args)
            except _NotSent as failure:
                error = failure.cause
                retry = isinstance(error, redis_errors.ConnectionError)
            except redis_errors.RedisError as exc:
                error = exc
                retry = read and isinstance(exc, redis_errors.ConnectionError)
            if (
                isinstance(error, redis_errors.AuthenticationError)
                or attempt >= self.config.retries
            ):
                retry = False
            if not retry:
                raise translate(error, server=self.server, secret=self._password) from None
            await asyncio.sleep(_BACKOFF.compute(attempt))
            attempt += 1

    async def run_script(
        self, script: Script, keys: list[bytes], args: list[bytes | str | int], *, read: bool
    ) -> Any:
        """Run ``script`` by SHA. The body is sent instead the first time, after the
        server lost its script cache (NOSCRIPT), and for good once the server
        refuses EVALSHA itself; each of those replies means the script did not run."""
        if script.sha in self._loaded_scripts and not self.evalsha_refused:
            try:
                return await self.execute("EVALSHA", script.sha, len(keys), *keys, *args, read=read)
            except _NoScript:
                self._loaded_scripts.discard(script.sha)
            except _EvalShaRefused:
                self.evalsha_refused = True
                logger.warning(
                    "redis at %s refuses EVALSHA; every script call now sends the script "
                    "in full with EVAL",
                    self.server,
                )
        reply = await self.execute("EVAL", script.body, len(keys), *keys, *args, read=read)
        self._loaded_scripts.add(script.sha)
        return reply

    async def aclose(self) -> None:
        """Close every connection, in use or idle."""
        await self._connections.disconnect(inuse_connections=True)

    @property
    def _password(self) -> str | None:
        password = self._connections.connection_kwargs.get("password")
        return password if isinstance(password, str) else None

    async def _send(self, args: tuple[bytes | str | int, ...]) -> Any:
        connection = await self._borrow()
        try:
            await connection.send_command(*args)
            return await connection.read_response()
        except redis_errors.NoScriptError:
            raise _NoScript() from None
        except redis_errors.ResponseError as exc:
            # An error reply: the connection is still in step.
            if args[0] == "EVALSHA" and _refuses_evalsha(exc):
                raise _EvalShaRefused() from None
            raise
        except BaseException:
            # Timed out, broken or cancelled mid-call: a reply may still be on
            # its way, so this connection must never answer another command.
            await connection.disconnect(nowait=True)
            raise
        finally:
            await self._connections.release(connection)

    async def _borrow(self) -> AbstractConnection:
        try:
            connection: AbstractConnection = await self._connections.get_connection()  # type: ignore[no-untyped-call]
            return connection
        except redis_errors.ConnectionError as exc:
            if isinstance(exc.__cause__, asyncio.TimeoutError):
                raise BackendError(
                    f"no connection to {self.server} came free within "
                    f"{self.config.pool_timeout}s (pool_size={self.config.pool_size})"
                ) from None
            raise _NotSent(exc) from None
        except redis_errors.RedisError as exc:
            raise _NotSent(exc) from None


class _NoScript(Exception):
    """The server does not have the script cached; it did not run."""


class _EvalShaRefused(Exception):
    """The server refused the EVALSHA command itself; the script did not run."""


def _refuses_evalsha(exc: redis_errors.ResponseError) -> bool:
    # "unknown command 'EVALSHA'" when renamed or disabled; NOPERM "... the
    # 'evalsha' command" under an ACL. A NOPERM for a key the script touches
    # names no command, so it is not mistaken for this.
    message = str(exc).lower()
    refused = isinstance(exc, redis_errors.NoPermissionError) or "unknown command" in message
    return refused and "'evalsha'" in message


def build_pool(config: RedisStorageConfig) -> Pool:
    """A :class:`Pool` for ``config``. No I/O happens until the first command.

    Logs one warning when the connection would carry data in the clear to a
    host that is not this machine.
    """
    url = config.effective_url
    options: dict[str, Any] = dict(parse_url(url))
    if config.uses_tls:
        options.update(
            ssl_ca_certs=config.ca_file, ssl_certfile=config.cert_file, ssl_keyfile=config.key_file
        )
    elif not _is_loopback(options.get("host", "")):
        logger.warning(
            "connecting to %s without TLS: traffic and the password travel in the clear",
            redact_url(url),
        )
    connections = BlockingConnectionPool(
        **options,
        max_connections=config.pool_size,
        timeout=config.pool_timeout,
        socket_connect_timeout=config.connect_timeout,
        socket_timeout=config.socket_timeout,
        # Retries are this module's job: redis-py's own would repeat increments.
        retry=None,
        driver_info=None,
    )
    return Pool(config=config, keys=KeySpace(config.key_prefix), connections=connections)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False

"""The one execution path: every command the driver sends goes through :class:`Pool`.

It owns what all commands share: the retry rule, running scripts by SHA,
turning failures into the core errors, closing, and stats. Below it, a
:class:`~aa_storage_redis.node.Node` multiplexes the commands of every caller
over a few connections. Stores never see redis-py, connections or nodes.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from functools import partial
from typing import Any

import attrs
import hiredis
from redis import exceptions as redis_errors
from redis.asyncio.connection import Connection, parse_url
from redis.backoff import EqualJitterBackoff, NoBackoff
from redis.retry import Retry

from aa_storage import BackendError, StorageError
from aa_storage.redaction import redact_url
from aa_storage_redis.config import RedisStorageConfig
from aa_storage_redis.connection import Closed, NotSent, ReplyLost
from aa_storage_redis.errors import translate
from aa_storage_redis.keys import KeySpace
from aa_storage_redis.node import Node, Overloaded
from aa_storage_redis.scripts import Script
from aa_storage_redis.stats import ExecutorStats

logger = logging.getLogger("aa_storage_redis")

# Backoff between retries: 10 ms doubling to at most 200 ms, half of it random
# so that many clients reconnecting at once spread out.
_BACKOFF = EqualJitterBackoff(cap=0.2, base=0.01)

# Failures a retry cannot mend: a server too slow to answer would only keep
# the caller waiting longer, and a refused login stays refused.
_FINAL = (redis_errors.TimeoutError, redis_errors.AuthenticationError, redis_errors.ResponseError)


@attrs.define
class Pool:
    """The handle every store is built over: it runs commands on one deployment.

    ``execute`` retries a call after a connection error up to ``retries``
    times, with jittered exponential backoff: a read (``read=True``) after
    any connection error, a write only when it certainly never left this
    process (no connection could be opened for it). A write that may have
    run is never sent again: a retried ``DEL`` or ``SET`` would undo other
    callers' writes acknowledged in between. Timeouts and refused logins are
    never retried. After :meth:`aclose`, every call raises ``StorageError``.
    """

    config: RedisStorageConfig
    keys: KeySpace
    _node: Node = attrs.field(repr=False)
    _password: str | None = attrs.field(repr=False)
    _loaded_scripts: set[str] = attrs.field(factory=set, repr=False)
    _closed: bool = attrs.field(default=False, init=False)
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
        # hiredis' stub types the argument as a 1-tuple; it takes any length.
        packed = hiredis.pack_command(args)  # type: ignore[arg-type]
        attempt = 0
        while True:
            if self._closed:
                raise StorageError(f"the backend for {self.server} is closed")
            try:
                return await self._node.submit(packed)
            except NotSent as failure:
                error = failure.cause
                retry = not isinstance(error, _FINAL)
            except ReplyLost as failure:
                error = failure.cause
                retry = read and not isinstance(error, _FINAL)
            except redis_errors.NoScriptError:
                raise _NoScript() from None
            except redis_errors.RedisError as exc:
                # An error reply: the command ran or was refused, and the
                # connection is still in step.
                if args[0] == "EVALSHA" and _refuses_evalsha(exc):
                    raise _EvalShaRefused() from None
                error = exc
                retry = False
            except Overloaded:
                raise BackendError(
                    f"too many commands pending on {self.server} "
                    f"(max_pending={self._node.max_pending}): the server is not keeping up"
                ) from None
            except Closed:
                raise StorageError(f"the backend for {self.server} is closed") from None
            if not retry or attempt >= self.config.retries:
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

    def stats(self) -> ExecutorStats:
        """What the connections have done so far; reading it costs no I/O and no lock."""
        return self._node.counters.snapshot()

    async def aclose(self) -> None:
        """Refuse new calls, let those in flight finish or fail within the timeouts,
        then close every connection. Idempotent."""
        self._closed = True
        await self._node.aclose()


class _NoScript(Exception):
    """The server does not have the script cached; it did not run."""


class _EvalShaRefused(Exception):
    """The server refused the EVALSHA command itself; the script did not run."""


def _refuses_evalsha(exc: redis_errors.RedisError) -> bool:
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
    connection_class = options.pop("connection_class", Connection)
    if config.uses_tls:
        options.update(
            ssl_ca_certs=config.ca_file, ssl_certfile=config.cert_file, ssl_keyfile=config.key_file
        )
    elif not _is_loopback(options.get("host", "")):
        logger.warning(
            "connecting to %s without TLS: traffic and the password travel in the clear",
            redact_url(url),
        )
    open_connection = partial(
        connection_class,
        **options,
        socket_connect_timeout=config.connect_timeout,
        socket_timeout=config.socket_timeout,
        # Retries are the Pool's job: redis-py's own would repeat writes.
        retry=Retry(NoBackoff(), 0),
        driver_info=None,
        protocol=2,
    )
    node = Node(
        open_connection,
        size=config.pool_size,
        max_pending=config.max_pending,
        connect_timeout=config.connect_timeout,
        socket_timeout=config.socket_timeout,
    )
    return Pool(
        config=config,
        keys=KeySpace(config.key_prefix),
        node=node,
        password=options.get("password"),
    )


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False

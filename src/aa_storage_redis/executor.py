"""The one execution path: every command the driver sends goes through :class:`Executor`.

It runs commands and nothing else: the retry rule, scripts by SHA, turning
failures into the core errors, the closed and event-loop checks, and the
counters. Which node serves a command is the topology's to say (``topology.py``);
below it, a :class:`~aa_storage_redis.node.Node` multiplexes the commands of
every caller over a few connections. Stores never see redis-py, connections
or nodes, and the executor knows nothing of stores, keys or caches.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from threading import get_ident
from typing import Any

import attrs
import hiredis
from redis import exceptions as redis_errors
from redis.backoff import EqualJitterBackoff

from aa_storage import BackendError, StorageError
from aa_storage.redaction import redact_url
from aa_storage_redis.config import RedisStorageConfig
from aa_storage_redis.errors import status_code, translate
from aa_storage_redis.node import Node, Overloaded
from aa_storage_redis.scripts import Script
from aa_storage_redis.stats import Counters, ExecutorStats
from aa_storage_redis.telemetry import Telemetry, current, note
from aa_storage_redis.topology import Facts, Redirect, Topology
from aa_storage_redis.wire import Closed, NotSent, ReplyLost, pack

logger = logging.getLogger("aa_storage_redis")

# Backoff between retries: 10 ms doubling to at most 200 ms, half of it random
# so that many clients reconnecting at once spread out.
_BACKOFF = EqualJitterBackoff(cap=0.2, base=0.01)

# Redirections followed for one call before giving up: more means the map keeps changing.
_MAX_REDIRECTS = 5

# Failures a retry cannot mend: a server too slow to answer would only keep
# the caller waiting longer, and a refused login stays refused.
_FINAL = (redis_errors.TimeoutError, redis_errors.AuthenticationError, redis_errors.ResponseError)


@attrs.define
class Executor:
    """Runs commands on one deployment for every store built over it.

    ``execute`` retries a call after a connection error up to ``retries``
    times, with jittered exponential backoff: a read (``read=True``) after
    any connection error, a write only when it certainly never left this
    process (no connection could be opened for it). A write that may have
    run is never sent again: a retried ``DEL`` or ``SET`` would undo other
    callers' writes acknowledged in between. Timeouts and refused logins are
    never retried. After :meth:`aclose`, every call raises ``StorageError``.

    An executor belongs to the event loop it first runs a command in: its
    connections, tasks and futures live there. A call from any other loop
    raises ``StorageError`` at once, instead of waiting on a loop that no
    longer runs.
    """

    config: RedisStorageConfig
    _topology: Topology = attrs.field(repr=False)
    _password: str | None = attrs.field(repr=False)
    counters: Counters = attrs.field(repr=False)
    """What every connection of the deployment counts; ``max_pending`` bounds its
    ``pending``."""
    _loaded_scripts: set[str] = attrs.field(factory=set, repr=False)
    telemetry: Telemetry = attrs.field(init=False, repr=False)
    """Spans and metrics of the operations run here (``telemetry.py``)."""
    _wait: bytes | None = attrs.field(init=False, repr=False)
    _closed: bool = attrs.field(default=False, init=False)
    _loop: asyncio.AbstractEventLoop | None = attrs.field(default=None, init=False, repr=False)
    _thread: int = attrs.field(default=0, init=False, repr=False)
    evalsha_refused: bool = attrs.field(default=False, init=False)
    """True once the server refused ``EVALSHA`` (renamed, disabled or denied by
    ACL) while running scripts; from then on every script is sent in full."""

    @telemetry.default
    def _telemetry(self) -> Telemetry:
        telemetry = Telemetry(
            enabled=self.config.telemetry,
            # Unique in the process, as the conventions ask: two backends may share a URL.
            pool_name=f"{self.server} ({id(self):#x})",
            namespace=str(self.config.deployment.database),
        )
        telemetry.stats = self.stats
        return telemetry

    @_wait.default
    def _wait_command(self) -> bytes | None:
        if not self.config.wait_replicas:
            return None
        milliseconds = max(1, round(self.config.wait_timeout * 1000))
        return pack("WAIT", self.config.wait_replicas, milliseconds)

    @property
    def server(self) -> str:
        """The deployment's URL without its password, for messages."""
        return redact_url(self.config.effective_url)

    def check_loop(self) -> None:
        """Bind the executor to the running event loop on first use; afterwards raise
        ``StorageError`` when called from another one."""
        # On Python 3.11, asking asyncio for the running loop costs a getpid() system call,
        # on every command. A thread runs one loop at a time, so while the executor's loop
        # runs, a caller on the thread it was last seen running on is in that loop.
        loop = self._loop
        if loop is not None and self._thread == get_ident() and loop.is_running():
            return
        running = asyncio.get_running_loop()
        if loop is None:
            self._loop = running
        elif running is not loop:
            raise self._other_loop_error()
        self._thread = get_ident()

    async def execute(
        self,
        *args: bytes | str | int,
        key: bytes | None,
        read: bool,
        script: Script | None = None,
    ) -> Any:
        """Send one command and return its raw reply; failures are core errors.

        ``key`` is the key the command touches (``None``: none), which decides the
        node on a cluster. ``read`` says the command changes nothing, so it may be
        retried after it reached the server. ``script`` is the script an ``EVAL``
        or ``EVALSHA`` runs, so that a permission error can name the commands it
        needs. What the topology calls a redirection (MOVED, ASK) is followed up
        to five times, and a node that is not ready (TRYAGAIN, CLUSTERDOWN,
        LOADING) is tried again with backoff until ``connect_timeout +
        socket_timeout`` from the call's first such wait (or its first wait for the
        topology); neither counts as a retry, as each means the command did not run.
        An ``EVALSHA`` of ``script`` that the node answers with NOSCRIPT, or that the
        server refuses, is sent again as ``EVAL`` (see :meth:`run_script`): not a retry
        either, as the script did not run.
        """
        # hiredis' stub types the argument as a 1-tuple; it takes any length.
        packed: bytes = hiredis.pack_command(args)  # type: ignore[arg-type]
        if len(packed) > MAX_ARGUMENT_BYTES:
            _refuse_oversized(args)
        deadline = 0.0  # set when the call first waits for the topology: no cost before
        attempt = redirects = 0
        redirect: Redirect | None = None
        while True:
            if self._closed:
                raise self._closed_error()
            self.check_loop()
            asking = False
            if redirect is not None and redirect.node is not None:
                node: Node | None = redirect.node
                asking = redirect.asking
            else:
                node = self._topology.node_for(key)
            redirect = None
            try:
                if node is None:
                    deadline = deadline or self._deadline()
                    node = await self._route(key, deadline)
                if self.telemetry.on and (operation := current()) is not None:
                    operation.sent(node.address, _command(args[0], script))
                if asking or (self._wait is not None and not read):
                    reply = await self._send_with(node, packed, read=read, asking=asking)
                else:
                    reply = await node.submit(packed)
                if script is not None and args[0] == "EVAL":
                    self._loaded_scripts.add(script.sha)
                return reply
            except (NotSent, _Undiscovered) as failure:
                error = failure.cause
                retry = not isinstance(error, _FINAL)
            except ReplyLost as failure:
                error = failure.cause
                retry = read and not isinstance(error, _FINAL)
            except redis_errors.NoScriptError as exc:
                if script is None or args[0] != "EVALSHA":
                    error, retry = exc, False  # not an EVALSHA of a script: reported as is
                else:
                    # This node lost the script or never had it: EVAL loads it there.
                    args = _eval_of(args, script)
                    packed = pack(*args)
                    continue
            except _Unconfirmed as exc:
                raise BackendError(str(exc)) from None
            except _WaitRefused as exc:
                refusal = translate(exc.cause, server=self.server, secret=self._password)
                raise BackendError(
                    f"the write is applied on the primary of {self.server}, but WAIT failed, "
                    f"so no replica confirmed it; it was not retried: {refusal}"
                ) from None
            except Overloaded:
                raise BackendError(
                    f"too many commands pending on {self.server} "
                    f"(max_pending={self.config.max_pending}): the server is not keeping up"
                ) from None
            except Closed:
                raise self._closed_error() from None
            except redis_errors.RedisError as exc:
                # An error reply: the command ran or was refused, and the connection is
                # still in step. The topology says whether it is a redirection.
                assert node is not None
                redirect = self._topology.redirected(exc, node)
                if redirect is not None:
                    redirects += 1
                    self.counters.redirects += 1
                    note("redirect", {"db.response.status_code": status_code(exc) or "ERR"})
                    if not redirect.busy and redirects <= _MAX_REDIRECTS:
                        continue
                    deadline = deadline or self._deadline()
                    left = deadline - asyncio.get_running_loop().time()
                    if redirect.busy and left > 0:
                        pause = min(_BACKOFF.compute(redirects), left)
                        await asyncio.sleep(pause)
                        continue
                    redirect = None
                elif script is not None and args[0] == "EVALSHA" and _refuses_evalsha(exc):
                    self._refuse_evalsha()
                    args = _eval_of(args, script)
                    packed = pack(*args)
                    continue
                error = exc
                retry = False
            if node is not None and _lost(error):
                self._topology.failed(node)
            if not retry or attempt >= self.config.retries:
                if (operation := current()) is not None:
                    operation.status_code = status_code(error)
                raise translate(
                    error,
                    server=self._where(node),
                    secret=self._password,
                    script=script,
                    # A script may touch more keys than the one it is routed by.
                    key=None if script else key,
                ) from None
            self.counters.retries += 1
            note("retry", {"error.type": type(error).__name__})
            await asyncio.sleep(_BACKOFF.compute(attempt))
            attempt += 1

    async def _send_with(self, node: Node, packed: bytes, *, read: bool, asking: bool) -> Any:
        """The reply to ``packed`` on ``node`` after ``ASKING`` when ``asking``, and, for
        a write when ``wait_replicas`` is set, once enough replicas have it. A command
        with neither goes to ``node.submit`` directly."""
        # ASKING holds for the next command on its connection only, and WAIT counts
        # the writes made on its own connection: neither may be parted from its command.
        commands = [_ASKING, packed] if asking else [packed]
        if self._wait is None or read:
            *_, reply = node.submit_together(*commands)  # ASKING's +OK is dropped
            return await reply
        if (operation := current()) is not None:
            operation.batch_size = 2  # the write and its WAIT
        *_, reply, wait = await node.submit_alone(*commands, self._wait)
        return await self._confirmed(reply, wait)

    def _deadline(self) -> float:
        """When a call that starts waiting now must give up waiting for the topology."""
        config = self.config
        return asyncio.get_running_loop().time() + config.connect_timeout + config.socket_timeout

    async def _route(self, key: bytes | None, deadline: float) -> Node:
        """The node for ``key``, once the topology has learnt it. Every failure,
        whatever its type, is raised as :class:`_Undiscovered`: nothing of the
        caller's was sent."""
        try:
            return await self._topology.route(key, deadline)
        except redis_errors.RedisError as exc:
            raise _Undiscovered(exc) from None
        except Exception as exc:
            cause = redis_errors.ConnectionError(
                f"finding the nodes failed: {type(exc).__name__}: {exc}"
            )
            raise _Undiscovered(cause) from exc

    def _closed_error(self) -> StorageError:
        return StorageError(
            f"the backend is closed: aclose() was called on the backend for {self.server}"
        )

    def _other_loop_error(self) -> StorageError:
        return StorageError(
            f"the backend for {self.server} is used from another event loop than the "
            "one it first ran in (asyncio.run called twice?); open a backend in each "
            "event loop that needs one"
        )

    def _where(self, node: Node | None) -> str:
        """The deployment, and the node that failed unless it is the one the URL names."""
        named = [f"{host}:{port}" for host, port in self.config.deployment.addresses]
        if node is None or named == [node.address]:
            return self.server
        return f"{self.server} (node {node.address})"

    async def _confirmed(self, write: asyncio.Future[Any], wait: asyncio.Future[Any]) -> Any:
        """The write's reply once ``WAIT`` says enough replicas have it."""
        wait.add_done_callback(_retrieve)  # a failed write leaves WAIT's reply unread
        reply = await write
        replicas = self.config.wait_replicas
        try:
            confirmed = await wait
        except redis_errors.RedisError as exc:  # refused: an ACL without +wait
            raise _WaitRefused(exc) from None
        except (NotSent, ReplyLost):
            confirmed = 0
        if confirmed < replicas:
            raise _Unconfirmed(
                f"the write is applied on the primary of {self.server} but only {confirmed} "
                f"of wait_replicas={replicas} replicas confirmed it within "
                f"wait_timeout={self.config.wait_timeout}s; it was not retried"
            )
        return reply

    def run_script(
        self, script: Script, keys: list[bytes], args: list[bytes | str | int], *, read: bool
    ) -> Coroutine[Any, Any, Any]:
        """Run ``script`` by SHA; await the result for its reply. The body is sent
        instead the first time, after a node lost its script cache (NOSCRIPT), and for
        good once the server refuses EVALSHA itself; each of those replies means the
        script did not run. Every key of a script shares one slot, so the first routes
        it. Not a coroutine itself: it hands back :meth:`execute`'s, one layer fewer."""
        key = keys[0] if keys else None
        if script.sha in self._loaded_scripts and not self.evalsha_refused:
            head: tuple[str, str | bytes] = ("EVALSHA", script.sha)
        else:
            head = ("EVAL", script.body)
        return self.execute(*head, len(keys), *keys, *args, key=key, read=read, script=script)

    def _refuse_evalsha(self) -> None:
        """The server refused EVALSHA itself: send every script in full from now on."""
        if not self.evalsha_refused:
            self.evalsha_refused = True
            logger.warning(
                "redis at %s refuses EVALSHA; every script call now sends the script "
                "in full with EVAL",
                self.server,
            )

    async def describe_topology(self) -> tuple[Facts, tuple[str, ...]]:
        """The deployment's shape as ``check`` shows it; failures are core errors."""
        self.check_loop()
        try:
            return await self._topology.describe()
        except redis_errors.RedisError as exc:
            raise translate(exc, server=self.server, secret=self._password) from None

    def stats(self) -> ExecutorStats:
        """What the connections have done so far; reading it costs no I/O and no lock."""
        return self.counters.snapshot()

    def refuse_calls(self) -> bool:
        """Refuse every call from now on; idempotent. Returns whether the connections
        can still be closed: not from another event loop than the executor's once
        that loop is closed (their sockets go when the executor is collected).
        From another loop that still runs, raises ``StorageError`` and refuses
        nothing."""
        if self._loop is not None and self._loop is not asyncio.get_running_loop():
            if not self._loop.is_closed():
                raise self._other_loop_error()
            self._closed = True
            return False
        self._closed = True
        return True

    async def aclose(self) -> None:
        """Refuse new calls (see :meth:`refuse_calls`), let the calls in flight finish
        or fail within the timeouts, then close every connection. Idempotent."""
        if self.refuse_calls():
            await self._topology.aclose()


Pool = Executor
"""The seed's name for the executor: the pooled connection handle that stores are
built over (``RedisSessionStore(build_pool(config))``)."""


class _WaitRefused(Exception):
    """The server refused the WAIT after a write it ran."""

    def __init__(self, cause: redis_errors.RedisError) -> None:
        super().__init__(str(cause))
        self.cause = cause


class _Undiscovered(Exception):
    """The topology could not be learnt; the command was not sent."""

    def __init__(self, cause: redis_errors.RedisError) -> None:
        super().__init__(str(cause))
        self.cause = cause


class _Unconfirmed(Exception):
    """A write ran on the primary, but fewer replicas than asked confirmed it."""


def _command(name: bytes | str | int, script: Script | None) -> str:
    """How a command shows in ``db.query.summary``: its name, and the script it runs."""
    return f"{name!s} {script.name}" if script is not None else str(name)


def _retrieve(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


_ASKING = pack("ASKING")


def _eval_of(
    evalsha: tuple[bytes | str | int, ...], script: Script
) -> tuple[bytes | str | int, ...]:
    """The ``EVAL`` of the script an ``EVALSHA`` runs, with the same keys and arguments."""
    return ("EVAL", script.body, *evalsha[2:])


def _refuses_evalsha(exc: redis_errors.RedisError) -> bool:
    # "unknown command 'EVALSHA'" when renamed or disabled; NOPERM "... the
    # 'evalsha' command" under an ACL. A NOPERM for a key the script touches
    # names no command, so it is not mistaken for this.
    message = str(exc).lower()
    refused = isinstance(exc, redis_errors.NoPermissionError) or "unknown command" in message
    return refused and "'evalsha'" in message


def _lost(error: redis_errors.RedisError) -> bool:
    """Whether ``error`` says the node's connection is gone (LOADING does not)."""
    return isinstance(error, redis_errors.ConnectionError) and not isinstance(
        error, redis_errors.BusyLoadingError
    )


MAX_ARGUMENT_BYTES = 512 * 1024 * 1024
"""The largest argument Redis takes by default (``proto-max-bulk-len``): a longer one
makes the server close the connection, with every command on it."""


def _refuse_oversized(args: tuple[bytes | str | int, ...]) -> None:
    """Raise ``ValueError`` for the first argument Redis would refuse for its size."""
    for argument in args:
        size = len(argument if isinstance(argument, bytes) else str(argument).encode())
        if size > MAX_ARGUMENT_BYTES:
            raise ValueError(
                f"a value of {size} bytes is over the {MAX_ARGUMENT_BYTES} bytes Redis takes "
                f"in one argument (proto-max-bulk-len), in {args[0]!s}; nothing was sent"
            )

"""Sentinel: the primary the sentinels name, followed through failovers."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

from redis import exceptions as redis_errors
from redis.asyncio.connection import AbstractConnection

from aa_storage_redis.events import FAILOVER, FAILOVER_HOLD, happened
from aa_storage_redis.failover_events import FailoverWatchers
from aa_storage_redis.node import Node
from aa_storage_redis.stats import Counters
from aa_storage_redis.telemetry import detached, note
from aa_storage_redis.topology import (
    Address,
    Facts,
    NodeFactory,
    Nodes,
    Observed,
    Redirect,
    ask,
    not_ready,
)

logger = logging.getLogger("aa_storage_redis")

#: Longest that calls wait for a failover the sentinels announced to finish.
#: Past it they go to whichever primary the sentinels name then.
FAILOVER_HOLD_SECS = 5.0


class _Named(NamedTuple):
    """What one sentinel says of the service."""

    epoch: int  # its config epoch: the highest names the newest primary
    primary: Address
    failing_over: bool  # it leads a failover of the service right now
    sentinel: Address


class Sentinel(Observed):
    """A primary that sentinels name, followed through failovers.

    Discovery asks every sentinel for the service (``SENTINEL MASTER``) and
    takes the answer with the highest config epoch: a sentinel that has not
    heard of the last failover yet still names the old primary, which keeps
    accepting writes for seconds before the sentinels demote it. The choice is
    checked with ``ROLE`` (a user whose ACL denies ``ROLE`` trusts the
    sentinels).

    A watcher per sentinel follows its failover events (``failover_events.py``)
    and tells this topology of each through :class:`FailoverListener`'s two
    calls; discovery returns
    only once every sentinel that answers has its watcher listening, so no call
    is sent before a failover can be heard of. From ``+try-failover`` on, calls
    wait (up to :data:`FAILOVER_HOLD_SECS`) instead of being sent to a primary
    about to be replaced; ``+promoted-slave`` or ``+switch-master`` moves them
    to the new primary, and an aborted failover lets them go on. A failover
    that began before the watchers listened is seen in discovery (the leading
    sentinel flags it ``failover_in_progress``) and held for the same way; the
    replica it promotes is used as soon as it answers ``ROLE`` as a primary.
    A ``READONLY`` reply or a lost connection drops the primary too; the next
    command then looks again.
    """

    def __init__(
        self,
        sentinels: Iterable[Address],
        service: str,
        node_at: NodeFactory,
        open_sentinel: Callable[[Address], AbstractConnection],
        timeout: float,
        *,
        counters: Counters | None = None,
    ) -> None:
        super().__init__()
        self._counters = counters or Counters()
        self._sentinels = tuple(sentinels)
        self._service = service
        self._open_sentinel = open_sentinel
        self._timeout = timeout
        self._nodes = Nodes(node_at)
        self._primary: Node | None = None
        self._announced: Address | None = None  # the newest primary a failover named
        self._settled = asyncio.Event()
        self._settled.set()
        self._hold_until = 0.0
        self._hold_ran_out = False  # past the cap: use what the sentinels name
        self._discovery: asyncio.Task[None] | None = None
        self._events = FailoverWatchers(
            self._sentinels, service, open_sentinel, timeout=timeout, listener=self
        )

    def node_for(self, key: bytes | None) -> Node | None:
        return self._primary if self._settled.is_set() else None

    async def route(self, key: bytes | None, deadline: float) -> Node:
        """The primary, once discovery found it and no failover holds calls (the hold
        has its own cap, :data:`FAILOVER_HOLD_SECS`)."""
        while (node := self.node_for(key)) is None:
            await self.discover()
        return node

    def redirected(self, error: redis_errors.RedisError, node: Node) -> Redirect | None:
        if isinstance(error, redis_errors.ReadOnlyError):
            self.failed(node)  # the primary was demoted: find the new one
            return Redirect(busy=True)
        return not_ready(error)

    async def discover(self) -> None:
        """Wait out an announced failover, then find the primary if it is not
        known; concurrent callers share one search."""
        loop = asyncio.get_running_loop()
        self._events.start()
        while True:
            if not self._settled.is_set():
                note("failover hold")
                try:
                    async with asyncio.timeout(max(0.0, self._hold_until - loop.time())):
                        await self._settled.wait()
                except TimeoutError:
                    logger.warning(
                        "the failover of %s did not finish within %ss; asking the sentinels",
                        self._service,
                        FAILOVER_HOLD_SECS,
                    )
                    self._hold_ran_out = True
                    self.failover_ended(None)
            if self._primary is not None:
                return
            if self._discovery is None or self._discovery.done():
                self._discovery = detached(self._find_primary())
            # Ends with a primary, an error, or a hold on a failover under way.
            await asyncio.shield(self._discovery)

    def failed(self, node: Node) -> None:
        if node is self._primary:
            self._primary = None
            self._changed()

    def primaries(self) -> tuple[Address, ...]:
        if not self._settled.is_set():
            return ()  # a failover is under way
        return tuple(address for address, node in self._nodes.items() if node is self._primary)

    def nodes(self) -> Iterable[Node]:
        return self._nodes.values()

    async def describe(self) -> tuple[Facts, tuple[str, ...]]:
        """The service, its primary, and how many sentinels and replicas answer."""
        await self.discover()
        answering = 0
        replicas: list[Any] = []
        for sentinel in self._sentinels:
            try:
                found = await self.ask_sentinel(sentinel, "SENTINEL", "REPLICAS", self._service)
            except redis_errors.RedisError:
                continue
            answering += 1
            replicas = replicas or found
        primary = self._primary.address if self._primary is not None else "unknown"
        healthy = [
            fields for fields in replicas if b"s_down" not in _fields(fields).get(b"flags", b"")
        ]
        facts = (
            ("topology", "sentinel"),
            ("service", self._service),
            ("primary", primary),
            ("sentinels_answering", f"{answering} of {len(self._sentinels)}"),
            ("replicas", f"{len(healthy)} up of {len(replicas)}"),
        )
        warnings: tuple[str, ...] = ()
        if answering < 3:
            warnings = (
                f"only {answering} sentinels answer: fewer than 3 cannot safely agree "
                "on a failover",
            )
        return facts, warnings

    async def aclose(self) -> None:
        if self._discovery is not None:
            self._discovery.cancel()
            # Bounded: a sentinel read that is slow to notice the cancellation must
            # not hold up closing the data connections.
            await asyncio.wait([self._discovery], timeout=1.0)
        await self._events.aclose()
        self.failover_ended(None)  # wake anyone still waiting: the executor refuses them now
        await self._nodes.aclose()

    async def ask_sentinel(self, address: Address, *command: str) -> Any:
        """One command to the sentinel at ``address``, on a connection of its own,
        within the sentinel timeout. Every failure is a ``redis.RedisError``: one
        that is not redis-py's becomes a ``ConnectionError`` that names it."""
        connection: AbstractConnection | None = None
        try:
            async with asyncio.timeout(self._timeout):
                connection = self._open_sentinel(address)
                await connection.connect()  # type: ignore[no-untyped-call]
                await connection.send_command(*command)
                return await connection.read_response()
        except TimeoutError:
            raise redis_errors.TimeoutError(
                f"sentinel {address[0]}:{address[1]} timed out"
            ) from None
        except redis_errors.AuthenticationError as exc:
            # Not the data nodes' login: say whose it is, so the right setting is fixed.
            raise redis_errors.AuthenticationError(
                f"the sentinel at {address[0]}:{address[1]} refused the login of "
                f"sentinel_username/sentinel_password: {exc}"
            ) from None
        except redis_errors.RedisError:
            raise
        except Exception as exc:
            raise _unexpected(f"sentinel {address[0]}:{address[1]}", exc) from exc
        finally:
            if connection is not None:
                with contextlib.suppress(Exception):
                    await connection.disconnect(nowait=True)

    async def _find_primary(self) -> None:
        """Set the primary; or, while a failover is under way and its new primary
        is not one yet, hold calls until the failover's events (or the cap) end it."""
        await self._events.listening()
        answers = await asyncio.gather(
            *(self._named_primary(sentinel) for sentinel in self._sentinels),
            return_exceptions=True,
        )
        named = sorted(
            (answer for answer in answers if isinstance(answer, _Named)),
            key=lambda answer: -answer.epoch,
        )
        candidates = [answer.primary for answer in named]
        leading = [answer.sentinel for answer in named if answer.failing_over]
        if leading:
            target = await self._failover_target(leading[0])
            if target is not None and await self._is_primary(target):
                happened(
                    FAILOVER, self._counters, "sentinels moved %s to %s:%s", self._service, *target
                )
                self._announced = target
                self._use(target)
                return
            if not self._hold_ran_out:
                # The old primary keeps taking writes the promotion will drop.
                self.failover_started()
                return
        if self._announced is not None:
            candidates.insert(0, self._announced)
        error: BaseException = next(
            (answer for answer in answers if isinstance(answer, BaseException)),
            redis_errors.ConnectionError("no sentinel answered"),
        )
        for address in dict.fromkeys(candidates):
            node = self._nodes.at(address)
            try:
                role = await ask(node, "ROLE")
            except redis_errors.NoPermissionError:
                role = [b"master"]  # the ACL hides it: trust the sentinels
            except redis_errors.RedisError as exc:
                error = exc
                continue
            if role[0] != b"master":
                error = redis_errors.ReadOnlyError(
                    f"{address[0]}:{address[1]} is not a primary yet"
                )
                continue
            self._use(address)
            return
        if not isinstance(error, redis_errors.RedisError):
            raise _unexpected("asking the sentinels", error)
        raise error

    def _use(self, address: Address) -> None:
        """Send calls to ``address`` from now on: discovery found it a primary."""
        self._primary = self._nodes.at(address)
        self._hold_ran_out = False
        self._changed()

    async def _is_primary(self, address: Address) -> bool:
        """Whether ``address`` answers ``ROLE`` as a primary. Unreachable, or
        without ``ROLE`` in its ACL, it is not one yet: the sentinels' events say
        when it is."""
        try:
            role = await ask(self._nodes.at(address), "ROLE")
        except redis_errors.RedisError:
            return False
        return bool(role[0] == b"master")

    async def _failover_target(self, sentinel: Address) -> Address | None:
        """The replica that ``sentinel``, leading a failover, promotes, if chosen yet."""
        try:
            replicas = await self.ask_sentinel(sentinel, "SENTINEL", "REPLICAS", self._service)
        except redis_errors.RedisError:
            return None
        for replica in replicas:
            fields = _fields(replica)
            if b"promoted" in fields.get(b"flags", b"").split(b","):
                return fields[b"ip"].decode(), int(fields[b"port"])
        return None

    async def _named_primary(self, sentinel: Address) -> _Named:
        """What ``sentinel`` says of the service: its primary and config epoch, and
        whether it leads a failover of it."""
        try:
            reply = await self.ask_sentinel(sentinel, "SENTINEL", "MASTER", self._service)
        except redis_errors.ResponseError as exc:
            if "no such master" in str(exc).lower():
                raise redis_errors.ResponseError(
                    f"the sentinels monitor no {self._service!r}"
                ) from None
            raise
        fields = _fields(reply)
        return _Named(
            epoch=int(fields.get(b"config-epoch", b"0")),
            primary=(fields[b"ip"].decode(), int(fields[b"port"])),
            failing_over=b"failover_in_progress" in fields.get(b"flags", b"").split(b","),
            sentinel=sentinel,
        )

    def failover_started(self) -> None:
        """Hold calls: the primary is about to be replaced (see the class doc)."""
        if self._settled.is_set():
            happened(
                FAILOVER_HOLD,
                self._counters,
                "sentinels started a failover of %s; holding calls",
                self._service,
            )
            self._hold_until = asyncio.get_running_loop().time() + FAILOVER_HOLD_SECS
            self._settled.clear()
            self._changed()

    def failover_ended(self, primary: Address | None) -> None:
        """End the hold; with ``primary``, send calls there from now on."""
        if primary is not None and (
            self._primary is None or self._primary is not self._nodes.get(primary)
        ):
            happened(
                FAILOVER,
                self._counters,
                "sentinels moved %s to %s:%s",
                self._service,
                primary[0],
                primary[1],
            )
            self._announced = primary
            self._primary = None
            self._changed()
        self._settled.set()


def _unexpected(where: str, exc: BaseException) -> redis_errors.ConnectionError:
    """A failure that is not redis-py's, as the connection error callers are told of."""
    cause = redis_errors.ConnectionError(f"{where} failed: {type(exc).__name__}: {exc}")
    cause.__context__ = exc
    return cause


def _fields(flat: list[Any]) -> dict[bytes, Any]:
    """A sentinel's flat ``name, value, ...`` reply as a mapping."""
    return dict(zip(flat[::2], flat[1::2], strict=False))

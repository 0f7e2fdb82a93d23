"""Sentinel: the primary the sentinels name, followed through failovers."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from typing import Any

from redis import exceptions as redis_errors
from redis.asyncio.connection import AbstractConnection

from aa_storage_redis.node import Node
from aa_storage_redis.replies import StreamReplies
from aa_storage_redis.topology import Address, Facts, NodeFactory, ask, unchanged

logger = logging.getLogger("aa_storage_redis")

#: Longest that calls wait for a failover the sentinels announced to finish.
#: Past it they go to whichever primary the sentinels name then.
FAILOVER_HOLD_SECS = 5.0

# What a sentinel publishes on its own pub/sub about a failover, in order.
# The leader publishes +try-failover at least two of its timer ticks (50 to
# 100 ms each) before it sends the chosen replica REPLICAOF NO ONE, so calls
# held from then on can't reach the old primary after the promotion.
_STARTED = "+try-failover"
_PROMOTED = "+promoted-slave"
_SWITCHED = "+switch-master"
_ABORTED = (
    "-failover-abort-not-elected",
    "-failover-abort-no-good-slave",
    "-failover-abort-slave-timeout",
    "+failover-end-for-timeout",
)
CHANNELS = (_STARTED, _PROMOTED, _SWITCHED, *_ABORTED)


class Sentinel:
    """A primary that sentinels name, followed through failovers.

    Discovery asks every sentinel for the service (``SENTINEL MASTER``) and
    takes the answer with the highest config epoch: a sentinel that has not
    heard of the last failover yet still names the old primary, which keeps
    accepting writes for seconds before the sentinels demote it. The choice is
    checked with ``ROLE`` (a user whose ACL denies ``ROLE`` trusts the
    sentinels).

    A watcher per sentinel follows its failover events. From ``+try-failover``
    on, calls wait (up to :data:`FAILOVER_HOLD_SECS`) instead of being sent to
    a primary about to be replaced; ``+promoted-slave`` or ``+switch-master``
    moves them to the new primary, and an aborted failover lets them go on.
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
    ) -> None:
        self._sentinels = tuple(sentinels)
        self._service = service
        self._node_at = node_at
        self._open_sentinel = open_sentinel
        self._timeout = timeout
        self._nodes: dict[Address, Node] = {}
        self._primary: Node | None = None
        self.on_change: Callable[[], None] = unchanged
        self._announced: Address | None = None  # the newest primary a failover named
        self._settled = asyncio.Event()
        self._settled.set()
        self._hold_until = 0.0
        self._discovery: asyncio.Task[None] | None = None
        self._watchers: list[asyncio.Task[None]] = []
        self._refused: set[Address] = set()

    def node_for(self, key: bytes | None) -> Node | None:
        return self._primary if self._settled.is_set() else None

    async def discover(self) -> None:
        """Wait out an announced failover, then find the primary if it is not
        known; concurrent callers share one search."""
        loop = asyncio.get_running_loop()
        if not self._watchers:
            self._watchers = [
                loop.create_task(self._watch(sentinel)) for sentinel in self._sentinels
            ]
        if not self._settled.is_set():
            try:
                async with asyncio.timeout(max(0.0, self._hold_until - loop.time())):
                    await self._settled.wait()
            except TimeoutError:
                logger.warning(
                    "the failover of %s did not finish within %ss; asking the sentinels",
                    self._service,
                    FAILOVER_HOLD_SECS,
                )
                self._settle(None)
        if self._primary is not None:
            return
        if self._discovery is None or self._discovery.done():
            self._discovery = loop.create_task(self._find_primary())
        await asyncio.shield(self._discovery)

    def failed(self, node: Node) -> None:
        if node is self._primary:
            self._primary = None
            self.on_change()

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
        tasks = [*self._watchers, *((self._discovery,) if self._discovery else ())]
        for task in tasks:
            task.cancel()
        if tasks:
            # Bounded: a sentinel read that is slow to notice the cancellation must
            # not hold up closing the data connections.
            await asyncio.wait(tasks, timeout=1.0)
        self._settle(None)  # wake anyone still waiting: the pool refuses them now
        await asyncio.gather(*(node.aclose() for node in self.nodes()))

    async def ask_sentinel(self, address: Address, *command: str) -> Any:
        """One command to the sentinel at ``address``, on a connection of its own."""
        connection = self._open_sentinel(address)
        try:
            async with asyncio.timeout(self._timeout):
                await connection.connect()  # type: ignore[no-untyped-call]
                await connection.send_command(*command)
                return await connection.read_response()
        except TimeoutError:
            raise redis_errors.TimeoutError(
                f"sentinel {address[0]}:{address[1]} timed out"
            ) from None
        finally:
            await connection.disconnect(nowait=True)

    def _node(self, address: Address) -> Node:
        node = self._nodes.get(address)
        if node is None:
            node = self._nodes[address] = self._node_at(address)
        return node

    async def _find_primary(self) -> None:
        answers = await asyncio.gather(
            *(self._named_primary(sentinel) for sentinel in self._sentinels),
            return_exceptions=True,
        )
        named = sorted(
            (answer for answer in answers if isinstance(answer, tuple)),
            key=lambda answer: -answer[0],
        )
        candidates = [address for _, address in named]
        if self._announced is not None:
            candidates.insert(0, self._announced)
        error: BaseException = next(
            (answer for answer in answers if isinstance(answer, BaseException)),
            redis_errors.ConnectionError("no sentinel answered"),
        )
        for address in dict.fromkeys(candidates):
            node = self._node(address)
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
            self._primary = node
            self.on_change()
            return
        if not isinstance(error, redis_errors.RedisError):
            raise redis_errors.ConnectionError(f"no sentinel answered: {error!r}")
        raise error

    async def _named_primary(self, sentinel: Address) -> tuple[int, Address]:
        """The primary ``sentinel`` names for the service, with its config epoch."""
        try:
            reply = await self.ask_sentinel(sentinel, "SENTINEL", "MASTER", self._service)
        except redis_errors.ResponseError as exc:
            if "no such master" in str(exc).lower():
                raise redis_errors.ResponseError(
                    f"the sentinels monitor no {self._service!r}"
                ) from None
            raise
        fields = _fields(reply)
        address = (fields[b"ip"].decode(), int(fields[b"port"]))
        return int(fields.get(b"config-epoch", b"0")), address

    def _hold(self) -> None:
        if self._settled.is_set():
            logger.warning("sentinels started a failover of %s; holding calls", self._service)
            self._hold_until = asyncio.get_running_loop().time() + FAILOVER_HOLD_SECS
            self._settled.clear()
            self.on_change()

    def _settle(self, primary: Address | None) -> None:
        """End the hold; with ``primary``, send calls there from now on."""
        if primary is not None and (
            self._primary is None or self._primary is not self._nodes.get(primary)
        ):
            logger.warning("sentinels moved %s to %s:%s", self._service, primary[0], primary[1])
            self._announced = primary
            self._primary = None
            self.on_change()
        self._settled.set()

    def _heard(self, channel: bytes, data: bytes) -> None:
        """Act on one failover event from a sentinel."""
        words = data.decode(errors="replace").split()
        event = channel.decode(errors="replace")
        if _service_of(event, words) != self._service:
            return
        if event == _STARTED:
            self._hold()
        elif event == _PROMOTED and len(words) >= 4:
            # slave <ip:port> <ip> <port> @ <service> <old ip> <old port>
            self._settle((words[2], int(words[3])))
        elif event == _SWITCHED and len(words) >= 5:
            # <service> <old ip> <old port> <new ip> <new port>
            self._settle((words[3], int(words[4])))
        elif event in _ABORTED:
            self._settle(None)

    async def _watch(self, sentinel: Address) -> None:
        """Follow one sentinel's failover events, reconnecting with backoff."""
        attempt = 0
        while True:
            connection = self._open_sentinel(sentinel)
            try:
                async with asyncio.timeout(self._timeout):
                    await connection.connect()  # type: ignore[no-untyped-call]
                    await connection.send_command("SUBSCRIBE", *CHANNELS)
                attempt = 0
                await self._follow(connection)
            except redis_errors.ResponseError as exc:
                # Refused (an ACL without the channels): say so once, keep trying.
                if sentinel not in self._refused:
                    self._refused.add(sentinel)
                    logger.warning(
                        "sentinel %s:%s refuses to report failovers (%s); calls may fail "
                        "during a failover instead of waiting for it",
                        *sentinel,
                        exc,
                    )
            except (redis_errors.RedisError, OSError, TimeoutError):
                pass  # the sentinel is away: try again
            finally:
                connection._close()  # type: ignore[no-untyped-call]
            attempt += 1
            await asyncio.sleep(min(0.05 * 2**attempt, 1.0))

    async def _follow(self, connection: AbstractConnection) -> None:
        """Read pub/sub messages until the sentinel goes away."""
        replies = StreamReplies(connection)
        while True:
            message = await replies.next()
            if isinstance(message, redis_errors.RedisError):
                raise message
            if message[0] == b"message":
                self._heard(message[1], message[2])


def _service_of(event: str, words: list[str]) -> str | None:
    """The service an event is about: events on a replica name it after ``@``."""
    if event == _SWITCHED:
        return words[0] if words else None
    if "@" in words:
        at = words.index("@")
        return words[at + 1] if at + 1 < len(words) else None
    return words[1] if len(words) > 1 and words[0] == "master" else None


def _fields(flat: list[Any]) -> dict[bytes, Any]:
    """A sentinel's flat ``name, value, ...`` reply as a mapping."""
    return dict(zip(flat[::2], flat[1::2], strict=False))

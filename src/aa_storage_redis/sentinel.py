"""Sentinel: the primary the sentinels name, followed through failovers."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from typing import Any

import hiredis
from redis import exceptions as redis_errors
from redis.asyncio.connection import AbstractConnection

from aa_storage_redis.node import Node
from aa_storage_redis.topology import Address, Facts, NodeFactory, ask, unchanged

logger = logging.getLogger("aa_storage_redis")


class Sentinel:
    """A primary that sentinels name, followed through failovers.

    The primary is asked of the first sentinel that answers, then checked
    with ``ROLE`` (a user whose ACL denies ``ROLE`` trusts the sentinel). A
    watcher subscribed to ``+switch-master`` on one sentinel drops the old
    primary as soon as a failover is announced; a ``READONLY`` reply or a lost
    connection drops it too. The next command then asks the sentinels again.
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
        self._primary: Node | None = None
        self._primary_address: Address | None = None
        self.on_change: Callable[[], None] = unchanged
        self._retired: set[Node] = set()
        self._discovery: asyncio.Task[None] | None = None
        self._watcher: asyncio.Task[None] | None = None

    def node_for(self, key: bytes | None) -> Node | None:
        return self._primary

    async def discover(self) -> None:
        """Find the primary; concurrent callers share one search."""
        if self._discovery is None or self._discovery.done():
            self._discovery = asyncio.get_running_loop().create_task(self._find_primary())
        await asyncio.shield(self._discovery)
        if self._watcher is None:
            self._watcher = asyncio.get_running_loop().create_task(self._watch())

    def failed(self, node: Node) -> None:
        if node is self._primary:
            self._primary = None
            self._retired.add(node)
            self.on_change()

    def primaries(self) -> tuple[Address, ...]:
        if self._primary is None or self._primary_address is None:
            return ()
        return (self._primary_address,)

    def nodes(self) -> Iterable[Node]:
        return (*self._retired, *((self._primary,) if self._primary else ()))

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
        healthy = [fields for fields in replicas if b"s_down" not in _flags(fields)]
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
        tasks = [task for task in (self._discovery, self._watcher) if task is not None]
        for task in tasks:
            task.cancel()
        if tasks:
            # Bounded: a sentinel read that is slow to notice the cancellation must
            # not hold up closing the data connections.
            await asyncio.wait(tasks, timeout=1.0)
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

    async def _find_primary(self) -> None:
        error: redis_errors.RedisError = redis_errors.ConnectionError("no sentinel answered")
        for sentinel in self._sentinels:
            try:
                reply = await self.ask_sentinel(
                    sentinel, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", self._service
                )
            except redis_errors.RedisError as exc:
                error = exc
                continue
            if not reply:
                error = redis_errors.ResponseError(f"the sentinels monitor no {self._service!r}")
                continue
            address = (reply[0].decode(), int(reply[1]))
            node = self._node_at(address)
            try:
                role = await ask(node, "ROLE")
            except redis_errors.NoPermissionError:
                role = [b"master"]  # the ACL hides it: trust the sentinel
            except redis_errors.RedisError as exc:
                error = exc
                self._retired.add(node)
                continue
            if role[0] != b"master":
                error = redis_errors.ReadOnlyError(
                    f"{reply[0].decode()}:{int(reply[1])} is not a primary yet"
                )
                self._retired.add(node)
                continue
            self._primary, self._primary_address = node, address
            self.on_change()
            return
        raise error

    async def _watch(self) -> None:
        """Drop the primary when a sentinel announces a failover of this service."""
        attempt = 0
        while True:
            for sentinel in self._sentinels:
                connection = self._open_sentinel(sentinel)
                try:
                    async with asyncio.timeout(self._timeout):
                        await connection.connect()  # type: ignore[no-untyped-call]
                        await connection.send_command("SUBSCRIBE", "+switch-master")
                        await connection.read_response()
                    attempt = 0
                    await self._follow(connection)
                except (redis_errors.RedisError, OSError, TimeoutError):
                    pass  # try the next sentinel
                finally:
                    connection._close()  # type: ignore[no-untyped-call]
                attempt += 1
                await asyncio.sleep(min(0.05 * 2**attempt, 1.0))

    async def _follow(self, connection: AbstractConnection) -> None:
        """Read ``+switch-master`` messages until the sentinel goes away."""
        # Read the stream directly: an endless wait in redis-py's read_response
        # does not end promptly when the watcher is cancelled.
        stream = connection._reader
        assert stream is not None
        reader = hiredis.Reader()
        while data := await stream.read(65536):
            reader.feed(data)
            while (message := reader.gets()) is not False:
                name = message[2].split()[0].decode() if len(message) > 2 else ""
                if name == self._service and self._primary is not None:
                    logger.warning("sentinels moved %s to a new primary", name)
                    self.failed(self._primary)


def _flags(fields: list[Any]) -> bytes:
    """The ``flags`` of one SENTINEL REPLICAS entry (a flat name, value list)."""
    pairs = dict(zip(fields[::2], fields[1::2], strict=False))
    flags: bytes = pairs.get(b"flags", b"")
    return flags

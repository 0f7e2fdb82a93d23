"""Hearing of failovers: a watcher on each sentinel's pub/sub, reporting to one listener.

Each watcher subscribes to the failover events of :data:`CHANNELS` on its
sentinel and tells the :class:`FailoverListener` (the Sentinel topology) of
those about its service: a failover started, or ended with a new primary, or
with none. A watcher that loses its sentinel, or fails for any reason,
reconnects with backoff; a refusal (an ACL without the channels) is logged
once. :meth:`FailoverWatchers.listening` lets discovery wait until each
watcher listens, or has just failed to, so no call is sent before a failover
can be heard of.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable
from typing import Protocol

from redis import exceptions as redis_errors
from redis.asyncio.connection import AbstractConnection

from aa_storage_redis.replies import StreamReplies
from aa_storage_redis.telemetry import detached
from aa_storage_redis.topology import Address

logger = logging.getLogger("aa_storage_redis")

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

# Aclose waits this long for the watchers: a sentinel read that is slow to notice
# the cancellation must not hold up closing the data connections.
_CLOSE_SECS = 1.0


class FailoverListener(Protocol):
    """Who hears of a service's failovers."""

    def failover_started(self) -> None:
        """A sentinel began a failover: the primary is about to be replaced."""

    def failover_ended(self, primary: Address | None) -> None:
        """The failover ended: ``primary`` is the new primary (``None``: it was aborted,
        and the old one stays)."""


class FailoverWatchers:
    """One watcher per sentinel, following ``service``'s failovers for ``listener``."""

    def __init__(
        self,
        sentinels: Iterable[Address],
        service: str,
        open_sentinel: Callable[[Address], AbstractConnection],
        *,
        timeout: float,
        listener: FailoverListener,
    ) -> None:
        self._sentinels = tuple(sentinels)
        self._service = service
        self._open_sentinel = open_sentinel
        self._timeout = timeout
        self._listener = listener
        self._tasks: list[asyncio.Task[None]] = []
        # Set while a sentinel's watcher listens, or has just failed to: discovery
        # waits for these, not for a sentinel that is away.
        self._listening = {sentinel: asyncio.Event() for sentinel in self._sentinels}
        self._refused: set[Address] = set()

    def start(self) -> None:
        """Start the watchers, unless they run already."""
        if not self._tasks:
            self._tasks = [detached(self._watch(sentinel)) for sentinel in self._sentinels]

    async def listening(self) -> None:
        """Return once each watcher listens or has just failed to (each try is bounded
        by the timeout)."""
        if self._tasks:
            await asyncio.gather(*(event.wait() for event in self._listening.values()))

    async def aclose(self) -> None:
        """Stop every watcher; bounded by about a second."""
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=_CLOSE_SECS)

    def heard(self, channel: bytes, data: bytes) -> None:
        """Tell the listener of one event, if it is about the service."""
        words = data.decode(errors="replace").split()
        event = channel.decode(errors="replace")
        if _service_of(event, words) != self._service:
            return
        if event == _STARTED:
            self._listener.failover_started()
        elif event == _PROMOTED and len(words) >= 4 and words[3].isdigit():
            # slave <ip:port> <ip> <port> @ <service> <old ip> <old port>
            self._listener.failover_ended((words[2], int(words[3])))
        elif event == _SWITCHED and len(words) >= 5 and words[4].isdigit():
            # <service> <old ip> <old port> <new ip> <new port>
            self._listener.failover_ended((words[3], int(words[4])))
        elif event in _ABORTED:
            self._listener.failover_ended(None)

    async def _watch(self, sentinel: Address) -> None:
        """Follow one sentinel's failover events, reconnecting with backoff."""
        attempt = 0
        listening = self._listening[sentinel]
        while True:
            listening.clear()
            connection: AbstractConnection | None = None
            try:
                connection = self._open_sentinel(sentinel)
                async with asyncio.timeout(self._timeout):
                    await connection.connect()  # type: ignore[no-untyped-call]
                    await connection.send_command("SUBSCRIBE", *CHANNELS)
                    replies = StreamReplies(connection)
                    for _ in CHANNELS:  # one confirmation per channel
                        confirmed = await replies.next()
                        if isinstance(confirmed, redis_errors.RedisError):
                            raise confirmed
                listening.set()
                attempt = 0
                await self._follow(replies)
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
            except Exception as exc:
                # Not the network's doing: a bug, or a redis-py release the driver does
                # not know. Say it, and keep trying, as for a sentinel that is away.
                logger.warning(
                    "watching sentinel %s:%s for failovers failed: %s: %s",
                    *sentinel,
                    type(exc).__name__,
                    exc,
                )
            finally:
                listening.set()  # not listening, but no one should wait for it now
                if connection is not None:
                    with contextlib.suppress(Exception):
                        await connection.disconnect(nowait=True)
            attempt += 1
            await asyncio.sleep(min(0.05 * 2**attempt, 1.0))

    async def _follow(self, replies: StreamReplies) -> None:
        """Read pub/sub messages until the sentinel goes away."""
        while True:
            message = await replies.next()
            if isinstance(message, redis_errors.RedisError):
                raise message
            if message[0] == b"message":
                self.heard(message[1], message[2])


def _service_of(event: str, words: list[str]) -> str | None:
    """The service an event is about: events on a replica name it after ``@``."""
    if event == _SWITCHED:
        return words[0] if words else None
    if "@" in words:
        at = words.index("@")
        return words[at + 1] if at + 1 < len(words) else None
    return words[1] if len(words) > 1 and words[0] == "master" else None

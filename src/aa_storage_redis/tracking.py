"""Keeping the near-cache's tracking up: one tracking connection per primary
(see ``tracking_connection.py``), followed through topology changes.

Any loss of a tracking connection and any topology change suspends the
near-cache (flushed, bypassed) at once; a supervisor task then brings
tracking back on every primary, with a bounded backoff, and resumes it.
"""

from __future__ import annotations

import asyncio
import logging

from redis import exceptions as redis_errors

from aa_storage_redis.errors import translate
from aa_storage_redis.events import TRACKING_LOST, TRACKING_RESTORED, happened
from aa_storage_redis.keys import KeySpace
from aa_storage_redis.near_cache import NearCache
from aa_storage_redis.stats import Counters
from aa_storage_redis.telemetry import detached
from aa_storage_redis.topology import Address, Topology
from aa_storage_redis.tracking_connection import TrackingConnection, TrackingConnector

logger = logging.getLogger("aa_storage_redis")

# Backoff between attempts to bring tracking back: 50 ms doubling to at most 1 s.
_BACKOFF_BASE, _BACKOFF_CAP = 0.05, 1.0
# aclose() waits this long for the tracking tasks; they hold no caller's work.
_CLOSE_SECS = 1.0


class Tracker:
    """Keeps tracking up on every primary of ``topology`` for ``near``; see the module doc.

    Starts on the near-cache's first lookup; :meth:`aclose` stops it.
    """

    def __init__(
        self,
        near: NearCache,
        topology: Topology,
        connect: TrackingConnector,
        *,
        keys: KeySpace,
        connect_timeout: float,
        socket_timeout: float,
        server: str,
        secret: str | None,
        counters: Counters | None = None,
    ) -> None:
        self._counters = counters or Counters()
        self._near = near
        self._topology = topology
        self._connect = connect
        self._keys = keys
        self._open_timeout = connect_timeout + socket_timeout
        self._socket_timeout = socket_timeout
        self._server = server
        self._secret = secret
        self._connections: dict[Address, TrackingConnection] = {}
        self._dirty = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self.problem: str | None = None
        """Why tracking is down, once an attempt to bring it up has failed."""
        near.wake = self.start
        topology.watch(self)

    @property
    def state(self) -> str:
        """``up on N primaries``, ``starting``, ``stopped`` or ``down: <why>``, for ``check``."""
        if self._near.live:
            count = len(self._connections)
            return f"up on {count} {'primary' if count == 1 else 'primaries'}"
        if self._closed:
            return "stopped"
        if self._task is None or self.problem is None:
            return "starting"
        return f"down: {self.problem}"

    def start(self) -> None:
        """Bring tracking up in the background, unless it is already on its way."""
        if self._task is None and not self._closed:
            self._task = detached(self._supervise())

    async def aclose(self) -> None:
        """Stop tracking and close its connections; bounded by about a second."""
        self._closed = True
        self._near.suspend()
        tasks = [
            connection.task
            for connection in self._connections.values()
            if connection.task is not None
        ]
        if self._task is not None:
            tasks.append(self._task)
            self._task.cancel()
        self._close_connections()
        if tasks:
            await asyncio.wait(tasks, timeout=_CLOSE_SECS)

    def _close_connections(self) -> None:
        for connection in self._connections.values():
            connection.close()
        self._connections.clear()

    def topology_changed(self) -> None:
        """The topology changed: the primaries tracked may no longer be the right ones."""
        self._near.suspend()
        self._dirty.set()

    def _invalidated(self, keys: list[bytes] | None) -> None:
        if keys is None:  # FLUSHDB, FLUSHALL, or the server dropped its tracking state
            self._near.flush()
            return
        for key in keys:
            # A key under the prefix that names no agent is nobody's entry.
            if (agent := self._keys.agent_of_policy(key)) is not None:
                self._near.invalidate(agent)

    def _lost(self, connection: TrackingConnection, why: str) -> None:
        if self._connections.get(connection.address) is connection:
            del self._connections[connection.address]
            connection.close()
            host, port = connection.address
            self.problem = f"tracking connection to {host}:{port} lost: {why}"
            happened(
                TRACKING_LOST, self._counters, "near-cache flushed and bypassed: %s", self.problem
            )
            self._near.suspend()
            self._dirty.set()

    async def _supervise(self) -> None:
        try:
            await self._keep_tracking()
        finally:
            # Cancelled by aclose(), or by the end of the event loop: nobody hears
            # the invalidations any more.
            self._near.suspend()

    async def _keep_tracking(self) -> None:
        attempt = 0
        while not self._closed:
            self._dirty.clear()
            try:
                await self._track_every_primary()
            except Exception as exc:  # whatever it was, tracking is down: retry
                problem = self._describe(exc)
                if self.problem is None:
                    happened(
                        TRACKING_LOST,
                        self._counters,
                        "near-cache bypassed: tracking failed: %s",
                        problem,
                    )
                self.problem = problem
                self._near.suspend()
                attempt += 1
                await asyncio.sleep(min(_BACKOFF_BASE * 2**attempt, _BACKOFF_CAP))
                continue
            if self._dirty.is_set():
                continue  # changed while connecting: look at the primaries again
            attempt = 0
            if self.problem is not None:
                happened(
                    TRACKING_RESTORED,
                    self._counters,
                    "near-cache serves again: tracking is back on every primary",
                )
            self.problem = None
            self._near.resume()
            await self._dirty.wait()

    def _describe(self, exc: Exception) -> str:
        if isinstance(exc, redis_errors.RedisError):
            return str(translate(exc, server=self._server, secret=self._secret))
        return f"{type(exc).__name__}: {exc}"

    async def _track_every_primary(self) -> None:
        """Open a tracking connection to each primary that lacks one; close the others."""
        loop = asyncio.get_running_loop()
        if not self._topology.primaries():
            await self._topology.route(None, loop.time() + self._open_timeout)
        wanted = self._topology.primaries()
        if not wanted:
            raise redis_errors.ConnectionError("no primary is known")
        for address in [address for address in self._connections if address not in wanted]:
            self._connections.pop(address).close()
        missing = [address for address in wanted if address not in self._connections]
        opening = [
            loop.create_task(
                TrackingConnection.open(
                    self._connect, address, self._keys.policy_prefix, self._open_timeout
                )
            )
            for address in missing
        ]
        try:
            opened = await asyncio.gather(*opening, return_exceptions=True)
        except BaseException:
            # Cancelled (aclose) once some had opened: their results are dropped here,
            # so close them, now or as they open.
            for task in opening:
                if task.done():
                    _close_if_opened(task)
                else:
                    task.add_done_callback(_close_if_opened)
            raise
        failure: BaseException | None = None
        for connection in opened:
            if isinstance(connection, TrackingConnection):
                if self._closed:
                    connection.close()
                    continue
                self._connections[connection.address] = connection
                connection.start(self._invalidated, self._socket_timeout, self._lost)
            elif failure is None:
                failure = connection
        if failure is not None:
            raise failure


def _close_if_opened(task: asyncio.Task[TrackingConnection]) -> None:
    if not task.cancelled() and task.exception() is None:
        task.result().close()

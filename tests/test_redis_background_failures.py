"""No call waits without bound on a background task that failed.

A fault the driver does not expect (here a ``TypeError`` or a ``CancelledError`` from
inside redis-py) is injected at each point where a background task works for callers:
opening a connection, its handshake, a tracking connection, a sentinel watcher, and
cluster and sentinel discovery. Each time the callers get a ``BackendError`` naming the
cause within ``connect_timeout`` plus a margin, and once the fault is gone the next
call works.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Callable
from typing import Any

import attrs
import pytest
from redis.asyncio.connection import AbstractConnection

from aa_storage import AgentId, BackendError
from aa_storage.testing import a_policy
from aa_storage_redis import cluster as cluster_topology
from cluster import LocalCluster
from executor_support import OpenBackend
from sentinel import SentinelSet
from servers import RedisServer
from waiting import eventually

TIMEOUTS = {"connect_timeout": 2.0, "socket_timeout": 2.0}
# What a failed call may take past connect_timeout: retries with their backoff, and a
# loaded machine. Far below "forever", which is what these faults used to cost.
MARGIN = 3.0
CALLERS = 20

pytestmark = pytest.mark.asyncio

Applies = Callable[[Any, tuple[Any, ...], dict[str, Any]], bool]


@attrs.define
class Fault:
    """An exception raised from a patched redis-py method while armed."""

    exception: Callable[[], BaseException]
    fired: int = 0
    passed: int = 0
    """Calls the fault let through since it was disarmed."""
    armed: bool = True

    def disarm(self) -> None:
        self.armed = False


@pytest.fixture
def inject(monkeypatch: pytest.MonkeyPatch) -> Callable[..., Fault]:
    """``inject(name, applies, exception=TypeError)``: make ``Connection.<name>`` raise
    while the returned fault is armed, for the calls ``applies(connection, args, kwargs)``
    picks; undone after the test."""

    def make(
        name: str,
        applies: Applies = lambda *_: True,
        exception: Callable[[], BaseException] = lambda: TypeError("injected fault"),
    ) -> Fault:
        fault = Fault(exception)
        original = getattr(AbstractConnection, name)

        def fires(connection: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
            if not applies(connection, args, kwargs):
                return False
            if fault.armed:
                fault.fired += 1
                return True
            fault.passed += 1
            return False

        if inspect.iscoroutinefunction(original):

            async def patched_async(self: Any, *args: Any, **kwargs: Any) -> Any:
                if fires(self, args, kwargs):
                    raise fault.exception()
                return await original(self, *args, **kwargs)

            monkeypatch.setattr(AbstractConnection, name, patched_async)
        else:

            def patched(self: Any, *args: Any, **kwargs: Any) -> Any:
                if fires(self, args, kwargs):
                    raise fault.exception()
                return original(self, *args, **kwargs)

            monkeypatch.setattr(AbstractConnection, name, patched)
        return fault

    return make


def to_ports(ports: set[int]) -> Applies:
    """Picks connections to one of ``ports``, built or open."""

    def applies(connection: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
        port = kwargs.get("port", getattr(connection, "port", None))
        return port in ports

    return applies


def protocol_3(connection: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    """Picks RESP3 connections: the near-cache's tracking connections."""
    return kwargs.get("protocol", getattr(connection, "protocol", None)) == 3


def subscribing(connection: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    """Picks the SUBSCRIBE a sentinel watcher sends."""
    return bool(args) and args[0] == "SUBSCRIBE"


async def fails_within_bound(call: Callable[[], Any], cause: str) -> None:
    """``CALLERS`` concurrent calls each raise a BackendError naming ``cause``, all within
    connect_timeout plus MARGIN."""
    async with asyncio.timeout(TIMEOUTS["connect_timeout"] + MARGIN):
        outcomes = await asyncio.gather(*(call() for _ in range(CALLERS)), return_exceptions=True)
    for outcome in outcomes:
        assert isinstance(outcome, BackendError), outcome
        assert cause in str(outcome)


async def works(call: Callable[[], Any]) -> Any:
    async with asyncio.timeout(TIMEOUTS["connect_timeout"] + MARGIN):
        return await call()


class TestOpeningAConnection:
    """The connect task of a multiplexed connection, on one server."""

    @pytest.mark.parametrize("step", ["__init__", "on_connect_check_health"])
    async def test_an_unexpected_error_fails_every_waiting_call_then_the_next_call_connects(
        self,
        step: str,
        inject: Callable[..., Fault],
        redis_server: RedisServer,
        redis_url: str,
        open_backend: OpenBackend,
    ) -> None:
        """A TypeError while building the connection or in its handshake fails every
        waiting call with a BackendError that names it, and the next call connects."""
        fault = inject(step, to_ports({redis_server.port}))
        counter = open_backend(redis_url, **TIMEOUTS).rate_limiter()
        await fails_within_bound(lambda: counter.current("background:connect"), "TypeError")
        assert fault.fired
        fault.disarm()
        assert await works(lambda: counter.increment("background:connect", 1, 60)) == 1

    async def test_a_cancelled_handshake_fails_the_waiting_calls(
        self,
        inject: Callable[..., Fault],
        redis_server: RedisServer,
        redis_url: str,
        open_backend: OpenBackend,
    ) -> None:
        """A CancelledError raised inside the handshake (not by the driver cancelling the
        task) ends the connect task as cancelled; its callers are failed, not left waiting."""
        fault = inject(
            "on_connect_check_health",
            to_ports({redis_server.port}),
            exception=asyncio.CancelledError,
        )
        counter = open_backend(redis_url, **TIMEOUTS).rate_limiter()
        await fails_within_bound(lambda: counter.current("background:cancelled"), "cancelled")
        fault.disarm()
        assert await works(lambda: counter.current("background:cancelled")) == 0


class TestTrackingConnection:
    async def test_an_unexpected_error_leaves_reads_answered_and_tracking_comes_back(
        self, inject: Callable[..., Fault], redis_url: str, open_backend: OpenBackend
    ) -> None:
        """With the tracking connection failing to open, the near-cache stays bypassed
        and says why, reads still answer from the server, and tracking comes back."""
        fault = inject("__init__", protocol_3)
        backend = open_backend(redis_url, near_cache=True, **TIMEOUTS)
        agent = AgentId.new()
        await works(lambda: backend.policies().cache_policy(agent, a_policy("v1"), 60))
        assert await works(lambda: backend.policies().get_policy(agent)) == a_policy("v1")
        await eventually(
            lambda: "TypeError" in backend.near_cache_state(), "tracking says why it is down"
        )
        assert await works(lambda: backend.policies().get_policy(agent)) == a_policy("v1")
        fault.disarm()
        await eventually(
            lambda: "tracking up on 1 primary" in backend.near_cache_state(),
            "tracking is back",
        )


class TestSentinel:
    async def test_a_watcher_that_fails_unexpectedly_keeps_watching(
        self,
        inject: Callable[..., Fault],
        sentinel_set: SentinelSet,
        open_backend: OpenBackend,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        """A TypeError in a sentinel watcher neither holds calls up nor ends the watcher:
        it is logged, and the watcher subscribes again once the fault is gone."""
        fault = inject("send_command", subscribing)
        backend = open_backend(sentinel_set.url, **TIMEOUTS)
        counter = backend.rate_limiter()
        with caplog.at_level(logging.WARNING, logger="aa_storage_redis"):
            assert await works(lambda: counter.current("background:watcher")) == 0
        assert fault.fired
        assert "TypeError: injected fault" in caplog.text
        fault.disarm()
        await eventually(
            lambda: fault.passed >= len(sentinel_set.sentinels), "every watcher subscribes again"
        )

    async def test_an_unexpected_error_in_discovery_fails_the_calls_then_the_next_finds_it(
        self, inject: Callable[..., Fault], sentinel_set: SentinelSet, open_backend: OpenBackend
    ) -> None:
        """A TypeError building the connections to the sentinels fails the waiting calls
        with a BackendError that names it; the next call finds the primary."""
        sentinels = {sentinel.port for sentinel in sentinel_set.sentinels}
        fault = inject("__init__", to_ports(sentinels))
        counter = open_backend(sentinel_set.url, **TIMEOUTS).rate_limiter()
        await fails_within_bound(lambda: counter.current("background:sentinels"), "TypeError")
        fault.disarm()
        assert await works(lambda: counter.current("background:sentinels")) == 0


class TestCluster:
    async def test_an_unexpected_error_opening_the_nodes_fails_the_calls_then_recovers(
        self, inject: Callable[..., Fault], redis_cluster: LocalCluster, open_backend: OpenBackend
    ) -> None:
        """A TypeError building every connection fails discovery's callers with a
        BackendError that names it; the next call loads the slot map."""
        fault = inject("__init__")
        counter = open_backend(redis_cluster.url, **TIMEOUTS).rate_limiter()
        await fails_within_bound(lambda: counter.current("background:cluster"), "TypeError")
        fault.disarm()
        assert await works(lambda: counter.current("background:cluster")) == 0

    async def test_an_unexpected_error_reading_the_slot_map_fails_the_calls(
        self,
        monkeypatch: pytest.MonkeyPatch,
        redis_cluster: LocalCluster,
        open_backend: OpenBackend,
    ) -> None:
        """A TypeError while the slot map is read is a BackendError naming it, not a raw
        TypeError; the next call loads the map."""
        fault = Fault(lambda: TypeError("injected fault"))
        original = cluster_topology._slot_owners

        def slot_owners(*args: Any) -> Any:
            if fault.armed:
                fault.fired += 1
                raise fault.exception()
            return original(*args)

        monkeypatch.setattr(cluster_topology, "_slot_owners", slot_owners)
        counter = open_backend(redis_cluster.url, **TIMEOUTS).rate_limiter()
        await fails_within_bound(lambda: counter.current("background:slots"), "TypeError")
        assert fault.fired
        fault.disarm()
        assert await works(lambda: counter.current("background:slots")) == 0

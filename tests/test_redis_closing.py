"""Closing a backend: no call after ``aclose()``, no connection left open, no transport leaked.

Connections are counted where they end: at the fault proxy and in the server's CLIENT LIST.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import subprocess
import sys
import threading
import warnings
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from typing import Any, TypeVar

import pytest

from aa_storage import StorageError
from aa_storage.testing import bounded
from aa_storage_redis import RedisBackend, RedisRateLimitCounter, RedisStorageConfig
from executor_support import (
    KNOWN,
    WINDOW,
    OpenBackend,
    plant,
)
from faultproxy import FaultProxyFactory
from servers import RedisServer
from waiting import eventually

T = TypeVar("T")

SLOT = KNOWN[0]


def every_call(backend: RedisBackend) -> dict[str, Callable[[], Awaitable[Any]]]:
    """Each store operation, and ``describe``, with valid arguments."""
    sessions, counter, policies = backend.sessions(), backend.rate_limiter(), backend.policies()
    agent = SLOT.record.agent_id
    return {
        "save": lambda: sessions.save(SLOT.record),
        "load": lambda: sessions.load(SLOT.record.session_id),
        "delete": lambda: sessions.delete(SLOT.record.session_id),
        "increment": lambda: counter.increment(SLOT.counter, 1, WINDOW),
        "current": lambda: counter.current(SLOT.counter),
        "reset": lambda: counter.reset(SLOT.counter),
        "cache_policy": lambda: policies.cache_policy(agent, SLOT.policy, WINDOW),
        "get_policy": lambda: policies.get_policy(agent),
        "invalidate": lambda: policies.invalidate(agent),
        "describe": backend.describe,
        "store built over the pool": lambda: RedisRateLimitCounter(backend.pool).current("k"),
    }


@pytest.mark.asyncio
class TestAfterClose:
    @pytest.mark.parametrize("used", [True, False], ids=["used", "never-used"])
    async def test_every_call_after_aclose_says_the_backend_is_closed(
        self,
        redis_server: RedisServer,
        redis_url: str,
        fault_proxy: FaultProxyFactory,
        open_backend: OpenBackend,
        used: bool,
    ) -> None:
        """After aclose(), every call, through stores made before or after it, raises
        StorageError saying the backend is closed, and no connection is opened."""
        proxy = fault_proxy(redis_server.port)
        backend = open_backend(proxy.url)
        made_before = every_call(backend)
        if used:
            await plant(backend)
        await bounded(backend.aclose())
        await eventually(lambda: proxy.open_connections == 0, "every connection closed")
        accepted = proxy.connections_accepted

        for calls in (made_before, every_call(backend)):
            for name, call in calls.items():
                with pytest.raises(StorageError, match="backend is closed"):
                    await bounded(call())
                assert proxy.connections_accepted == accepted, name
        assert backend.stats().connections_opened == accepted


@pytest.mark.asyncio
class TestClosingWithCallsInFlight:
    async def test_calls_in_flight_finish_or_fail_and_no_connection_stays(
        self, fresh_redis_server: RedisServer, open_backend: OpenBackend
    ) -> None:
        """aclose() with hundreds of calls in flight: each returns its answer or raises
        StorageError, and the server then sees no connection from the backend."""
        backend = open_backend(fresh_redis_server.url, pool_size=2)
        counter = backend.rate_limiter()
        await plant(backend)
        calls = [asyncio.ensure_future(counter.current(KNOWN[i % 20].counter)) for i in range(400)]
        await asyncio.sleep(0)
        assert backend.stats().pending > 0  # the precondition: calls are in flight
        await bounded(backend.aclose())

        outcomes = await bounded(asyncio.gather(*calls, return_exceptions=True))
        for i, outcome in enumerate(outcomes):
            if not isinstance(outcome, StorageError):
                assert outcome == KNOWN[i % 20].total, outcome
        await eventually(lambda: fresh_redis_server.clients() == [], "the server sees no client")

    async def test_calls_pending_on_a_frozen_server_fail_and_no_connection_stays(
        self, fresh_redis_server: RedisServer, open_backend: OpenBackend
    ) -> None:
        """aclose() while the server is frozen: the pending calls fail with StorageError within
        the timeout, and once the server runs again it sees no connection from the backend."""
        backend = open_backend(fresh_redis_server.url, pool_size=2, socket_timeout=0.5)
        counter = backend.rate_limiter()
        await counter.increment("k", 1, WINDOW)
        fresh_redis_server.freeze()
        try:
            calls = [asyncio.ensure_future(counter.increment("k", 1, WINDOW)) for _ in range(20)]
            await eventually(lambda: backend.stats().pending == 20, "twenty calls pending")
            await bounded(backend.aclose())
            outcomes = await bounded(asyncio.gather(*calls, return_exceptions=True))
        finally:
            fresh_redis_server.thaw()
        for outcome in outcomes:
            assert isinstance(outcome, StorageError), outcome
        await eventually(lambda: fresh_redis_server.clients() == [], "the server sees no client")


# Run in a process of its own, so that transports leaked by aclose() are collected (and
# warned about) when the interpreter shuts down, as in a real application.
CLOSE_IN_FLIGHT = """
import asyncio, sys
from aa_storage import StorageError
from aa_storage_redis import RedisBackend, RedisStorageConfig

async def main(url):
    backend = RedisBackend.connect(RedisStorageConfig(url=url, pool_size=2))
    counter = backend.rate_limiter()
    await counter.increment("k", 1, 600)
    calls = [asyncio.ensure_future(counter.increment("k", 1, 600)) for _ in range(300)]
    await asyncio.sleep(0)
    await backend.aclose()
    outcomes = await asyncio.gather(*calls, return_exceptions=True)
    odd = [o for o in outcomes if not isinstance(o, (int, StorageError))]
    print(len(odd), repr(odd[:3]))

asyncio.run(main(sys.argv[1]))
"""


def test_closing_with_calls_in_flight_leaks_no_transport(redis_url: str) -> None:
    """A process that closes its backend with calls in flight exits with no ResourceWarning
    (no "unclosed transport") and nothing else on stderr."""
    result = subprocess.run(
        [sys.executable, "-W", "always::ResourceWarning", "-c", CLOSE_IN_FLIGHT, redis_url],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "0 []"
    assert result.stderr == ""


@contextlib.contextmanager
def running_in_another_thread(redis_url: str) -> Iterator[RedisBackend]:
    """A backend whose event loop runs in a thread of its own, with SLOT planted through
    it; on leaving, it must still serve its own loop, which then closes it."""
    backend = RedisBackend.connect(RedisStorageConfig(url=redis_url))
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever)
    thread.start()

    def there(coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, loop).result(10)

    try:
        there(plant(backend))
        yield backend
        assert there(backend.rate_limiter().current(SLOT.counter)) == SLOT.total
        there(backend.aclose())
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


class TestAnotherEventLoop:
    """A backend belongs to the event loop it first ran in; asyncio.run twice must not
    hang, and a near-cache must not answer from a loop whose tracking is gone."""

    @staticmethod
    def run(call: Callable[[], Awaitable[Any]]) -> Any:
        async def guarded() -> Any:
            return await asyncio.wait_for(call(), 10)

        return asyncio.run(guarded())

    @pytest.mark.parametrize("near_cache", [False, True], ids=["plain", "near-cache"])
    @pytest.mark.parametrize("first_loop", ["closed", "stopped"])
    def test_every_call_from_a_second_loop_says_so(
        self, redis_url: str, near_cache: bool, first_loop: str
    ) -> None:
        """Whether the first loop was closed (asyncio.run) or only stopped, with its
        tracking task still pending and the near-cache still holding the policy."""
        if first_loop == "stopped":
            self.check_every_call_from_a_second_loop(redis_url, near_cache, first_loop)
            return
        # The sockets of a loop that was closed under them can only close when they are
        # collected, with a ResourceWarning each (README, "Failures"); collected here,
        # so that no later test is blamed for them.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ResourceWarning)
            self.check_every_call_from_a_second_loop(redis_url, near_cache, first_loop)
            gc.collect()

    def check_every_call_from_a_second_loop(
        self, redis_url: str, near_cache: bool, first_loop: str
    ) -> None:
        backend = RedisBackend.connect(RedisStorageConfig(url=redis_url, near_cache=near_cache))
        agent = SLOT.record.agent_id

        async def first() -> None:
            await plant(backend)
            if near_cache:  # the first read starts tracking; then reads fill and hit
                await backend.policies().get_policy(agent)
                await eventually(lambda: "tracking up" in backend.near_cache_state(), "up")
                assert await backend.policies().get_policy(agent) == SLOT.policy
                assert await backend.policies().get_policy(agent) == SLOT.policy
                assert backend.stats().near_cache_hits == 1

        loop = asyncio.new_event_loop()
        try:
            loop.run_until_complete(first())
            if first_loop == "closed":
                loop.run_until_complete(loop.shutdown_asyncgens())
                for task in asyncio.all_tasks(loop):
                    task.cancel()
                loop.run_until_complete(asyncio.sleep(0.1))
                loop.close()
            calls = every_call(backend)
            # get_policy first: a failed cache_policy or invalidate drops the entry.
            for name, call in sorted(calls.items(), key=lambda item: item[0] != "get_policy"):
                with pytest.raises(StorageError, match="another event loop") as caught:
                    self.run(call)
                assert "asyncio.run called twice" in str(caught.value), name
            if first_loop == "closed":
                self.run(backend.aclose)
            else:
                loop.run_until_complete(backend.aclose())
        finally:
            loop.close()
        with pytest.raises(StorageError, match="backend is closed"):
            self.run(every_call(backend)["current"])

    def test_every_call_from_a_loop_beside_the_running_one_says_so(self, redis_url: str) -> None:
        """While the backend's loop runs in another thread, a call from this thread's loop
        is refused before anything is sent; the backend's own loop goes on using it."""
        with running_in_another_thread(redis_url) as backend:
            sent = backend.stats().commands_sent
            for name, call in every_call(backend).items():
                with pytest.raises(StorageError, match="another event loop"):
                    self.run(call)
                assert backend.stats().commands_sent == sent, name

    def test_aclose_from_a_loop_that_still_runs_elsewhere_says_so(self, redis_url: str) -> None:
        with (
            running_in_another_thread(redis_url) as backend,
            pytest.raises(StorageError, match="another event loop"),
        ):
            self.run(backend.aclose)

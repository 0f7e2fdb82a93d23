"""The near-cache's cases of ``aa-storage bench``: a ``get_policy`` hit beside raw
redis-py ``GET`` + decode, and how long a change made by another process takes to
stop this one serving the old policy.

Both run on a backend of their own with ``near_cache = true``, whatever the
config says, once its tracking is up. The other process is a spawned Python
with a plain redis-py client: it sends ``SET … EX`` and ``DEL`` in turns, as
a Rust gateway would, and says when it began each one on the machine's
monotonic clock, which both processes share.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import signal
import time
from multiprocessing.connection import Connection
from typing import Any

import attrs
import redis

from aa_storage import BackendError, NotFoundError, PolicyDocument, policy_from_json, policy_to_json
from aa_storage_redis.backend import RedisBackend
from aa_storage_redis.bench.operations import POLICY, POLICY_TTL_SECS, Caller, Subject, raw_client
from aa_storage_redis.bench.report import Progress, Propagation, Row
from aa_storage_redis.bench.timing import Budget, p99_us, percentile, timed
from aa_storage_redis.config import RedisStorageConfig
from aa_storage_redis.near_cache import NearCache
from aa_storage_redis.stats import ExecutorStats

NEAR_HIT = "get_policy_near"
"""The row of the ``get_policy`` hit from the near-cache."""
_TRACKING_PATIENCE_SECS = 10.0


async def near_cache_cases(
    config: RedisStorageConfig, budget: Budget, made: list[Caller], progress: Progress
) -> tuple[Row, Propagation, ExecutorStats]:
    """The hit row, the propagation figures, and the near-cache backend's stats;
    ``BackendError`` if tracking never comes up (a server or ACL that refuses
    ``CLIENT TRACKING``)."""
    backend = RedisBackend.connect(attrs.evolve(config, near_cache=True))
    try:
        near = await tracking_up(backend)
        row = await _hit_row(backend, budget, made, progress)
        propagation = await _propagation(backend, near, budget, made, progress)
        return row, propagation, backend.stats()
    finally:
        await backend.aclose()


async def tracking_up(backend: RedisBackend) -> NearCache:
    """``backend``'s near-cache once its tracking is up; ``BackendError`` if it does not
    come up within ``_TRACKING_PATIENCE_SECS``."""
    near = backend.near_cache
    assert near is not None
    near.wake()
    deadline = time.monotonic() + _TRACKING_PATIENCE_SECS
    while not near.live:
        if time.monotonic() > deadline:
            raise BackendError(
                f"the near-cache's tracking did not come up within {_TRACKING_PATIENCE_SECS}s: "
                f"{backend.near_cache_state()}"
            )
        await asyncio.sleep(0.01)
    return near


async def _hit_row(
    backend: RedisBackend, budget: Budget, made: list[Caller], progress: Progress
) -> Row:
    caller = Caller.new()
    made.append(caller)
    subject = Subject.over(backend)
    await subject.policies.cache_policy(caller.agent, POLICY, POLICY_TTL_SECS)
    await _fill(backend, caller)
    progress.start(f"{NEAR_HIT}, sequential, driver")
    driver = await timed(lambda s, c: s.policies.get_policy(c.agent), subject, [caller], budget)
    progress.end(driver)
    progress.start(f"{NEAR_HIT}, sequential, raw redis-py")
    async with raw_client(backend.pool.config, backend.pool.config.pool_size) as raw:
        subject = Subject.over(backend, raw)
        measured = await timed(_raw_get_and_decode, subject, [caller], budget)
    progress.end(measured)
    return Row(NEAR_HIT, 1, driver, measured, 0.0)


async def _fill(backend: RedisBackend, caller: Caller) -> PolicyDocument:
    """Read ``caller``'s policy until the near-cache holds it: a fill may be voided by
    the invalidation of this process's own write, still on its way."""
    near = backend.near_cache
    assert near is not None
    while True:
        if (cached := near.lookup(caller.agent)) is not None:
            return cached
        with contextlib.suppress(NotFoundError):
            await backend.policies().get_policy(caller.agent)
        await asyncio.sleep(0.001)


async def _raw_get_and_decode(subject: Subject, caller: Caller) -> PolicyDocument:
    data = await subject.client.get(subject.keys.policy(caller.agent))
    assert data is not None, "the policy was cached before the case began"
    return policy_from_json(data)


async def _propagation(
    backend: RedisBackend, near: NearCache, budget: Budget, made: list[Caller], progress: Progress
) -> Propagation:
    caller = Caller.new()
    made.append(caller)
    policies = backend.policies()
    key = backend.keys.policy(caller.agent)
    progress.start("near-cache invalidation from another process")
    context = multiprocessing.get_context("spawn")
    ours, theirs = context.Pipe()
    writer = context.Process(
        target=_write_when_told, args=(theirs, _client_options(backend.pool.config), key)
    )
    writer.start()
    delays: list[float] = []
    try:
        allowed = budget.allowance()
        while allowed():
            await policies.cache_policy(caller.agent, POLICY, POLICY_TTL_SECS)
            old = await _fill(backend, caller)
            await asyncio.sleep(0.001)  # let the invalidation of our own write land first
            if near.lookup(caller.agent) is not old:
                continue
            ours.send(len(delays) % 2 == 0)  # SET, then DEL, in turns
            deadline = time.perf_counter() + _TRACKING_PATIENCE_SECS
            while near.lookup(caller.agent) is old:
                if time.perf_counter() > deadline:
                    raise BackendError(
                        f"a change made by another process did not reach the near-cache "
                        f"within {_TRACKING_PATIENCE_SECS}s: {backend.near_cache_state()}"
                    )
                await asyncio.sleep(0)  # the tracking connection's push is read meanwhile
            seen = time.perf_counter()
            delays.append(seen - await asyncio.to_thread(ours.recv))
    finally:
        with contextlib.suppress(OSError):
            ours.send(None)
        await asyncio.to_thread(writer.join, 10.0)
        if writer.is_alive():
            writer.kill()
    delays.sort()
    figures = Propagation(
        changes=len(delays),
        p50_us=percentile(delays, 0.50) * 1e6,
        p99_us=p99_us(delays),
    )
    progress.finish(f"p50 {figures.p50_us:,.0f} us")
    return figures


def _client_options(config: RedisStorageConfig) -> dict[str, Any]:
    options: dict[str, Any] = {
        "url": config.effective_url,
        "socket_connect_timeout": config.connect_timeout,
        "socket_timeout": config.socket_timeout,
    }
    if config.uses_tls:
        options.update(
            ssl_ca_certs=config.ca_file, ssl_certfile=config.cert_file, ssl_keyfile=config.key_file
        )
    return options


def _write_when_told(pipe: Connection, options: dict[str, Any], key: bytes) -> None:
    """The other process: on each word from ``pipe``, change ``key`` and say when it began."""
    # Ctrl-C reaches the whole process group: the parent stops this one, by closing the pipe.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    data = policy_to_json(attrs.evolve(POLICY, version=POLICY.version + 1))
    with redis.Redis.from_url(**options) as client, contextlib.suppress(EOFError):
        while (set_it := pipe.recv()) is not None:
            began = time.perf_counter()  # CLOCK_MONOTONIC: the parent's clock too
            if set_it:
                client.set(key, data, ex=POLICY_TTL_SECS)
            else:
                client.delete(key)
            pipe.send(began)

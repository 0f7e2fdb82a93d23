"""The Redis storage driver for aa-storage: state shared by many processes.

Implements the three hot-path store contracts against one Redis (or Valkey)
deployment, so many processes coordinate through one shared cache:

- :class:`RedisSessionStore`: session records, ``SESSION_TTL_SECS`` after the last save;
- :class:`RedisRateLimitCounter`: fixed-window counters, windows timed by the server;
- :class:`RedisPolicyStore`: a read-through policy cache (``cache_policy``,
  ``DEFAULT_POLICY_CACHE_TTL_SECS`` is the suggested TTL).

Build a :class:`RedisBackend` from a :class:`RedisStorageConfig` and hand out
its stores, or build each store directly over a shared :class:`Pool` (the
:class:`Executor`, which runs every command) from :func:`build_pool`. The key
layout (``aa:session:<hex32>``, ``aa:ratelimit:<key>``, ``aa:policy:<hex32>``)
and value formats are the Rust
``aa-storage-redis`` crate's, so Python and Rust processes can share a Redis.
"""

from aa_storage.contracts import DEFAULT_POLICY_CACHE_TTL_SECS, SESSION_TTL_SECS
from aa_storage_redis.backend import RedisBackend
from aa_storage_redis.builder import build_pool
from aa_storage_redis.config import RedisStorageConfig
from aa_storage_redis.executor import Executor, Pool
from aa_storage_redis.hooks import DRIVER_NAME, register
from aa_storage_redis.policies import RedisPolicyStore
from aa_storage_redis.rate_limit import RedisRateLimitCounter
from aa_storage_redis.sessions import RedisSessionStore
from aa_storage_redis.stats import ExecutorStats

__all__ = [
    "DEFAULT_POLICY_CACHE_TTL_SECS",
    "DRIVER_NAME",
    "SESSION_TTL_SECS",
    "Executor",
    "ExecutorStats",
    "Pool",
    "RedisBackend",
    "RedisPolicyStore",
    "RedisRateLimitCounter",
    "RedisSessionStore",
    "RedisStorageConfig",
    "build_pool",
    "register",
]

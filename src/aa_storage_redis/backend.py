"""One Redis deployment: its pool, and the three stores over it."""

from __future__ import annotations

import attrs

from aa_storage import BackendInfo, StorageError
from aa_storage_redis.config import RedisStorageConfig
from aa_storage_redis.policies import RedisPolicyStore
from aa_storage_redis.pool import Pool, build_pool
from aa_storage_redis.rate_limit import RedisRateLimitCounter
from aa_storage_redis.sessions import RedisSessionStore

_SAFE_EVICTION_POLICY = "noeviction"


@attrs.define
class RedisBackend:
    """The stores of one Redis deployment, sharing one connection pool."""

    pool: Pool

    @classmethod
    def connect(cls, config: RedisStorageConfig | None = None) -> RedisBackend:
        """A backend for ``config`` (the defaults when ``None``). Lazy: the first
        store call opens the first connection."""
        return cls(build_pool(config or RedisStorageConfig()))

    def sessions(self) -> RedisSessionStore:
        return RedisSessionStore(self.pool)

    def rate_limiter(self) -> RedisRateLimitCounter:
        return RedisRateLimitCounter(self.pool)

    def policies(self) -> RedisPolicyStore:
        return RedisPolicyStore(self.pool)

    async def describe(self) -> BackendInfo:
        """Server version and mode, TLS, the user, and a warning when the
        eviction policy could silently drop counters and sessions."""
        server = _parse_info(await self.pool.execute("INFO", "server", idempotent=True))
        memory = _parse_info(await self.pool.execute("INFO", "memory", idempotent=True))
        try:
            user = (await self.pool.execute("ACL", "WHOAMI", idempotent=True)).decode()
        except StorageError:
            user = "unknown (ACL WHOAMI not permitted)"
        name = server.get("server_name", "redis")
        version = server.get(f"{name}_version") or server.get("redis_version", "unknown")
        policy = memory.get("maxmemory_policy", "unknown")
        facts = (
            ("server", f"{self.pool.server}"),
            ("version", f"{name} {version}"),
            ("mode", server.get("redis_mode", server.get("server_mode", "unknown"))),
            ("tls", "on" if self.pool.config.uses_tls else "off"),
            ("user", user),
            ("key_prefix", self.pool.keys.prefix),
            ("maxmemory_policy", policy),
        )
        warnings: tuple[str, ...] = ()
        if policy != _SAFE_EVICTION_POLICY:
            warnings = (
                f"maxmemory-policy is {policy}: under memory pressure Redis may evict "
                "rate-limit counters and sessions, which silently resets limits; "
                "use noeviction for the keys of this driver",
            )
        return BackendInfo(facts=facts, warnings=warnings)

    async def aclose(self) -> None:
        """Close every connection of the pool."""
        await self.pool.aclose()


def _parse_info(reply: bytes) -> dict[str, str]:
    fields: dict[str, str] = {}
    for line in reply.decode(errors="replace").splitlines():
        name, separator, value = line.partition(":")
        if separator and not line.startswith("#"):
            fields[name] = value
    return fields

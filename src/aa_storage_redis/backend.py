"""One Redis deployment: its pool, and the three stores over it."""

from __future__ import annotations

import logging

import attrs

from aa_storage import BackendError, BackendInfo, PolicyDocument, SessionRecord
from aa_storage.readthrough import SingleFlight
from aa_storage_redis.builder import build_parts
from aa_storage_redis.config import RedisStorageConfig
from aa_storage_redis.decoded import Decoded
from aa_storage_redis.executor import Executor
from aa_storage_redis.keys import KeySpace
from aa_storage_redis.leases import Leases
from aa_storage_redis.near_cache import NearCache
from aa_storage_redis.policies import RedisPolicyStore
from aa_storage_redis.rate_limit import RedisRateLimitCounter
from aa_storage_redis.scripts import PROBE
from aa_storage_redis.sessions import RedisSessionStore, SessionReply
from aa_storage_redis.stats import ExecutorStats
from aa_storage_redis.tracking import Tracker
from aa_storage_redis.urls import CLUSTER, SENTINEL, Deployment, default_port_of

logger = logging.getLogger(__name__)

_SAFE_EVICTION_POLICY = "noeviction"
_DENIED = "not permitted ({command} is denied to this user)"


@attrs.define
class RedisBackend:
    """The stores of one Redis deployment, sharing one executor (its connections),
    one key space, and, with ``near_cache`` on, one near-cache kept honest by its
    tracker. The backend hands each store what it needs of these."""

    executor: Executor
    keys: KeySpace
    near_cache: NearCache | None = attrs.field(default=None, repr=False)
    _tracker: Tracker | None = attrs.field(default=None, repr=False)
    _flights: SingleFlight = attrs.field(factory=SingleFlight, init=False, repr=False)
    _leases: Leases = attrs.field(init=False, repr=False)
    _decoded_policies: Decoded[bytes, PolicyDocument] = attrs.field(
        factory=Decoded, init=False, repr=False
    )
    _decoded_sessions: Decoded[SessionReply, SessionRecord] = attrs.field(
        factory=Decoded, init=False, repr=False
    )

    def __attrs_post_init__(self) -> None:
        # The metrics observe what stats() says, near-cache included.
        self.executor.telemetry.stats = self.stats

    @_leases.default
    def _shared_leases(self) -> Leases:
        config = self.executor.config
        return Leases(self.executor, self.keys, config.lease_ttl, config.lease_wait)

    @classmethod
    def connect(cls, config: RedisStorageConfig | None = None) -> RedisBackend:
        """A backend for ``config`` (the defaults when ``None``). Lazy: the first
        store call opens the first connection. Logs one warning per cluster node or
        sentinel that the URL gives without a port, naming the port assumed."""
        config = config or RedisStorageConfig()
        _warn_of_assumed_ports(config.deployment)
        parts = build_parts(config)
        return cls(parts.executor, parts.keys, parts.near_cache, parts.tracker)

    @property
    def pool(self) -> Executor:
        """The executor, by the seed's name (``Pool``)."""
        return self.executor

    def sessions(self) -> RedisSessionStore:
        return RedisSessionStore(self.executor, self.keys, self._decoded_sessions)

    def rate_limiter(self) -> RedisRateLimitCounter:
        return RedisRateLimitCounter(self.executor, self.keys)

    def policies(self) -> RedisPolicyStore:
        return RedisPolicyStore(
            self.executor,
            self._flights,
            self.keys,
            self.near_cache,
            self._leases,
            self._decoded_policies,
        )

    def stats(self) -> ExecutorStats:
        """Counters of the execution core (commands, socket writes, reconnects,
        timeouts, pending commands) and of the near-cache. Costs no I/O and no lock."""
        stats = self.executor.stats()
        near = self.near_cache
        if near is None:
            return stats
        return attrs.evolve(
            stats,
            near_cache_hits=near.hits,
            near_cache_misses=near.misses,
            near_cache_flushes=near.flushes,
        )

    def near_cache_state(self) -> str:
        """``off``, or the near-cache's tracking and entries, as ``check`` shows them."""
        near, tracker = self.near_cache, self._tracker
        if near is None or tracker is None:
            return "off"
        return f"on, tracking {tracker.state}, {len(near)} of {near.size} entries"

    async def describe(self) -> BackendInfo:
        """Server version and mode, TLS, the user, the near-cache (off, or its
        tracking and entries), and a warning when the eviction policy could
        silently drop counters and sessions.

        A fact the user's ACL does not let it read (``INFO`` gives the version,
        mode and eviction policy, ``ACL WHOAMI`` the user) is shown as "not
        permitted", and no warning is given about a policy it could not read.
        An unreachable server raises ``BackendError``.
        """
        shape, shape_warnings = await self.executor.describe_topology()
        server = await self._info("server")
        memory = await self._info("memory")
        whoami = await self._optional("ACL", "WHOAMI")
        version = mode = policy = _DENIED.format(command="INFO")
        if server is not None:
            name = server.get("server_name", "redis")
            number = server.get(f"{name}_version") or server.get("redis_version", "unknown")
            version = f"{name} {number}"
            mode = server.get("redis_mode") or server.get("server_mode", "unknown")
        read_policy = None if memory is None else memory.get("maxmemory_policy")
        if memory is not None:
            policy = read_policy or "unknown"
        facts = (
            ("server", self.executor.server),
            *shape,
            ("version", version),
            ("mode", mode),
            ("tls", "on" if self.executor.config.uses_tls else "off"),
            ("user", whoami.decode() if whoami else _DENIED.format(command="ACL WHOAMI")),
            ("key_prefix", self.keys.prefix),
            ("maxmemory_policy", policy),
            ("scripts", await self._script_mode()),
            ("near_cache", self.near_cache_state()),
            ("telemetry", self.executor.telemetry.state()),
            ("traffic", _traffic(self.stats())),
        )
        warnings: tuple[str, ...] = ()
        if read_policy not in (None, _SAFE_EVICTION_POLICY):
            warnings = (
                f"maxmemory-policy is {policy}, not noeviction: under memory pressure the "
                "server may evict rate-limit counters and sessions, which silently resets limits",
            )
        return BackendInfo(facts=facts, warnings=shape_warnings + warnings)

    async def _info(self, section: str) -> dict[str, str] | None:
        """One section of ``INFO`` as a dict, or None when the ACL does not permit it."""
        reply = await self._optional("INFO", section)
        return None if reply is None else _parse_info(reply)

    async def _optional(self, *command: str) -> bytes | None:
        """The reply, or None when the user's ACL does not permit the command."""
        try:
            reply: bytes = await self.executor.execute(*command, key=None, read=True)
        except BackendError as exc:
            if "permission denied" not in str(exc):
                raise
            return None
        return reply

    async def _script_mode(self) -> str:
        """How scripts reach this server: by SHA, or in full when EVALSHA is refused."""
        # The first run sends the body, the second goes by SHA, so the second
        # finds out whether the server accepts EVALSHA.
        for _ in range(2):
            await self.executor.run_script(PROBE, [], [], read=True)
        if self.executor.evalsha_refused:
            return "sent in full with EVAL: the server refuses EVALSHA"
        return "by SHA (EVALSHA)"

    async def aclose(self) -> None:
        """Refuse new calls, stop the near-cache's tracking, let the calls in flight
        finish or fail within the timeouts, then close every connection. Idempotent.

        From another event loop than the backend's: once that loop is closed, only
        marks the backend closed (its connections cannot be closed without it; their
        sockets go when it is collected); while it still runs, raises
        ``StorageError`` and leaves the backend open."""
        if not self.executor.refuse_calls():
            return
        if self._tracker is not None:
            await self._tracker.aclose()
        await self.executor.aclose()


def _warn_of_assumed_ports(deployment: Deployment) -> None:
    """A cluster node or a sentinel rarely listens on the default port, so using it
    silently would hide a forgotten port."""
    what = {CLUSTER: "cluster node", SENTINEL: "sentinel"}.get(deployment.topology)
    if what is None:
        return
    for host in deployment.without_port:
        logger.warning(
            "the URL gives %s %s no port; assuming %d, the default port of a %s "
            "(write %s:PORT to choose another)",
            what,
            host,
            default_port_of(deployment.topology),
            what,
            host,
        )


def _parse_info(reply: bytes) -> dict[str, str]:
    fields: dict[str, str] = {}
    for line in reply.decode(errors="replace").splitlines():
        name, separator, value = line.partition(":")
        if separator and not line.startswith("#"):
            fields[name] = value
    return fields


def _traffic(stats: ExecutorStats) -> str:
    return (
        f"{stats.commands_sent} commands in {stats.socket_writes} socket writes "
        f"(mean {stats.mean_commands_per_write:.1f}, "
        f"max {stats.max_commands_per_write} per write), "
        f"{stats.connections_opened} connections opened, {stats.reconnects} reconnects, "
        f"{stats.timeouts} timeouts, peak {stats.peak_pending} pending"
    )

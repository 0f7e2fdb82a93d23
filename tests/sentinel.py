"""A local Sentinel set: a primary, 2 replicas and 3 sentinels, on Redis or Valkey.

Every change made through ``SentinelSet`` (start, failover) returns only once all running
sentinels agree on the primary; each wait polls with a deadline and fails with the processes'
log tails. The processes are RedisServer objects, so the ``atexit`` hook of tests/servers.py
stops them even if a test crashes.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any, Self

import redis

from servers import (
    LOOPBACK,
    RedisServer,
    RedisServerError,
    stable_ports,
    topology_url,
    wait_until,
)

SERVICE = "aa-service"
REPLICAS = 2
SENTINELS = 3
QUORUM = 2
# Fast enough for failover tests; a busy machine would need a 1 s stall of a server to trip it.
DOWN_AFTER_MS = 1000
FAILOVER_TIMEOUT_MS = 5000
CONVERGENCE_TIMEOUT = 30.0
# redis-py's names for the flags under which a sentinel does not count an instance as healthy.
UNHEALTHY_FLAGS = ("is_sdown", "is_odown", "is_disconnected")


class SentinelSet:
    """A primary with 2 replicas, monitored as ``SERVICE`` by 3 sentinels (quorum 2).

    ``start()`` returns once every sentinel names the same primary, lists both replicas and
    the other two sentinels as healthy, and both replicas' links are up. ``password`` protects
    the data nodes' default user (sentinels use it as ``auth-pass``, replicas as
    ``masterauth``); ``acl_users`` are created on the data nodes (see RedisServer).
    ``sentinel_password`` protects the sentinels' default user. Use as a context manager, or
    call ``close()``.

    The data nodes are plain RedisServer objects: one restarted with ``restart()`` comes back
    as an empty primary until the sentinels turn it into a replica (ten seconds or so).
    """

    def __init__(
        self,
        binary: str = "redis-server",
        *,
        password: str | None = None,
        sentinel_password: str | None = None,
        acl_users: Sequence[str] = (),
    ) -> None:
        """Prepare (but do not start) the six processes."""
        self.binary = binary
        self.password = password
        self.sentinel_password = sentinel_password
        self.acl_users = list(acl_users)
        self.data_nodes: list[RedisServer] = []
        self.sentinels: list[RedisServer] = []

    # --- addresses -------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """``redis+sentinel://[:password@]127.0.0.1:S1,...,127.0.0.1:S3/SERVICE``."""
        return self.url_for()

    def url_for(
        self,
        sentinels: Sequence[RedisServer] | None = None,
        *,
        user: str | None = None,
        password: str | None = None,
    ) -> str:
        """A sentinel URL listing ``sentinels`` (default: all three) with data-node credentials.

        With neither credential given, the URL carries the data nodes' ``password`` (if any).
        """
        listed = self.sentinels if sentinels is None else sentinels
        if user is None and password is None:
            password = self.password
        ports = [sentinel.port for sentinel in listed]
        return topology_url(
            "redis+sentinel", ports, user=user, password=password, path=f"/{SERVICE}"
        )

    # --- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Start the data nodes, then the sentinels, and wait until they all agree.

        Each sentinel's config file already lists the replicas and the other sentinels (as
        the sentinels themselves would record them), which spares the seconds of discovery
        through INFO and hello messages; agreement is still checked, not assumed. Raises
        RedisServerError (with the log tails) if it takes longer than CONVERGENCE_TIMEOUT;
        the processes are then already closed.
        """
        if self.data_nodes:
            raise RedisServerError("the sentinel set was already started")
        try:
            primary = self._start(self._data_node())
            for _ in range(REPLICAS):
                replica = self._start(self._data_node())
                with replica.client() as client:
                    # At run time rather than --replicaof: Valkey would wait a second to connect.
                    client.replicaof(LOOPBACK, primary.port)
            ports = stable_ports(SENTINELS)
            ids = [secrets.token_hex(20) for _ in ports]
            for port, myid in zip(ports, ids, strict=True):
                peers = {other: ids[n] for n, other in enumerate(ports) if other != port}
                self.sentinels.append(self._start(self._sentinel(port, myid, peers)))
            self.wait_until_agreed()
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Kill every process and delete their directories. Idempotent."""
        for server in [*self.sentinels, *self.data_nodes]:
            # SIGKILL: nothing is persisted, and a SIGTERMed primary waits for its replicas.
            server.kill()
            server.close()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # --- the primary -----------------------------------------------------------------------

    def current_primary(self) -> RedisServer:
        """The data node the first answering sentinel names as primary."""
        for sentinel in self.sentinels:
            if sentinel.running:
                try:
                    return self._named_primary(sentinel)
                except redis.ConnectionError:
                    continue
        raise RedisServerError("no sentinel answers")

    def replicas(self) -> list[RedisServer]:
        """The data nodes other than the current primary, dead ones included."""
        primary = self.current_primary()
        return [node for node in self.data_nodes if node is not primary]

    def failover(self) -> RedisServer:
        """SENTINEL FAILOVER; return the new primary once every running sentinel names it.

        Like ``wait_for_new_primary``, this does not wait for the old primary to be turned
        into a replica: the sentinels do that on their own schedule, ten seconds or so later.
        """
        old = self.start_failover()
        return self.wait_for_new_primary(old)

    def start_failover(self) -> RedisServer:
        """Send SENTINEL FAILOVER to the first running sentinel and return the primary
        it replaces, without waiting: the failover is under way, nothing more."""
        old = self.current_primary()
        sentinel = next(sentinel for sentinel in self.sentinels if sentinel.running)
        with self._client(sentinel) as client:
            try:
                client.execute_command("SENTINEL", "FAILOVER", SERVICE)
            except redis.ResponseError as error:
                raise RedisServerError(f"SENTINEL FAILOVER failed: {error}") from error
        return old

    def kill_primary(self) -> RedisServer:
        """SIGKILL the current primary and return it; see ``wait_for_new_primary``."""
        primary = self.current_primary()
        primary.kill()
        return primary

    def wait_for_new_primary(self, old: RedisServer) -> RedisServer:
        """Wait until every running sentinel names one primary other than ``old``; return it.

        By then the new primary reports role master and every other running data node but
        ``old`` replicates it with its link up.
        """
        self._wait(lambda: self._agreement_gap(excluded=(old,)))
        return self.current_primary()

    def wait_until_agreed(self) -> None:
        """Wait until the running sentinels agree on the primary and all data nodes follow it.

        Every running sentinel names the same primary, lists every other running sentinel
        and every running replica without a down flag, and each running replica reports its
        link to that primary up.
        """
        self._wait(lambda: self._agreement_gap(excluded=()))

    def stop_sentinel(self, index: int) -> None:
        """Stop sentinel ``index`` (0-2); the others keep monitoring."""
        self.sentinels[index].stop()

    def flushall(self) -> None:
        """Delete every key on the current primary (the replicas follow)."""
        self.current_primary().flushall()

    def log_tails(self, lines: int = 15) -> str:
        """The last ``lines`` log lines of every process, each headed by its role and port."""
        parts = [f"=== data node {n.port} ===\n{n.log_tail(lines)}" for n in self.data_nodes]
        parts += [f"=== sentinel {s.port} ===\n{s.log_tail(lines)}" for s in self.sentinels]
        return "\n".join(parts)

    # --- internals -------------------------------------------------------------------------

    def _data_node(self) -> RedisServer:
        # A replica's first sync would otherwise wait 5 s for others to join it.
        extra = ["--repl-diskless-sync-delay", "0"]
        if self.password is not None:
            extra += ["--masterauth", self.password]
        node = RedisServer(
            self.binary, admin_password=self.password, acl_users=self.acl_users, extra_args=extra
        )
        self.data_nodes.append(node)
        return node

    def _sentinel(self, port: int, myid: str, peers: dict[int, str]) -> RedisServer:
        """A sentinel on ``port`` with id ``myid``, told of the replicas and of ``peers``."""
        primary, *replicas = self.data_nodes
        lines = [
            f"sentinel myid {myid}",
            "sentinel resolve-hostnames no",
            f"sentinel monitor {SERVICE} {LOOPBACK} {primary.port} {QUORUM}",
            f"sentinel down-after-milliseconds {SERVICE} {DOWN_AFTER_MS}",
            f"sentinel failover-timeout {SERVICE} {FAILOVER_TIMEOUT_MS}",
            f"sentinel parallel-syncs {SERVICE} {REPLICAS}",
        ]
        lines += [f"sentinel known-replica {SERVICE} {LOOPBACK} {node.port}" for node in replicas]
        lines += [
            f"sentinel known-sentinel {SERVICE} {LOOPBACK} {peer} {peer_id}"
            for peer, peer_id in peers.items()
        ]
        if self.password is not None:
            lines.append(f"sentinel auth-pass {SERVICE} {_quoted(self.password)}")
        if self.sentinel_password is not None:
            lines.append(f"sentinel sentinel-pass {_quoted(self.sentinel_password)}")
        return RedisServer(
            self.binary,
            admin_password=self.sentinel_password,
            config="\n".join(lines) + "\n",
            extra_args=["--sentinel"],
            port_picker=lambda count: [port],
        )

    @staticmethod
    def _start(server: RedisServer) -> RedisServer:
        server.start()
        return server

    def _client(self, sentinel: RedisServer) -> redis.Redis:
        return sentinel.client(decode_responses=True)

    def _named_primary(self, sentinel: RedisServer) -> RedisServer:
        with self._client(sentinel) as client:
            address = client.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", SERVICE)
        if address is None:
            raise RedisServerError(f"sentinel {sentinel.port} does not know {SERVICE}")
        port = int(address[1])
        for node in self.data_nodes:
            if node.port == port:
                return node
        raise RedisServerError(f"sentinel {sentinel.port} names an unknown primary, port {port}")

    def _wait(self, missing: Callable[[], str | None]) -> None:
        wait_until(missing, timeout=CONVERGENCE_TIMEOUT, diagnostics=self.log_tails)

    def _agreement_gap(self, excluded: Sequence[RedisServer]) -> str | None:
        sentinels = [sentinel for sentinel in self.sentinels if sentinel.running]
        named = {sentinel.port: self._named_primary(sentinel) for sentinel in sentinels}
        primary, *others = set(named.values())
        if others:
            ports = {sentinel: node.port for sentinel, node in named.items()}
            return f"the sentinels name different primaries (sentinel: primary): {ports}"
        if primary in excluded:
            return f"the sentinels still name {primary.port}"
        if not primary.running:
            return f"the sentinels name {primary.port}, which is not running"
        with primary.client() as client:
            role = client.info("replication")["role"]
        if role != "master":
            return f"the named primary {primary.port} reports role:{role}"
        for sentinel in sentinels:
            gap = self._sentinel_gap(sentinel, sentinels, primary, excluded)
            if gap is not None:
                return gap
        return self._replication_gap(primary, excluded)

    def _sentinel_gap(
        self,
        sentinel: RedisServer,
        sentinels: list[RedisServer],
        primary: RedisServer,
        excluded: Sequence[RedisServer],
    ) -> str | None:
        with self._client(sentinel) as client:
            replicas = _healthy_ports(client.sentinel_slaves(SERVICE))
            peers = _healthy_ports(client.sentinel_sentinels(SERVICE))
        expected = {
            node.port
            for node in self.data_nodes
            if node.running and node is not primary and node not in excluded
        }
        if not expected <= replicas:
            return f"sentinel {sentinel.port} lists healthy replicas {replicas}, not {expected}"
        expected = {peer.port for peer in sentinels if peer is not sentinel}
        if not expected <= peers:
            return f"sentinel {sentinel.port} lists healthy sentinels {peers}, not {expected}"
        return None

    def _replication_gap(self, primary: RedisServer, excluded: Sequence[RedisServer]) -> str | None:
        for node in self.data_nodes:
            if node is primary or node in excluded or not node.running:
                continue
            with node.client() as client:
                info = client.info("replication")
            if info["role"] != "slave" or info.get("master_port") != primary.port:
                return f"data node {node.port} does not replicate {primary.port} yet"
            if info.get("master_link_status") != "up":
                return f"data node {node.port}'s link to {primary.port} is not up"
        return None


def _healthy_ports(instances: list[dict[str, Any]]) -> set[int]:
    """Ports of the SENTINEL REPLICAS/SENTINELS entries that carry no down flag."""
    return {
        instance["port"]
        for instance in instances
        if not any(instance[flag] for flag in UNHEALTHY_FLAGS)
    }


def _quoted(value: str) -> str:
    """``value`` as a double-quoted config-file argument, so spaces and quotes survive."""
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'

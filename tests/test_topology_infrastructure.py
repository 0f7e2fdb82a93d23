"""The local cluster and sentinel set behave as the topology tests assume, on Redis and Valkey."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from redis.asyncio.cluster import RedisCluster
from redis.crc import key_slot

from cluster import BUS_PORT_OFFSET, SLOTS, ClusterNode, LocalCluster
from sentinel import SERVICE, SentinelSet
from servers import RedisServerError, stable_ports, wait_until

# Characters that need escaping in a URL, on a command line and in a config file.
PASSWORD = 'topo p@ss/wo"rd'
SENTINEL_PASSWORD = 'sentinel "p@ss" \\'


def _cluster_info(node: ClusterNode) -> dict[str, str]:
    """CLUSTER INFO as the node itself reports it, read without the fixture's helpers."""
    with node.client(decode_responses=True) as client:
        text = client.execute_command("CLUSTER", "INFO")
    return dict(line.split(":", 1) for line in text.splitlines() if ":" in line)


def _keys_in_slot(node: ClusterNode, slot: int) -> int:
    with node.client() as client:
        count: int = client.execute_command("CLUSTER", "COUNTKEYSINSLOT", slot)
    return count


def _write_owned(cluster: LocalCluster, keys: list[bytes]) -> None:
    """SET each key to itself on the primary that serves its slot."""
    for key in keys:
        with cluster.primary_for_slot(key_slot(key)).client() as client:
            client.set(key, key)


def _read_owned(cluster: LocalCluster, keys: list[bytes]) -> dict[bytes, bytes | None]:
    """GET each key from the primary that now serves its slot."""
    values = {}
    for key in keys:
        with cluster.primary_for_slot(key_slot(key)).client() as client:
            values[key] = client.get(key)
    return values


@pytest.fixture
def emptied_cluster(redis_cluster: LocalCluster) -> Iterator[LocalCluster]:
    """The session cluster, with no keys before or after the test."""
    redis_cluster.flushall()
    yield redis_cluster
    redis_cluster.flushall()


# --- cluster ---


def test_cluster_serves_every_slot_from_three_replicated_primaries(
    redis_cluster: LocalCluster,
) -> None:
    """Three primaries split all 16384 slots and each has exactly one replica of its own."""
    primaries = redis_cluster.primaries()
    replicas = redis_cluster.replicas()
    assert len(primaries) == 3
    assert len(replicas) == 3
    owned = [set(redis_cluster.slots_of(primary)) for primary in primaries]
    assert set().union(*owned) == set(range(SLOTS))
    assert sum(len(slots) for slots in owned) == SLOTS
    assert {redis_cluster.primary_of(replica) for replica in replicas} == set(primaries)
    for node in redis_cluster.nodes:
        info = _cluster_info(node)
        assert info["cluster_state"] == "ok"
        assert info["cluster_slots_ok"] == str(SLOTS)
        assert info["cluster_known_nodes"] == "6"
    for replica in replicas:
        with replica.client() as client:
            link = client.info("replication")
        assert link["master_link_status"] == "up"
        assert link["master_port"] == redis_cluster.primary_of(replica).port


def test_cluster_url_lists_two_seed_nodes(redis_cluster: LocalCluster) -> None:
    """The URL is the driver's cluster form, seeded with the first two nodes."""
    first, second, third = redis_cluster.nodes[:3]
    assert redis_cluster.url == (f"redis+cluster://127.0.0.1:{first.port},127.0.0.1:{second.port}")
    assert redis_cluster.url_for([third], user="u", password="p w") == (
        f"redis+cluster://u:p%20w@127.0.0.1:{third.port}"
    )


@pytest.mark.asyncio
async def test_keys_written_by_a_cluster_client_land_on_their_slot_owner(
    emptied_cluster: LocalCluster,
) -> None:
    """redis-py's cluster client puts each key on the primary the fixture says owns its slot."""
    keys = [f"aa:infra:{i}".encode() for i in range(60)]
    seed = emptied_cluster.nodes[0]
    client = RedisCluster(host=seed.server.host, port=seed.port)
    try:
        for key in keys:
            await client.set(key, b"v")
    finally:
        await client.aclose()
    owners = set()
    for key in keys:
        slot = key_slot(key)
        owner = emptied_cluster.primary_for_slot(slot)
        owners.add(owner)
        for primary in emptied_cluster.primaries():
            assert _keys_in_slot(primary, slot) == (1 if primary is owner else 0)
    assert len(owners) == 3


def test_manual_failover_promotes_the_replica_with_the_data(
    fresh_redis_cluster: LocalCluster,
) -> None:
    """After a manual failover the replica serves the old primary's slots and keys."""
    cluster = fresh_redis_cluster
    keys = [f"aa:failover:{i}".encode() for i in range(60)]
    _write_owned(cluster, keys)
    old = cluster.primaries()[0]
    slots = cluster.slots_of(old)
    replica = cluster.replica_of(old)
    cluster.manual_failover(replica)
    assert cluster.slots_of(replica) == slots
    assert cluster.primary_of(old) is replica
    with replica.client() as client:
        assert client.info("replication")["role"] == "master"
    assert _read_owned(cluster, keys) == {key: key for key in keys}


def _keys_in_slots(slots: list[int], per_slot: int) -> list[bytes]:
    """``per_slot`` distinct keys for each of ``slots``."""
    wanted = dict.fromkeys(slots, per_slot)
    keys = []
    candidate = 0
    while any(wanted.values()):
        key = f"aa:reshard:{candidate}".encode()
        slot = key_slot(key)
        if wanted.get(slot):
            wanted[slot] -= 1
            keys.append(key)
        candidate += 1
    return keys


def test_password_cluster_moves_slots_with_their_keys(topology_binary: str) -> None:
    """With a password, migrate_slot (past one batch) and reshard move slots with all their keys."""
    with LocalCluster(topology_binary, password=PASSWORD) as cluster:
        anonymous = cluster.nodes[0].client(password=None)
        with anonymous, pytest.raises(redis.AuthenticationError):
            anonymous.ping()
        crowded = [f"aa:{{crowd}}:{i}".encode() for i in range(250)]
        slot = key_slot(crowded[0])
        source = cluster.primary_for_slot(slot)
        target = next(node for node in cluster.primaries() if node is not source)
        resharded = _keys_in_slots(cluster.slots_of(source)[:5], per_slot=2)
        _write_owned(cluster, crowded + resharded)
        cluster.migrate_slot(slot, source, target)
        assert cluster.primary_for_slot(slot) is target
        assert (_keys_in_slot(source, slot), _keys_in_slot(target, slot)) == (0, len(crowded))
        moved = cluster.reshard(5, source, target)
        assert {key_slot(key) for key in resharded} == set(moved)
        assert all(cluster.primary_for_slot(slot) is target for slot in moved)
        assert _read_owned(cluster, crowded + resharded) == {k: k for k in crowded + resharded}
        for node in cluster.nodes:
            assert _cluster_info(node)["cluster_state"] == "ok"


def test_killed_primary_is_replaced_and_rejoins_as_a_replica(
    fresh_redis_cluster: LocalCluster,
) -> None:
    """A SIGKILLed primary's replica takes its slots; restarted, the old primary replicates it."""
    cluster = fresh_redis_cluster
    victim = cluster.primaries()[1]
    slots = cluster.slots_of(victim)
    heir = cluster.replica_of(victim)
    cluster.kill(victim)
    cluster.wait_until_converged()
    assert cluster.slots_of(heir) == slots
    assert victim not in cluster.primaries()
    cluster.restart(victim)
    assert cluster.primary_of(victim) is heir
    assert len(cluster.primaries()) == 3


# --- sentinel ---


def _named_primaries(sentinels: SentinelSet) -> set[int]:
    """The primary port each running sentinel names, read without the fixture's helpers."""
    ports = set()
    for sentinel in sentinels.sentinels:
        if sentinel.running:
            with sentinel.client(decode_responses=True) as client:
                _, port = client.sentinel_get_master_addr_by_name(SERVICE)
            ports.add(int(port))
    return ports


def test_sentinels_agree_on_the_primary_and_know_everyone(sentinel_set: SentinelSet) -> None:
    """Every sentinel names the same primary and knows both replicas and both other sentinels."""
    primary = sentinel_set.current_primary()
    assert _named_primaries(sentinel_set) == {primary.port}
    replica_ports = {node.port for node in sentinel_set.replicas()}
    assert len(replica_ports) == 2
    for sentinel in sentinel_set.sentinels:
        with sentinel.client(decode_responses=True) as client:
            assert {r["port"] for r in client.sentinel_slaves(SERVICE)} == replica_ports
            others = {s["port"] for s in client.sentinel_sentinels(SERVICE)}
        assert others == {s.port for s in sentinel_set.sentinels if s is not sentinel}
    for replica in sentinel_set.replicas():
        with replica.client() as client:
            assert client.info("replication")["master_link_status"] == "up"


def test_sentinel_url_lists_every_sentinel_and_the_service(sentinel_set: SentinelSet) -> None:
    """The URL is the driver's sentinel form: the three sentinels, then the service name."""
    hosts = ",".join(f"127.0.0.1:{s.port}" for s in sentinel_set.sentinels)
    assert sentinel_set.url == f"redis+sentinel://{hosts}/{SERVICE}"


def test_sentinel_failover_moves_the_primary_for_every_sentinel(
    fresh_sentinel_set: SentinelSet,
) -> None:
    """SENTINEL FAILOVER promotes a replica that keeps the data, and all sentinels name it."""
    sentinels = fresh_sentinel_set
    old = sentinels.current_primary()
    with old.client() as client:
        client.set(b"aa:before", b"failover")
        assert client.wait(2, 10_000) == 2
    new = sentinels.failover()
    assert new is not old
    assert _named_primaries(sentinels) == {new.port}
    with new.client() as client:
        assert client.info("replication")["role"] == "master"
        assert client.get(b"aa:before") == b"failover"


def test_password_set_replaces_a_killed_primary(topology_binary: str) -> None:
    """With both passwords, two of three sentinels still promote a replica after a SIGKILL."""
    with SentinelSet(
        topology_binary, password=PASSWORD, sentinel_password=SENTINEL_PASSWORD
    ) as sentinels:
        for server in (sentinels.sentinels[0], sentinels.current_primary()):
            anonymous = server.client(password=None)
            with anonymous, pytest.raises(redis.AuthenticationError):
                anonymous.ping()
        sentinels.stop_sentinel(2)
        old = sentinels.kill_primary()
        new = sentinels.wait_for_new_primary(old)
        assert new is not old
        assert new in sentinels.data_nodes
        assert _named_primaries(sentinels) == {new.port}


# --- the helpers underneath ---


def test_stable_ports_leave_the_ephemeral_range_and_bus_ports_free() -> None:
    """Cluster ports lie below the kernel's ephemeral range, with distinct, bindable bus ports."""
    ephemeral_low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    ports = stable_ports(6, companion_offset=BUS_PORT_OFFSET)
    everything = ports + [port + BUS_PORT_OFFSET for port in ports]
    assert len(set(everything)) == 12
    assert max(everything) < ephemeral_low
    for port in everything:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))


def test_a_wait_that_never_converges_names_the_gap_and_shows_the_logs() -> None:
    """wait_until gives up after its timeout with the last gap and the diagnostics."""
    with pytest.raises(RedisServerError, match=r"(?s)after 0.1s: node 7 is late\n--- tails ---"):
        wait_until(lambda: "node 7 is late", timeout=0.1, diagnostics=lambda: "--- tails ---")


def test_cluster_log_tails_head_each_node(redis_cluster: LocalCluster) -> None:
    """log_tails, shown when a wait times out, has a headed section of log for every node."""
    tails = redis_cluster.log_tails(lines=3)
    for node in redis_cluster.nodes:
        section = tails.split(f"=== {node} ===\n", 1)[1]
        assert section.startswith("--- server.log ---\n")

"""Building the driver for a config: its nodes, its topology, the executor over them,
and the near-cache with its tracker."""

from __future__ import annotations

import ipaddress
import logging
from functools import partial
from typing import Any

import attrs
from redis.asyncio.connection import Connection, SSLConnection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from aa_storage.redaction import redact_url
from aa_storage_redis.cluster import Cluster
from aa_storage_redis.config import RedisStorageConfig
from aa_storage_redis.executor import Executor
from aa_storage_redis.keys import KeySpace
from aa_storage_redis.near_cache import NearCache
from aa_storage_redis.node import Node
from aa_storage_redis.redis_py import verify as verify_redis_py
from aa_storage_redis.sentinel import Sentinel
from aa_storage_redis.stats import Counters
from aa_storage_redis.topology import Address, Standalone, Topology
from aa_storage_redis.tracking import Tracker
from aa_storage_redis.urls import CLUSTER, SENTINEL

logger = logging.getLogger("aa_storage_redis")


@attrs.frozen
class Parts:
    """What a backend is wired from: the executor, the key space, and with
    ``near_cache`` on, the near-cache and the tracker that keeps it honest."""

    executor: Executor
    keys: KeySpace
    near_cache: NearCache | None
    tracker: Tracker | None


def build_pool(config: RedisStorageConfig) -> Executor:
    """The executor for ``config`` (the seed's ``Pool``), which stores may be built
    over; no near-cache. See :func:`build_parts`."""
    return build_parts(config, near_cache=False).executor


def build_parts(config: RedisStorageConfig, *, near_cache: bool = True) -> Parts:
    """The parts of a backend for ``config``: its topology's nodes behind one
    executor, the key space, and the near-cache with its tracker when ``config``
    (and ``near_cache``) ask for one. No I/O happens until the first command.

    Logs one warning when the connection would carry data in the clear to a
    host that is not this machine. Raises :class:`~aa_storage_redis.redis_py.RedisPyChanged`
    when the installed redis-py lacks what the driver relies on.
    """
    verify_redis_py()
    deployment = config.deployment
    connection_class, options = connection_options(config)
    if not deployment.tls and not all(_is_loopback(host) for host, _ in deployment.addresses):
        logger.warning(
            "connecting to %s without TLS: traffic and the password travel in the clear",
            redact_url(config.effective_url),
        )

    counters = Counters()  # one count for every node: max_pending is the deployment's

    def node_at(address: Address) -> Node:
        host, port = address
        return Node(
            partial(connection_class, host=host, port=port, **options),
            address=f"{host}:{port}",
            size=config.pool_size,
            counters=counters,
            max_pending=config.max_pending,
            connect_timeout=config.connect_timeout,
            socket_timeout=config.socket_timeout,
        )

    topology: Topology
    if deployment.topology == CLUSTER:
        topology = Cluster(deployment.addresses, node_at, counters=counters)
    elif deployment.topology == SENTINEL:
        assert deployment.service is not None
        sentinel_options = {
            **options,
            "username": config.sentinel_username,
            "password": config.sentinel_password,
            "db": 0,
        }
        topology = Sentinel(
            deployment.addresses,
            deployment.service,
            node_at,
            lambda address: connection_class(host=address[0], port=address[1], **sentinel_options),
            timeout=config.connect_timeout + config.socket_timeout,
            counters=counters,
        )
    else:
        topology = Standalone(node_at(deployment.addresses[0]), deployment.addresses[0])
    executor = Executor(
        config=config, topology=topology, password=deployment.password, counters=counters
    )
    keys = KeySpace(config.key_prefix)
    if not (near_cache and config.near_cache):
        return Parts(executor, keys, None, None)
    near = NearCache(config.near_cache_size)
    tracker = Tracker(
        near,
        topology,
        # Tracking connections speak RESP3, so the server's pushes come on them.
        lambda address: connection_class(
            host=address[0], port=address[1], **{**options, "protocol": 3}
        ),
        keys=keys,
        connect_timeout=config.connect_timeout,
        socket_timeout=config.socket_timeout,
        server=redact_url(config.effective_url),
        secret=deployment.password,
        counters=counters,
    )
    return Parts(executor, keys, near, tracker)


def connection_options(config: RedisStorageConfig) -> tuple[type[Connection], dict[str, Any]]:
    """The redis-py connection class and keyword arguments (all but ``host`` and
    ``port``) that open, and log in on, a connection to a node of ``config``'s
    deployment."""
    deployment = config.deployment
    options: dict[str, Any] = {
        "username": deployment.username,
        "password": deployment.password,
        "db": deployment.database,
        "socket_connect_timeout": config.connect_timeout,
        "socket_timeout": config.socket_timeout,
        # Retries are the executor's job: redis-py's own would repeat writes.
        "retry": Retry(NoBackoff(), 0),
        # No CLIENT SETINFO in the handshake: two more commands per connection,
        # and a grant more for every ACL user.
        "driver_info": None,
        "protocol": 2,
    }
    if not deployment.tls:
        return Connection, options
    options.update(
        ssl_ca_certs=config.ca_file, ssl_certfile=config.cert_file, ssl_keyfile=config.key_file
    )
    return SSLConnection, options


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False

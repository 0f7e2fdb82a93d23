"""Reading ``[storage.redis] url`` into a :class:`Deployment`: where the servers are, and how.

Three forms, each with a TLS twin (``rediss``):

- ``redis://[user[:password]@]host[:port][/db]``: one server;
- ``redis+cluster://[user[:password]@]host:port[,host:port...]``: any of these
  nodes seeds the discovery of a Redis Cluster;
- ``redis+sentinel://[user[:password]@]host:port[,host:port...]/SERVICE[/db]``:
  these sentinels name the primary of SERVICE.

Credentials are the data nodes' and must be percent-encoded. No message
built here ever quotes the URL: it may hold a password.
"""

from __future__ import annotations

import re
from urllib.parse import unquote

import attrs

STANDALONE, CLUSTER, SENTINEL = "standalone", "cluster", "sentinel"
DEFAULT_PORT = 6379
DEFAULT_SENTINEL_PORT = 26379
_SCHEMES = {
    "redis": (STANDALONE, False),
    "rediss": (STANDALONE, True),
    "redis+cluster": (CLUSTER, False),
    "rediss+cluster": (CLUSTER, True),
    "redis+sentinel": (SENTINEL, False),
    "rediss+sentinel": (SENTINEL, True),
}
SCHEME_NAMES = ", ".join(f"{scheme}://" for scheme in _SCHEMES)
_ADDRESS = re.compile(
    r"(?:\[(?P<ipv6>[0-9A-Fa-f:.]+)\]|(?P<host>[^\[\]:/]+))(?::(?P<port>\d{1,5}))?"
)


class HostError(ValueError):
    """A host or port does not parse: where an unencoded password may have cut the URL."""


@attrs.frozen
class Deployment:
    """The servers a URL names, and how to reach them."""

    topology: str
    tls: bool
    addresses: tuple[tuple[str, int], ...]
    username: str | None = None
    password: str | None = attrs.field(default=None, repr=False)
    database: int = 0
    service: str | None = None


def parse_deployment(url: str) -> Deployment:
    """The deployment ``url`` names; a ``ValueError`` that never quotes it otherwise
    (:class:`HostError` when a host or port does not parse)."""
    scheme, separator, rest = url.partition("://")
    if not separator or scheme.lower() not in _SCHEMES:
        # The scheme ends before "://", so it can hold no password.
        raise ValueError(f"the scheme must be one of {SCHEME_NAMES}, got {scheme!r}")
    topology, tls = _SCHEMES[scheme.lower()]
    netloc, _, path = rest.partition("/")
    userinfo, at, hosts = netloc.rpartition("@")
    username = password = None
    if at:
        user, colon, secret = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if colon else None
    if not hosts:
        raise ValueError("the URL names no host")
    default_port = DEFAULT_SENTINEL_PORT if topology == SENTINEL else DEFAULT_PORT
    addresses = tuple(_address(part, default_port) for part in hosts.split(","))
    if topology == STANDALONE and len(addresses) > 1:
        raise ValueError("a redis:// URL names one host; use redis+cluster:// or redis+sentinel://")
    service, database = _path(topology, path)
    return Deployment(topology, tls, addresses, username, password, database, service)


def _address(text: str, default_port: int) -> tuple[str, int]:
    match = _ADDRESS.fullmatch(text)
    if match is None:
        raise HostError("each host must be host[:port] or [ipv6][:port], with no empty entry")
    port = int(match["port"]) if match["port"] else default_port
    if not 1 <= port <= 65535:
        raise HostError("a port must be a number in [1, 65535]")
    return (match["ipv6"] or match["host"], port)


def _path(topology: str, path: str) -> tuple[str | None, int]:
    """The service (sentinel only) and the database number the path names."""
    parts = path.split("/") if path else []
    service = None
    if topology == SENTINEL:
        if not parts or not parts[0]:
            raise ValueError("a redis+sentinel:// URL must name the service: .../SERVICE[/db]")
        service = unquote(parts.pop(0))
    if len(parts) > 1 or (parts and not parts[0].isdecimal() and parts[0]):
        raise ValueError("the database must be a number, as in /0")
    database = int(parts[0]) if parts and parts[0] else 0
    if topology == CLUSTER and database:
        raise ValueError("a cluster has only database 0")
    return service, database

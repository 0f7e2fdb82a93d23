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
from types import MappingProxyType
from urllib.parse import unquote

import attrs

STANDALONE, CLUSTER, SENTINEL = "standalone", "cluster", "sentinel"
DEFAULT_PORT = 6379
DEFAULT_SENTINEL_PORT = 26379
_SCHEMES = MappingProxyType(
    {
        "redis": (STANDALONE, False),
        "rediss": (STANDALONE, True),
        "redis+cluster": (CLUSTER, False),
        "rediss+cluster": (CLUSTER, True),
        "redis+sentinel": (SENTINEL, False),
        "rediss+sentinel": (SENTINEL, True),
    }
)
SCHEME_NAMES = ", ".join(f"{scheme}://" for scheme in _SCHEMES)
_ADDRESS = re.compile(r"(?:\[(?P<ipv6>[0-9A-Fa-f:.]+)\]|(?P<host>[^\[\]:/]+))(?::(?P<port>\d+))?")
# What a scheme may hold (RFC 3986): never a ":" or "@", so never a password.
_SCHEME_SHAPE = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*")


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
    # Hosts the URL gives without a port: each gets the topology's default port.
    without_port: tuple[str, ...] = ()


def parse_deployment(url: str) -> Deployment:
    """The deployment ``url`` names; a ``ValueError`` that never quotes it otherwise
    (:class:`HostError` when a host or port does not parse)."""
    scheme, separator, rest = url.partition("://")
    if not separator:
        raise ValueError(_missing_separator(url))
    if scheme.lower() not in _SCHEMES:
        # Quoted only when it has a scheme's shape: then it holds no ":" or "@", so
        # no password.
        shown = f", got {scheme!r}" if _SCHEME_SHAPE.fullmatch(scheme) else ""
        raise ValueError(f"the scheme must be one of {SCHEME_NAMES}{shown}")
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
    default_port = default_port_of(topology)
    parsed = [_address(part) for part in hosts.split(",")]
    if topology == STANDALONE and len(parsed) > 1:
        raise ValueError("a redis:// URL names one host; use redis+cluster:// or redis+sentinel://")
    addresses = tuple((host, default_port if port is None else port) for host, port in parsed)
    without_port = tuple(host for host, port in parsed if port is None)
    service, database = _path(topology, path)
    return Deployment(topology, tls, addresses, username, password, database, service, without_port)


def default_port_of(topology: str) -> int:
    """The port a host without one gets: 26379 for a sentinel, else 6379."""
    return DEFAULT_SENTINEL_PORT if topology == SENTINEL else DEFAULT_PORT


def _missing_separator(url: str) -> str:
    """What is wrong with a URL that has no "://"; quotes only a known scheme, which holds
    no password (``redis:/user:pw@host`` must not show ``pw``)."""
    scheme = url.partition(":")[0]
    if scheme.lower() in _SCHEMES and url.startswith(f"{scheme}:"):
        return (
            f"'://' is missing after '{scheme}:'; write {scheme}://host:port "
            f"(or {scheme}://user:password@host:port)"
        )
    return f"the URL must start with one of {SCHEME_NAMES}, and '://' must follow the scheme"


def _address(text: str) -> tuple[str, int | None]:
    """A host and its port (None when none is given). The host comes after the last "@",
    so it holds no password and may be quoted."""
    match = _ADDRESS.fullmatch(text)
    if match is None:
        raise HostError("each host must be host[:port] or [ipv6][:port], with no empty entry")
    host = match["ipv6"] or match["host"]
    if match["port"] is None:
        return host, None
    port = int(match["port"])
    if not 1 <= port <= 65535:
        raise ValueError(
            f"the port of host {host!r} must be a number in [1, 65535]; "
            "check the digits after the host's ':'"
        )
    return host, port


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

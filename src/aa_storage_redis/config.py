"""The ``[storage.redis]`` section."""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import attrs

from aa_storage.redaction import redact_url
from aa_storage.validation import CHECK, FieldCheck, check_fields
from aa_storage_redis.keys import KeySpace
from aa_storage_redis.urls import CLUSTER, Deployment, HostError, parse_deployment

DRIVER_NAME = "redis"
"""The driver's name: its entry point's, and its config section's, ``[storage.redis]``."""
DEFAULT_URL = "redis://127.0.0.1:6379"


_ENCODING_HINT = (
    "percent-encode the user name and password: urllib.parse.quote(password, safe='') "
    "turns # into %23, / into %2F, ? into %3F, @ into %40 and % into %25"
)
_HOSTS_HINT = "write each host as host:port with a numeric port, and separate hosts with ','"
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")


def _ambiguity(url: str) -> str | None:
    """Why the password can't be told from the rest of ``url``, or None if it can.

    Built from the URL's shape alone, never from its text, so that no part of
    what may be a password can reach a message.
    """
    rest = url.partition("://")[2]
    userinfo, at, _ = rest.rpartition("@")
    if _CONTROL.search(url):
        return "it holds a control character (a tab or a line break)"
    if "#" in rest:
        return "it holds a '#', which would end the URL there"
    if rest.count("@") > 1:
        return "it holds more than one '@'"
    if at and ("/" in userinfo or "?" in userinfo):
        return "a '/' or '?' comes before the '@', which would end the host there"
    if _BAD_ESCAPE.search(userinfo):
        return "a '%' before the '@' does not start a percent-encoded character"
    return None


def _valid_url(name: str, url: str) -> None:
    if "://" not in url:
        _parsed(name, url)  # says that "://" is missing, before anything else
    problem = _ambiguity(url)
    if problem is not None:
        raise ValueError(f"{name}: cannot read the URL: {problem}; {_ENCODING_HINT}")
    if "?" in url:
        # redis-py would read settings from the query and clash with this section's.
        raise ValueError(
            f"{name}: query parameters are not supported in {redact_url(url)!r}; "
            "use the [storage.redis] settings, and user:password@ for credentials"
        )
    _parsed(name, url)


def _parsed(name: str, url: str) -> None:
    try:
        parse_deployment(url)
    except HostError:
        problem = "a host does not parse as host[:port] or [ipv6][:port]"
        # Only a URL with credentials can have been cut there by an unencoded password.
        hint = _ENCODING_HINT if "@" in url else _HOSTS_HINT
        raise ValueError(f"{name}: cannot read the URL: {problem}; {hint}") from None
    except ValueError as exc:
        # Never the URL itself: a host or path may hold a cut-off password.
        raise ValueError(f"{name}: {exc}") from None


def _redacted_repr(url: str) -> str:
    return repr(redact_url(url))


# An hour: far past any sane load, and far from Redis' limits on PX.
_LEASE_LIMIT_SECS = 3600.0


def _positive_seconds(name: str, value: float) -> None:
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name}: must be a positive number of seconds, got {value}")


def _seconds_up_to(most: float) -> FieldCheck:
    def check(name: str, value: float) -> None:
        _positive_seconds(name, value)
        if value > most:
            raise ValueError(f"{name}: must be at most {most:g} seconds, got {value}")

    return check


def _within(low: int, high: int) -> FieldCheck:
    def check(name: str, value: int) -> None:
        if not low <= value <= high:
            raise ValueError(f"{name}: must lie in [{low}, {high}], got {value}")

    return check


def _readable_file(name: str, value: str | None) -> None:
    if value is not None and not Path(value).is_file():
        raise ValueError(f"{name}: no such file {value!r}")


def _non_empty(name: str, value: str) -> None:
    if not value:
        raise ValueError(f"{name}: must not be empty")


def _checked(default: Any, check: FieldCheck, **options: Any) -> Any:
    return attrs.field(default=default, metadata={CHECK: check}, **options)


@attrs.frozen
class RedisStorageConfig:
    """Settings of one Redis deployment; every field has a default.

    ``url`` may carry a user and password (``redis://user:pw@host:port/db``);
    the password never appears in a repr, log line or error. ``tls = true``
    upgrades ``redis://`` to ``rediss://``. Certificates are always verified,
    against ``ca_file`` when given, else the system's CAs. ``pool_size`` is
    the number of multiplexed connections that every caller shares, and
    ``max_pending`` bounds the commands waiting on them. ``connect_timeout``
    bounds opening a connection (TCP, TLS, login) and ``socket_timeout`` the
    wait for each reply, so every call ends within their sum plus backoff.
    ``retries`` is how many more times a call is tried after a connection
    error (see the README on which calls). ``near_cache`` keeps up to
    ``near_cache_size`` decoded policies in process, invalidated by the
    server (see the README's Near-cache section). ``lease_ttl`` is how long a
    ``get_or_load`` lease lives, so a loader that crashes or hangs holds up
    the others at most that long, and a load that takes longer is not
    cached; ``lease_wait`` is how long a caller waits for another's load
    before it loads for itself, without caching. ``telemetry`` lets the
    driver emit OpenTelemetry spans and metrics whenever an SDK is set up
    (see the README's Telemetry section); ``false`` turns them off.
    """

    removed_settings: ClassVar[Mapping[str, str]] = {
        "pool_timeout": (
            "removed: callers no longer wait for a free connection, since every call "
            "shares the multiplexed connections; connect_timeout + socket_timeout bound "
            "each call, and max_pending bounds how many may wait"
        ),
    }

    url: str = _checked(DEFAULT_URL, _valid_url, repr=_redacted_repr)
    pool_size: int = _checked(2, _within(1, 64))
    tls: bool = False
    key_prefix: str = _checked("aa:", _non_empty)
    connect_timeout: float = _checked(1.0, _positive_seconds)
    socket_timeout: float = _checked(1.0, _positive_seconds)
    max_pending: int = _checked(10_000, _within(1, 1_000_000))
    retries: int = _checked(2, _within(0, 10))
    wait_replicas: int = _checked(0, _within(0, 100))
    wait_timeout: float = _checked(0.5, _positive_seconds)
    near_cache: bool = False
    near_cache_size: int = _checked(10_000, _within(1, 10_000_000))
    lease_ttl: float = _checked(5.0, _seconds_up_to(_LEASE_LIMIT_SECS))
    # Twice lease_ttl: a waiter outlasts a hung loader's lease, so one waiter takes the
    # load over and the others get its policy instead of each loading on its own.
    lease_wait: float = _checked(10.0, _seconds_up_to(_LEASE_LIMIT_SECS))
    telemetry: bool = True
    sentinel_username: str | None = None
    sentinel_password: str | None = attrs.field(default=None, repr=lambda _: "***")
    ca_file: str | None = _checked(None, _readable_file)
    cert_file: str | None = _checked(None, _readable_file)
    key_file: str | None = _checked(None, _readable_file)

    def __attrs_post_init__(self) -> None:
        if self.key_file is not None and self.cert_file is None:
            raise ValueError("key_file: needs cert_file too")
        if self.wait_replicas and self.wait_timeout >= self.socket_timeout:
            # WAIT holds its reply up to wait_timeout: a longer one would trip socket_timeout.
            raise ValueError(
                f"wait_timeout: must be below socket_timeout ({self.socket_timeout}), "
                f"got {self.wait_timeout}"
            )
        check_fields(self)
        if (
            self.deployment.topology == CLUSTER
            and not KeySpace(self.key_prefix).leases_share_the_slot
        ):
            raise ValueError(
                "key_prefix: on a cluster, a '}' must close a '{' hash tag: otherwise a "
                "policy's get_or_load lease would hash to another slot than the policy"
            )

    @property
    def effective_url(self) -> str:
        """``url``, upgraded to its TLS scheme (``rediss``...) when ``tls`` is set."""
        if self.tls and self.url.startswith("redis"):
            return "rediss" + self.url.removeprefix("rediss").removeprefix("redis")
        return self.url

    @functools.cached_property
    def deployment(self) -> Deployment:
        """The servers ``effective_url`` names, and how to reach them; parsed on first
        use, once per config (no field: ``attrs.asdict`` shows settings only)."""
        return parse_deployment(self.effective_url)

    @property
    def uses_tls(self) -> bool:
        """Whether connections are encrypted."""
        return self.deployment.tls

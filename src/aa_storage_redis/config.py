"""The ``[storage.redis]`` section."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

import attrs

from aa_storage.redaction import redact_url

DEFAULT_URL = "redis://127.0.0.1:6379"
_SCHEMES = ("redis", "rediss")


def _valid_url(instance: object, attribute: attrs.Attribute[str], url: object) -> None:
    if not isinstance(url, str):
        raise TypeError(f"url: expected str, got {type(url).__name__}")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"url: {redact_url(url)!r} is not a valid URL ({exc})") from None
    if parts.scheme not in _SCHEMES:
        raise ValueError(f"url: scheme must be redis:// or rediss://, got {redact_url(url)!r}")
    if not parts.hostname:
        raise ValueError(f"url: {redact_url(url)!r} names no host")
    if port == 0:
        raise ValueError(f"url: {redact_url(url)!r} names port 0")


def _redacted_repr(url: str) -> str:
    return repr(redact_url(url))


def _positive_seconds(instance: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{attribute.name}: must be a positive number of seconds, got {value}")


def _within(low: int, high: int) -> Callable[[object, attrs.Attribute[int], int], None]:
    def check(instance: object, attribute: attrs.Attribute[int], value: int) -> None:
        if not low <= value <= high:
            raise ValueError(f"{attribute.name}: must lie in [{low}, {high}], got {value}")

    return check


def _readable_file(
    instance: object, attribute: attrs.Attribute[str | None], value: str | None
) -> None:
    if value is not None and not Path(value).is_file():
        raise ValueError(f"{attribute.name}: no such file {value!r}")


def _non_empty(instance: object, attribute: attrs.Attribute[str], value: str) -> None:
    if not value:
        raise ValueError(f"{attribute.name}: must not be empty")


@attrs.frozen
class RedisStorageConfig:
    """Settings of one Redis deployment; every field has a default.

    ``url`` may carry a user and password (``redis://user:pw@host:port/db``);
    the password never appears in a repr, log line or error. ``tls = true``
    upgrades ``redis://`` to ``rediss://``. Certificates are always verified,
    against ``ca_file`` when given, else the system's CAs. Timeouts bound each
    phase of every call: connecting, each socket read and write, and waiting
    for a free connection in the pool. ``retries`` is how many more times a
    call is tried after a connection error (see the README on which calls).
    """

    url: str = attrs.field(default=DEFAULT_URL, validator=_valid_url, repr=_redacted_repr)
    pool_size: int = attrs.field(default=10, validator=_within(1, 10_000))
    tls: bool = False
    key_prefix: str = attrs.field(default="aa:", validator=_non_empty)
    connect_timeout: float = attrs.field(default=1.0, validator=_positive_seconds)
    socket_timeout: float = attrs.field(default=1.0, validator=_positive_seconds)
    pool_timeout: float = attrs.field(default=1.0, validator=_positive_seconds)
    retries: int = attrs.field(default=2, validator=_within(0, 10))
    ca_file: str | None = attrs.field(default=None, validator=_readable_file)
    cert_file: str | None = attrs.field(default=None, validator=_readable_file)
    key_file: str | None = attrs.field(default=None, validator=_readable_file)

    def __attrs_post_init__(self) -> None:
        if self.key_file is not None and self.cert_file is None:
            raise ValueError("key_file: needs cert_file too")

    @property
    def effective_url(self) -> str:
        """``url``, upgraded to ``rediss://`` when ``tls`` is set."""
        if self.tls and self.url.startswith("redis://"):
            return "rediss://" + self.url.removeprefix("redis://")
        return self.url

    @property
    def uses_tls(self) -> bool:
        """Whether connections are encrypted."""
        return self.effective_url.startswith("rediss://")

"""Keeping secrets out of everything a person can read.

No repr, str, log line or error message may show a password. Drivers use
:func:`redact_url` for their own reprs and messages; the CLI shows a config
only through :func:`redacted_settings`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import attrs

MASK = "***"
_SECRET_NAMES = ("password", "secret", "token")


def redact_url(url: str) -> str:
    """``url`` with any password replaced by ``***``: ``redis://user:***@host:6379/0``."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        # Unparseable: keep only what follows the last "@", which holds no userinfo.
        return f"{MASK}@{url.rpartition('@')[2]}" if "@" in url else url
    if password is None:
        return url
    user = parts.username or ""
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{user}:{MASK}@{host}"))


def redact_value(name: str, value: object) -> object:
    """``value`` as it may be shown: secrets masked, URLs without their password."""
    if value is None:
        return None
    if any(secret in name.lower() for secret in _SECRET_NAMES):
        return MASK
    if isinstance(value, str) and "://" in value:
        return redact_url(value)
    return value


def redacted_settings(config: Any) -> dict[str, object]:
    """The fields of an attrs config (or a mapping) as a dict safe to print."""
    fields: Mapping[str, object] = (
        config if isinstance(config, Mapping) else attrs.asdict(config, recurse=False)
    )
    return {name: redact_value(name, value) for name, value in fields.items()}

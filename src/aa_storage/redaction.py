"""Keeping secrets out of everything a person can read.

No repr, str, log line or error message may show a password. Drivers use
:func:`redact_url` for their own reprs and messages; the CLI shows a config
only through :func:`redacted_settings`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import attrs

MASK = "***"
_SECRET_NAMES = ("password", "secret", "token")
_SECRET_QUERY = re.compile(r"(^|[&;])([^&;=]*(?:password|secret|token)[^&;=]*)=[^&;]*", re.I)


def redact_url(url: str) -> str:
    """``url`` with any password replaced by ``***``: ``redis://user:***@host:6379/0``."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        # Unparseable: keep only what follows the last "@", which holds no userinfo.
        return f"{MASK}@{url.rpartition('@')[2]}" if "@" in url else url
    # redis-py also takes ?password=... in the query string.
    query = _SECRET_QUERY.sub(rf"\1\2={MASK}", parts.query)
    if password is None and query == parts.query:
        return url  # nothing to hide; urlunsplit would also normalise the text
    if password is not None:
        host = parts.netloc.rpartition("@")[2]
        parts = parts._replace(netloc=f"{parts.username or ''}:{MASK}@{host}")
    return urlunsplit(parts._replace(query=query))


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

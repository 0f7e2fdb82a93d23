"""Keeping secrets out of everything a person can read.

No repr, str, log line or error message may show a password. Drivers use
:func:`redact_url` for their own reprs and messages; the CLI shows a config
only through :func:`redacted_settings`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import attrs

MASK = "***"
_SECRET_NAMES = ("password", "secret", "token")
_SECRET_QUERY = re.compile(r"(^|[&;])([^&;=]*(?:password|secret|token)[^&;=]*)=[^&;]*", re.I)


def redact_url(url: str) -> str:
    """``url`` with any password replaced by ``***``: ``redis://user:***@host:6379/0``.

    Read from the text, not parsed, so a password that holds an unencoded
    ``#``, ``/``, ``?`` or ``@`` (which would mislead a URL parser) is hidden
    too: everything between the first ``:`` after the user and the last
    ``@`` is the password. A password in the query is masked as well.
    """
    scheme, separator, rest = url.partition("://")
    if not separator:
        scheme, rest = "", url
    userinfo, at, location = rest.rpartition("@")
    user, colon, _ = userinfo.partition(":")
    if any(mark in user for mark in "/?#"):
        userinfo = MASK  # the "@" may not even end the userinfo: hide all before it
    elif colon:
        userinfo = f"{user}:{MASK}"
    address, question, query = location.partition("?")
    # redis-py also takes ?password=... in the query string.
    query = _SECRET_QUERY.sub(rf"\1\2={MASK}", query)
    return f"{scheme}{separator}{userinfo}{at}{address}{question}{query}"


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

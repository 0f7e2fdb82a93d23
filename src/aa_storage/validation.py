"""Argument checks every store runs before any I/O.

Drivers call these first thing in each method, so every driver rejects the
same inputs with the same messages: a wrong type is a ``TypeError``, a value
out of range a ``ValueError``. Nothing is sent or written when they raise.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Callable
from typing import Any, TypeVar

import attrs

from aa_storage._types import AgentId, PolicyDocument, SessionId, SessionRecord
from aa_storage.contracts import PolicyLoader

_I64_MAX = 2**63 - 1
# About 68 years: far past any sane window, and far from the point where Redis
# rejects an expiry whose absolute time in milliseconds overflows.
_MAX_SECONDS = 2**31 - 1
T = TypeVar("T")


def _is_int(value: object) -> bool:
    # The exact type first: it is what callers pass, and the cheapest test.
    return type(value) is int or (isinstance(value, int) and not isinstance(value, bool))


def check_instance(value: object, expected: type[T], name: str) -> T:
    """Return ``value`` if it is an ``expected``, else raise ``TypeError`` naming ``name``."""
    if not isinstance(value, expected):
        raise TypeError(f"{name} must be {expected.__name__}, got {type(value).__name__}")
    return value


def check_agent_id(value: object) -> AgentId:
    """An ``AgentId``; a ``SessionId`` or raw bytes is a ``TypeError``."""
    return check_instance(value, AgentId, "agent_id")


def check_session_id(value: object) -> SessionId:
    """A ``SessionId``; an ``AgentId`` or raw bytes is a ``TypeError``."""
    return check_instance(value, SessionId, "session_id")


def check_session_record(value: object) -> SessionRecord:
    """A ``SessionRecord`` (its fields were checked when it was built)."""
    return check_instance(value, SessionRecord, "record")


def check_policy(value: object) -> PolicyDocument:
    """A ``PolicyDocument`` (its fields were checked when it was built)."""
    return check_instance(value, PolicyDocument, "policy")


def check_loader(value: object) -> PolicyLoader:
    """A callable, as ``get_or_load`` needs for its loader; anything else is a ``TypeError``."""
    if not callable(value):
        raise TypeError(
            "loader must be an async function (AgentId) -> PolicyDocument, "
            f"got {type(value).__name__}"
        )
    return typing.cast(PolicyLoader, value)


def check_key(value: object) -> str:
    """A non-empty str that encodes as UTF-8 (lone surrogates do not)."""
    key = check_instance(value, str, "key")
    if not key:
        raise ValueError("key must not be empty")
    try:
        key.encode()
    except UnicodeEncodeError:
        raise ValueError(f"key must be valid text; {key!r} holds a lone surrogate") from None
    return key


def check_amount(value: object) -> int:
    """An int in [0, 2**63-1]: counters only grow, and Redis counters are signed 64-bit."""
    if not _is_int(value):
        raise TypeError(f"amount must be an int, got {type(value).__name__}")
    assert isinstance(value, int)
    if not 0 <= value <= _I64_MAX:
        raise ValueError(f"amount must lie in [0, 2**63-1], got {value}")
    return value


def _check_seconds(value: object, name: str) -> int:
    if not _is_int(value):
        raise TypeError(f"{name} must be an int number of seconds, got {type(value).__name__}")
    assert isinstance(value, int)
    if value < 1:
        raise ValueError(f"{name} must be at least 1 second, got {value}")
    if value > _MAX_SECONDS:
        raise ValueError(f"{name} must be at most {_MAX_SECONDS} seconds, got {value}")
    return value


def check_window_secs(value: object) -> int:
    """A rate-limit window: an int number of seconds, at least 1."""
    return _check_seconds(value, "window_secs")


def check_ttl_secs(value: object) -> int:
    """A cache TTL: an int number of seconds, at least 1."""
    return _check_seconds(value, "ttl_secs")


#: The ``attrs.field`` metadata key under which :func:`check_fields` finds a field's check.
CHECK = "aa_storage.check"
FieldCheck = Callable[[str, Any], None]


def check_fields(instance: Any) -> None:
    """Check the type of every field of an attrs config, then run every field's check,
    and report every failure at once.

    A check is ``check(name, value)``, stored as ``attrs.field(metadata={CHECK: check})``,
    that raises ``ValueError("<name>: <problem>")``. Call this from
    ``__attrs_post_init__``: unlike attrs validators, which stop at the first
    failure, it raises one ``ValueError`` whose lines name every bad field, so
    the config loader can report them all.
    """
    hints = typing.get_type_hints(type(instance))
    for field in attrs.fields(type(instance)):
        value = getattr(instance, field.name)
        hint = hints.get(field.name)
        if hint is not None and not _is_a(value, hint):
            expected = getattr(hint, "__name__", hint)
            raise TypeError(f"{field.name}: expected {expected}, got {type(value).__name__}")
    problems = []
    for field in attrs.fields(type(instance)):
        check: FieldCheck | None = field.metadata.get(CHECK)
        if check is not None:
            try:
                check(field.name, getattr(instance, field.name))
            except ValueError as exc:
                problems.append(str(exc))
    if problems:
        raise ValueError("\n".join(problems))


def _is_a(value: object, hint: Any) -> bool:
    """Whether ``value`` fits a simple hint: a class, ``X | None``; others are not checked."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        return any(_is_a(value, member) for member in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if not isinstance(hint, type):
        return True
    if isinstance(value, bool) and hint is not bool:
        return False  # True is no number of seconds and no pool size
    if hint is float:
        return isinstance(value, int | float)
    return isinstance(value, hint)

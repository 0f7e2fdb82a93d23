"""The project's cattrs converters: strict scalars, and errors that name their path."""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import Any

import attrs
import cattrs
from cattrs.errors import (
    AttributeValidationNote,
    ClassValidationError,
    ForbiddenExtraKeysError,
    IterableValidationError,
    IterableValidationNote,
)

# A TOML or JSON value must already have the right type: "10" is not a pool
# size, true is not 1, and 1.5 is not an int (cattrs would coerce all three).
_STRICT: Mapping[type[Any], tuple[type[Any], ...]] = MappingProxyType(
    {
        int: (int,),
        str: (str,),
        bool: (bool,),
        float: (float, int),
    }
)


def _strict_hook(target: type[Any]) -> Any:
    accepted = _STRICT[target]

    def structure(value: object, _: type[Any]) -> Any:
        if not isinstance(value, accepted) or (isinstance(value, bool) and target is not bool):
            raise TypeError(f"expected {target.__name__}, got {type(value).__name__}")
        return target(value)

    return structure


def make_converter(*, forbid_extra_keys: bool) -> cattrs.Converter:
    """A converter whose scalar hooks accept only values of the right type."""
    converter = cattrs.Converter(forbid_extra_keys=forbid_extra_keys)
    for target in _STRICT:
        converter.register_structure_hook(target, _strict_hook(target))
    return converter


def describe_errors(exc: BaseException, path: str) -> list[str]:
    """One ``path: problem`` line per leaf error in a cattrs structuring error.

    Field checks name their field as ``"field: problem"``, one per line; each
    such line is moved onto the path, so every line reads
    ``storage.redis.pool_size: must lie in [1, 64], got 0``.
    """
    if isinstance(exc, ClassValidationError | IterableValidationError):
        noted, unnoted = exc.group_exceptions()
        lines = [
            line for inner, note in noted for line in describe_errors(inner, path + _step(note))
        ]
        return lines + [line for inner in unnoted for line in describe_errors(inner, path)]
    if isinstance(exc, ForbiddenExtraKeysError):
        known = [field.name for field in attrs.fields(exc.cl)] if attrs.has(exc.cl) else []
        return [unknown_key(f"{path}.{key}", key, known) for key in sorted(exc.extra_fields)]
    if isinstance(exc, KeyError):
        return [f"{path}: required key missing"]
    return [_on_path(path, line) for line in (str(exc) or type(exc).__name__).splitlines()]


def unknown_key(where: str, key: str, known: Iterable[str]) -> str:
    """``where: unknown key``, with the closest known key when one is close enough to be
    the one meant: ``storage.redis.pool_sise: unknown key; did you mean pool_size?``"""
    close = difflib.get_close_matches(key, list(known), n=1)
    return f"{where}: unknown key" + (f"; did you mean {close[0]}?" if close else "")


def _step(note: AttributeValidationNote | IterableValidationNote) -> str:
    """The path step a note names: ``.field`` or ``[index]``."""
    if isinstance(note, AttributeValidationNote):
        return f".{note.name}"
    return f"[{note.index}]"


def _on_path(path: str, message: str) -> str:
    field, separator, problem = message.partition(": ")
    if separator and field.isidentifier():
        return f"{path}.{field}: {problem}"
    return f"{path}: {message}"

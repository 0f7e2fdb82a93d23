"""Values decoded from the bytes the server sent, kept by those bytes.

A gateway reads the same few policies and sessions over and over, and decoding
one costs a good part of the read. What is decoded is immutable, so the same
bytes can give the same object back; other bytes are another key, so a changed
or revoked value is never answered from what is kept. A backend keeps one
:class:`Decoded` per kind of value, which all its stores share.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

ENTRIES = 256
"""How many decoded values of a kind a backend keeps; the oldest goes first."""
MAX_POLICY_BYTES = 4096
"""The longest policy encoding whose document is kept: a kind keeps at most
``ENTRIES`` of its keys, with their values."""


class Decoded(Generic[K, V]):
    """The last :data:`ENTRIES` values decoded, by the bytes they were decoded from."""

    def __init__(self) -> None:
        self._values: dict[K, V] = {}

    def get(self, key: K, decode: Callable[[], V]) -> V:
        """The value kept for ``key``, else ``decode()``'s, kept. What ``decode``
        raises is raised, and nothing is kept."""
        value = self._values.get(key)
        if value is None:
            value = decode()
            values = self._values
            if len(values) >= ENTRIES:
                del values[next(iter(values))]  # the oldest: dicts keep insertion order
            values[key] = value
        return value

    def __len__(self) -> int:
        return len(self._values)

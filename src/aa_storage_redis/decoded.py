"""Policies decoded from the bytes the server sent, kept by those bytes.

A gateway reads the same few policies over and over, and decoding one costs
more than the rest of a ``get_policy``. A document is immutable, so the same
bytes can give the same document object back; other bytes are another key, so a
changed or revoked policy is never answered from what is kept.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import attrs

from aa_storage import PolicyDocument, policy_from_json

ENTRIES = 256
"""How many decoded policies are kept, the most recently used."""
MAX_BYTES = 4096
"""The longest encoding whose policy is kept: at most ``ENTRIES`` times this many
bytes are kept, with their documents."""


@attrs.define
class DecodedPolicies:
    """The last :data:`ENTRIES` policies decoded from at most :data:`MAX_BYTES` bytes;
    the stores of one backend share one."""

    _memo: Callable[[bytes], PolicyDocument] = attrs.field(
        # Only what returns is kept: a stored value that is no policy fails every time.
        factory=lambda: functools.lru_cache(maxsize=ENTRIES)(policy_from_json),
        init=False,
        repr=False,
    )

    def policy(self, data: bytes) -> PolicyDocument:
        """``policy_from_json(data)``, or the document it gave for the same bytes."""
        if len(data) <= MAX_BYTES:
            return self._memo(data)
        return policy_from_json(data)

    def kept(self) -> int:
        """How many documents are kept now."""
        cache_info = getattr(self._memo, "cache_info")  # noqa: B009  # lru_cache's, untyped here
        return int(cache_info().currsize)

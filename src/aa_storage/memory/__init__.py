"""The built-in ``memory`` driver: in-process stores with the Redis driver's semantics.

It is the default when no configuration is given, and the reference
implementation the contract suite is written against. Its data lives in one
process only. Pass a ``clock`` to :class:`MemoryBackend` to drive TTLs and
windows in tests.
"""

from aa_storage.memory._stores import (
    MemoryBackend,
    MemoryConfig,
    MemoryPolicyStore,
    MemoryRateLimitCounter,
    MemorySessionStore,
)

DRIVER_NAME = "memory"

__all__ = [
    "DRIVER_NAME",
    "MemoryBackend",
    "MemoryConfig",
    "MemoryPolicyStore",
    "MemoryRateLimitCounter",
    "MemorySessionStore",
]

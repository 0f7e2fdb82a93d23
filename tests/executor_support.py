"""What the execution-core tests share: backends that are always closed, and known data.

The data is planted through the driver and read back by many concurrent callers: each read
has exactly one right answer, so a reply delivered to the wrong caller cannot go unnoticed.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from typing import Any

import attrs

from aa_storage import AgentId, PolicyDocument, SessionId, SessionRecord
from aa_storage_redis import RedisBackend
from faultproxy import FaultProxy

# Timeouts no loaded machine reaches, for tests where a timeout would be a false failure.
PATIENT = {"connect_timeout": 10.0, "socket_timeout": 10.0}
# Short timeouts, for tests where one is meant to fire.
SHORT = {"connect_timeout": 0.5, "socket_timeout": 0.5}
WINDOW = 600
SLOTS = 20

OpenBackend = Callable[..., RedisBackend]
"""Type of the ``open_backend`` fixture (see conftest.py)."""

ProxiedBackend = Callable[..., tuple[FaultProxy, RedisBackend]]
"""Type of the ``proxied_backend`` fixture (see conftest.py)."""


@attrs.frozen
class Slot:
    """One counter, one session and one cached policy, each holding a value of its own."""

    counter: str
    total: int
    record: SessionRecord
    policy: PolicyDocument


KNOWN = [
    Slot(
        counter=f"known{j}",
        total=7 * j + 1,
        record=SessionRecord(
            SessionId.from_hex(f"{j + 1:032x}"), AgentId.from_hex(f"{j + 101:032x}"), 1000 + j
        ),
        policy=PolicyDocument(j + 1, f"policy-{j}", []),
    )
    for j in range(SLOTS)
]


async def plant(backend: RedisBackend) -> None:
    """Store every slot of KNOWN through ``backend``."""
    counter, sessions, policies = backend.rate_limiter(), backend.sessions(), backend.policies()
    for slot in KNOWN:
        await counter.reset(slot.counter)
        assert await counter.increment(slot.counter, slot.total, WINDOW) == slot.total
        await sessions.save(slot.record)
        await policies.cache_policy(slot.record.agent_id, slot.policy, WINDOW)


def known_read(backend: RedisBackend, rng: random.Random) -> tuple[Awaitable[Any], Any]:
    """A random read of a KNOWN slot (``current``, ``load`` or ``get_policy``) and its answer."""
    slot = rng.choice(KNOWN)
    kind = rng.randrange(3)
    if kind == 0:
        return backend.rate_limiter().current(slot.counter), slot.total
    if kind == 1:
        return backend.sessions().load(slot.record.session_id), slot.record
    return backend.policies().get_policy(slot.record.agent_id), slot.policy


async def read_all_known(backend: RedisBackend) -> None:
    """Read every slot of KNOWN, one call at a time, and check each answer."""
    counter, sessions, policies = backend.rate_limiter(), backend.sessions(), backend.policies()
    for slot in KNOWN:
        assert await counter.current(slot.counter) == slot.total
        assert await sessions.load(slot.record.session_id) == slot.record
        assert await policies.get_policy(slot.record.agent_id) == slot.policy

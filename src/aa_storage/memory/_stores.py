"""In-process stores: the reference implementation of every contract.

Each operation runs without awaiting anything, so under asyncio it is atomic.
Time comes from an injectable monotonic clock in seconds, so tests can step
through TTLs and windows without sleeping.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Generic, TypeVar

import attrs

from aa_storage import validation
from aa_storage._types import AgentId, PolicyDocument, SessionId, SessionRecord
from aa_storage.contracts import (
    DEFAULT_POLICY_CACHE_TTL_SECS,
    SESSION_TTL_SECS,
    BackendInfo,
    PolicyLoader,
)
from aa_storage.errors import NotFoundError, StorageError
from aa_storage.readthrough import Flight, SingleFlight, load

_I64_MAX = 2**63 - 1
Clock = Callable[[], float]
K = TypeVar("K")
V = TypeVar("V")


@attrs.define
class _Entry(Generic[V]):
    value: V
    expires_at: float


@attrs.define
class _Lifetime:
    """Whether the backend is still open; shared by its stores."""

    closed: bool = False

    def check(self) -> None:
        if self.closed:
            raise StorageError("the memory backend is closed: aclose() was called on it")


@attrs.define
class _ExpiringMap(Generic[K, V]):
    """A dict whose entries vanish at their expiry time, as Redis keys do. Every access
    raises ``StorageError`` once the backend is closed, so every store call does."""

    clock: Clock
    lifetime: _Lifetime
    _entries: dict[K, _Entry[V]] = attrs.field(factory=dict, repr=False)

    def get(self, key: K) -> _Entry[V] | None:
        self.lifetime.check()
        entry = self._entries.get(key)
        if entry is not None and self.clock() >= entry.expires_at:
            del self._entries[key]
            return None
        return entry

    def put(self, key: K, value: V, ttl_secs: float) -> None:
        self.lifetime.check()
        self._entries[key] = _Entry(value, self.clock() + ttl_secs)

    def pop(self, key: K) -> None:
        self.lifetime.check()
        self._entries.pop(key, None)


@attrs.define
class MemorySessionStore:
    """Sessions in a dict; each lives ``SESSION_TTL_SECS`` after its last save."""

    _records: _ExpiringMap[SessionId, SessionRecord]

    async def save(self, record: SessionRecord) -> None:
        record = validation.check_session_record(record)
        self._records.put(record.session_id, record, SESSION_TTL_SECS)

    async def load(self, session_id: SessionId) -> SessionRecord:
        entry = self._records.get(validation.check_session_id(session_id))
        if entry is None:
            raise NotFoundError(f"no session {session_id.hex}")
        return entry.value

    async def delete(self, session_id: SessionId) -> None:
        self._records.pop(validation.check_session_id(session_id))


@attrs.define
class MemoryRateLimitCounter:
    """Fixed-window counters in a dict, with the Redis driver's semantics."""

    _counters: _ExpiringMap[str, int]

    async def increment(self, key: str, amount: int, window_secs: int) -> int:
        key = validation.check_key(key)
        amount = validation.check_amount(amount)
        window_secs = validation.check_window_secs(window_secs)
        entry = self._counters.get(key)
        if entry is None:
            self._counters.put(key, amount, window_secs)
            return amount
        if entry.value + amount > _I64_MAX:
            raise StorageError(f"counter {key!r} would overflow past 2**63-1")
        entry.value += amount
        return entry.value

    async def current(self, key: str) -> int:
        entry = self._counters.get(validation.check_key(key))
        return 0 if entry is None else entry.value

    async def reset(self, key: str) -> None:
        self._counters.pop(validation.check_key(key))


@attrs.define
class MemoryPolicyStore:
    """A policy cache in a dict; entries live for the TTL given to ``cache_policy``.

    ``get_or_load`` runs one load per agent at a time in this process, and
    ``invalidate`` and ``cache_policy`` void a load under way (see
    :class:`~aa_storage.readthrough.SingleFlight`).
    """

    _policies: _ExpiringMap[AgentId, PolicyDocument]
    _flights: SingleFlight = attrs.field(factory=SingleFlight, repr=False)

    async def get_policy(self, agent_id: AgentId) -> PolicyDocument:
        entry = self._policies.get(validation.check_agent_id(agent_id))
        if entry is None:
            raise NotFoundError(f"no policy cached for agent {agent_id.hex}")
        return entry.value

    async def cache_policy(self, agent_id: AgentId, policy: PolicyDocument, ttl_secs: int) -> None:
        agent_id = validation.check_agent_id(agent_id)
        policy = validation.check_policy(policy)
        self._policies.put(agent_id, policy, validation.check_ttl_secs(ttl_secs))
        self._flights.void(agent_id)

    async def get_or_load(
        self,
        agent_id: AgentId,
        loader: PolicyLoader,
        ttl_secs: int = DEFAULT_POLICY_CACHE_TTL_SECS,
    ) -> PolicyDocument:
        agent_id = validation.check_agent_id(agent_id)
        ttl_secs = validation.check_ttl_secs(ttl_secs)
        loader = validation.check_loader(loader)

        async def attempt(flight: Flight) -> PolicyDocument:
            entry = self._policies.get(agent_id)
            if entry is not None:
                return entry.value
            policy = await load(loader, agent_id)
            if not flight.voided:
                self._policies.put(agent_id, policy, ttl_secs)
            return policy

        entry = self._policies.get(agent_id)
        return entry.value if entry is not None else await self._flights.run(agent_id, attempt)

    async def invalidate(self, agent_id: AgentId) -> None:
        agent_id = validation.check_agent_id(agent_id)
        self._policies.pop(agent_id)
        self._flights.void(agent_id)


@attrs.frozen
class MemoryConfig:
    """The ``[storage.memory]`` section; the memory driver has no settings."""


@attrs.define
class MemoryBackend:
    """One in-process store of each kind, sharing ``clock`` (``time.monotonic`` by default)."""

    clock: Clock = time.monotonic
    _lifetime: _Lifetime = attrs.field(factory=_Lifetime, init=False)
    _sessions: MemorySessionStore = attrs.field(init=False)
    _rate_limiter: MemoryRateLimitCounter = attrs.field(init=False)
    _policies: MemoryPolicyStore = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self._sessions = MemorySessionStore(_ExpiringMap(self.clock, self._lifetime))
        self._rate_limiter = MemoryRateLimitCounter(_ExpiringMap(self.clock, self._lifetime))
        self._policies = MemoryPolicyStore(_ExpiringMap(self.clock, self._lifetime))

    @classmethod
    def connect(cls, config: MemoryConfig | None = None) -> MemoryBackend:
        """A fresh, empty backend on the real clock."""
        return cls()

    def sessions(self) -> MemorySessionStore:
        return self._sessions

    def rate_limiter(self) -> MemoryRateLimitCounter:
        return self._rate_limiter

    def policies(self) -> MemoryPolicyStore:
        return self._policies

    async def describe(self) -> BackendInfo:
        return BackendInfo(facts=(("storage", "in this process; lost when it exits"),))

    async def aclose(self) -> None:
        """Refuse every later call of its stores with ``StorageError``, as a network
        driver's closed pool does. Idempotent; the data goes with the backend."""
        self._lifetime.closed = True

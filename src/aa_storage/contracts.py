"""The store contracts every driver implements, and the shape of a driver.

All store methods are coroutines. Every method checks its arguments before any
I/O (see :mod:`aa_storage.validation`) and reports failures only through
:mod:`aa_storage.errors`.
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, runtime_checkable

import attrs

from aa_storage._types import AgentId, PolicyDocument, SessionId, SessionRecord

#: Seconds a session record lives after its last save.
SESSION_TTL_SECS = 3600
#: The suggested TTL for ``cache_policy``, in seconds.
DEFAULT_POLICY_CACHE_TTL_SECS = 300

#: What ``get_or_load`` calls on a miss: ``async (agent_id) -> PolicyDocument``,
#: reading the authoritative policy store; ``NotFoundError`` when it has none.
PolicyLoader = Callable[[AgentId], Awaitable[PolicyDocument]]


class Kind(enum.Enum):
    """A kind of store; the value is its key in ``[storage]`` for a per-kind override."""

    SESSION_STORE = "session_store"
    RATE_LIMIT_COUNTER = "rate_limit_counter"
    POLICY_STORE = "policy_store"


@runtime_checkable
class SessionStore(Protocol):
    """Session records keyed by session id, each living ``SESSION_TTL_SECS`` after its last save."""

    async def save(self, record: SessionRecord) -> None:
        """Store ``record``, replacing any record with its id, and re-arm its TTL."""

    async def load(self, session_id: SessionId) -> SessionRecord:
        """Return the record; ``NotFoundError`` when absent or expired."""

    async def delete(self, session_id: SessionId) -> None:
        """Drop the record; deleting an absent record is not an error."""


@runtime_checkable
class RateLimitCounter(Protocol):
    """Fixed-window counters keyed by a caller-chosen string."""

    async def increment(self, key: str, amount: int, window_secs: int) -> int:
        """Atomically add ``amount`` and return the window's new total.

        The window starts with the increment that creates the counter and lasts
        ``window_secs``; later increments (of 0 too) never move it. A counter
        found without an expiry gets the window armed. A total past 2**63-1 is a
        ``StorageError`` and leaves the counter unchanged.
        """

    async def current(self, key: str) -> int:
        """The window's total; 0 for an unknown or expired counter."""

    async def reset(self, key: str) -> None:
        """Drop the counter; resetting an unknown counter is not an error."""


@runtime_checkable
class PolicyStore(Protocol):
    """Policy documents keyed by agent id."""

    async def get_policy(self, agent_id: AgentId) -> PolicyDocument:
        """The agent's policy; ``NotFoundError`` when nothing is stored or cached."""

    async def invalidate(self, agent_id: AgentId) -> None:
        """Drop the agent's policy so the next read misses; idempotent.

        A ``get_or_load`` already under way no longer caches what it loads.
        """


@runtime_checkable
class PolicyCache(PolicyStore, Protocol):
    """A policy store that is also a read-through cache: ``cache_policy`` writes it, and
    ``get_or_load`` reads through it to the authoritative store."""

    async def cache_policy(self, agent_id: AgentId, policy: PolicyDocument, ttl_secs: int) -> None:
        """Store ``policy`` for ``ttl_secs`` seconds, replacing any cached one.

        A ``get_or_load`` already under way no longer stores what it loads.
        """

    async def get_or_load(
        self,
        agent_id: AgentId,
        loader: PolicyLoader,
        ttl_secs: int = DEFAULT_POLICY_CACHE_TTL_SECS,
    ) -> PolicyDocument:
        """The cached policy, else ``await loader(agent_id)``, cached for ``ttl_secs``.

        Concurrent callers for one agent share one run of a loader (across
        processes where the store is shared). A load that an ``invalidate`` or
        a ``cache_policy`` overtook returns its value to the caller who ran it,
        never caches it, and the callers that waited on it load again. The
        loader's ``NotFoundError`` reaches the caller, and callers waiting on
        that load get it too; any other exception of the loader reaches its
        own caller unchanged, while the waiters try again, one of them loading
        while the rest wait; if that load fails too, they get its exception.
        Nothing is cached when the loader raises. A result that is not a ``PolicyDocument`` is a
        ``TypeError``.
        """


@attrs.frozen
class BackendInfo:
    """What ``aa-storage check`` reports about a backend beyond its round trips."""

    facts: tuple[tuple[str, str], ...] = ()
    warnings: tuple[str, ...] = ()


class Backend(Protocol):
    """One configured driver instance: it owns the connections its stores share.

    Besides these two methods, a backend has the accessor of each kind its
    driver provides, and only those: ``sessions()`` (:class:`SessionBackend`),
    ``rate_limiter()`` (:class:`RateLimitBackend`) and ``policies()``
    (:class:`PolicyBackend`). Each is called only when the driver lists its kind.
    """

    async def describe(self) -> BackendInfo:
        """Facts and warnings about the live backend; may do I/O."""

    async def aclose(self) -> None:
        """Release every connection; the stores must not be used afterwards."""


class SessionBackend(Backend, Protocol):
    """A backend of a driver that provides ``Kind.SESSION_STORE``."""

    def sessions(self) -> SessionStore:
        """The session store."""


class RateLimitBackend(Backend, Protocol):
    """A backend of a driver that provides ``Kind.RATE_LIMIT_COUNTER``."""

    def rate_limiter(self) -> RateLimitCounter:
        """The rate-limit counter."""


class PolicyBackend(Backend, Protocol):
    """A backend of a driver that provides ``Kind.POLICY_STORE``."""

    def policies(self) -> PolicyCache:
        """The policy store and cache."""


@attrs.frozen
class Driver:
    """What a plugin's ``register()`` hook returns.

    ``name`` is the entry-point name and the ``[storage.<name>]`` section;
    ``config_class`` is the attrs class that section is structured into (every
    field needs a default, because a missing section means the defaults);
    ``open`` builds a :class:`Backend` from such a config without doing I/O.
    """

    name: str
    config_class: type[Any]
    kinds: frozenset[Kind] = attrs.field(converter=frozenset)
    open: Callable[[Any], Backend]

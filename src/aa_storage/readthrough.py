"""Single flight for ``get_or_load`` within one process, for any driver to use.

:class:`SingleFlight` lets concurrent callers for one agent share one load, and
lets ``invalidate`` and ``cache_policy`` void a load already under way, so what
it loaded is never stored after them. A driver's ``get_or_load`` passes it an
``attempt`` that reads the cache, calls :func:`load` on a miss, and stores the
result unless the flight was voided::

    async def attempt(flight: Flight) -> PolicyDocument:
        cached = table.get(agent_id)
        if cached is not None:
            return cached
        policy = await load(loader, agent_id)
        if not flight.voided:
            table.put(agent_id, policy, ttl_secs)
        return policy

    return await flights.run(agent_id, attempt)

and its ``invalidate`` and ``cache_policy`` call ``flights.void(agent_id)``.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable

import attrs

from aa_storage._types import AgentId, PolicyDocument
from aa_storage.contracts import PolicyLoader
from aa_storage.errors import NotFoundError

__all__ = ["Flight", "SingleFlight", "load"]


async def load(loader: PolicyLoader, agent_id: AgentId) -> PolicyDocument:
    """``await loader(agent_id)``, checked: a loader that returns no awaitable, or an
    awaitable of anything but a ``PolicyDocument``, is a ``TypeError``. What the
    loader raises passes through unchanged."""
    pending = loader(agent_id)
    if not inspect.isawaitable(pending):
        raise TypeError(
            f"loader must be an async function (AgentId) -> PolicyDocument; "
            f"calling it returned {type(pending).__name__}, not an awaitable"
        )
    policy = await pending
    if not isinstance(policy, PolicyDocument):
        raise TypeError(
            f"loader must return a PolicyDocument, got {type(policy).__name__}; nothing was cached"
        )
    return policy


# The outcome that tells waiters the leader failed with anything but
# NotFoundError (or was cancelled): the next of them leads a load of its own.
_TRY_AGAIN = object()


@attrs.define(eq=False)
class Flight:
    """One load under way. ``voided`` turns true when an ``invalidate`` or a
    ``cache_policy`` of its agent overtakes it: its result must not be stored,
    and goes to the caller who ran it, not to those who waited on it."""

    outcome: asyncio.Future[object] = attrs.field(repr=False)
    voided: bool = False


@attrs.define
class SingleFlight:
    """The loads under way in this process, one per agent at most.

    A caller that finds a load under way waits for it and gets its policy, or
    its ``NotFoundError``. When the load fails otherwise, the leader's caller
    gets that exception and every waiter tries again, one of them leading the
    next load: one caller's failure (a timeout, a cancellation) is not the
    others'. A voided load answers its own caller only, and its waiters try
    again too, so nobody but the caller who started it gets a policy that an
    ``invalidate`` overtook. Voiding a flight also takes it off the table, so
    callers that come after an ``invalidate`` start a load of their own. An
    ``attempt`` may void its own flight, when it learns that something
    overtook its load (the Redis driver does, when its write-back is refused).
    """

    _flights: dict[AgentId, Flight] = attrs.field(factory=dict, repr=False)

    def void(self, agent_id: AgentId) -> None:
        """Mark the agent's load under way, if any, as overtaken."""
        flight = self._flights.pop(agent_id, None)
        if flight is not None:
            flight.voided = True

    async def run(
        self, agent_id: AgentId, attempt: Callable[[Flight], Awaitable[PolicyDocument]]
    ) -> PolicyDocument:
        """Join the agent's load under way, or lead one that runs ``attempt``."""
        while True:
            flight = self._flights.get(agent_id)
            if flight is None:
                return await self._lead(agent_id, attempt)
            # Shielded: a waiter that is cancelled must not cancel the others' wait.
            outcome = await asyncio.shield(flight.outcome)
            if isinstance(outcome, PolicyDocument):
                return outcome
            if isinstance(outcome, NotFoundError):
                raise outcome

    async def _lead(
        self, agent_id: AgentId, attempt: Callable[[Flight], Awaitable[PolicyDocument]]
    ) -> PolicyDocument:
        flight = Flight(asyncio.get_running_loop().create_future())
        self._flights[agent_id] = flight
        outcome: object = _TRY_AGAIN
        try:
            policy = await attempt(flight)
            if not flight.voided:
                outcome = policy
            return policy
        except NotFoundError as exc:
            outcome = exc
            raise
        finally:
            if self._flights.get(agent_id) is flight:
                del self._flights[agent_id]
            flight.outcome.set_result(outcome)

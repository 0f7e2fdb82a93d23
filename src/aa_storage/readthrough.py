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

A driver with leases also bounds the waiting, as it is bounded for callers in
other processes: it passes :meth:`SingleFlight.run` a :class:`Patience`, and
its ``attempt`` calls :meth:`Flight.lasts` when the load starts.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable

import attrs

from aa_storage._types import AgentId, PolicyDocument
from aa_storage.contracts import PolicyLoader
from aa_storage.errors import NotFoundError

__all__ = ["Flight", "Patience", "SingleFlight", "load"]


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


# The outcome that tells waiters the leader's load was voided, its caller
# cancelled, or that it ran past its ``lasts``: the next of them leads a load
# of its own. (A failed load's outcome is its exception.)
_TRY_AGAIN = object()


@attrs.define(eq=False)
class Flight:
    """One load under way. ``voided`` turns true when an ``invalidate`` or a
    ``cache_policy`` of its agent overtakes it: its result must not be stored,
    and goes to the caller who ran it, not to those who waited on it."""

    outcome: asyncio.Future[object] = attrs.field(repr=False)
    voided: bool = False
    #: The load that one of its waiters led after this one failed, which the
    #: others wait on (or read, if it is already over) instead of leading their own.
    retry: Flight | None = attrs.field(default=None, repr=False)
    _run_out: asyncio.TimerHandle | None = attrs.field(default=None, repr=False)

    def lasts(self, seconds: float) -> None:
        """Hold the callers waiting on this load for ``seconds`` from now at most; then
        they stop waiting and one of them leads the next load. The caller who runs
        this one still gets its result."""
        if self._run_out is not None:
            self._run_out.cancel()
        self._run_out = asyncio.get_running_loop().call_later(seconds, self.end, _TRY_AGAIN)

    def end(self, outcome: object) -> None:
        """Give the waiters ``outcome`` (for :class:`SingleFlight`); once is enough."""
        if self._run_out is not None:
            self._run_out.cancel()
        if not self.outcome.done():
            self.outcome.set_result(outcome)


@attrs.frozen
class Patience:
    """How long a caller waits on loads that other callers in this process run:
    until ``until``, on the running loop's clock; then it returns ``then()``."""

    until: float
    then: Callable[[], Awaitable[PolicyDocument]]


@attrs.define
class SingleFlight:
    """The loads under way in this process, one per agent at most.

    A caller that finds a load under way waits for it and gets its policy, or
    its ``NotFoundError``. When the load fails otherwise, the leader's caller
    gets that exception and every waiter tries again, one of them leading the
    next load: one caller's failure (a timeout, a cancellation) is not the
    others'. When that load fails too, with an exception (not a cancellation),
    the waiters who tried again get it: an upstream that keeps failing costs
    two loads, not one per caller in turn. A voided load answers its own
    caller only, and its waiters try again too, so nobody but the caller who
    started it gets a policy that an ``invalidate`` overtook. Voiding a flight
    also takes it off the table, so callers that come after an ``invalidate``
    start a load of their own. An ``attempt`` may void its own flight, when it
    learns that something overtook its load (the Redis driver does, when its
    write-back is refused).

    Waiting is bounded only where the driver bounds it: a flight whose
    :meth:`Flight.lasts` runs out lets its waiters go, and one of them leads
    the next load while the rest wait on that one; a caller given a
    :class:`Patience` stops waiting at its end. A finished flight takes only
    itself off the table, never a newer flight of its agent.
    """

    _flights: dict[AgentId, Flight] = attrs.field(factory=dict, repr=False)

    def void(self, agent_id: AgentId) -> None:
        """Mark the agent's load under way, if any, as overtaken."""
        flight = self._flights.pop(agent_id, None)
        if flight is not None:
            flight.voided = True

    async def run(
        self,
        agent_id: AgentId,
        attempt: Callable[[Flight], Awaitable[PolicyDocument]],
        patience: Patience | None = None,
    ) -> PolicyDocument:
        """Join the agent's load under way, or lead one that runs ``attempt``."""
        failed: Flight | None = None  # the failed load this caller is trying again after
        while True:
            retry = failed.retry if failed is not None else None
            flight = retry if retry is not None else self._holding(agent_id)
            if flight is None:
                return await self._lead(agent_id, attempt, failed)
            # Shielded: a waiter that is cancelled, or gives up, must not end the others' wait.
            waiting = asyncio.shield(flight.outcome)
            if patience is None:
                outcome = await waiting
            else:
                try:
                    async with asyncio.timeout_at(patience.until):
                        outcome = await waiting
                except TimeoutError:
                    return await patience.then()
            if isinstance(outcome, PolicyDocument):
                return outcome
            if isinstance(outcome, NotFoundError) or (
                failed is not None and isinstance(outcome, Exception)
            ):
                raise outcome
            failed = flight if isinstance(outcome, Exception) else None

    def _holding(self, agent_id: AgentId) -> Flight | None:
        """The agent's flight under way, if it still holds its waiters. One that was let go
        (its ``lasts`` ran out) is still under way for its own caller, but the first caller
        to find it leads the next load."""
        flight = self._flights.get(agent_id)
        return None if flight is None or flight.outcome.done() else flight

    async def _lead(
        self,
        agent_id: AgentId,
        attempt: Callable[[Flight], Awaitable[PolicyDocument]],
        failed: Flight | None,
    ) -> PolicyDocument:
        flight = Flight(asyncio.get_running_loop().create_future())
        self._flights[agent_id] = flight
        if failed is not None:
            failed.retry = flight
        outcome: object = _TRY_AGAIN
        try:
            policy = await attempt(flight)
            if not flight.voided:
                outcome = policy
            return policy
        except Exception as exc:
            outcome = exc
            raise
        finally:
            # Only this flight: after a void, or once this one ran out, a newer flight
            # of the agent holds callers of its own.
            if self._flights.get(agent_id) is flight:
                del self._flights[agent_id]
            flight.end(outcome)

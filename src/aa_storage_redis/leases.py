"""``get_or_load`` on Redis: one load per agent across processes, fenced by a lease.

A miss hands one caller, in any process, a lease on the agent's policy: a
token the server issues. Only that caller runs the loader; the others poll
for its policy with a short backoff, up to ``lease_wait`` seconds, and then
load for themselves without caching. The write-back stores the policy only
while the token still holds the lease; ``invalidate`` and ``cache_policy``
kill it, so a load they overtook is never cached. A lease lives
``lease_ttl`` seconds, so a loader that crashes or hangs holds the others
up at most that long. Callers in the leader's own process wait on its
flight (:mod:`aa_storage.readthrough`) under the same two bounds: the flight
lasts ``lease_ttl`` from the start of its load, and each caller gives up at
the end of its ``lease_wait``. The scripts are in :mod:`aa_storage_redis.scripts`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable

import attrs

from aa_storage import (
    AgentId,
    NotFoundError,
    PolicyDocument,
    StorageError,
    policy_from_json,
    policy_to_json,
)
from aa_storage.contracts import PolicyLoader
from aa_storage.readthrough import Flight, load
from aa_storage_redis.executor import Executor
from aa_storage_redis.keys import KeySpace
from aa_storage_redis.scripts import FILL, GET_OR_LEASE, RELEASE
from aa_storage_redis.telemetry import detached, note

logger = logging.getLogger("aa_storage_redis")

# Waiters poll for the leader's policy 5 ms after they find its lease, then
# at doubling intervals up to 50 ms: a typical load is over within a few
# polls, and a slow one costs each waiter at most 20 polls a second.
_FIRST_POLL_SECS = 0.005
_LONGEST_POLL_SECS = 0.05

# GET_OR_LEASE's replies, by their first element.
_HIT, _LEAD, _WAIT, _NONE_UPSTREAM = 0, 1, 2, 3


@attrs.frozen
class Leases:
    """The lease protocol over one executor; ``read_through`` is one caller's miss.

    A lease lives ``ttl`` seconds; a caller waits ``wait`` seconds at most for a
    load run by another before it loads for itself without caching.
    """

    executor: Executor
    keys: KeySpace
    ttl: float
    wait: float
    _releasing: set[asyncio.Task[None]] = attrs.field(factory=set, init=False, repr=False)
    """Releases sent for cancelled leaders, held so they are not collected mid-flight."""

    async def read_through(
        self, agent_id: AgentId, loader: PolicyLoader, ttl_secs: int, flight: Flight, until: float
    ) -> PolicyDocument:
        """The cached policy, the one loaded under the lease this call gets or
        waits on, or past ``until`` (the end of the caller's ``lease_wait``, on
        the loop's clock) one loaded here and not cached. When the write-back
        is refused, something overtook the load: ``flight`` is voided, so the
        callers in this process that waited on it load again. Whichever load
        runs here, ``flight`` holds its waiters ``lease_ttl`` at most.

        ``GET_OR_LEASE`` is sent as a read, so a lost reply is retried: if the
        lost run had issued a lease, the retry finds that lease held and waits,
        and the call ends up loading without caching once ``lease_wait`` is
        over, while other callers wait up to ``lease_ttl``. Nothing is lost.
        """
        keys = self.keys.policy_with_lease(agent_id)
        lease_ms = max(1, round(self.ttl * 1000))
        clock = asyncio.get_running_loop().time
        pause = _FIRST_POLL_SECS
        waited_on = b""
        while True:
            reply = await self.executor.run_script(
                GET_OR_LEASE, keys, [lease_ms, waited_on], read=True
            )
            if reply[0] == _HIT:
                return policy_from_json(reply[1])
            if reply[0] == _LEAD:
                return await self._lead(keys, reply[1], agent_id, loader, ttl_secs, flight)
            if reply[0] == _NONE_UPSTREAM:
                raise NotFoundError(
                    f"no policy for agent {agent_id.hex}: the load this call waited for found none"
                )
            if not waited_on:
                self.executor.counters.lease_waits += 1
                note("lease wait")
            waited_on, left_ms = reply[1], reply[2]
            left = until - clock()
            if left <= 0:
                break
            await asyncio.sleep(min(pause, left, left_ms / 1000))
            pause = min(pause * 2, _LONGEST_POLL_SECS)
        flight.lasts(self.ttl)
        return await self.load(loader, agent_id)

    async def _lead(
        self,
        keys: list[bytes],
        token: bytes,
        agent_id: AgentId,
        loader: PolicyLoader,
        ttl_secs: int,
        flight: Flight,
    ) -> PolicyDocument:
        """Load under the lease ``token``, then write back if it still holds."""
        # The lease runs out for other processes lease_ttl after it was issued, a little
        # before this; the waiters here are let go then too.
        flight.lasts(self.ttl)
        try:
            policy = await self.load(loader, agent_id)
        except NotFoundError:
            await self._release(keys, token, b"n")
            raise
        except Exception:
            await self._release(keys, token, b"-")
            raise
        except BaseException:
            # Cancelled: give the lease up without holding the caller any longer.
            task = detached(self._release(keys, token, b"-"))
            self._releasing.add(task)
            task.add_done_callback(self._releasing.discard)
            raise
        try:
            # Safe to repeat after a lost reply: the first run released the lease.
            stored = await self.executor.run_script(
                FILL, keys, [token, policy_to_json(policy), ttl_secs], read=True
            )
            if not stored:
                flight.voided = True
        except StorageError as exc:
            # The caller has its policy; the next miss loads again.
            logger.warning("get_or_load could not cache agent %s's policy: %s", agent_id.hex, exc)
        return policy

    def load(self, loader: PolicyLoader, agent_id: AgentId) -> Awaitable[PolicyDocument]:
        """Run ``loader`` for ``agent_id`` (see :func:`aa_storage.readthrough.load`),
        counted in ``stats().loads_run``."""
        self.executor.counters.loads_run += 1
        return load(loader, agent_id)

    async def _release(self, keys: list[bytes], token: bytes, mark: bytes) -> None:
        """End the lease, if ``token`` still holds it; a failure only lets it run out."""
        try:
            await self.executor.run_script(RELEASE, keys, [token, mark], read=True)
        except StorageError as exc:
            logger.warning("could not release a get_or_load lease: %s", exc)

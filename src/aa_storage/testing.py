"""The contract suite: every rule of the store contracts, as pytest tests.

One class holds the rules of each kind of store: :class:`SessionContract`,
:class:`RateLimitContract`, :class:`PolicyContract` and, for the policy
store's ``get_or_load``, :class:`ReadThroughContract`. :class:`ContractSuite`
inherits all four. A driver author's test class inherits the contracts of
the kinds the driver provides, ``ContractSuite`` for all of them, and
overrides two fixtures: ``backend`` (a fresh, empty backend of the driver,
closed afterwards) and, when the driver can be given a fake clock,
``clock``. A driver that provides only rate limits::

    import pytest_asyncio
    from aa_storage.testing import RateLimitContract

    class TestMyDriver(RateLimitContract):
        @pytest_asyncio.fixture
        async def backend(self):
            backend = MyBackend.connect(MyConfig())
            yield backend
            await backend.aclose()

Helpers for a driver's own tests: :class:`FakeClock`, :class:`ScriptedLoader`
(a ``get_or_load`` loader that counts its runs and can be held at a gate),
:func:`bounded` (an await that fails rather than hangs), :func:`a_policy` and
:func:`a_session`.

Needs the ``testing`` extra (pytest, pytest-asyncio). On a real clock the
TTL tests wait about a second each; tests that would wait an hour are skipped.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from types import MappingProxyType
from typing import Any, TypeVar

import attrs

try:
    import pytest

    # Not used by name: its plugin is what runs the suite's asyncio-marked tests.
    import pytest_asyncio  # noqa: F401
except ImportError as exc:
    raise ImportError(
        f"aa_storage.testing needs {exc.name}, which the testing extra installs: "
        "pip install 'aa-storage[testing]'",
        name=exc.name,
    ) from None

from aa_storage import (
    SESSION_TTL_SECS,
    AgentId,
    EnforcementMode,
    Kind,
    NotFoundError,
    PolicyDecision,
    PolicyDocument,
    PolicyRule,
    SessionId,
    SessionRecord,
    StorageError,
)

I64_MAX = 2**63 - 1
_T = TypeVar("_T")
# Parameters are fixed values: random ones would change the test ids on every run.
_FIXED_ID = bytes(range(16))
# Real-clock waits: past a 1 s window, with room for scheduling jitter.
PAST_ONE_SECOND = 1.2
# How long concurrent get_or_load callers get to find a load under way before it
# finishes. Whatever they find, the outcome the tests expect is the same.
SETTLE_SECS = 0.2
# A test that waits longer than this for a store call is hung, not slow.
HANG_SECS = 30.0


@attrs.define
class RealClock:
    """Time passes by sleeping; long jumps are impossible."""

    can_jump = False

    async def advance(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


@attrs.define
class FakeClock:
    """A monotonic clock in seconds that moves only when told; pass it as a driver's clock."""

    now: float = 1_000.0
    can_jump = True

    def __call__(self) -> float:
        return self.now

    async def advance(self, seconds: float) -> None:
        self.now += seconds


def a_policy(name: str = "default") -> PolicyDocument:
    """A policy with every decision and a non-default mode, to catch lossy encodings."""
    return PolicyDocument(
        version=7,
        name=name,
        rules=[
            PolicyRule("tool:*", PolicyDecision.ALLOW),
            PolicyRule("net:\u00e9t\u00e9/*", PolicyDecision.DENY),
            PolicyRule("fs:write", PolicyDecision.REQUIRE_APPROVAL),
        ],
        enforcement_mode=EnforcementMode.OBSERVE,
    )


@attrs.define
class ScriptedLoader:
    """A ``get_or_load`` loader that counts its runs. Run N returns (or raises) the
    Nth of ``outcomes``, the last one once they run out. With a ``gate``, every run
    waits for it to be set; ``entered`` is set once a run has started."""

    outcomes: list[object]
    gate: asyncio.Event | None = None
    runs: int = 0
    entered: asyncio.Event = attrs.field(factory=asyncio.Event)

    async def __call__(self, agent_id: AgentId) -> Any:
        self.runs += 1
        outcome = self.outcomes[min(self.runs, len(self.outcomes)) - 1]
        self.entered.set()
        if self.gate is not None:
            await self.gate.wait()
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    def release(self) -> None:
        """Open the ``gate``: the runs waiting for it go on, and later runs do not wait."""
        if self.gate is None:
            raise TypeError("this loader has no gate to open")
        self.gate.set()


async def bounded(awaitable: Awaitable[_T]) -> _T:
    """``await awaitable``, raising ``TimeoutError`` rather than hanging past ``HANG_SECS``."""
    return await asyncio.wait_for(awaitable, HANG_SECS)


def a_session(started_at_ns: int = 1_700_000_000_000_000_000) -> SessionRecord:
    """A fresh session record with random ids."""
    return SessionRecord(SessionId.new(), AgentId.new(), started_at_ns)


# One valid call of each store method, by name: what a closed backend must refuse.
# Each store holds the record, counter or policy it names (see _stocked).
_CALLS: Mapping[str, Callable[[Any], Awaitable[Any]]] = MappingProxyType(
    {
        "save": lambda store: store.save(SessionRecord(SessionId(_FIXED_ID), AgentId.new(), 1)),
        "load": lambda store: store.load(SessionId(_FIXED_ID)),
        "delete": lambda store: store.delete(SessionId(_FIXED_ID)),
        "increment": lambda counter: counter.increment("k", 1, 60),
        "current": lambda counter: counter.current("k"),
        "reset": lambda counter: counter.reset("k"),
        "get_policy": lambda policies: policies.get_policy(AgentId(_FIXED_ID)),
        "cache_policy": lambda policies: policies.cache_policy(AgentId(_FIXED_ID), a_policy(), 60),
        "invalidate": lambda policies: policies.invalidate(AgentId(_FIXED_ID)),
        "get_or_load": lambda policies: policies.get_or_load(
            AgentId(_FIXED_ID), ScriptedLoader([AssertionError("a closed store loaded")]), 60
        ),
    }
)


async def _stocked(backend: Any, kind: Kind) -> Any:
    """The backend's store of ``kind``, holding what ``_CALLS`` reads, and read once
    (a driver with a local cache now holds it there too)."""
    if kind is Kind.SESSION_STORE:
        store = backend.sessions()
        await store.save(SessionRecord(SessionId(_FIXED_ID), AgentId.new(), 1))
        await store.load(SessionId(_FIXED_ID))
    elif kind is Kind.RATE_LIMIT_COUNTER:
        store = backend.rate_limiter()
        await store.increment("k", 1, 60)
    else:
        store = backend.policies()
        await store.cache_policy(AgentId(_FIXED_ID), a_policy(), 60)
        await store.get_policy(AgentId(_FIXED_ID))
    return store


async def _refused_once_closed(backend: Any, kind: Kind, method: str) -> None:
    """Close ``backend``, then check that ``method`` of its store of ``kind`` raises a
    ``StorageError`` that says so: not a ``NotFoundError``, which would claim that the
    store is empty, and not a stale answer."""
    store = await _stocked(backend, kind)
    await backend.aclose()
    with pytest.raises(StorageError) as caught:
        await bounded(_CALLS[method](store))
    assert not isinstance(caught.value, NotFoundError), (
        f"{method} after aclose() raised {caught.value!r}: a closed store is not an empty one"
    )


class _Contract:
    """The fixtures every contract class shares; a driver's test class overrides them."""

    pytestmark = pytest.mark.asyncio

    @pytest.fixture
    def backend(self) -> Any:
        raise NotImplementedError("override the backend fixture with a fresh backend")

    @pytest.fixture
    def clock(self) -> Any:
        return RealClock()


class SessionContract(_Contract):
    """The rules of :class:`~aa_storage.SessionStore`, on ``backend.sessions()``."""

    async def test_saved_session_loads_equal(self, backend: Any) -> None:
        """A saved record loads back equal, including the largest timestamp."""
        record = a_session(2**64 - 1)
        await backend.sessions().save(record)
        assert await backend.sessions().load(record.session_id) == record

    async def test_save_replaces_record_with_same_id(self, backend: Any) -> None:
        """Saving a record with an existing id replaces the old one."""
        first = a_session(1)
        second = SessionRecord(first.session_id, AgentId.new(), 2)
        await backend.sessions().save(first)
        await backend.sessions().save(second)
        assert await backend.sessions().load(first.session_id) == second

    async def test_load_of_absent_session_is_not_found(self, backend: Any) -> None:
        """Loading an id never saved raises NotFoundError."""
        with pytest.raises(NotFoundError):
            await backend.sessions().load(SessionId.new())

    async def test_delete_is_idempotent(self, backend: Any) -> None:
        """Delete removes the record, and deleting again is not an error."""
        record = a_session()
        await backend.sessions().save(record)
        await backend.sessions().delete(record.session_id)
        await backend.sessions().delete(record.session_id)
        with pytest.raises(NotFoundError):
            await backend.sessions().load(record.session_id)

    async def test_session_expires_after_ttl_unless_saved_again(
        self, backend: Any, clock: Any
    ) -> None:
        """A session lives SESSION_TTL_SECS after its last save, not its first."""
        if not clock.can_jump:
            pytest.skip("needs a clock that can jump an hour")
        record = a_session()
        await backend.sessions().save(record)
        await clock.advance(SESSION_TTL_SECS - 1)
        await backend.sessions().save(record)
        await clock.advance(SESSION_TTL_SECS - 1)
        assert await backend.sessions().load(record.session_id) == record
        await clock.advance(1)
        with pytest.raises(NotFoundError):
            await backend.sessions().load(record.session_id)

    async def test_session_ids_of_the_wrong_kind_are_rejected(self, backend: Any) -> None:
        """An AgentId where a SessionId belongs, raw bytes or a non-record is a TypeError."""
        with pytest.raises(TypeError):
            await backend.sessions().load(AgentId.new())
        with pytest.raises(TypeError):
            await backend.sessions().delete(SessionId.new().bytes)
        with pytest.raises(TypeError):
            await backend.sessions().save("not a record")

    @pytest.mark.parametrize(
        ("method", "argument"),
        [
            ("save", None),
            ("save", (bytes(16), bytes(16), 1)),
            ("load", None),
            ("load", "00" * 16),
            ("delete", AgentId(_FIXED_ID)),
            ("delete", None),
        ],
    )
    async def test_every_session_method_rejects_a_wrong_argument(
        self, backend: Any, method: str, argument: Any
    ) -> None:
        """save, load and delete each refuse what is not a record or a SessionId with a
        TypeError, and a refused delete deletes nothing."""
        store = backend.sessions()
        record = SessionRecord(SessionId(_FIXED_ID), AgentId.new(), 1)
        await store.save(record)
        with pytest.raises(TypeError):
            await getattr(store, method)(argument)
        assert await store.load(record.session_id) == record

    @pytest.mark.parametrize("method", ["delete", "load", "save"])
    async def test_session_calls_after_aclose_raise(self, backend: Any, method: str) -> None:
        """Once the backend is closed, every session call raises StorageError."""
        await _refused_once_closed(backend, Kind.SESSION_STORE, method)


class RateLimitContract(_Contract):
    """The rules of :class:`~aa_storage.RateLimitCounter`, on ``backend.rate_limiter()``."""

    async def test_increments_sum_within_a_window(self, backend: Any) -> None:
        """Each increment returns the running total, and current() agrees."""
        counter = backend.rate_limiter()
        assert [await counter.increment("k", n, 60) for n in (1, 0, 5, 2)] == [1, 1, 6, 8]
        assert await counter.current("k") == 8

    async def test_unknown_counter_is_zero(self, backend: Any) -> None:
        """current() of a counter never incremented is 0."""
        assert await backend.rate_limiter().current("never") == 0

    async def test_counters_are_independent(self, backend: Any) -> None:
        """Incrementing one key leaves every other key alone."""
        counter = backend.rate_limiter()
        await counter.increment("a", 3, 60)
        await counter.increment("b", 4, 60)
        assert (await counter.current("a"), await counter.current("b")) == (3, 4)

    async def test_reset_is_idempotent(self, backend: Any) -> None:
        """reset() drops the counter, and resetting again is not an error."""
        counter = backend.rate_limiter()
        await counter.increment("k", 9, 60)
        await counter.reset("k")
        await counter.reset("k")
        assert await counter.current("k") == 0
        assert await counter.increment("k", 1, 60) == 1

    async def test_window_expiry_starts_a_new_window(self, backend: Any, clock: Any) -> None:
        """After the window passes the counter reads 0 and the next increment starts afresh."""
        counter = backend.rate_limiter()
        await counter.increment("k", 4, 1)
        await clock.advance(PAST_ONE_SECOND)
        assert await counter.current("k") == 0
        assert await counter.increment("k", 2, 1) == 2

    async def test_later_increments_never_move_the_window(self, backend: Any, clock: Any) -> None:
        """The window is fixed at the first increment: later ones, of 0 too, don't extend it."""
        counter = backend.rate_limiter()
        await counter.increment("k", 1, 2)
        await clock.advance(1.2)
        await counter.increment("k", 0, 2)
        assert await counter.increment("k", 1, 60) == 2
        await clock.advance(1.2)
        assert await counter.current("k") == 0

    async def test_overflow_is_an_error_and_keeps_the_total(self, backend: Any) -> None:
        """Going past 2**63-1 raises StorageError and leaves the counter as it was."""
        counter = backend.rate_limiter()
        await counter.increment("k", I64_MAX, 60)
        with pytest.raises(StorageError, match="overflow"):
            await counter.increment("k", 1, 60)
        assert await counter.current("k") == I64_MAX

    async def test_increments_reach_exactly_2_63_minus_1(self, backend: Any) -> None:
        """Increments of an existing counter that end exactly at 2**63-1 succeed, and so does
        one of 0 there; only a total past it is an overflow."""
        counter = backend.rate_limiter()
        assert await counter.increment("k", 1, 60) == 1
        assert await counter.increment("k", I64_MAX - 2, 60) == I64_MAX - 1
        assert await counter.increment("k", 1, 60) == I64_MAX
        assert await counter.increment("k", 0, 60) == I64_MAX
        with pytest.raises(StorageError, match="overflow"):
            await counter.increment("k", 1, 60)
        assert await counter.current("k") == I64_MAX

    async def test_concurrent_increments_sum_exactly(self, backend: Any) -> None:
        """200 increments racing in one event loop lose none and repeat none."""
        counter = backend.rate_limiter()
        totals = await asyncio.gather(*(counter.increment("race", 1, 60) for _ in range(200)))
        assert sorted(totals) == list(range(1, 201))
        assert await counter.current("race") == 200

    @pytest.mark.parametrize(
        ("key", "amount", "window_secs", "error"),
        [
            ("", 1, 60, ValueError),
            (b"k", 1, 60, TypeError),
            ("k", -1, 60, ValueError),
            ("k", 1.0, 60, TypeError),
            ("k", True, 60, TypeError),
            ("k", I64_MAX + 1, 60, ValueError),
            ("k", 1, 0, ValueError),
            ("k", 1, -5, ValueError),
            ("k", 1, 1.5, TypeError),
        ],
    )
    async def test_bad_increment_arguments_are_rejected(
        self, backend: Any, key: Any, amount: Any, window_secs: Any, error: type[Exception]
    ) -> None:
        """A wrong type is a TypeError and a bad value a ValueError, and nothing is counted."""
        counter = backend.rate_limiter()
        with pytest.raises(error):
            await counter.increment(key, amount, window_secs)
        if isinstance(key, str) and key:
            assert await counter.current(key) == 0

    @pytest.mark.parametrize("method", ["current", "reset"])
    @pytest.mark.parametrize(
        ("key", "error"),
        [
            ("", ValueError),
            ("\ud800", ValueError),
            (b"k", TypeError),
            (7, TypeError),
            (None, TypeError),
        ],
        ids=["empty", "lone-surrogate", "bytes", "int", "none"],
    )
    async def test_bad_keys_are_rejected_by_current_and_reset(
        self, backend: Any, method: str, key: Any, error: type[Exception]
    ) -> None:
        """current and reset check their key as increment does: an empty or unencodable
        key is a ValueError, a key that is not a str a TypeError, and nothing is reset."""
        counter = backend.rate_limiter()
        await counter.increment("k", 3, 60)
        with pytest.raises(error):
            await getattr(counter, method)(key)
        assert await counter.current("k") == 3

    @pytest.mark.parametrize("method", ["current", "increment", "reset"])
    async def test_rate_limit_calls_after_aclose_raise(self, backend: Any, method: str) -> None:
        """Once the backend is closed, every counter call raises StorageError."""
        await _refused_once_closed(backend, Kind.RATE_LIMIT_COUNTER, method)


class PolicyContract(_Contract):
    """The rules of a policy cache's reads and writes (``get_policy``, ``cache_policy``,
    ``invalidate``), on ``backend.policies()``."""

    async def test_cached_policy_reads_back_equal(self, backend: Any) -> None:
        """A cached policy reads back equal, non-ASCII text and all."""
        agent = AgentId.new()
        await backend.policies().cache_policy(agent, a_policy("r\u00e8gles \U0001f512"), 60)
        assert await backend.policies().get_policy(agent) == a_policy("r\u00e8gles \U0001f512")

    async def test_missing_policy_is_not_found(self, backend: Any) -> None:
        """get_policy of an agent with nothing cached raises NotFoundError."""
        with pytest.raises(NotFoundError):
            await backend.policies().get_policy(AgentId.new())

    async def test_invalidate_is_idempotent(self, backend: Any) -> None:
        """invalidate() makes the next read miss, and invalidating again is not an error."""
        agent = AgentId.new()
        await backend.policies().cache_policy(agent, a_policy(), 60)
        await backend.policies().invalidate(agent)
        await backend.policies().invalidate(agent)
        with pytest.raises(NotFoundError):
            await backend.policies().get_policy(agent)

    async def test_cached_policy_expires_after_its_ttl(self, backend: Any, clock: Any) -> None:
        """A policy cached for 1 s is gone after it."""
        agent = AgentId.new()
        await backend.policies().cache_policy(agent, a_policy(), 1)
        await clock.advance(PAST_ONE_SECOND)
        with pytest.raises(NotFoundError):
            await backend.policies().get_policy(agent)

    @pytest.mark.parametrize(
        ("agent", "policy", "ttl_secs", "error"),
        [
            pytest.param(SessionId(_FIXED_ID), a_policy(), 60, TypeError, id="session-id"),
            pytest.param(_FIXED_ID, a_policy(), 60, TypeError, id="raw-bytes"),
            pytest.param(AgentId(_FIXED_ID), {"version": 1}, 60, TypeError, id="not-a-policy"),
            pytest.param(AgentId(_FIXED_ID), a_policy(), 0, ValueError, id="zero-ttl"),
            pytest.param(AgentId(_FIXED_ID), a_policy(), 2.5, TypeError, id="float-ttl"),
        ],
    )
    async def test_bad_cache_arguments_are_rejected(
        self, backend: Any, agent: Any, policy: Any, ttl_secs: Any, error: type[Exception]
    ) -> None:
        """A wrong id type, a non-policy or a bad TTL is rejected before anything is stored."""
        with pytest.raises(error):
            await backend.policies().cache_policy(agent, policy, ttl_secs)
        if isinstance(agent, AgentId):
            with pytest.raises(NotFoundError):
                await backend.policies().get_policy(agent)

    async def test_policy_ids_of_the_wrong_kind_are_rejected(self, backend: Any) -> None:
        """A SessionId (or raw bytes) where an AgentId belongs is a TypeError."""
        with pytest.raises(TypeError):
            await backend.policies().get_policy(SessionId.new())
        with pytest.raises(TypeError):
            await backend.policies().invalidate(AgentId.new().bytes)

    @pytest.mark.parametrize("method", ["get_policy", "invalidate"])
    @pytest.mark.parametrize(
        "agent",
        [SessionId(_FIXED_ID), _FIXED_ID, _FIXED_ID.hex(), None],
        ids=["session-id", "raw-bytes", "hex", "none"],
    )
    async def test_policy_reads_and_invalidations_reject_a_wrong_id(
        self, backend: Any, method: str, agent: Any
    ) -> None:
        """get_policy and invalidate refuse anything but an AgentId with a TypeError, and a
        refused invalidate drops nothing."""
        policies = backend.policies()
        await policies.cache_policy(AgentId(_FIXED_ID), a_policy(), 60)
        with pytest.raises(TypeError):
            await getattr(policies, method)(agent)
        assert await policies.get_policy(AgentId(_FIXED_ID)) == a_policy()

    @pytest.mark.parametrize("method", ["cache_policy", "get_policy", "invalidate"])
    async def test_policy_calls_after_aclose_raise(self, backend: Any, method: str) -> None:
        """Once the backend is closed, every policy call raises StorageError, a policy
        read before included."""
        await _refused_once_closed(backend, Kind.POLICY_STORE, method)


class ReadThroughContract(_Contract):
    """The rules of a policy cache's ``get_or_load``, on ``backend.policies()``: one load
    per miss, errors passed through, and no write-back that an invalidation overtook."""

    async def test_get_or_load_returns_a_cached_policy_without_loading(self, backend: Any) -> None:
        """A hit returns the cached policy, and the loader never runs."""
        agent = AgentId.new()
        await backend.policies().cache_policy(agent, a_policy("cached"), 60)
        loader = ScriptedLoader([a_policy("loaded")])
        assert await backend.policies().get_or_load(agent, loader, 60) == a_policy("cached")
        assert loader.runs == 0

    async def test_get_or_load_loads_a_miss_once_and_caches_it(self, backend: Any) -> None:
        """A miss runs the loader once and caches its policy, which the next calls read."""
        agent = AgentId.new()
        loader = ScriptedLoader([a_policy("loaded")])
        policies = backend.policies()
        assert await policies.get_or_load(agent, loader, 60) == a_policy("loaded")
        assert await policies.get_or_load(agent, loader) == a_policy("loaded")
        assert await policies.get_policy(agent) == a_policy("loaded")
        assert loader.runs == 1

    async def test_concurrent_get_or_load_calls_share_one_load(self, backend: Any) -> None:
        """20 callers racing on a cold key get one policy from a single run of the loader."""
        agent = AgentId.new()
        loader = ScriptedLoader([a_policy("loaded")], gate=asyncio.Event())
        calls = [
            asyncio.ensure_future(backend.policies().get_or_load(agent, loader, 60))
            for _ in range(20)
        ]
        await bounded(loader.entered.wait())
        await asyncio.sleep(SETTLE_SECS)
        loader.release()
        assert await bounded(asyncio.gather(*calls)) == [a_policy("loaded")] * 20
        assert loader.runs == 1

    async def test_a_loaders_not_found_error_reaches_the_caller(self, backend: Any) -> None:
        """The loader's NotFoundError is what the caller gets, and nothing is cached."""
        agent = AgentId.new()
        missing = NotFoundError("no policy upstream")
        with pytest.raises(NotFoundError) as caught:
            await backend.policies().get_or_load(agent, ScriptedLoader([missing]), 60)
        assert caught.value is missing
        with pytest.raises(NotFoundError):
            await backend.policies().get_policy(agent)

    async def test_a_loaders_other_errors_pass_through_unchanged(self, backend: Any) -> None:
        """Any other exception of the loader reaches the caller unchanged and caches
        nothing, so the next call loads again."""
        agent = AgentId.new()
        failure = RuntimeError("authoritative store unreachable")
        loader = ScriptedLoader([failure, a_policy("loaded")])
        with pytest.raises(RuntimeError) as caught:
            await backend.policies().get_or_load(agent, loader, 60)
        assert caught.value is failure
        with pytest.raises(NotFoundError):
            await backend.policies().get_policy(agent)
        assert await backend.policies().get_or_load(agent, loader, 60) == a_policy("loaded")
        assert loader.runs == 2

    async def test_a_waiter_whose_leader_failed_loads_again(self, backend: Any) -> None:
        """When the shared load fails with another error, only its own caller gets it:
        the other caller loads again and gets, and caches, a policy."""
        agent = AgentId.new()
        loader = ScriptedLoader([RuntimeError("first run"), a_policy("second")], asyncio.Event())
        calls = [
            asyncio.ensure_future(backend.policies().get_or_load(agent, loader, 60))
            for _ in range(2)
        ]
        await bounded(loader.entered.wait())
        await asyncio.sleep(SETTLE_SECS)
        loader.release()
        outcomes = await bounded(asyncio.gather(*calls, return_exceptions=True))
        assert sorted(type(outcome).__name__ for outcome in outcomes) == [
            "PolicyDocument",
            "RuntimeError",
        ]
        assert loader.runs == 2
        assert await backend.policies().get_policy(agent) == a_policy("second")

    async def test_invalidate_during_a_load_keeps_its_policy_out(self, backend: Any) -> None:
        """A load that an invalidate overtakes returns its policy to its caller but never
        caches it; the next call loads afresh."""
        agent = AgentId.new()
        loader = ScriptedLoader([a_policy("before")], gate=asyncio.Event())
        call = asyncio.ensure_future(backend.policies().get_or_load(agent, loader, 60))
        await bounded(loader.entered.wait())
        await backend.policies().invalidate(agent)
        loader.release()
        assert await bounded(call) == a_policy("before")
        with pytest.raises(NotFoundError):
            await backend.policies().get_policy(agent)
        fresh = ScriptedLoader([a_policy("after")])
        assert await backend.policies().get_or_load(agent, fresh, 60) == a_policy("after")
        assert fresh.runs == 1

    async def test_a_call_after_invalidate_does_not_wait_for_an_older_load(
        self, backend: Any
    ) -> None:
        """A caller that comes after an invalidate runs its own load rather than sharing
        one that started before it, and its policy is the one cached."""
        agent = AgentId.new()
        older = ScriptedLoader([a_policy("before")], gate=asyncio.Event())
        first = asyncio.ensure_future(backend.policies().get_or_load(agent, older, 60))
        await bounded(older.entered.wait())
        await backend.policies().invalidate(agent)
        newer = ScriptedLoader([a_policy("after")])
        later = backend.policies().get_or_load(agent, newer, 60)
        assert await bounded(later) == a_policy("after")
        older.release()
        assert await bounded(first) == a_policy("before")
        assert await backend.policies().get_policy(agent) == a_policy("after")

    async def test_cache_policy_during_a_load_wins_over_it(self, backend: Any) -> None:
        """A policy cached while a load is under way is not overwritten by that load."""
        agent = AgentId.new()
        loader = ScriptedLoader([a_policy("older")], gate=asyncio.Event())
        call = asyncio.ensure_future(backend.policies().get_or_load(agent, loader, 60))
        await bounded(loader.entered.wait())
        await backend.policies().cache_policy(agent, a_policy("newer"), 60)
        loader.release()
        assert await bounded(call) == a_policy("older")
        assert await backend.policies().get_policy(agent) == a_policy("newer")

    async def test_a_loader_that_returns_no_policy_is_a_type_error(self, backend: Any) -> None:
        """A loader whose result is not a PolicyDocument is a TypeError, and nothing is cached."""
        agent = AgentId.new()
        with pytest.raises(TypeError, match="PolicyDocument"):
            await backend.policies().get_or_load(agent, ScriptedLoader([{"version": 1}]), 60)
        with pytest.raises(NotFoundError):
            await backend.policies().get_policy(agent)

    @pytest.mark.parametrize(
        ("agent", "callable_loader", "ttl_secs", "error"),
        [
            pytest.param(SessionId(_FIXED_ID), True, 60, TypeError, id="session-id"),
            pytest.param(AgentId(_FIXED_ID), False, 60, TypeError, id="not-callable"),
            pytest.param(AgentId(_FIXED_ID), True, 0, ValueError, id="zero-ttl"),
            pytest.param(AgentId(_FIXED_ID), True, 2.5, TypeError, id="float-ttl"),
        ],
    )
    async def test_bad_get_or_load_arguments_are_rejected(
        self,
        backend: Any,
        agent: Any,
        callable_loader: bool,
        ttl_secs: Any,
        error: type[Exception],
    ) -> None:
        """A wrong id type, a loader that is not callable or a bad TTL is rejected before
        the loader runs, and nothing is cached."""
        loader = ScriptedLoader([a_policy()])
        with pytest.raises(error):
            await backend.policies().get_or_load(
                agent, loader if callable_loader else "loader", ttl_secs
            )
        assert loader.runs == 0
        if isinstance(agent, AgentId):
            with pytest.raises(NotFoundError):
                await backend.policies().get_policy(agent)

    async def test_get_or_load_after_aclose_raises(self, backend: Any) -> None:
        """Once the backend is closed, get_or_load raises StorageError, for a policy read
        before too, and runs no loader."""
        await _refused_once_closed(backend, Kind.POLICY_STORE, "get_or_load")


class ContractSuite(SessionContract, RateLimitContract, PolicyContract, ReadThroughContract):
    """Every rule of every store contract: the suite of a driver that provides every kind."""

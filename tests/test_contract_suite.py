"""The contract suite itself: partial drivers, failures it must not hide, and stable test ids."""

from __future__ import annotations

import inspect
import re
import subprocess
import sys
from pathlib import Path

import pytest

from aa_storage import Kind
from aa_storage.testing import ContractSuite

pytest_plugins = ["pytester"]

ROOT = Path(__file__).resolve().parent.parent

# A driver with only a rate-limit counter, whose other accessors raise as a
# stub would. Its test class lists the kinds it claims where KINDS stands.
PARTIAL_DRIVER_TESTS = """
import pytest
from aa_storage import Kind
from aa_storage.memory import MemoryBackend
from aa_storage.testing import ContractSuite, FakeClock


class CounterOnlyBackend:
    def __init__(self, clock):
        self._memory = MemoryBackend(clock=clock)

    def rate_limiter(self):
        return self._memory.rate_limiter()

    def sessions(self):
        raise NotImplementedError("no session store")

    def policies(self):
        raise NotImplementedError("no policy store")

    async def aclose(self):
        await self._memory.aclose()


class TestCounterOnly(ContractSuite):
    kinds = KINDS

    @pytest.fixture
    def clock(self):
        return FakeClock()

    @pytest.fixture
    def backend(self, clock):
        return CounterOnlyBackend(clock)
"""

_OUTCOME = re.compile(r"::TestCounterOnly::(?P<test>\w+)(?:\[[^\]]*\])? (?P<outcome>[A-Z]+)")


def suite_tests() -> dict[str, Kind | None]:
    """Every test of ContractSuite, by name, with the kind it is tagged with."""
    return {
        name: getattr(member, "contract_kind", None)
        for name, member in inspect.getmembers(ContractSuite, inspect.isfunction)
        if name.startswith("test_")
    }


def run_partial_driver(pytester: pytest.Pytester, kinds: str) -> tuple[dict[str, set[str]], str]:
    """Run the partial driver's suite with ``kinds`` as its class attribute; its tests by
    outcome (PASSED, SKIPPED, FAILED, ERROR), a parametrized one once per outcome, and the
    output."""
    pytester.makepyfile(test_counter_only=PARTIAL_DRIVER_TESTS.replace("KINDS", kinds))
    result = pytester.runpytest_inprocess(
        "-v", "-rs", "-p", "no:cacheprovider", "-o", "asyncio_default_fixture_loop_scope=function"
    )
    by_outcome: dict[str, set[str]] = {}
    for line in result.outlines:
        if match := _OUTCOME.search(line):
            by_outcome.setdefault(match["outcome"], set()).add(match["test"])
    assert by_outcome, result.stdout.str()
    return by_outcome, result.stdout.str()


def names_of_tests(*kinds: Kind) -> set[str]:
    """The names of the suite's tests of ``kinds``."""
    return {name for name, kind in suite_tests().items() if kind in kinds}


class TestKinds:
    def test_every_suite_test_is_tagged_with_a_kind(self) -> None:
        """Each test of the suite exercises one kind, so `kinds` selects every one of them."""
        tests = suite_tests()
        assert len(tests) >= 20
        assert {name for name, kind in tests.items() if kind is None} == set()
        assert set(tests.values()) == set(Kind)

    def test_a_partial_driver_runs_only_its_kinds(self, pytester: pytest.Pytester) -> None:
        """A rate-limit-only driver passes its kind's tests; the others skip, naming their kind."""
        outcomes, output = run_partial_driver(pytester, "frozenset({Kind.RATE_LIMIT_COUNTER})")
        assert outcomes == {
            "PASSED": names_of_tests(Kind.RATE_LIMIT_COUNTER),
            "SKIPPED": names_of_tests(Kind.SESSION_STORE, Kind.POLICY_STORE),
        }
        for kind in (Kind.SESSION_STORE, Kind.POLICY_STORE):
            reason = f"the driver does not provide {kind.value} (not in TestCounterOnly.kinds)"
            assert reason in output
        assert "NotImplementedError" not in output

    def test_a_kind_claimed_but_broken_fails(self, pytester: pytest.Pytester) -> None:
        """Listing a kind the driver fails makes that kind's tests fail: kinds hides nothing."""
        outcomes, output = run_partial_driver(
            pytester, "frozenset({Kind.RATE_LIMIT_COUNTER, Kind.SESSION_STORE})"
        )
        assert outcomes == {
            "PASSED": names_of_tests(Kind.RATE_LIMIT_COUNTER),
            "FAILED": names_of_tests(Kind.SESSION_STORE),
            "SKIPPED": names_of_tests(Kind.POLICY_STORE),
        }
        assert "NotImplementedError: no session store" in output

    @pytest.mark.parametrize(
        "kinds", ['{"rate_limit_counter"}', "Kind.RATE_LIMIT_COUNTER", "frozenset()"]
    )
    def test_kinds_that_are_not_a_set_of_kind_error_every_test(
        self, pytester: pytest.Pytester, kinds: str
    ) -> None:
        """A misspelt `kinds` (names, a bare Kind, nothing) errors every test, skipping none."""
        outcomes, output = run_partial_driver(pytester, kinds)
        assert outcomes == {"ERROR": set(suite_tests())}
        assert "TestCounterOnly.kinds must be a non-empty set of aa_storage.Kind" in output


# The memory driver with one rule broken, where BROKEN stands: its suite must fail
# exactly the tests of that rule.
BROKEN_DRIVER_TESTS = """
import pytest
from aa_storage.memory import MemoryBackend
from aa_storage.memory._stores import MemoryRateLimitCounter
from aa_storage.testing import ContractSuite, FakeClock

BROKEN


class TestBroken(ContractSuite):
    @pytest.fixture
    def clock(self):
        return FakeClock()

    @pytest.fixture
    def backend(self, clock):
        return Backend(clock=clock)
"""
# aclose() that closes nothing: every call still answers afterwards.
NEVER_CLOSES = """
class Backend(MemoryBackend):
    async def aclose(self):
        pass
"""
# current() and reset() without their key check: they read and drop any key.
UNCHECKED_KEYS = """
class Counter(MemoryRateLimitCounter):
    async def current(self, key):
        entry = self._counters.get(key)
        return 0 if entry is None else entry.value

    async def reset(self, key):
        self._counters.pop(key)


class Backend(MemoryBackend):
    def rate_limiter(self):
        return Counter(super().rate_limiter()._counters)
"""


class TestWhatTheSuiteCatches:
    @pytest.mark.parametrize(
        ("broken", "failing"),
        [
            (
                NEVER_CLOSES,
                {
                    "test_session_calls_after_aclose_raise",
                    "test_rate_limit_calls_after_aclose_raise",
                    "test_policy_calls_after_aclose_raise",
                },
            ),
            (UNCHECKED_KEYS, {"test_bad_keys_are_rejected_by_current_and_reset"}),
        ],
        ids=["never-closes", "unchecked-keys"],
    )
    def test_a_driver_that_skips_a_rule_fails_its_tests(
        self, pytester: pytest.Pytester, broken: str, failing: set[str]
    ) -> None:
        """A driver whose closed stores still answer, or whose current and reset skip
        the key check, fails the tests of that rule, and only those."""
        pytester.makepyfile(test_broken=BROKEN_DRIVER_TESTS.replace("BROKEN", broken))
        result = pytester.runpytest_inprocess(
            "-v", "-p", "no:cacheprovider", "-o", "asyncio_default_fixture_loop_scope=function"
        )
        outcomes: dict[str, set[str]] = {}
        for line in result.outlines:
            if match := re.search(r"::TestBroken::(\w+)\S* (PASSED|FAILED|SKIPPED)", line):
                outcomes.setdefault(match[2], set()).add(match[1])
        assert outcomes.get("FAILED") == failing, result.stdout.str()
        assert failing.isdisjoint(outcomes["PASSED"])


def test_test_ids_are_the_same_on_every_collection() -> None:
    """Collecting the whole suite twice gives identical test ids, so --lf and --deselect work."""

    def collect() -> list[str]:
        result = subprocess.run(
            [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        return [line for line in result.stdout.splitlines() if "::" in line]

    first = collect()
    assert any("TestRedisContract::test_bad_cache_arguments_are_rejected[" in i for i in first)
    assert len(first) > 500
    assert collect() == first


@pytest.mark.parametrize("missing", ["pytest", "pytest_asyncio", None])
def test_importing_without_the_testing_extra_names_the_extra(missing: str | None) -> None:
    """Without pytest or pytest-asyncio, importing aa_storage.testing says to install the extra."""
    blocked = f"sys.modules[{missing!r}] = None" if missing else "pass"
    result = subprocess.run(
        [sys.executable, "-c", f"import sys\n{blocked}\nimport aa_storage.testing"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if missing is None:  # the control: with the extra, the import works
        assert (result.returncode, result.stderr) == (0, "")
    else:
        assert result.returncode == 1
        assert result.stderr.splitlines()[-1] == (
            f"ImportError: aa_storage.testing needs {missing}, which the testing extra "
            "installs: pip install 'aa-storage[testing]'"
        )

"""The contract suite itself: partial drivers, failures it must not hide, and stable test ids."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from aa_storage.testing import (
    ContractSuite,
    PolicyContract,
    RateLimitContract,
    ReadThroughContract,
    SessionContract,
)

pytest_plugins = ["pytester"]

ROOT = Path(__file__).resolve().parent.parent

CONTRACTS = (SessionContract, RateLimitContract, PolicyContract, ReadThroughContract)

# A driver with only a rate-limit counter, whose other accessors raise as a stub
# would. Its test class inherits the contract classes named where CONTRACTS stands.
PARTIAL_DRIVER_TESTS = """
import pytest
from aa_storage.memory import MemoryBackend
from aa_storage.testing import FakeClock, RateLimitContract, SessionContract


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


class TestCounterOnly(CONTRACTS):
    @pytest.fixture
    def clock(self):
        return FakeClock()

    @pytest.fixture
    def backend(self, clock):
        return CounterOnlyBackend(clock)
"""

_OUTCOME = re.compile(r"::TestCounterOnly::(?P<test>\w+)(?:\[[^\]]*\])? (?P<outcome>[A-Z]+)")


def names_of_tests(*contracts: type) -> set[str]:
    """The names of the tests that the classes ``contracts`` hold, inherited ones included."""
    return {name for contract in contracts for name in dir(contract) if name.startswith("test_")}


def run_partial_driver(
    pytester: pytest.Pytester, contracts: str
) -> tuple[dict[str, set[str]], pytest.RunResult]:
    """Run the partial driver's suite, its class inheriting ``contracts``; its tests by
    outcome (PASSED, FAILED, ...), a parametrized one once per outcome, and the run."""
    pytester.makepyfile(test_counter_only=PARTIAL_DRIVER_TESTS.replace("CONTRACTS", contracts))
    result = pytester.runpytest_inprocess(
        "-v", "-rs", "-p", "no:cacheprovider", "-o", "asyncio_default_fixture_loop_scope=function"
    )
    by_outcome: dict[str, set[str]] = {}
    for line in result.outlines:
        if match := _OUTCOME.search(line):
            by_outcome.setdefault(match["outcome"], set()).add(match["test"])
    assert by_outcome, result.stdout.str()
    return by_outcome, result


class TestComposition:
    def test_the_suite_is_the_four_contracts_and_nothing_else(self) -> None:
        """ContractSuite inherits every contract class, and each of its tests is defined in
        exactly one of them."""
        assert all(issubclass(ContractSuite, contract) for contract in CONTRACTS)
        defined = [{name for name in vars(c) if name.startswith("test_")} for c in CONTRACTS]
        assert all(len(tests) >= 4 for tests in defined)
        assert sum(map(len, defined)) == len(names_of_tests(ContractSuite))
        assert set().union(*defined) == names_of_tests(ContractSuite)

    def test_a_partial_driver_runs_only_the_contracts_it_inherits(
        self, pytester: pytest.Pytester
    ) -> None:
        """A rate-limit-only driver that inherits RateLimitContract passes every test of it,
        and no other test is collected, skipped or deselected."""
        outcomes, result = run_partial_driver(pytester, "RateLimitContract")
        assert outcomes == {"PASSED": names_of_tests(RateLimitContract)}
        counts = result.parseoutcomes()
        assert set(counts) == {"passed"}, counts
        assert "NotImplementedError" not in result.stdout.str()

    def test_a_contract_inherited_but_broken_fails(self, pytester: pytest.Pytester) -> None:
        """Inheriting the contract of a kind the driver fails makes that contract's tests
        fail: composition hides nothing."""
        outcomes, result = run_partial_driver(pytester, "RateLimitContract, SessionContract")
        assert outcomes == {
            "PASSED": names_of_tests(RateLimitContract),
            "FAILED": names_of_tests(SessionContract),
        }
        assert "NotImplementedError: no session store" in result.stdout.str()


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
                    "test_get_or_load_after_aclose_raises",
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

"""The declared dependency ranges, the floor that `tox -e floor` tests and the lock that
`./dev test` installs stay in step: a bound that moves without its floor, or a lock
outside the range it claims to test, fails here."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
RUNTIME = {
    canonicalize_name(requirement.name): requirement
    for requirement in map(Requirement, PROJECT["dependencies"])
}
# The otel and uvloop extras, and the SDK the telemetry tests read otel with: the floor
# env runs those tests, so their lowest versions are promises too.
EXTRAS = {
    canonicalize_name(requirement.name): requirement
    for requirement in map(
        Requirement,
        [
            *PROJECT["optional-dependencies"]["otel"],
            *PROJECT["optional-dependencies"]["uvloop"],
            *(
                line
                for line in PROJECT["optional-dependencies"]["dev"]
                if "opentelemetry-sdk" in line
            ),
        ],
    )
}
PROMISED = {**RUNTIME, **EXTRAS}


def pins(name: str) -> dict[str, Version]:
    """The ``name==version`` lines of a file under requirements/."""
    pinned = {}
    for line in (ROOT / "requirements" / name).read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            requirement = Requirement(line)
            [specifier] = requirement.specifier
            assert specifier.operator == "==", f"{name}: {line} is not a pin"
            pinned[canonicalize_name(requirement.name)] = Version(specifier.version)
    return pinned


def lower_bound(specifier: SpecifierSet) -> Version:
    [bound] = [Version(clause.version) for clause in specifier if clause.operator == ">="]
    return bound


class TestFloor:
    def test_pins_exactly_the_lower_bound_of_every_runtime_dependency(self) -> None:
        """requirements/floor.txt is the lowest version pyproject.toml allows of each
        runtime dependency, of the otel and uvloop extras, and of the SDK that tests
        otel."""
        floor = pins("floor.txt")
        assert set(EXTRAS) == {"opentelemetry-api", "opentelemetry-sdk", "uvloop"}
        assert set(floor) == set(PROMISED)
        for name, requirement in PROMISED.items():
            assert floor[name] == lower_bound(requirement.specifier), name


class TestLock:
    @pytest.mark.parametrize("name", sorted(PROMISED))
    def test_pins_each_runtime_dependency_within_its_range(self, name: str) -> None:
        """The locked set is one the declared ranges allow, so the suite run on it
        tests the promise."""
        locked = pins("lock.txt")
        assert name in locked, f"requirements/lock.txt lacks {name}: run ./dev lock"
        assert PROMISED[name].specifier.contains(locked[name], prereleases=True), name

    def test_pins_every_tool_the_tests_need(self) -> None:
        """Each requirement of the dev and testing extras is locked, so a new release
        of a test tool cannot change what ./dev test runs with."""
        locked = pins("lock.txt")
        extras = PROJECT["optional-dependencies"]
        for line in [*extras["dev"], *extras["testing"]]:
            requirement = Requirement(line)
            if canonicalize_name(requirement.name) == "aa-storage":
                continue  # the package itself, installed from the tree
            assert canonicalize_name(requirement.name) in locked, line
            assert requirement.specifier.contains(
                locked[canonicalize_name(requirement.name)], prereleases=True
            ), line


class TestReadme:
    def test_the_table_of_tested_versions_is_true(self) -> None:
        """README's Dependencies table gives each runtime dependency's range, floor and
        locked version as pyproject.toml, floor.txt and lock.txt have them."""
        readme = (ROOT / "README.md").read_text()
        section = readme.split("\n## Dependencies\n", 1)[1].split("\n## ", 1)[0]
        rows = [
            line.strip("|").split("|") for line in section.splitlines() if line.startswith("| ")
        ]
        floor, locked = pins("floor.txt"), pins("lock.txt")
        shown = {}
        for cells in rows[1:]:  # the first row is the header
            package, allowed, lowest, tested = (cell.strip().strip("`") for cell in cells)
            name = canonicalize_name(package.split()[0])
            shown[name] = (SpecifierSet(allowed), Version(lowest), Version(tested))
        assert shown == {
            name: (requirement.specifier, floor[name], locked[name])
            for name, requirement in PROMISED.items()
        }

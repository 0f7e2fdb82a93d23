"""No module of the package keeps mutable state at module level: state shared by every
backend and every event loop of a process (a set of tasks, a cache) belongs to the
object that owns it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src"
MODULES = sorted(SRC.rglob("*.py"))

# Calls that build a mutable container.
MUTABLE_CALLS = {"list", "dict", "set", "bytearray", "defaultdict", "OrderedDict", "deque"}


def mutable_globals(tree: ast.Module) -> list[str]:
    """The names a module binds at its top level to a mutable container."""
    found = []
    for statement in tree.body:
        if isinstance(statement, ast.Assign):
            targets, value = statement.targets, statement.value
        elif isinstance(statement, ast.AnnAssign) and statement.value is not None:
            targets, value = [statement.target], statement.value
        else:
            continue
        mutable = isinstance(value, ast.List | ast.Dict | ast.Set | ast.ListComp | ast.DictComp)
        if isinstance(value, ast.Call):
            called = value.func
            name = called.attr if isinstance(called, ast.Attribute) else getattr(called, "id", "")
            mutable = name in MUTABLE_CALLS
        if mutable:
            found += [ast.unparse(target) for target in targets]
    # __all__ is the module's export list for tools, which by convention is a list.
    return [name for name in found if name != "__all__"]


@pytest.mark.parametrize("module", MODULES, ids=lambda path: str(path.relative_to(SRC)))
def test_no_module_binds_a_mutable_container(module: Path) -> None:
    """Module-level names hold constants (tuples, frozensets, strings), never a list,
    dict or set that calls could change."""
    assert mutable_globals(ast.parse(module.read_text(encoding="utf-8"))) == []


def test_the_check_sees_a_module_level_set() -> None:
    """The check finds the kind of state it forbids (a control)."""
    tree = ast.parse("import asyncio\n_releasing: set[asyncio.Task[None]] = set()\nX = (1, 2)\n")
    assert mutable_globals(tree) == ["_releasing"]

"""The import graph of ``src``: the core imports no driver, and no module imports one
that imports it back. Every ``import`` and ``from`` counts, those inside functions
and under ``TYPE_CHECKING`` too."""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src"
CORE = "aa_storage"
DRIVER = "aa_storage_redis"


def modules(root: Path) -> dict[str, Path]:
    """Every module below ``root`` by dotted name; a package is its ``__init__.py``."""
    found = {}
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def import_graph(root: Path) -> dict[str, set[str]]:
    """Each module below ``root``, with the modules below ``root`` that it imports.

    ``from package import name`` imports ``package.name`` when that is a module,
    else ``package``.
    """
    found = modules(root)
    graph: dict[str, set[str]] = {}
    for name, path in found.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        imported: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                imported.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: package.count(".") + 2 - node.level]
                    base = ".".join([*anchor, base] if base else anchor)
                for alias in node.names:
                    submodule = f"{base}.{alias.name}"
                    imported.add(submodule if submodule in found else base)
        graph[name] = {other for other in imported if other in found and other != name}
    return graph


def cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle of ``graph`` as the modules along it, the first repeated at the end;
    None when there is none."""
    done: set[str] = set()
    path: list[str] = []

    def visit(module: str) -> list[str] | None:
        if module in path:
            return [*path[path.index(module) :], module]
        if module in done:
            return None
        path.append(module)
        for imported in sorted(graph[module]):
            if (found := visit(imported)) is not None:
                return found
        path.pop()
        done.add(module)
        return None

    for module in sorted(graph):
        if (found := visit(module)) is not None:
            return found
    return None


def driver_imports(graph: dict[str, set[str]]) -> list[tuple[str, str]]:
    """Each (core module, driver module) pair where the first imports the second."""
    return sorted(
        (module, imported)
        for module, imports in graph.items()
        if module.split(".")[0] == CORE
        for imported in imports
        if imported.split(".")[0] != CORE
    )


def write_tree(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text), encoding="utf-8")
    return root


class TestTheCore:
    def test_no_module_of_the_core_imports_a_driver(self) -> None:
        """No module of ``aa_storage`` imports one of ``aa_storage_redis``, even lazily."""
        graph = import_graph(SRC)
        assert any(name.startswith(f"{DRIVER}.") for name in graph), "the driver was not read"
        assert driver_imports(graph) == []

    def test_the_core_and_its_cli_work_with_the_driver_unimportable(self) -> None:
        """With ``aa_storage_redis`` unimportable, every module of the core imports and
        ``aa-storage check`` on memory defaults exits 0."""
        script = f"""
            import pkgutil, sys
            sys.modules[{DRIVER!r}] = None  # `import {DRIVER}` now raises ImportError
            import {CORE}
            for module in pkgutil.walk_packages({CORE}.__path__, "{CORE}."):
                if not module.name.endswith("__main__"):
                    __import__(module.name)
            from {CORE}.cli import main
            sys.exit(main(["check"]))
        """
        result = subprocess.run(
            [sys.executable, "-c", textwrap.dedent(script)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith("kind ")

    def test_a_lazy_import_of_a_driver_is_found(self, tmp_path: Path) -> None:
        """The check sees an import of a driver inside a function of the core."""
        root = write_tree(
            tmp_path,
            {
                f"{CORE}/__init__.py": "",
                f"{CORE}/cli.py": f"def bench():\n    from {DRIVER}.bench import run\n",
                f"{DRIVER}/__init__.py": "",
                f"{DRIVER}/bench.py": "",
            },
        )
        assert driver_imports(import_graph(root)) == [(f"{CORE}.cli", f"{DRIVER}.bench")]


class TestNoCycle:
    def test_no_module_imports_one_that_imports_it(self) -> None:
        """No module below ``src`` imports itself through a chain of imports."""
        graph = import_graph(SRC)
        assert f"{DRIVER}.bench.measure" in graph, "the bench was not read"
        assert cycle(graph) is None

    def test_a_cycle_through_a_function_and_type_checking_is_found(self, tmp_path: Path) -> None:
        """The check sees a cycle whose arrows are an import inside a function and a
        relative import under TYPE_CHECKING."""
        root = write_tree(
            tmp_path,
            {
                "pkg/__init__.py": "",
                "pkg/measure.py": "def run():\n    from pkg.near import cases\n",
                "pkg/near.py": """
                    from typing import TYPE_CHECKING
                    if TYPE_CHECKING:
                        from . import measure
                """,
                "pkg/report.py": "import pkg.near\n",
            },
        )
        assert cycle(import_graph(root)) == ["pkg.measure", "pkg.near", "pkg.measure"]

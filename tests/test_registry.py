"""Unit tests of the driver registry: entry-point discovery, lazy loading and broken plugins."""

from __future__ import annotations

import asyncio
import importlib
import json
import re
import subprocess
import sys
import textwrap
import types
from collections.abc import Callable, Iterator
from importlib.metadata import EntryPoint
from pathlib import Path
from typing import Any

import attrs
import pytest

from aa_storage import (
    ENTRY_POINT_GROUP,
    Driver,
    DuplicateDriverError,
    Kind,
    MissingKindError,
    PluginError,
    Registry,
    UnknownDriverError,
    load_config,
    open_storage,
)
from aa_storage.cli import main
from aa_storage.hookspecs import hookimpl
from aa_storage.memory import MemoryBackend, MemoryConfig

MEMORY_EP = EntryPoint(name="memory", value="aa_storage.memory.hooks", group=ENTRY_POINT_GROUP)


def _entry_point(name: str, value: str) -> EntryPoint:
    return EntryPoint(name=name, value=value, group=ENTRY_POINT_GROUP)


def _driver(name: str) -> Driver:
    return Driver(
        name=name, config_class=MemoryConfig, kinds=set(Kind), open=lambda c: MemoryBackend()
    )


class NamedPlugin:
    """An object plugin whose register() hook returns a driver called ``name``."""

    def __init__(self, name: str) -> None:
        self.name = name

    @hookimpl
    def register(self) -> Driver:
        return _driver(self.name)


def _module_plugin(module_name: str, **hooks: Callable[[], Any]) -> types.ModuleType:
    """A module object whose attributes are the given functions, marked as hook implementations."""
    module = types.ModuleType(module_name)
    for name, function in hooks.items():
        setattr(module, name, hookimpl(function))
    return module


# The imports a plugin module written by a test starts with.
PLUGIN_PRELUDE = (
    "from aa_storage import Driver, Kind; from aa_storage.hookspecs import hookimpl; "
    "from aa_storage.memory import MemoryBackend, MemoryConfig"
)


@attrs.frozen
class PluginModules:
    """Real modules written to ``path``, which is on sys.path for the test."""

    path: Path
    written: list[str] = attrs.field(factory=list)

    def write(self, name: str, source: str) -> EntryPoint:
        """Write module ``name`` and return an entry point, named alike, that targets it."""
        (self.path / f"{name}.py").write_text(textwrap.dedent(source), encoding="utf-8")
        self.written.append(name)
        importlib.invalidate_caches()
        return _entry_point(name.removeprefix("aa_storage_test_"), name)

    def install(self, distribution: str, *found: EntryPoint) -> None:
        """Install metadata of ``distribution`` declaring ``found``, as pip would."""
        info = self.path / f"{distribution}-0.dist-info"
        info.mkdir()
        metadata = f"Metadata-Version: 2.1\nName: {distribution}\nVersion: 0\n"
        (info / "METADATA").write_text(metadata, encoding="utf-8")
        lines = [f"{entry_point.name} = {entry_point.value}" for entry_point in found]
        (info / "entry_points.txt").write_text(
            "\n".join([f"[{ENTRY_POINT_GROUP}]", *lines, ""]), encoding="utf-8"
        )


@pytest.fixture
def plugin_modules(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[PluginModules]:
    """A place to write plugin modules; those imported are forgotten afterwards."""
    monkeypatch.syspath_prepend(str(tmp_path))
    modules = PluginModules(tmp_path)
    yield modules
    for name in modules.written:
        sys.modules.pop(name, None)


def _run_python(code: str) -> Any:
    """Run ``code`` in a fresh interpreter and return the JSON it prints last."""
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.splitlines()[-1])


class TestDiscovery:
    def test_installed_drivers_are_listed(self) -> None:
        """The installed entry points list the memory and redis drivers."""
        assert {"memory", "redis"} <= set(Registry().names())

    def test_names_are_sorted_and_include_added_plugins(self) -> None:
        """names() is sorted and includes drivers added as plugins."""
        registry = Registry(found=[_entry_point("zeta", "zeta.hooks"), MEMORY_EP])
        registry.add_plugin(NamedPlugin("alpha"))
        assert registry.names() == ["alpha", "memory", "zeta"]

    def test_plugins_not_named_by_the_config_are_never_imported(
        self, plugin_modules: PluginModules
    ) -> None:
        """Listing names and loading and opening a memory config never import another plugin."""
        marker = plugin_modules.path / "probe-imported"
        probe = plugin_modules.write(
            "aa_storage_test_probe",
            f"""
            import pathlib
            pathlib.Path({str(marker)!r}).touch()
            {PLUGIN_PRELUDE}
            @hookimpl
            def register():
                return Driver("probe", MemoryConfig, set(Kind), MemoryBackend.connect)
            """,
        )
        registry = Registry(found=[probe, MEMORY_EP])
        assert registry.names() == ["memory", "probe"]
        config = load_config({"storage": {"backend": "memory"}}, registry=registry)
        assert set(open_storage(config, registry=registry).backends) == {"memory"}
        assert not marker.exists()
        # The control: asking for the driver does run the module, so the check can fail.
        assert registry.driver("probe").name == "probe"
        assert marker.exists()

    def test_names_in_a_fresh_process_import_no_driver(self) -> None:
        """In a fresh interpreter, Registry().names() imports neither driver's module."""
        state = _run_python(
            """
            import json, sys
            from aa_storage import Registry
            names = Registry().names()
            print(json.dumps([names, sorted(
                m for m in ("aa_storage.memory", "aa_storage.memory.hooks",
                            "aa_storage_redis", "redis") if m in sys.modules)]))
            """
        )
        assert {"memory", "redis"} <= set(state[0])
        assert state[1] == []

    def test_memory_driver(self) -> None:
        """The memory entry point loads a driver with every kind and MemoryConfig."""
        driver = Registry(found=[MEMORY_EP]).driver("memory")
        assert driver.name == "memory"
        assert driver.kinds == frozenset(Kind)
        assert driver.config_class is MemoryConfig
        assert isinstance(driver.open(MemoryConfig()), MemoryBackend)

    def test_driver_is_loaded_once(self) -> None:
        """Asking for a driver twice returns the same Driver object."""
        registry = Registry(found=[MEMORY_EP])
        assert registry.driver("memory") is registry.driver("memory")

    def test_drivers_loads_every_driver(self) -> None:
        """drivers() returns every installed and added driver, in name order."""
        registry = Registry(found=[MEMORY_EP])
        registry.add_plugin(NamedPlugin("extra"))
        assert [driver.name for driver in registry.drivers()] == ["extra", "memory"]

    def test_unknown_driver(self) -> None:
        """An unknown name is an UnknownDriverError at storage.backend listing the drivers."""
        with pytest.raises(UnknownDriverError) as info:
            Registry(found=[MEMORY_EP]).driver("nope")
        assert str(info.value) == (
            "storage.backend: unknown driver 'nope'; installed drivers: memory"
        )

    def test_unknown_driver_names_the_given_path(self) -> None:
        """The where argument names the config path in the message; no drivers reads "none"."""
        with pytest.raises(UnknownDriverError) as info:
            Registry(found=[]).driver("nope", where="storage.policy_store")
        assert str(info.value) == (
            "storage.policy_store: unknown driver 'nope'; installed drivers: none"
        )


class TestLazyLoading:
    def test_memory_round_trip_never_imports_redis(self) -> None:
        """open_storage() with memory defaults and a round trip leave redis unimported."""
        state = _run_python(
            """
            import asyncio, json, os, sys
            os.environ.pop("AA_STORAGE_CONFIG", None)
            from aa_storage import AgentId, PolicyDocument, SessionId, SessionRecord
            from aa_storage import open_storage

            async def round_trip():
                async with open_storage() as storage:
                    record = SessionRecord(SessionId.new(), AgentId.new(), 1)
                    await storage.sessions.save(record)
                    assert await storage.sessions.load(record.session_id) == record
                    assert await storage.rate_limiter.increment("k", 2, 60) == 2
                    agent = AgentId.new()
                    policy = PolicyDocument(1, "p", [])
                    await storage.policies.cache_policy(agent, policy, 60)
                    assert await storage.policies.get_policy(agent) == policy
                    return sorted(storage.backends)

            backends = asyncio.run(round_trip())
            before = ["redis" in sys.modules, "aa_storage_redis" in sys.modules]
            from aa_storage import Registry
            Registry().driver("redis")
            after = ["redis" in sys.modules, "aa_storage_redis" in sys.modules]
            print(json.dumps([backends, before, after]))
            """
        )
        backends, before, after = state
        assert backends == ["memory"]
        assert before == [False, False]
        # The control: asking for the redis driver does import it, so the check can fail.
        assert after == [True, True]


class TestDuplicates:
    def test_two_entry_points_with_one_name(self) -> None:
        """Asking for a name two entry points claim is a DuplicateDriverError naming both."""
        found = [_entry_point("twin", "pkg_a.hooks"), _entry_point("twin", "pkg_b.hooks")]
        registry = Registry(found=[*found, MEMORY_EP])
        assert registry.names() == ["memory", "twin"]
        with pytest.raises(DuplicateDriverError) as info:
            registry.driver("twin")
        assert (
            str(info.value)
            == "driver 'twin' is registered twice: by pkg_a.hooks and by pkg_b.hooks"
        )
        assert info.value.name == "twin"
        # The clash spoils that name only.
        assert registry.driver("memory").name == "memory"

    def test_same_entry_point_seen_twice_is_one_driver(self) -> None:
        """The same entry point listed twice (one package on two paths) is not a duplicate."""
        assert Registry(found=[MEMORY_EP, MEMORY_EP]).names() == ["memory"]

    def test_plugin_taking_an_installed_name(self) -> None:
        """Adding a plugin whose driver takes an entry point's name is a DuplicateDriverError."""
        registry = Registry(found=[MEMORY_EP])
        with pytest.raises(DuplicateDriverError) as info:
            registry.add_plugin(NamedPlugin("memory"), origin="impostor")
        assert str(info.value) == (
            "driver 'memory' is registered twice: by entry point aa_storage.memory.hooks "
            "and by impostor"
        )
        # The installed driver is still the one served.
        assert registry.driver("memory").config_class is MemoryConfig
        assert registry.driver("memory").open(MemoryConfig()).__class__ is MemoryBackend

    def test_two_plugins_with_one_name(self) -> None:
        """A second added plugin with a taken name is a DuplicateDriverError naming both."""
        registry = Registry(found=[])
        first = registry.add_plugin(NamedPlugin("twin"), origin="first plugin")
        with pytest.raises(DuplicateDriverError) as info:
            registry.add_plugin(NamedPlugin("twin"), origin="second plugin")
        assert str(info.value) == (
            "driver 'twin' is registered twice: by first plugin and by second plugin"
        )
        assert registry.driver("twin") is first


class TestAddPlugin:
    def test_object_plugin(self) -> None:
        """A class instance with a @hookimpl register method is a plugin."""
        registry = Registry(found=[])
        driver = registry.add_plugin(NamedPlugin("objdrv"))
        assert driver.name == "objdrv"
        assert registry.names() == ["objdrv"]
        assert registry.driver("objdrv") is driver

    def test_module_plugin(self) -> None:
        """A module with a @hookimpl register function is a plugin."""
        module = _module_plugin("aa_storage_test_moddrv", register=lambda: _driver("moddrv"))
        registry = Registry(found=[])
        assert registry.add_plugin(module).name == "moddrv"
        assert registry.driver("moddrv").kinds == frozenset(Kind)

    def test_plugins_are_called_alone(self) -> None:
        """Each plugin's register() is called on its own: adding a second gives its own driver."""
        registry = Registry(found=[MEMORY_EP])
        registry.driver("memory")
        assert registry.add_plugin(NamedPlugin("one")).name == "one"
        assert registry.add_plugin(NamedPlugin("two")).name == "two"
        assert registry.names() == ["memory", "one", "two"]


class TestBrokenPlugins:
    def test_misspelt_hook(self) -> None:
        """A hookimpl whose name matches no hookspec (registr) is a PluginError."""
        module = _module_plugin("aa_storage_test_typo", registr=lambda: _driver("typo"))
        registry = Registry(found=[])
        with pytest.raises(PluginError) as info:
            registry.add_plugin(module, origin="typo plugin")
        assert str(info.value).startswith(
            "driver plugin typo plugin is invalid: unknown hook 'registr' in plugin "
        )
        assert registry.names() == []

    def test_hook_with_unknown_argument(self) -> None:
        """A register hook asking for an argument the spec does not have is a PluginError."""

        class Greedy:
            @hookimpl
            def register(self, config: object) -> Driver:
                return _driver("greedy")

        with pytest.raises(PluginError, match=r"^driver plugin greedy is invalid: "):
            Registry(found=[]).add_plugin(Greedy(), origin="greedy")

    @pytest.mark.parametrize(
        ("returned", "shown"), [("memory", "['memory']"), (None, "[]"), (MemoryConfig, None)]
    )
    def test_register_returning_a_non_driver(self, returned: object, shown: str | None) -> None:
        """A register hook returning anything but a Driver is a PluginError showing it."""
        module = _module_plugin("aa_storage_test_liar", register=lambda: returned)
        with pytest.raises(PluginError) as info:
            Registry(found=[]).add_plugin(module, origin="liar")
        shown = shown if shown is not None else repr([returned])
        assert str(info.value) == f"register() of liar must return one Driver, got {shown}"

    def test_register_that_raises(self) -> None:
        """A register hook that raises is a PluginError carrying its message."""

        def register() -> Driver:
            raise RuntimeError("boom")

        module = _module_plugin("aa_storage_test_boom", register=register)
        with pytest.raises(PluginError) as info:
            Registry(found=[]).add_plugin(module, origin="boom plugin")
        assert str(info.value) == "register() of boom plugin failed: boom"

    def test_entry_point_that_fails_to_import(self) -> None:
        """An entry point whose module cannot be imported is a PluginError naming it."""
        registry = Registry(found=[_entry_point("ghost", "no_such_module_xyz.hooks"), MEMORY_EP])
        with pytest.raises(PluginError) as info:
            registry.driver("ghost")
        assert str(info.value) == (
            "cannot import driver 'ghost' (entry point ghost = no_such_module_xyz.hooks): "
            "No module named 'no_such_module_xyz'"
        )
        # Other drivers are unaffected.
        assert registry.driver("memory").name == "memory"

    def test_entry_point_registering_another_name(self) -> None:
        """An entry point whose driver has a different name is a PluginError, and forgotten."""
        registry = Registry(found=[_entry_point("other", "aa_storage.memory.hooks")])
        with pytest.raises(PluginError) as info:
            registry.driver("other")
        assert str(info.value) == (
            "entry point other = aa_storage.memory.hooks registers a driver named 'memory'"
        )
        assert registry.names() == ["other"]

    def test_broken_entry_point_module(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """An importable entry-point module with a misspelt hook is a PluginError."""
        module = _module_plugin("aa_storage_test_ep_typo", registr=lambda: _driver("typo"))
        monkeypatch.setitem(sys.modules, "aa_storage_test_ep_typo", module)
        registry = Registry(found=[_entry_point("typo", "aa_storage_test_ep_typo")])
        with pytest.raises(PluginError) as info:
            registry.driver("typo")
        assert str(info.value).startswith(
            "driver plugin entry point typo = aa_storage_test_ep_typo is invalid: "
            "unknown hook 'registr'"
        )

    def test_failing_register_fails_the_same_way_every_time(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A driver whose register() raises reports the same PluginError on every lookup."""

        def register() -> Driver:
            raise RuntimeError("boom")

        module = _module_plugin("aa_storage_test_flaky", register=register)
        monkeypatch.setitem(sys.modules, "aa_storage_test_flaky", module)
        registry = Registry(found=[_entry_point("flaky", "aa_storage_test_flaky")])
        messages = []
        for _ in range(2):
            with pytest.raises(PluginError) as info:
                registry.driver("flaky")
            messages.append(str(info.value))
        assert (
            messages == ["register() of entry point flaky = aa_storage_test_flaky failed: boom"] * 2
        )


def _install_counter(plugin_modules: PluginModules, distribution: str) -> EntryPoint:
    """Write and install a working plugin whose driver ``counter`` is a rate-limit counter."""
    counter = plugin_modules.write(
        "aa_storage_test_counter",
        f"""
        {PLUGIN_PRELUDE}
        @hookimpl
        def register():
            kinds = {{Kind.RATE_LIMIT_COUNTER}}
            return Driver("counter", MemoryConfig, kinds, MemoryBackend.connect)
        """,
    )
    plugin_modules.install(distribution, counter)
    return counter


def test_drivers_command_exits_0_when_every_plugin_loads(
    plugin_modules: PluginModules, capsys: pytest.CaptureFixture[str]
) -> None:
    """With only working plugins installed, `aa-storage drivers` lists them all and exits 0."""
    _install_counter(plugin_modules, "aa_storage_test_counter")
    assert main(["drivers"]) == 0
    out = capsys.readouterr().out
    assert "counter   rate_limit_counter\n" in out
    assert "broken" not in out


@pytest.fixture
def broken_plugins(plugin_modules: PluginModules) -> None:
    """Installed distributions: one plugin that fails to import, one whose register() raises,
    two that claim one name, and a working rate-limit-only driver."""
    _install_counter(plugin_modules, "aa_storage_test_counter")
    halfway = plugin_modules.write(
        "aa_storage_test_halfway",
        """
        raise ImportError("libfoo.so.1: cannot open shared object file\\n(reinstall libfoo)")
        """,
    )
    sulky = plugin_modules.write(
        "aa_storage_test_sulky",
        f"""
        {PLUGIN_PRELUDE}
        @hookimpl
        def register():
            raise RuntimeError("no licence key")
        """,
    )
    plugin_modules.install("aa_storage_test_broken", halfway, sulky)
    plugin_modules.install("aa_storage_test_twin_a", _entry_point("twin", "twin_a.hooks"))
    plugin_modules.install("aa_storage_test_twin_b", _entry_point("twin", "twin_b.hooks"))


HALFWAY_ERROR = (
    "cannot import driver 'halfway' (entry point halfway = aa_storage_test_halfway): "
    "libfoo.so.1: cannot open shared object file (reinstall libfoo)"
)
SULKY_ERROR = "register() of entry point sulky = aa_storage_test_sulky failed: no licence key"
TWIN_ERROR = "driver 'twin' is registered twice: by twin_a.hooks and by twin_b.hooks"


@pytest.mark.usefixtures("broken_plugins")
class TestBrokenPluginsHideNoOthers:
    def test_load_all_reports_each_broken_plugin_and_loads_the_rest(self) -> None:
        """load_all() maps each broken plugin to its one-line error and loads every other."""
        found = Registry().load_all()
        assert list(found) == sorted(found)
        assert {"counter", "halfway", "memory", "redis", "sulky", "twin"} <= set(found)
        errors = {
            name: str(error) for name, error in found.items() if not isinstance(error, Driver)
        }
        assert errors == {"halfway": HALFWAY_ERROR, "sulky": SULKY_ERROR, "twin": TWIN_ERROR}
        assert isinstance(found["twin"], DuplicateDriverError)
        assert [driver.name for driver in Registry().drivers()] == [
            name for name in found if name not in errors
        ]

    def test_drivers_command_lists_broken_plugins_among_the_rest(
        self, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """`aa-storage drivers` lists every driver, each broken one with its error, and exits 1."""
        assert main(["drivers"]) == 1
        out, err = capsys.readouterr()
        every_kind = "policy_store, rate_limit_counter, session_store"
        lines = out.splitlines()
        for line in [
            f"counter   {Kind.RATE_LIMIT_COUNTER.value}",
            f"halfway   broken: {HALFWAY_ERROR}",
            f"memory    {every_kind}",
            f"redis     {every_kind}",
            f"sulky     broken: {SULKY_ERROR}",
            f"twin      broken: {TWIN_ERROR}",
        ]:
            assert line in lines
        assert lines == sorted(lines)
        assert err == ""

    def test_config_naming_working_drivers_loads_and_runs(self) -> None:
        """A config naming only working drivers loads and serves calls beside broken plugins."""

        async def increment() -> int:
            config = {"storage": {"backend": "memory", "rate_limit_counter": "counter"}}
            async with open_storage(config) as storage:
                assert set(storage.backends) == {"counter", "memory"}
                return await storage.rate_limiter.increment("k", 3, 60)

        assert asyncio.run(increment()) == 3

    def test_missing_kind_names_the_working_providers(self) -> None:
        """Asking a driver for a kind it lacks is a MissingKindError naming working providers."""
        with pytest.raises(MissingKindError) as info:
            load_config({"storage": {"backend": "counter"}})
        assert str(info.value).startswith(
            "storage.backend: driver 'counter' does not provide a session_store; "
            "drivers that do: memory, redis"
        )

    @pytest.mark.parametrize(
        ("name", "error"),
        [("halfway", HALFWAY_ERROR), ("sulky", SULKY_ERROR), ("twin", TWIN_ERROR)],
        ids=["import-fails", "register-fails", "name-clash"],
    )
    def test_config_naming_a_broken_plugin_fails_with_its_error(
        self, name: str, error: str
    ) -> None:
        """A config that names a broken plugin fails with that plugin's error."""
        with pytest.raises((PluginError, DuplicateDriverError), match="^" + re.escape(error) + "$"):
            load_config({"storage": {"backend": name}})

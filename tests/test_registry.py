"""Unit tests of the driver registry: entry-point discovery, lazy loading and broken plugins."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import types
from collections.abc import Callable
from importlib.metadata import EntryPoint
from typing import Any

import pytest

from aa_storage import (
    ENTRY_POINT_GROUP,
    Driver,
    DuplicateDriverError,
    Kind,
    PluginError,
    Registry,
    UnknownDriverError,
)
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

    def test_names_do_not_import_plugins(self) -> None:
        """Listing names imports no driver module, not even a broken one."""
        registry = Registry(found=[_entry_point("ghost", "no_such_module_xyz.hooks")])
        assert registry.names() == ["ghost"]
        assert "no_such_module_xyz" not in sys.modules

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
        """Two installed entry points named alike are a DuplicateDriverError naming both."""
        found = [_entry_point("twin", "pkg_a.hooks"), _entry_point("twin", "pkg_b.hooks")]
        with pytest.raises(DuplicateDriverError) as info:
            Registry(found=found)
        assert (
            str(info.value)
            == "driver 'twin' is registered twice: by pkg_a.hooks and by pkg_b.hooks"
        )
        assert info.value.name == "twin"

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

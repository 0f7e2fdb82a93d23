"""Unit tests of open_storage and Storage: config sources, shared backends and closing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs
import pytest

from aa_storage import (
    CONFIG_ENV_VAR,
    BackendInfo,
    ConfigError,
    Driver,
    Kind,
    Registry,
    Storage,
    StorageConfig,
    open_storage,
)
from aa_storage.hookspecs import hookimpl
from aa_storage.memory import (
    MemoryBackend,
    MemoryConfig,
    MemoryPolicyStore,
    MemoryRateLimitCounter,
    MemorySessionStore,
)


@attrs.frozen
class CountingConfig:
    label: str = "default"


@attrs.define(eq=False)
class CountingBackend:
    """A memory backend that remembers its config and counts aclose() calls."""

    config: CountingConfig
    fail_close: bool = False
    closed: int = 0
    inner: MemoryBackend = attrs.field(factory=MemoryBackend)

    def sessions(self) -> MemorySessionStore:
        return self.inner.sessions()

    def rate_limiter(self) -> MemoryRateLimitCounter:
        return self.inner.rate_limiter()

    def policies(self) -> MemoryPolicyStore:
        return self.inner.policies()

    async def describe(self) -> BackendInfo:
        return BackendInfo()

    async def aclose(self) -> None:
        self.closed += 1
        if self.fail_close:
            raise RuntimeError(f"cannot close {self.config.label}")


class CountingPlugin:
    """A plugin for a driver that records every backend it opens."""

    def __init__(self, name: str, *, fail_close: bool = False) -> None:
        self.name = name
        self.fail_close = fail_close
        self.opened: list[CountingBackend] = []

    @hookimpl
    def register(self) -> Driver:
        return Driver(name=self.name, config_class=CountingConfig, kinds=set(Kind), open=self.open)

    def open(self, config: Any) -> CountingBackend:
        backend = CountingBackend(config, fail_close=self.fail_close)
        self.opened.append(backend)
        return backend


@pytest.fixture
def no_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(CONFIG_ENV_VAR, raising=False)


@pytest.fixture
def counting() -> CountingPlugin:
    return CountingPlugin("counting")


@pytest.fixture
def second() -> CountingPlugin:
    return CountingPlugin("second")


@pytest.fixture
def registry(counting: CountingPlugin, second: CountingPlugin) -> Registry:
    registry = Registry()
    registry.add_plugin(counting)
    registry.add_plugin(second)
    return registry


def _only_backend(storage: Storage) -> Any:
    assert len(storage.backends) == 1
    return next(iter(storage.backends.values()))


@pytest.mark.usefixtures("no_env")
class TestSources:
    def test_no_argument_and_no_env_is_memory(self) -> None:
        """open_storage() without a config gives memory stores sharing one memory backend."""
        storage = open_storage()
        assert list(storage.backends) == ["memory"]
        backend = storage.backends["memory"]
        assert isinstance(backend, MemoryBackend)
        assert isinstance(storage.sessions, MemorySessionStore)
        assert isinstance(storage.rate_limiter, MemoryRateLimitCounter)
        assert isinstance(storage.policies, MemoryPolicyStore)
        assert storage.config == StorageConfig(drivers={"memory": MemoryConfig()})

    def test_empty_env_var_is_ignored(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """An empty AA_STORAGE_CONFIG counts as unset."""
        monkeypatch.setenv(CONFIG_ENV_VAR, "")
        assert list(open_storage().backends) == ["memory"]

    def test_env_var_names_the_config_file(
        self,
        tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch,
        registry: Registry,
        counting: CountingPlugin,
    ) -> None:
        """With no argument, the file named by AA_STORAGE_CONFIG is read."""
        path = tmp_path / "storage.toml"
        path.write_text('[storage]\nbackend = "counting"\n[storage.counting]\nlabel = "env"\n')
        monkeypatch.setenv(CONFIG_ENV_VAR, str(path))
        storage = open_storage(registry=registry)
        assert storage.config.backend == "counting"
        assert [backend.config for backend in counting.opened] == [CountingConfig("env")]

    def test_env_var_naming_a_missing_file(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A missing file named by AA_STORAGE_CONFIG is a ConfigError naming the variable,
        not a silent default."""
        path = tmp_path / "absent.toml"
        monkeypatch.setenv(CONFIG_ENV_VAR, str(path))
        with pytest.raises(ConfigError) as info:
            open_storage()
        assert str(info.value) == (
            f"AA_STORAGE_CONFIG names {str(path)!r}, but there is no such file"
        )

    def test_argument_wins_over_env_var(
        self,
        tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch,
        registry: Registry,
    ) -> None:
        """A path given as the argument is read, whatever AA_STORAGE_CONFIG says."""
        monkeypatch.setenv(CONFIG_ENV_VAR, str(tmp_path / "absent.toml"))
        path = tmp_path / "storage.toml"
        path.write_text('[storage]\nbackend = "second"\n')
        assert list(open_storage(path, registry=registry).backends) == ["second"]

    def test_mapping_source(self, registry: Registry, counting: CountingPlugin) -> None:
        """A mapping shaped like the TOML document is loaded like a file."""
        storage = open_storage(
            {"storage": {"backend": "counting", "counting": {"label": "m"}}}, registry=registry
        )
        assert [backend.config for backend in counting.opened] == [CountingConfig("m")]
        assert storage.config.drivers == {"counting": CountingConfig("m")}

    def test_storage_config_is_used_as_given(
        self, registry: Registry, counting: CountingPlugin
    ) -> None:
        """A StorageConfig is used as is, and its driver's settings go to the driver's open."""
        settings = CountingConfig("given")
        config = StorageConfig(backend="counting", drivers={"counting": settings})
        storage = open_storage(config, registry=registry)
        assert storage.config is config
        assert len(counting.opened) == 1
        assert counting.opened[0].config is settings

    def test_storage_config_without_settings_uses_defaults(
        self, registry: Registry, counting: CountingPlugin
    ) -> None:
        """A StorageConfig with no settings for a driver opens it with its config defaults."""
        open_storage(StorageConfig(backend="counting"), registry=registry)
        assert [backend.config for backend in counting.opened] == [CountingConfig()]

    def test_bad_config_opens_nothing(self, registry: Registry, counting: CountingPlugin) -> None:
        """A config with an error raises before any backend is opened."""
        with pytest.raises(ConfigError):
            open_storage(
                {"storage": {"backend": "counting", "counting": {"lable": "x"}}},
                registry=registry,
            )
        assert counting.opened == []


@pytest.mark.usefixtures("no_env")
class TestSharing:
    def test_memory_stores_share_one_backend(self) -> None:
        """The three memory stores are the stores of the one memory backend."""
        storage = open_storage()
        backend = _only_backend(storage)
        assert storage.sessions is backend.sessions()
        assert storage.rate_limiter is backend.rate_limiter()
        assert storage.policies is backend.policies()

    def test_one_driver_is_opened_once(self, registry: Registry, counting: CountingPlugin) -> None:
        """A driver serving all three kinds is opened once, and its backend serves them all."""
        storage = open_storage({"storage": {"backend": "counting"}}, registry=registry)
        assert len(counting.opened) == 1
        backend = counting.opened[0]
        assert storage.backends == {"counting": backend}
        assert storage.sessions is backend.inner.sessions()
        assert storage.rate_limiter is backend.inner.rate_limiter()
        assert storage.policies is backend.inner.policies()

    def test_per_kind_override_gives_two_backends(
        self, registry: Registry, counting: CountingPlugin, second: CountingPlugin
    ) -> None:
        """Overriding one kind to another driver opens each driver once: two backends."""
        storage = open_storage(
            {"storage": {"backend": "counting", "rate_limit_counter": "second"}},
            registry=registry,
        )
        assert (len(counting.opened), len(second.opened)) == (1, 1)
        assert storage.backends == {"counting": counting.opened[0], "second": second.opened[0]}
        assert storage.sessions is counting.opened[0].inner.sessions()
        assert storage.rate_limiter is second.opened[0].inner.rate_limiter()
        assert storage.policies is counting.opened[0].inner.policies()


@pytest.mark.usefixtures("no_env")
class TestClosing:
    @pytest.mark.asyncio
    async def test_context_manager_closes_each_backend_once(
        self, registry: Registry, counting: CountingPlugin, second: CountingPlugin
    ) -> None:
        """Leaving `async with` calls aclose exactly once on each backend."""
        config = {"storage": {"backend": "counting", "policy_store": "second"}}
        async with open_storage(config, registry=registry) as storage:
            assert await storage.rate_limiter.increment("k", 1, 60) == 1
            assert [b.closed for b in (*counting.opened, *second.opened)] == [0, 0]
        assert [b.closed for b in (*counting.opened, *second.opened)] == [1, 1]

    @pytest.mark.asyncio
    async def test_context_manager_closes_on_error(
        self, registry: Registry, counting: CountingPlugin
    ) -> None:
        """An exception inside `async with` still closes the backend, and propagates."""
        with pytest.raises(KeyError, match="inside"):
            async with open_storage({"storage": {"backend": "counting"}}, registry=registry):
                raise KeyError("inside")
        assert counting.opened[0].closed == 1

    @pytest.mark.asyncio
    async def test_enter_returns_the_storage(self, registry: Registry) -> None:
        """`async with open_storage(...) as s` binds the Storage itself."""
        storage = open_storage({"storage": {"backend": "counting"}}, registry=registry)
        async with storage as entered:
            assert entered is storage

    @pytest.mark.asyncio
    async def test_a_failing_close_still_closes_the_others(self, second: CountingPlugin) -> None:
        """If one backend's aclose fails, the others are still closed and the failure raised."""
        failing = CountingPlugin("failing", fail_close=True)
        registry = Registry()
        registry.add_plugin(failing)
        registry.add_plugin(second)
        config = {"storage": {"backend": "second", "session_store": "failing"}}
        storage = open_storage(config, registry=registry)
        # The failing backend serves sessions, so it is opened, and closed, first.
        assert list(storage.backends) == ["failing", "second"]
        with pytest.raises(RuntimeError, match=r"^cannot close default$"):
            await storage.aclose()
        assert [b.closed for b in (*failing.opened, *second.opened)] == [1, 1]

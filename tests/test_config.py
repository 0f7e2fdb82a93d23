"""Unit tests of load_config: the [storage] table, driver sections and the exact errors."""

from __future__ import annotations

import tomllib
from importlib.metadata import EntryPoint
from pathlib import Path
from typing import Any

import attrs
import pytest

from aa_storage import (
    ENTRY_POINT_GROUP,
    ConfigError,
    Driver,
    InvalidConfigError,
    Kind,
    MissingKindError,
    Registry,
    StorageConfig,
    UnknownDriverError,
    load_config,
)
from aa_storage.hookspecs import hookimpl
from aa_storage.memory import MemoryBackend, MemoryConfig

INVALID = "invalid storage configuration: "


def _at_least_one(instance: object, attribute: attrs.Attribute[int], value: int) -> None:
    if value < 1:
        raise ValueError(f"{attribute.name}: must be at least 1, got {value}")


@attrs.frozen
class ProbeConfig:
    """A driver config with validated fields of several types."""

    pool_size: int = attrs.field(default=4, validator=_at_least_one)
    label: str = "probe"
    ratio: float = 1.0
    password: str | None = None


class ProbePlugin:
    """An object plugin for the ``probe`` driver, which has no rate-limit counter."""

    @hookimpl
    def register(self) -> Driver:
        return Driver(
            name="probe",
            config_class=ProbeConfig,
            kinds=set(Kind) - {Kind.RATE_LIMIT_COUNTER},  # type: ignore[arg-type]  # attrs plugin
            open=lambda config: MemoryBackend(),
        )


class EverythingPlugin:
    """An object plugin for the ``everything`` driver, which provides every kind."""

    @hookimpl
    def register(self) -> Driver:
        return Driver(
            name="everything",
            config_class=MemoryConfig,
            kinds=set(Kind),
            open=lambda config: MemoryBackend(),
        )


@pytest.fixture
def registry() -> Registry:
    """Only the memory entry point, plus the probe and everything plugins."""
    memory = EntryPoint(name="memory", value="aa_storage.memory.hooks", group=ENTRY_POINT_GROUP)
    registry = Registry(found=[memory])
    registry.add_plugin(ProbePlugin(), origin="probe plugin")
    registry.add_plugin(EverythingPlugin(), origin="everything plugin")
    return registry


def _problems(source: Any, registry: Registry) -> list[str]:
    with pytest.raises(InvalidConfigError) as info:
        load_config(source, registry=registry)
    assert str(info.value) == INVALID + "; ".join(info.value.problems)
    return info.value.problems


def _write(tmp_path: Path, text: str | bytes) -> Path:
    path = tmp_path / "agent-assembly.toml"
    if isinstance(text, str):
        path.write_text(text, encoding="utf-8")
    else:
        path.write_bytes(text)
    return path


class TestDefaults:
    def test_empty_storage_table_is_all_memory(self, registry: Registry) -> None:
        """An empty [storage] table selects memory for every kind with its default config."""
        config = load_config({"storage": {}}, registry=registry)
        assert config == StorageConfig(
            backend="memory",
            session_store=None,
            rate_limit_counter=None,
            policy_store=None,
            drivers={"memory": MemoryConfig()},
        )
        assert [config.driver_for(kind) for kind in Kind] == ["memory"] * 3

    def test_empty_storage_table_in_a_file(self, tmp_path: Path, registry: Registry) -> None:
        """A TOML file with an empty [storage] table gives the same defaults as a mapping."""
        path = _write(tmp_path, "[storage]\n")
        assert load_config(path, registry=registry) == load_config(
            {"storage": {}}, registry=registry
        )

    def test_missing_driver_section_means_its_defaults(self, registry: Registry) -> None:
        """A selected driver without a [storage.<name>] section gets its config class defaults."""
        config = load_config({"storage": {"session_store": "probe"}}, registry=registry)
        assert config.drivers["probe"] == ProbeConfig()

    def test_default_storage_config_selects_memory(self) -> None:
        """A StorageConfig built with no arguments serves every kind from memory."""
        assert [StorageConfig().driver_for(kind) for kind in Kind] == ["memory"] * 3


class TestSelection:
    def test_backend_selects_every_kind(self, registry: Registry) -> None:
        """backend names the driver of every kind without an override."""
        config = load_config({"storage": {"backend": "everything"}}, registry=registry)
        assert config.backend == "everything"
        assert [config.driver_for(kind) for kind in Kind] == ["everything"] * 3
        assert config.drivers == {"everything": MemoryConfig()}

    def test_per_kind_overrides(self, registry: Registry) -> None:
        """session_store and policy_store overrides win over backend; the rest use backend."""
        table = {"backend": "memory", "session_store": "probe", "policy_store": "everything"}
        config = load_config({"storage": table}, registry=registry)
        assert (config.session_store, config.rate_limit_counter, config.policy_store) == (
            "probe",
            None,
            "everything",
        )
        assert config.driver_for(Kind.SESSION_STORE) == "probe"
        assert config.driver_for(Kind.RATE_LIMIT_COUNTER) == "memory"
        assert config.driver_for(Kind.POLICY_STORE) == "everything"
        assert set(config.drivers) == {"memory", "probe", "everything"}

    def test_driver_section_is_structured(self, tmp_path: Path, registry: Registry) -> None:
        """A driver's section is structured into its config class; an int is a valid float."""
        path = _write(
            tmp_path,
            '[storage]\nsession_store = "probe"\n\n'
            '[storage.probe]\npool_size = 8\nlabel = "x"\nratio = 2\npassword = "pw"\n',
        )
        probe = load_config(path, registry=registry).drivers["probe"]
        assert probe == ProbeConfig(pool_size=8, label="x", ratio=2.0, password="pw")
        assert type(probe.ratio) is float

    def test_section_of_an_unused_driver_is_validated(self, registry: Registry) -> None:
        """A section for a driver that serves no kind is still loaded and kept."""
        config = load_config({"storage": {"probe": {"label": "spare"}}}, registry=registry)
        assert config.drivers == {"memory": MemoryConfig(), "probe": ProbeConfig(label="spare")}

    def test_other_top_level_tables_are_ignored(self, tmp_path: Path, registry: Registry) -> None:
        """Tables other than [storage] are left to their owners, whatever they hold."""
        path = _write(
            tmp_path,
            '[agent]\nname = "a"\npool_sise = 3\n\n[storage]\nbackend = "memory"\n\n'
            "[storage_extra]\nbackend = 3\n",
        )
        assert load_config(path, registry=registry) == load_config(
            {"storage": {}}, registry=registry
        )


class TestUnknownKeys:
    def test_unknown_key_in_storage(self, registry: Registry) -> None:
        """A misspelt key in [storage] is reported with its path."""
        assert _problems({"storage": {"pool_sise": 3}}, registry) == [
            "storage.pool_sise: unknown key"
        ]

    def test_unknown_key_in_storage_file(self, tmp_path: Path, registry: Registry) -> None:
        """The same typo in a TOML file gives exactly the same message."""
        path = _write(tmp_path, "[storage]\npool_sise = 3\n")
        with pytest.raises(InvalidConfigError) as info:
            load_config(path, registry=registry)
        assert str(info.value) == "invalid storage configuration: storage.pool_sise: unknown key"

    def test_unknown_key_in_memory_section(self, registry: Registry) -> None:
        """The memory driver has no settings, so any key in its section is unknown."""
        assert _problems({"storage": {"memory": {"max_items": 10}}}, registry) == [
            "storage.memory.max_items: unknown key"
        ]

    def test_unknown_key_in_a_plugin_section(self, registry: Registry) -> None:
        """A typo inside a plugin driver's section is reported with the full path."""
        table = {"session_store": "probe", "probe": {"pool_sise": 1}}
        assert _problems({"storage": table}, registry) == [
            "storage.probe.pool_sise: unknown key; did you mean pool_size?"
        ]

    @pytest.mark.parametrize(
        ("table", "problem"),
        [
            ({"backnd": "memory"}, "storage.backnd: unknown key; did you mean backend?"),
            (
                {"rate_limit_countr": "memory"},
                "storage.rate_limit_countr: unknown key; did you mean rate_limit_counter?",
            ),
            (
                {"session_store": "probe", "probe": {"lable": "x"}},
                "storage.probe.lable: unknown key; did you mean label?",
            ),
        ],
    )
    def test_a_near_miss_names_the_key_meant(
        self, registry: Registry, table: dict[str, Any], problem: str
    ) -> None:
        """An unknown key close to a real one says which one was probably meant."""
        assert _problems({"storage": table}, registry) == [problem]

    def test_every_problem_is_reported(self, registry: Registry) -> None:
        """Several bad keys in [storage] are all reported, in table order."""
        table = {"pool_sise": 3, "backend": "", "policy_store": 7}
        assert _problems({"storage": table}, registry) == [
            "storage.pool_sise: unknown key",
            "storage.backend: expected a driver name, got ''",
            "storage.policy_store: expected a driver name, got 7",
        ]

    def test_every_problem_in_a_section_is_reported(self, registry: Registry) -> None:
        """A wrong type and an unknown key in one section are both reported."""
        assert _problems({"storage": {"probe": {"label": 3, "extra": True}}}, registry) == [
            "storage.probe.label: expected str, got int",
            "storage.probe.extra: unknown key",
        ]


class TestValues:
    @pytest.mark.parametrize(
        ("field", "value", "problem"),
        [
            ("pool_size", "10", "expected int, got str"),
            ("pool_size", True, "expected int, got bool"),
            ("pool_size", 1.5, "expected int, got float"),
            ("label", 3, "expected str, got int"),
            ("ratio", "1.0", "expected float, got str"),
            ("ratio", False, "expected float, got bool"),
            ("password", 123, "expected str, got int"),
        ],
    )
    def test_wrong_type_is_not_coerced(
        self, registry: Registry, field: str, value: object, problem: str
    ) -> None:
        """A value of the wrong type is rejected with its path, never coerced."""
        source = {"storage": {"probe": {field: value}}}
        assert _problems(source, registry) == [f"storage.probe.{field}: {problem}"]

    def test_wrong_type_from_a_toml_file(self, tmp_path: Path, registry: Registry) -> None:
        """A quoted number in a TOML file is a str, not an int."""
        path = _write(tmp_path, '[storage.probe]\npool_size = "10"\n')
        assert _problems(path, registry) == ["storage.probe.pool_size: expected int, got str"]

    def test_validator_error_names_the_path(self, registry: Registry) -> None:
        """A field validator's "field: problem" message is reported under the field's path."""
        assert _problems({"storage": {"probe": {"pool_size": 0}}}, registry) == [
            "storage.probe.pool_size: must be at least 1, got 0"
        ]

    @pytest.mark.parametrize(("value", "shown"), [("", "''"), (3, "3"), ({}, "{}")])
    def test_selector_must_be_a_driver_name(
        self, registry: Registry, value: object, shown: str
    ) -> None:
        """backend must be a non-empty str."""
        assert _problems({"storage": {"backend": value}}, registry) == [
            f"storage.backend: expected a driver name, got {shown}"
        ]

    def test_storage_must_be_a_table(self, tmp_path: Path, registry: Registry) -> None:
        """A [storage] key that is not a table is reported as such."""
        assert _problems(_write(tmp_path, "storage = 3\n"), registry) == [
            "storage: expected a table, got int"
        ]


class TestDrivers:
    def test_unknown_backend_lists_installed_drivers(self, registry: Registry) -> None:
        """An unknown backend is an UnknownDriverError listing every installed driver."""
        with pytest.raises(UnknownDriverError) as info:
            load_config({"storage": {"backend": "nope"}}, registry=registry)
        assert str(info.value) == (
            "storage.backend: unknown driver 'nope'; installed drivers: everything, memory, probe"
        )
        assert info.value.name == "nope"
        assert info.value.installed == ["everything", "memory", "probe"]

    def test_unknown_override_names_its_key(self, registry: Registry) -> None:
        """An unknown driver in a per-kind override names that key."""
        with pytest.raises(UnknownDriverError) as info:
            load_config({"storage": {"rate_limit_counter": "redsi"}}, registry=registry)
        assert str(info.value) == (
            "storage.rate_limit_counter: unknown driver 'redsi'; "
            "installed drivers: everything, memory, probe"
        )

    def test_section_for_an_unknown_driver(self, registry: Registry) -> None:
        """A section whose name is no driver (a typo like [storage.memroy]) is an unknown driver."""
        with pytest.raises(UnknownDriverError) as info:
            load_config({"storage": {"memroy": {}}}, registry=registry)
        assert str(info.value) == (
            "storage.memroy: unknown driver 'memroy'; installed drivers: everything, memory, probe"
        )

    def test_unknown_driver_lists_the_real_installed_drivers(self) -> None:
        """With the installed entry points, the message lists memory and redis."""
        with pytest.raises(UnknownDriverError) as info:
            load_config({"storage": {"backend": "nope"}})
        assert {"memory", "redis"} <= set(info.value.installed)
        assert str(info.value) == (
            "storage.backend: unknown driver 'nope'; installed drivers: "
            + ", ".join(Registry().names())
        )

    def test_backend_lacking_a_kind_names_the_drivers_that_have_it(
        self, registry: Registry
    ) -> None:
        """A backend without a rate-limit counter is a MissingKindError naming the providers."""
        with pytest.raises(MissingKindError) as info:
            load_config({"storage": {"backend": "probe"}}, registry=registry)
        assert str(info.value) == (
            "storage.backend: driver 'probe' does not provide a rate_limit_counter; "
            "drivers that do: everything, memory"
        )
        assert (info.value.driver, info.value.kind) == ("probe", "rate_limit_counter")
        assert info.value.providers == ["everything", "memory"]

    def test_override_lacking_its_kind_names_its_key(self, registry: Registry) -> None:
        """A per-kind override to a driver without that kind names the override's key."""
        with pytest.raises(MissingKindError) as info:
            load_config({"storage": {"rate_limit_counter": "probe"}}, registry=registry)
        assert str(info.value) == (
            "storage.rate_limit_counter: driver 'probe' does not provide a rate_limit_counter; "
            "drivers that do: everything, memory"
        )

    def test_backend_lacking_a_kind_is_fine_when_overridden(self, registry: Registry) -> None:
        """A backend without a kind is accepted when that kind is overridden to a provider."""
        table = {"backend": "probe", "rate_limit_counter": "memory"}
        config = load_config({"storage": table}, registry=registry)
        assert config.driver_for(Kind.RATE_LIMIT_COUNTER) == "memory"
        assert config.driver_for(Kind.SESSION_STORE) == "probe"


class TestSources:
    def test_str_and_path_are_both_accepted(self, tmp_path: Path, registry: Registry) -> None:
        """A config path may be given as a str or a Path."""
        path = _write(tmp_path, '[storage]\nsession_store = "probe"\n')
        assert load_config(str(path), registry=registry) == load_config(path, registry=registry)

    def test_mapping_without_storage_table(self, registry: Registry) -> None:
        """A mapping without a storage table is a ConfigError saying so."""
        with pytest.raises(ConfigError) as info:
            load_config({"agent": {"name": "a"}}, registry=registry)
        assert type(info.value) is ConfigError
        assert str(info.value) == "config mapping: no [storage] table"

    def test_file_without_storage_table(self, tmp_path: Path, registry: Registry) -> None:
        """A file without a [storage] table is a ConfigError naming the file."""
        path = _write(tmp_path, '[agent]\nname = "a"\n')
        with pytest.raises(ConfigError) as info:
            load_config(path, registry=registry)
        assert str(info.value) == f"{path}: no [storage] table"

    def test_missing_file(self, tmp_path: Path, registry: Registry) -> None:
        """A file that does not exist is a ConfigError naming it and the OS reason."""
        path = tmp_path / "absent.toml"
        with pytest.raises(ConfigError) as info:
            load_config(path, registry=registry)
        assert str(info.value) == f"{path}: cannot read config file: No such file or directory"

    def test_directory_is_unreadable(self, tmp_path: Path, registry: Registry) -> None:
        """A directory given as the config file is a ConfigError naming the OS reason."""
        with pytest.raises(ConfigError) as info:
            load_config(tmp_path, registry=registry)
        assert str(info.value) == f"{tmp_path}: cannot read config file: Is a directory"

    def test_invalid_toml(self, tmp_path: Path, registry: Registry) -> None:
        """A file that is not TOML is a ConfigError naming the file and tomllib's reason."""
        text = '[storage\nbackend = "memory"\n'
        with pytest.raises(tomllib.TOMLDecodeError) as parse:
            tomllib.loads(text)
        path = _write(tmp_path, text)
        with pytest.raises(ConfigError) as info:
            load_config(path, registry=registry)
        assert str(info.value) == f"{path}: invalid TOML: {parse.value}"

    def test_file_that_is_not_utf8(self, tmp_path: Path, registry: Registry) -> None:
        """A config file that is not UTF-8 is a ConfigError naming the file."""
        path = _write(tmp_path, b'[storage]\nbackend = "\xff"\n')
        with pytest.raises(ConfigError) as info:
            load_config(path, registry=registry)
        assert str(info.value).startswith(f"{path}: ")

    def test_source_of_wrong_type(self, registry: Registry) -> None:
        """A source that is neither a path nor a mapping is a TypeError."""
        with pytest.raises(TypeError) as info:
            load_config(3, registry=registry)  # type: ignore[arg-type]
        assert str(info.value) == "config source must be a path or a mapping, got int"

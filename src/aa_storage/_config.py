"""The ``[storage]`` table: which driver serves each kind, and each driver's settings."""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs
import cattrs

from aa_storage._cattrs import describe_errors, make_converter, unknown_key
from aa_storage._registry import Registry
from aa_storage.contracts import Kind
from aa_storage.errors import ConfigError, InvalidConfigError, MissingKindError

DEFAULT_BACKEND = "memory"
_converter = make_converter(forbid_extra_keys=True)


@attrs.frozen
class StorageConfig:
    """A validated ``[storage]`` table.

    ``drivers`` maps each driver name that is used, or has a section, to its
    structured config (an instance of the driver's config class).
    """

    backend: str = DEFAULT_BACKEND
    session_store: str | None = None
    rate_limit_counter: str | None = None
    policy_store: str | None = None
    drivers: Mapping[str, Any] = attrs.field(factory=dict)

    def driver_for(self, kind: Kind) -> str:
        """The name of the driver that serves ``kind``: its override, else ``backend``."""
        override: str | None = getattr(self, kind.value)
        return override or self.backend


_SELECTORS = ("backend", *(kind.value for kind in Kind))


def load_config(
    source: str | os.PathLike[str] | Mapping[str, Any], *, registry: Registry | None = None
) -> StorageConfig:
    """Read and validate a config from a TOML file path or a mapping shaped like one.

    Only the ``[storage]`` table is read; other tables are left to their owners.
    Every driver the table names or has a section for is loaded and its
    section validated, so a typo in an unused section is still caught.
    Raises a :class:`~aa_storage.errors.ConfigError` subclass naming the path
    and the problem.
    """
    registry = registry or Registry()
    document, origin = _read(source)
    table = document.get("storage")
    if table is None:
        raise ConfigError(f"{origin}: no [storage] table")
    if not isinstance(table, Mapping):
        raise InvalidConfigError([f"storage: expected a table, got {type(table).__name__}"])

    problems: list[str] = []
    selected: dict[str, str] = {}
    sections: dict[str, Mapping[str, Any]] = {}
    for key, value in table.items():
        if key in _SELECTORS:
            if isinstance(value, str) and value:
                selected[key] = value
            else:
                problems.append(f"storage.{key}: expected a driver name, got {value!r}")
        elif isinstance(value, Mapping):
            sections[key] = value
        else:
            problems.append(unknown_key(f"storage.{key}", key, _SELECTORS))
    if problems:
        raise InvalidConfigError(problems)

    backend = selected.get("backend", DEFAULT_BACKEND)
    for kind in Kind:
        name = selected.get(kind.value, backend)
        where = f"storage.{kind.value}" if kind.value in selected else "storage.backend"
        driver = registry.driver(name, where=where)
        if kind not in driver.kinds:
            providers = [d.name for d in registry.drivers() if kind in d.kinds]
            raise MissingKindError(name, kind.value, providers, where=where)
        sections.setdefault(name, {})

    drivers: dict[str, Any] = {}
    for name, section in sections.items():
        driver = registry.driver(name, where=f"storage.{name}")
        path = f"storage.{name}"
        # A driver names the settings it dropped, so an old config is told what
        # replaced them rather than "unknown key".
        removed: Mapping[str, str] = getattr(driver.config_class, "removed_settings", {})
        found = [f"{path}.{key}: {removed[key]}" for key in section if key in removed]
        kept = {key: value for key, value in section.items() if key not in removed}
        try:
            drivers[name] = _converter.structure(kept, driver.config_class)
        except (cattrs.BaseValidationError, TypeError, ValueError) as exc:
            found += describe_errors(exc, path)
        problems.extend(_in_file_order(found, path, section))
    if problems:
        raise InvalidConfigError(problems)
    return StorageConfig(
        backend=backend,
        session_store=selected.get("session_store"),
        rate_limit_counter=selected.get("rate_limit_counter"),
        policy_store=selected.get("policy_store"),
        drivers=drivers,
    )


def _in_file_order(problems: list[str], path: str, section: Mapping[str, Any]) -> list[str]:
    """``problems`` of the table at ``path``, sorted by where their key stands in
    ``section`` (a TOML table keeps the file's order); one with no key comes first."""
    positions = {key: index for index, key in enumerate(section)}

    def position(problem: str) -> int:
        within = problem.partition(": ")[0].removeprefix(f"{path}.")
        return positions.get(re.split(r"[.\[]", within, maxsplit=1)[0], -1)

    return sorted(problems, key=position)


def _read(source: str | os.PathLike[str] | Mapping[str, Any]) -> tuple[Mapping[str, Any], str]:
    if isinstance(source, Mapping):
        return source, "config mapping"
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(f"config source must be a path or a mapping, got {type(source).__name__}")
    path = Path(source)
    try:
        with path.open("rb") as file:
            return tomllib.load(file), str(path)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{path}: invalid TOML: not UTF-8 ({exc.reason} at byte {exc.start})"
        ) from None

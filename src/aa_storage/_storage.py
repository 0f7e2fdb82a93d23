"""Building the three stores from a config: one backend per driver, shared by its stores."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Self, cast

import attrs

from aa_storage._config import StorageConfig, load_config
from aa_storage._registry import Registry
from aa_storage.contracts import (
    Backend,
    Kind,
    PolicyBackend,
    PolicyCache,
    RateLimitBackend,
    RateLimitCounter,
    SessionBackend,
    SessionStore,
)
from aa_storage.errors import ConfigError

CONFIG_ENV_VAR = "AA_STORAGE_CONFIG"


@attrs.define
class Storage:
    """The stores a config selects, and the backends that serve them.

    Use it as ``async with open_storage(...) as storage:`` or call
    :meth:`aclose` when done; closing releases every backend's connections once.
    ``backends`` maps each driver name in use to its single backend.
    """

    sessions: SessionStore
    rate_limiter: RateLimitCounter
    policies: PolicyCache
    config: StorageConfig
    backends: Mapping[str, Backend]

    async def aclose(self) -> None:
        """Close every backend, even if closing one of them fails."""
        failure: BaseException | None = None
        for backend in self.backends.values():
            try:
                await backend.aclose()
            except Exception as exc:
                failure = failure or exc
        if failure is not None:
            raise failure

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()


def open_storage(
    source: str | os.PathLike[str] | Mapping[str, Any] | StorageConfig | None = None,
    *,
    registry: Registry | None = None,
) -> Storage:
    """Build the stores ``source`` selects, without doing any I/O.

    ``source`` is a TOML path, a mapping shaped like one, or a loaded
    :class:`StorageConfig`. With ``None``, the file named by the
    ``AA_STORAGE_CONFIG`` environment variable is read if it is set (a
    ``ConfigError`` naming the variable when it names no file); otherwise
    every kind comes from the embedded ``memory`` driver.
    """
    registry = registry or Registry()
    if source is None:
        source = os.environ.get(CONFIG_ENV_VAR) or {"storage": {}}
        if isinstance(source, str) and not Path(source).is_file():
            raise ConfigError(f"{CONFIG_ENV_VAR} names {source!r}, but there is no such file")
    config = source if isinstance(source, StorageConfig) else load_config(source, registry=registry)
    backends: dict[str, Backend] = {}

    def backend_for(kind: Kind) -> Backend:
        name = config.driver_for(kind)
        if name not in backends:
            driver = registry.driver(name)
            settings = config.drivers.get(name) or driver.config_class()
            backends[name] = driver.open(settings)
        return backends[name]

    # The registry has checked that each driver provides the kind it serves
    # here, so its backend has that kind's accessor.
    return Storage(
        sessions=cast(SessionBackend, backend_for(Kind.SESSION_STORE)).sessions(),
        rate_limiter=cast(RateLimitBackend, backend_for(Kind.RATE_LIMIT_COUNTER)).rate_limiter(),
        policies=cast(PolicyBackend, backend_for(Kind.POLICY_STORE)).policies(),
        config=config,
        backends=backends,
    )

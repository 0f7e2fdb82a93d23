"""The errors every store raises, whatever driver is behind it.

Callers catch these and nothing else: a driver maps its client library's
exceptions onto them, so no redis-py (or other) exception reaches a caller.
Argument checks raise the builtin ``TypeError`` and ``ValueError`` before any
I/O, because a bad argument is a bug in the caller, not a storage failure.
"""

from __future__ import annotations

from collections.abc import Iterable


class StorageError(Exception):
    """Base class of every failure a store reports."""


class NotFoundError(StorageError):
    """The record, counter or policy asked for is not stored."""


class BackendError(StorageError):
    """The backend could not be reached or refused the call.

    Raised for an unreachable or frozen server, a timeout, a refused login, a
    permission denied by an ACL, and an exhausted connection pool.
    """


class SerializationError(StorageError):
    """The stored bytes do not decode, or the key holds the wrong type."""


class ConflictError(StorageError):
    """The write lost a race that the store refuses to settle silently."""


class ConfigError(Exception):
    """The storage configuration is unusable; the message says why and where."""


class UnknownDriverError(ConfigError):
    """The configuration names a driver that is not installed."""

    def __init__(self, name: str, installed: Iterable[str], *, where: str) -> None:
        self.name = name
        self.installed = sorted(installed)
        listed = ", ".join(self.installed) or "none"
        super().__init__(f"{where}: unknown driver {name!r}; installed drivers: {listed}")


class MissingKindError(ConfigError):
    """The configuration asks a driver for a kind of store it does not provide."""

    def __init__(self, driver: str, kind: str, providers: Iterable[str], *, where: str) -> None:
        self.driver = driver
        self.kind = kind
        self.providers = sorted(providers)
        listed = ", ".join(self.providers) or "none"
        super().__init__(
            f"{where}: driver {driver!r} does not provide a {kind}; drivers that do: {listed}"
        )


class InvalidConfigError(ConfigError):
    """One or more values in the configuration are invalid.

    ``problems`` holds one line per bad value, each starting with the value's
    path, e.g. ``storage.redis.pool_size: must lie in [1, 64], got 0``; the
    message joins them with ``"; "``.
    """

    def __init__(self, problems: Iterable[str]) -> None:
        self.problems = list(problems)
        super().__init__("invalid storage configuration: " + "; ".join(self.problems))


class DuplicateDriverError(ConfigError):
    """Two plugins register drivers under one name."""

    def __init__(self, name: str, first: str, second: str) -> None:
        self.name = name
        super().__init__(f"driver {name!r} is registered twice: by {first} and by {second}")


class PluginError(ConfigError):
    """A driver plugin is broken: it fails to import, or its hooks are wrong."""

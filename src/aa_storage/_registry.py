"""Finds driver plugins through entry points and loads only the ones asked for."""

from __future__ import annotations

from importlib.metadata import EntryPoint, entry_points

import pluggy

from aa_storage import hookspecs
from aa_storage.commands import Commands
from aa_storage.contracts import Driver
from aa_storage.errors import (
    ConfigError,
    DuplicateDriverError,
    PluginError,
    UnknownDriverError,
)

ENTRY_POINT_GROUP = "aa_storage.drivers"


class Registry:
    """The installed drivers, by name.

    Listing names reads entry-point metadata only; a driver's module is
    imported the first time :meth:`driver` asks for it, so a configuration that
    only names ``memory`` never imports ``redis``, and a broken plugin fails
    only the configurations that name it. Tests (and embedders) can add a
    plugin object directly with :meth:`add_plugin`.
    """

    def __init__(self, found: list[EntryPoint] | None = None) -> None:
        self._manager = pluggy.PluginManager(hookspecs.PROJECT_NAME)
        self._manager.add_hookspecs(hookspecs)
        self._entry_points: dict[str, EntryPoint] = {}
        # Names claimed by two different entry points: unusable, but only they are.
        self._clashes: dict[str, DuplicateDriverError] = {}
        # Each loaded driver with where it came from and the plugin that provided it.
        self._loaded: dict[str, tuple[Driver, str, object]] = {}
        listed = entry_points(group=ENTRY_POINT_GROUP) if found is None else found
        for entry_point in listed:
            known = self._entry_points.get(entry_point.name)
            if known is not None and known.value != entry_point.value:
                # Sorted, so the message doesn't depend on the order of sys.path.
                first, second = sorted([known.value, entry_point.value])
                self._clashes.setdefault(
                    entry_point.name, DuplicateDriverError(entry_point.name, first, second)
                )
            self._entry_points.setdefault(entry_point.name, entry_point)

    def names(self) -> list[str]:
        """The names of every installed or added driver, sorted, without importing any."""
        return sorted(self._entry_points.keys() | self._loaded.keys())

    def driver(self, name: str, *, where: str = "storage.backend") -> Driver:
        """The driver called ``name``, importing its plugin on first use.

        ``where`` is the config path that named it, for the error message.
        Raises ``UnknownDriverError`` if no such driver is installed,
        ``DuplicateDriverError`` if two installed entry points claim the name,
        and ``PluginError`` if its plugin is broken.
        """
        if name in self._loaded:
            return self._loaded[name][0]
        if name in self._clashes:
            raise self._clashes[name]
        entry_point = self._entry_points.get(name)
        if entry_point is None:
            raise UnknownDriverError(name, self.names(), where=where)
        origin = f"entry point {name} = {entry_point.value}"
        try:
            plugin = entry_point.load()
        except Exception as exc:
            raise PluginError(
                f"cannot import driver {name!r} ({origin}): {_one_line(exc)}"
            ) from None
        driver = self._register(plugin, origin)
        if driver.name != name:
            self._forget(driver.name, plugin)
            raise PluginError(f"{origin} registers a driver named {driver.name!r}")
        return driver

    def add_plugin(self, plugin: object, *, origin: str | None = None) -> Driver:
        """Register a plugin object (a module or any object with hook implementations).

        Its driver's name must not be taken by an installed or added driver.
        """
        origin = origin or repr(plugin)
        driver = self._register(plugin, origin)
        entry_point = self._entry_points.get(driver.name)
        if entry_point is not None:
            self._forget(driver.name, plugin)
            raise DuplicateDriverError(driver.name, f"entry point {entry_point.value}", origin)
        return driver

    def load_all(self) -> dict[str, Driver | ConfigError]:
        """Every installed or added driver by name, in name order, importing each plugin.

        A broken plugin maps to the error that asking for it raises, and does
        not stop the others from loading.
        """
        loaded: dict[str, Driver | ConfigError] = {}
        for name in self.names():
            try:
                loaded[name] = self.driver(name)
            except ConfigError as exc:
                loaded[name] = exc
        return loaded

    def drivers(self) -> list[Driver]:
        """Every driver whose plugin loads, in name order; broken ones are left out."""
        return [found for found in self.load_all().values() if isinstance(found, Driver)]

    def add_commands(self, commands: Commands) -> None:
        """Let every installed or added plugin add its subcommands, in name order,
        importing each plugin.

        Raises ``ConfigError`` (a ``PluginError`` naming the plugin, most often)
        when a plugin does not load, or its ``add_commands`` hook raises.
        """
        for name in self.names():
            self.driver(name)
            _, origin, plugin = self._loaded[name]
            try:
                self._hook_of(plugin, "add_commands")(commands=commands.added_by(origin))
            except Exception as exc:
                raise PluginError(f"add_commands() of {origin} failed: {_one_line(exc)}") from None

    def _register(self, plugin: object, origin: str) -> Driver:
        """Register ``plugin`` and call its hook; on any failure it is left unregistered."""
        if self._manager.is_registered(plugin):
            raise PluginError(f"driver plugin {origin} is already registered")
        try:
            self._manager.register(plugin)
        except (ValueError, pluggy.PluginValidationError) as exc:
            raise PluginError(f"driver plugin {origin} is invalid: {_one_line(exc)}") from None
        try:
            driver = self._call_register(plugin, origin)
            if driver.name in self._loaded:
                raise DuplicateDriverError(driver.name, self._loaded[driver.name][1], origin)
        except BaseException:
            self._manager.unregister(plugin)
            raise
        self._loaded[driver.name] = (driver, origin, plugin)
        return driver

    def _call_register(self, plugin: object, origin: str) -> Driver:
        try:
            # A hookimpl whose name matches no hookspec (a typo) fails here.
            self._manager.check_pending()
        except pluggy.PluginValidationError as exc:
            raise PluginError(f"driver plugin {origin} is invalid: {_one_line(exc)}") from None
        try:
            results = self._hook_of(plugin, "register")()
        except Exception as exc:
            raise PluginError(f"register() of {origin} failed: {_one_line(exc)}") from None
        if len(results) != 1 or not isinstance(results[0], Driver):
            raise PluginError(f"register() of {origin} must return one Driver, got {results!r}")
        driver: Driver = results[0]
        return driver

    def _hook_of(self, plugin: object, hook: str) -> pluggy.HookCaller:
        """The hook called ``hook``, as ``plugin`` alone implements it."""
        others = [p for p in self._manager.get_plugins() if p is not plugin]
        return self._manager.subset_hook_caller(hook, remove_plugins=others)

    def _forget(self, name: str, plugin: object) -> None:
        del self._loaded[name]
        self._manager.unregister(plugin)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())

"""The hooks a driver plugin implements.

A driver is a module with a ``register()`` hook implementation, listed under
the entry-point group ``aa_storage.drivers`` with the driver's name::

    [project.entry-points."aa_storage.drivers"]
    mydriver = "my_package.hooks"

and in ``my_package/hooks.py``::

    from aa_storage.hookspecs import hookimpl

    @hookimpl
    def register() -> Driver:
        return Driver(name="mydriver", config_class=MyConfig, kinds=..., open=MyBackend)

It may also add subcommands to ``aa-storage`` with ``add_commands(commands)``.
A hook implementation whose name or arguments match no hook here makes the
plugin broken, with an error naming it. See ``plugins.md`` for the guide.
"""

from __future__ import annotations

import pluggy

from aa_storage.commands import Commands
from aa_storage.contracts import Driver

PROJECT_NAME = "aa_storage"
#: Marks the hook specifications below.
hookspec = pluggy.HookspecMarker(PROJECT_NAME)
#: Marks a plugin's implementation of a hook.
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


@hookspec
def register() -> Driver:  # type: ignore[empty-body]
    """Return the driver this plugin provides.

    Called once, the first time the driver is asked for (a configuration names
    it, ``aa-storage drivers`` lists it, or the CLI asks for its commands). The returned
    :class:`~aa_storage.contracts.Driver`'s ``name`` must equal the plugin's
    entry-point name; an exception raised here marks only this plugin broken.
    """


@hookspec
def add_commands(commands: Commands) -> None:
    """Add this plugin's subcommands to ``aa-storage``, with :meth:`Commands.add
    <aa_storage.commands.Commands.add>`.

    Called when a command line names a command that ``aa-storage`` does not
    have itself, or asks for the list of commands; never for ``drivers`` or
    ``check``, so a plugin broken here does not stop them. Called after
    ``register()``, once per plugin. Any exception raised here (adding a name
    that is taken is one) stops ``aa-storage`` with one ``PluginError`` line
    that names this plugin.

    :param commands: where the subcommands are added
    """

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

See ``plugins.md`` for the guide.
"""

from __future__ import annotations

import pluggy

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
    it, or ``aa-storage drivers`` lists it). The returned
    :class:`~aa_storage.contracts.Driver`'s ``name`` must equal the plugin's
    entry-point name; an exception raised here marks only this plugin broken.
    """

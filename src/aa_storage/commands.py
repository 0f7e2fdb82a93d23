"""The subcommands of ``aa-storage``, and how a driver plugin adds its own.

A plugin implements the ``add_commands`` hook of :mod:`aa_storage.hookspecs`
and calls :meth:`Commands.add` once per subcommand, with the function that runs
it; the parser it gets back takes the subcommand's arguments::

    import argparse

    from aa_storage.commands import Commands
    from aa_storage.hookspecs import hookimpl

    @hookimpl
    def add_commands(commands: Commands) -> None:
        ping = commands.add("ping", run_ping, help="ping the server", description="...")
        ping.add_argument("--config", metavar="FILE")

    def run_ping(args: argparse.Namespace) -> int:
        ...  # args.config holds --config
        return 0

The function gets the parsed arguments and returns the exit status. When it
raises ``ConfigError`` or ``StorageError``, ``aa-storage`` prints one line,
``aa-storage: <error class>: <message>``, and exits with status 1, as it does
for its own commands. See ``plugins.md``.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import attrs

from aa_storage.errors import PluginError

#: What runs a subcommand: its parsed arguments in, its exit status out.
Handler = Callable[[argparse.Namespace], int]

#: Who added the built-in commands, in messages about a clash.
BUILT_IN = "aa-storage itself"


@attrs.frozen
class _Command:
    run: Handler
    origin: str


@attrs.frozen
class Commands:
    """The subcommands of one ``aa-storage`` parser, each with the function that runs it.

    ``origin`` names whoever adds through this object (a plugin's entry point),
    so that a command name taken twice is refused naming both adders.
    """

    _subcommands: argparse._SubParsersAction[argparse.ArgumentParser]
    origin: str = BUILT_IN
    _added: dict[str, _Command] = attrs.field(factory=dict)

    @classmethod
    def of(cls, parser: argparse.ArgumentParser) -> Commands:
        """Subcommands for ``parser``; the one a command line names is ``args.command``."""
        return cls(parser.add_subparsers(dest="command", title="commands"))

    def add(
        self, name: str, run: Handler, *, help: str, description: str
    ) -> argparse.ArgumentParser:
        """Add the subcommand ``name``, run by ``run(args)``; returns its parser, for its
        arguments. ``help`` is its line in ``aa-storage --help``, ``description`` the
        opening of ``aa-storage <name> --help``.

        Raises ``ValueError`` when ``name`` is not one word, or is taken, and
        ``TypeError`` when ``run`` cannot be called.
        """
        if not isinstance(name, str) or name.split() != [name] or name.startswith("-"):
            raise ValueError(f"a command's name is one word not starting with '-', got {name!r}")
        if not callable(run):
            raise TypeError(f"command {name!r} needs a function to run it, got {run!r}")
        taken = self._added.get(name)
        if taken is not None:
            raise ValueError(f"command {name!r} is already added by {taken.origin}")
        parser = self._subcommands.add_parser(name, help=help, description=description)
        self._added[name] = _Command(run, self.origin)
        return parser

    def __contains__(self, name: object) -> bool:
        """Whether a subcommand called ``name`` has been added."""
        return name in self._added

    def added_by(self, origin: str) -> Commands:
        """These same commands, with whatever is added through the result credited to ``origin``."""
        return attrs.evolve(self, origin=origin)

    def run(self, args: argparse.Namespace) -> int:
        """Run the subcommand ``args.command`` names; returns its exit status.

        Raises ``PluginError`` when a plugin's command returns anything but an int.
        """
        command = self._added[args.command]
        status = command.run(args)
        if not isinstance(status, int) or isinstance(status, bool):
            raise PluginError(
                f"command {args.command!r} of {command.origin} returned {status!r}, "
                "not an exit status"
            )
        return status

"""The Redis driver's plugin, found through the ``aa_storage.drivers`` entry point ``redis``:
its driver, and the ``aa-storage bench`` subcommand."""

from aa_storage import Driver, Kind
from aa_storage.commands import Commands
from aa_storage.hookspecs import hookimpl
from aa_storage_redis.backend import RedisBackend
from aa_storage_redis.config import DRIVER_NAME, RedisStorageConfig

__all__ = ["DRIVER_NAME", "add_commands", "register"]


@hookimpl
def register() -> Driver:
    """Provide all three kinds of store over one Redis deployment."""
    return Driver(
        name=DRIVER_NAME,
        config_class=RedisStorageConfig,
        kinds=set(Kind),
        open=RedisBackend.connect,
    )


@hookimpl
def add_commands(commands: Commands) -> None:
    """Add ``aa-storage bench``, which measures this driver beside raw redis-py."""
    # Imported here, as the CLI asks for its commands, and not by every program
    # that stores through this driver: the benchmark is for the command line only.
    from aa_storage_redis.bench import add_command

    add_command(commands)

"""The Redis driver's plugin, found through the ``aa_storage.drivers`` entry point ``redis``."""

from aa_storage import Driver, Kind
from aa_storage.hookspecs import hookimpl
from aa_storage_redis.backend import RedisBackend
from aa_storage_redis.config import RedisStorageConfig

DRIVER_NAME = "redis"


@hookimpl
def register() -> Driver:
    """Provide all three kinds of store over one Redis deployment."""
    return Driver(
        name=DRIVER_NAME,
        config_class=RedisStorageConfig,
        kinds=set(Kind),
        open=RedisBackend.connect,
    )

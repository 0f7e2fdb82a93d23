"""The memory driver's plugin: discovered through its entry point like any other."""

from aa_storage.contracts import Driver, Kind
from aa_storage.hookspecs import hookimpl
from aa_storage.memory import DRIVER_NAME, MemoryBackend, MemoryConfig


@hookimpl
def register() -> Driver:
    """Provide every kind of store, in process."""
    return Driver(
        name=DRIVER_NAME, config_class=MemoryConfig, kinds=set(Kind), open=MemoryBackend.connect
    )

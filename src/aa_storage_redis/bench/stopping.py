"""How a part of ``aa-storage bench`` that runs in an event loop is stopped by SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Iterator


@contextlib.contextmanager
def sigterm_cancels_this_task() -> Iterator[None]:
    """While the block runs, SIGTERM stops it as Ctrl-C does: the running task is
    cancelled, so the block's own cleanup (keys deleted, processes stopped) still
    runs. SIGTERM's handling before the block is put back after it."""
    loop = asyncio.get_running_loop()
    this_run = asyncio.current_task()
    assert this_run is not None, "a coroutine awaited by asyncio.run runs in a task"
    outside = signal.getsignal(signal.SIGTERM)
    loop.add_signal_handler(signal.SIGTERM, this_run.cancel)
    try:
        yield
    finally:
        loop.remove_signal_handler(signal.SIGTERM)
        # That left SIGTERM at its default, which ends the process with no cleanup.
        if outside is not None:
            signal.signal(signal.SIGTERM, outside)

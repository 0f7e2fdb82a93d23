"""Waiting in async tests without timed assertions: waiting for a condition, and a clock the
test moves forward instead of waiting. (An await bounded by the hang limit is
``aa_storage.testing.bounded``.)

``HANG_SECS`` only stops a test that hangs; it is far above anything a passing test takes on a
loaded machine, so it never decides a result that a slow machine could change.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from aa_storage.testing import HANG_SECS

POLL_INTERVAL = 0.005


async def eventually(condition: Callable[[], bool], what: str) -> None:
    """Return once ``condition()`` holds; fail the test if it still does not after HANG_SECS.

    For facts another thread or process establishes (the fault proxy's counters, the server's
    client list), which give no event to await.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + HANG_SECS
    while not condition():
        if loop.time() > deadline:
            pytest.fail(f"{what}: still not so after {HANG_SECS}s")
        await asyncio.sleep(POLL_INTERVAL)


class Clock:
    """The running loop's clock, which the test moves forward on top of real time."""

    def __init__(self, loop: asyncio.AbstractEventLoop, monkeypatch: pytest.MonkeyPatch) -> None:
        self._loop = loop
        self._ahead = 0.0
        real = loop.time
        monkeypatch.setattr(loop, "time", lambda: real() + self._ahead)

    def jump(self, seconds: float) -> None:
        """Move the clock ``seconds`` forward; timers now due run on the loop's next turn."""
        self._ahead += seconds

    async def advance(self, seconds: float) -> None:
        """Move the clock ``seconds`` forward and return once every timer due by then has run
        (timers run in the order of their deadlines, so the one set for now runs last)."""
        self.jump(seconds)
        reached = self._loop.create_future()
        self._loop.call_at(self._loop.time(), reached.set_result, None)
        await reached

"""Waiting in async tests without timed assertions: a hang guard, waiting for a condition, and
a clock the test moves forward instead of waiting.

``HANG_GUARD`` only stops a test that hangs; it is far above anything a passing test takes on a
loaded machine, so it never decides a result that a slow machine could change.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

import pytest

T = TypeVar("T")
HANG_GUARD = 20.0
POLL_INTERVAL = 0.005


async def bounded(call: Awaitable[T]) -> T:
    """``await call``, failing the test instead of hanging past ``HANG_GUARD``."""
    return await asyncio.wait_for(call, HANG_GUARD)


async def eventually(condition: Callable[[], bool], what: str) -> None:
    """Return once ``condition()`` holds; fail the test if it still does not after HANG_GUARD.

    For facts another thread or process establishes (the fault proxy's counters, the server's
    client list), which give no event to await.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + HANG_GUARD
    while not condition():
        if loop.time() > deadline:
            pytest.fail(f"{what}: still not so after {HANG_GUARD}s")
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

"""``aa-storage bench --profile``: where a call's CPU time goes, at the run's callers.

``increment`` with ``concurrency`` callers runs for the budget under cProfile, in
an event loop of its own, and the own time of every function is summed by the
layer it belongs to: the store and its argument checks, telemetry's hooks, the
executor, the nodes and connections, reply parsing, the event loop, and the
rest. cProfile slows every Python call alike, so the shares are what to read,
not the absolute times; C functions (hiredis, the socket calls) are timed too.
"""

from __future__ import annotations

import asyncio
import cProfile
import pstats
import uuid
from collections.abc import Iterator

import attrs

from aa_storage_redis.backend import RedisBackend
from aa_storage_redis.bench.operations import Caller, Subject, delete_made, operation_named
from aa_storage_redis.bench.timing import Budget, timed, warm
from aa_storage_redis.config import RedisStorageConfig

# The layers, by where the function is defined; the first that matches wins.
LAYERS = (
    ("store and argument checks", ("aa_storage_redis/rate_limit.py", "aa_storage/validation.py")),
    ("telemetry hooks", ("aa_storage_redis/telemetry.py",)),
    ("executor", ("aa_storage_redis/executor.py", "aa_storage_redis/topology.py")),
    ("nodes and connections", ("aa_storage_redis/node.py", "aa_storage_redis/connection.py")),
    ("packing and parsing replies", ("aa_storage_redis/replies.py", "hiredis", "wire.py")),
    ("event loop and futures", ("asyncio", "select", "_asyncio", "socket")),
)
INCREMENT = operation_named("increment")
OTHER = "the rest (the bench's callers, the interpreter)"
TOP = 12


@attrs.frozen
class Profile:
    """Own time per layer and for the costliest functions, over ``calls`` calls."""

    calls: int
    layers: tuple[tuple[str, float], ...]
    functions: tuple[tuple[str, float], ...]
    total: float

    def lines(self, callers: int) -> Iterator[str]:
        yield (
            f"profile of increment with {callers} callers, {self.calls:,} calls under "
            "cProfile (read the shares, not the times: cProfile slows every Python call):"
        )
        for layer, seconds in self.layers:
            yield f"  {seconds / self.total:>6.1%}  {layer}"
        yield f"  the {TOP} functions with the most own time:"
        for name, seconds in self.functions:
            yield f"  {seconds / self.total:>6.1%}  {name}"


def profile(config: RedisStorageConfig, callers: int, budget: Budget) -> Profile:
    """Profile ``increment`` with ``callers`` callers against ``config``'s server."""
    return asyncio.run(_profile(config, callers, budget))


async def _profile(config: RedisStorageConfig, callers: int, budget: Budget) -> Profile:
    prefix = f"{config.key_prefix}bench-{uuid.uuid4().hex[:12]}:"
    backend = RedisBackend.connect(attrs.evolve(config, key_prefix=prefix))
    callers_made = [Caller.new() for _ in range(callers)]
    subject = Subject.over(backend)
    try:
        await warm(INCREMENT.driver, subject, callers_made)
        profiler = cProfile.Profile()
        profiler.enable()
        measured = await timed(INCREMENT.driver, subject, callers_made, budget)
        profiler.disable()
        return _summary(pstats.Stats(profiler), measured.calls)
    finally:
        await delete_made(backend, callers_made)
        await backend.aclose()


def _summary(stats: pstats.Stats, calls: int) -> Profile:
    own = dict.fromkeys([*(name for name, _ in LAYERS), OTHER], 0.0)  # each shown, 0 too
    functions = []
    # pstats keeps its table in an attribute its own methods read; no method returns it.
    table = stats.stats  # type: ignore[attr-defined]
    for (path, line, function), (_, _, own_time, _, _) in table.items():
        # A C function has no file: its name says its module ("<method 'poll' of
        # 'select.epoll' objects>", "<built-in method hiredis.hiredis.pack_command>").
        home = path if path != "~" else function
        layer = next((name for name, marks in LAYERS if any(m in home for m in marks)), OTHER)
        own[layer] = own.get(layer, 0.0) + own_time
        where = path.rsplit("/", 1)[-1] if path != "~" else "builtin"
        functions.append((f"{function} ({where}:{line})", own_time))
    total = sum(own.values()) or 1.0
    functions.sort(key=lambda item: item[1], reverse=True)
    layers = tuple(sorted(own.items(), key=lambda item: item[1], reverse=True))
    return Profile(calls, layers, tuple(functions[:TOP]), total)

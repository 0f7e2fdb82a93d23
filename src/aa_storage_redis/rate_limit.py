"""Fixed-window counters: ``<prefix>ratelimit:<key>``, an integer with the window as its TTL."""

from __future__ import annotations

import re

import attrs

from aa_storage import SerializationError
from aa_storage.validation import check_amount, check_key, check_window_secs
from aa_storage_redis.executor import Executor
from aa_storage_redis.keys import KeySpace
from aa_storage_redis.scripts import INCREMENT


@attrs.frozen
class RedisRateLimitCounter:
    """Counters shared through Redis; each method is one round trip.

    The window is timed by the server's clock in milliseconds, never the
    client's, so every process sees the same window.
    """

    executor: Executor
    keys: KeySpace = attrs.field(
        default=attrs.Factory(lambda self: KeySpace(self.executor.config.key_prefix), True)
    )
    """The key space; by default the one the executor's config names."""

    async def increment(self, key: str, amount: int, window_secs: int) -> int:
        """Atomically add ``amount``; the window is armed only by the call that
        creates the counter (or finds it without an expiry).

        Retried only when the command certainly never reached the server: a
        blind retry after a lost reply would count the amount twice.
        """
        key = check_key(key)
        amount = check_amount(amount)
        window_ms = check_window_secs(window_secs) * 1000
        with self.executor.telemetry.operation("increment"):
            reply = await self.executor.run_script(
                INCREMENT, [self.keys.rate_limit(key)], [amount, window_ms], read=False
            )
            return _as_total(key, reply)

    async def current(self, key: str) -> int:
        """The window's total; 0 for an unknown or expired counter."""
        key = check_key(key)
        counter = self.keys.rate_limit(key)
        with self.executor.telemetry.operation("current"):
            reply = await self.executor.execute("GET", counter, key=counter, read=True)
            return 0 if reply is None else _as_total(key, reply)

    async def reset(self, key: str) -> None:
        """Drop the counter; idempotent."""
        key = check_key(key)
        counter = self.keys.rate_limit(key)
        with self.executor.telemetry.operation("reset"):
            await self.executor.execute("DEL", counter, key=counter, read=False)


# What INCRBY itself accepts as a counter (Redis's string2ll): 0, or an optional minus and
# digits without a leading zero, within a signed 64-bit integer. int() would also take
# " 7", "1_000", "+5", "0005" and "-0", which INCRBY refuses.
_INTEGER = re.compile(rb"0|-?[1-9][0-9]{0,18}")
_I64 = range(-(2**63), 2**63)
_ZERO = ord("0")


def _as_total(key: str, reply: bytes) -> int:
    # The common case first, without the regex: a positive total of at most 18 digits
    # and no leading zero is always a valid counter within 64 bits.
    if reply.isdigit() and len(reply) < 19 and reply[0] != _ZERO:
        return int(reply)
    if not _INTEGER.fullmatch(reply) or int(reply) not in _I64:
        raise SerializationError(f"counter {key!r} holds {reply[:40]!r}, not an integer")
    return int(reply)

"""What every layer of the execution core says to the next: packed commands and failures."""

from __future__ import annotations

import hiredis
from redis import exceptions as redis_errors


def pack(*args: bytes | str | int) -> bytes:
    """One command in the Redis protocol, packed by hiredis."""
    # hiredis' stub types the argument as a 1-tuple; it takes any length.
    packed: bytes = hiredis.pack_command(args)  # type: ignore[arg-type]
    return packed


class NotSent(Exception):
    """The command never left this process; ``cause`` says why."""

    def __init__(self, cause: redis_errors.RedisError) -> None:
        self.cause = cause


class ReplyLost(Exception):
    """The command was written but its reply never came; the server may have run it."""

    def __init__(self, cause: redis_errors.RedisError) -> None:
        self.cause = cause


class Closed(Exception):
    """The connection was closed for good while the command waited."""

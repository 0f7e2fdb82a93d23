"""Every use of a private name of redis-py, in one place, each with the reason.

The driver lets redis-py open each socket and run the handshake (TLS,
``HELLO``/``AUTH``, ``SELECT``); then it reads and writes the socket itself.
redis-py has no public API for the four things this needs, so this module
reaches into it, and nothing else in the driver does:

- :func:`take_stream` hands an open connection's socket over (``_writer``,
  ``_reader``): a multiplexed connection installs its own protocol on the
  transport, which redis-py must then never touch again.
- :func:`stream_of` reads an open connection's stream (``_reader``): the
  sentinel watchers and the tracking connections parse their replies and
  RESP3 pushes with hiredis themselves, because redis-py's ``read_response``
  hands pushes to handlers of its own and, cancelled in mid-read, can leave
  its parser out of step.
- :func:`close_now` closes a socket from a plain callback (``_close``):
  ``disconnect()``, the public way, is a coroutine, and a lost tracking
  connection is closed where nothing can await.
- :func:`error_reply` turns an error reply into redis-py's exception class for
  it (``redis._parsers.BaseParser.parse_error``): the table from prefixes
  (``MOVED``, ``ASK``, ``NOSCRIPT``, ``NOPERM``...) to classes lives only
  there, and using it keeps the driver's errors the ones redis-py users know.

:func:`verify` checks every one of them without I/O. The backend calls it
before it opens anything, so a redis-py release that renames one of them
fails at once, with :class:`RedisPyChanged` naming what is missing, instead
of hanging or corrupting a call. ``tests/test_redis_py.py`` exercises each one
against a real server, at the lowest and the newest redis-py the package allows.
"""

from __future__ import annotations

import asyncio
import functools
from typing import Any

import redis
from redis import exceptions as redis_errors
from redis.asyncio.connection import AbstractConnection, Connection

from aa_storage import StorageError

try:
    from redis._parsers import BaseParser

    _PARSE_ERROR: Any = BaseParser.parse_error
except (ImportError, AttributeError):  # checked by verify(), which says what is missing
    _PARSE_ERROR = None


class RedisPyChanged(StorageError):
    """The installed redis-py lacks a private name the driver relies on."""


def verify() -> None:
    """Raise :class:`RedisPyChanged` unless every private name used here exists."""
    _verified()


@functools.cache
def _verified() -> None:
    probe = Connection(host="127.0.0.1", port=6379)  # builds an object; opens nothing
    missing = [name for name in ("_reader", "_writer") if not hasattr(probe, name)]
    if not callable(getattr(probe, "_close", None)):
        missing.append("Connection._close()")
    if not callable(_PARSE_ERROR):
        missing.append("redis._parsers.BaseParser.parse_error")
    if missing:
        raise RedisPyChanged(
            f"redis-py {redis.__version__} lacks what aa-storage's Redis driver relies on "
            f"({', '.join(missing)}); install a redis-py version within the range "
            "aa-storage declares (pip install 'aa-storage' resolves one)"
        )


def take_stream(connection: AbstractConnection) -> asyncio.StreamWriter:
    """The open connection's stream writer (its transport), which the caller owns from
    now on: redis-py forgets it, so it neither reads from nor closes the socket."""
    writer = connection._writer
    if writer is None:
        raise redis_errors.ConnectionError("the connection is not open")
    connection._reader = connection._writer = None
    return writer


def stream_of(connection: AbstractConnection) -> asyncio.StreamReader:
    """The open connection's stream reader; the caller reads the replies from it."""
    stream = connection._reader
    if stream is None:
        raise redis_errors.ConnectionError("the connection is not open")
    return stream


def close_now(connection: AbstractConnection) -> None:
    """Close the connection's socket without waiting; does nothing once closed."""
    connection._close()  # type: ignore[no-untyped-call]


def error_reply(message: str) -> redis_errors.RedisError:
    """The redis-py exception for an error reply's text, e.g. ``MovedError`` for ``MOVED``."""
    error: redis_errors.RedisError = _PARSE_ERROR(message)
    return error

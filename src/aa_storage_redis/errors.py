"""Mapping redis-py exceptions onto the core errors, for the pool and the benchmark's raw client."""

from __future__ import annotations

import os
import re
import ssl

from redis import exceptions as redis_errors

from aa_storage import BackendError, SerializationError, StorageError
from aa_storage_redis.scripts import Script


def translate(
    exc: redis_errors.RedisError,
    *,
    server: str,
    secret: str | None,
    script: Script | None = None,
    key: bytes | None = None,
) -> StorageError:
    """The core error for ``exc``, with ``secret`` scrubbed from its message.

    ``server`` names the deployment (a redacted URL) so the message says
    where the failure happened, once. ``script`` (the script the command ran)
    and ``key`` (the key it touched) let a permission error name the grant
    that is missing.
    """
    if (
        isinstance(exc, redis_errors.TimeoutError)
        and str(exc).startswith("Timeout connecting to server")
        and server.startswith("rediss")
    ):
        return BackendError(
            f"redis at {server} did not answer in time: no TLS handshake; "
            "the server may not speak TLS (tls = true, or rediss://, against a plain port)"
        )
    message = str(exc)
    if secret:
        message = message.replace(secret, "***")
    if isinstance(exc, redis_errors.TimeoutError):
        return BackendError(f"redis at {server} did not answer in time: {message}")
    if isinstance(
        exc, redis_errors.AuthenticationError | redis_errors.AuthenticationWrongNumberOfArgsError
    ):
        if secret is None and _needs_password(message):
            return BackendError(
                f"redis at {server} needs a password, and the URL gives none "
                "(redis://user:password@host:port)"
            )
        return BackendError(f"redis at {server} refused the login: {message}")
    if isinstance(exc, redis_errors.BusyLoadingError):
        return BackendError(
            f"redis at {server} is still loading its data into memory (after a restart) "
            f"and ran nothing; it was asked again until connect_timeout + socket_timeout "
            f"ran out: {message}"
        )
    if isinstance(exc, redis_errors.ConnectionError):
        if "CERTIFICATE_VERIFY_FAILED" in message:
            return BackendError(f"TLS certificate verification failed for {server}: {message}")
        return BackendError(f"cannot reach redis at {server}: {_reason(exc, message)}")
    # A command a script calls and the ACL denies comes back as a plain error.
    if (
        isinstance(exc, redis_errors.NoPermissionError)
        or "NOPERM" in message
        or _SCRIPT_DENIED in message
    ):
        return BackendError(
            f"permission denied by redis at {server}: {_missing_grant(message, script, key)}"
        )
    if message.startswith("OOM") or "used memory > 'maxmemory'" in message:
        return BackendError(f"redis at {server} is out of memory and refused the write: {message}")
    if message.startswith("WRONGTYPE"):
        return SerializationError(f"key holds the wrong type of value: {message}")
    if "overflow" in message:
        return StorageError(f"counter would overflow past 2**63-1: {message}")
    if "not an integer" in message:
        return SerializationError(f"stored counter is not an integer: {message}")
    return BackendError(f"redis at {server} failed the call: {message}")


# The error prefixes redis-py strips from its messages, by the class it raises instead.
_PREFIXES = (
    (redis_errors.NoScriptError, "NOSCRIPT"),
    (redis_errors.ReadOnlyError, "READONLY"),
    (redis_errors.NoPermissionError, "NOPERM"),
    (redis_errors.ExecAbortError, "EXECABORT"),
    (redis_errors.OutOfMemoryError, "OOM"),
    (redis_errors.MovedError, "MOVED"),
    (redis_errors.AskError, "ASK"),
    (redis_errors.TryAgainError, "TRYAGAIN"),
    (redis_errors.ClusterDownError, "CLUSTERDOWN"),
    (redis_errors.BusyLoadingError, "LOADING"),
)


def status_code(exc: BaseException) -> str | None:
    """The prefix of the error reply behind ``exc`` (``WRONGTYPE``, ``NOPERM``...), or
    ``None`` when ``exc`` is no error reply (a lost connection, a timeout)."""
    for error_class, prefix in _PREFIXES:
        if isinstance(exc, error_class):
            return prefix
    if not isinstance(exc, redis_errors.ResponseError):
        return None
    # redis-py strips "ERR " and keeps any prefix it does not know ("WRONGTYPE ...").
    first = str(exc).partition(" ")[0]
    return first if first.isalpha() and first.isupper() else "ERR"


_SCRIPT_DENIED = "user executing the script can't run"
_COMMAND_DENIED = re.compile(r"permissions to run the '([^']+)' command")


def _missing_grant(message: str, script: Script | None, key: bytes | None) -> str:
    """What the ACL lacks, as the grant to add (``+time``, a key pattern), else the
    server's own words. Redis names neither the command a script was refused nor the key."""
    if _SCRIPT_DENIED in message and script is not None:
        commands = script.commands
        return (
            f"the user may run scripts, but not every command that the driver's "
            f"{script.name!r} script calls ({', '.join(commands)}); grant "
            f"{' '.join('+' + command.lower() for command in commands)}, as in the "
            "README's ACL rule"
        )
    if command := _COMMAND_DENIED.search(message):
        return f"the user may not run {command[1].upper()}; grant +{command[1]}"
    if "keys" in message or "a key" in message:
        where = f" {key.decode(errors='replace')!r}" if key is not None else ""
        return (
            f"the user may not access the key{where}; grant a key pattern that covers it: "
            "~<key_prefix>* for the stores and ~{<key_prefix>* for get_or_load's leases, "
            "as in the README's ACL rule"
        )
    return message


def _needs_password(message: str) -> bool:
    """Whether a refused login says the client must authenticate (NOAUTH, or HELLO's
    long way of saying it), rather than that the credentials are wrong."""
    return message.startswith(("Authentication required", "HELLO must be called"))


def _reason(exc: redis_errors.ConnectionError, message: str) -> str:
    """Why a connection failed, without the address redis-py repeats in its message."""
    error = exc.__context__
    if isinstance(error, OSError) and not isinstance(error, ssl.SSLError):
        if error.errno is not None and error.errno > 0:
            return os.strerror(error.errno)
        if error.strerror:
            return error.strerror
    return message

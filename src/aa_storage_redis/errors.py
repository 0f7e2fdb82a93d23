"""Mapping redis-py exceptions onto the core errors, for the pool and the benchmark's raw client."""

from __future__ import annotations

import os
import ssl

from redis import exceptions as redis_errors

from aa_storage import BackendError, SerializationError, StorageError


def translate(exc: redis_errors.RedisError, *, server: str, secret: str | None) -> StorageError:
    """The core error for ``exc``, with ``secret`` scrubbed from its message.

    ``server`` names the deployment (a redacted URL) so the message says
    where the failure happened, once.
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
    if isinstance(exc, redis_errors.ConnectionError):
        if "CERTIFICATE_VERIFY_FAILED" in message:
            return BackendError(f"TLS certificate verification failed for {server}: {message}")
        return BackendError(f"cannot reach redis at {server}: {_reason(exc, message)}")
    # A command a script calls and the ACL denies comes back as a plain error.
    if (
        isinstance(exc, redis_errors.NoPermissionError)
        or "NOPERM" in message
        or "user executing the script can't run" in message
    ):
        return BackendError(f"permission denied by redis at {server}: {message}")
    if message.startswith("OOM") or "used memory > 'maxmemory'" in message:
        return BackendError(f"redis at {server} is out of memory and refused the write: {message}")
    if message.startswith("WRONGTYPE"):
        return SerializationError(f"key holds the wrong type of value: {message}")
    if "overflow" in message:
        return StorageError(f"counter would overflow past 2**63-1: {message}")
    if "not an integer" in message:
        return SerializationError(f"stored counter is not an integer: {message}")
    return BackendError(f"redis at {server} failed the call: {message}")


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

"""Mapping redis-py exceptions onto the core errors. Only the pool calls this."""

from __future__ import annotations

from redis import exceptions as redis_errors

from aa_storage import BackendError, SerializationError, StorageError


def translate(exc: redis_errors.RedisError, *, server: str, secret: str | None) -> StorageError:
    """The core error for ``exc``, with ``secret`` scrubbed from its message.

    ``server`` names the deployment (a redacted URL) so the message says
    where the failure happened.
    """
    message = str(exc)
    if secret:
        message = message.replace(secret, "***")
    if isinstance(exc, redis_errors.TimeoutError):
        return BackendError(f"redis at {server} did not answer in time: {message}")
    if isinstance(
        exc, redis_errors.AuthenticationError | redis_errors.AuthenticationWrongNumberOfArgsError
    ):
        return BackendError(f"redis at {server} refused the login: {message}")
    if isinstance(exc, redis_errors.ConnectionError):
        if "CERTIFICATE_VERIFY_FAILED" in message:
            return BackendError(f"TLS certificate verification failed for {server}: {message}")
        return BackendError(f"cannot reach redis at {server}: {message}")
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

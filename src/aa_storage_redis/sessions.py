"""Session records as Redis hashes: ``<prefix>session:<hex32>``."""

from __future__ import annotations

import attrs

from aa_storage import (
    SESSION_TTL_SECS,
    AgentId,
    NotFoundError,
    SerializationError,
    SessionId,
    SessionRecord,
)
from aa_storage.validation import check_session_id, check_session_record
from aa_storage_redis.decoded import Decoded
from aa_storage_redis.executor import Executor
from aa_storage_redis.keys import KeySpace
from aa_storage_redis.scripts import SAVE_SESSION

_FIELDS = (b"agent_id", b"started_at_ns")
SessionReply = tuple[bytes, bytes | None, bytes | None]
"""A session's key, and the two fields HMGET read of it: what a record is decoded from."""


@attrs.frozen
class RedisSessionStore:
    """Sessions shared through Redis, each living ``SESSION_TTL_SECS`` after its last save.

    The hash holds ``agent_id`` (16 raw bytes) and ``started_at_ns`` (decimal
    ASCII), as the Rust driver writes them. Every method is one round trip.
    """

    executor: Executor
    keys: KeySpace = attrs.field(
        default=attrs.Factory(lambda self: KeySpace(self.executor.config.key_prefix), True)
    )
    """The key space; by default the one the executor's config names."""
    decoded: Decoded[SessionReply, SessionRecord] = attrs.field(factory=Decoded, repr=False)
    """The records last read (``decoded.py``), which the stores of a backend share."""

    async def save(self, record: SessionRecord) -> None:
        """Write the record and re-arm its TTL in one atomic step."""
        record = check_session_record(record)
        with self.executor.telemetry.operation("save"):
            await self.executor.run_script(
                SAVE_SESSION,
                [self.keys.session(record.session_id)],
                [record.agent_id.bytes, record.started_at_ns, SESSION_TTL_SECS],
                read=False,
            )

    async def load(self, session_id: SessionId) -> SessionRecord:
        """The stored record; ``NotFoundError`` when absent, ``SerializationError``
        when the hash is partial or its fields don't decode."""
        session_id = check_session_id(session_id)
        key = self.keys.session(session_id)
        with self.executor.telemetry.operation("load"):
            agent_id, started_at_ns = await self.executor.execute(
                "HMGET", key, *_FIELDS, key=key, read=True
            )
            return self.decoded.get(
                (key, agent_id, started_at_ns),
                lambda: _record(session_id, key, agent_id, started_at_ns),
            )

    async def delete(self, session_id: SessionId) -> None:
        """Drop the record; deleting an absent one is not an error."""
        key = self.keys.session(check_session_id(session_id))
        with self.executor.telemetry.operation("delete"):
            await self.executor.execute("DEL", key, key=key, read=False)


def _record(
    session_id: SessionId, key: bytes, agent_id: bytes | None, started_at_ns: bytes | None
) -> SessionRecord:
    """The record that HMGET's reply holds; see :meth:`RedisSessionStore.load`."""
    if agent_id is None and started_at_ns is None:
        raise NotFoundError(f"no session {session_id.hex}")
    if agent_id is None or started_at_ns is None:
        raise SerializationError(f"session hash {key!r} lacks a field of {_FIELDS}")
    if len(agent_id) != 16:
        raise SerializationError(
            f"session hash {key!r}: agent_id holds {len(agent_id)} bytes, not 16"
        )
    if not started_at_ns.isdigit() or len(started_at_ns) > 20:
        raise SerializationError(
            f"session hash {key!r}: started_at_ns {started_at_ns[:40]!r} is not a u64"
        )
    try:
        return SessionRecord(session_id, AgentId(agent_id), int(started_at_ns))
    except ValueError as exc:
        raise SerializationError(f"session hash {key!r}: {exc}") from None

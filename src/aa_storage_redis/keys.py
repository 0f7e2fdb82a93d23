"""Every Redis key the driver touches is built here, and only here.

The layout is the Rust driver's, so both can share one Redis:
``<prefix>session:<hex32>``, ``<prefix>ratelimit:<key>`` and
``<prefix>policy:<hex32>``, with ``aa:`` as the default prefix. Beside a
policy lives its ``get_or_load`` lease, ``{<prefix>policy:<hex32>}:lease``:
its hash tag is the policy key's full name, so a cluster puts both in one
slot and a script may touch both.
"""

from __future__ import annotations

import attrs
from redis.crc import key_slot

from aa_storage import AgentId, SessionId

DEFAULT_KEY_PREFIX = "aa:"


@attrs.frozen
class KeySpace:
    """Builds keys under one prefix.

    Every key starts with the prefix, so two prefixes of which neither begins
    with the other never share a key.
    """

    prefix: str = DEFAULT_KEY_PREFIX
    _session: bytes = attrs.field(init=False, repr=False)
    _ratelimit: bytes = attrs.field(init=False, repr=False)
    _policy: bytes = attrs.field(init=False, repr=False)
    _tagged: bool = attrs.field(init=False, repr=False)

    def __attrs_post_init__(self) -> None:
        encoded = self.prefix.encode()
        object.__setattr__(self, "_session", encoded + b"session:")
        object.__setattr__(self, "_ratelimit", encoded + b"ratelimit:")
        object.__setattr__(self, "_policy", encoded + b"policy:")
        object.__setattr__(self, "_tagged", _has_hash_tag(self._policy))

    def session(self, session_id: SessionId) -> bytes:
        """``<prefix>session:<hex32>``."""
        return self._session + session_id.hex.encode()

    def rate_limit(self, key: str) -> bytes:
        """``<prefix>ratelimit:<key>``; the key's UTF-8 bytes are used as they are."""
        return self._ratelimit + key.encode()

    @property
    def policy_prefix(self) -> bytes:
        """``<prefix>policy:``: what every policy key starts with."""
        return self._policy

    def policy(self, agent_id: AgentId) -> bytes:
        """``<prefix>policy:<hex32>``."""
        return self._policy + agent_id.hex.encode()

    def policy_lease(self, agent_id: AgentId) -> bytes:
        """``{<prefix>policy:<hex32>}:lease``, in the policy key's cluster slot.

        A prefix that holds a hash tag of its own (``{tenant}:``) already picks
        the slot, and wrapping the key in braces would pick another, so there
        the lease is ``<prefix>policy:<hex32>:lease``, under the same tag.
        """
        policy = self.policy(agent_id)
        return policy + b":lease" if self._tagged else b"{" + policy + b"}:lease"

    def policy_with_lease(self, agent_id: AgentId) -> list[bytes]:
        """The KEYS of every policy script: the policy key, then its lease (same slot)."""
        return [self.policy(agent_id), self.policy_lease(agent_id)]

    def agent_of_policy(self, key: bytes) -> bytes | None:
        """The 16 bytes of the agent whose policy ``key`` is, read back from the key;
        ``None`` for a key under the policy prefix that names no agent."""
        if not key.startswith(self._policy):
            return None
        try:
            agent = bytes.fromhex(key[len(self._policy) :].decode())
        except ValueError:
            return None
        return agent if len(agent) == 16 else None

    @property
    def leases_share_the_slot(self) -> bool:
        """Whether a cluster puts each lease in its policy's slot. Only a prefix with a
        ``}`` that closes no ``{tag}`` (``a}b:``, ``{}:``) keeps them apart."""
        sample = AgentId(bytes(16))
        return key_slot(self.policy(sample)) == key_slot(self.policy_lease(sample))


def _has_hash_tag(key: bytes) -> bool:
    """Whether a cluster hashes ``key`` by a ``{tag}`` in it rather than by all of it."""
    opening = key.find(b"{")
    return opening >= 0 and key.find(b"}", opening + 2) >= 0

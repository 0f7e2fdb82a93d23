"""Domain values shared by every store: ids, session records and policies."""

from __future__ import annotations

import enum
import os
import uuid
from collections.abc import Callable, Iterable
from typing import Self

import attrs


def _sixteen_bytes(instance: object, attribute: attrs.Attribute[bytes], value: object) -> None:
    if not isinstance(value, bytes):
        raise TypeError(f"{type(instance).__name__} takes 16 bytes, got {type(value).__name__}")
    if len(value) != 16:
        raise ValueError(f"{type(instance).__name__} takes 16 bytes, got {len(value)}")


@attrs.frozen(repr=False)
class _Id16:
    """Sixteen raw bytes that mirror ``uuid.UUID``."""

    bytes: bytes = attrs.field(validator=_sixteen_bytes)

    @property
    def hex(self) -> str:
        """The 32 lower-case hex characters used in storage keys."""
        return self.bytes.hex()

    @classmethod
    def from_hex(cls, text: str) -> Self:
        """Parse 32 hex characters (either case); anything else is a ``ValueError``."""
        if not isinstance(text, str):
            raise TypeError(f"{cls.__name__}.from_hex takes str, got {type(text).__name__}")
        if len(text) != 32:
            raise ValueError(f"{cls.__name__}.from_hex takes 32 hex characters, got {len(text)}")
        try:
            return cls(bytes.fromhex(text))
        except ValueError:
            raise ValueError(f"{cls.__name__}.from_hex: {text!r} is not hex") from None

    @classmethod
    def from_uuid(cls, value: uuid.UUID) -> Self:
        """Take the 16 bytes of a ``uuid.UUID``."""
        if not isinstance(value, uuid.UUID):
            raise TypeError(f"{cls.__name__}.from_uuid takes uuid.UUID, got {type(value).__name__}")
        return cls(value.bytes)

    @classmethod
    def new(cls) -> Self:
        """A fresh random id (a version-4 UUID)."""
        return cls(uuid.UUID(bytes=os.urandom(16), version=4).bytes)

    def to_uuid(self) -> uuid.UUID:
        """The same 16 bytes as a ``uuid.UUID``."""
        return uuid.UUID(bytes=self.bytes)

    def __str__(self) -> str:
        return self.hex

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.hex!r})"


@attrs.frozen(repr=False)
class AgentId(_Id16):
    """The id of an agent: 16 raw bytes, written as 32 hex characters in keys."""


@attrs.frozen(repr=False)
class SessionId(_Id16):
    """The id of a session: 16 raw bytes, written as 32 hex characters in keys."""


def _unsigned(bits: int) -> Callable[[object, attrs.Attribute[int], object], None]:
    """A validator of ints in [0, 2**bits-1], the range of a Rust ``u<bits>``."""
    largest = 2**bits - 1

    def check(instance: object, attribute: attrs.Attribute[int], value: object) -> None:
        if not isinstance(value, int) or isinstance(value, bool):
            raise TypeError(f"{attribute.name} must be an int, got {type(value).__name__}")
        if not 0 <= value <= largest:
            raise ValueError(f"{attribute.name} must lie in [0, 2**{bits}-1], got {value}")

    return check


@attrs.frozen
class SessionRecord:
    """One agent session, as the session store keeps it."""

    session_id: SessionId = attrs.field(validator=attrs.validators.instance_of(SessionId))
    agent_id: AgentId = attrs.field(validator=attrs.validators.instance_of(AgentId))
    started_at_ns: int = attrs.field(validator=_unsigned(64))


class PolicyDecision(enum.Enum):
    """What a rule decides; the values are the Rust serde spellings."""

    ALLOW = "Allow"
    DENY = "Deny"
    REQUIRE_APPROVAL = "RequireApproval"


class EnforcementMode(enum.Enum):
    """How a policy is applied; the values are the Rust serde spellings."""

    ENFORCE = "enforce"
    OBSERVE = "observe"
    DISABLED = "disabled"


def _text(instance: object, attribute: attrs.Attribute[str], value: object) -> None:
    if not isinstance(value, str):
        raise TypeError(f"{attribute.name} must be a str, got {type(value).__name__}")
    try:
        value.encode()
    except UnicodeEncodeError:
        # Such text has no JSON encoding that serde_json would read back.
        raise ValueError(f"{attribute.name} holds a lone surrogate: {value!r}") from None


@attrs.frozen
class PolicyRule:
    """An action pattern (e.g. ``tool:*``) and the decision for matching actions."""

    action_pattern: str = attrs.field(validator=_text)
    decision: PolicyDecision = attrs.field(validator=attrs.validators.instance_of(PolicyDecision))


def _to_rules(rules: Iterable[PolicyRule]) -> tuple[PolicyRule, ...]:
    if isinstance(rules, str | bytes) or not isinstance(rules, Iterable):
        raise TypeError(f"rules must be a sequence of PolicyRule, got {type(rules).__name__}")
    converted = tuple(rules)
    for rule in converted:
        if not isinstance(rule, PolicyRule):
            raise TypeError(f"rules must hold PolicyRule, got {type(rule).__name__}")
    return converted


@attrs.frozen
class PolicyDocument:
    """An agent's policy: a versioned, named, ordered list of rules."""

    version: int = attrs.field(validator=_unsigned(32))
    name: str = attrs.field(validator=_text)
    rules: tuple[PolicyRule, ...] = attrs.field(converter=_to_rules)
    enforcement_mode: EnforcementMode = attrs.field(
        default=EnforcementMode.ENFORCE,
        validator=attrs.validators.instance_of(EnforcementMode),
    )

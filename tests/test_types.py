"""Unit tests of the domain values: ids, session records and policy documents."""

from __future__ import annotations

import uuid
from typing import Any

import attrs
import pytest

from aa_storage import (
    AgentId,
    EnforcementMode,
    PolicyDecision,
    PolicyDocument,
    PolicyRule,
    SessionId,
    SessionRecord,
)

RAW = bytes(range(16))
RAW_HEX = "000102030405060708090a0b0c0d0e0f"
U64_MAX = 2**64 - 1
U32_MAX = 2**32 - 1
ID_CLASSES = [AgentId, SessionId]


@pytest.mark.parametrize("cls", ID_CLASSES)
class TestIds:
    def test_holds_its_sixteen_bytes(self, cls: type[AgentId]) -> None:
        """An id built from 16 bytes keeps exactly those bytes."""
        assert cls(RAW).bytes == RAW

    def test_hex_is_32_lower_case_characters(self, cls: type[AgentId]) -> None:
        """`.hex` is the 32 lower-case hex characters of the bytes, and str() is the same."""
        ident = cls(bytes.fromhex("DEADBEEF" * 4))
        assert ident.hex == "deadbeef" * 4
        assert str(ident) == "deadbeef" * 4

    def test_repr_names_the_class_and_hex(self, cls: type[AgentId]) -> None:
        """repr() shows the class name and the hex text."""
        assert repr(cls(RAW)) == f"{cls.__name__}('{RAW_HEX}')"

    def test_from_hex_round_trips(self, cls: type[AgentId]) -> None:
        """from_hex of `.hex` gives an equal id."""
        assert cls.from_hex(RAW_HEX) == cls(RAW)

    def test_from_hex_accepts_upper_case(self, cls: type[AgentId]) -> None:
        """from_hex accepts upper-case hex digits."""
        assert cls.from_hex(RAW_HEX.upper()) == cls(RAW)

    @pytest.mark.parametrize("length", [0, 31, 33, 36])
    def test_from_hex_of_wrong_length_is_value_error(self, cls: type[AgentId], length: int) -> None:
        """from_hex of text that is not 32 characters long is a ValueError naming the length."""
        with pytest.raises(ValueError, match="takes 32 hex characters") as info:
            cls.from_hex("a" * length)
        assert str(info.value) == (f"{cls.__name__}.from_hex takes 32 hex characters, got {length}")

    @pytest.mark.parametrize(
        "text", ["zz" * 16, "0" * 31 + "g", "-" * 32, "0" * 30 + " 1", "\u0660" * 32]
    )
    def test_from_hex_of_non_hex_is_value_error(self, cls: type[AgentId], text: str) -> None:
        """from_hex of 32 characters that are not all hex digits is a ValueError."""
        with pytest.raises(ValueError, match="is not hex") as info:
            cls.from_hex(text)
        assert str(info.value) == f"{cls.__name__}.from_hex: {text!r} is not hex"

    @pytest.mark.parametrize("value", [RAW_HEX.encode(), 7, None, uuid.UUID(int=0)])
    def test_from_hex_of_non_str_is_type_error(self, cls: type[AgentId], value: Any) -> None:
        """from_hex of anything but a str is a TypeError naming the type."""
        with pytest.raises(TypeError) as info:
            cls.from_hex(value)
        assert str(info.value) == (f"{cls.__name__}.from_hex takes str, got {type(value).__name__}")

    def test_from_uuid_takes_the_uuid_bytes(self, cls: type[AgentId]) -> None:
        """from_uuid keeps the UUID's 16 bytes, and to_uuid gives the UUID back."""
        value = uuid.UUID("12345678-1234-5678-1234-567812345678")
        ident = cls.from_uuid(value)
        assert ident.bytes == value.bytes
        assert ident.to_uuid() == value

    def test_from_uuid_of_a_str_is_type_error(self, cls: type[AgentId]) -> None:
        """from_uuid of a UUID's text (not a uuid.UUID) is a TypeError."""
        with pytest.raises(TypeError) as info:
            cls.from_uuid(str(uuid.uuid4()))  # type: ignore[arg-type]
        assert str(info.value) == f"{cls.__name__}.from_uuid takes uuid.UUID, got str"

    def test_new_is_a_version_4_uuid(self, cls: type[AgentId]) -> None:
        """new() gives a version-4, RFC 4122 variant UUID's bytes."""
        as_uuid = cls.new().to_uuid()
        assert as_uuid.version == 4
        assert as_uuid.variant == uuid.RFC_4122

    def test_new_is_random(self, cls: type[AgentId]) -> None:
        """100 calls to new() give 100 different ids."""
        assert len({cls.new() for _ in range(100)}) == 100

    @pytest.mark.parametrize("length", [0, 15, 17])
    def test_wrong_number_of_bytes_is_value_error(self, cls: type[AgentId], length: int) -> None:
        """Building an id from other than 16 bytes is a ValueError naming the length."""
        with pytest.raises(ValueError, match="takes 16 bytes") as info:
            cls(bytes(length))
        assert str(info.value) == f"{cls.__name__} takes 16 bytes, got {length}"

    @pytest.mark.parametrize(
        ("value", "type_name"),
        [(RAW_HEX, "str"), (bytearray(16), "bytearray"), (16, "int"), (None, "NoneType")],
    )
    def test_non_bytes_is_type_error(self, cls: type[AgentId], value: Any, type_name: str) -> None:
        """Building an id from anything but bytes is a TypeError naming the type."""
        with pytest.raises(TypeError) as info:
            cls(value)
        assert str(info.value) == f"{cls.__name__} takes 16 bytes, got {type_name}"

    def test_is_frozen(self, cls: type[AgentId]) -> None:
        """Assigning to an id's bytes raises FrozenInstanceError."""
        ident = cls(RAW)
        with pytest.raises(attrs.exceptions.FrozenInstanceError):
            ident.bytes = bytes(16)  # type: ignore[misc]


class TestIdKinds:
    def test_agent_and_session_ids_with_the_same_bytes_differ(self) -> None:
        """An AgentId never equals a SessionId, even with the same bytes."""
        assert AgentId(RAW) != SessionId(RAW)  # type: ignore[comparison-overlap]
        assert SessionId(RAW) != AgentId(RAW)  # type: ignore[comparison-overlap]

    def test_ids_of_both_kinds_are_kept_apart_in_a_set(self) -> None:
        """A set holds an AgentId and a SessionId of the same bytes as two members."""
        assert len({AgentId(RAW), SessionId(RAW), AgentId(RAW)}) == 2

    def test_from_hex_builds_the_class_it_is_called_on(self) -> None:
        """SessionId.from_hex gives a SessionId and AgentId.from_hex an AgentId."""
        assert type(SessionId.from_hex(RAW_HEX)) is SessionId
        assert type(AgentId.from_hex(RAW_HEX)) is AgentId


class TestSessionRecord:
    @pytest.mark.parametrize("started_at_ns", [0, 1, U64_MAX])
    def test_accepts_u64_timestamps(self, started_at_ns: int) -> None:
        """started_at_ns may be any value in [0, 2**64-1], both ends included."""
        record = SessionRecord(SessionId(RAW), AgentId(RAW), started_at_ns)
        assert record.started_at_ns == started_at_ns

    @pytest.mark.parametrize("started_at_ns", [-1, U64_MAX + 1])
    def test_out_of_range_timestamp_is_value_error(self, started_at_ns: int) -> None:
        """A timestamp outside [0, 2**64-1] is a ValueError naming the field and value."""
        with pytest.raises(ValueError, match="must lie in") as info:
            SessionRecord(SessionId(RAW), AgentId(RAW), started_at_ns)
        assert str(info.value) == (f"started_at_ns must lie in [0, 2**64-1], got {started_at_ns}")

    @pytest.mark.parametrize(
        ("started_at_ns", "type_name"), [(True, "bool"), (1.0, "float"), ("1", "str")]
    )
    def test_non_int_timestamp_is_type_error(self, started_at_ns: Any, type_name: str) -> None:
        """A bool, float or str timestamp is a TypeError naming the type."""
        with pytest.raises(TypeError) as info:
            SessionRecord(SessionId(RAW), AgentId(RAW), started_at_ns)
        assert str(info.value) == f"started_at_ns must be an int, got {type_name}"

    def test_ids_must_be_of_the_right_kind(self) -> None:
        """A SessionRecord rejects an AgentId as its session id and a SessionId as its agent id."""
        with pytest.raises(TypeError, match="session_id"):
            SessionRecord(AgentId(RAW), AgentId(RAW), 1)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="agent_id"):
            SessionRecord(SessionId(RAW), SessionId(RAW), 1)  # type: ignore[arg-type]

    def test_is_frozen(self) -> None:
        """Assigning to a session record's field raises FrozenInstanceError."""
        record = SessionRecord(SessionId(RAW), AgentId(RAW), 1)
        with pytest.raises(attrs.exceptions.FrozenInstanceError):
            record.started_at_ns = 2  # type: ignore[misc]


class TestPolicyRule:
    def test_holds_pattern_and_decision(self) -> None:
        """A rule keeps its pattern and decision."""
        rule = PolicyRule("tool:*", PolicyDecision.DENY)
        assert (rule.action_pattern, rule.decision) == ("tool:*", PolicyDecision.DENY)

    def test_non_str_pattern_is_type_error(self) -> None:
        """A pattern that is not a str is a TypeError naming the field."""
        with pytest.raises(TypeError) as info:
            PolicyRule(b"tool:*", PolicyDecision.ALLOW)  # type: ignore[arg-type]
        assert str(info.value) == "action_pattern must be a str, got bytes"

    def test_decision_spelling_is_not_a_decision(self) -> None:
        """The serde spelling "Allow" is not accepted where a PolicyDecision belongs."""
        with pytest.raises(TypeError, match="decision"):
            PolicyRule("tool:*", "Allow")  # type: ignore[arg-type]

    def test_is_frozen(self) -> None:
        """Assigning to a rule's field raises FrozenInstanceError."""
        rule = PolicyRule("tool:*", PolicyDecision.ALLOW)
        with pytest.raises(attrs.exceptions.FrozenInstanceError):
            rule.decision = PolicyDecision.DENY  # type: ignore[misc]


class TestPolicyDocument:
    def test_enforcement_mode_defaults_to_enforce(self) -> None:
        """A document built without a mode enforces."""
        assert PolicyDocument(1, "p", []).enforcement_mode is EnforcementMode.ENFORCE

    def test_rules_become_a_tuple_in_order(self) -> None:
        """Rules given as any iterable are kept as a tuple, in order."""
        rules = [PolicyRule("a", PolicyDecision.ALLOW), PolicyRule("b", PolicyDecision.DENY)]
        document = PolicyDocument(1, "p", iter(rules))
        assert document.rules == tuple(rules)

    def test_documents_with_equal_fields_are_equal(self) -> None:
        """Two documents whose rules came as a list and as a tuple are equal."""
        rule = PolicyRule("a", PolicyDecision.ALLOW)
        assert PolicyDocument(1, "p", [rule]) == PolicyDocument(1, "p", (rule,))

    @pytest.mark.parametrize("version", [0, U32_MAX])
    def test_version_accepts_u32_bounds(self, version: int) -> None:
        """version may be 0 or 2**32-1, the bounds of aa-core's u32."""
        assert PolicyDocument(version, "p", []).version == version

    @pytest.mark.parametrize("version", [-1, U32_MAX + 1, U64_MAX])
    def test_version_out_of_range_is_value_error(self, version: int) -> None:
        """A version outside [0, 2**32-1] is a ValueError naming the field and the bound."""
        with pytest.raises(ValueError, match="must lie in") as info:
            PolicyDocument(version, "p", [])
        assert str(info.value) == f"version must lie in [0, 2**32-1], got {version}"

    @pytest.mark.parametrize(
        ("version", "type_name"), [(True, "bool"), (1.0, "float"), ("1", "str")]
    )
    def test_version_of_wrong_type_is_type_error(self, version: Any, type_name: str) -> None:
        """A bool or float version is a TypeError."""
        with pytest.raises(TypeError) as info:
            PolicyDocument(version, "p", [])
        assert str(info.value) == f"version must be an int, got {type_name}"

    def test_non_str_name_is_type_error(self) -> None:
        """A name that is not a str is a TypeError naming the field."""
        with pytest.raises(TypeError) as info:
            PolicyDocument(1, None, [])  # type: ignore[arg-type]
        assert str(info.value) == "name must be a str, got NoneType"

    @pytest.mark.parametrize(
        ("rules", "type_name"), [("rules", "str"), (b"rules", "bytes"), (3, "int")]
    )
    def test_rules_that_are_not_a_sequence_are_type_error(self, rules: Any, type_name: str) -> None:
        """Rules given as a str, bytes or non-iterable are a TypeError."""
        with pytest.raises(TypeError) as info:
            PolicyDocument(1, "p", rules)
        assert str(info.value) == f"rules must be a sequence of PolicyRule, got {type_name}"

    def test_rules_holding_a_non_rule_are_type_error(self) -> None:
        """A rule given as a dict (not a PolicyRule) is a TypeError naming the type."""
        with pytest.raises(TypeError) as info:
            PolicyDocument(1, "p", [{"action_pattern": "a", "decision": "Allow"}])  # type: ignore[list-item]
        assert str(info.value) == "rules must hold PolicyRule, got dict"

    def test_mode_spelling_is_not_a_mode(self) -> None:
        """The serde spelling "observe" is not accepted where an EnforcementMode belongs."""
        with pytest.raises(TypeError, match="enforcement_mode"):
            PolicyDocument(1, "p", [], "observe")  # type: ignore[arg-type]

    @pytest.mark.parametrize(
        ("field", "value"),
        [
            ("version", 2),
            ("name", "q"),
            ("rules", ()),
            ("enforcement_mode", EnforcementMode.OBSERVE),
        ],
    )
    def test_is_frozen(self, field: str, value: object) -> None:
        """Assigning to any field of a document raises FrozenInstanceError."""
        document = PolicyDocument(1, "p", [PolicyRule("a", PolicyDecision.ALLOW)])
        with pytest.raises(attrs.exceptions.FrozenInstanceError):
            setattr(document, field, value)

    def test_name_that_is_not_valid_unicode_is_value_error(self) -> None:
        """A name holding a lone surrogate (not encodable as UTF-8) is a ValueError."""
        with pytest.raises(ValueError, match="name"):
            PolicyDocument(1, "bad \ud800", [])

    def test_pattern_that_is_not_valid_unicode_is_value_error(self) -> None:
        """An action pattern holding a lone surrogate (not encodable as UTF-8) is a ValueError."""
        with pytest.raises(ValueError, match="action_pattern"):
            PolicyRule("bad \udfff", PolicyDecision.ALLOW)

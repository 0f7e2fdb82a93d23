"""Unit tests of the policy JSON codec, which must match Rust's serde_json byte for byte."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aa_storage import (
    EnforcementMode,
    PolicyDecision,
    PolicyDocument,
    PolicyRule,
    SerializationError,
    policy_from_json,
    policy_to_json,
)

GOLDEN = (
    b'{"version":1,"name":"default","rules":[{"action_pattern":"tool:*","decision":"Allow"}],'
    b'"enforcement_mode":"enforce"}'
)
GOLDEN_POLICY = PolicyDocument(1, "default", [PolicyRule("tool:*", PolicyDecision.ALLOW)])
WRONG_SHAPE = "stored policy has the wrong shape: "


def _document(**fields: Any) -> bytes:
    """A stored policy with the golden fields, some replaced or (with ...) removed."""
    document: dict[str, Any] = {
        "version": 1,
        "name": "default",
        "rules": [{"action_pattern": "tool:*", "decision": "Allow"}],
        "enforcement_mode": "enforce",
    }
    document.update(fields)
    return json.dumps({k: v for k, v in document.items() if v is not ...}).encode()


def _decode_error(data: bytes | str) -> str:
    with pytest.raises(SerializationError) as info:
        policy_from_json(data)
    return str(info.value)


class TestEncode:
    def test_golden_document(self) -> None:
        """The default policy encodes to exactly the bytes serde_json writes."""
        assert policy_to_json(GOLDEN_POLICY) == GOLDEN

    @pytest.mark.parametrize(
        ("decision", "spelling"),
        [
            (PolicyDecision.ALLOW, "Allow"),
            (PolicyDecision.DENY, "Deny"),
            (PolicyDecision.REQUIRE_APPROVAL, "RequireApproval"),
        ],
    )
    def test_each_decision_is_written_in_serde_spelling(
        self, decision: PolicyDecision, spelling: str
    ) -> None:
        """Each decision is written with its Rust variant name."""
        policy = PolicyDocument(1, "default", [PolicyRule("tool:*", decision)])
        assert policy_to_json(policy) == GOLDEN.replace(b'"Allow"', f'"{spelling}"'.encode())

    @pytest.mark.parametrize(
        ("mode", "spelling"),
        [
            (EnforcementMode.ENFORCE, "enforce"),
            (EnforcementMode.OBSERVE, "observe"),
            (EnforcementMode.DISABLED, "disabled"),
        ],
    )
    def test_each_mode_is_written_in_serde_spelling(
        self, mode: EnforcementMode, spelling: str
    ) -> None:
        """Each enforcement mode is written in lower case, as serde renames it."""
        policy = PolicyDocument(
            1, "default", [PolicyRule("tool:*", PolicyDecision.ALLOW)], enforcement_mode=mode
        )
        expected = GOLDEN.replace(b'"enforce"}', f'"{spelling}"}}'.encode())
        assert policy_to_json(policy) == expected

    def test_no_rules_is_an_empty_list(self) -> None:
        """A document without rules writes an empty JSON list."""
        policy = PolicyDocument(0, "", [])
        assert policy_to_json(policy) == (
            b'{"version":0,"name":"","rules":[],"enforcement_mode":"enforce"}'
        )

    def test_largest_version_is_written_as_an_integer(self) -> None:
        """Version 2**64-1 is written as its exact decimal integer."""
        policy = PolicyDocument(2**64 - 1, "p", [])
        assert policy_to_json(policy).startswith(b'{"version":18446744073709551615,')

    def test_non_ascii_is_written_raw_as_utf8(self) -> None:
        """Non-ASCII text is written as raw UTF-8, never as \\u escapes."""
        policy = PolicyDocument(
            1, "r\u00e8gles \U0001f512", [PolicyRule("\u2028", PolicyDecision.DENY)]
        )
        assert policy_to_json(policy) == (
            b'{"version":1,"name":"r\xc3\xa8gles \xf0\x9f\x94\x92","rules":'
            b'[{"action_pattern":"\xe2\x80\xa8","decision":"Deny"}],"enforcement_mode":"enforce"}'
        )

    @pytest.mark.parametrize(
        ("text", "escaped"),
        [
            ("a\nb", b"a\\nb"),
            ("\x01", b"\\u0001"),
            ("\x1f", b"\\u001f"),
            ("\t\r\x08\x0c", b"\\t\\r\\b\\f"),
            ('"quoted"', b'\\"quoted\\"'),
            ("back\\slash", b"back\\\\slash"),
            ("a/b", b"a/b"),
            ("\x7f", b"\x7f"),
        ],
    )
    def test_special_characters_are_escaped_like_serde_json(
        self, text: str, escaped: bytes
    ) -> None:
        """Controls, quotes and backslashes are escaped as serde_json does; / and DEL are not."""
        encoded = policy_to_json(PolicyDocument(1, text, []))
        assert (
            encoded
            == b'{"version":1,"name":"' + escaped + b'","rules":[],"enforcement_mode":"enforce"}'
        )

    def test_non_policy_is_type_error(self) -> None:
        """Encoding anything but a PolicyDocument is a TypeError naming the type."""
        with pytest.raises(TypeError) as info:
            policy_to_json({"version": 1})  # type: ignore[arg-type]
        assert str(info.value) == "expected PolicyDocument, got dict"


class TestDecode:
    @pytest.mark.parametrize("data", [GOLDEN, GOLDEN.decode()])
    def test_golden_document(self, data: bytes | str) -> None:
        """The golden bytes (or the same text as str) decode to the default policy."""
        assert policy_from_json(data) == GOLDEN_POLICY

    @pytest.mark.parametrize("decision", list(PolicyDecision))
    def test_each_decision_spelling_decodes(self, decision: PolicyDecision) -> None:
        """Each Rust decision spelling decodes to its PolicyDecision."""
        data = _document(rules=[{"action_pattern": "x", "decision": decision.value}])
        assert policy_from_json(data).rules == (PolicyRule("x", decision),)

    @pytest.mark.parametrize("mode", list(EnforcementMode))
    def test_each_mode_spelling_decodes(self, mode: EnforcementMode) -> None:
        """Each Rust mode spelling decodes to its EnforcementMode."""
        assert policy_from_json(_document(enforcement_mode=mode.value)).enforcement_mode is mode

    def test_missing_mode_means_enforce(self) -> None:
        """A document without enforcement_mode (an older writer) enforces."""
        data = b'{"version":1,"name":"default","rules":[]}'
        assert policy_from_json(data) == PolicyDocument(1, "default", [], EnforcementMode.ENFORCE)

    def test_unknown_fields_are_ignored(self) -> None:
        """Unknown fields at the top level and inside rules are ignored, as serde does."""
        data = (
            b'{"version":1,"extra":{"x":[1]},"name":"default","rules":[{"action_pattern":"tool:*",'
            b'"decision":"Allow","comment":"hi"}],"enforcement_mode":"enforce","v2":true}'
        )
        assert policy_from_json(data) == GOLDEN_POLICY

    def test_escapes_and_utf8_decode(self) -> None:
        """Escaped control characters and raw UTF-8 decode to the original text."""
        data = b'{"version":1,"name":"a\\nb\\u0001\xc3\xa9","rules":[]}'
        assert policy_from_json(data).name == "a\nb\x01\u00e9"

    def test_not_json(self) -> None:
        """Bytes that are not JSON are a SerializationError saying so."""
        assert _decode_error(b"nope") == (
            "stored policy is not valid JSON: Expecting value: line 1 column 1 (char 0)"
        )

    def test_not_utf8(self) -> None:
        """Bytes that are not UTF-8 are a SerializationError, not a UnicodeDecodeError."""
        assert _decode_error(b'{"name":"\xff"}').startswith("stored policy is not valid JSON: ")

    @pytest.mark.parametrize(
        ("data", "type_name"), [(b"[1]", "list"), (b'"x"', "str"), (b"null", "NoneType")]
    )
    def test_not_an_object(self, data: bytes, type_name: str) -> None:
        """JSON that is not an object is a SerializationError naming what it is."""
        assert _decode_error(data) == f"stored policy must be a JSON object, got {type_name}"

    @pytest.mark.parametrize(
        ("version", "problem"),
        [
            ("1", "policy.version: expected int, got str"),
            (True, "policy.version: expected int, got bool"),
            (1.0, "policy.version: expected int, got float"),
            (-1, "policy: version must lie in [0, 2**64-1], got -1"),
            (2**64, "policy: version must lie in [0, 2**64-1], got 18446744073709551616"),
        ],
    )
    def test_bad_version(self, version: object, problem: str) -> None:
        """A version that is not a u64 integer is a SerializationError naming the problem."""
        assert _decode_error(_document(version=version)) == WRONG_SHAPE + problem

    def test_unknown_decision_spelling(self) -> None:
        """A decision spelled other than serde does ("allow") is rejected with the choices."""
        data = _document(rules=[{"action_pattern": "tool:*", "decision": "allow"}])
        assert _decode_error(data) == (
            WRONG_SHAPE
            + "policy.rules[0].decision: 'allow' is not one of 'Allow', 'Deny', 'RequireApproval'"
        )

    def test_unknown_mode_spelling(self) -> None:
        """A mode spelled "Enforce" is rejected with the choices."""
        assert _decode_error(_document(enforcement_mode="Enforce")) == (
            WRONG_SHAPE
            + "policy.enforcement_mode: 'Enforce' is not one of 'enforce', 'observe', 'disabled'"
        )

    def test_rules_not_a_list(self) -> None:
        """Rules given as a number are a SerializationError naming policy.rules."""
        assert _decode_error(_document(rules=3)) == (
            WRONG_SHAPE + "policy.rules: expected a list of rules, got int"
        )

    @pytest.mark.parametrize("rules", [{}, ""], ids=["object", "string"])
    def test_rules_as_empty_object_or_string(self, rules: object) -> None:
        """Rules given as an empty object or string are rejected, as serde_json rejects them."""
        assert _decode_error(_document(rules=rules)).startswith(WRONG_SHAPE + "policy.rules")

    def test_each_bad_rule_is_named_by_index(self) -> None:
        """Every bad rule is reported with its index and field, in one message."""
        data = _document(rules=[{"action_pattern": 1, "decision": "Allow"}, {"decision": "Deny"}])
        assert _decode_error(data) == (
            WRONG_SHAPE
            + "policy.rules[0].action_pattern: expected str, got int; "
            + "policy.rules[1].action_pattern: required key missing"
        )

    def test_missing_name(self) -> None:
        """A document without a name is a SerializationError naming policy.name."""
        assert (
            _decode_error(_document(name=...)) == WRONG_SHAPE + "policy.name: required key missing"
        )

    def test_null_name(self) -> None:
        """A null name is a SerializationError naming the type found."""
        assert _decode_error(_document(name=None)) == (
            WRONG_SHAPE + "policy.name: expected str, got NoneType"
        )


_text = st.text(max_size=20)
_rules = st.lists(
    st.builds(PolicyRule, action_pattern=_text, decision=st.sampled_from(PolicyDecision)),
    max_size=5,
)
_plain_text = st.text(
    alphabet=st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters='"\\'),
    max_size=20,
)
_policies = st.builds(
    PolicyDocument,
    version=st.integers(min_value=0, max_value=2**64 - 1),
    name=_text,
    rules=_rules,
    enforcement_mode=st.sampled_from(EnforcementMode),
)


class TestRoundTrip:
    @settings(max_examples=200, deadline=None)
    @given(policy=_policies)
    def test_any_policy_round_trips(self, policy: PolicyDocument) -> None:
        """Decoding the encoding of any policy gives an equal policy."""
        assert policy_from_json(policy_to_json(policy)) == policy

    @settings(max_examples=200, deadline=None)
    @given(policy=_policies)
    def test_encoding_is_the_unstructured_document(self, policy: PolicyDocument) -> None:
        """The encoding parses to the document's fields, in declaration order, as plain JSON."""
        parsed = json.loads(policy_to_json(policy))
        assert parsed == {
            "version": policy.version,
            "name": policy.name,
            "rules": [
                {"action_pattern": rule.action_pattern, "decision": rule.decision.value}
                for rule in policy.rules
            ],
            "enforcement_mode": policy.enforcement_mode.value,
        }
        assert list(parsed) == ["version", "name", "rules", "enforcement_mode"]

    @settings(max_examples=100, deadline=None)
    @given(name=_plain_text)
    def test_plain_text_is_written_verbatim(self, name: str) -> None:
        """Text without control characters, quotes or backslashes appears as its raw UTF-8 bytes."""
        encoded = policy_to_json(PolicyDocument(1, name, []))
        assert encoded == b'{"version":1,"name":"' + name.encode() + b'","rules":[],' + (
            b'"enforcement_mode":"enforce"}'
        )

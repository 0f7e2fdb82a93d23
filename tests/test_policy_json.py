"""Unit tests of the policy JSON codec, which must match Rust's serde_json byte for byte."""

from __future__ import annotations

import contextlib
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
from aa_storage._policy_json import _read_as_written
from serde_verdicts import case_bytes, load_verdicts

GOLDEN = (
    b'{"version":1,"name":"default","rules":[{"action_pattern":"tool:*","decision":"Allow"}],'
    b'"enforcement_mode":"enforce"}'
)
GOLDEN_POLICY = PolicyDocument(1, "default", [PolicyRule("tool:*", PolicyDecision.ALLOW)])
INVALID_AT = "stored policy is invalid at "


def _document(**fields: Any) -> bytes:
    """A stored policy with the golden fields, some replaced or (with ...) removed."""
    document: dict[str, Any] = {
        "version": 1,
        "name": "default",
        "rules": [{"action_pattern": "tool:*", "decision": "Allow"}],
        "enforcement_mode": "enforce",
    }
    document.update(fields)
    return json.dumps(
        {k: v for k, v in document.items() if v is not ...}, separators=(",", ":")
    ).encode()


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
        """Version 2**32-1, the largest u32, is written as its exact decimal integer."""
        policy = PolicyDocument(2**32 - 1, "p", [])
        assert policy_to_json(policy).startswith(b'{"version":4294967295,')

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
        """Bytes that are not JSON are a SerializationError naming the byte offset."""
        assert _decode_error(b"nope") == (
            "stored policy is invalid at policy (byte 0): expected a JSON object"
        )

    def test_not_utf8(self) -> None:
        """A name that is not UTF-8 is a SerializationError, not a UnicodeDecodeError."""
        assert _decode_error(b'{"version":1,"name":"\xff","rules":[]}') == (
            "stored policy is invalid at policy.name (byte 23): "
            "the string is not valid Unicode (bad UTF-8 or a lone surrogate)"
        )

    def test_str_with_lone_surrogate(self) -> None:
        """A str holding a lone surrogate (it has no UTF-8) is a SerializationError."""
        assert _decode_error(GOLDEN.decode().replace("default", "\ud800")) == (
            "stored policy is not valid Unicode text"
        )

    @pytest.mark.parametrize("data", [b"[1]", b'"x"', b"null"])
    def test_not_a_document(self, data: bytes) -> None:
        """JSON that is neither an object nor an array of the fields is a SerializationError."""
        assert _decode_error(data).startswith("stored policy is invalid at policy")

    @pytest.mark.parametrize(
        ("version", "problem"),
        [
            ("1", "policy.version (byte 11): expected an integer in [0, 2**32-1]"),
            (True, "policy.version (byte 11): expected an integer in [0, 2**32-1]"),
            (1.0, "policy.version (byte 11): expected an integer in [0, 2**32-1]"),
            (-1, "policy.version (byte 11): expected an integer in [0, 2**32-1]"),
            (
                2**32,
                "policy.version (byte 21): "
                "4294967296 is out of range for a u32 (at most 4294967295)",
            ),
        ],
    )
    def test_bad_version(self, version: object, problem: str) -> None:
        """A version that is not a u32 integer is a SerializationError naming field and bound."""
        assert _decode_error(_document(version=version)) == INVALID_AT + problem

    def test_unknown_decision_spelling(self) -> None:
        """A decision spelled other than serde does ("allow") is rejected with the choices."""
        data = _document(rules=[{"action_pattern": "tool:*", "decision": "allow"}])
        assert _decode_error(data) == (
            INVALID_AT + "policy.rules[0].decision (byte 84): "
            "unknown variant 'allow', expected one of 'Allow', 'Deny', 'RequireApproval'"
        )

    def test_unknown_mode_spelling(self) -> None:
        """A mode spelled "Enforce" is rejected with the choices."""
        assert _decode_error(_document(enforcement_mode="Enforce")) == (
            INVALID_AT + "policy.enforcement_mode (byte 115): "
            "unknown variant 'Enforce', expected one of 'enforce', 'observe', 'disabled'"
        )

    def test_duplicate_field(self) -> None:
        """A known field given twice, even with the same value, is rejected as serde does."""
        data = GOLDEN.replace(b'"enforce"}', b'"enforce","enforcement_mode":"enforce"}')
        assert _decode_error(data) == (
            INVALID_AT + "policy.enforcement_mode (byte 135): duplicate field"
        )

    def test_rules_not_a_list(self) -> None:
        """Rules given as a number are a SerializationError naming policy.rules."""
        assert _decode_error(_document(rules=3)) == (
            INVALID_AT + "policy.rules (byte 38): expected an array"
        )

    def test_bad_rule_is_named_by_index(self) -> None:
        """A bad rule is reported with its index and field."""
        data = _document(rules=[{"action_pattern": "a", "decision": "Deny"}, {"decision": "Deny"}])
        assert _decode_error(data) == (
            INVALID_AT + "policy.rules[1] (byte 99): missing field 'action_pattern'"
        )

    def test_missing_name(self) -> None:
        """A document without a name is a SerializationError naming the field."""
        assert _decode_error(_document(name=...)) == (
            INVALID_AT + "policy (byte 99): missing field 'name'"
        )

    def test_trailing_characters(self) -> None:
        """Anything but whitespace after the document is a SerializationError."""
        assert _decode_error(GOLDEN + b" x") == (
            INVALID_AT + f"policy (byte {len(GOLDEN) + 1}): trailing characters"
        )

    def test_deep_unknown_field_is_skipped(self) -> None:
        """An unknown field nested 100,000 deep is skipped, with no RecursionError."""
        data = b'{"x":' + b"[" * 100_000 + b"]" * 100_000 + GOLDEN.replace(b"{", b",", 1)
        assert policy_from_json(data) == GOLDEN_POLICY

    def test_array_of_fields(self) -> None:
        """A document and a rule may be arrays of their fields in order, as serde_derive reads."""
        data = b'[1,"default",[["tool:*",{"Allow":null}]]]'
        assert policy_from_json(data) == GOLDEN_POLICY


U32_MAX = 2**32 - 1
# The same document at a given version, in each shape the decoder reads. Only "as written"
# takes the fast path; the others go through the general reader.
VERSION_SHAPES = {
    "as written": b'{"version":%d,"name":"d","rules":[],"enforcement_mode":"enforce"}',
    "spaced": b'{"version": %d, "name": "d", "rules": []}',
    "escaped name": b'{"version":%d,"name":"\\u0064","rules":[],"enforcement_mode":"enforce"}',
    "fields as an array": b'[%d,"d",[]]',
}


class TestVersionBound:
    """version is a u32 on every decode path: 2**32-1 decodes, 2**32 is refused."""

    @pytest.mark.parametrize("shape", VERSION_SHAPES.values(), ids=VERSION_SHAPES.keys())
    def test_the_largest_u32_decodes(self, shape: bytes) -> None:
        """Version 2**32-1 decodes to itself, whatever the document's shape."""
        assert policy_from_json(shape % U32_MAX) == PolicyDocument(U32_MAX, "d", [])

    @pytest.mark.parametrize("shape", VERSION_SHAPES.values(), ids=VERSION_SHAPES.keys())
    def test_one_past_it_is_refused(self, shape: bytes) -> None:
        """Version 2**32 is a SerializationError naming the u32 bound, whatever the shape."""
        assert _decode_error(shape % (U32_MAX + 1)).endswith(
            "4294967296 is out of range for a u32 (at most 4294967295)"
        )

    def test_the_fast_path_itself_takes_the_largest_u32(self) -> None:
        """The fast path decodes 2**32-1 without the general reader, and hands 2**32 to it."""
        written = VERSION_SHAPES["as written"]
        assert _read_as_written(written % U32_MAX) == PolicyDocument(U32_MAX, "d", [])
        assert _read_as_written(written % (U32_MAX + 1)) is None


class TestSerdeVerdicts:
    """The decoder agrees with Rust's serde_json on every recorded byte string."""

    VERDICTS = load_verdicts()

    def test_recorded_with_a_serde_json_version(self) -> None:
        """The table names the serde_json and rustc versions that produced it."""
        assert self.VERDICTS["serde_json"].startswith("1.")
        assert self.VERDICTS["rustc"].startswith("rustc ")

    @pytest.mark.parametrize("case", VERDICTS["cases"], ids=lambda case: case["name"])
    def test_same_verdict_as_serde_json(self, case: dict[str, Any]) -> None:
        """serde_json's accepted bytes decode and re-encode to its bytes; its rejected ones fail."""
        data = case_bytes(case)
        if case["accepts"]:
            assert policy_to_json(policy_from_json(data)).hex() == case["canonical_hex"]
        else:
            with pytest.raises(SerializationError):
                policy_from_json(data)


_text = st.text(max_size=20)
# Pieces that serde_json treats specially: nesting, escapes, numbers, odd bytes, known keys.
_MUTATIONS = [
    *(bytes([byte]) for byte in b'{}[],:"\\ 0-.eE\x00\x1f\x7f\x80\xff'),
    b"[" * 3000,
    b"\\ud800",
    b"\\u0041",
    b"NaN",
    b"null",
    b"\xef\xbb\xbf",
    b"\xed\xa0\x80",
    b'"x":',
    b'"version":4294967296,',
    b'"enforcement_mode":"observe",',
    b'{"Deny":null}',
]
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
    version=st.integers(min_value=0, max_value=2**32 - 1),
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

    @settings(max_examples=300, deadline=None)
    @given(data=st.data())
    def test_mutated_documents_decode_or_fail_cleanly(self, data: st.DataObject) -> None:
        """Any mutation of a valid document decodes to a PolicyDocument or a SerializationError."""
        encoded = bytearray(policy_to_json(data.draw(_policies)))
        for _ in range(data.draw(st.integers(1, 4))):
            at = data.draw(st.integers(0, len(encoded)))
            end = at + data.draw(st.integers(0, 4))
            encoded[at:end] = data.draw(st.sampled_from(_MUTATIONS) | st.binary(max_size=3))
        with contextlib.suppress(SerializationError):
            assert isinstance(policy_from_json(bytes(encoded)), PolicyDocument)

    @settings(max_examples=100, deadline=None)
    @given(name=_plain_text)
    def test_plain_text_is_written_verbatim(self, name: str) -> None:
        """Text without control characters, quotes or backslashes appears as its raw UTF-8 bytes."""
        encoded = policy_to_json(PolicyDocument(1, name, []))
        assert encoded == b'{"version":1,"name":"' + name.encode() + b'","rules":[],' + (
            b'"enforcement_mode":"enforce"}'
        )

"""PolicyDocument <-> JSON, as Rust's serde_json writes and reads it.

``{"version":1,"name":"default","rules":[{"action_pattern":"tool:*",
"decision":"Allow"}],"enforcement_mode":"enforce"}``: compact separators,
fields in declaration order, non-ASCII written as UTF-8. Decoding accepts
exactly the bytes that ``serde_json::from_slice`` accepts for aa-core's
``PolicyDocument``: unknown fields are ignored, a missing ``enforcement_mode``
means enforce, a struct may also be an array of its fields, and a decision may
also be ``{"Allow":null}``. Scalars are strict: ``"1"``, ``1.0`` and ``true``
are not a version.
"""

from __future__ import annotations

import json
import re
from types import MappingProxyType

from aa_storage._serde_json import JsonReader
from aa_storage._types import EnforcementMode, PolicyDecision, PolicyDocument, PolicyRule
from aa_storage.errors import SerializationError

_DECISIONS = MappingProxyType({decision.value: decision for decision in PolicyDecision})
_MODES = MappingProxyType({mode.value: mode for mode in EnforcementMode})

_RULE_FIELDS = (
    ("action_pattern", JsonReader.string),
    ("decision", lambda reader: reader.variant(_DECISIONS)),
)


def _read_rule(reader: JsonReader) -> PolicyRule:
    return PolicyRule(*reader.struct(_RULE_FIELDS, required=2))


_DOCUMENT_FIELDS = (
    ("version", JsonReader.u32),
    ("name", JsonReader.string),
    ("rules", lambda reader: reader.array(_read_rule)),
    ("enforcement_mode", lambda reader: reader.variant(_MODES)),
)


# How serde_json (and policy_to_json) writes a document whose strings need no escapes:
# nearly every stored policy. Such bytes skip the general reader, which takes 4 times longer.
_PLAIN_TEXT = rb'[^"\\\x00-\x1f]*'
_WRITTEN_RULE = re.compile(
    rb'\{"action_pattern":"(%s)","decision":"(Allow|Deny|RequireApproval)"\}' % _PLAIN_TEXT
)
_WRITTEN_DOCUMENT = re.compile(
    rb'\{"version":(?P<version>0|[1-9][0-9]{0,9}),"name":"(?P<name>%s)",'
    rb'"rules":\[(?P<rules>(?:%s(?:,%s)*)?)\],'
    rb'"enforcement_mode":"(?P<mode>enforce|observe|disabled)"\}'
    % (_PLAIN_TEXT, _WRITTEN_RULE.pattern, _WRITTEN_RULE.pattern)
)


def _read_as_written(data: bytes) -> PolicyDocument | None:
    """The document, if ``data`` is exactly as serde_json writes one without escapes."""
    match = _WRITTEN_DOCUMENT.fullmatch(data)
    if match is None or int(match["version"]) > 0xFFFFFFFF:
        return None
    try:
        name = match["name"].decode()
        rules = [
            PolicyRule(pattern.decode(), _DECISIONS[decision.decode()])
            for pattern, decision in _WRITTEN_RULE.findall(match["rules"])
        ]
    except UnicodeDecodeError:  # the general reader names the field
        return None
    return PolicyDocument(int(match["version"]), name, rules, _MODES[match["mode"].decode()])


def policy_to_json(policy: PolicyDocument) -> bytes:
    """Encode ``policy`` as the compact UTF-8 JSON the Rust driver writes."""
    if not isinstance(policy, PolicyDocument):
        raise TypeError(f"expected PolicyDocument, got {type(policy).__name__}")
    document = {
        "version": policy.version,
        "name": policy.name,
        "rules": [
            {"action_pattern": rule.action_pattern, "decision": rule.decision.value}
            for rule in policy.rules
        ],
        "enforcement_mode": policy.enforcement_mode.value,
    }
    # With these options json escapes exactly what serde_json escapes, the same way.
    return json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode()


def policy_from_json(data: bytes | str) -> PolicyDocument:
    """Decode a stored policy as serde_json would; anything else is a ``SerializationError``.

    A ``str`` is read as its UTF-8 encoding (one holding a lone surrogate has none).
    """
    if isinstance(data, str):
        try:
            data = data.encode()
        except UnicodeEncodeError:
            raise SerializationError("stored policy is not valid Unicode text") from None
    if not isinstance(data, bytes):
        raise TypeError(f"expected bytes or str, got {type(data).__name__}")
    document = _read_as_written(data)
    if document is not None:
        return document
    reader = JsonReader(data, "policy")
    version, name, rules, mode = reader.struct(_DOCUMENT_FIELDS, required=3)
    reader.end()
    return PolicyDocument(version, name, rules, mode or EnforcementMode.ENFORCE)

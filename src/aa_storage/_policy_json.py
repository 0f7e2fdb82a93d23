"""PolicyDocument <-> JSON, byte for byte as Rust's serde_json writes it.

``{"version":1,"name":"default","rules":[{"action_pattern":"tool:*",
"decision":"Allow"}],"enforcement_mode":"enforce"}``: compact separators,
fields in declaration order, non-ASCII written as UTF-8. On decode, unknown
fields are ignored (serde's default) and a missing ``enforcement_mode`` means
enforce. Scalars are strict: ``"1"`` is not a version and ``true`` is not 1.
"""

from __future__ import annotations

import json
from typing import Any

import cattrs

from aa_storage._cattrs import describe_errors, make_converter
from aa_storage._types import EnforcementMode, PolicyDecision, PolicyDocument, PolicyRule
from aa_storage.errors import SerializationError

# serde ignores unknown fields by default, and so do we.
_converter = make_converter(forbid_extra_keys=False)


def _enum_hook(enum_type: type[Any]) -> Any:
    def structure(value: object, _: type[Any]) -> Any:
        try:
            return enum_type(value)
        except ValueError:
            allowed = ", ".join(repr(member.value) for member in enum_type)
            raise ValueError(f"{value!r} is not one of {allowed}") from None

    return structure


def _structure_rules(value: object, _: type[Any]) -> tuple[PolicyRule, ...]:
    # serde wants a JSON array here; cattrs alone would take any iterable, even "" or {}.
    if not isinstance(value, list):
        raise TypeError(f"expected a list of rules, got {type(value).__name__}")
    return tuple(_converter.structure(value, list[PolicyRule]))


_converter.register_structure_hook_func(lambda t: t == tuple[PolicyRule, ...], _structure_rules)
_converter.register_structure_hook(PolicyDecision, _enum_hook(PolicyDecision))
_converter.register_structure_hook(EnforcementMode, _enum_hook(EnforcementMode))


def policy_to_json(policy: PolicyDocument) -> bytes:
    """Encode ``policy`` as the compact UTF-8 JSON the Rust driver writes."""
    if not isinstance(policy, PolicyDocument):
        raise TypeError(f"expected PolicyDocument, got {type(policy).__name__}")
    document = _converter.unstructure(policy)
    return json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode()


def policy_from_json(data: bytes | str) -> PolicyDocument:
    """Decode a stored policy; anything that is not a valid document is a ``SerializationError``."""
    try:
        document = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise SerializationError(f"stored policy is not valid JSON: {exc}") from None
    if not isinstance(document, dict):
        raise SerializationError(
            f"stored policy must be a JSON object, got {type(document).__name__}"
        )
    try:
        return _converter.structure(document, PolicyDocument)
    except (cattrs.BaseValidationError, TypeError, ValueError) as exc:
        problems = "; ".join(describe_errors(exc, "policy"))
        raise SerializationError(f"stored policy has the wrong shape: {problems}") from None

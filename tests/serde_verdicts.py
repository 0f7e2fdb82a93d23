"""serde_json's recorded verdicts on policy bytes (tests/data), made by tools/serde-oracle."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

VERDICTS_PATH = Path(__file__).parent / "data" / "serde_json_verdicts.json"


def case_bytes(case: dict[str, Any]) -> bytes:
    """A case's input: its hex, or its recipe: head, open x depth, middle, close x depth, tail."""
    if "hex" in case:
        return bytes.fromhex(case["hex"])
    recipe = {part: bytes.fromhex(value) for part, value in case["nest"].items() if part != "depth"}
    depth = case["nest"]["depth"]
    nested = recipe["open"] * depth + recipe["middle"] + recipe["close"] * depth
    return recipe["head"] + nested + recipe["tail"]


def load_verdicts() -> dict[str, Any]:
    """The recorded file: the versions it was made with, and its cases."""
    return json.loads(VERDICTS_PATH.read_text())  # type: ignore[no-any-return]

"""Read typed values from JSON bytes exactly as Rust's ``serde_json::from_slice`` does.

serde_json parses each known field for its type and skips every other value
with a syntax check only: raw bytes in a skipped string are not checked as
UTF-8, its ``\\u`` escapes are not paired, and skipped nesting has no depth
limit. Known strings and every object key are checked strictly. Python's
``json`` differs on each point (and recurses), so this reader walks the bytes.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator, Mapping
from typing import Any, NoReturn, TypeVar

from aa_storage.errors import SerializationError

_T = TypeVar("_T")

_WS = rb"[ \t\n\r]*"
# A complete string token: no raw control characters, only JSON's escapes.
_STRING = rb'"([^"\\\x00-\x1f]*(?:\\(?:["\\/bfnrt]|u[0-9a-fA-F]{4})[^"\\\x00-\x1f]*)*)"'
_NUMBER = rb"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?"
_SPACE = re.compile(_WS)
_STRING_TOKEN = re.compile(_WS + _STRING)
_SKIPPED_KEY = re.compile(_WS + _STRING + _WS + rb":")
# A whole scalar or empty container, or the start of another: "[", or "{" and its first key.
_SKIPPED_VALUE = re.compile(
    rb"%s(?:\[%s\]|\{%s\}|\[|\{%s|%s|%s|true|false|null)"
    % (_WS, _WS, _WS, _SKIPPED_KEY.pattern, _STRING, _NUMBER)
)
_COLON = re.compile(_WS + rb":")
_UNIT_VARIANT_END = re.compile(rb"%s:%snull%s\}" % (_WS, _WS, _WS))
# serde_json reads "-0", fractions, exponents and over-long integers as floats, never a u32.
_U32 = re.compile(_WS + rb"(0|[1-9][0-9]{0,9})(?![0-9.eE])")


class JsonReader:
    """A cursor over one JSON text, named ``root`` in errors.

    Every problem is a ``SerializationError`` that names the field path and byte offset.
    """

    def __init__(self, data: bytes, root: str) -> None:
        self.data = data
        self.pos = 0
        self.root = root
        self.path: list[str | int] = []

    def fail(self, problem: str) -> NoReturn:
        steps = "".join(f"[{step}]" if isinstance(step, int) else f".{step}" for step in self.path)
        raise SerializationError(
            f"stored {self.root} is invalid at {self.root}{steps} (byte {self.pos}): {problem}"
        )

    def peek(self) -> int:
        """The next byte after whitespace (left unread), or -1 at the end."""
        self.pos = _SPACE.match(self.data, self.pos).end()  # type: ignore[union-attr]
        return self.data[self.pos] if self.pos < len(self.data) else -1

    def within(self, step: str | int, read: Callable[[JsonReader], _T]) -> _T:
        """What ``read`` reads, with ``step`` (a key or index) on the path its errors name."""
        self.path.append(step)
        value = read(self)
        self.path.pop()
        return value

    def token(self, pattern: re.Pattern[bytes], expected: str) -> re.Match[bytes]:
        match = pattern.match(self.data, self.pos)
        if match is None:
            self.fail(f"expected {expected}")
        self.pos = match.end()
        return match

    def string(self) -> str:
        """A string that must hold valid Unicode: UTF-8 bytes and paired surrogates."""
        raw = self.token(_STRING_TOKEN, "a string").group(1)
        try:
            text = raw.decode()
            if "\\" in text:
                # The token is already checked, so json only decodes its escapes (as serde
                # does), leaving any lone surrogate, which has no UTF-8 and fails encode().
                text = json.loads(f'"{text}"')
                text.encode()
        except ValueError:  # UnicodeError too
            self.fail("the string is not valid Unicode (bad UTF-8 or a lone surrogate)")
        return text

    def u32(self) -> int:
        value = int(self.token(_U32, "an integer in [0, 2**32-1]").group(1))
        if value > 0xFFFFFFFF:
            self.fail(f"{value} is out of range for a u32 (at most 4294967295)")
        return value

    def variant(self, variants: Mapping[str, _T]) -> _T:
        """A unit enum variant: ``"Name"``, or ``{"Name": null}`` as serde also reads it."""
        as_map = self.peek() == ord("{")
        self.pos += as_map
        name = self.string()
        if name not in variants:
            self.fail(f"unknown variant {name!r}, expected one of {', '.join(map(repr, variants))}")
        if as_map:
            self.token(_UNIT_VARIANT_END, "':', null and '}'")
        return variants[name]

    def items(self, opener: int, what: str) -> Iterator[int]:
        """Open an array (``[``) or object (``{``), then yield each item's index after its ``,``."""
        if self.peek() != opener:
            self.fail(f"expected {what}")
        self.pos += 1
        closer, index = opener + 2, 0  # "]" and "}" follow "[" and "{" in ASCII
        while (byte := self.peek()) != closer:
            if index:
                if byte != ord(","):
                    self.fail(f"expected ',' or {chr(closer)!r}")
                self.pos += 1
                byte = self.peek()
            if byte in (closer, -1):
                self.fail("expected a value")
            yield index
            index += 1
        self.pos += 1

    def array(self, read_item: Callable[[JsonReader], _T]) -> list[_T]:
        return [self.within(index, read_item) for index in self.items(ord("["), "an array")]

    def struct(
        self, fields: tuple[tuple[str, Callable[[JsonReader], Any]], ...], required: int
    ) -> list[Any]:
        """A struct as serde_derive reads it: an object, or an array of the fields in order.

        Unknown keys are skipped and a known key given twice is an error. Fields past
        the first ``required`` may be missing; they come back as None.
        """
        values: list[Any] = [None] * len(fields)
        found: set[int] = set()
        if self.peek() == ord("["):
            for index in self.items(ord("["), "an array"):
                if index == len(fields):
                    self.fail(f"expected at most {len(fields)} elements")
                values[index] = self.within(fields[index][0], fields[index][1])
                found.add(index)
        else:
            indexes = {name: index for index, (name, _) in enumerate(fields)}
            for _ in self.items(ord("{"), "a JSON object"):
                key = self.string()
                self.token(_COLON, "':'")
                known = indexes.get(key)
                if known is None:
                    self.within(key, JsonReader.skip_value)
                    continue
                if known in found:
                    self.path.append(key)
                    self.fail("duplicate field")
                found.add(known)
                values[known] = self.within(key, fields[known][1])
        for index in range(required):
            if index not in found:
                self.fail(f"missing field {fields[index][0]!r}")
        return values

    def skip_value(self) -> None:
        """Check one value's syntax and step over it, without recursion or a depth limit."""
        closers = bytearray()  # what each open array or object still needs, innermost last
        while True:
            self.token(_SKIPPED_VALUE, "a value")
            if self.data[self.pos - 1] in b"[:":  # opened a non-empty array, or an object
                closers.append(ord("]" if self.data[self.pos - 1] == ord("[") else "}"))
                continue
            while closers:  # the value is complete: close what it completes, up to a ','
                byte = self.peek()
                self.pos += 1
                if byte == closers[-1]:
                    closers.pop()
                elif byte == ord(","):
                    if closers[-1] == ord("}"):
                        self.token(_SKIPPED_KEY, "a string key and ':'")
                    break
                else:
                    self.pos -= 1
                    self.fail(f"expected ',' or {chr(closers[-1])!r}")
            else:
                return

    def end(self) -> None:
        """Only whitespace may follow the value."""
        if self.peek() != -1:
            self.fail("trailing characters")

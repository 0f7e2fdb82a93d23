"""Record serde_json's verdicts on policy bytes, or fuzz the Python decoder against them.

    python tools/serde-oracle/verdicts.py record      # rewrites tests/data/serde_json_verdicts.json
    python tools/serde-oracle/verdicts.py fuzz 20000  # compares 20000 mutated documents

Both build the oracle (cargo, offline) and run it once over every input.
"""

# The case table below is data, laid out one family per statement to read as a list.
# ruff: noqa: E501

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from aa_storage import SerializationError, policy_from_json, policy_to_json  # noqa: E402
from serde_verdicts import VERDICTS_PATH, case_bytes  # noqa: E402

RULE = b'{"action_pattern":"tool:*","decision":"Allow"}'
GOLDEN = b'{"version":1,"name":"default","rules":[' + RULE + b'],"enforcement_mode":"enforce"}'


def doc(
    version: bytes = b"1",
    name: bytes = b'"default"',
    rules: bytes = b"[" + RULE + b"]",
    mode: bytes | None = b'"enforce"',
    extra: bytes = b"",
) -> bytes:
    """A document with its fields' JSON replaced; extra is spliced in after the version."""
    tail = b"" if mode is None else b',"enforcement_mode":' + mode
    return (
        b'{"version":' + version + extra + b',"name":' + name + b',"rules":' + rules + tail + b"}"
    )


def rule(pattern: bytes = b'"tool:*"', decision: bytes = b'"Allow"', extra: bytes = b"") -> bytes:
    return doc(rules=b'[{"action_pattern":' + pattern + extra + b',"decision":' + decision + b"}]")


def nest(
    head: bytes, open_: bytes, depth: int, middle: bytes, close: bytes, tail: bytes
) -> dict[str, Any]:
    parts = {"head": head, "open": open_, "middle": middle, "close": close, "tail": tail}
    return {"nest": {**{key: value.hex() for key, value in parts.items()}, "depth": depth}}


class UniqueNames(dict[str, bytes]):
    def __setitem__(self, name: str, data: bytes) -> None:
        assert name not in self, f"two cases named {name}"
        super().__setitem__(name, data)


# fmt: off
def cases() -> list[tuple[str, dict[str, Any]]]:
    """Every recorded case, by name: ordinary documents, then each of serde_json's edges."""
    named = UniqueNames(golden=GOLDEN)
    for decision in (b"Allow", b"Deny", b"RequireApproval", b"allow", b"ALLOW", b"Require_approval",
                     b"require_approval", b"", b"Allow "):
        named[f"decision {decision!r}"] = rule(decision=b'"' + decision + b'"')
    for mode in (b"enforce", b"observe", b"disabled", b"Enforce", b"Observe", b"DISABLED", b"",
                 b"enforce ", b"Disabled"):
        named[f"mode {mode!r}"] = doc(mode=b'"' + mode + b'"')
    named["mode missing"] = doc(mode=None)
    for value in (b"null", b"0", b"true", b"[]", b"{}", b'["enforce"]', b'{"enforce":null}',
                  b'{"observe":null}', b'{"Enforce":null}', b'{"enforce":{}}'):
        named[f"mode {value.decode()}"] = doc(mode=value)
    named["no rules"] = doc(rules=b"[]")
    named["three rules"] = doc(rules=b"[" + b",".join(
        b'{"action_pattern":"p%d","decision":"%s"}' % (i, d)
        for i, d in enumerate((b"Allow", b"Deny", b"RequireApproval"))) + b"]")
    for version in (b"0", b"1", b"4294967295", b"4294967296", b"-1", b"-0", b"1.0", b"1e0", b"1E0",
                    b"0.0", b"1e2", b"18446744073709551615", b"18446744073709551616",
                    b"99999999999999999999999", b"1e400", b"-1e400", b"01", b"00", b"+1", b".5",
                    b"0x1", b'"1"', b"true", b"null", b"[1]", b"{}", b"NaN", b"Infinity",
                    b"-Infinity", b"1.", b"-", b"1e", b"0.5", b"4294967295.0", b"00000000001"):
        named[f"version {version.decode()}"] = doc(version=version)
    for name in (b'""', b'"r\xc3\xa8gles \xf0\x9f\x94\x92"', b'"a\\nb\\t\\r\\b\\f\\"\\\\\\/"',
                 b'"\\u0000"', b'"\\u001f\\u007f\\u0080"', b'"\\u00e9\\u00E9"', b'"\\ud83d\\ude00"',
                 b'"\\uD83D\\uDE00"', b'"\x7f"', b'"\xe2\x80\xa8"', b'"\xef\xbf\xbf"', b'"\xf4\x8f\xbf\xbf"',
                 b'"\\ud800"', b'"\\udc00"', b'"\\ud800\\u0041"', b'"\\ud800x"', b'"\\ud800\\n"',
                 b'"\\udbff\\udfff"', b'"\\ud800\\ud800"', b'"\\ude00\\ud83d"', b'"\\x41"', b'"\\U0041"',
                 b'"\\u12"', b'"\\u12G4"', b"\"\\'\"", b'"\\a"', b'"\\', b'"\\ "', b'"\x00"', b'"\x1f"',
                 b'"a\nb"', b'"\t"', b'"\xff"', b'"\xc3"', b'"\xc0\xaf"', b'"\xed\xa0\x80"',
                 b'"\xf4\x90\x80\x80"', b'"\xe2\x82"', b'"\x80"', b'"\xc3\xa9\xc3"', b'"\xc3\\n"',
                 b"null", b"1", b"[]", b'["default"]', b"{}", b"'default'", b"default", b'"unterminated'):
        named[f"name {name!r}"] = doc(name=name)
    for rules in (b"{}", b'""', b"null", b"1", b"[null]", b"[1]", b'["x"]', b"[[]]", b"[{}]",
                  b'[["tool:*","Allow"]]', b'[["tool:*","Allow"],{"action_pattern":"x","decision":"Deny"}]',
                  b'[["tool:*"]]', b'[["tool:*","Allow",1]]', b'[["tool:*","Allow",]]', b"[" + RULE + b",]",
                  b"[," + RULE + b"]", b"[" + RULE + b"," + RULE + b"]", b"[" + RULE + b" " + RULE + b"]",
                  b'[{"decision":"Allow"}]', b'[{"action_pattern":"x"}]', b'[["tool:*",{"Deny":null}]]',
                  b"[ " + RULE + b" ]", b"[\n" + RULE + b"\n]"):
        named[f"rules {rules!r}"] = doc(rules=rules)
    for decision in (b'{"Allow":null}', b'{ "Deny" : null }', b'{"RequireApproval":null}',
                     b'{"Allow":{}}', b'{"Allow":[]}', b'{"Allow":0}', b'{"Allow":null,"x":1}',
                     b"{}", b'{"Nope":null}', b'{"allow":null}', b'{"Allow":nul}', b'{"Allow"}',
                     b'{"Allow":null', b'{"All\\u006fw":null}', b'"All\\u006fw"', b'["Allow"]', b"0",
                     b"null", b'{"Allow":null}x', b'{"Allow":null,}'):
        named[f"decision {decision!r}"] = rule(decision=decision)
    for pattern in (b'"\\ud800"', b'"\xff"', b"1", b"null", b'""'):
        named[f"pattern {pattern!r}"] = rule(pattern=pattern)
    extras = (b"null", b"true", b"false", b"0", b"-0", b"-1", b"1.5", b"-1.5e-3", b"1E+2", b"1e400",
              b"-1e400", b'""', b'"x"', b'"\\ud800"', b'"\\udc00x"',
              b'"\xff\xfe"', b'"\xed\xa0\x80"', b'"\\u0000"', b"[]", b"{}", b"[1,[2,{}],{\"a\":[]}]",
              b'{"\\ud800":1}', b'{"\xff":1}', b'{"a":1,"a":2}', b"[1,]", b'{"a":1,}', b"[,1]",
              b'{"a"}', b'{"a":}', b"{1:2}", b"NaN", b"Infinity", b"-Infinity", b"[NaN]", b'{"a":NaN}',
              b"nan", b"01", b"1.", b".5", b"+1", b"-", b"1e", b"1e+", b"nul", b"True", b"nulll",
              b'"\x00"', b'"\x1f"', b'"\x7f"', b'"\\x"', b'"\\u12"', b"'x'", b"[1 2]", b'{"a" 1}',
              b'{"a":1 "b":2}', b"[}", b"{]", b"[[]", b"[]]", b"undefined", b'"\\uZZZZ"', b"- 1",
              b"[ ]", b"{ }", b'{ "a" : [ 1 , { } ] }', b'{"version":1}', b'"\\ud800\\u0041"')
    for value in extras:
        named[f"unknown top {value[:40]!r}"] = doc(extra=b',"x":' + value)
        named[f"unknown in rule {value[:40]!r}"] = rule(extra=b',"x":' + value)
    for key in (b'"vers\\u0069on"', b'"\\u0076ersion"', b'"Version"', b'"version "', b'""',
                b'"\\ud800"', b'"\xff"', b'"\xc3\xa9"', b'"x\\u0000"', b'"\\ud83d\\ude00"',
                b"version", b"'version'", b"1"):
        named[f"key {key!r}"] = b"{" + key + b':1,"name":"d","rules":[]}'
    for field, value in ((b"version", b"1"), (b"version", b"2"), (b"name", b'"default"'),
                         (b"rules", b"[]"), (b"enforcement_mode", b'"enforce"'),
                         (b"enforcement_mode", b'"observe"'), (b"vers\\u0069on", b"1")):
        named[f"duplicate {field.decode()}={value.decode()}"] = doc(extra=b',"' + field + b'":' + value)
    named["duplicate unknown"] = doc(extra=b',"x":1,"x":2')
    named["duplicate action_pattern"] = rule(extra=b',"action_pattern":"tool:*"')
    named["duplicate decision"] = rule(extra=b',"decision":"Allow"')
    named["fields reordered"] = (b'{"enforcement_mode":"observe","rules":[{"decision":"Deny",'
                                 b'"action_pattern":"a"}],"name":"n","version":7}')
    named["pretty printed"] = json.dumps(json.loads(GOLDEN), indent=2).encode()
    named["whitespace everywhere"] = b" \t\r\n".join(
        [b"", b"{", b'"version"', b":", b"1", b",", b'"name"', b":", b'"n"', b",", b'"rules"', b":",
         b"[", b"{", b'"action_pattern"', b":", b'"a"', b",", b'"decision"', b":", b'"Deny"', b"}", b"]",
         b",", b'"enforcement_mode"', b":", b'"observe"', b"}", b""])
    for space in (b"\x0c", b"\x0b", b"\xc2\xa0", b"\x00", b"\xe2\x80\x8b"):
        named[f"odd space {space!r}"] = b"{" + space + GOLDEN[1:]
    for tail in (b" ", b"\n", b"\r\n\t ", b"x", b"{}", b",", b"\x00", b"}", b"]", b" 1", b"null", b"\xff",
                 b"//", b"/* */"):
        named[f"trailing {tail!r}"] = GOLDEN + tail
    named["leading whitespace"] = b" \n\t\r" + GOLDEN
    named["bom"] = b"\xef\xbb\xbf" + GOLDEN
    named["bom after space"] = b" \xef\xbb\xbf" + GOLDEN
    named["utf-16-le"] = GOLDEN.decode().encode("utf-16-le")
    named["utf-16-be"] = GOLDEN.decode().encode("utf-16-be")
    named["utf-16 with bom"] = GOLDEN.decode().encode("utf-16")
    named["utf-32-le"] = GOLDEN.decode().encode("utf-32-le")
    named["utf-32 with bom"] = GOLDEN.decode().encode("utf-32")
    for top in (b"", b" ", b"null", b'"x"', b"1", b"{}", b"[]", b"[1]", b'[1,"d"]', b'[1,"d",[]]',
                b'[1,"d",[],"observe"]', b'[1,"d",[],"observe",0]', b'[1,"d",[],]', b'[1,"d",[],"enforce"',
                b'[1,"d",[],null]', b'["1","d",[]]', b'[1,"d",[["a","Deny"]],{"disabled":null}]',
                b"{", b"}", b'{"version":1,"name":"d","rules":[],}', b'{"version":1 "name":"d","rules":[]}',
                b'{"version":1,"name":"d","rules":[]', b"{'version':1}", b"{version:1}",
                b'// c\n{"version":1,"name":"d","rules":[]}', b'{"version":1,"name":"d","rules":[]}}',
                b'{"version"1,"name":"d","rules":[]}', b"[" + GOLDEN + b"]",
                b'{"version":1,"name":"d","enforcement_mode":"observe"}', b'{"name":"d","rules":[]}',
                b'{"version":1,"rules":[]}', b"true", b"NaN"):
        named[f"top {top!r}"] = top
    deep = [
        ("unknown top 5000-digit integer", b'{"x":', b"1", 5000, b"", b"", b',"version":1,"name":"d","rules":[]}'),
        ("unknown top 5000-digit fraction", b'{"x":0.', b"1", 5000, b"", b"", b',"version":1,"name":"d","rules":[]}'),
        ("version 5000 digits", b'{"version":', b"1", 5000, b"", b"", b',"name":"d","rules":[]}'),
        ("unknown top 1000 [", b'{"x":', b"[", 1000, b"", b"]", b',"version":1,"name":"d","rules":[]}'),
        ("unknown top 100000 [", b'{"x":', b"[", 100000, b"", b"]", b',"version":1,"name":"d","rules":[]}'),
        ("unknown top 100000 {", b'{"x":', b'{"a":', 100000, b"0", b"}", b',"version":1,"name":"d","rules":[]}'),
        ("unknown top 100000 [{", b'{"x":', b'[{"a":', 100000, b"0", b"}]", b',"version":1,"name":"d","rules":[]}'),
        ("unknown top 100000 [ unclosed", b'{"x":', b"[", 100000, b"", b"", b',"version":1,"name":"d","rules":[]}'),
        ("unknown top 100000 [ one short", b'{"x":[', b"[", 99999, b"", b"]", b',"version":1,"name":"d","rules":[]}'),
        ("unknown in rule 100000 [", b'{"version":1,"name":"d","rules":[{"x":', b"[", 100000, b"", b"]",
         b',"action_pattern":"a","decision":"Deny"}]}'),
        ("unknown in decision map 1000 [", b'{"version":1,"name":"d","rules":[["a",{"Allow":null,"x":', b"[",
         1000, b"", b"]", b"}]]}"),
        ("unknown top 100000 [ NaN inside", b'{"x":', b"[", 100000, b"NaN", b"]", b',"version":1,"name":"d","rules":[]}'),
        ("unknown top 100000 [ spaced", b'{"x":', b"[ \n", 100000, b"1", b" ]\t", b',"version":1,"name":"d","rules":[]}'),
        ("unknown top 100000 [ lists of two", b'{"x":', b"[1,", 100000, b"0", b"]", b',"version":1,"name":"d","rules":[]}'),
        ("rules 200 [", b'{"version":1,"name":"d","rules":', b"[", 200, b"", b"]", b"}"),
        ("rules 127 [", b'{"version":1,"name":"d","rules":', b"[", 127, b"", b"]", b"}"),
        ("version 200 [", b'{"version":', b"[", 200, b"", b"]", b',"name":"d","rules":[]}'),
        ("top 100000 [", b"", b"[", 100000, b"", b"]", b""),
        ("top 100000 {", b"", b'{"x":', 100000, b"0", b"}", b""),
        ("mode 1000 {", b'{"version":1,"name":"d","rules":[],"enforcement_mode":', b'{"enforce":', 1000, b"0",
         b"}", b"}"),
    ]
    result = [(name, {"hex": data.hex()}) for name, data in named.items()]
    return result + [(name, nest(*recipe)) for name, *recipe in deep]  # type: ignore[arg-type]
# fmt: on


def run_oracle(inputs: list[bytes]) -> list[dict[str, Any]]:
    subprocess.run(["cargo", "build", "--offline", "--release", "--quiet"], cwd=HERE, check=True)
    lines = "".join(data.hex() + "\n" for data in inputs)
    out = subprocess.run(
        [str(HERE / "target/release/serde-oracle")],
        input=lines,
        text=True,
        capture_output=True,
        check=True,
    ).stdout
    return [json.loads(line) for line in out.splitlines()]


def python_verdict(data: bytes) -> dict[str, str]:
    try:
        return {"ok": policy_to_json(policy_from_json(data)).hex()}
    except SerializationError as exc:
        return {"err": str(exc)}


def record() -> None:
    named = cases()
    inputs = [case_bytes(case) for _, case in named]
    lock = (HERE / "Cargo.lock").read_text().split("[[package]]")
    versions = {part.split('"')[1]: part.split('"')[3] for part in lock[1:]}
    rows = []
    for (name, case), verdict in zip(named, run_oracle(inputs), strict=True):
        if ("ok" in verdict["slice"]) != ("ok" in verdict["str"]):
            print(f"from_slice and from_str differ on {name}: {verdict}")
        row = {"name": name, **case}
        row.update(
            {"accepts": True, "canonical_hex": verdict["slice"]["ok"]}
            if "ok" in verdict["slice"]
            else {"accepts": False, "error": verdict["slice"]["err"]}
        )
        rows.append(row)
    rustc = subprocess.run(
        ["rustc", "--version"], capture_output=True, text=True, check=True
    ).stdout
    header = {
        "serde_json": versions["serde_json"],
        "serde": versions["serde"],
        "serde_derive": versions["serde_derive"],
        "rustc": rustc.strip(),
        "made_by": "tools/serde-oracle (serde_json::from_slice::<PolicyDocument>, then to_vec)",
    }
    VERDICTS_PATH.write_text(
        json.dumps({**header, "cases": rows}, indent=1, ensure_ascii=False) + "\n"
    )
    print(f"{len(rows)} cases, {sum(row['accepts'] for row in rows)} accepted")


# fmt: off
MUTATION_TOKENS = [b"{", b"}", b"[", b"]", b",", b":", b'"', b"\\", b" ", b"\n", b"0", b"1", b"-", b".",
                   b"e", b"null", b"NaN", b"\\u", b"\\ud800", b"\\udc00", b"\\u0041", b"\x00", b"\x1f",
                   b"\x7f", b"\x80", b"\xff", b"\xc3", b"\xed\xa0\x80", b'"x":', b',"x":1', b'"version":',
                   b'"name":', b'"rules":', b'"enforcement_mode":', b'"Allow"', b'{"Deny":null}',
                   b'"observe"', b"4294967295", b"4294967296", b"1.0", b"1e0", b"true", b"\xef\xbb\xbf"]
# fmt: on


def space(rng: random.Random) -> bytes:
    return rng.choice([b""] * 6 + [b" ", b"\n", b"\t\r", b"  \n "])


def text(rng: random.Random) -> bytes:
    pieces = [
        b"a",
        b"tool:*",
        b"\xc3\xa9",
        b"\xf0\x9f\x94\x92",
        b"\\n",
        b"\\u00e9",
        b"\\ud83d\\ude00",
        b"\\/",
        b'\\"',
        b"\\u0000",
        b"\x7f",
        b"\\uDBFF\\uDFFF",
        b"\\\\",
    ]
    return b'"' + b"".join(rng.choice(pieces) for _ in range(rng.randrange(4))) + b'"'


def any_json(rng: random.Random, depth: int = 0) -> bytes:
    kind = rng.randrange(8 if depth < 3 else 6)
    if kind < 4:
        return rng.choice(
            [b"null", b"true", b"false", b"0", b"-1.5e3", b"12", b"1E400", b'"\\ud800"']
        )
    if kind < 6:
        return text(rng)
    items = [any_json(rng, depth + 1) for _ in range(rng.randrange(3))]
    if kind == 6:
        return b"[" + b",".join(space(rng) + item + space(rng) for item in items) + b"]"
    return b"{" + b",".join(space(rng) + text(rng) + b":" + item for item in items) + b"}"


def struct(rng: random.Random, fields: list[tuple[bytes, bytes]]) -> bytes:
    """A struct as an array of its values, or as an object with shuffled and unknown fields."""
    if rng.random() < 0.2:
        return b"[" + b",".join(space(rng) + value + space(rng) for _, value in fields) + b"]"
    pairs = fields + [(text(rng), any_json(rng)) for _ in range(rng.choice((0, 0, 1, 2)))]
    rng.shuffle(pairs)
    return (
        b"{"
        + b",".join(
            space(rng) + key + space(rng) + b":" + space(rng) + value + space(rng)
            for key, value in pairs
        )
        + b"}"
    )


def variant(rng: random.Random, names: list[bytes]) -> bytes:
    name = b'"' + rng.choice(names) + b'"'
    return b'{"' + name[1:-1] + b'":null}' if rng.random() < 0.2 else name


def random_document(rng: random.Random) -> bytes:
    rules = [
        struct(
            rng,
            [
                (b'"action_pattern"', text(rng)),
                (b'"decision"', variant(rng, [b"Allow", b"Deny", b"RequireApproval"])),
            ],
        )
        for _ in range(rng.randrange(3))
    ]
    fields = [
        (b'"version"', rng.choice([b"0", b"1", b"4294967295", b"77"])),
        (b'"name"', text(rng)),
        (b'"rules"', b"[" + b",".join(rules) + b"]"),
    ]
    if rng.random() < 0.7:
        fields.append((b'"enforcement_mode"', variant(rng, [b"enforce", b"observe", b"disabled"])))
    return space(rng) + struct(rng, fields) + space(rng)


def mutate(data: bytes, rng: random.Random) -> bytes:
    for _ in range(rng.choice((1, 1, 2, 3))):
        at = rng.randrange(len(data) + 1)
        end = min(len(data), at + rng.randrange(1, 6))
        op = rng.randrange(5)
        if op == 0:
            data = data[:at] + data[end:]
        elif op == 1:
            data = data[:at] + rng.choice(MUTATION_TOKENS) + data[at:]
        elif op == 2:
            data = data[:at] + rng.choice(MUTATION_TOKENS) + data[end:]
        elif op == 3:
            data = data[:at] + bytes([rng.randrange(256)]) + data[at + 1 :]
        else:
            data = data[:at] + data[at:end] * 2 + data[end:]
    return data


def fuzz(count: int) -> None:
    rng = random.Random(7)
    seeds = [case_bytes(case) for _, case in cases() if "hex" in case]
    inputs = [mutate(rng.choice(seeds), rng) for _ in range(count // 3)]
    documents = [random_document(rng) for _ in range(count - len(inputs))]
    inputs += [mutate(data, rng) if rng.random() < 0.5 else data for data in documents]
    disagreements = slice_str_differ = 0
    for data, verdict in zip(inputs, run_oracle(inputs), strict=True):
        mine = python_verdict(data)
        if ("ok" in mine) != ("ok" in verdict["slice"]) or mine.get("ok") != verdict["slice"].get(
            "ok"
        ):
            disagreements += 1
            print(f"DIFFER {data!r}\n  rust:   {verdict['slice']}\n  python: {mine}")
        slice_str_differ += ("ok" in verdict["slice"]) != ("ok" in verdict["str"])
    accepted = sum("ok" in python_verdict(data) for data in inputs)
    print(f"{count} inputs compared, {accepted} accepted, {disagreements} disagreements;")
    print(
        f"from_slice and from_str disagree on {slice_str_differ} (invalid UTF-8 in a skipped value)"
    )


if __name__ == "__main__":
    if sys.argv[1:2] == ["record"]:
        record()
    elif sys.argv[1:2] == ["fuzz"]:
        fuzz(int(sys.argv[2]))
    else:
        sys.exit(__doc__)

"""The README's Telemetry section says what the code does: its example runs and prints
what it shows, and its tables of metrics and events are the driver's."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from aa_storage_redis.events import EVENTS
from aa_storage_redis.gauges import GAUGES
from servers import RedisServer
from test_docs import README, code_blocks, section

# One line of the example's output: span id, name, kind, parent, and what it sent where.
_LINE = re.compile(
    r"(?P<id>[0-9a-f]{16}) (?P<name>[\w ]+) \((?P<kind>[A-Z]+), "
    r"(?:child of (?P<parent>[0-9a-f]{16})|root)\)(?: (?P<did>.+) on 127\.0\.0\.1:(?P<port>\d+))?"
)


@pytest.fixture(scope="module")
def telemetry() -> str:
    return section(README.read_text(encoding="utf-8"), "Telemetry")


def shape(lines: list[str]) -> list[tuple[str, str, bool, str | None]]:
    """Each span's name, kind, whether it has a parent, and what it sent, checking on
    the way that the three calls are children of the action: ids differ per run."""
    parsed = [_LINE.fullmatch(line) for line in lines]
    assert all(parsed), lines
    matches = [match for match in parsed if match is not None]
    root = matches[-1]
    assert root["name"] == "gateway action"
    assert all(match["parent"] == root["id"] for match in matches[:-1])
    calls = sorted(
        (match["name"], match["kind"], True, _first_run(match["did"])) for match in matches[:-1]
    )
    return [*calls, (root["name"], root["kind"], False, None)]


def _first_run(did: str | None) -> str | None:
    # The first run of a script on a server sends it with EVAL, later runs with EVALSHA.
    return None if did is None else did.replace("EVALSHA", "EVAL")


def test_the_example_prints_the_trace_it_shows(
    telemetry: str, redis_server: RedisServer, tmp_path: Path
) -> None:
    """Run as the README says, against a test server, the example prints one line per span:
    the three calls of the action as its children, naming what each sent, then the action."""
    [example] = [block for block in code_blocks(telemetry, "python") if block.file_name]
    [shown] = code_blocks(telemetry, "text")
    (tmp_path / "traced_action.py").write_text(example.code, encoding="utf-8")
    result = subprocess.run(
        [sys.executable, "traced_action.py"],
        cwd=tmp_path,
        env={**os.environ, "REDIS_URL": f"redis://127.0.0.1:{redis_server.port}"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (result.returncode, result.stderr) == (0, "")
    printed = result.stdout.splitlines()
    assert shape(printed) == shape(shown.code.splitlines())
    ports = {match["port"] for match in map(_LINE.fullmatch, printed) if match and match["port"]}
    assert ports == {str(redis_server.port)}


def table(text: str, first_header: str) -> list[list[str]]:
    """The rows of the Markdown table whose first column is headed ``first_header``,
    each cell stripped of its backticks."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {first_header} |"))
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip().strip("`") for cell in line.strip("|").split("|")])
    return rows


def test_the_metrics_table_is_the_drivers(telemetry: str) -> None:
    """Every observed count is listed with its unit and the stats() field it reads,
    beside the duration histogram and the events counter, and nothing else is."""
    rows = {row[0]: row for row in table(telemetry, "metric")}
    assert rows.pop("db.client.operation.duration")[1:3] == ["histogram", "s"]
    assert rows.pop("aa_storage.redis.events")[1:3] == ["counter", "{event}"]
    kinds = {"counter": "counter", "up_down_counter": "up-down counter"}
    assert {name: (row[1], row[2].strip("`"), row[4].strip("`")) for name, row in rows.items()} == {
        gauge.name: (kinds[gauge.kind], gauge.unit, gauge.stat) for gauge in GAUGES
    }


def test_the_events_table_is_the_drivers(telemetry: str) -> None:
    """Every event is listed with the logger its records go to, and nothing else is."""
    rows = table(telemetry, "event (`stats()` field)")
    assert {row[0]: row[1] for row in rows} == {event.name: event.logger.name for event in EVENTS}

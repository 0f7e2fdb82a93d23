"""What telemetry costs, for ``aa-storage bench``: ``increment`` with the run's
callers, on three backends, in one spawned process.

- ``telemetry = false``;
- on, with no SDK behind the OpenTelemetry API (what every user without one gets);
- on, with the SDK: metrics read every second and exported, spans recorded but
  not exported; then spans exported too, by a batch span processor. Both export
  over OTLP/HTTP to a stand-in collector in a process of its own when
  ``opentelemetry-exporter-otlp-proto-http`` is installed, else through the
  console exporters to /dev/null.

The first two run in :data:`ROUNDS` pairs of short rounds, alternating which
goes first; each row shows the median round, and a line the paired differences.
The SDK's comes last: the global providers cannot be unset in a process, which is
also why all of this runs in a process of its own. Each reports throughput and
CPU time (user + system, the exporter's threads included) per operation.

Beside them, the cost of the hooks that stay on the hot path with no SDK
(entering and leaving an unobserved operation, and the executor's check),
timed alone, as a share of an operation's CPU time.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import multiprocessing
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from multiprocessing.connection import Connection
from typing import Any

import attrs

from aa_storage import StorageError
from aa_storage_redis.backend import RedisBackend
from aa_storage_redis.bench.operations import Caller, Subject, delete_made, operation_named
from aa_storage_redis.bench.timing import Budget, timed, warm
from aa_storage_redis.config import RedisStorageConfig
from aa_storage_redis.telemetry import LOOK_INTERVAL_SECS

INCREMENT = operation_named("increment")
ROUNDS = 10
"""Rounds of the first two ways, each a tenth of the budget, in pairs."""
OFF, NO_SDK = "off (telemetry = false)", "on, no SDK"
HOOK_CALLS = 200_000
_PATIENCE_SECS = 300.0


@attrs.frozen
class Cost:
    """One way of running: its throughput and its CPU time per operation."""

    label: str
    ops_per_sec: float
    cpu_us: float


@attrs.frozen
class TelemetryCost:
    """Each way, and the hooks' own cost per operation (µs). With the SDK, spans are
    first ``recorded`` only, then ``exported`` too; both are None without
    ``opentelemetry-sdk`` installed."""

    off: Cost
    no_sdk: Cost
    recorded: Cost | None
    exported: Cost | None
    hooks_us: float
    differences: list[float]
    """The second way's CPU per operation over the first's, minus 1, round by round,
    in order."""
    callers: int

    def lines(self) -> Iterator[str]:
        yield (
            f"telemetry, increment with {self.callers} callers "
            f"(the median of {ROUNDS} rounds; with the SDK, one):"
        )
        if self.recorded is None:
            yield "  with the SDK: not measured, opentelemetry-sdk is not installed"
        for cost in (self.off, self.no_sdk, self.recorded, self.exported):
            if cost is None:
                continue
            extra = cost.cpu_us / self.off.cpu_us - 1
            versus = "" if cost is self.off else f"   {extra:+.1%} CPU per operation"
            yield (
                f"  {cost.label:<46} {cost.ops_per_sec:>10,.0f} ops/s "
                f"{cost.cpu_us:>7.1f} us CPU per operation{versus}"
            )
        low, high = _quartiles(self.differences)
        yield (
            f"  no SDK against off, round by round: {_middle(self.differences):+.1%} CPU per "
            f"operation at the median, the middle half of {ROUNDS} rounds between "
            f"{low:+.1%} and {high:+.1%}"
        )
        share = self.hooks_us / self.no_sdk.cpu_us
        yield (
            f"  the telemetry hooks with no SDK, timed alone: {self.hooks_us:.2f} us per "
            f"operation, {share:.1%} of its CPU"
        )


def telemetry_cost(config: RedisStorageConfig, callers: int, budget: Budget) -> TelemetryCost:
    """Measure in a spawned process (see the module doc)."""
    context = multiprocessing.get_context("spawn")
    ours, theirs = context.Pipe(duplex=False)
    process = context.Process(target=_measure_in_child, args=(config, callers, budget, theirs))
    process.start()
    theirs.close()
    try:
        if not ours.poll(_PATIENCE_SECS):
            raise StorageError(f"the telemetry case gave no figures in {_PATIENCE_SECS}s")
        outcome: TelemetryCost | str = ours.recv()
    finally:
        process.join(10.0)
        if process.is_alive():
            process.kill()
    if isinstance(outcome, str):
        raise StorageError(f"the telemetry case failed: {outcome}")
    return outcome


def _measure_in_child(
    config: RedisStorageConfig, callers: int, budget: Budget, pipe: Connection
) -> None:
    try:
        pipe.send(asyncio.run(_measure(config, callers, budget)))
    except BaseException as exc:
        pipe.send(f"{type(exc).__name__}: {exc}")


async def _measure(config: RedisStorageConfig, callers: int, budget: Budget) -> TelemetryCost:
    prefix = f"{config.key_prefix}bench-{uuid.uuid4().hex[:12]}:"
    off = RedisBackend.connect(attrs.evolve(config, key_prefix=prefix, telemetry=False))
    on = RedisBackend.connect(attrs.evolve(config, key_prefix=prefix, telemetry=True))
    counting = [Caller.new() for _ in range(callers)]
    try:
        # Short rounds in pairs, alternating which goes first, so that the machine's
        # drift (other processes, the server's own work) falls on both alike.
        share = _share(budget)
        pairs = []
        for number in range(ROUNDS):
            ways = [off, on] if number % 2 == 0 else [on, off]
            costs = {id(way): await _run("", way, counting, share) for way in ways}
            pairs.append((costs[id(off)], costs[id(on)]))
        typical_off = _median_of(OFF, [pair[0] for pair in pairs])
        typical_on = _median_of(NO_SDK, [pair[1] for pair in pairs])
        ratios = sorted(on_cost.cpu_us / off_cost.cpu_us - 1 for off_cost, on_cost in pairs)
        hooks_us = _hooks_us(on)
        recorded = exported = None
        if importlib.util.find_spec("opentelemetry.sdk") is not None:
            sdk = _Sdk()
            try:
                await asyncio.sleep(LOOK_INTERVAL_SECS)  # the backend looks for an SDK again
                recorded = await _run("on, SDK, spans not exported", on, counting, budget)
                sdk.export_spans()
                exported = await _run(f"on, SDK, {sdk.exporting}", on, counting, budget)
            finally:
                sdk.close()
        return TelemetryCost(typical_off, typical_on, recorded, exported, hooks_us, ratios, callers)
    finally:
        await delete_made(off, counting)
        await off.aclose()
        await on.aclose()


async def _run(label: str, backend: RedisBackend, callers: list[Caller], budget: Budget) -> Cost:
    """``increment`` by every caller through ``backend``, warmed up, then timed."""
    subject = Subject.over(backend)
    await warm(INCREMENT.driver, subject, callers)
    measured = await timed(INCREMENT.driver, subject, callers, budget)
    return Cost(label, measured.ops_per_sec, measured.cpu_us)


def _share(budget: Budget) -> Budget:
    """One round's part of ``budget``."""
    if budget.requests is not None:
        return Budget(budget.seconds, max(budget.requests // ROUNDS, 1))
    return Budget(budget.seconds / ROUNDS)


def _median_of(label: str, costs: list[Cost]) -> Cost:
    return Cost(
        label,
        _middle(sorted(cost.ops_per_sec for cost in costs)),
        _middle(sorted(cost.cpu_us for cost in costs)),
    )


def _middle(ordered: list[float]) -> float:
    return ordered[len(ordered) // 2]


def _quartiles(ordered: list[float]) -> tuple[float, float]:
    return ordered[len(ordered) // 4], ordered[(3 * len(ordered)) // 4]


def _hooks_us(backend: RedisBackend) -> float:
    """The µs per operation of what telemetry adds to the hot path with no SDK."""
    telemetry = backend.pool.telemetry
    started = time.process_time()
    for _ in range(HOOK_CALLS):
        with telemetry.operation("increment"):
            if telemetry.on:
                pass
    hooks = time.process_time() - started
    started = time.process_time()
    for _ in range(HOOK_CALLS):
        pass
    empty = time.process_time() - started
    return max(hooks - empty, 0.0) / HOOK_CALLS * 1e6


class _Sdk:
    """The SDK set up as the global providers: metrics exported every second from the
    start, spans recorded but not exported until :meth:`export_spans`."""

    def __init__(self) -> None:
        from opentelemetry import metrics, trace
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
        from opentelemetry.sdk.trace import TracerProvider

        # Past its queue (2,048 spans) the batch processor drops spans, as it would in
        # production, and warns of each drop: the bench prints figures only.
        logging.getLogger("opentelemetry").setLevel(logging.ERROR)
        self._collector: subprocess.Popen[str] | None = None
        spans, measurements, self.exporting = self._exporters()
        self._spans = spans
        self._tracer_provider = TracerProvider()
        trace.set_tracer_provider(self._tracer_provider)
        reader = PeriodicExportingMetricReader(measurements, export_interval_millis=1000)
        metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))

    def export_spans(self) -> None:
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        self._tracer_provider.add_span_processor(BatchSpanProcessor(self._spans))

    def _exporters(self) -> tuple[Any, Any, str]:
        """OTLP/HTTP to a collector stand-in in a process of its own when
        ``opentelemetry-exporter-otlp-proto-http`` is installed and the stand-in
        starts, else the console exporters writing to /dev/null."""
        try:
            from opentelemetry.exporter.otlp.proto.http.metric_exporter import (
                OTLPMetricExporter,
            )
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        except ImportError:
            return self._console("console exporters to /dev/null")
        self._collector = subprocess.Popen(
            [sys.executable, "-c", _COLLECTOR], stdout=subprocess.PIPE, text=True
        )
        assert self._collector.stdout is not None
        # Its first line is its URL; a stand-in that failed to start closes its
        # output instead, and the line is empty.
        url = self._collector.stdout.readline().strip()
        if not url.startswith("http://"):
            return self._console("console exporters to /dev/null (the collector did not start)")
        return (
            OTLPSpanExporter(endpoint=f"{url}/v1/traces"),
            OTLPMetricExporter(endpoint=f"{url}/v1/metrics"),
            "OTLP/HTTP to a local collector",
        )

    @staticmethod
    def _console(label: str) -> tuple[Any, Any, str]:
        from opentelemetry.sdk.metrics.export import ConsoleMetricExporter
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        sink = open(os.devnull, "w")  # noqa: SIM115 - written to until the process ends
        return ConsoleSpanExporter(out=sink), ConsoleMetricExporter(out=sink), label

    def close(self) -> None:
        from opentelemetry import metrics

        self._tracer_provider.shutdown()
        provider = metrics.get_meter_provider()
        shutdown = getattr(provider, "shutdown", None)
        if shutdown is not None:
            shutdown()
        if self._collector is not None:
            self._collector.kill()
            self._collector.wait()
            assert self._collector.stdout is not None
            self._collector.stdout.close()


# A stand-in for a collector: takes every export on a free loopback port and drops it.
_COLLECTOR = """
import http.server

class Drop(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass

server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Drop)
print(f"http://127.0.0.1:{server.server_address[1]}", flush=True)
server.serve_forever()
"""

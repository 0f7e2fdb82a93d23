"""Telemetry, read through the OpenTelemetry SDK's in-memory exporter and metric reader,
against real servers: the spans' attributes per the database and Redis conventions,
their parents, failures, the node that served each key on a cluster, the events,
the metrics beside ``stats()``, the driver's log records, and silence when off."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Iterator
from typing import Any

import attrs
import pytest
from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from redis import exceptions as redis_errors
from redis.crc import key_slot

from aa_storage import (
    AgentId,
    BackendError,
    NotFoundError,
    SerializationError,
    SessionId,
    SessionRecord,
)
from aa_storage.testing import a_policy, bounded
from aa_storage_redis import RedisBackend, telemetry
from aa_storage_redis.errors import status_code
from aa_storage_redis.events import EVENTS
from aa_storage_redis.gauges import GAUGES
from aa_storage_redis.sentinel import Sentinel
from aa_storage_redis.stats import EVENT_COUNTS, Counters, ExecutorStats
from aa_storage_redis.telemetry import Telemetry
from cluster import LocalCluster
from executor_support import OpenBackend
from faultproxy import FaultProxyFactory
from servers import RedisServer
from test_redis_near_cache import kill_tracking, tracking_up
from test_sentinel_events import OLD, a_node, hear, no_sentinel
from waiting import eventually


@attrs.define
class Otel:
    """An SDK set up as the global providers would be, for one test."""

    spans: InMemorySpanExporter
    metrics: InMemoryMetricReader
    tracer: trace.Tracer

    def finished(self, name: str | None = None) -> list[ReadableSpan]:
        return [
            span
            for span in self.spans.get_finished_spans()
            if span.instrumentation_scope is not None
            and span.instrumentation_scope.name == telemetry.SCOPE
            and (name is None or span.name == name)
        ]

    def points(self, metric: str, backend: RedisBackend) -> list[Any]:
        """The data points of ``metric`` that ``backend`` reported."""
        pool = backend.pool.telemetry.pool_name
        found = []
        data = self.metrics.get_metrics_data()
        for resource in data.resource_metrics if data is not None else ():
            for scope in resource.scope_metrics:
                if (scope.scope.attributes or {}).get("db.client.connection.pool.name") != pool:
                    continue
                for each in scope.metrics:
                    if each.name == metric:
                        found += list(each.data.data_points)
        return found

    def value(self, metric: str, backend: RedisBackend, **attributes: str) -> int:
        [point] = [
            point
            for point in self.points(metric, backend)
            if attributes.items() <= dict(point.attributes).items()
        ]
        return int(point.value)


@pytest.fixture
def otel(monkeypatch: pytest.MonkeyPatch) -> Iterator[Otel]:
    """An SDK with in-memory exporters that the driver takes for the global providers."""
    spans = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader])
    monkeypatch.setattr(telemetry, "global_providers", lambda: (tracer_provider, meter_provider))
    yield Otel(spans, reader, tracer_provider.get_tracer("the gateway"))
    tracer_provider.shutdown()
    meter_provider.shutdown()


def an_agent() -> AgentId:
    return AgentId.new()


class TestSpans:
    @pytest.mark.asyncio
    async def test_an_operation_is_one_client_span_with_the_conventions_attributes(
        self, otel: Otel, redis_server: RedisServer, open_backend: OpenBackend
    ) -> None:
        """A count is one CLIENT span named after the store operation, with the Redis
        system, the operation, the server that served it and the script it ran."""
        backend = open_backend(f"redis://127.0.0.1:{redis_server.port}/3")
        await backend.rate_limiter().increment(f"t:{uuid.uuid4()}", 1, 60)
        [span] = otel.finished()
        assert span.name == "increment"
        assert span.kind is trace.SpanKind.CLIENT
        assert dict(span.attributes or {}) == {
            "db.system.name": "redis",
            "db.operation.name": "increment",
            "db.namespace": "3",
            "server.address": "127.0.0.1",
            "server.port": redis_server.port,
            "db.query.summary": "EVAL increment",
        }
        assert span.status.status_code is trace.StatusCode.UNSET

    @pytest.mark.asyncio
    async def test_spans_are_children_of_the_callers_span(
        self, otel: Otel, redis_url: str, open_backend: OpenBackend
    ) -> None:
        """The three calls of one gateway action are children of the action's span."""
        backend = open_backend(redis_url)
        agent = an_agent()
        await backend.policies().cache_policy(agent, a_policy(), 60)
        otel.spans.clear()
        with otel.tracer.start_as_current_span("action") as action:
            await asyncio.gather(
                backend.policies().get_policy(agent),
                backend.rate_limiter().increment(f"t:{uuid.uuid4()}", 1, 60),
                backend.sessions().save(SessionRecord(SessionId.new(), agent, 1)),
            )
        spans = otel.finished()
        assert sorted(span.name for span in spans) == ["get_policy", "increment", "save"]
        for span in spans:
            assert span.parent is not None
            assert span.parent.span_id == action.get_span_context().span_id
            assert span.context.trace_id == action.get_span_context().trace_id

    @pytest.mark.asyncio
    async def test_get_or_load_is_one_span_for_its_read_lease_and_write_back(
        self, otel: Otel, redis_url: str, open_backend: OpenBackend
    ) -> None:
        """A miss that loads is one ``get_or_load`` span (its read is not a span of its
        own), naming each command and script it sent."""
        backend = open_backend(redis_url)

        async def loader(agent: AgentId) -> Any:
            return a_policy()

        await backend.policies().get_or_load(an_agent(), loader, 60)
        [span] = otel.finished()
        assert span.name == "get_or_load"
        summary = str((span.attributes or {})["db.query.summary"])
        assert summary.split("; ")[0] == "GET"
        assert "get_or_lease" in summary
        assert "fill" in summary
        assert backend.stats().loads_run == 1

    @pytest.mark.asyncio
    async def test_a_refused_command_fails_its_span_with_the_error_prefix(
        self, otel: Otel, redis_url: str, open_backend: OpenBackend, raw: Any
    ) -> None:
        """A count on a key of the wrong type ends its span in error, with the server's
        error prefix as ``error.type`` and ``db.response.status_code``."""
        backend = open_backend(redis_url)
        name = f"t:{uuid.uuid4()}"
        raw.hset(f"aa:ratelimit:{name}", "a", "b")
        with pytest.raises(SerializationError):
            await backend.rate_limiter().current(name)
        [span] = otel.finished()
        assert span.status.status_code is trace.StatusCode.ERROR
        assert (span.attributes or {})["error.type"] == "WRONGTYPE"
        assert (span.attributes or {})["db.response.status_code"] == "WRONGTYPE"
        [point] = otel.points("db.client.operation.duration", backend)
        assert point.attributes["error.type"] == "WRONGTYPE"
        assert point.attributes["db.operation.name"] == "current"

    @pytest.mark.asyncio
    async def test_retries_are_span_events_and_an_unreachable_server_a_failed_span(
        self, otel: Otel, redis_server: RedisServer, open_backend: OpenBackend, fault_proxy: Any
    ) -> None:
        """A read against a server that refuses connections is tried ``retries`` more
        times, each a ``retry`` event, and its span fails with the error's class."""
        proxy = fault_proxy(redis_server.port)
        proxy.refuse()
        backend = open_backend(proxy.url, retries=2)
        with pytest.raises(BackendError):
            await bounded(backend.sessions().load(SessionId.new()))
        [span] = otel.finished("load")
        assert [event.name for event in span.events] == ["retry", "retry"]
        assert (span.attributes or {})["error.type"] == "aa_storage.errors.BackendError"
        assert "db.response.status_code" not in (span.attributes or {})
        assert backend.stats().retries == 2

    @pytest.mark.asyncio
    async def test_a_miss_is_no_error(
        self, otel: Otel, redis_url: str, open_backend: OpenBackend
    ) -> None:
        """A policy not cached is the answer, not a failure of the call."""
        backend = open_backend(redis_url)
        with pytest.raises(NotFoundError):
            await backend.policies().get_policy(an_agent())
        [span] = otel.finished("get_policy")
        assert span.status.status_code is trace.StatusCode.UNSET
        assert "error.type" not in (span.attributes or {})

    @pytest.mark.asyncio
    async def test_a_near_cache_hit_makes_no_span_and_is_counted(
        self, otel: Otel, redis_url: str, open_backend: OpenBackend
    ) -> None:
        """The first read fills the near-cache (a span); the hits after it send nothing,
        make no span, and show in the hit count."""
        backend = open_backend(redis_url, near_cache=True)
        agent = an_agent()
        await backend.policies().cache_policy(agent, a_policy(), 60)
        policies = backend.policies()

        async def until_a_hit() -> None:  # tracking comes up, then a read fills it
            while backend.stats().near_cache_hits == 0:
                await policies.get_policy(agent)
                await asyncio.sleep(0.01)

        await bounded(until_a_hit())
        otel.spans.clear()
        for _ in range(5):
            await policies.get_policy(agent)
        assert otel.finished() == []
        assert otel.value("aa_storage.redis.near_cache.hits", backend) == 6

    @pytest.mark.asyncio
    async def test_writes_with_wait_are_a_batch_of_two(
        self, otel: Otel, redis_url: str, open_backend: OpenBackend
    ) -> None:
        """With ``wait_replicas``, a write goes out with its WAIT: a batch of two. (No
        replica answers here, so the write fails as unconfirmed.)"""
        backend = open_backend(redis_url, wait_replicas=1, wait_timeout=0.05)
        with pytest.raises(BackendError, match="replicas confirmed"):
            await backend.rate_limiter().reset(f"t:{uuid.uuid4()}")
        [span] = otel.finished("reset")
        assert (span.attributes or {})["db.operation.batch.size"] == 2

    @pytest.mark.asyncio
    async def test_a_cancelled_call_ends_its_span_as_cancelled(
        self,
        otel: Otel,
        redis_server: RedisServer,
        open_backend: OpenBackend,
        fault_proxy: FaultProxyFactory,
    ) -> None:
        """A call cancelled while its command awaits the reply ends its span in error,
        with ``error.type`` ``cancelled``."""
        proxy = fault_proxy(redis_server.port)
        backend = open_backend(proxy.url, socket_timeout=1.0)
        await backend.rate_limiter().current("open a connection")
        otel.spans.clear()
        proxy.blackhole()
        call = asyncio.ensure_future(backend.rate_limiter().current("t"))
        await eventually(lambda: backend.stats().pending == 1, "the command is sent")
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        [span] = otel.finished("current")
        assert (span.attributes or {})["error.type"] == "cancelled"
        assert span.status.status_code is trace.StatusCode.ERROR


@pytest.mark.parametrize(
    ("error", "prefix"),
    [
        (redis_errors.ResponseError("WRONGTYPE Operation against a key"), "WRONGTYPE"),
        (redis_errors.ResponseError("unknown command 'FOO'"), "ERR"),
        (redis_errors.NoPermissionError("this user has no permissions"), "NOPERM"),
        (redis_errors.NoScriptError("No matching script"), "NOSCRIPT"),
        (redis_errors.ReadOnlyError("You can't write against a read only replica."), "READONLY"),
        (redis_errors.OutOfMemoryError("command not allowed when used memory"), "OOM"),
        (redis_errors.BusyLoadingError("Redis is loading"), "LOADING"),
        (redis_errors.ConnectionError("Connection reset by peer"), None),
        (redis_errors.TimeoutError("Timeout reading from socket"), None),
    ],
)
def test_the_status_code_is_the_error_replys_prefix(
    error: redis_errors.RedisError, prefix: str | None
) -> None:
    """``db.response.status_code`` is the prefix of the server's error reply, the one
    redis-py strips too ("ERR" for its plain errors), and none for a failure that was
    no reply."""
    assert status_code(error) == prefix


class TestCluster:
    @pytest.mark.asyncio
    async def test_each_span_names_the_node_that_served_its_key(
        self, otel: Otel, redis_cluster: LocalCluster, open_backend: OpenBackend
    ) -> None:
        """On a cluster, a count's span names the primary that owns its key's slot."""
        backend = open_backend(redis_cluster.url)
        counters = backend.rate_limiter()
        names = [f"node:{index}" for index in range(12)]
        for name in names:
            await counters.increment(name, 1, 60)
        spans = otel.finished("increment")
        assert len(spans) == len(names)
        served = set()
        for name, span in zip(names, spans, strict=True):
            owner = redis_cluster.primary_for_slot(key_slot(f"aa:ratelimit:{name}".encode()))
            assert (span.attributes or {})["server.port"] == owner.port
            served.add(owner.port)
        assert len(served) > 1, "the keys should spread over several primaries"

    @pytest.mark.asyncio
    async def test_a_moved_slot_is_a_redirect_event_and_a_logged_map_change(
        self,
        otel: Otel,
        redis_cluster: LocalCluster,
        open_backend: OpenBackend,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        """After a slot moves, the next call follows MOVED (a ``redirect`` event), and
        the map change is a log record tied to that call's trace, and counted."""
        backend = open_backend(redis_cluster.url)
        counters = backend.rate_limiter()
        name = "moving"
        slot = key_slot(f"aa:ratelimit:{name}".encode())
        await counters.increment(name, 1, 60)
        source = redis_cluster.primary_for_slot(slot)
        target = next(node for node in redis_cluster.primaries() if node is not source)
        redis_cluster.migrate_slot(slot, source, target)
        try:
            otel.spans.clear()
            with caplog.at_level(logging.WARNING, logger="aa_storage_redis.cluster"):
                await counters.increment(name, 1, 60)
            [span] = otel.finished("increment")
            assert "redirect" in [event.name for event in span.events]
            assert (span.attributes or {})["server.port"] == target.port
            [record] = [r for r in caplog.records if r.name == "aa_storage_redis.cluster"]
            assert record.aa_storage_event == "slot_map_changes"  # type: ignore[attr-defined]
            assert record.otelTraceID == format(span.context.trace_id, "032x")  # type: ignore[attr-defined]
            stats = backend.stats()
            assert stats.redirects >= 1
            assert stats.slot_map_changes >= 1
        finally:
            redis_cluster.migrate_slot(slot, target, source)


class TestMetrics:
    @pytest.mark.asyncio
    async def test_the_counts_agree_with_stats(
        self, otel: Otel, redis_url: str, open_backend: OpenBackend
    ) -> None:
        """Every observed count is the ``stats()`` field it is named after, and each
        event's count is under ``aa_storage.event``."""
        backend = open_backend(redis_url, near_cache=True)
        agent = an_agent()

        async def loader(agent: AgentId) -> Any:
            return a_policy()

        await backend.policies().get_or_load(agent, loader, 60)
        for _ in range(3):
            await backend.policies().get_policy(agent)
            await backend.rate_limiter().increment(f"t:{uuid.uuid4()}", 1, 60)
        stats = backend.stats()
        for gauge in GAUGES:
            assert otel.value(gauge.name, backend) == getattr(stats, gauge.stat), gauge.name
        for event in EVENTS:
            assert otel.value(
                "aa_storage.redis.events", backend, **{"aa_storage.event": event.name}
            ) == getattr(stats, event.name)
        assert stats.loads_run == 1
        assert stats.connections_open >= 1

    @pytest.mark.asyncio
    async def test_the_duration_histogram_counts_each_operation_that_did_io(
        self, otel: Otel, redis_url: str, open_backend: OpenBackend
    ) -> None:
        """``db.client.operation.duration`` is in seconds, per operation, one count per call."""
        backend = open_backend(redis_url)
        for _ in range(4):
            await backend.rate_limiter().increment(f"t:{uuid.uuid4()}", 1, 60)
        await backend.sessions().delete(SessionId.new())
        points = {
            point.attributes["db.operation.name"]: point
            for point in otel.points("db.client.operation.duration", backend)
        }
        assert {name: point.count for name, point in points.items()} == {
            "increment": 4,
            "delete": 1,
        }
        assert 0 < points["increment"].sum < 4 * 30


class TestEvents:
    @pytest.mark.asyncio
    async def test_a_lost_connection_is_logged_counted_and_carries_no_stale_trace(
        self,
        otel: Otel,
        redis_server: RedisServer,
        open_backend: OpenBackend,
        fault_proxy: FaultProxyFactory,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        """A connection the network drops is one record on ``aa_storage_redis.connection``,
        counted in ``stats()``. It is seen in the background, so it carries no trace:
        not that of the call that happened to open the connection."""
        proxy = fault_proxy(redis_server.port)
        backend = open_backend(proxy.url)
        with otel.tracer.start_as_current_span("opened the connection"):
            await backend.rate_limiter().current("t")
        with caplog.at_level(logging.WARNING, logger="aa_storage_redis.connection"):
            proxy.sever()
            await eventually(lambda: backend.stats().connections_lost == 1, "the loss is seen")
        [record] = [r for r in caplog.records if r.name == "aa_storage_redis.connection"]
        assert record.aa_storage_event == "connections_lost"  # type: ignore[attr-defined]
        assert record.otelTraceID == "0"  # type: ignore[attr-defined]
        assert backend.stats().connections_open == 0
        assert await backend.rate_limiter().current("t") == 0  # and it reconnects
        assert backend.stats().connections_open == 1


def test_every_counter_is_in_the_snapshot() -> None:
    """The snapshot has a field for each of the executor's counters, and beside them
    only the near-cache's, which the backend adds: a count kept but never shown, or
    shown but never kept, fails here."""
    kept = [field.name for field in attrs.fields(Counters)]
    shown = [field.name for field in attrs.fields(ExecutorStats)]
    assert shown == [*kept, "near_cache_hits", "near_cache_misses", "near_cache_flushes"]


def test_every_event_has_its_count() -> None:
    """Each kind of event is counted by a field of its own, and each such field is an event's."""
    assert sorted(event.name for event in EVENTS) == sorted(EVENT_COUNTS)


class TestOff:
    @pytest.mark.asyncio
    async def test_telemetry_false_emits_nothing(
        self, otel: Otel, redis_url: str, open_backend: OpenBackend
    ) -> None:
        """With ``telemetry = false`` there are no spans and no metrics for the backend."""
        backend = open_backend(redis_url, telemetry=False)
        await backend.rate_limiter().increment(f"t:{uuid.uuid4()}", 1, 60)
        await backend.sessions().delete(SessionId.new())
        assert otel.finished() == []
        assert otel.points("db.client.operation.duration", backend) == []
        assert otel.points("aa_storage.redis.retries", backend) == []
        assert backend.pool.telemetry.on is False

    @pytest.mark.asyncio
    async def test_without_an_sdk_nothing_is_built(
        self, redis_url: str, open_backend: OpenBackend, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Behind the API's own providers (no SDK), operations are not observed: no
        operation is under way while a store call runs."""
        behind_the_api_alone(monkeypatch)
        backend = open_backend(redis_url)
        seen = []

        async def loader(agent: AgentId) -> Any:
            seen.append(telemetry.current())
            return a_policy()

        await backend.policies().get_or_load(an_agent(), loader, 60)
        assert seen == [None]
        assert backend.pool.telemetry.on is False

    @pytest.mark.asyncio
    async def test_a_provider_set_later_is_followed(
        self,
        redis_url: str,
        open_backend: OpenBackend,
        monkeypatch: pytest.MonkeyPatch,
        otel: Otel,
    ) -> None:
        """A backend used before the SDK was set up emits once it is (the look for one
        is repeated every LOOK_INTERVAL_SECS; here at once)."""
        chosen = telemetry.global_providers
        behind_the_api_alone(monkeypatch)
        monkeypatch.setattr(telemetry, "LOOK_INTERVAL_SECS", 0.0)
        backend = open_backend(redis_url)
        await backend.rate_limiter().increment(f"t:{uuid.uuid4()}", 1, 60)
        assert otel.finished() == []
        monkeypatch.setattr(telemetry, "global_providers", chosen)
        await backend.rate_limiter().increment(f"t:{uuid.uuid4()}", 1, 60)
        assert [span.name for span in otel.finished()] == ["increment"]


class TestCheck:
    @pytest.mark.asyncio
    async def test_describe_says_what_telemetry_does(
        self, redis_url: str, open_backend: OpenBackend, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """``check`` (``describe()``) says whether telemetry is off, waits for an SDK, or
        emits traces and metrics."""

        async def told(**settings: Any) -> str:
            return dict((await open_backend(redis_url, **settings).describe()).facts)["telemetry"]

        assert await told(telemetry=False) == "off: telemetry = false"
        behind_the_api_alone(monkeypatch)
        assert await told() == (
            "on, but no SDK is set up behind the OpenTelemetry API: nothing is emitted"
        )
        monkeypatch.setattr(
            telemetry, "global_providers", lambda: (TracerProvider(), metrics.NoOpMeterProvider())
        )
        assert await told() == "on: traces"
        monkeypatch.setattr(telemetry, "API", False)
        assert await told() == (
            "off: opentelemetry-api is not installed (pip install 'aa-storage[otel]')"
        )


def behind_the_api_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the global providers the API's own no-op ones: no SDK is set up."""
    monkeypatch.setattr(
        telemetry,
        "global_providers",
        lambda: (trace.NoOpTracerProvider(), metrics.NoOpMeterProvider()),
    )


class TestWaits:
    @pytest.mark.asyncio
    async def test_a_caller_waiting_for_anothers_load_has_a_lease_wait_event(
        self, otel: Otel, redis_url: str, open_backend: OpenBackend
    ) -> None:
        """A get_or_load that finds another process's load under way waits for it: a
        ``lease wait`` event on its span, counted; the loader ran in the other only."""
        first, second = open_backend(redis_url), open_backend(redis_url)
        agent = an_agent()
        release = asyncio.Event()

        async def slow(agent: AgentId) -> Any:
            await release.wait()
            return a_policy()

        async def never(agent: AgentId) -> Any:
            raise AssertionError("the second caller must wait for the first one's load")

        leader = asyncio.ensure_future(first.policies().get_or_load(agent, slow, 60))
        await eventually(lambda: first.stats().loads_run == 1, "the first caller loads")
        waiter = asyncio.ensure_future(second.policies().get_or_load(agent, never, 60))
        await eventually(lambda: second.stats().lease_waits == 1, "the second one waits")
        release.set()
        await bounded(asyncio.gather(leader, waiter))
        pool = second.pool.telemetry.pool_name
        [span] = [
            span
            for span in otel.finished("get_or_load")
            if span.events and span.events[0].name == "lease wait"
        ]
        assert [event.name for event in span.events] == ["lease wait"]
        assert second.stats().loads_run == 0
        assert otel.value("aa_storage.redis.lease_waits", second) == 1
        assert otel.value("aa_storage.redis.loads", first) == 1
        assert pool != first.pool.telemetry.pool_name

    @pytest.mark.asyncio
    async def test_a_call_held_by_a_failover_has_the_event_and_the_hold_is_logged(
        self, otel: Otel, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
    ) -> None:
        """When the sentinels begin a failover, a record on ``aa_storage_redis.failover``
        says calls are held, counted once; a call that waits gets a ``failover hold``
        event on its span."""
        monkeypatch.setattr("aa_storage_redis.sentinel.FAILOVER_HOLD_SECS", 0.05)
        counters = Counters()
        sentinel = Sentinel(
            [("127.0.0.1", 26379)], "svc", a_node, no_sentinel, timeout=1.0, counters=counters
        )
        sentinel._primary = sentinel._nodes.at(OLD)
        observed = Telemetry(enabled=True, pool_name="held", namespace="0")
        try:
            with caplog.at_level(logging.WARNING, logger="aa_storage_redis.failover"):
                hear(sentinel, "+try-failover", "master svc 127.0.0.1 7001")
            [record] = caplog.records
            assert record.aa_storage_event == "failover_holds"  # type: ignore[attr-defined]
            assert counters.failover_holds == 1
            with observed.operation("increment"):
                await sentinel.discover()
            [span] = otel.finished("increment")
            assert [event.name for event in span.events] == ["failover hold"]
        finally:
            await sentinel.aclose()


class TestTracking:
    @pytest.mark.asyncio
    async def test_a_lost_tracking_connection_is_logged_and_counted_when_lost_and_back(
        self,
        otel: Otel,
        redis_server: RedisServer,
        redis_url: str,
        open_backend: OpenBackend,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        """Killing the near-cache's tracking connection is one ``tracking_lost`` record;
        its return, one ``tracking_restored``; the counts agree."""
        backend = open_backend(redis_url, near_cache=True)
        await tracking_up(backend)
        with caplog.at_level(logging.WARNING, logger="aa_storage_redis.tracking"):
            kill_tracking(redis_server)
            await eventually(lambda: backend.stats().tracking_lost == 1, "the loss is seen")
            await tracking_up(backend)
        events = [record.aa_storage_event for record in caplog.records]  # type: ignore[attr-defined]
        assert events == ["tracking_lost", "tracking_restored"]
        assert backend.stats().tracking_restored == 1
        assert (
            otel.value("aa_storage.redis.events", backend, **{"aa_storage.event": "tracking_lost"})
            == 1
        )

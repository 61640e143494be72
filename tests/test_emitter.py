"""AssessmentEmitter against real peers: OTLP sinks over gRPC and HTTP, an SDK MeterProvider, and a
real ParquetArchive read back with DuckDB."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span, Status
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from tracejudge.exporter.archive import ParquetArchive
from tracejudge.exporter.config import ArchiveConfig, ForwardEndpointConfig
from tracejudge.exporter.emitter import AssessmentEmitter
from tracejudge.exporter.forwarder import Forwarder
from tracejudge.exporter.queued_exporters import QueuedLogExporter, QueuedSpanExporter
from tracejudge.model import Assessment, AssessmentSourceType, Signal
from tracejudge.otlp import any_value, attributes_dict
from tracejudge.otlp_exporters import span_and_log_exporters
from tracejudge.testing import wait_until
from tracejudge.wal import WalConfig, WriteAheadLog

from archive_reader import query
from otlp_peers import GrpcSink, HttpSink

TRACE_ID = "5b8efff798038103d269b633813fc60c"
ROOT_SPAN_ID = "eee19b7ec3c1b174"
NOW = 1_767_225_600_000_000_000  # 2026-01-01T00:00:00Z


def sample_assessments() -> list[Assessment]:
    passed = Assessment(
        name="relevance",
        trace_id=TRACE_ID,
        span_id=ROOT_SPAN_ID,
        value=True,
        source=AssessmentSourceType.LLM_JUDGE,
        source_id="openai:/gpt-4.1-mini",
        score=1.0,
        label="yes",
        rationale="The answer addresses the question.",
        session_id="session-7",
        scorer_version=3,
        metadata={"prompt": "v2"},
        judge_input_tokens=812,
        judge_output_tokens=64,
        latency_ms=1500.0,
        timestamp_ns=NOW,
    )
    numeric = Assessment(
        name="groundedness",
        trace_id=TRACE_ID,
        span_id=ROOT_SPAN_ID,
        value=0.75,
        source=AssessmentSourceType.CODE,
        source_id="scorers:grounded",
        score=0.75,
        latency_ms=2.5,
        timestamp_ns=NOW + 1,
    )
    failed = Assessment(
        name="safety",
        trace_id=TRACE_ID,
        span_id=ROOT_SPAN_ID,
        value=None,
        source=AssessmentSourceType.LLM_JUDGE,
        source_id="openai:/gpt-4.1-mini",
        label="error",
        error="judge timed out after 30s",
        error_type="timeout",
        latency_ms=30_000.0,
        timestamp_ns=NOW + 2,
    )
    return [passed, numeric, failed]


@pytest.fixture
def reader() -> InMemoryMetricReader:
    return InMemoryMetricReader()


@pytest.fixture
def meter_provider(reader: InMemoryMetricReader) -> Any:
    provider = MeterProvider(metric_readers=[reader])
    yield provider
    provider.shutdown()


def points(reader: InMemoryMetricReader) -> dict[str, list[Any]]:
    """Metric name -> its data points."""
    found: dict[str, list[Any]] = {}
    data = reader.get_metrics_data()
    assert data is not None
    for resource_metrics in data.resource_metrics:
        for scope_metrics in resource_metrics.scope_metrics:
            for metric in scope_metrics.metrics:
                found.setdefault(metric.name, []).extend(metric.data.data_points)
    return found


def logs_of(received: Any) -> list[tuple[Any, Any]]:
    """(resource attributes, log record) for every record a sink received."""
    return [
        (attributes_dict(rl.resource.attributes), record)
        for request in received.requests("logs")
        for rl in request.resource_logs
        for sl in rl.scope_logs
        for record in sl.log_records
    ]


@pytest.mark.parametrize("transport", ["grpc", "http"])
def test_spans_events_and_log_records_reach_an_otlp_sink(
    transport: str, request: pytest.FixtureRequest, meter_provider: MeterProvider
) -> None:
    sink: GrpcSink | HttpSink = request.getfixturevalue(f"{transport}_sink")
    emitter = AssessmentEmitter(
        span_and_log_exporters(sink.url, {"X-Tenant": "t1"}), meter_provider.get_meter("tracejudge")
    )
    emitter.emit(sample_assessments())
    assert emitter.force_flush(10)
    assert wait_until(lambda: len(sink.received.spans()) == 3 and len(logs_of(sink.received)) == 3)

    resource = attributes_dict(sink.received.requests("traces")[0].resource_spans[0].resource.attributes)
    assert resource["service.name"] == "tracejudge"
    assert resource["service.version"]
    spans = {span.name: span for span in sink.received.spans()}
    assert set(spans) == {"evaluation relevance", "evaluation groundedness", "evaluation safety"}
    for span in spans.values():
        assert span.trace_id.hex() == TRACE_ID
        assert span.parent_span_id.hex() == ROOT_SPAN_ID
        assert span.span_id.hex() != ROOT_SPAN_ID
        assert span.kind == Span.SPAN_KIND_INTERNAL
        assert [event.name for event in span.events] == ["gen_ai.evaluation.result"]

    relevance = spans["evaluation relevance"]
    assert (relevance.start_time_unix_nano, relevance.end_time_unix_nano) == (NOW - 1_500_000_000, NOW)
    assert relevance.status.code == Status.STATUS_CODE_UNSET
    assert attributes_dict(relevance.events[0].attributes) == {
        "gen_ai.evaluation.name": "relevance",
        "gen_ai.evaluation.score.value": 1.0,
        "gen_ai.evaluation.score.label": "yes",
        "gen_ai.evaluation.explanation": "The answer addresses the question.",
    }
    assert relevance.events[0].attributes[1].value.WhichOneof("value") == "double_value"
    assert relevance.events[0].time_unix_nano == NOW
    span_attributes = attributes_dict(relevance.attributes)
    assert span_attributes == {
        "gen_ai.evaluation.name": "relevance",
        "tracejudge.assessment.source": "LLM_JUDGE",
        "tracejudge.assessment.source_id": "openai:/gpt-4.1-mini",
        "tracejudge.assessment.scorer_version": 3,
        "tracejudge.assessment.value": "true",
        "tracejudge.assessment.value_type": "bool",
        "tracejudge.assessment.judge.input_tokens": 812,
        "tracejudge.assessment.judge.output_tokens": 64,
        "tracejudge.assessment.latency_ms": 1500.0,
        "tracejudge.assessment.metadata": '{"prompt":"v2"}',
        "session.id": "session-7",
    }

    grounded = spans["evaluation groundedness"]
    assert attributes_dict(grounded.events[0].attributes) == {
        "gen_ai.evaluation.name": "groundedness",
        "gen_ai.evaluation.score.value": 0.75,
    }
    assert attributes_dict(grounded.attributes)["tracejudge.assessment.value"] == "0.75"

    safety = spans["evaluation safety"]
    assert safety.status.code == Status.STATUS_CODE_ERROR
    assert safety.status.message == "judge timed out after 30s"
    assert attributes_dict(safety.events[0].attributes) == {
        "gen_ai.evaluation.name": "safety",
        "gen_ai.evaluation.score.label": "error",
        "error.type": "timeout",
    }
    assert attributes_dict(safety.attributes)["tracejudge.assessment.error"] == "judge timed out after 30s"
    assert "tracejudge.assessment.value" not in attributes_dict(safety.attributes)

    records = {attributes_dict(r.attributes)["gen_ai.evaluation.name"]: (res, r) for res, r in logs_of(sink.received)}
    assert set(records) == {"relevance", "groundedness", "safety"}
    for log_resource, record in records.values():
        assert log_resource["service.name"] == "tracejudge"
        assert record.event_name == "gen_ai.evaluation.result"
        assert record.trace_id.hex() == TRACE_ID
        assert record.span_id.hex() == ROOT_SPAN_ID  # the evaluated span, not the evaluation span
    _, relevance_log = records["relevance"]
    assert relevance_log.time_unix_nano == NOW
    assert any_value(relevance_log.body) == "The answer addresses the question."
    assert attributes_dict(relevance_log.attributes) == {
        **attributes_dict(relevance.events[0].attributes),
        **{k: v for k, v in span_attributes.items() if k != "gen_ai.evaluation.name"},
    }
    _, safety_log = records["safety"]
    assert attributes_dict(safety_log.attributes)["error.type"] == "timeout"
    assert safety_log.severity_text == "WARN"
    assert '"error":"judge timed out after 30s"' in any_value(safety_log.body)
    emitter.shutdown()


def test_metrics_on_tracejudge_meter(meter_provider: MeterProvider, reader: InMemoryMetricReader) -> None:
    emitter = AssessmentEmitter(None, meter_provider.get_meter("tracejudge"))
    assert not emitter.otlp_enabled
    emitter.emit(sample_assessments())
    emitter.emit(sample_assessments()[:1])
    found = points(reader)

    scores = {p.attributes["gen_ai.evaluation.name"]: p for p in found["gen_ai.evaluation.score"]}
    assert set(scores) == {"relevance", "groundedness"}  # safety has no score
    assert (scores["relevance"].count, scores["relevance"].sum) == (2, 2.0)
    assert (scores["groundedness"].count, scores["groundedness"].sum) == (1, 0.75)

    counts = {tuple(sorted(p.attributes.items())): p.value for p in found["tracejudge.assessments"]}
    assert counts == {
        (("error_type", "none"), ("label", "yes"), ("name", "relevance"), ("source", "LLM_JUDGE")): 2,
        (("error_type", "none"), ("label", "none"), ("name", "groundedness"), ("source", "CODE")): 1,
        (("error_type", "timeout"), ("label", "error"), ("name", "safety"), ("source", "LLM_JUDGE")): 1,
    }
    latency = {p.attributes["name"]: (p.count, p.sum) for p in found["tracejudge.judge.latency"]}
    assert latency == {"relevance": (2, 3000.0), "groundedness": (1, 2.5), "safety": (1, 30_000.0)}
    tokens = {(p.attributes["name"], p.attributes["direction"]): p.value for p in found["tracejudge.judge.tokens"]}
    assert tokens == {("relevance", "input"): 1624, ("relevance", "output"): 128}


def _spans_request(trace_id: str, span_id: str) -> bytes:
    span = Span(
        trace_id=bytes.fromhex(trace_id),
        span_id=bytes.fromhex(span_id),
        name="invoke_agent",
        start_time_unix_nano=NOW - 5_000_000_000,
        end_time_unix_nano=NOW - 2_000_000_000,
    )
    service = KeyValue(key="service.name", value=AnyValue(string_value="agent-app"))
    resource_spans = ResourceSpans(scope_spans=[ScopeSpans(spans=[span])])
    resource_spans.resource.attributes.append(service)
    return ExportTraceServiceRequest(resource_spans=[resource_spans]).SerializeToString()


def test_archive_rows_join_spans_in_duckdb(tmp_path: Path, meter_provider: MeterProvider) -> None:
    meter = meter_provider.get_meter("tracejudge")
    wal = WriteAheadLog(tmp_path / "wal", WalConfig())
    archive = ParquetArchive(ArchiveConfig(), tmp_path, meter, wal.cursor("archive"))
    archive.start()
    try:
        wal.append(Signal.TRACES, _spans_request(TRACE_ID, ROOT_SPAN_ID), 1)
        emitter = AssessmentEmitter(None, meter, archive)
        emitter.emit(sample_assessments())
        emitter.shutdown()  # hands the batched rows to the archive
    finally:
        archive.shutdown()

    rows = query(
        tmp_path,
        "assessments",
        "SELECT name, value, value_type, score, label, error, error_type, source, session_id, scorer_version,"
        " metadata->>'$.prompt', judge_input_tokens, latency_ms, epoch_ns(timestamp), span_id, date IS NOT NULL"
        " FROM t ORDER BY timestamp",
    )
    assert rows == [
        ("relevance", "true", "bool", 1.0, "yes", None, None, "LLM_JUDGE", "session-7", 3, "v2", 812, 1500.0, NOW,
         ROOT_SPAN_ID, True),
        ("groundedness", "0.75", "float", 0.75, None, None, None, "CODE", None, 1, None, None, 2.5, NOW + 1,
         ROOT_SPAN_ID, True),
        ("safety", None, None, None, "error", "judge timed out after 30s", "timeout", "LLM_JUDGE", None, 1, None,
         None, 30_000.0, NOW + 2, ROOT_SPAN_ID, True),
    ]  # fmt: skip

    spans = f"read_parquet('{tmp_path}/spans/**/*.parquet', hive_partitioning = true)"
    joined = query(
        tmp_path,
        "assessments",
        f"SELECT s.name, s.service_name, a.name, a.score FROM t a JOIN {spans} s"
        " ON a.trace_id = s.trace_id AND a.span_id = s.span_id ORDER BY a.timestamp",
    )
    assert joined == [
        ("invoke_agent", "agent-app", "relevance", 1.0),
        ("invoke_agent", "agent-app", "groundedness", 0.75),
        ("invoke_agent", "agent-app", "safety", None),
    ]


class BrokenArchive:
    def __init__(self) -> None:
        self.calls = 0

    def write_rows(self, table: str, rows: Sequence[Mapping[str, Any]]) -> None:
        self.calls += 1
        raise OSError("disk on fire")


def test_failures_never_reach_the_caller(
    grpc_sink: GrpcSink, meter_provider: MeterProvider, reader: InMemoryMetricReader
) -> None:
    grpc_sink.failing = True
    archive = BrokenArchive()
    exporters = span_and_log_exporters(grpc_sink.url, timeout_s=0.5)
    emitter = AssessmentEmitter(exporters, meter_provider.get_meter("tracejudge"), archive)
    bad_ids = Assessment(
        name="relevance", trace_id="not-hex", span_id="", value=True, source=AssessmentSourceType.CODE, source_id="x"
    )
    started = time.monotonic()
    emitter.emit([*sample_assessments(), bad_ids])  # the sink is down, the archive raises, one id is bad
    assert time.monotonic() - started < 0.5  # only enqueued
    emitter.force_flush(5)
    assert archive.calls == 1  # the rows of both calls went in one batch, and it raised
    assert grpc_sink.received.spans() == []

    grpc_sink.failing = False
    emitter.emit(sample_assessments()[:1])
    assert emitter.force_flush(5)
    assert wait_until(lambda: len(grpc_sink.received.spans()) == 1)
    emitter.shutdown()
    emitter.shutdown()  # idempotent

    emitter.emit(sample_assessments())  # after shutdown: a no-op
    assert len(grpc_sink.received.spans()) == 1
    assert archive.calls == 2
    counts = sum(p.value for p in points(reader)["tracejudge.assessments"])
    assert counts == 5  # 3 + the one with bad ids + 1; nothing after shutdown


def test_unknown_scheme_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="grpc://host:port"):
        span_and_log_exporters("tcp://127.0.0.1:4317")


def test_without_an_endpoint_verdicts_go_where_the_apps_otel_settings_point(
    http_sink: HttpSink, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The in-process mode's default: the app's own OTEL_EXPORTER_OTLP_* settings, protocol included."""
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", http_sink.url)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
    emitter = AssessmentEmitter(span_and_log_exporters(None), None)
    emitter.emit(sample_assessments()[:1])
    assert emitter.force_flush(10)
    assert wait_until(lambda: len(http_sink.received.spans()) == 1 and len(logs_of(http_sink.received)) == 1)
    emitter.shutdown()
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")
    with pytest.raises(ValueError, match="grpc or http/protobuf"):
        span_and_log_exporters(None)


def test_the_sidecars_own_parts_carry_a_human_verdict(
    tmp_path: Path, grpc_sink: GrpcSink, meter_provider: MeterProvider
) -> None:
    """The emitter built from what the sidecar process holds (its write-ahead log, forwarder and archive),
    as human feedback will use it: the verdict reaches the backend through the forwarder, like app data,
    and the archive's assessments table."""
    meter = meter_provider.get_meter("tracejudge")
    wal = WriteAheadLog(tmp_path / "wal", WalConfig())
    forwarder = Forwarder([ForwardEndpointConfig(url=grpc_sink.url)], wal, meter)
    archive = ParquetArchive(ArchiveConfig(), tmp_path / "archive", meter, None)
    archive.start()
    forwarder.start()
    try:
        exporters = (QueuedSpanExporter(wal.append), QueuedLogExporter(wal.append))
        emitter = AssessmentEmitter(exporters, meter, archive)
        human = Assessment(name="thumbs", trace_id=TRACE_ID, span_id=ROOT_SPAN_ID, value=False,
                           source=AssessmentSourceType.HUMAN, source_id="user-42", rationale="Wrong refund window.",
                           timestamp_ns=NOW)  # fmt: skip
        emitter.emit([human])
        emitter.shutdown()
        assert wait_until(lambda: len(grpc_sink.received.spans()) == 1 and len(logs_of(grpc_sink.received)) == 1)
    finally:
        forwarder.shutdown(10)
        archive.shutdown()

    [span] = grpc_sink.received.spans()
    assert (span.name, span.trace_id.hex(), span.parent_span_id.hex()) == ("evaluation thumbs", TRACE_ID, ROOT_SPAN_ID)
    assert attributes_dict(span.attributes)["tracejudge.assessment.source"] == "HUMAN"
    [(_, record)] = logs_of(grpc_sink.received)
    assert any_value(record.body) == "Wrong refund window."
    assert query(tmp_path / "archive", "assessments", "SELECT name, value, source, source_id FROM t") == [
        ("thumbs", "false", "HUMAN", "user-42")
    ]

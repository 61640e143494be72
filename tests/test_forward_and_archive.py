"""OTLP in over gRPC and HTTP from real SDK exporters and raw clients; forwarded byte for byte; archived."""

from __future__ import annotations

import gzip
import json

import grpc
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcSpanExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpSpanExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from tracejudge.model import Signal
from tracejudge.otlp import GRPC_EXPORT_METHODS
from tracejudge.synthetic import genai_request
from tracejudge.testing import wait_until

from archive_reader import query
from otlp_peers import TRACE_METHOD, GrpcSink, HttpSink, post


def emit_with_sdk(exporter: object, service: str, traces: int) -> InMemorySpanExporter:
    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    provider.add_span_processor(SimpleSpanProcessor(memory))
    provider.add_span_processor(SimpleSpanProcessor(exporter))  # type: ignore[arg-type]
    tracer = provider.get_tracer("test-app")
    for turn in range(traces):
        with (
            tracer.start_as_current_span("invoke_agent", attributes={"session.id": f"s-{turn}"}),
            tracer.start_as_current_span("chat gpt-4.1-mini") as span,
        ):
            span.set_attribute("gen_ai.operation.name", "chat")
            span.set_attribute("gen_ai.request.model", "gpt-4.1-mini")
            span.set_attribute("gen_ai.usage.input_tokens", 42 + turn)
    provider.shutdown()
    return memory


def test_sdk_exporters_over_grpc_and_http_reach_downstream_and_archive(sidecar_factory, grpc_sink: GrpcSink):
    sidecar = sidecar_factory([grpc_sink.url], {"assembler": {"trace_idle": "200ms"}})
    via_grpc = emit_with_sdk(GrpcSpanExporter(endpoint=sidecar.grpc_target, insecure=True), "grpc-app", 5)
    via_http = emit_with_sdk(HttpSpanExporter(endpoint=f"{sidecar.http_url}/v1/traces"), "http-app", 5)
    sent = {s.context.span_id.to_bytes(8, "big") for m in (via_grpc, via_http) for s in m.get_finished_spans()}
    assert len(sent) == 20

    assert wait_until(lambda: grpc_sink.received.span_ids() == sent)
    assert wait_until(lambda: sidecar.metric("tracejudge_assembler_completed_traces_total") == 10)
    assert sidecar.metric("tracejudge_receiver_accepted_items_total", transport="grpc") == 10
    assert sidecar.metric("tracejudge_forwarder_sent_items_total", signal="traces") == 20
    sidecar.stop()

    archive = sidecar.data_dir / "archive"
    rows = query(archive, "spans", "SELECT service_name, count(*) FROM t GROUP BY 1 ORDER BY 1")
    assert rows == [("grpc-app", 10), ("http-app", 10)]
    tokens = query(
        archive,
        "spans",
        """SELECT sum(CAST(attributes->>'$."gen_ai.usage.input_tokens"' AS INT))
                                        FROM t WHERE name = 'chat gpt-4.1-mini'""",
    )
    assert tokens == [(2 * sum(42 + turn for turn in range(5)),)]
    traces = query(
        archive,
        "traces",
        """SELECT service_name, span_count, complete, completion_reason, session_id
                                         FROM t ORDER BY service_name, session_id""",
    )
    assert [row[0] for row in traces] == ["grpc-app"] * 5 + ["http-app"] * 5
    assert {row[1:4] for row in traces} == {(2, True, "root_idle")}
    assert [row[4] for row in traces[:5]] == [f"s-{i}" for i in range(5)]


def test_raw_requests_are_forwarded_byte_for_byte(sidecar_factory, grpc_sink: GrpcSink, http_sink: HttpSink):
    sidecar = sidecar_factory([grpc_sink.url, http_sink.url])
    over_grpc = genai_request(20).SerializeToString()
    over_http = genai_request(30).SerializeToString()
    with grpc.insecure_channel(sidecar.grpc_target) as channel:
        channel.unary_unary(TRACE_METHOD)(over_grpc, timeout=10)
    post(f"{sidecar.http_url}/v1/traces", over_http)

    for sink in (grpc_sink, http_sink):
        assert wait_until(lambda s=sink: len(s.received.payloads["traces"]) == 2)
        assert sorted(sink.received.payloads["traces"]) == sorted([over_grpc, over_http])
    assert http_sink.encodings == ["", ""]


def test_gzip_in_and_gzip_level_one_out(sidecar_factory, grpc_sink: GrpcSink, http_sink: HttpSink):
    sidecar = sidecar_factory(
        [], {"forward": [{"url": http_sink.url, "compression": "gzip"}, {"url": grpc_sink.url, "compression": "gzip"}]}
    )
    payload = genai_request(10).SerializeToString()
    post(f"{sidecar.http_url}/v1/traces", gzip.compress(payload), encoding="gzip")
    assert wait_until(lambda: http_sink.received.payloads["traces"] == [payload])
    assert http_sink.encodings == ["gzip"]
    assert wait_until(lambda: grpc_sink.received.payloads["traces"] == [payload])


def test_json_with_hex_ids_is_decoded_and_forwarded_as_protobuf(sidecar_factory, grpc_sink: GrpcSink):
    sidecar = sidecar_factory([grpc_sink.url])
    trace_id, span_id = "5B8EFFF798038103D269B633813FC60C", "eee19b7ec3c1b174"
    body = {
        "resourceSpans": [
            {
                "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "json-app"}}]},
                "scopeSpans": [
                    {
                        "spans": [
                            {
                                "traceId": trace_id,
                                "spanId": span_id,
                                "name": "chat",
                                "kind": 3,
                                "startTimeUnixNano": "1700000000000000000",
                                "endTimeUnixNano": 1700000000500000000,
                                "attributes": [{"key": "gen_ai.usage.input_tokens", "value": {"intValue": "12"}}],
                            }
                        ]
                    }
                ],
            }
        ]
    }
    status, response = post(f"{sidecar.http_url}/v1/traces", json.dumps(body).encode(), content_type="application/json")
    assert (status, json.loads(response)) == (200, {})
    assert wait_until(lambda: len(grpc_sink.received.spans()) == 1)
    [span] = grpc_sink.received.spans()
    assert span.trace_id == bytes.fromhex(trace_id) and span.span_id == bytes.fromhex(span_id)
    assert span.attributes[0].value.int_value == 12 and span.end_time_unix_nano == 1700000000500000000


def test_logs_and_metrics_are_forwarded_and_genai_logs_archived(sidecar_factory, grpc_sink: GrpcSink):
    from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
    from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest

    sidecar = sidecar_factory([grpc_sink.url])
    logs = ExportLogsServiceRequest()
    record = logs.resource_logs.add().scope_logs.add().log_records.add()
    record.trace_id, record.span_id, record.event_name = b"\x01" * 16, b"\x02" * 8, "gen_ai.user.message"
    record.body.kvlist_value.values.add(key="content").value.string_value = "What is OTLP?"
    metrics = ExportMetricsServiceRequest()
    metric = metrics.resource_metrics.add().scope_metrics.add().metrics.add(name="app.requests")
    metric.sum.data_points.add(as_int=3)
    with grpc.insecure_channel(sidecar.grpc_target) as channel:
        channel.unary_unary(GRPC_EXPORT_METHODS[Signal.LOGS])(logs.SerializeToString(), timeout=10)
        channel.unary_unary(GRPC_EXPORT_METHODS[Signal.METRICS])(metrics.SerializeToString(), timeout=10)
    assert wait_until(lambda: grpc_sink.received.payloads["logs"] == [logs.SerializeToString()])
    assert wait_until(lambda: grpc_sink.received.payloads["metrics"] == [metrics.SerializeToString()])
    sidecar.stop()
    rows = query(sidecar.data_dir / "archive", "logs", "SELECT trace_id, event_name, body->>'$.content' FROM t")
    assert rows == [("01" * 16, "gen_ai.user.message", "What is OTLP?")]


def test_empty_request_is_success_and_forwards_nothing(sidecar_factory, grpc_sink: GrpcSink):
    sidecar = sidecar_factory([grpc_sink.url])
    status, _ = post(f"{sidecar.http_url}/v1/traces", ExportTraceServiceRequest().SerializeToString())
    assert status == 200
    with grpc.insecure_channel(sidecar.grpc_target) as channel:
        channel.unary_unary(TRACE_METHOD)(b"", timeout=10)
    post(f"{sidecar.http_url}/v1/traces", genai_request(1).SerializeToString())
    assert wait_until(lambda: len(grpc_sink.received.payloads["traces"]) == 1)
    assert len(grpc_sink.received.payloads["traces"]) == 1

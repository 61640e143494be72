from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from google.protobuf import json_format
from google.protobuf.message import Message
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.util.types import Attributes

from tracejudge.receiver.otlp_json import OtlpJsonError, parse_otlp_json

TRACE_ID = "5b8efff798038103d269b633813fc60c"
SPAN_ID = "eee19b7ec3c1b174"
PARENT_ID = "eee19b7ec3c1b173"
BASE64_TRACE_ID = base64.b64encode(bytes.fromhex(TRACE_ID)).decode()
ID_KEYS = {"traceId", "spanId", "parentSpanId"}


def _hex_ids(node: Any) -> Any:
    if isinstance(node, dict):
        return {
            key: base64.b64decode(value).hex() if key in ID_KEYS else _hex_ids(value) for key, value in node.items()
        }
    if isinstance(node, list):
        return [_hex_ids(item) for item in node]
    return node


def to_otlp_json(message: Message) -> bytes:
    """The OTLP/JSON form of a message: protobuf JSON with hex instead of base64 ids."""
    return json.dumps(_hex_ids(json_format.MessageToDict(message))).encode()


def dump(document: dict[str, Any]) -> bytes:
    return json.dumps(document).encode()


def traces(*spans: dict[str, Any]) -> bytes:
    return dump({"resourceSpans": [{"scopeSpans": [{"spans": list(spans)}]}]})


def only_span(request: ExportTraceServiceRequest) -> Span:
    [resource_spans] = request.resource_spans
    [scope_spans] = resource_spans.scope_spans
    span: Span
    [span] = scope_spans.spans
    return span


@pytest.fixture(scope="module")
def sdk_request() -> ExportTraceServiceRequest:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "checkout", "pid": 4242}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("agent", "1.2.3")
    other_tracer = provider.get_tracer("llm-client")
    remote = trace.SpanContext(
        trace_id=0x0AF7651916CD43DD8448EB211C80319C,
        span_id=0xB7AD6B7169203331,
        is_remote=True,
        trace_flags=trace.TraceFlags(1),
    )
    attributes: Attributes = {"big": 2**62, "ratio": 0.25, "ok": True, "model": "m", "tokens": [1, 2, 3]}
    with tracer.start_as_current_span("root", kind=trace.SpanKind.SERVER, attributes=attributes) as root:
        root.add_event("prompt", {"chars": 12})
        with other_tracer.start_as_current_span("llm", kind=trace.SpanKind.CLIENT, links=[trace.Link(remote)]):
            pass
        with tracer.start_as_current_span("tool") as tool:
            tool.set_status(trace.Status(trace.StatusCode.ERROR, "timeout"))
    provider.shutdown()
    request = encode_spans(exporter.get_finished_spans())
    assert isinstance(request, ExportTraceServiceRequest)
    return request


def test_sdk_request_round_trips_byte_for_byte(sdk_request: ExportTraceServiceRequest) -> None:
    parsed = parse_otlp_json(to_otlp_json(sdk_request), ExportTraceServiceRequest)
    assert isinstance(parsed, ExportTraceServiceRequest)
    assert parsed.SerializeToString(deterministic=True) == sdk_request.SerializeToString(deterministic=True)


def test_sdk_round_trip_covers_ids_links_and_scopes(sdk_request: ExportTraceServiceRequest) -> None:
    parsed = parse_otlp_json(to_otlp_json(sdk_request), ExportTraceServiceRequest)
    spans = {span.name: span for ss in parsed.resource_spans[0].scope_spans for span in ss.spans}
    assert len(parsed.resource_spans[0].scope_spans) == 2
    assert {len(span.trace_id) for span in spans.values()} == {16}
    assert spans["llm"].parent_span_id == spans["root"].span_id
    assert spans["llm"].links[0].trace_id == bytes.fromhex("0af7651916cd43dd8448eb211c80319c")
    assert spans["llm"].links[0].span_id == bytes.fromhex("b7ad6b7169203331")


def test_plain_json_format_would_misread_hex_ids() -> None:
    naive = json_format.Parse(traces({"traceId": TRACE_ID}), ExportTraceServiceRequest())
    assert len(only_span(naive).trace_id) == 24
    assert only_span(parse_otlp_json(traces({"traceId": TRACE_ID}), ExportTraceServiceRequest)).trace_id == (
        bytes.fromhex(TRACE_ID)
    )


def test_ids_are_hex_in_any_case() -> None:
    body = traces({"traceId": TRACE_ID.upper(), "spanId": SPAN_ID.upper(), "parentSpanId": "EEe19B7ec3c1b173"})
    span = only_span(parse_otlp_json(body, ExportTraceServiceRequest))
    assert span.trace_id == bytes.fromhex(TRACE_ID)
    assert span.span_id == bytes.fromhex(SPAN_ID)
    assert span.parent_span_id == bytes.fromhex(PARENT_ID)


def test_snake_case_keys_are_accepted() -> None:
    span = {
        "trace_id": TRACE_ID,
        "span_id": SPAN_ID,
        "parent_span_id": PARENT_ID,
        "name": "snake",
        "start_time_unix_nano": "1700000000000000001",
        "links": [{"trace_id": TRACE_ID.upper(), "span_id": PARENT_ID}],
    }
    body = dump({"resource_spans": [{"scope_spans": [{"scope": {"name": "s"}, "spans": [span]}]}]})
    parsed = only_span(parse_otlp_json(body, ExportTraceServiceRequest))
    assert parsed.trace_id == bytes.fromhex(TRACE_ID)
    assert parsed.span_id == bytes.fromhex(SPAN_ID)
    assert parsed.parent_span_id == bytes.fromhex(PARENT_ID)
    assert parsed.start_time_unix_nano == 1700000000000000001
    assert parsed.links[0].trace_id == bytes.fromhex(TRACE_ID)
    assert parsed.links[0].span_id == bytes.fromhex(PARENT_ID)


@pytest.mark.parametrize("value", ["1700000000123456789", 1700000000123456789])
def test_int64_as_string_or_number(value: str | int) -> None:
    span = only_span(parse_otlp_json(traces({"startTimeUnixNano": value}), ExportTraceServiceRequest))
    assert span.start_time_unix_nano == 1700000000123456789


def test_enums_as_integers_or_names() -> None:
    body = traces({"kind": 3, "status": {"code": 2}}, {"kind": "SPAN_KIND_SERVER", "status": {"code": 1}})
    first, second = parse_otlp_json(body, ExportTraceServiceRequest).resource_spans[0].scope_spans[0].spans
    assert first.kind == Span.SPAN_KIND_CLIENT
    assert first.status.code == Status.STATUS_CODE_ERROR
    assert second.kind == Span.SPAN_KIND_SERVER
    assert second.status.code == Status.STATUS_CODE_OK


def test_unknown_fields_are_ignored() -> None:
    body = dump(
        {
            "futureTopLevel": {"x": 1},
            "resourceSpans": [
                {
                    "resource": {"attributes": [], "novel": True},
                    "scopeSpans": [{"spans": [{"name": "n", "traceId": TRACE_ID, "newField": [1, 2]}]}],
                    "extra": "ignored",
                }
            ],
        }
    )
    span = only_span(parse_otlp_json(body, ExportTraceServiceRequest))
    assert span.name == "n"
    assert span.trace_id == bytes.fromhex(TRACE_ID)


def test_link_ids() -> None:
    body = traces({"links": [{"traceId": TRACE_ID, "spanId": SPAN_ID}, {"traceId": "", "spanId": PARENT_ID}]})
    first, second = only_span(parse_otlp_json(body, ExportTraceServiceRequest)).links
    assert (first.trace_id, first.span_id) == (bytes.fromhex(TRACE_ID), bytes.fromhex(SPAN_ID))
    assert (second.trace_id, second.span_id) == (b"", bytes.fromhex(PARENT_ID))


@pytest.mark.parametrize(
    ("resource_logs", "scope_logs", "log_records", "trace_id", "span_id"),
    [
        ("resourceLogs", "scopeLogs", "logRecords", "traceId", "spanId"),
        ("resource_logs", "scope_logs", "log_records", "trace_id", "span_id"),
    ],
)
def test_log_record_ids(resource_logs: str, scope_logs: str, log_records: str, trace_id: str, span_id: str) -> None:
    record = {trace_id: TRACE_ID, span_id: SPAN_ID, "severityNumber": 17, "body": {"stringValue": "oops"}}
    body = dump({resource_logs: [{scope_logs: [{log_records: [record, {"body": {"stringValue": "bare"}}]}]}]})
    request = parse_otlp_json(body, ExportLogsServiceRequest)
    assert isinstance(request, ExportLogsServiceRequest)
    first, second = request.resource_logs[0].scope_logs[0].log_records
    assert first.trace_id == bytes.fromhex(TRACE_ID)
    assert first.span_id == bytes.fromhex(SPAN_ID)
    assert first.severity_number == 17
    assert (second.trace_id, second.span_id) == (b"", b"")


@pytest.mark.parametrize(
    ("kind", "field"),
    [
        ("gauge", "gauge"),
        ("sum", "sum"),
        ("histogram", "histogram"),
        ("exponentialHistogram", "exponential_histogram"),
        ("exponential_histogram", "exponential_histogram"),
    ],
)
def test_metric_exemplar_ids(kind: str, field: str) -> None:
    exemplar = {"traceId": TRACE_ID, "span_id": SPAN_ID, "asDouble": 1.5, "timeUnixNano": "5"}
    metric = {"name": "latency", kind: {"data_points": [{"exemplars": [exemplar]}]}}
    body = dump({"resourceMetrics": [{"scope_metrics": [{"metrics": [metric]}]}]})
    request = parse_otlp_json(body, ExportMetricsServiceRequest)
    parsed = request.resource_metrics[0].scope_metrics[0].metrics[0]
    assert parsed.WhichOneof("data") == field
    [parsed_exemplar] = getattr(parsed, field).data_points[0].exemplars
    assert parsed_exemplar.trace_id == bytes.fromhex(TRACE_ID)
    assert parsed_exemplar.span_id == bytes.fromhex(SPAN_ID)
    assert parsed_exemplar.time_unix_nano == 5


@pytest.mark.parametrize("empty", ["", None])
def test_empty_or_null_id_is_absent(empty: str | None) -> None:
    span = only_span(parse_otlp_json(traces({"traceId": TRACE_ID, "parentSpanId": empty}), ExportTraceServiceRequest))
    assert span.parent_span_id == b""


def test_bad_trace_id_length_names_the_path() -> None:
    bad = {"traceId": TRACE_ID[:-1], "spanId": SPAN_ID}
    spans = [{"spanId": SPAN_ID}] * 3 + [bad]
    body = dump({"resourceSpans": [{"scopeSpans": [{"spans": []}, {"spans": spans}]}]})
    with pytest.raises(OtlpJsonError) as raised:
        parse_otlp_json(body, ExportTraceServiceRequest)
    assert str(raised.value) == "resourceSpans[0].scopeSpans[1].spans[3].traceId: not 32 hex characters"


@pytest.mark.parametrize(
    ("span", "message"),
    [
        ({"parent_span_id": SPAN_ID + "0"}, "spans[0].parent_span_id: not 16 hex characters"),
        ({"links": [{}, {"spanId": "abc"}]}, "spans[0].links[1].spanId: not 16 hex characters"),
        ({"traceId": BASE64_TRACE_ID}, "spans[0].traceId: not 32 hex characters"),
    ],
)
def test_odd_or_non_hex_id_is_an_error(span: dict[str, Any], message: str) -> None:
    with pytest.raises(OtlpJsonError) as raised:
        parse_otlp_json(traces(span), ExportTraceServiceRequest)
    assert str(raised.value) == f"resourceSpans[0].scopeSpans[0].{message}"


@pytest.mark.parametrize(
    ("span", "field", "size"),
    [
        ({"spanId": TRACE_ID}, "span_id", 16),
        ({"traceId": TRACE_ID + "00"}, "trace_id", 17),
        ({"traceId": "ab"}, "trace_id", 1),
    ],
)
def test_whole_hex_bytes_of_the_wrong_length_decode_as_sent(span: dict[str, Any], field: str, size: int) -> None:
    """The span is well-formed JSON: the receiver rejects just it (a partial success, receiver/screen.py), so the
    decoder must not fail the whole request over one id's length."""
    decoded = only_span(parse_otlp_json(traces(span), ExportTraceServiceRequest))
    assert len(getattr(decoded, field)) == size


@pytest.mark.parametrize(
    "trace_id",
    [
        "zz" + TRACE_ID[2:],
        "0x" + TRACE_ID[2:],
        TRACE_ID[:10] + " " + TRACE_ID[11:],
        TRACE_ID[:30] + "\u0661\u0662",
        "g" * 32,
    ],
)
def test_non_hex_characters_are_an_error(trace_id: str) -> None:
    assert len(trace_id) == 32
    with pytest.raises(OtlpJsonError, match=r"spans\[0\]\.traceId: not 32 hex characters"):
        parse_otlp_json(traces({"traceId": trace_id}), ExportTraceServiceRequest)


def test_non_string_id_is_an_error() -> None:
    with pytest.raises(OtlpJsonError, match=r"spans\[0\]\.spanId: expected a hex string, not a number"):
        parse_otlp_json(traces({"spanId": 1234}), ExportTraceServiceRequest)


def test_log_and_metric_errors_name_their_paths() -> None:
    logs = dump({"resource_logs": [{"scope_logs": [{"log_records": [{"span_id": "0"}]}]}]})
    with pytest.raises(OtlpJsonError, match=r"^resource_logs\[0\]\.scope_logs\[0\]\.log_records\[0\]\.span_id: "):
        parse_otlp_json(logs, ExportLogsServiceRequest)
    exemplar = {"traceId": "abc"}
    metrics = dump(
        {
            "resourceMetrics": [
                {"scopeMetrics": [{"metrics": [{"sum": {"dataPoints": [{}, {"exemplars": [exemplar]}]}}]}]}
            ]
        }
    )
    with pytest.raises(OtlpJsonError) as raised:
        parse_otlp_json(metrics, ExportMetricsServiceRequest)
    assert str(raised.value) == (
        "resourceMetrics[0].scopeMetrics[0].metrics[0].sum.dataPoints[1].exemplars[0].traceId: not 32 hex characters"
    )


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b'{"resourceSpans": [', "not valid JSON"),
        (b"", "not valid JSON"),
        (b'{"resourceSpans": []}\xff', "not valid UTF-8"),
        (b"[]", "must be a JSON object, not an array"),
        (b'"{}"', "must be a JSON object, not a string"),
        (b"null", "must be a JSON object, not null"),
        (b"[" * 100_000 + b"]" * 100_000, "not valid JSON"),
    ],
)
def test_undecodable_body_is_an_error(body: bytes, message: str) -> None:
    with pytest.raises(OtlpJsonError, match=message):
        parse_otlp_json(body, ExportTraceServiceRequest)


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (dump({"resourceSpans": {"scopeSpans": []}}), "repeated field resourceSpans must be in []"),
        (traces({"name": 5}), "Failed to parse name field"),
        (traces({"startTimeUnixNano": "soon"}), "Failed to parse startTimeUnixNano field"),
        (traces({"startTimeUnixNano": 1.5}), "Couldn't parse integer"),
        (dump({"resourceSpans": [1]}), "Failed to parse resourceSpans field"),
    ],
)
def test_wrong_value_types_wrap_parse_error(body: bytes, fragment: str) -> None:
    with pytest.raises(OtlpJsonError) as raised:
        parse_otlp_json(body, ExportTraceServiceRequest)
    assert isinstance(raised.value.__cause__, json_format.ParseError)
    assert fragment in str(raised.value)
    assert str(raised.value) == str(raised.value.__cause__)


@pytest.mark.parametrize(
    "message_type", [ExportTraceServiceRequest, ExportLogsServiceRequest, ExportMetricsServiceRequest]
)
def test_empty_object_is_an_empty_request(message_type: type[Message]) -> None:
    parsed = parse_otlp_json(b"{}", message_type)
    assert type(parsed) is message_type
    assert parsed == message_type()
    assert parsed.ByteSize() == 0


def test_error_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        parse_otlp_json(b"nope", ExportTraceServiceRequest)


def test_non_request_type_is_refused() -> None:
    with pytest.raises(TypeError, match="ExportTraceServiceResponse"):
        parse_otlp_json(b"{}", ExportTraceServiceResponse)

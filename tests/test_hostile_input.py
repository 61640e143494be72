"""Hostile but well-formed input: bad spans are a partial success for themselves only; odd spans are kept.

A real `tracejudge serve` with four no-model checks, a real downstream sink and the archive read by DuckDB.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Callable
from typing import Any

import grpc
import pytest
from google.protobuf import json_format
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from tracejudge.synthetic import genai_request
from tracejudge.testing import wait_until

from archive_reader import query
from otlp_peers import TRACE_METHOD, GrpcSink, post

CHECKS = [
    {"name": "no_error", "builtin": "NoError", "sample_rate": 1.0},
    {"name": "fast", "builtin": "LatencyUnder", "sample_rate": 1.0},
    {"name": "tokens", "builtin": "TokenBudget", "sample_rate": 1.0},
    {"name": "answered", "builtin": "NonEmptyResponse", "sample_rate": 1.0},
]
CONFIG = {"assembler": {"trace_idle": "200ms", "check_interval": "50ms"}, "scorers": CHECKS}
U64_MAX = 2**64 - 1


@pytest.fixture
def sidecar(sidecar_factory, grpc_sink: GrpcSink):
    return sidecar_factory([grpc_sink.url], CONFIG)


def bad_spans(template: Span) -> list[Span]:
    """One span per way a span can be unkeepable; each a copy of a valid span with one field spoiled."""
    spoiled: list[Span] = []
    for field, value in [
        ("trace_id", b""),
        ("trace_id", os.urandom(3)),
        ("trace_id", os.urandom(21)),
        ("trace_id", os.urandom(32)),
        ("trace_id", bytes(16)),
        ("span_id", b""),
        ("span_id", os.urandom(3)),
        ("span_id", bytes(8)),
        ("parent_span_id", os.urandom(21)),
        ("start_time_unix_nano", U64_MAX),
        ("end_time_unix_nano", 2**63),
        ("start_time_unix_nano", 2**63 - 1),  # DuckDB reads it as infinity
    ]:
        span = Span()
        span.CopyFrom(template)
        span.span_id = os.urandom(8)
        setattr(span, field, value)
        spoiled.append(span)
    own_parent = Span()
    own_parent.CopyFrom(template)
    own_parent.parent_span_id = own_parent.span_id
    return [*spoiled, own_parent]


def send_grpc(sidecar: Any, request: ExportTraceServiceRequest) -> ExportTraceServiceResponse:
    with grpc.insecure_channel(sidecar.grpc_target) as channel:
        answer = channel.unary_unary(TRACE_METHOD)(request.SerializeToString(), timeout=10)
    return ExportTraceServiceResponse.FromString(answer)


def send_http_protobuf(sidecar: Any, request: ExportTraceServiceRequest) -> ExportTraceServiceResponse:
    status, body = post(f"{sidecar.http_url}/v1/traces", request.SerializeToString())
    assert status == 200, body
    return ExportTraceServiceResponse.FromString(body)


def send_http_json(sidecar: Any, request: ExportTraceServiceRequest) -> ExportTraceServiceResponse:
    document = json_format.MessageToDict(request)
    for resource_spans in document["resourceSpans"]:  # OTLP/JSON ids are hex, not protobuf JSON's base64
        for scope_spans in resource_spans["scopeSpans"]:
            for span in scope_spans["spans"]:
                for key in ("traceId", "spanId", "parentSpanId"):
                    if key in span:
                        span[key] = base64.b64decode(span[key]).hex()
    status, body = post(f"{sidecar.http_url}/v1/traces", json.dumps(document).encode(), "application/json")
    assert status == 200, body
    return json_format.Parse(body, ExportTraceServiceResponse())


SENDERS: dict[str, Callable[[Any, ExportTraceServiceRequest], ExportTraceServiceResponse]] = {
    "grpc": send_grpc,
    "http-protobuf": send_http_protobuf,
    "http-json": send_http_json,
}


def scored_traces(sidecar: Any) -> set[str]:
    rows = query(sidecar.data_dir / "archive", "assessments", "SELECT DISTINCT trace_id FROM t")
    return {trace_id for (trace_id,) in rows}


@pytest.mark.parametrize("transport", SENDERS)
def test_unkeepable_spans_are_a_partial_success_and_cost_no_other_span(transport, sidecar, grpc_sink):
    request = genai_request(3)
    spans = request.resource_spans[0].scope_spans[0].spans
    valid = {span.span_id for span in spans}
    valid_traces = {span.trace_id.hex() for span in spans}
    rejected = bad_spans(spans[1])
    spans.extend(rejected)

    response = SENDERS[transport](sidecar, request)

    assert response.partial_success.rejected_spans == len(rejected)
    message = response.partial_success.error_message
    assert message.startswith(f"rejected {len(rejected)} spans: ") and "trace_id must be 16 bytes" in message
    assert wait_until(lambda: grpc_sink.received.span_ids() == valid)  # forwarded: the kept spans, none rejected
    assert sidecar.metric("tracejudge_receiver_rejected_items_total", signal="traces") == len(rejected)
    assert wait_until(lambda: sidecar.metric("tracejudge_scoring_scored_total", scorer="no_error") == 3)
    assert sidecar.stop() == 0
    archived = query(sidecar.data_dir / "archive", "spans", "SELECT span_id FROM t")
    assert sorted(span_id for (span_id,) in archived) == sorted(span_id.hex() for span_id in valid)
    assert scored_traces(sidecar) == valid_traces
    assert query(sidecar.data_dir / "archive", "skipped", "SELECT * FROM t") == []


def test_a_request_of_only_unkeepable_spans_is_a_partial_success_of_all(sidecar, grpc_sink):
    request = genai_request(1)
    spans = request.resource_spans[0].scope_spans[0].spans
    rejected = bad_spans(spans[0])
    del spans[:]
    spans.extend(rejected)
    response = send_grpc(sidecar, request)
    assert response.partial_success.rejected_spans == len(rejected)
    after = genai_request(1)
    assert send_grpc(sidecar, after).partial_success.rejected_spans == 0
    expected = {span.span_id for span in after.resource_spans[0].scope_spans[0].spans}
    assert wait_until(lambda: grpc_sink.received.span_ids() == expected)


def _attribute(key: str, value: AnyValue) -> KeyValue:
    return KeyValue(key=key, value=value)


def _nested_kvlist(depth: int) -> AnyValue:
    value = AnyValue(string_value="bottom")
    for level in range(depth):
        outer = AnyValue()
        outer.kvlist_value.values.append(KeyValue(key=f"level{level}", value=value))
        value = outer
    return value


def odd_but_keepable_request() -> tuple[ExportTraceServiceRequest, dict[str, int]]:
    """Traces a reader must cope with, each its own trace id; returns the request and span counts by trace."""
    request = genai_request(6)
    spans = request.resource_spans[0].scope_spans[0].spans
    by_trace: dict[bytes, list[Span]] = {}
    for span in spans:
        by_trace.setdefault(span.trace_id, []).append(span)
    end_first, many_attributes, deep, junk, huge, cycle = by_trace.values()
    end_first[2].end_time_unix_nano = end_first[2].start_time_unix_nano - 1_000_000
    many_attributes[3].attributes.extend(_attribute(f"custom.{n}", AnyValue(int_value=n)) for n in range(20_000))
    deep[0].attributes.append(_attribute("deep", _nested_kvlist(28)))
    junk[0].attributes.append(
        _attribute("gen_ai.input.messages", AnyValue(string_value='[{"role": "user", "parts": ['))
    )
    junk[3].attributes.append(_attribute("gen_ai.output.messages", AnyValue(string_value="\x00\ud7ff not json {")))
    big = json.dumps([{"role": "user", "parts": [{"type": "text", "content": "x" * (3 * 1024 * 1024)}]}])
    huge[3].attributes.append(_attribute("gen_ai.input.messages", AnyValue(string_value=big)))
    cycle[1].parent_span_id, cycle[2].parent_span_id = cycle[2].span_id, cycle[1].span_id  # a parent cycle
    counts = {trace_id.hex(): len(trace_spans) for trace_id, trace_spans in by_trace.items()}
    wide = ExportTraceServiceRequest()
    wide.resource_spans.add().scope_spans.add()
    trace_id, root_id = os.urandom(16), os.urandom(8)
    many = wide.resource_spans[0].scope_spans[0].spans
    many.add(trace_id=trace_id, span_id=root_id, name="root", start_time_unix_nano=1, end_time_unix_nano=2)
    for _ in range(29_999):
        many.add(trace_id=trace_id, span_id=os.urandom(8), parent_span_id=root_id, name="child",
                 start_time_unix_nano=1, end_time_unix_nano=2)  # fmt: skip
    request.resource_spans.extend(wide.resource_spans)
    counts[trace_id.hex()] = 30_000
    return request, counts


def test_odd_but_keepable_spans_are_kept_and_every_trace_ends(sidecar_factory, grpc_sink):
    sidecar = sidecar_factory([grpc_sink.url], {**CONFIG, "receiver": {"max_request_body_size": "32MiB"}})
    request, counts = odd_but_keepable_request()
    response = send_grpc(sidecar, request)
    assert not response.HasField("partial_success")
    total = sum(counts.values())
    assert wait_until(lambda: len(grpc_sink.received.span_ids()) == total, timeout=60)
    scored_or_skipped = (  # noqa: E731
        lambda: (
            sidecar.metric("tracejudge_scoring_scored_total", scorer="no_error")
            + sidecar.metric("tracejudge_scoring_skipped_total", scorer="no_error")
        )
    )
    assert wait_until(lambda: scored_or_skipped() == len(counts), timeout=60)
    assert wait_until(lambda: sidecar.metric("tracejudge_scoring_backlog") == 0)
    after = genai_request(1)
    send_grpc(sidecar, after)
    after_trace = after.resource_spans[0].scope_spans[0].spans[0].trace_id.hex()
    assert wait_until(lambda: scored_or_skipped() == len(counts) + 1, timeout=30)
    assert sidecar.stop() == 0
    archived = query(sidecar.data_dir / "archive", "spans", "SELECT trace_id, count(*) FROM t GROUP BY 1")
    assert dict(archived) == {**counts, after_trace: 5}
    assert after_trace in scored_traces(sidecar)


def test_unkeepable_log_records_are_a_partial_success_in_json(sidecar, grpc_sink):
    good_trace = os.urandom(16).hex()
    records = [
        {"traceId": good_trace, "spanId": os.urandom(8).hex(), "eventName": "gen_ai.user.message",
         "body": {"stringValue": "hi"}},
        {"traceId": "abcdef", "eventName": "gen_ai.user.message"},
        {"timeUnixNano": str(U64_MAX), "body": {"stringValue": "late"}},
    ]  # fmt: skip
    body = json.dumps({"resourceLogs": [{"scopeLogs": [{"logRecords": records}]}]}).encode()
    status, answer = post(f"{sidecar.http_url}/v1/logs", body, "application/json")
    assert status == 200
    partial = json.loads(answer)["partialSuccess"]
    assert int(partial["rejectedLogRecords"]) == 2 and "trace_id must be empty or 16 bytes" in partial["errorMessage"]
    assert wait_until(lambda: len(grpc_sink.received.requests("logs")) == 1)
    [forwarded] = grpc_sink.received.requests("logs")
    assert [r.trace_id.hex() for r in forwarded.resource_logs[0].scope_logs[0].log_records] == [good_trace]

"""Fuzzing both receivers and the OTLP/JSON decoder with structure-aware mutations of valid requests.

Hypothesis mutates real requests at the field level (ids of any length, times past int64, self parents,
dropped and duplicated spans, attributes of any AnyValue shape, junk in GenAI attributes, JSON nodes
replaced by any JSON value) and, on top, at the byte level. One real `tracejudge serve` with four
no-model checks takes every body over gRPC, HTTP protobuf (plain and gzip) and HTTP JSON. Asserted:
only 2xx/4xx answers (gRPC: OK, INVALID_ARGUMENT, RESOURCE_EXHAUSTED), the process alive, a valid request
afterwards still forwarded, the scoring backlog back at 0, and the archive (read by DuckDB) holding every
accepted span exactly as accepted, no more. TRACEJUDGE_FUZZ_BODIES sets the number of bodies (default
10,000: 3,000 mutated protobuf requests each over gRPC and HTTP, 2,000 JSON documents over HTTP, 2,000
more through the JSON decoder alone); about 80 s on 2 cores.
"""

from __future__ import annotations

import gzip
import json
import os
import random
from collections import Counter
from typing import Any

import grpc
from google.protobuf.message import Message
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import KeyValue

from tracejudge.model import Signal
from tracejudge.otlp import set_any_value
from tracejudge.receiver.export import RequestError, decode_json, decode_protobuf
from tracejudge.receiver.otlp_json import OtlpJsonError, parse_otlp_json
from tracejudge.receiver.screen import screen
from tracejudge.synthetic import genai_request
from tracejudge.testing import wait_until

from archive_reader import query
from otlp_peers import TRACE_METHOD, post

BODIES = int(os.environ.get("TRACEJUDGE_FUZZ_BODIES", "10000"))
PROTOBUF_EXAMPLES = max(1, BODIES * 3 // 10)  # each sent twice: over gRPC and over HTTP (gzip or not)
JSON_EXAMPLES = max(1, BODIES // 5)  # each over HTTP JSON; as many again through the decoder alone
CHECKS = [
    {"name": "no_error", "builtin": "NoError", "sample_rate": 1.0},
    {"name": "fast", "builtin": "LatencyUnder", "sample_rate": 1.0},
    {"name": "tokens", "builtin": "TokenBudget", "sample_rate": 1.0},
    {"name": "answered", "builtin": "NonEmptyResponse", "sample_rate": 1.0},
]
FUZZ = settings(
    max_examples=PROTOBUF_EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
    derandomize=False,
)

ids = st.one_of(st.binary(max_size=40), st.sampled_from([b"", bytes(8), bytes(16), b"\xff" * 16]))
u64 = st.one_of(st.integers(0, 2**64 - 1), st.sampled_from([0, 2**63 - 1, 2**63, 2**64 - 1]))
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=6,
)
attribute_keys = st.sampled_from(
    ["gen_ai.input.messages", "gen_ai.output.messages", "gen_ai.usage.input_tokens", "input.value",
     "mlflow.spanInputs", "traceloop.entity.output", "session.id", "gen_ai.operation.name"]
) | st.text(max_size=20)  # fmt: skip
junk_json = st.sampled_from(['[{"role": "user", "parts": [', '{"a": ' * 50, "null", "[]", '[{"parts": 3}]', "\x00"])
span_edits = st.one_of(
    st.tuples(st.sampled_from(["trace_id", "span_id", "parent_span_id"]), ids),
    st.tuples(st.sampled_from(["start_time_unix_nano", "end_time_unix_nano"]), u64),
    st.tuples(st.just("name"), st.text(max_size=40)),
    st.tuples(st.sampled_from(["kind", "flags"]), st.integers(0, 2**31 - 1)),
    st.tuples(st.just("attribute"), st.tuples(attribute_keys, json_values | junk_json)),
    st.tuples(st.sampled_from(["drop", "duplicate", "self_parent", "cycle"]), st.none()),
)
byte_edits = st.lists(
    st.tuples(st.sampled_from(["flip", "insert", "delete", "truncate"]), st.integers(0, 1 << 20), st.integers(0, 255)),
    max_size=2,
)


def seed_request() -> ExportTraceServiceRequest:
    return genai_request(2, start_ns=1_764_000_000_000_000_000)


def mutate_spans(request: ExportTraceServiceRequest, edits: list[tuple[int, tuple[str, Any]]]) -> None:
    spans = request.resource_spans[0].scope_spans[0].spans
    for index, (kind, value) in edits:
        if not spans:
            return
        span = spans[index % len(spans)]
        if kind == "drop":
            del spans[index % len(spans)]
        elif kind == "duplicate":
            spans.add().CopyFrom(span)
        elif kind == "self_parent":
            span.parent_span_id = span.span_id
        elif kind == "cycle":
            other = spans[(index + 1) % len(spans)]
            span.parent_span_id, other.parent_span_id = other.span_id, span.span_id
        elif kind == "attribute":
            key, content = value
            attribute = KeyValue(key=key)
            set_any_value(attribute.value, content)
            span.attributes.append(attribute)
        else:
            setattr(span, kind, value)


def mutate_bytes(body: bytes, edits: list[tuple[str, int, int]]) -> bytes:
    data = bytearray(body)
    for kind, position, value in edits:
        if not data:
            break
        at = position % len(data)
        if kind == "flip":
            data[at] ^= value or 1
        elif kind == "insert":
            data.insert(at, value)
        elif kind == "delete":
            del data[at]
        else:
            del data[at:]
    return bytes(data)


def otlp_json_document(request: ExportTraceServiceRequest) -> dict[str, Any]:
    spans = []
    for span in request.resource_spans[0].scope_spans[0].spans:
        spans.append({
            "traceId": span.trace_id.hex(), "spanId": span.span_id.hex(), "parentSpanId": span.parent_span_id.hex(),
            "name": span.name, "kind": span.kind, "startTimeUnixNano": str(span.start_time_unix_nano),
            "endTimeUnixNano": str(span.end_time_unix_nano),
            "attributes": [{"key": a.key, "value": {"stringValue": a.value.string_value}} for a in span.attributes
                           if a.value.WhichOneof("value") == "string_value"],
        })  # fmt: skip
    resource = {"attributes": [{"key": "service.name", "value": {"stringValue": "fuzz"}}]}
    return {"resourceSpans": [{"resource": resource, "scopeSpans": [{"scope": {"name": "fuzz"}, "spans": spans}]}]}


def mutate_json(node: Any, edits: list[tuple[int, Any]]) -> Any:
    """Replace, delete or retype nodes found by walking the document with each edit's index."""
    for index, value in edits:
        containers = _containers(node)
        parent = containers[index % len(containers)]
        if isinstance(parent, dict) and parent:
            key = sorted(parent)[index % len(parent)]
            if value == "__delete__":
                del parent[key]
            else:
                parent[key] = value
        elif isinstance(parent, list) and parent:
            parent[index % len(parent)] = value
    return node


def _containers(node: Any) -> list[Any]:
    found = [node]
    for child in node.values() if isinstance(node, dict) else node if isinstance(node, list) else []:
        if isinstance(child, (dict, list)):
            found.extend(_containers(child))
    return found


json_edits = st.lists(
    st.tuples(
        st.integers(0, 1000),
        json_values
        | st.just("__delete__")
        | st.sampled_from([2**64, -(2**64), 1e308])
        | st.text(alphabet="0123456789abcdefABCDEFxz", max_size=40)
        | st.sampled_from(["18446744073709551615", "-1", "1e400", "NaN"]),
    ),
    max_size=4,
)


class Ledger:
    """What the sidecar accepted, by its own answers: each span kept, exactly as it was kept."""

    def __init__(self) -> None:
        self.spans: Counter[tuple[str, str, str, int]] = Counter()
        self.bodies = 0

    def accepted(self, request: Message, rejected: int) -> None:
        assert isinstance(request, ExportTraceServiceRequest)
        rejection = screen(request)
        assert rejected == (rejection.count if rejection else 0)
        for resource_spans in request.resource_spans:
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    self.spans[(span.trace_id.hex(), span.span_id.hex(), span.name, span.start_time_unix_nano)] += 1


def expect_protobuf(body: bytes) -> ExportTraceServiceRequest | None:
    try:
        request = decode_protobuf(Signal.TRACES, body)
    except RequestError:
        return None
    assert isinstance(request, ExportTraceServiceRequest)
    return request


def test_fuzzed_bodies_are_contained_and_every_accepted_span_is_archived_exactly(sidecar_factory, grpc_sink):
    config = {"assembler": {"trace_idle": "100ms", "trace_timeout": "1s", "check_interval": "50ms"}, "scorers": CHECKS,
              "receiver": {"max_request_body_size": "256KiB"}}  # fmt: skip
    sidecar = sidecar_factory([grpc_sink.url], config)
    ledger = Ledger()
    channel = grpc.insecure_channel(sidecar.grpc_target)
    export = channel.unary_unary(TRACE_METHOD)

    def over_grpc(body: bytes) -> None:
        try:
            answer = ExportTraceServiceResponse.FromString(export(body, timeout=10))
        except grpc.RpcError as error:
            assert error.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED), error
            assert expect_protobuf(body) is None or error.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
            return
        decoded = expect_protobuf(body)
        assert decoded is not None
        ledger.accepted(decoded, answer.partial_success.rejected_spans)

    def over_http_protobuf(body: bytes, gz: bool) -> None:
        status, answer = post(f"{sidecar.http_url}/v1/traces", gzip.compress(body, 1) if gz else body,
                              encoding="gzip" if gz else None)  # fmt: skip
        assert 200 <= status < 300 or 400 <= status < 500, (status, answer)
        decoded = expect_protobuf(body)
        if status != 200:
            assert decoded is None or status == 413
            return
        assert decoded is not None
        ledger.accepted(decoded, ExportTraceServiceResponse.FromString(answer).partial_success.rejected_spans)

    @FUZZ
    @given(st.lists(st.tuples(st.integers(0, 50), span_edits), max_size=5), byte_edits, st.booleans())
    def over_protobuf(edits: list[tuple[int, tuple[str, Any]]], raw: list[tuple[str, int, int]], gz: bool) -> None:
        request = seed_request()
        mutate_spans(request, edits)
        body = mutate_bytes(request.SerializeToString(), raw)
        over_grpc(body)
        over_http_protobuf(body, gz)

    @settings(FUZZ, max_examples=JSON_EXAMPLES)
    @given(json_edits, st.lists(st.tuples(st.integers(0, 50), span_edits), max_size=3), byte_edits)
    def over_http_json(edits: list[tuple[int, Any]], span_level: list[Any], raw: list[tuple[str, int, int]]) -> None:
        request = seed_request()
        mutate_spans(request, span_level)
        document = mutate_json(otlp_json_document(request), edits)
        body = json.dumps(document).encode()
        body = mutate_bytes(body, raw) if raw and random.random() < 0.3 else body
        status, answer = post(f"{sidecar.http_url}/v1/traces", body, "application/json")
        assert 200 <= status < 300 or 400 <= status < 500, (status, answer)
        if status != 200:
            return
        reply = json.loads(answer)
        rejected = int(reply.get("partialSuccess", {}).get("rejectedSpans", 0))
        ledger.accepted(decode_json(Signal.TRACES, body), rejected)

    over_protobuf()
    over_http_json()
    channel.close()
    sidecar.check_alive()

    after = genai_request(1)
    status, _ = post(f"{sidecar.http_url}/v1/traces", after.SerializeToString())
    assert status == 200
    after_ids = {span.span_id for span in after.resource_spans[0].scope_spans[0].spans}
    assert wait_until(lambda: after_ids <= grpc_sink.received.span_ids(), timeout=30)
    ledger.accepted(after, 0)
    assert wait_until(lambda: sidecar.metric("tracejudge_assembler_buffered_traces") == 0, timeout=30)
    assert wait_until(lambda: sidecar.metric("tracejudge_scoring_backlog") == 0, timeout=30)
    assert sidecar.stop() == 0

    rows = query(sidecar.data_dir / "archive", "spans",
                 "SELECT trace_id, span_id, name, epoch_ns(start_time) FROM t")  # fmt: skip
    assert Counter(rows) == ledger.spans


@settings(FUZZ, max_examples=JSON_EXAMPLES)
@given(json_edits, st.lists(st.tuples(st.integers(0, 50), span_edits), max_size=3))
def test_the_json_decoder_answers_every_mutated_document_with_a_request_or_its_own_error(edits, span_level):
    request = seed_request()
    mutate_spans(request, span_level)
    body = json.dumps(mutate_json(otlp_json_document(request), edits)).encode()
    try:
        decoded = parse_otlp_json(body, ExportTraceServiceRequest)
    except OtlpJsonError:
        return
    screen(decoded)  # whatever decodes can be screened
    decoded.SerializeToString()

"""Synthetic GenAI traces in OTLP form, for tests, benchmarks and smoke-testing a deployment.

Each trace looks like an agent turn: a root `invoke_agent` span, a retrieval, a tool call and two
chat calls carrying OTel GenAI message attributes of realistic size.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span

_PROMPT = "Summarise the refund policy for an order that arrived damaged, citing the relevant section. " * 6
_ANSWER = "Under section 4.2 a damaged item can be returned within 30 days for a full refund. " * 4


def _kv(key: str, value: str | int | float) -> KeyValue:
    if isinstance(value, str):
        return KeyValue(key=key, value=AnyValue(string_value=value))
    if isinstance(value, int):
        return KeyValue(key=key, value=AnyValue(int_value=value))
    return KeyValue(key=key, value=AnyValue(double_value=value))


def _messages(role: str, text: str) -> str:
    return json.dumps([{"role": role, "parts": [{"type": "text", "content": text}]}])


def genai_trace_spans(trace_id: bytes, start_ns: int, session_id: str = "session-1") -> list[Span]:
    """Five spans of one agent turn, root first."""
    root_id = os.urandom(8)
    common = [_kv("session.id", session_id), _kv("user.id", "user-7")]
    root = Span(
        trace_id=trace_id,
        span_id=root_id,
        name="invoke_agent support",
        kind=Span.SPAN_KIND_SERVER,
        start_time_unix_nano=start_ns,
        end_time_unix_nano=start_ns + 900_000_000,
        attributes=[
            _kv("gen_ai.operation.name", "invoke_agent"),
            *common,
            _kv("gen_ai.input.messages", _messages("user", _PROMPT)),
            _kv("gen_ai.output.messages", _messages("assistant", _ANSWER)),
        ],
    )
    root.status.code = root.status.STATUS_CODE_OK
    children = [
        ("retrieval docs", [_kv("gen_ai.operation.name", "retrieval"), _kv("gen_ai.data_source.id", "kb")]),
        (
            "execute_tool lookup_order",
            [
                _kv("gen_ai.operation.name", "execute_tool"),
                _kv("gen_ai.tool.name", "lookup_order"),
                _kv("gen_ai.tool.call.arguments", '{"order_id": "A-1042"}'),
            ],
        ),
        ("chat gpt-4.1-mini", _chat_attributes(120, 48)),
        ("chat gpt-4.1-mini", _chat_attributes(410, 96)),
    ]
    spans = [root]
    for offset, (name, attributes) in enumerate(children, start=1):
        spans.append(
            Span(
                trace_id=trace_id,
                span_id=os.urandom(8),
                parent_span_id=root_id,
                name=name,
                kind=Span.SPAN_KIND_CLIENT,
                start_time_unix_nano=start_ns + offset * 100_000_000,
                end_time_unix_nano=start_ns + offset * 100_000_000 + 80_000_000,
                attributes=[*attributes, *common],
            )
        )
    return spans


def _chat_attributes(input_tokens: int, output_tokens: int) -> list[KeyValue]:
    return [
        _kv("gen_ai.operation.name", "chat"),
        _kv("gen_ai.provider.name", "openai"),
        _kv("gen_ai.request.model", "gpt-4.1-mini"),
        _kv("gen_ai.response.model", "gpt-4.1-mini-2025-04-14"),
        _kv("gen_ai.request.temperature", 0.2),
        _kv("gen_ai.usage.input_tokens", input_tokens),
        _kv("gen_ai.usage.output_tokens", output_tokens),
        _kv("gen_ai.input.messages", _messages("user", _PROMPT)),
        _kv("gen_ai.output.messages", _messages("assistant", _ANSWER)),
    ]


def genai_request(
    traces: int,
    service: str = "support-agent",
    start_ns: int | None = None,
    spans_per_trace: int = 5,
    session_ids: Sequence[str] = (),
) -> ExportTraceServiceRequest:
    """One export request holding `traces` complete agent turns (at most 5 spans each); the i-th in the
    conversation `session_ids[i]` when given, else all in "session-1"."""
    start_ns = start_ns or time.time_ns()
    request = ExportTraceServiceRequest()
    resource_spans = request.resource_spans.add()
    resource_spans.resource.attributes.append(_kv("service.name", service))
    scope_spans = resource_spans.scope_spans.add()
    scope_spans.scope.name = "tracejudge.synthetic"
    for index in range(traces):
        session_id = session_ids[index] if index < len(session_ids) else "session-1"
        scope_spans.spans.extend(genai_trace_spans(os.urandom(16), start_ns, session_id)[:spans_per_trace])
    return request

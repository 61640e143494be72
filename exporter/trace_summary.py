"""TraceSummaryRecorder: the `traces` archive table, one row per decided trace.

It is the first TraceConsumer; the scoring engine becomes another one beside it.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, Protocol

from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from tracejudge.exporter.rows import any_value
from tracejudge.model import Trace

# Where each instrumentation puts the conversation and the user (ordered by preference).
SESSION_KEYS = (
    "session.id",
    "gen_ai.conversation.id",
    "langfuse.session.id",
    "traceloop.association.properties.session_id",
    "traceloop.association.properties.conversation_id",
    "traceloop.association.properties.chat_id",
)
USER_KEYS = ("user.id", "langfuse.user.id", "traceloop.association.properties.user_id", "enduser.id")
_KEY_BYTES = tuple(key.encode() for key in SESSION_KEYS + USER_KEYS)


class TraceRowSink(Protocol):
    def write_traces(self, summaries: list[dict[str, Any]]) -> None: ...


class TraceSummaryRecorder:
    def __init__(self, sink: TraceRowSink) -> None:
        self._sink = sink

    def consume(self, traces: Sequence[Trace]) -> None:
        rows = [summarize(trace) for trace in traces if trace.spans]
        if rows:
            self._sink.write_traces(rows)


def summarize(trace: Trace) -> dict[str, Any]:
    spans = [Span.FromString(s.span_bytes) for s in trace.spans]
    buffered_root = trace.root
    root_index = trace.spans.index(buffered_root) if buffered_root else _earliest(spans)
    root = spans[root_index]
    resource = Resource.FromString(trace.spans[root_index].resource_bytes)
    start = min(s.start_time_unix_nano for s in spans)
    end = max(s.end_time_unix_nano for s in spans)
    found = _find_identity(trace, spans)
    return {
        "trace_id": trace.trace_id.hex(),
        "service_name": next((str(any_value(a.value)) for a in resource.attributes if a.key == "service.name"), ""),
        "root_name": root.name,
        "start_time": start,
        "end_time": end,
        "duration_ms": (end - start) / 1e6,
        "status_code": _trace_status(root, spans),
        "span_count": len(spans),
        "complete": trace.complete,
        "completion_reason": trace.reason.value,
        "session_id": found.get("session"),
        "user_id": found.get("user"),
        "decided_at": time.time_ns(),
    }


def _earliest(spans: list[Span]) -> int:
    return min(range(len(spans)), key=lambda i: spans[i].start_time_unix_nano)


def _trace_status(root: Span, spans: list[Span]) -> str:
    if any(s.status.code == Status.STATUS_CODE_ERROR for s in spans):
        return "ERROR"
    return "OK" if root.status.code == Status.STATUS_CODE_OK else "UNSET"


def _find_identity(trace: Trace, spans: list[Span]) -> dict[str, str]:
    found: dict[str, str] = {}
    for buffered, span in zip(trace.spans, spans, strict=True):
        if not any(key in buffered.span_bytes for key in _KEY_BYTES):
            continue
        attributes = {a.key: a.value for a in span.attributes}
        for role, keys in (("session", SESSION_KEYS), ("user", USER_KEYS)):
            value = next((_plain(any_value(attributes[k])) for k in keys if k in attributes), None)
            if value and role not in found:
                found[role] = value
        if len(found) == 2:
            break
    return found


def _plain(value: Any) -> str:
    """MLflow JSON-encodes attribute values: '"abc"' means abc."""
    text = str(value)
    if len(text) >= 2 and text[0] == text[-1] == '"':
        return text[1:-1]
    return text

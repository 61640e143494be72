"""TraceSummaryRecorder: the `traces` archive table, one row per decided trace.

It is the first TraceConsumer; the scoring engine becomes another one beside it.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from tracejudge.model import BufferedSpan, Trace
from tracejudge.otlp import SESSION_KEYS, USER_KEYS, any_value, service_name_of

_KEYS = frozenset(SESSION_KEYS + USER_KEYS)
_KEY_BYTES = tuple(key.encode() for key in _KEYS)


class RowSink(Protocol):
    """Where rows go: exporter.archive.ParquetArchive."""

    def write_rows(self, table: str, rows: Sequence[Mapping[str, Any]]) -> None: ...


class TraceSummaryRecorder:
    def __init__(self, sink: RowSink) -> None:
        self._sink = sink

    def consume(self, traces: Sequence[Trace]) -> None:
        rows = [summarize(trace) for trace in traces if trace.spans]
        if rows:
            self._sink.write_rows("traces", rows)


def summarize(trace: Trace) -> dict[str, Any]:
    """One `traces` row, from the buffered hot fields; only the root span (and spans that carry a
    session or user attribute the root lacks) is parsed, since this runs for every trace."""
    spans = trace.spans
    root = trace.root or min(spans, key=lambda s: s.start_time_unix_nano)
    root_span = Span.FromString(root.span_bytes)
    start = min(s.start_time_unix_nano for s in spans)
    end = max(s.end_time_unix_nano for s in spans)
    identity = _find_identity(root, root_span, spans)
    return {
        "trace_id": trace.trace_id.hex(),
        "service_name": service_name_of(root.resource_bytes),
        "root_name": root_span.name,
        "start_time": start,
        "end_time": end,
        "duration_ms": (end - start) / 1e6,
        "status_code": _trace_status(root, spans),
        "span_count": len(spans),
        "complete": trace.complete,
        "completion_reason": trace.reason.value,
        "session_id": identity.get("session"),
        "user_id": identity.get("user"),
        "decided_at": time.time_ns(),
    }


def _trace_status(root: BufferedSpan, spans: list[BufferedSpan]) -> str:
    if any(s.status_code == Status.STATUS_CODE_ERROR for s in spans):
        return "ERROR"
    return "OK" if root.status_code == Status.STATUS_CODE_OK else "UNSET"


def _find_identity(root: BufferedSpan, root_span: Span, spans: list[BufferedSpan]) -> dict[str, str]:
    found = _identity(root_span)
    if len(found) == 2:
        return found
    for buffered in spans:
        if buffered is root or not any(key in buffered.span_bytes for key in _KEY_BYTES):
            continue
        for role, value in _identity(Span.FromString(buffered.span_bytes)).items():
            found.setdefault(role, value)
        if len(found) == 2:
            break
    return found


def _identity(span: Span) -> dict[str, str]:
    attributes = {a.key: a.value for a in span.attributes if a.key in _KEYS}
    found = {}
    for role, keys in (("session", SESSION_KEYS), ("user", USER_KEYS)):
        value = next((_plain(any_value(attributes[k])) for k in keys if k in attributes), None)
        if value:
            found[role] = value
    return found


def _plain(value: Any) -> str:
    """MLflow JSON-encodes attribute values: '"abc"' means abc."""
    text = str(value)
    if len(text) >= 2 and text[0] == text[-1] == '"':
        return text[1:-1]
    return text

"""Screening: the spans and log records of a decoded request that no part downstream can hold.

A request can be well-formed protobuf and still carry items that break whoever reads them later: a
trace id of 3 bytes (sampling, the archive's joins and every backend key traces by 16 bytes), a start
time past int64 (the archive's nanosecond timestamps overflow, and with them the whole file's batch),
a span that is its own parent (tree walks). OTLP's answer is a partial success: those items are
removed and counted in `rejected_spans` / `rejected_log_records` with an `error_message`, and the rest
of the request is accepted as usual. The removed items are neither forwarded nor archived nor scored:
the client was told the server rejected them, so no backend may see them either.

What a reader can cope with is accepted as sent (end before start, many attributes, deep values, junk
JSON in GenAI attributes); screening only removes what would cost other items their place.
"""

from __future__ import annotations

from dataclasses import dataclass

from google.protobuf.message import Message
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord
from opentelemetry.proto.trace.v1.trace_pb2 import Span

# Nanoseconds since the epoch, as Arrow, Parquet and DuckDB store them: int64, whose largest value DuckDB
# reads as the timestamp `infinity` (not the time that was sent), so the last keepable time is one below.
MAX_TIME = 2**63 - 2
_TRACE_ID = 16
_SPAN_ID = 8
_REASONS_SHOWN = 6  # distinct reasons quoted in error_message (every one there is), each once, with its count


@dataclass(frozen=True)
class Rejection:
    """Items removed from a request: how many, and the message the client gets (OTLP partial success)."""

    count: int
    message: str


def screen(request: Message) -> Rejection | None:
    """Remove in place the spans (trace requests) or log records (log requests) that cannot be kept; what
    was removed, or None when everything stays (the common case costs one pass and no copy)."""
    if isinstance(request, ExportTraceServiceRequest):
        return _screen_spans(request)
    if isinstance(request, ExportLogsServiceRequest):
        return _screen_logs(request)
    return None


def span_problem(span: Span) -> str | None:
    """Why a span cannot be kept, or None."""
    trace_id, span_id, parent = span.trace_id, span.span_id, span.parent_span_id
    if len(trace_id) != _TRACE_ID or not any(trace_id):
        return f"trace_id must be {_TRACE_ID} bytes, not all zero"
    if len(span_id) != _SPAN_ID or not any(span_id):
        return f"span_id must be {_SPAN_ID} bytes, not all zero"
    if parent and len(parent) != _SPAN_ID:
        return f"parent_span_id must be empty or {_SPAN_ID} bytes"
    if parent == span_id:
        return "a span cannot be its own parent"
    if span.start_time_unix_nano > MAX_TIME or span.end_time_unix_nano > MAX_TIME:
        return "start_time_unix_nano and end_time_unix_nano must be below 2**63 - 1 (the year 2262)"
    return None


def log_problem(record: LogRecord) -> str | None:
    """Why a log record cannot be kept, or None. Ids are optional on logs, but when present they key a trace."""
    if record.trace_id and len(record.trace_id) != _TRACE_ID:
        return f"trace_id must be empty or {_TRACE_ID} bytes"
    if record.span_id and len(record.span_id) != _SPAN_ID:
        return f"span_id must be empty or {_SPAN_ID} bytes"
    if record.time_unix_nano > MAX_TIME or record.observed_time_unix_nano > MAX_TIME:
        return "time_unix_nano and observed_time_unix_nano must be below 2**63 - 1 (the year 2262)"
    return None


def _screen_spans(request: ExportTraceServiceRequest) -> Rejection | None:
    reasons: dict[str, int] = {}
    for resource_spans in request.resource_spans:
        for scope_spans in resource_spans.scope_spans:
            spans = scope_spans.spans
            bad = [index for index, span in enumerate(spans) if span_problem(span) is not None]
            for index in reversed(bad):
                reason = span_problem(spans[index]) or ""
                reasons[reason] = reasons.get(reason, 0) + 1
                del spans[index]
    return _rejection(reasons, "spans")


def _screen_logs(request: ExportLogsServiceRequest) -> Rejection | None:
    reasons: dict[str, int] = {}
    for resource_logs in request.resource_logs:
        for scope_logs in resource_logs.scope_logs:
            records = scope_logs.log_records
            bad = [index for index, record in enumerate(records) if log_problem(record) is not None]
            for index in reversed(bad):
                reason = log_problem(records[index]) or ""
                reasons[reason] = reasons.get(reason, 0) + 1
                del records[index]
    return _rejection(reasons, "log records")


def _rejection(reasons: dict[str, int], items: str) -> Rejection | None:
    if not reasons:
        return None
    count = sum(reasons.values())
    shown = "; ".join(f"{n} x {reason}" for reason, n in list(reasons.items())[:_REASONS_SHOWN])
    more = f"; and {len(reasons) - _REASONS_SHOWN} more reasons" if len(reasons) > _REASONS_SHOWN else ""
    return Rejection(count, f"rejected {count} {items}: {shown}{more}")

"""SDK exporters that hand encoded OTLP batches to a forwarder queue instead of sending them.

Verdicts (evaluation spans and log events) then travel like forwarded app data: retried with
backoff, spilled to disk during an outage, resent after a restart, every drop counted. The SDK's
own OTLP encoders do the encoding; the forwarder is the one place that sends OTLP.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from opentelemetry.exporter.otlp.proto.common._log_encoder import encode_logs
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk._logs import ReadableLogRecord
from opentelemetry.sdk._logs.export import LogRecordExporter, LogRecordExportResult
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from tracejudge.model import Signal

Submit = Callable[[Signal, bytes, int], None]


class QueuedSpanExporter(SpanExporter):
    def __init__(self, submit: Submit) -> None:
        self._submit = submit

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self._submit(Signal.TRACES, encode_spans(spans).SerializeToString(), len(spans))
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        """The forwarder owns the queue and drains it at its own stop."""

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return True


class QueuedLogExporter(LogRecordExporter):
    def __init__(self, submit: Submit) -> None:
        self._submit = submit

    def export(self, batch: Sequence[ReadableLogRecord]) -> LogRecordExportResult:
        self._submit(Signal.LOGS, encode_logs(batch).SerializeToString(), len(batch))
        return LogRecordExportResult.SUCCESS

    def shutdown(self) -> None:
        """The forwarder owns the queue and drains it at its own stop."""

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return True

"""OtlpFileTraceSource: the traces in an OTLP/JSON file, assembled by the live receiver's own parts.

    for batch in OtlpFileTraceSource("traces.jsonl").batches():
        ...  # lists of tracejudge.model.Trace

The file is what the OpenTelemetry Collector's file exporter writes: one export request as JSON per line
(JSONL), each an ExportTraceServiceRequest or an ExportLogsServiceRequest, in any mix; or a file holding one
such document pretty-printed (its first non-blank line a lone "{"). Each document is decoded by the
receiver's OTLP/JSON parser (otlp_json.py: hex ids, camelCase or snake_case keys) and handed to a
TraceAssembler, so spans are grouped, GenAI log events kept and local roots found exactly as live. A file
has no clock to wait on: when it ends, every trace is decided at once (CompletionReason.END_OF_INPUT),
complete when its local root is in the file. Metrics documents are no traces and are passed over.

A line that is not OTLP/JSON (not JSON, not an object, no resourceSpans/resourceLogs/resourceMetrics,
a bad field) raises OtlpFileError naming the file, the line and what is wrong with it, before any trace
is handed on: a file is read whole or not at all, never with a line silently dropped, like a bad request
body at the receiver (OtlpJsonError, which it wraps).

The assembler's memory cap (assembler.max_buffered_bytes, 512 MiB by default) still applies: in a file holding
more than that of spans, the oldest traces are decided early, flagged incomplete (MEMORY_CAP), and their later
spans are not added to them, as live.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from opentelemetry.metrics import Meter, NoOpMeter
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from tracejudge.model import Trace
from tracejudge.receiver.assembler import TraceAssembler
from tracejudge.receiver.config import AssemblerConfig
from tracejudge.receiver.otlp_json import OtlpJsonError, parse_otlp_document
from tracejudge.receiver.screen import screen

__all__ = ["OtlpFileError", "OtlpFileTraceSource"]

log = logging.getLogger(__name__)

# The top-level field that says what a document is, in both spellings the parser accepts.
_KINDS: dict[str, type[ExportTraceServiceRequest] | type[ExportLogsServiceRequest] | None] = {
    "resourceSpans": ExportTraceServiceRequest,
    "resource_spans": ExportTraceServiceRequest,
    "resourceLogs": ExportLogsServiceRequest,
    "resource_logs": ExportLogsServiceRequest,
    "resourceMetrics": None,
    "resource_metrics": None,
}


class OtlpFileError(ValueError):
    """A line of an OTLP/JSON file that cannot be read: 'traces.jsonl:17: not valid JSON: ...'."""

    def __init__(self, path: Path, line: int, reason: str) -> None:
        super().__init__(f"{path}:{line}: {reason}")
        self.path = path
        self.line = line
        self.reason = reason


class _Collect:
    def __init__(self) -> None:
        self.traces: list[Trace] = []

    def consume(self, traces: Sequence[Trace]) -> None:
        self.traces.extend(traces)


class OtlpFileTraceSource:
    """The traces of the OTLP/JSON (or JSONL) file at `path`; a TraceSource. batches() yields lists of at most
    `batch_size` traces once the whole file is read (nothing for a file without spans), or raises OtlpFileError."""

    def __init__(
        self,
        path: str | Path,
        config: AssemblerConfig | None = None,
        *,
        meter: Meter | None = None,
        batch_size: int = 1000,
    ) -> None:
        self._path = Path(path)
        self._config = config or AssemblerConfig()
        self._meter = meter or NoOpMeter("tracejudge.otlp_file")
        self._batch_size = batch_size

    def batches(self) -> Iterator[list[Trace]]:
        decided = _Collect()
        assembler = TraceAssembler(self._config, decided, self._meter)
        for line, document in self._documents():
            request = self._request(line, document)
            if isinstance(request, ExportTraceServiceRequest):
                assembler.add_spans(request)
            elif isinstance(request, ExportLogsServiceRequest):
                assembler.add_logs(request)
        assembler.end_of_input()
        traces = [trace for trace in decided.traces if trace.spans]  # log events whose spans never came
        for offset in range(0, len(traces), self._batch_size):
            yield traces[offset : offset + self._batch_size]

    def _documents(self) -> Iterator[tuple[int, Any]]:
        """(line number, JSON value) of every document: each non-blank line of a JSONL file, or the whole file
        when its first non-blank line is a lone "{" (a pretty-printed document, as json.dumps(indent=...) writes)."""
        with self._path.open("rb") as lines:
            started = False
            for number, raw in enumerate(lines, start=1):
                if not raw.strip():
                    continue
                if not started and raw.strip() == b"{":
                    yield number, self._load(number, raw + lines.read())
                    return
                started = True
                yield number, self._load(number, raw.rstrip(b"\r\n"))  # one line: the decoder's line is 1

    def _load(self, line: int, text: bytes) -> Any:
        try:
            return json.loads(text)
        except UnicodeDecodeError as exc:
            raise OtlpFileError(self._path, line, f"not valid UTF-8: {exc}") from exc
        except json.JSONDecodeError as exc:  # in a whole document, its own line number counts from `line`
            raise OtlpFileError(
                self._path, line + exc.lineno - 1, f"not valid JSON: {exc.msg} (column {exc.colno})"
            ) from exc
        except (ValueError, RecursionError) as exc:
            raise OtlpFileError(self._path, line, f"not valid JSON: {exc}") from exc

    def _request(self, line: int, document: Any) -> ExportTraceServiceRequest | ExportLogsServiceRequest | None:
        """The export request `document` holds; None for metrics."""
        if not isinstance(document, dict):
            raise OtlpFileError(
                self._path, line, f"expected an OTLP export request (a JSON object), not {document!r:.60}"
            )
        kinds = {_KINDS[key] for key in document if key in _KINDS}
        if len(kinds) != 1:
            found = "several of them" if kinds else f"keys {sorted(document)[:5]}"
            raise OtlpFileError(
                self._path, line, f"expected one of resourceSpans, resourceLogs, resourceMetrics; found {found}"
            )
        [message_type] = kinds
        if message_type is None:
            return None
        try:
            request = parse_otlp_document(document, message_type)
        except OtlpJsonError as exc:
            raise OtlpFileError(self._path, line, str(exc)) from exc
        rejection = screen(request)  # the spans a live receiver would reject are not read from a file either
        if rejection is not None:
            log.warning("%s line %d: %s", self._path, line, rejection.message)
        return request

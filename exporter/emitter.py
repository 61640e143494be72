"""AssessmentEmitter: the one place an assessment becomes everything it becomes, counted once.

For every Assessment (tracejudge.model), in one call:

1. a span `evaluation {name}` inside the evaluated trace (same trace id, parent = the evaluated
   span), from `timestamp_ns - latency` to `timestamp_ns`, status ERROR when the scorer failed,
   carrying a span event `gen_ai.evaluation.result` with the GenAI semantic-convention attributes;
2. the same event as an OTLP log record (`event_name = gen_ai.evaluation.result`) whose
   trace_id/span_id are the evaluated span's, which is how the GenAI semconv defines the event;
3. metrics on the given meter: `gen_ai.evaluation.score` (histogram, unit 1), and the counters and
   histograms `tracejudge.assessments`, `tracejudge.judge.latency`, `tracejudge.judge.tokens`;
4. a row of the archive's `assessments` table (exporter/rows.py ASSESSMENTS_SCHEMA), handed to the
   row sink in batches at most `export_interval_s` apart, as the SDK batches spans and log records.

Where each output goes is the caller's choice, not the emitter's: the scoring worker hands the
sidecar encoded OTLP for its forwarder's queue and rows for its archive, and its metrics are part of
the sidecar's /metrics; an app's own process (tracejudge/inprocess.py) exports OTLP and metrics to an
OTLP endpoint; human feedback and backfill use the same emitter.

OTLP goes through opentelemetry-sdk's own TracerProvider and LoggerProvider (never installed as the
global providers: the host application's instrumentation must not be routed here) with the
BatchSpanProcessor / BatchLogRecordProcessor, so `emit()` only enqueues; export, retries and failures
happen on the SDK's threads, which log them.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import orjson
from opentelemetry import metrics, trace
from opentelemetry._logs import SeverityNumber
from opentelemetry.context import Context
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor, LogRecordExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_ON
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, Status, StatusCode, TraceFlags
from opentelemetry.util.types import AttributeValue

from tracejudge import __version__
from tracejudge.model import Assessment

log = logging.getLogger(__name__)

EVENT_NAME = "gen_ai.evaluation.result"
# GenAI semantic conventions (gen-ai-events.md, "Event: gen_ai.evaluation.result").
EVALUATION_NAME = "gen_ai.evaluation.name"
SCORE_VALUE = "gen_ai.evaluation.score.value"
SCORE_LABEL = "gen_ai.evaluation.score.label"
EXPLANATION = "gen_ai.evaluation.explanation"
ERROR_TYPE = "error.type"
# error.type's documented fallback when the kind of failure is not known.
OTHER_ERROR = "_OTHER"
NONE = "none"  # metric attribute value for "no label" / "no error": Prometheus has no null

SCOPE = "tracejudge.exporter.emitter"
SCORE_BUCKETS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 2.0, 3.0, 4.0, 5.0, 10.0)
LATENCY_BUCKETS_MS = (50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0, 60000.0, 120000.0)


class RowSink(Protocol):
    """Where `assessments` rows go: exporter.archive.ParquetArchive, or a relay to it."""

    def write_rows(self, table: str, rows: Sequence[Mapping[str, Any]]) -> None: ...


class AssessmentMetrics:
    """The assessment metrics: `gen_ai.evaluation.score` and tracejudge's assessment, latency and token series."""

    def __init__(self, meter: metrics.Meter) -> None:
        self._score = meter.create_histogram(
            "gen_ai.evaluation.score",
            unit="1",
            description="Numeric score of each evaluation, by evaluation name",
            explicit_bucket_boundaries_advisory=SCORE_BUCKETS,
        )
        self._assessments = meter.create_counter(
            "tracejudge.assessments",
            unit="{assessment}",
            description="Assessments emitted, by name, label, source and error type",
        )
        self._latency = meter.create_histogram(
            "tracejudge.judge.latency",
            unit="ms",
            description="Time a scorer took to produce an assessment",
            explicit_bucket_boundaries_advisory=LATENCY_BUCKETS_MS,
        )
        self._tokens = meter.create_counter(
            "tracejudge.judge.tokens",
            unit="{token}",
            description="Tokens the LLM judges used, by assessment name and direction (input/output)",
        )

    def record(self, assessment: Assessment) -> None:
        name = assessment.name
        # A verdict that supersedes another (a session re-scored as it grew) is not counted again: the metrics
        # count each session once, by its first verdict. What judging it again cost is counted.
        if assessment.overrides is None:
            if assessment.score is not None:
                self._score.record(assessment.score, {EVALUATION_NAME: name})
            labels = {"name": name, "label": assessment.label or NONE, "source": assessment.source.value,
                      "error_type": _error_type(assessment) or NONE}  # fmt: skip
            self._assessments.add(1, labels)
        if assessment.latency_ms is not None:
            self._latency.record(assessment.latency_ms, {"name": name})
        for direction, tokens in (("input", assessment.judge_input_tokens), ("output", assessment.judge_output_tokens)):
            if tokens:
                self._tokens.add(tokens, {"name": name, "direction": direction})


class AssessmentEmitter:
    """Emit assessments as OTLP spans, span events, log events, metrics and archive rows.

    `exporters`: the span and log exporters OTLP goes through (`otlp_exporters` for an endpoint, or
    exporters of tracejudge's own that queue the encoded batches), or None for no OTLP. `meter`: where
    the assessment metrics are recorded, or None. `rows`: where `assessments` rows go, or None.
    """

    def __init__(
        self,
        exporters: tuple[SpanExporter, LogRecordExporter] | None,
        meter: metrics.Meter | None,
        rows: RowSink | None = None,
        *,
        export_interval_s: float = 1.0,
        max_queue_size: int = 8192,
    ) -> None:
        self._rows = rows
        self._pending_rows: list[dict[str, Any]] = []
        self._rows_timer: threading.Timer | None = None
        self._export_interval_s = export_interval_s
        self._lock = threading.Lock()
        self._closed = False
        self._tracer_provider: TracerProvider | None = None
        self._logger_provider: LoggerProvider | None = None
        if exporters is not None:
            span_exporter, log_exporter = exporters
            resource = Resource.create({"service.name": "tracejudge", "service.version": __version__})
            delay_ms = export_interval_s * 1000
            # ALWAYS_ON, not the default ParentBased sampler: an evaluation span is wanted whatever
            # sampling decision the evaluated trace carried (and OTEL_TRACES_SAMPLER must not drop it).
            self._tracer_provider = TracerProvider(sampler=ALWAYS_ON, resource=resource)
            self._tracer_provider.add_span_processor(
                BatchSpanProcessor(span_exporter, max_queue_size=max_queue_size, schedule_delay_millis=delay_ms)
            )
            self._logger_provider = LoggerProvider(resource=resource)
            self._logger_provider.add_log_record_processor(
                BatchLogRecordProcessor(log_exporter, max_queue_size=max_queue_size, schedule_delay_millis=delay_ms)
            )
        self._tracer = self._tracer_provider.get_tracer(SCOPE, __version__) if self._tracer_provider else None
        self._logger = self._logger_provider.get_logger(SCOPE, __version__) if self._logger_provider else None
        self._metrics = AssessmentMetrics(meter) if meter is not None else None

    @property
    def otlp_enabled(self) -> bool:
        return self._tracer is not None

    def emit(self, assessments: Sequence[Assessment]) -> None:
        """Enqueue the assessments everywhere; never blocks on the network, never raises."""
        if self._closed:
            log.debug("assessment emitter is shut down; %d assessment(s) not emitted", len(assessments))
            return
        if not assessments:
            return
        emitted_at = time.time_ns()
        rows: list[dict[str, Any]] = []
        for assessment in assessments:
            try:
                if self._rows is not None:
                    rows.append(assessment_row(assessment, emitted_at))
                if assessment.expectation:
                    continue  # an expected answer is no verdict: archived (and read by judges), not emitted
                if self._metrics is not None:  # before OTLP: an OTLP failure must not lose the count
                    self._metrics.record(assessment)
                if self._tracer is not None:
                    self._emit_otlp(assessment, emitted_at)
            except Exception:
                log.exception("could not emit assessment %r on trace %s", assessment.name, assessment.trace_id)
        if rows:
            self._queue_rows(rows)

    def force_flush(self, timeout_s: float = 30.0) -> bool:
        """Export what is queued; True when everything was handed to the exporters in time."""
        deadline = time.monotonic() + timeout_s
        self._write_rows()
        done = True
        for provider in (self._tracer_provider, self._logger_provider):
            if provider is not None:
                remaining_ms = max(0, int((deadline - time.monotonic()) * 1000))
                done = bool(provider.force_flush(remaining_ms)) and done
        return done

    def shutdown(self, timeout_s: float = 30.0) -> None:
        """Export what is queued, within `timeout_s`, and stop the OTLP pipelines (idempotent)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self.force_flush(timeout_s)
        for provider in (self._tracer_provider, self._logger_provider):
            if provider is not None:
                try:
                    provider.shutdown()
                except Exception:
                    log.exception("error while shutting down the assessment exporter")

    def _queue_rows(self, rows: list[dict[str, Any]]) -> None:
        with self._lock:
            self._pending_rows.extend(rows)
            if self._rows_timer is None:
                self._rows_timer = threading.Timer(self._export_interval_s, self._write_rows)
                self._rows_timer.daemon = True
                self._rows_timer.start()

    def _write_rows(self) -> None:
        with self._lock:
            rows, self._pending_rows = self._pending_rows, []
            timer, self._rows_timer = self._rows_timer, None
        if timer is not None:
            timer.cancel()
        if not rows or self._rows is None:
            return
        try:
            self._rows.write_rows("assessments", rows)
        except Exception as exc:
            log.warning("could not archive %d assessment(s): %s", len(rows), exc)

    def _emit_otlp(self, assessment: Assessment, emitted_at: int) -> None:
        assert self._tracer is not None and self._logger is not None
        evaluated = _span_context(assessment)
        if evaluated is None:
            log.warning(
                "assessment %r has no valid trace/span id (%r/%r); not emitted over OTLP",
                assessment.name,
                assessment.trace_id,
                assessment.span_id,
            )
            return
        end = assessment.timestamp_ns or emitted_at
        start = end - int((assessment.latency_ms or 0.0) * 1e6)
        event = event_attributes(assessment)
        extra = tracejudge_attributes(assessment)
        parent = trace.set_span_in_context(NonRecordingSpan(evaluated), Context())

        span = self._tracer.start_span(
            f"evaluation {assessment.name}",
            context=parent,
            kind=SpanKind.INTERNAL,
            attributes={EVALUATION_NAME: assessment.name, **extra},
            start_time=start,
            record_exception=False,
            set_status_on_exception=False,
        )
        span.add_event(EVENT_NAME, event, timestamp=end)
        if assessment.error is not None:
            span.set_status(Status(StatusCode.ERROR, assessment.error))
        span.end(end_time=end)

        # The log event belongs to the evaluated span: its trace_id/span_id come from `parent`.
        self._logger.emit(
            timestamp=end,
            context=parent,
            severity_number=SeverityNumber.WARN if assessment.error is not None else SeverityNumber.INFO,
            severity_text="WARN" if assessment.error is not None else "INFO",
            body=_body(assessment),
            attributes={**event, **extra},
            event_name=EVENT_NAME,
        )


def event_attributes(assessment: Assessment) -> dict[str, AttributeValue]:
    """The `gen_ai.evaluation.result` attributes, by the GenAI semantic conventions."""
    attributes: dict[str, AttributeValue] = {EVALUATION_NAME: assessment.name}
    if assessment.score is not None:
        attributes[SCORE_VALUE] = float(assessment.score)
    if assessment.label is not None:
        attributes[SCORE_LABEL] = assessment.label
    if assessment.rationale:
        attributes[EXPLANATION] = assessment.rationale
    error_type = _error_type(assessment)
    if error_type is not None:
        attributes[ERROR_TYPE] = error_type
    return attributes


def tracejudge_attributes(assessment: Assessment) -> dict[str, AttributeValue]:
    """tracejudge's own attributes: everything of the Assessment the semconv has no name for."""
    attributes: dict[str, AttributeValue] = {
        "tracejudge.assessment.source": assessment.source.value,
        "tracejudge.assessment.source_id": assessment.source_id,
        "tracejudge.assessment.scorer_version": assessment.scorer_version,
    }
    text, kind = value_text(assessment.value)
    if text is not None:
        attributes["tracejudge.assessment.value"] = text
        attributes["tracejudge.assessment.value_type"] = kind
    if assessment.error is not None:
        attributes["tracejudge.assessment.error"] = assessment.error
    if assessment.judge_input_tokens is not None:
        attributes["tracejudge.assessment.judge.input_tokens"] = assessment.judge_input_tokens
    if assessment.judge_output_tokens is not None:
        attributes["tracejudge.assessment.judge.output_tokens"] = assessment.judge_output_tokens
    if assessment.latency_ms is not None:
        attributes["tracejudge.assessment.latency_ms"] = float(assessment.latency_ms)
    if assessment.metadata:
        attributes["tracejudge.assessment.metadata"] = _json(assessment.metadata)
    if assessment.session_id:
        attributes["session.id"] = assessment.session_id
    if assessment.trace_ids:
        attributes["tracejudge.assessment.trace_ids"] = list(assessment.trace_ids)
    if assessment.assessment_id:
        attributes["tracejudge.assessment.id"] = assessment.assessment_id
    if assessment.overrides:
        attributes["tracejudge.assessment.overrides"] = assessment.overrides
    return attributes


def assessment_row(assessment: Assessment, emitted_at: int | None = None) -> dict[str, Any]:
    """One row of the archive's `assessments` table (exporter/rows.py ASSESSMENTS_SCHEMA)."""
    emitted_at = emitted_at or time.time_ns()
    text, kind = value_text(assessment.value)
    return {
        "trace_id": assessment.trace_id.lower(),
        "span_id": assessment.span_id.lower(),
        "name": assessment.name,
        "value": text,
        "value_type": kind if text is not None else None,
        "score": assessment.score,
        "label": assessment.label,
        "rationale": assessment.rationale,
        "error": assessment.error,
        "error_type": _error_type(assessment),
        "source": assessment.source.value,
        "source_id": assessment.source_id,
        "session_id": assessment.session_id,
        "scorer_version": assessment.scorer_version,
        "metadata": _json(assessment.metadata),
        "judge_input_tokens": assessment.judge_input_tokens,
        "judge_output_tokens": assessment.judge_output_tokens,
        "latency_ms": assessment.latency_ms,
        "timestamp": assessment.timestamp_ns or emitted_at,
        "emitted_at": emitted_at,
        "trace_ids": list(assessment.trace_ids) or None,
        "assessment_id": assessment.assessment_id or None,
        "overrides": assessment.overrides,
        "expectation": assessment.expectation,
    }


def value_text(value: object) -> tuple[str | None, str]:
    """An assessment value as plain text and its kind: (true, bool), (0.5, float), (yes, str)."""
    if value is None:
        return None, "none"
    if isinstance(value, bool):
        return ("true" if value else "false"), "bool"
    if isinstance(value, int):
        return str(value), "int"
    if isinstance(value, float):
        return repr(value), "float"
    return str(value), "str"


def _error_type(assessment: Assessment) -> str | None:
    if assessment.error_type:
        return assessment.error_type
    return OTHER_ERROR if assessment.error is not None else None


def _body(assessment: Assessment) -> str:
    """The rationale, or (when there is none) a small JSON summary of the verdict."""
    if assessment.rationale:
        return assessment.rationale
    summary: dict[str, Any] = {"name": assessment.name, "value": assessment.value}
    for key in ("score", "label", "error"):
        if getattr(assessment, key) is not None:
            summary[key] = getattr(assessment, key)
    return _json(summary)


def _span_context(assessment: Assessment) -> SpanContext | None:
    """The evaluated span as a remote, sampled parent; None when its ids are not valid hex ids."""
    try:
        trace_id = int(assessment.trace_id, 16) if len(assessment.trace_id) == 32 else 0
        span_id = int(assessment.span_id, 16) if len(assessment.span_id) == 16 else 0
    except ValueError:
        return None
    context = SpanContext(trace_id, span_id, is_remote=True, trace_flags=TraceFlags(TraceFlags.SAMPLED))
    return context if context.is_valid else None


def _json(value: Any) -> str:
    return orjson.dumps(value, default=str).decode()

"""ScoringSpanProcessor: tracejudge's scoring inside an app's own process, as one OpenTelemetry span processor.

For apps that cannot run a sidecar (serverless functions, notebooks, a developer's laptop):

    from tracejudge.exporter import ScoringSpanProcessor
    provider.add_span_processor(ScoringSpanProcessor(config="tracejudge.yaml"))
    provider.add_span_processor(ScoringSpanProcessor(scorers=[Safety(), mentions_x],
                                                     otlp_endpoint="grpc://127.0.0.1:4317"))

The second wiring of the sidecar's parts (tracejudge/sidecar.py is the first), for one process:

    span.end() ──on_end──► bounded queue ──ingest thread, OTLP encoding──► TraceAssembler (the same rules)
      ──Trace──► ScoringEngine (the same sampling, backlog and skip accounting)
      ──► ScoringWorker on a WorkerThread (or a WorkerProcess) ──► ScoringLoop ──► AssessmentEmitter
      ──► the OTLP endpoint: evaluation spans with their event, log records, metrics

It never blocks the app: `on_end` only appends to a bounded queue; a full queue drops the span and
counts it (tracejudge.inprocess.dropped_spans), as the SDK's BatchSpanProcessor does. Everything else
runs on tracejudge's own threads. `force_flush` decides every trace whose root has ended, scores it
and exports the verdicts; `shutdown` does the same for every trace, within the drain timeout.
"""

from __future__ import annotations

import logging
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from opentelemetry.context import Context
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor

from tracejudge import __version__
from tracejudge.config_file import Config, load_config, spec_of
from tracejudge.exporter.emitter import AssessmentEmitter
from tracejudge.otlp_exporters import metric_exporter, span_and_log_exporters
from tracejudge.receiver.assembler import TraceAssembler
from tracejudge.scorers import Scorer
from tracejudge.scoring.config import scoring_deadline
from tracejudge.scoring.engine import ScoringEngine
from tracejudge.scoring.registry import ScorerRegistry
from tracejudge.scoring.spec import ScorerSpec
from tracejudge.scoring.thread import WorkerThread
from tracejudge.scoring.worker import Carrier, ScoringWorker, WorkerProcess
from tracejudge.scoring.worker_protocol import WorkerSettings

log = logging.getLogger(__name__)

_DROP_LOG_INTERVAL_S = 10.0


class ScoringSpanProcessor(SpanProcessor):
    """Score the app's own traces with tracejudge's scorers, and export the verdicts by OTLP.

    `config`: a tracejudge.yaml; its `scorers`, `judges`, `assembler` and `scoring` keys apply (the
    sidecar's listeners, forwarding and archive do not). `scorers`: more scorers, each a
    tracejudge.scorers object (Safety(), Guidelines(...), make_judge(...)), an `@scorer` function (an
    importable module-level one; in a notebook, one defined in the notebook itself) or a config-file
    entry as a mapping; objects and functions run on every trace (sample rate 1), a mapping as it says.
    `otlp_endpoint`: where verdicts go (grpc://host:port or http(s)://host:port); default the config's
    scoring.otlp_endpoint, else where the app's own OTEL_EXPORTER_OTLP_* settings point.
    `scoring_process`: score in a child process instead of a thread (CPU-heavy code scorers, or
    scorers that must not share the app's GIL). `max_queue_size`: spans waiting for assembly.
    """

    def __init__(
        self,
        config: str | Path | None = None,
        *,
        scorers: Sequence[Scorer | Callable[..., Any] | Mapping[str, Any]] = (),
        otlp_endpoint: str | None = None,
        scoring_process: bool = False,
        max_queue_size: int = 8192,
    ) -> None:
        self._config = load_config(Path(config)) if config is not None else Config()
        scoring = self._config.scoring
        endpoint = otlp_endpoint or scoring.otlp_endpoint
        resource = Resource.create({"service.name": "tracejudge", "service.version": __version__})
        reader = PeriodicExportingMetricReader(metric_exporter(endpoint), export_interval_millis=30_000)
        self._meter_provider = MeterProvider(metric_readers=[reader], resource=resource, shutdown_on_exit=False)
        meter = self._meter_provider.get_meter("tracejudge", __version__)
        self._dropped = meter.create_counter(
            "tracejudge.inprocess.dropped_spans", description="Spans not scored because the span queue was full"
        )
        self._registry = ScorerRegistry(None, scoring.max_active_scorers, validate=self._validate)
        self._engine = ScoringEngine(self._registry, self._skipped, meter, scoring.max_backlog,
                                     scoring_deadline(scoring, self._config.judges))  # fmt: skip
        settings = WorkerSettings(
            judges=dict(self._config.judges), max_concurrency=scoring.max_concurrency,
            code_workers=scoring.code_workers, code_timeout_s=scoring.code_timeout, sys_path=list(sys.path),
            emit_interval_s=scoring.emit_interval, verdicts="direct", otlp_endpoint=endpoint,
            push_metrics=True, metrics_endpoint=endpoint, sessions=self._config.sessions,
            budget=self._config.judge_budget, budget_ledger=str(self._config.budget_ledger),
        )  # fmt: skip
        carrier: Carrier
        if scoring_process:
            carrier = WorkerProcess(settings, Path(tempfile.mkdtemp(prefix="tracejudge-")), nice=0)
        else:
            emitter = AssessmentEmitter(span_and_log_exporters(endpoint), meter, None,
                                        export_interval_s=scoring.emit_interval)  # fmt: skip
            carrier = WorkerThread(settings, emitter)
        self._carrier = carrier
        self._worker = ScoringWorker(carrier, on_progress=self._engine.on_progress,
                                     on_lost=self._engine.on_worker_lost)  # fmt: skip
        self._engine.attach(self._worker)
        self._assembler = TraceAssembler(self._config.assembler, self._engine, meter)
        self._spans: deque[ReadableSpan] = deque()
        self._max_queue = max_queue_size
        self._last_drop_log = 0.0
        self._ingest_lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._shut_down = False
        self._ingest = threading.Thread(target=self._run, name="tracejudge-ingest", daemon=True)
        self._start([*self._config.scorers, *(spec_of(scorer) for scorer in scorers)])

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        """Nothing: a span is read once it has ended."""

    def on_end(self, span: ReadableSpan) -> None:
        """Only buffers: the app's thread pays for one append (a full queue drops and counts the span)."""
        if not (span.context and span.context.trace_flags.sampled) or self._shut_down:
            return
        if len(self._spans) >= self._max_queue:
            self._drop()
            return
        self._spans.append(span)
        if span.parent is None or span.parent.is_remote or len(self._spans) >= self._max_queue // 2:
            self._wake.set()  # a root ended (its trace's idle clock starts once it is assembled), or the queue fills

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        """Decide every trace whose root has ended, score it and export its verdicts within the timeout."""
        deadline = time.monotonic() + timeout_millis / 1000
        self._ingest_queued()
        self._assembler.decide_rooted()
        scored = self._engine.flush(_left(deadline))
        return self._meter_provider.force_flush(int(_left(deadline) * 1000)) and scored

    def shutdown(self) -> None:
        """Decide every trace (those without their root as incomplete), finish scoring within
        scoring.drain_timeout, export the verdicts and stop."""
        if self._shut_down:
            return
        self._shut_down = True
        self._stopping.set()
        self._wake.set()
        self._ingest.join(5.0)
        self._ingest_queued()
        self._assembler.shutdown()
        self._engine.shutdown(self._config.scoring.drain_timeout)
        self._meter_provider.shutdown()

    @property
    def scoring_thread(self) -> threading.Thread | None:
        """The thread scoring runs on (None with a scoring process): its spans are never the app's."""
        return self._carrier.thread if isinstance(self._carrier, WorkerThread) else None

    def _start(self, specs: list[ScorerSpec]) -> None:
        self._engine.start()
        try:
            self._registry.apply_config(specs)
        except BaseException:
            self._engine.shutdown(1.0)
            raise
        self._assembler.start()
        self._ingest.start()

    def _run(self) -> None:
        interval = self._config.assembler.check_interval
        while not self._stopping.is_set():
            self._wake.wait(interval)
            self._wake.clear()
            try:
                self._ingest_queued()
            except Exception:
                log.exception("tracejudge could not assemble the app's spans; continuing")

    def _ingest_queued(self) -> None:
        """Hand the queued spans of sampled traces to the assembler as one OTLP request (the form every trace
        source yields). Sampling depends on the trace id alone, so a trace no scorer samples is never encoded."""
        with self._ingest_lock:
            taken = [self._spans.popleft() for _ in range(len(self._spans))]
            sampled = [span for span in taken if self._engine.samples(span.context.trace_id.to_bytes(16, "big"))]
            if sampled:
                self._assembler.add_spans(encode_spans(sampled))

    def _drop(self) -> None:
        self._dropped.add(1)
        now = time.monotonic()
        if now - self._last_drop_log >= _DROP_LOG_INTERVAL_S:
            self._last_drop_log = now
            log.warning("tracejudge's span queue is full (%d spans); spans are dropped from scoring (the app's own "
                        "export is unaffected): see tracejudge.inprocess.dropped_spans", self._max_queue)  # fmt: skip

    def _validate(self, spec: ScorerSpec) -> None:
        self._engine.validate(spec)

    def _skipped(self, rows: list[dict[str, Any]]) -> None:
        """No archive here: skipped traces are counted (tracejudge.scoring.skipped) and logged."""
        for row in rows:
            log.info("trace %s not scored by %s: %s", row["trace_id"], ", ".join(row["scorers"]), row["reason"])


def _left(deadline: float) -> float:
    return max(0.0, deadline - time.monotonic())

"""The sidecar: `tracejudge serve`, the one place where its parts are wired together.

    receivers ──► IngestRouter ──► write-ahead log (durable before OK; full: push back), assembler
    write-ahead log ──cursors──► forwarder (one per endpoint), archive; assembler (replayed at start)
    assembler ──Trace──► trace summaries (archive), scoring engine ──► scoring worker process
    scoring worker ──encoded verdicts──► write-ahead log (VERDICTS records); ──assessment rows──► archive
    control plane (scorers, sessions, feedback, backfill jobs) on the receivers' listeners; self-telemetry and
    the status page on the admin listener; backfill jobs ──► a backfill worker process ──verdicts──► write-ahead log
    assessment rows (the scoring worker's, human feedback's) ──► RecentVerdicts (the status page's, `tracejudge tail`'s)

Every component has the same lifecycle, start() and shutdown(timeout_s). Start order brings
consumers up before producers; shutdown is the reverse, so every span accepted before a stop is
forwarded (or kept on disk), archived and assembled, and every trace scored or recorded as skipped.
A start that fails shuts down what had started.
"""

from __future__ import annotations

import gc
import logging
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from google.protobuf.message import Message
from opentelemetry import metrics
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from tracejudge.backfill_jobs import BackfillJobs
from tracejudge.config_file import DEFAULT_SCORERS, Config
from tracejudge.control import (
    AssessmentService,
    BackfillService,
    ControlPlane,
    ScorerService,
    SessionService,
    grpc_handlers,
    http_routes,
)
from tracejudge.exporter.archive import ParquetArchive
from tracejudge.exporter.archive_protocol import decode_rows, table_of
from tracejudge.exporter.config import ForwardEndpointConfig
from tracejudge.exporter.emitter import AssessmentEmitter
from tracejudge.exporter.feedback import FeedbackStore
from tracejudge.exporter.forwarder import Forwarder
from tracejudge.exporter.queued_exporters import QueuedLogExporter, QueuedSpanExporter
from tracejudge.exporter.trace_summary import TraceSummaryRecorder
from tracejudge.memory_limiter import MemoryLimiter
from tracejudge.model import Signal, Trace, TraceConsumer
from tracejudge.receiver.assembler import TraceAssembler
from tracejudge.receiver.export import Overloaded
from tracejudge.receiver.grpc_server import GrpcReceiver
from tracejudge.receiver.http_server import HttpReceiver
from tracejudge.recent_verdicts import RecentVerdicts, VerdictTap
from tracejudge.schema import ASSESSMENT_SERVICE, BACKFILL_SERVICE, SCORER_SERVICE, SESSION_SERVICE
from tracejudge.scoring.budget import BudgetGauges
from tracejudge.scoring.config import scoring_deadline
from tracejudge.scoring.engine import ScoringEngine
from tracejudge.scoring.ledger import InFlightLedger
from tracejudge.scoring.registry import ScorerRegistry
from tracejudge.scoring.spec import ScorerSpec
from tracejudge.scoring.worker import ScoringWorker, WorkerProcess
from tracejudge.scoring.worker_protocol import WorkerSettings
from tracejudge.status_page import PageAccess, Sources, StatusPage
from tracejudge.telemetry import SelfTelemetry
from tracejudge.wal import Cursor, LogFull, RecordKind, WriteAheadLog

log = logging.getLogger(__name__)


class Component(Protocol):
    def start(self) -> None: ...
    def shutdown(self, timeout_s: float) -> None: ...


class FanOut:
    """Hands each batch of decided traces to several consumers, each isolated from the others and each trace
    from the others: a consumer that raises on a batch gets it again trace by trace, so one bad trace costs
    only itself, and only at that consumer. Each trace a consumer still fails on is counted
    (`tracejudge.fanout.failed_traces{consumer}`), logged with its id and handed to `failed` (the sidecar
    records the engine's as skipped, reason `error`). Consumers should fail before side effects: a batch
    retried trace by trace may repeat what a consumer did before raising."""

    def __init__(
        self,
        consumers: Sequence[TraceConsumer],
        meter: metrics.Meter,
        failed: Callable[[TraceConsumer, Trace], None] = lambda _consumer, _trace: None,
    ) -> None:
        self._consumers = list(consumers)
        self._failed = failed
        self._failures = meter.create_counter(
            "tracejudge.fanout.failed_traces", description="Decided traces a trace consumer failed on, by consumer"
        )

    def consume(self, traces: Sequence[Trace]) -> None:
        for consumer in self._consumers:
            try:
                consumer.consume(traces)
            except Exception:
                if len(traces) == 1:
                    self._fail(consumer, traces[0])
                else:
                    log.exception("%s failed on a batch of %d traces; retrying them one by one",
                                  type(consumer).__name__, len(traces))  # fmt: skip
                    self._one_by_one(consumer, traces)

    def _one_by_one(self, consumer: TraceConsumer, traces: Sequence[Trace]) -> None:
        for trace in traces:
            try:
                consumer.consume([trace])
            except Exception:
                self._fail(consumer, trace)

    def _fail(self, consumer: TraceConsumer, trace: Trace) -> None:
        name = type(consumer).__name__
        log.exception("%s failed on trace %s", name, trace.trace_id.hex() or "(empty)")
        self._failures.add(1, {"consumer": name})
        try:
            self._failed(consumer, trace)
        except Exception:
            log.exception("recording the failure of %s on trace %s failed", name, trace.trace_id.hex())


class IngestRouter:
    """The receivers' ExportConsumer: refuse over the memory limit, append to the write-ahead log (a full log
    pushes back: the client keeps the data and retries), then hand the request to the assembler. The
    forwarder and the archive read the log through their cursors."""

    def __init__(self, wal: WriteAheadLog, assembler: TraceAssembler, limiter: MemoryLimiter) -> None:
        self._wal = wal
        self._assembler = assembler
        self._limiter = limiter
        self._lock = threading.Lock()
        self._unassembled: set[int] = set()  # logged, not yet handed to the assembler

    def consume(self, signal: Signal, request: Message, payload: bytes, items: int) -> None:
        if self._limiter.refusing:
            raise Overloaded("tracejudge is over its memory limit; retry later", retry_after=1.0)
        with self._lock:
            try:
                number = self._wal.append(signal, payload, items)
            except LogFull as exc:
                raise Overloaded(f"tracejudge is overloaded: {exc}", retry_after=1.0) from exc
            self._unassembled.add(number)
        try:
            assemble(self._assembler, request, number)
        finally:
            with self._lock:
                self._unassembled.discard(number)

    def assembled_until(self) -> int:
        """Every record before this has been assembled and its traces decided."""
        with self._lock:
            low = min(self._unassembled, default=self._wal.end_number)
        oldest = self._assembler.oldest_record()
        return low if oldest is None else min(low, oldest)


def assemble(assembler: TraceAssembler, request: Message, number: int) -> None:
    if isinstance(request, ExportTraceServiceRequest):
        assembler.add_spans(request, number)
    elif isinstance(request, ExportLogsServiceRequest):
        assembler.add_logs(request, number)


class AssemblerCursor:
    """The assembler's cursor on the write-ahead log. Started before the assembler: it replays the
    records holding traces that were acknowledged but not decided when the last run ended (killed),
    so they are rebuilt and decided; then, twice a second, it commits up to the oldest record still
    holding an undecided trace. Stopped after the assembler, when every trace is decided."""

    def __init__(
        self, cursor: Cursor, router: IngestRouter, assembler: TraceAssembler, on_replayed: Callable[[], object]
    ) -> None:
        """`on_replayed`: called once every replayed trace is decided and consumed."""
        self._on_replayed = on_replayed
        self._cursor = cursor
        self._router = router
        self._assembler = assembler
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="assembler-cursor", daemon=True)
        self.replayed = 0

    def start(self) -> None:
        while self._cursor.position < self._cursor.replay_until:
            record = self._cursor.next(timeout=0)
            if record is None:
                break
            if record.kind is RecordKind.INGEST and record.signal in (Signal.TRACES, Signal.LOGS):
                request_type = ExportTraceServiceRequest if record.signal is Signal.TRACES else ExportLogsServiceRequest
                try:
                    assemble(self._assembler, request_type.FromString(record.payload), record.number)
                except Exception:
                    log.exception("could not replay write-ahead log record %d into the assembler", record.number)
                self.replayed += 1
        if self.replayed:
            log.info("rebuilt undecided traces from %d write-ahead log records", self.replayed)
        self._thread.start()

    def shutdown(self, timeout_s: float) -> None:
        self._stop.set()
        self._thread.join(timeout_s)
        self._cursor.commit(self._router.assembled_until())

    def _run(self) -> None:
        replay_until, settled = self._cursor.replay_until, 0
        while not self._stop.wait(0.5):
            # Replayed records are not in the router's bookkeeping: never commit past them until decided.
            assembled = self._router.assembled_until()
            self._cursor.commit(assembled)
            if settled < 2 and assembled >= replay_until:
                settled += 1  # one more round first: a trace leaves the assembler just before it is consumed
                if settled == 2:
                    self._report_replayed()

    def _report_replayed(self) -> None:
        try:
            self._on_replayed()
        except Exception:
            log.exception("could not account for the scoring that the last run left open")


def tune_garbage_collector() -> None:
    """Freeze what start-up allocated and collect less often.

    Measured with bench/ingest.py at 40k spans/s: full collections walked the import-time heap
    (grpc, pyarrow, protobuf, OpenTelemetry) every second for 60-130 ms and freed nothing, which
    was the request p99 (~150 ms). Frozen, with these thresholds: p99 ~40 ms and ~12% less CPU.
    Buffered spans hold no reference cycles, so rarer collections cost little memory.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(10_000, 20, 20)


@dataclass(frozen=True)
class BoundPorts:
    grpc: int | None
    http: int | None
    admin: int | None


class Sidecar:
    def __init__(self, config: Config, trace_consumers: Sequence[TraceConsumer] = ()) -> None:
        self.config = config
        scoring = config.scoring
        self.telemetry = SelfTelemetry(config.telemetry)
        meter = self.telemetry.meter
        config.data_dir.mkdir(parents=True, exist_ok=True)
        self.wal = WriteAheadLog(config.wal_dir, config.wal, meter)
        self.archive = (
            ParquetArchive(
                config.archive,
                config.archive_dir,
                meter,
                self.wal.cursor("archive"),
                config.wal.max_size // 4,
                self.wal,
                spool=config.data_dir / "archive-spool",
            )
            if config.archive.enabled
            else None
        )
        verdicts_to = config.assessments_endpoint
        forwarded = {endpoint.url for endpoint in config.forward}
        private = (
            [ForwardEndpointConfig(url=verdicts_to, tls=scoring.otlp_tls)]
            if verdicts_to and verdicts_to.rstrip("/") not in forwarded
            else []
        )
        self.forwarder = Forwarder(config.forward, self.wal, meter, private=private, verdicts_to=verdicts_to)
        self.registry = ScorerRegistry(config.data_dir / "scorers.json", scoring.max_active_scorers,
                                       validate=self._validate)  # fmt: skip
        self.engine = ScoringEngine(self.registry, self._record_skipped, meter, scoring.max_backlog,
                                    scoring_deadline(scoring, config.judges),
                                    InFlightLedger(config.data_dir / "scoring" / "in_flight.log"))  # fmt: skip
        page = config.status_page
        self.recent_verdicts = (
            RecentVerdicts(page.recent_verdicts) if page.enabled and config.telemetry.prometheus_endpoint else None
        )
        self.budget_gauges = (BudgetGauges(config.judge_budget, config.budget_ledger, meter)
                              if config.judge_budget is not None else None)  # fmt: skip
        self.scoring_process = WorkerProcess(self._worker_settings(), config.data_dir, scoring.worker_nice)
        self.scoring_worker = ScoringWorker(
            self.scoring_process, on_progress=self.engine.on_progress, on_lost=self.engine.on_worker_lost,
            on_forward=self._log_verdicts if verdicts_to else None,
            on_archive=self._relay_rows if self.archive is not None or self.recent_verdicts is not None else None,
        )  # fmt: skip
        self.engine.attach(self.scoring_worker)
        self.telemetry.add_exposition(self.scoring_worker.metrics_text)
        if self.recent_verdicts is not None:
            self.telemetry.add_routes(self._status_page().routes())
        # Human feedback: emitted in this process, its OTLP through the write-ahead log like the worker's verdicts.
        feedback_otlp = (QueuedSpanExporter(self._log_verdicts), QueuedLogExporter(self._log_verdicts))
        feedback_rows = self.archive if self.recent_verdicts is None else VerdictTap(self.recent_verdicts, self.archive)
        self.feedback = FeedbackStore(
            config.data_dir / "feedback.jsonl",
            AssessmentEmitter(feedback_otlp if verdicts_to else None, meter, feedback_rows,
                              export_interval_s=scoring.emit_interval),
            config.archive_dir if self.archive else None,
            on_expectation=self.engine.expect,
            archive_s3=config.archive.s3,
        )  # fmt: skip
        # Backfill jobs over this sidecar's archive, in a process of their own; verdicts through the log too.
        self.backfills = BackfillJobs(config.data_dir, config.archive, config.archive_dir, self.registry,
                                      config.backfill,
                                      config.judges, scoring.code_workers, scoring.code_timeout,
                                      self._log_verdicts if verdicts_to else None, config.judge_budget)  # fmt: skip
        summaries: list[TraceConsumer] = [TraceSummaryRecorder(self.archive)] if self.archive else []
        fan_out = FanOut([*summaries, self.feedback, self.engine, *trace_consumers], meter, self._consumer_failed)
        self.assembler = TraceAssembler(config.assembler, fan_out, meter)
        self.memory_limiter = MemoryLimiter(config.memory_limiter, meter, self.assembler.shed)
        router = IngestRouter(self.wal, self.assembler, self.memory_limiter)
        self.assembler_cursor = AssemblerCursor(
            self.wal.cursor("assembler"), router, self.assembler, self.engine.end_recovery
        )
        receiver = config.receiver
        listen = [receiver.grpc_endpoint, receiver.http_endpoint]
        control = ControlPlane(
            {
                SCORER_SERVICE: ScorerService(self.registry),
                SESSION_SERVICE: SessionService(self.engine.end_session),
                ASSESSMENT_SERVICE: AssessmentService(self.feedback),
                BACKFILL_SERVICE: BackfillService(self.backfills),
            },
            config.control.token.get_secret_value() if config.control.token else None,
            listen,
            config.control.client_cert_names,
        )
        self.grpc = GrpcReceiver(receiver, router, meter, grpc_handlers(control)) if receiver.grpc_endpoint else None
        self.http = HttpReceiver(receiver, router, meter, http_routes(control)) if receiver.http_endpoint else None
        self._started: list[tuple[Component, float]] = []
        self._stopped = threading.Event()

    def start(self) -> BoundPorts:
        """Start every component, consumers first; config-file scorers are registered once the scoring
        worker can validate them. If anything fails, what started is shut down and the error raised."""
        scoring = self.config.scoring
        try:
            self._start(self.telemetry, 5.0)
            self._start(self.wal, 5.0)
            if self.archive is not None:
                self._start(self.archive, 30.0)
            self._start(self.forwarder, 10.0)
            self._start(self.feedback, 5.0)
            self._start(self.engine, scoring.drain_timeout)
            self.registry.apply_config(self.config.scorers, retire=DEFAULT_SCORERS)
            self._start(self.backfills, 10.0)
            self._start(self.assembler_cursor, 2.0)
            self._start(self.assembler, 5.0)
            self._start(self.memory_limiter, 5.0)
            for receiver in (self.grpc, self.http):
                if receiver is not None:
                    self._start(receiver, 2.0)
        except BaseException:
            self._shutdown_started()
            raise
        self.telemetry.ready = True
        self._log_plan()
        return BoundPorts(self.grpc.port if self.grpc else None, self.http.port if self.http else None,
                          self.telemetry.port)  # fmt: skip

    def shutdown(self, forward_timeout_s: float = 10.0) -> None:
        """Stop accepting, decide every buffered trace, finish scoring, drain the forwarder for up to
        `forward_timeout_s` (what is left stays on disk), close the archive files."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        self.telemetry.ready = False
        self._started = [(c, forward_timeout_s if c is self.forwarder else t) for c, t in self._started]
        self._shutdown_started()
        log.info("tracejudge stopped")

    def serve_until_signalled(self, forward_timeout_s: float = 10.0) -> None:
        """Start, serve until SIGTERM or SIGINT, shut down. Handlers go in first, so a signal that
        arrives while starting still leads to an orderly stop."""
        received = threading.Event()

        def on_signal(signum: int, _frame: object) -> None:
            log.info("received %s; draining", signal.Signals(signum).name)
            received.set()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        try:
            self.start()
            tune_garbage_collector()
            # A timed wait: the kernel may hand the signal to another thread, and CPython runs the
            # handler only when the main thread next runs Python code.
            while not received.wait(0.25):
                pass
        finally:
            self.shutdown(forward_timeout_s)

    def _start(self, component: Component, shutdown_timeout_s: float) -> None:
        component.start()
        self._started.append((component, shutdown_timeout_s))

    def _shutdown_started(self) -> None:
        while self._started:
            component, timeout_s = self._started.pop()
            try:
                component.shutdown(timeout_s)
            except Exception:
                log.exception("%s did not shut down cleanly", type(component).__name__)

    def _log_plan(self) -> None:
        """One line a new user can check: where spans and verdicts go, and what is scored."""
        forward = ", ".join(endpoint.url for endpoint in self.config.forward) or "nowhere (archive only)"
        archive = str(self.config.archive_dir) if self.archive is not None else "off"
        active = [f"{spec.name}@{spec.sample_rate:g}" for spec in self.registry.active()]
        verdicts = self.config.assessments_endpoint or "metrics and archive only"
        log.info("forwarding to %s; archive %s; scorers %s; verdicts to %s", forward, archive,
                 ", ".join(active) or "none active", verdicts)  # fmt: skip

    def _worker_settings(self) -> WorkerSettings:
        scoring, telemetry = self.config.scoring, self.config.telemetry
        return WorkerSettings(
            judges=dict(self.config.judges), max_concurrency=scoring.max_concurrency,
            code_workers=scoring.code_workers, code_timeout_s=scoring.code_timeout, sys_path=list(sys.path),
            emit_interval_s=scoring.emit_interval, verdicts="relay" if self.config.assessments_endpoint else "off",
            archive=self.archive is not None or self.recent_verdicts is not None,
            push_metrics=telemetry.otlp_endpoint is not None,
            metrics_endpoint=telemetry.otlp_endpoint, metrics_interval_s=telemetry.otlp_interval,
            sessions=self.config.sessions, sessions_journal=str(self.config.data_dir / "scoring" / "sessions.jsonl"),
            budget=self.config.judge_budget, budget_ledger=str(self.config.budget_ledger),
        )  # fmt: skip

    def _validate(self, spec: ScorerSpec) -> None:
        """Registration's check that a spec can run, answered by the scoring worker where it would run."""
        self.engine.validate(spec)

    def _consumer_failed(self, consumer: TraceConsumer, trace: Trace) -> None:
        """A trace the scoring engine failed on is recorded as skipped (`error`); another consumer's failure
        (archive summaries, an embedder's consumer) leaves scoring alone, so it is only counted and logged."""
        if consumer is self.engine:
            self.engine.record_error([trace])

    def _log_verdicts(self, signal: Signal, payload: bytes, items: int) -> None:
        """Verdicts are logged before they are forwarded, like app data, but only to the verdicts endpoint
        and never into the archive's spans (their rows are the assessments table). Never refused: the
        traces they judge were accepted."""
        self.wal.append(signal, payload, items, RecordKind.VERDICTS, force=True)

    def _status_page(self) -> StatusPage:
        """The status page over what the sidecar has; protected by the control plane's token beyond loopback."""
        assert self.recent_verdicts is not None
        token, telemetry = self.config.control.token, self.config.telemetry
        sources = Sources(
            self.recent_verdicts, self.registry.all, lambda: self.engine.quarantined, self.telemetry.metrics_text,
            lambda: self.telemetry.ready, tuple(endpoint.url for endpoint in self.config.forward),
            str(self.config.archive_dir) if self.archive is not None else None,
        )  # fmt: skip
        access = PageAccess(token.get_secret_value() if token else None, telemetry.prometheus_endpoint)
        return StatusPage(self.config.status_page, sources, access)

    def _relay_rows(self, frame: bytes, items: int) -> None:
        """The scoring worker's rows go to the archive (when on); its verdicts' also to the status page's ring.
        A verdict the ring cannot read is still archived."""
        if self.recent_verdicts is not None and table_of(frame) == "assessments":
            try:
                self.recent_verdicts.add_rows(decode_rows(frame[1:]))
            except Exception:
                log.exception("could not keep %d verdicts for the status page", items)
        if self.archive is not None:
            self.archive.write_rows_frame(frame, items)

    def _record_skipped(self, rows: list[dict[str, Any]]) -> None:
        if self.archive is not None:
            self.archive.write_rows("skipped", rows)

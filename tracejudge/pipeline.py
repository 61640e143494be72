"""The one place where tracejudge's parts are wired together.

receiver → IngestRouter → { forwarder, archive, assembler → trace consumers }.
Start order brings consumers up before producers; stop order is the reverse, so every span
accepted before a stop is forwarded (or kept on disk), archived and assembled.
"""

from __future__ import annotations

import functools
import gc
import logging
import signal
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from google.protobuf.message import Message
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from tracejudge.config import Config, ForwardEndpointConfig
from tracejudge.control import ControlPlane, ScorerService, grpc_handlers, http_routes
from tracejudge.exporter.archive import ArchiveFull, ParquetArchive
from tracejudge.exporter.assessment_emitter import AssessmentMetrics
from tracejudge.exporter.forwarder import Forwarder
from tracejudge.exporter.trace_summary import TraceSummaryRecorder
from tracejudge.model import Signal, Trace, TraceConsumer
from tracejudge.receiver.assembler import TraceAssembler
from tracejudge.receiver.export import Overloaded
from tracejudge.receiver.grpc_server import GrpcReceiver
from tracejudge.receiver.http_server import HttpReceiver
from tracejudge.schema import SCORER_SERVICE
from tracejudge.scoring.code import CodeRunner
from tracejudge.scoring.engine import ScoringEngine
from tracejudge.scoring.judge_client import JudgePool
from tracejudge.scoring.registry import ScorerRegistry
from tracejudge.scoring.scorers import Scorer, build_scorer
from tracejudge.scoring.spec import ScorerSpec
from tracejudge.scoring.worker import WorkerSettings
from tracejudge.scoring.worker_process import ScoringWorker
from tracejudge.telemetry import SelfTelemetry

log = logging.getLogger(__name__)


class FanOut:
    """Hands each batch of decided traces to several consumers."""

    def __init__(self, consumers: Sequence[TraceConsumer]) -> None:
        self._consumers = list(consumers)

    def consume(self, traces: Sequence[Trace]) -> None:
        for consumer in self._consumers:
            consumer.consume(traces)


class IngestRouter:
    """The receivers' ExportConsumer: archive (may push back), forward, assemble."""

    def __init__(self, forwarder: Forwarder, archive: ParquetArchive | None, assembler: TraceAssembler) -> None:
        self._forwarder = forwarder
        self._archive = archive
        self._assembler = assembler

    def consume(self, signal: Signal, request: Message, payload: bytes, items: int) -> None:
        if self._archive is not None:
            try:
                if signal is Signal.TRACES:
                    self._archive.write_spans(payload, items)
                elif signal is Signal.LOGS:
                    self._archive.write_logs(payload, items)
            except ArchiveFull as exc:
                raise Overloaded(f"tracejudge is overloaded: {exc}", retry_after=1.0) from exc
        self._forwarder.submit(signal, payload, items)
        if isinstance(request, ExportTraceServiceRequest):
            self._assembler.add_spans(request)
        elif isinstance(request, ExportLogsServiceRequest):
            self._assembler.add_logs(request)


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


class Pipeline:
    def __init__(self, config: Config, trace_consumers: Sequence[TraceConsumer] = ()) -> None:
        self.config = config
        self.telemetry = SelfTelemetry(config.telemetry)
        meter = self.telemetry.meter
        config.data_dir.mkdir(parents=True, exist_ok=True)
        self.archive = ParquetArchive(config.archive, config.archive_dir, meter) if config.archive.enabled else None
        verdicts_to = config.assessments_endpoint
        forwarded = {endpoint.url for endpoint in config.forward}
        private = (
            [ForwardEndpointConfig(url=verdicts_to)] if verdicts_to and verdicts_to.rstrip("/") not in forwarded else []
        )
        self.forwarder = Forwarder(config.forward, config.queue_dir, meter, private=private)
        self.judges = JudgePool(config.judges)
        self._code = CodeRunner(config.scoring.code_workers, config.scoring.code_timeout)  # validation only
        self.registry = ScorerRegistry(
            config.data_dir / "scorers.json", config.scoring.max_active_scorers, validate=self._build_scorer
        )
        self.registry.apply_config(config.scorers)
        scoring = config.scoring
        self._assessment_metrics = AssessmentMetrics(meter)
        self.engine = ScoringEngine(
            self.registry, self._record_assessments, self._record_skipped, meter, scoring.max_backlog
        )
        self.scoring_worker = ScoringWorker(
            self._worker_settings(), config.data_dir, scoring.worker_nice,
            self.engine.on_progress, self.engine.on_worker_lost,
            forward_verdicts=functools.partial(self.forwarder.submit_to, verdicts_to) if verdicts_to else None,
        )  # fmt: skip
        self.engine.attach(self.scoring_worker)
        summaries: list[TraceConsumer] = [TraceSummaryRecorder(self.archive)] if self.archive else []
        consumers = [*summaries, self.engine, *trace_consumers]
        self.assembler = TraceAssembler(config.assembler, FanOut(consumers), meter)
        router = IngestRouter(self.forwarder, self.archive, self.assembler)
        receiver = config.receiver
        listen = [receiver.grpc_endpoint, receiver.http_endpoint]
        token = config.control.token
        control = ControlPlane({SCORER_SERVICE: ScorerService(self.registry)}, token, listen)
        control_grpc = grpc_handlers(control)
        self.grpc = GrpcReceiver(receiver, router, meter, control_grpc) if receiver.grpc_endpoint else None
        control_http = http_routes(control)
        self.http = HttpReceiver(receiver, router, meter, control_http) if receiver.http_endpoint else None
        self._stopped = threading.Event()

    def start(self) -> BoundPorts:
        if self.archive is not None:
            self.archive.start()
        self.forwarder.start()
        self.scoring_worker.start()
        self.assembler.start()
        admin = self.telemetry.start()
        ports = BoundPorts(
            grpc=self.grpc.start() if self.grpc else None,
            http=self.http.start() if self.http else None,
            admin=admin,
        )
        self.telemetry.ready = True
        self._log_plan()
        return ports

    def _log_plan(self) -> None:
        """One line a new user can check: where spans and verdicts go, and what is scored."""
        forward = ", ".join(endpoint.url for endpoint in self.config.forward) or "nowhere (archive only)"
        archive = str(self.config.archive_dir) if self.archive is not None else "off"
        active = [f"{spec.name}@{spec.sample_rate:g}" for spec in self.registry.active()]
        verdicts = self.config.assessments_endpoint or "metrics and archive only"
        log.info("forwarding to %s; archive %s; scorers %s; verdicts to %s", forward, archive,
                 ", ".join(active) or "none active", verdicts)  # fmt: skip

    def stop(self, drain_timeout: float = 10.0) -> None:
        """Stop accepting, decide every buffered trace, drain the forwarder, close archive files."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        self.telemetry.ready = False
        if self.grpc:
            self.grpc.stop(grace=2.0)
        if self.http:
            self.http.stop()
        self.assembler.stop()
        self.engine.stop(self.config.scoring.drain_timeout)
        self._code.shutdown()
        self.forwarder.stop(drain_timeout)
        if self.archive is not None:
            self.archive.stop()
        self.telemetry.shutdown()
        log.info("tracejudge stopped")

    def _worker_settings(self) -> WorkerSettings:
        scoring = self.config.scoring
        return WorkerSettings(
            judges=dict(self.config.judges), max_concurrency=scoring.max_concurrency,
            code_workers=scoring.code_workers, code_timeout_s=scoring.code_timeout, sys_path=list(sys.path),
            emit_otlp=self.config.assessments_endpoint is not None, emit_interval_s=scoring.emit_interval,
        )  # fmt: skip

    def _build_scorer(self, spec: ScorerSpec) -> Scorer:
        """Registration's check that a spec can run (the scoring worker builds its own)."""
        return build_scorer(spec, self.judges.get, self._code)

    def _record_assessments(self, rows: list[dict[str, Any]]) -> None:
        self._assessment_metrics.record_rows(rows)
        if self.archive is not None:
            self.archive.write_assessments(rows)

    def _record_skipped(self, rows: list[dict[str, Any]]) -> None:
        if self.archive is not None:
            self.archive.write_skipped(rows)

    def serve_until_signalled(self, drain_timeout: float = 10.0) -> None:
        """Start, serve until SIGTERM or SIGINT, stop. Handlers go in first, so a signal that
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
            self.stop(drain_timeout)

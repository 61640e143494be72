"""TraceAssembler: groups spans by trace id and decides when a trace is complete.

A trace is complete when a local root span has arrived (OTLP only carries ended spans) and no span
came for `trace_idle`, or `trace_timeout` after its first span, or it is the oldest one when the
memory cap is exceeded (flagged incomplete). Decided trace ids are remembered, in a bounded cache,
so late spans never start a second, partial trace; they are still forwarded and archived elsewhere.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from tracejudge.model import BufferedLog, BufferedSpan, CompletionReason, Trace, TraceConsumer
from tracejudge.otlp import is_genai_event, is_local_root
from tracejudge.receiver.config import AssemblerConfig

log = logging.getLogger(__name__)

# Per-item Python overhead (tuple, ids, ints, list slot) added to the payload size in the memory cap:
# bench/ingest.py's memory phase measured ~1,360 B of RSS per buffered span of ~850 wire bytes.
SPAN_OVERHEAD_BYTES = 512


@dataclass(slots=True)
class _Pending:
    first_seen: float
    last_seen: float
    spans: list[BufferedSpan] = field(default_factory=list)
    logs: list[BufferedLog] = field(default_factory=list)
    root_seen: bool = False
    size: int = 0
    first_record: int = -1  # the write-ahead log record its first span came in (-1: not logged)


class TraceAssembler:
    def __init__(
        self,
        config: AssemblerConfig,
        consumer: TraceConsumer,
        meter: metrics.Meter,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._config = config
        self._consumer = consumer
        self._clock = clock
        self._lock = threading.Lock()
        self._pending: OrderedDict[bytes, _Pending] = OrderedDict()
        self._idle_checks: deque[tuple[float, bytes]] = deque()
        self._decided: OrderedDict[bytes, None] = OrderedDict()
        self._buffered_bytes = 0
        self._stopping = threading.Event()
        self._ticker = threading.Thread(target=self._run, name="trace-assembler", daemon=True)
        self._completed = meter.create_counter(
            "tracejudge.assembler.completed_traces", description="Traces decided, by reason and completeness"
        )
        self._late = meter.create_counter(
            "tracejudge.assembler.late_spans",
            description="Spans that arrived after their trace was decided (forwarded and archived, not scored)",
        )
        meter.create_observable_gauge(
            "tracejudge.assembler.buffered_traces", [self._observe_traces], description="Traces being assembled"
        )
        meter.create_observable_gauge(
            "tracejudge.assembler.buffered_bytes",
            [self._observe_bytes],
            unit="By",
            description="Approximate memory held by traces being assembled",
        )

    @property
    def buffered_traces(self) -> int:
        return len(self._pending)

    @property
    def buffered_bytes(self) -> int:
        return self._buffered_bytes

    def oldest_record(self) -> int | None:
        """The oldest write-ahead log record holding a span of a trace not yet decided (None: none);
        the sidecar commits the assembler's cursor up to it, so a restart rebuilds those traces."""
        with self._lock:
            return min((p.first_record for p in self._pending.values() if p.first_record >= 0), default=None)

    def add_spans(self, request: ExportTraceServiceRequest, record: int = -1) -> None:
        """`record`: the write-ahead log record the request is (see oldest_record)."""
        now = self._clock()
        late = 0
        rooted: set[bytes] = set()
        with self._lock:
            for resource_spans in request.resource_spans:
                resource = resource_spans.resource.SerializeToString()
                for scope_spans in resource_spans.scope_spans:
                    scope = scope_spans.scope.SerializeToString()
                    for span in scope_spans.spans:
                        trace_id = span.trace_id
                        if trace_id in self._decided:
                            late += 1
                            continue
                        parent = span.parent_span_id
                        buffered = BufferedSpan(
                            span.span_id,
                            parent,
                            span.start_time_unix_nano,
                            span.end_time_unix_nano,
                            span.status.code,
                            is_local_root(parent, span.flags),
                            span.SerializeToString(),
                            resource,
                            scope,
                        )
                        pending = self._touch(trace_id, now, len(buffered.span_bytes), record)
                        pending.spans.append(buffered)
                        if buffered.is_local_root:
                            pending.root_seen = True
                        if pending.root_seen:
                            rooted.add(trace_id)
            deadline = now + self._config.trace_idle
            self._idle_checks.extend((deadline, trace_id) for trace_id in rooted)
            evicted = self._enforce_memory_cap()
        if late:
            self._late.add(late)
        self._deliver(evicted)

    def add_logs(self, request: ExportLogsServiceRequest, number: int = -1) -> None:
        """Keep GenAI log events (legacy prompt/completion events) with their trace."""
        now = self._clock()
        with self._lock:
            for resource_logs in request.resource_logs:
                resource = resource_logs.resource.SerializeToString()
                for scope_logs in resource_logs.scope_logs:
                    for record in scope_logs.log_records:
                        if not record.trace_id or not is_genai_event(_event_name(record)):
                            continue
                        if record.trace_id in self._decided:
                            continue
                        data = record.SerializeToString()
                        pending = self._touch(record.trace_id, now, len(data), number)
                        pending.logs.append(BufferedLog(record.span_id, data, resource))
            evicted = self._enforce_memory_cap()
        self._deliver(evicted)

    def tick(self) -> None:
        """Decide every trace that is complete now; the ticker thread calls this periodically."""
        now = self._clock()
        decided: list[Trace] = []
        with self._lock:
            idle = self._config.trace_idle
            while self._idle_checks and self._idle_checks[0][0] <= now:
                _, trace_id = self._idle_checks.popleft()
                pending = self._pending.get(trace_id)
                if pending is not None and pending.last_seen + idle <= now:
                    decided.append(self._decide(trace_id, CompletionReason.ROOT_IDLE, complete=True))
            timeout = self._config.trace_timeout
            while self._pending:
                trace_id, pending = next(iter(self._pending.items()))
                if pending.first_seen + timeout > now:
                    break
                decided.append(self._decide(trace_id, CompletionReason.TIMEOUT, complete=pending.root_seen))
        self._deliver(decided)

    def decide_rooted(self) -> None:
        """Decide now every trace whose local root has arrived (reason: flush), without waiting for
        `trace_idle`: an app's force_flush, at the end of a serverless invocation, means its traces are done."""
        with self._lock:
            rooted = [trace_id for trace_id, pending in self._pending.items() if pending.root_seen]
            decided = [self._decide(trace_id, CompletionReason.FLUSH, complete=True) for trace_id in rooted]
        self._deliver(decided)

    def start(self) -> None:
        self._ticker.start()

    def shutdown(self, timeout_s: float = 5.0) -> None:
        """Stop the ticker and hand every buffered trace on (reason: shutdown)."""
        self._stopping.set()
        if self._ticker.is_alive():
            self._ticker.join(timeout_s)
        self._decide_all(CompletionReason.SHUTDOWN)

    def end_of_input(self) -> None:
        """Decide every buffered trace now (reason: end_of_input), complete when its local root arrived: a
        batch source (a file) has no more spans to wait for, so no clock needs to run out."""
        self._decide_all(CompletionReason.END_OF_INPUT)

    def _decide_all(self, reason: CompletionReason) -> None:
        with self._lock:
            decided = [
                self._decide(trace_id, reason, complete=pending.root_seen)
                for trace_id, pending in list(self._pending.items())
            ]
        self._deliver(decided)

    def _run(self) -> None:
        while not self._stopping.wait(self._config.check_interval):
            try:
                self.tick()
            except Exception:
                log.exception("trace assembler tick failed; continuing")

    def _touch(self, trace_id: bytes, now: float, size: int, record: int) -> _Pending:
        pending = self._pending.get(trace_id)
        if pending is None:
            pending = self._pending[trace_id] = _Pending(first_seen=now, last_seen=now, first_record=record)
        pending.last_seen = now
        pending.size += size + SPAN_OVERHEAD_BYTES
        self._buffered_bytes += size + SPAN_OVERHEAD_BYTES
        return pending

    def shed(self, fraction: float) -> int:
        """Decide the oldest traces now, incomplete (memory_cap), until `fraction` of the buffered bytes is
        gone: the memory limiter's lever when the process is over its soft limit. Returns how many."""
        with self._lock:
            target = self._buffered_bytes * (1 - fraction)
            evicted = []
            while self._pending and self._buffered_bytes > target:
                evicted.append(self._decide(next(iter(self._pending)), CompletionReason.MEMORY_CAP, complete=False))
        self._deliver(evicted)
        return len(evicted)

    def _enforce_memory_cap(self) -> list[Trace]:
        evicted = []
        while self._buffered_bytes > self._config.max_buffered_bytes and self._pending:
            oldest = next(iter(self._pending))
            evicted.append(self._decide(oldest, CompletionReason.MEMORY_CAP, complete=False))
        return evicted

    def _decide(self, trace_id: bytes, reason: CompletionReason, complete: bool) -> Trace:
        pending = self._pending.pop(trace_id)
        self._buffered_bytes -= pending.size
        self._decided[trace_id] = None
        if len(self._decided) > self._config.decided_cache_size:
            self._decided.popitem(last=False)
        return Trace(
            trace_id=trace_id,
            spans=pending.spans,
            logs=pending.logs,
            first_seen=pending.first_seen,
            last_seen=pending.last_seen,
            reason=reason,
            complete=complete,
        )

    def _deliver(self, traces: list[Trace]) -> None:
        if not traces:
            return
        for (reason, complete), count in Counter((t.reason.value, t.complete) for t in traces).items():
            self._completed.add(count, {"reason": reason, "complete": complete})
        try:
            self._consumer.consume(traces)
        except Exception:
            log.exception("trace consumer failed on %d traces", len(traces))

    def _observe_traces(self, _options: CallbackOptions) -> Iterable[Observation]:
        yield Observation(len(self._pending))

    def _observe_bytes(self, _options: CallbackOptions) -> Iterable[Observation]:
        yield Observation(self._buffered_bytes)


def _event_name(record: object) -> str:
    name = getattr(record, "event_name", "")
    if name:
        return str(name)
    for attribute in record.attributes:  # type: ignore[attr-defined]
        if attribute.key == "event.name":
            return str(attribute.value.string_value)
    return ""

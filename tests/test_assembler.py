"""TraceAssembler's completion rules, driven by a manual clock."""

from __future__ import annotations

import os
from collections.abc import Sequence

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span
from opentelemetry.sdk.metrics import MeterProvider

from tracejudge.model import CompletionReason, Trace
from tracejudge.receiver.assembler import TraceAssembler
from tracejudge.receiver.config import AssemblerConfig


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Recorder:
    def __init__(self) -> None:
        self.traces: list[Trace] = []

    def consume(self, traces: Sequence[Trace]) -> None:
        self.traces.extend(traces)


def request(*spans: Span) -> ExportTraceServiceRequest:
    message = ExportTraceServiceRequest()
    message.resource_spans.add().scope_spans.add().spans.extend(spans)
    return message


def span(trace_id: bytes, parent: bytes = b"", flags: int = 0) -> Span:
    return Span(trace_id=trace_id, span_id=os.urandom(8), parent_span_id=parent, flags=flags, name="s")


def make(**config: object) -> tuple[TraceAssembler, Clock, Recorder]:
    clock, recorder = Clock(), Recorder()
    settings = AssemblerConfig(**{"trace_idle": 2, "trace_timeout": 60, **config})  # type: ignore[arg-type]
    meter = MeterProvider().get_meter("test")
    return TraceAssembler(settings, recorder, meter, clock=clock), clock, recorder


def test_root_then_idle_completes_and_new_spans_reset_the_idle_timer():
    assembler, clock, recorder = make()
    tid = os.urandom(16)
    root = span(tid)
    assembler.add_spans(request(root, span(tid, root.span_id)))
    clock.now += 1.5
    assembler.add_spans(request(span(tid, root.span_id)))
    clock.now += 1.9
    assembler.tick()
    assert recorder.traces == []
    clock.now += 0.2
    assembler.tick()
    [trace] = recorder.traces
    assert (trace.reason, trace.complete, len(trace.spans)) == (CompletionReason.ROOT_IDLE, True, 3)
    assert trace.root is not None and trace.root.span_id == root.span_id


def test_span_with_remote_parent_counts_as_local_root():
    assembler, clock, recorder = make()
    tid = os.urandom(16)
    assembler.add_spans(request(span(tid, parent=os.urandom(8), flags=0x300)))
    assembler.add_spans(request(span(os.urandom(16), parent=os.urandom(8), flags=0x100)))
    clock.now += 2.1
    assembler.tick()
    assert [t.trace_id for t in recorder.traces] == [tid]


def test_rootless_trace_times_out_incomplete():
    assembler, clock, recorder = make()
    assembler.add_spans(request(span(os.urandom(16), parent=os.urandom(8))))
    clock.now += 59
    assembler.tick()
    assert recorder.traces == []
    clock.now += 1
    assembler.tick()
    assert [(t.reason, t.complete) for t in recorder.traces] == [(CompletionReason.TIMEOUT, False)]


def test_late_spans_never_start_a_second_trace():
    assembler, clock, recorder = make()
    tid = os.urandom(16)
    assembler.add_spans(request(span(tid)))
    clock.now += 3
    assembler.tick()
    assembler.add_spans(request(span(tid, parent=os.urandom(8))))
    clock.now += 100
    assembler.tick()
    assembler.shutdown()
    assert len(recorder.traces) == 1 and assembler.buffered_traces == 0


def test_memory_cap_evicts_oldest_first_and_accounting_returns_to_zero():
    assembler, clock, recorder = make(max_buffered_bytes=5000)
    ids = [os.urandom(16) for _ in range(20)]
    for tid in ids:
        clock.now += 0.01
        assembler.add_spans(request(span(tid, parent=b"\x01" * 8)))
    assert assembler.buffered_bytes <= 5000
    assert [t.trace_id for t in recorder.traces] == ids[: len(recorder.traces)]
    assert {(t.reason, t.complete) for t in recorder.traces} == {(CompletionReason.MEMORY_CAP, False)}
    assembler.shutdown()
    assert len(recorder.traces) == 20 and assembler.buffered_bytes == 0


def test_genai_log_events_join_their_trace_and_other_logs_do_not():
    assembler, clock, recorder = make()
    tid = os.urandom(16)
    root = span(tid)
    logs = ExportLogsServiceRequest()
    records = logs.resource_logs.add().scope_logs.add().log_records
    records.add(trace_id=tid, span_id=root.span_id, event_name="gen_ai.user.message")
    legacy = records.add(trace_id=tid, span_id=root.span_id)
    legacy.attributes.add(key="event.name").value.string_value = "gen_ai.choice"
    records.add(trace_id=tid, span_id=root.span_id, event_name="http.request")
    records.add(event_name="gen_ai.user.message")
    assembler.add_logs(logs)
    assembler.add_spans(request(root))
    clock.now += 2.5
    assembler.tick()
    [trace] = recorder.traces
    assert len(trace.logs) == 2 and all(log.span_id == root.span_id for log in trace.logs)

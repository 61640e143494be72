"""Every trace source yields the same Trace: extraction reads a trace from the archive or from an OTLP/JSON file
exactly as it read it live.

The end-to-end proof: one real sidecar (tracejudge.sidecar.Sidecar, run in this process so that a TraceConsumer
on its live assembler keeps the live traces) receives the OTLP of every real instrumentation the tests run
(tests/instrumented_apps.py) and of the synthetic conventions, over gRPC; it archives them (its real archive
writer process) and forwards them to a sink, whose requests are written as an OTLP/JSON lines file, as the
Collector's file exporter writes. Then, trace by trace, extract(live) == extract(archived) == extract(file).

The archive's layout (partition pruning, traces across hours, old files) is tested with the archive writer's
own TableWriter and row builders, on a wall clock the test sets.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import grpc
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
from google.protobuf import json_format
from google.protobuf.message import Message
from instrumented_apps import APPS, run_instrumented_app
from mock_openai import MockOpenAI
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord
from opentelemetry.proto.resource.v1.resource_pb2 import Resource as ProtoResource
from opentelemetry.proto.trace.v1.trace_pb2 import Span
from opentelemetry.proto.trace.v1.trace_pb2 import Status as ProtoStatus
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.trace import Status, StatusCode
from test_otlp_json import _hex_ids

from tracejudge.config_file import load_config
from tracejudge.exporter import rows
from tracejudge.exporter.archive_reader import ArchiveTraceSource
from tracejudge.exporter.archive_worker import TableWriter
from tracejudge.exporter.trace_summary import summarize
from tracejudge.model import CompletionReason, Signal, Trace
from tracejudge.otlp import GRPC_EXPORT_METHODS, any_value
from tracejudge.receiver.assembler import TraceAssembler
from tracejudge.receiver.config import AssemblerConfig
from tracejudge.receiver.otlp_file import OtlpFileError, OtlpFileTraceSource
from tracejudge.scoring.extract import extract
from tracejudge.scoring.view import TraceView
from tracejudge.sidecar import Sidecar
from tracejudge.synthetic import genai_request
from tracejudge.testing import free_port, wait_until

from otlp_peers import GrpcSink

# --- OTLP as apps and files carry it ---------------------------------------------------------------------


def otlp_json(message: Message) -> str:
    """A message as the Collector's file exporter writes it: OTLP/JSON, hex ids, enums as integers, one line."""
    return json.dumps(_hex_ids(json_format.MessageToDict(message, use_integers_for_enums=True)))


def export(target: str, *requests: ExportTraceServiceRequest | ExportLogsServiceRequest) -> None:
    """Send export requests over OTLP/gRPC, as an app's exporter does."""
    with grpc.insecure_channel(target) as channel:
        for request in requests:
            signal = Signal.TRACES if isinstance(request, ExportTraceServiceRequest) else Signal.LOGS
            channel.unary_unary(GRPC_EXPORT_METHODS[signal])(request.SerializeToString(), timeout=10)


def kv(key: str, value: Any) -> KeyValue:
    item = KeyValue(key=key)
    _set(item.value, value)
    return item


def _set(target: AnyValue, value: Any) -> None:
    """Python values as AnyValue, bytes included (what JSON cannot hold)."""
    if isinstance(value, bytes):
        target.bytes_value = value
    elif isinstance(value, str):
        target.string_value = value
    elif isinstance(value, bool):
        target.bool_value = value
    elif isinstance(value, int):
        target.int_value = value
    elif isinstance(value, float):
        target.double_value = value
    elif isinstance(value, list):
        target.array_value.SetInParent()
        for item in value:
            _set(target.array_value.values.add(), item)
    elif isinstance(value, dict):
        target.kvlist_value.SetInParent()
        target.kvlist_value.values.extend(kv(k, v) for k, v in value.items())


# --- the synthetic sources -------------------------------------------------------------------------------

TRACE_ID = bytes.fromhex("7a0e4fd1c5b14f0e9a1f3e5d2c6b8a90")
REMOTE_PARENT = bytes.fromhex("00f067aa0ba902b7")
ENTRY, CHAT, TOOL = (bytes.fromhex(h) for h in ("1111111111111111", "2222222222222222", "3333333333333333"))
T0 = 1_767_000_000_000_000_000  # 2025-12-29T09:20:00Z

STRUCTURED_INPUT = [{"role": "user", "parts": [{"type": "text", "content": "Which plan suits a team of 12?"}]}]


def typed_values(t0: int = T0) -> tuple[ExportTraceServiceRequest, ExportLogsServiceRequest]:
    """A service's entry span (its parent remote: flags 0x300) with values of every AnyValue type, a failed chat
    call with an exception event and a link, a tool call; GenAI log events, one named only by its event.name
    attribute (older SDKs), and an app log that is no GenAI event."""
    request = ExportTraceServiceRequest()
    resource_spans = request.resource_spans.add()
    resource_spans.resource.attributes.extend(
        [kv("service.name", "typed-app"), kv("host.cores", 4), kv("deploy.weight", 1.0), kv("build", b"\x01\x02")]
    )
    scope_spans = resource_spans.scope_spans.add()
    scope_spans.scope.name, scope_spans.scope.version = "typed", "1.2"
    entry = Span(trace_id=TRACE_ID, span_id=ENTRY, parent_span_id=REMOTE_PARENT, flags=0x300, name="POST /chat",
                 kind=Span.SPAN_KIND_SERVER, trace_state="vendor=1", start_time_unix_nano=t0,
                 end_time_unix_nano=t0 + 900_000_000)  # fmt: skip
    entry.attributes.extend([
        kv("gen_ai.operation.name", "invoke_agent"), kv("gen_ai.input.messages", STRUCTURED_INPUT),
        kv("gen_ai.output.messages", '[{"role": "assistant", "parts": [{"type": "text", "content": "Team."}]}]'),
        kv("session.id", "typed-1"), kv("user.id", "u-9"), kv("retries", 3), kv("ratio", 0.5), kv("weight", 2.0),
        kv("big", 2**62), kv("negative", -7), kv("ok", True), kv("blob", b"\x00\xffhi"), kv("empty", ""),
        kv("mixed", ["a", 1, 2.0, False]), kv("no_items", []), kv("nested", {"a": {"b": [1, 2.5]}, "c": {}}),
        kv("unset", None), kv("unicode", "héllo ✓"),
    ])  # fmt: skip
    entry.status.code = ProtoStatus.STATUS_CODE_OK
    chat = Span(trace_id=TRACE_ID, span_id=CHAT, parent_span_id=ENTRY, flags=0x100, name="chat gpt-4.1",
                kind=Span.SPAN_KIND_CLIENT, start_time_unix_nano=t0 + 100_000_000,
                end_time_unix_nano=t0 + 500_000_000)  # fmt: skip
    chat.attributes.extend([kv("gen_ai.operation.name", "chat"), kv("gen_ai.request.model", "gpt-4.1"),
                            kv("gen_ai.usage.input_tokens", 41), kv("gen_ai.usage.output_tokens", 7)])  # fmt: skip
    chat.status.code, chat.status.message = ProtoStatus.STATUS_CODE_ERROR, "RateLimitError: slow down"
    event = chat.events.add(name="exception", time_unix_nano=t0 + 400_000_000)
    event.attributes.extend([kv("exception.type", "RateLimitError"), kv("exception.message", "slow down"),
                             kv("exception.escaped", False), kv("attempt", 2)])  # fmt: skip
    link = chat.links.add(trace_id=bytes(range(16)), span_id=bytes(range(8)))
    link.attributes.append(kv("link.reason", "retry-of"))
    tool = Span(trace_id=TRACE_ID, span_id=TOOL, parent_span_id=ENTRY, flags=0x100, name="execute_tool plans",
                kind=Span.SPAN_KIND_INTERNAL, start_time_unix_nano=t0 + 600_000_000,
                end_time_unix_nano=t0 + 700_000_000)  # fmt: skip
    tool.attributes.extend([kv("gen_ai.operation.name", "execute_tool"), kv("gen_ai.tool.name", "plans"),
                            kv("gen_ai.tool.call.id", "call_1"), kv("gen_ai.tool.call.arguments", {"seats": 12}),
                            kv("gen_ai.tool.call.result", '{"plan": "Team"}')])  # fmt: skip
    scope_spans.spans.extend([tool, chat, entry])  # the entry span ends last
    logs = ExportLogsServiceRequest()
    resource_logs = logs.resource_logs.add()
    resource_logs.resource.attributes.append(kv("service.name", "typed-app"))
    records = resource_logs.scope_logs.add().log_records
    user = LogRecord(trace_id=TRACE_ID, span_id=CHAT, time_unix_nano=t0 + 110_000_000, event_name="gen_ai.user.message")
    _set(user.body, {"content": "Which plan suits a team of 12?"})
    choice = LogRecord(trace_id=TRACE_ID, span_id=CHAT, time_unix_nano=t0 + 490_000_000, severity_number=9)
    choice.attributes.append(kv("event.name", "gen_ai.choice"))
    _set(choice.body, {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "Team."}})
    app_log = LogRecord(trace_id=TRACE_ID, span_id=ENTRY, time_unix_nano=t0 + 5, event_name="app.request")
    _set(app_log.body, "request accepted")
    records.extend([user, choice, app_log])
    return request, logs


def langfuse_app(target: str) -> None:
    """A Langfuse-convention agent (the attributes of tests/test_extract.py's test_langfuse), traced with the
    OTel SDK and exported over OTLP/gRPC like any app; its tool fails with a recorded exception."""
    provider = TracerProvider(resource=Resource.create({"service.name": "lf-agent", "deployment.tier": 2}))
    provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(endpoint=target, insecure=True)))
    tracer = provider.get_tracer("langfuse-app")
    question, answer = "What is the weather in Paris?", "It is 21 degrees and sunny in Paris."
    o = "langfuse.observation."
    agent = {o + "type": "agent", "langfuse.trace.name": "support", "langfuse.session.id": "lf-sess",
             "langfuse.trace.input": json.dumps({"query": question}), "langfuse.user.id": "dave",
             "langfuse.trace.output": json.dumps({"answer": answer}),
             "langfuse.trace.tags": ["beta", "eu"]}  # fmt: skip
    steps = [
        ("search-docs", {o + "type": "retriever", o + "input": json.dumps(question),
                         o + "output": json.dumps([{"content": "Paris: sunny.", "score": 0.7}])}),
        ("llm-call", {o + "type": "generation", o + "model.name": "claude-sonnet",
                      o + "input": json.dumps([{"role": "user", "content": question}]),
                      o + "output": json.dumps({"role": "assistant", "content": answer}),
                      o + "usage_details": json.dumps({"input": 33, "output": 11})}),
        ("weather-api", {o + "type": "tool", o + "input": json.dumps({"city": "Paris"}), o + "level": "ERROR",
                         o + "status_message": "503"}),
    ]  # fmt: skip
    with tracer.start_as_current_span("support-agent", attributes=agent):
        for name, attributes in steps:
            with tracer.start_as_current_span(name, attributes=attributes, record_exception=False) as span:
                if name == "weather-api":
                    span.record_exception(TimeoutError("weather API returned 503"))
                    span.set_status(Status(StatusCode.ERROR, "TimeoutError: weather API returned 503"))
    provider.shutdown()


# --- one sidecar, every source -------------------------------------------------------------------------


class Recorder:
    def __init__(self) -> None:
        self.traces: list[Trace] = []

    def consume(self, traces: Sequence[Trace]) -> None:
        self.traces.extend(traces)


@dataclass
class Sourced:
    cases: dict[str, list[bytes]] = field(default_factory=dict)  # case -> the trace ids it made
    live: dict[bytes, Trace] = field(default_factory=dict)
    archived: dict[bytes, Trace] = field(default_factory=dict)
    from_file: dict[bytes, Trace] = field(default_factory=dict)


def by_id(batches: Iterator[list[Trace]]) -> dict[bytes, Trace]:
    traces = [trace for batch in batches for trace in batch]
    found = {trace.trace_id: trace for trace in traces}
    assert len(found) == len(traces), "a source yielded a trace twice"
    return found


# What each case must show, so that three equal views are never three empty ones.
EXPECTED: dict[str, Callable[[TraceView], bool]] = {
    "mlflow": lambda v: "damaged kettle" in v.request_text and bool(v.retrieved_documents),
    **{name: (lambda v: "refund window" in v.request_text) for name in APPS if name != "mlflow"},
    "synthetic-genai": lambda v: len(v.llm_calls) == 2 and v.session_id == "session-1",
    "langfuse": lambda v: v.model == "claude-sonnet" and v.status == "ERROR" and v.session_id == "lf-sess",
    "typed-values": lambda v: v.request_text == "Which plan suits a team of 12?" and len(v.llm_calls) == 1,
}
CASES = list(EXPECTED)


@pytest.fixture(scope="module")
def sourced(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sourced]:
    tmp = tmp_path_factory.mktemp("sources")
    sink = GrpcSink().start()
    target = f"127.0.0.1:{free_port()}"
    config = load_config(overrides={"data_dir": str(tmp / "tj"), "receiver.grpc_endpoint": target,
                                    "receiver.http_endpoint": None, "telemetry.prometheus_endpoint": None,
                                    "assembler.trace_idle": "200ms", "forward": [{"url": sink.url}]})  # fmt: skip
    live = Recorder()
    result = Sourced()
    sidecar = Sidecar(config, trace_consumers=[live])
    started = datetime.now(timezone.utc)
    sidecar.start()

    def run(case: str, send: Callable[[], None], traces: int = 1) -> None:
        before = len(live.traces)
        send()
        assert wait_until(lambda: len(live.traces) >= before + traces, timeout=30), f"{case}: no live trace"
        result.cases[case] = [trace.trace_id for trace in live.traces[before:]]

    try:
        with MockOpenAI() as model:
            for name, app in APPS.items():
                run(name, lambda app=app, name=name: run_instrumented_app(tmp / name, app, target, model.base_url))
        run("synthetic-genai", lambda: export(target, genai_request(3)), traces=3)
        run("langfuse", lambda: langfuse_app(target))
        run("typed-values", lambda: export(target, *typed_values(time.time_ns())))
    finally:
        sidecar.shutdown()  # forwards what is left, closes the archive's files
        sink.stop()
    result.live = {trace.trace_id: trace for trace in live.traces}
    window = ArchiveTraceSource(config.archive_dir, started - timedelta(minutes=1), datetime.now(timezone.utc))
    result.archived = by_id(window.batches())
    lines = [otlp_json(r) for signal in ("traces", "logs") for r in sink.received.requests(signal)]
    (tmp / "otlp.jsonl").write_text("\n".join(lines) + "\n")
    result.from_file = by_id(OtlpFileTraceSource(tmp / "otlp.jsonl").batches())
    yield result


def hot_fields(trace: Trace) -> list[tuple[Any, ...]]:
    return sorted((s.span_id, s.parent_span_id, s.start_time_unix_nano, s.end_time_unix_nano, s.status_code,
                   s.is_local_root) for s in trace.spans)  # fmt: skip


@pytest.mark.parametrize("case", CASES)
def test_archive_and_file_yield_the_trace_extraction_read_live(sourced: Sourced, case: str):
    assert sourced.cases[case], f"{case} made no trace"
    for trace_id in sourced.cases[case]:
        live = sourced.live[trace_id]
        archived, from_file = sourced.archived[trace_id], sourced.from_file[trace_id]
        view = extract(live)
        assert view.has_genai and EXPECTED[case](view), view
        assert extract(archived) == view
        assert extract(from_file) == view
        assert hot_fields(archived) == hot_fields(live) == hot_fields(from_file)
        assert len(archived.logs) == len(live.logs) == len(from_file.logs)
        assert (
            (archived.reason, archived.complete) == (live.reason, live.complete) == (CompletionReason.ROOT_IDLE, True)
        )
        assert (from_file.reason, from_file.complete) == (CompletionReason.END_OF_INPUT, True)


def test_every_source_yields_the_same_traces(sourced: Sourced):
    """Nothing more, nothing less: the archive window and the file hold exactly the traces decided live."""
    assert sourced.live.keys() == sourced.archived.keys() == sourced.from_file.keys()


def typed(value: AnyValue) -> tuple[str | None, Any]:
    """An AnyValue's type and value, exactly (1 and 1.0 differ); bytes as any_value() reads them."""
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return kind, [typed(item) for item in value.array_value.values]
    if kind == "kvlist_value":
        return kind, [(item.key, typed(item.value)) for item in value.kvlist_value.values]
    return kind, any_value(value)


def typed_attributes(attributes: Sequence[KeyValue]) -> dict[str, tuple[str | None, Any]]:
    return {item.key: typed(item.value) for item in attributes}


def test_the_archive_keeps_value_types_flags_events_and_links(sourced: Sourced):
    """Option (a) of bench/archive_fidelity.py at work: every attribute comes back with its AnyValue type (int
    apart from double, arrays and kvlists nested, empty ones empty), except bytes, which come back as the base64
    text any_value() reads them as; the entry span's remote parent survives as its flags, so it is the root."""
    [trace_id] = sourced.cases["typed-values"]
    live, archived = sourced.live[trace_id], sourced.archived[trace_id]
    assert live.root is not None and archived.root is not None and archived.root.span_id == live.root.span_id == ENTRY
    for was, now in zip(sorted(live.spans), sorted(archived.spans), strict=True):
        before, after = Span.FromString(was.span_bytes), Span.FromString(now.span_bytes)
        expected = typed_attributes(before.attributes)
        if "blob" in expected:
            expected["blob"] = ("string_value", base64.b64encode(b"\x00\xffhi").decode())
        assert typed_attributes(after.attributes) == expected
        assert (after.flags, after.kind, after.trace_state, after.name) == (before.flags, before.kind,
                                                                          before.trace_state, before.name)  # fmt: skip
        assert (after.status.code, after.status.message) == (before.status.code, before.status.message)
        assert [(e.name, e.time_unix_nano, typed_attributes(e.attributes)) for e in after.events] == [
            (e.name, e.time_unix_nano, typed_attributes(e.attributes)) for e in before.events
        ]
        assert [(k.trace_id, k.span_id, typed_attributes(k.attributes)) for k in after.links] == [
            (k.trace_id, k.span_id, typed_attributes(k.attributes)) for k in before.links
        ]
    resource = typed_attributes(ProtoResource.FromString(archived.root.resource_bytes).attributes)
    assert resource["host.cores"] == ("int_value", 4) and resource["deploy.weight"] == ("double_value", 1.0)
    names = sorted(LogRecord.FromString(log.log_bytes).severity_number for log in archived.logs)
    assert len(archived.logs) == len(live.logs) == 2 and names == [0, 9]  # the app's log is no GenAI event


# --- the archive's layout: hours, pruning, old files ---------------------------------------------------

HOUR = 3600
DAY = datetime(2026, 3, 2, tzinfo=timezone.utc)


def at(hour: int, minute: int = 0, second: float = 0) -> datetime:
    return DAY + timedelta(hours=hour, minutes=minute, seconds=second)


def ns(moment: datetime) -> int:
    return int(moment.timestamp()) * 10**9 + moment.microsecond * 1000


class Archive:
    """The archive writer's own TableWriters and row builders on a wall clock the test sets, so that rows land
    in the hour partitions a test picks; every write is a file of its own (the writer rolls often)."""

    def __init__(self, directory: Path, spans_schema: Any = rows.SPANS_SCHEMA) -> None:
        self.directory = directory
        self.now = 0.0
        schemas = {"spans": spans_schema, "logs": rows.LOGS_SCHEMA, "traces": rows.TRACES_SCHEMA}
        self._tables = {name: TableWriter(directory / name, schema, 64 << 20, 3600.0, wall_clock=lambda: self.now)
                        for name, schema in schemas.items()}  # fmt: skip

    def write(self, table: str, moment: datetime, batch: Any) -> None:
        self.now = moment.timestamp()
        self._tables[table].append(batch)
        self._tables[table].close()

    def spans(self, moment: datetime, request: ExportTraceServiceRequest, old_schema: bool = False) -> None:
        batch = rows.spans_batch(request, received_at=ns(moment))
        self.write("spans", moment, batch.drop_columns(["flags"]) if old_schema else batch)

    def logs(self, moment: datetime, request: ExportLogsServiceRequest) -> None:
        self.write("logs", moment, rows.logs_batch(request, received_at=ns(moment)))

    def decided(self, moment: datetime, trace: Trace) -> None:
        row = {**summarize(trace), "decided_at": ns(moment)}
        self.write("traces", moment, rows.pa.RecordBatch.from_pylist([row], schema=rows.TRACES_SCHEMA))


def assemble(*requests: ExportTraceServiceRequest | ExportLogsServiceRequest) -> Trace:
    """The trace the live assembler makes of `requests` (manual clock: decided once idle)."""
    now = [0.0]
    recorder = Recorder()
    assembler = TraceAssembler(AssemblerConfig(), recorder, MeterProvider().get_meter("test"), clock=lambda: now[0])
    for request in requests:
        if isinstance(request, ExportTraceServiceRequest):
            assembler.add_spans(request)
        else:
            assembler.add_logs(request)
    now[0] += 3
    assembler.tick()
    [trace] = recorder.traces
    return trace


def agent_turn(start: datetime, name: str = "turn") -> tuple[ExportTraceServiceRequest, ExportTraceServiceRequest]:
    """One agent turn of tracejudge.synthetic starting at `start`: (its children, its root), the way an app
    exports them, each span as it ends (the root last)."""
    request = genai_request(1, start_ns=ns(start))
    spans = request.resource_spans[0].scope_spans[0].spans
    spans[0].name = name
    children, root = ExportTraceServiceRequest(), ExportTraceServiceRequest()
    children.CopyFrom(request)
    root.CopyFrom(request)
    del children.resource_spans[0].scope_spans[0].spans[0]
    del root.resource_spans[0].scope_spans[0].spans[1:]
    return children, root


def rebuilt(archive: Path, start: datetime, end: datetime, **options: Any) -> list[Trace]:
    return [trace for batch in ArchiveTraceSource(archive, start, end, **options).batches() for trace in batch]


class CountingHandler(pafs.FileSystemHandler):
    """A pyarrow filesystem (the local one, as an object store would be reached) that records every file
    opened and every directory listed."""

    def __init__(self) -> None:
        self.fs = pafs.LocalFileSystem()
        self.opened: list[str] = []
        self.listed: list[str] = []

    def get_type_name(self) -> str:
        return "counting"

    def normalize_path(self, path: str) -> str:
        return self.fs.normalize_path(path)

    def get_file_info(self, paths: list[str]) -> list[pafs.FileInfo]:
        return self.fs.get_file_info(paths)

    def get_file_info_selector(self, selector: pafs.FileSelector) -> list[pafs.FileInfo]:
        self.listed.append(selector.base_dir)
        return self.fs.get_file_info(selector)

    def open_input_file(self, path: str) -> Any:
        self.opened.append(path)
        return self.fs.open_input_file(path)

    def open_input_stream(self, path: str) -> Any:
        self.opened.append(path)
        return self.fs.open_input_stream(path)

    def create_dir(self, path: str, recursive: bool) -> None:
        raise AssertionError("the reader writes nothing")

    delete_dir = delete_dir_contents = delete_root_dir_contents = delete_file = create_dir  # type: ignore[assignment]
    move = copy_file = open_output_stream = open_append_stream = create_dir  # type: ignore[assignment]

    def equals(self, other: Any) -> bool:
        return self is other


def test_a_window_reads_only_the_hour_partitions_that_can_hold_its_traces(tmp_path: Path):
    archive = Archive(tmp_path)
    for hour in (9, 10, 11, 12):
        children, root = agent_turn(at(hour, 30), name=f"turn at {hour}:30")
        archive.spans(at(hour, 30, 1), children)
        archive.spans(at(hour, 30, 2), root)
        archive.decided(at(hour, 30, 4), assemble(children, root))
    for hour in (9, 11, 12):  # unreadable if read: a reader that opened them would fail
        for table in ("spans", "traces"):
            (tmp_path / table / rows.partition_of(at(hour).timestamp()) / "part-0-junk.parquet").write_bytes(b"junk")
    counting = CountingHandler()

    source = ArchiveTraceSource(tmp_path, at(10, 20), at(10, 40), timedelta(minutes=10),
                                filesystem=pafs.PyFileSystem(counting))  # fmt: skip
    [trace] = [trace for batch in source.batches() for trace in batch]

    assert extract(trace).root_span_id and Span.FromString(trace.root.span_bytes).name == "turn at 10:30"  # type: ignore[union-attr]
    assert source.hours() == [ns(at(10))]
    hour_10 = {str(path) for path in tmp_path.glob("*/date=2026-03-02/hour=10/*.parquet")}
    assert len(hour_10) == 3 and set(counting.opened) == hour_10  # two spans files, one traces file
    assert counting.listed and all(directory.endswith("/hour=10") for directory in counting.listed), counting.listed


def test_a_trace_across_an_hour_boundary_is_rebuilt_whole_in_the_window_it_started_in(tmp_path: Path):
    archive = Archive(tmp_path)
    children, root = agent_turn(at(10, 59, 30))  # its root ends 0.9 s later, at 10:59:30.9...
    archive.spans(at(10, 59, 31), children)  # ...and its children reach the archive in hour 10,
    archive.spans(at(11, 0, 1), root)  # its root in hour 11 (the writer held it past 11:00), its summary too
    straddling = assemble(children, root)
    archive.decided(at(11, 0, 3), straddling)
    later_children, later_root = agent_turn(at(11, 0, 5), name="next turn")
    archive.spans(at(11, 0, 6), later_children)
    archive.spans(at(11, 0, 7), later_root)

    [trace] = rebuilt(tmp_path, at(10, 30), at(11))

    assert trace.trace_id == straddling.trace_id and len(trace.spans) == 5
    assert (trace.reason, trace.complete) == (CompletionReason.ROOT_IDLE, True)
    assert extract(trace) == extract(straddling)
    [next_turn] = rebuilt(tmp_path, at(11), at(12))  # the window it did not start in never has it
    assert Span.FromString(next_turn.root.span_bytes).name == "next turn"  # type: ignore[union-attr]
    assert (next_turn.reason, next_turn.complete) == (CompletionReason.END_OF_INPUT, True)  # never decided live


def test_a_span_later_than_the_lateness_allowance_never_makes_a_second_trace(tmp_path: Path):
    """As the live assembler drops spans of a trace it already decided: handed on once, without the late span."""
    archive = Archive(tmp_path)
    children, root = agent_turn(at(10, 30))
    archive.spans(at(10, 30, 1), root)
    late = ExportTraceServiceRequest()
    late.CopyFrom(children)
    del late.resource_spans[0].scope_spans[0].spans[1:]
    del children.resource_spans[0].scope_spans[0].spans[0]
    archive.spans(at(10, 30, 2), children)
    archive.spans(at(13, 30), late)  # a sidecar that was down replays it three hours later

    [trace] = rebuilt(tmp_path, at(10), at(14), lateness=timedelta(minutes=10))

    assert len(trace.spans) == 4 and trace.complete


def test_an_empty_window_yields_nothing(tmp_path: Path):
    archive = Archive(tmp_path)
    children, root = agent_turn(at(10, 30))
    archive.spans(at(10, 30, 1), children)
    archive.spans(at(10, 30, 2), root)

    assert list(ArchiveTraceSource(tmp_path, at(14), at(15)).batches()) == []
    assert list(ArchiveTraceSource(tmp_path, at(10, 31), at(10, 40)).batches()) == []  # spans, but none starts in it
    assert list(ArchiveTraceSource(tmp_path / "no-archive-yet", at(10), at(11)).batches()) == []
    with pytest.raises(ValueError, match="empty window"):
        ArchiveTraceSource(tmp_path, at(11), at(10))


def test_files_written_before_the_flags_column_are_read_with_their_entry_spans_unknown(tmp_path: Path):
    """A spans file of the old schema (no flags column) beside a new one in the same hour: both are read, the old
    one with null flags, so its remote-parented entry span is no local root and its trace's root falls back to
    its earliest span, as extraction's own fallback does: only `complete` differs from the live trace."""
    request, logs = typed_values()
    moment = datetime.fromtimestamp(T0 / 1e9, tz=timezone.utc)
    old_schema = rows.SPANS_SCHEMA.remove(rows.SPANS_SCHEMA.get_field_index("flags"))
    Archive(tmp_path, old_schema).spans(moment + timedelta(seconds=1), request, old_schema=True)
    new = Archive(tmp_path)
    new.logs(moment + timedelta(seconds=1), logs)
    children, root = agent_turn(moment + timedelta(milliseconds=1))
    new.spans(moment + timedelta(seconds=2), children)
    new.spans(moment + timedelta(seconds=3), root)

    from_old_file, from_new_file = rebuilt(tmp_path, moment, moment + timedelta(seconds=1))

    live = assemble(request, logs)
    assert [s.is_local_root for s in from_old_file.spans] == [False, False, False] and from_old_file.root is None
    assert (from_old_file.reason, from_old_file.complete) == (CompletionReason.END_OF_INPUT, False)
    assert extract(from_old_file) == extract(replace(live, complete=False))
    assert hot_fields(from_new_file) == hot_fields(assemble(children, root)) and from_new_file.complete


def test_a_span_the_archive_holds_twice_is_yielded_once(tmp_path: Path):
    """A client that retries a request the sidecar had already accepted gets it archived twice."""
    request, logs = typed_values()
    moment = datetime.fromtimestamp(T0 / 1e9, tz=timezone.utc)
    archive = Archive(tmp_path)
    for seconds in (1, 2):
        archive.spans(moment + timedelta(seconds=seconds), request)
        archive.logs(moment + timedelta(seconds=seconds), logs)

    [trace] = rebuilt(tmp_path, moment, moment + timedelta(seconds=1))

    live = assemble(request, logs)
    assert hot_fields(trace) == hot_fields(live) and len(trace.logs) == len(live.logs) == 2
    assert extract(trace) == extract(replace(live, reason=trace.reason))


# --- streaming: traces handed on as they are decided, not as hours are read ------------------------------


def one_span(request: ExportTraceServiceRequest, index: int) -> ExportTraceServiceRequest:
    """A request of `request`'s span number `index` alone."""
    single = ExportTraceServiceRequest()
    single.CopyFrom(request)
    spans = single.resource_spans[0].scope_spans[0].spans
    kept = spans[index]
    del spans[:]
    spans.append(kept)
    return single


def first_trace_id(request: ExportTraceServiceRequest) -> bytes:
    return bytes(request.resource_spans[0].scope_spans[0].spans[0].trace_id)


def first_span_id(request: ExportTraceServiceRequest) -> bytes:
    return bytes(request.resource_spans[0].scope_spans[0].spans[0].span_id)


def decision_row(trace: Trace, moment: datetime, **changes: Any) -> dict[str, Any]:
    return {**summarize(replace(trace, **changes)), "decided_at": ns(moment)}


def test_the_traces_of_an_hour_are_handed_on_as_they_are_decided_not_once_the_hour_is_read(tmp_path: Path):
    """Each turn's files (its spans, its decision) are read in order of arrival, and the turn handed on once its
    decision and every span it counts are read: its batch comes before the next turns' files are opened, and
    no more than one turn is ever held, however many the hour has (the reader before held the hour's all)."""
    archive = Archive(tmp_path)
    for minute in range(6):
        children, root = agent_turn(at(10, 20 + minute), name=f"turn {minute}")
        archive.spans(at(10, 20 + minute, 1), children)
        archive.spans(at(10, 20 + minute, 2), root)
        archive.decided(at(10, 20 + minute, 4), assemble(children, root))
    counting = CountingHandler()
    source = ArchiveTraceSource(tmp_path, at(10), at(11), filesystem=pafs.PyFileSystem(counting), batch_size=1)

    opened_at_yield, names = [], []
    for [trace] in source.batches():
        opened_at_yield.append(len(counting.opened))
        names.append(Span.FromString(trace.root.span_bytes).name)  # type: ignore[union-attr]

    assert names == [f"turn {minute}" for minute in range(6)]
    footers = len(list(tmp_path.rglob("*.parquet")))  # each file's, read once when its hour is listed
    assert footers == 18 and opened_at_yield == [footers + 3 * turns for turns in range(1, 7)]  # then row groups
    assert source.most_pending == 1 and source.pending == 0


def test_a_trace_whose_spans_straddle_row_groups_and_files_waits_for_every_span_its_decision_counts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """Its children in one file of two row groups, its decision next, its root in a later file stamped after the
    decision (a writer running behind stamps rows when it builds them): the decision's span count keeps the
    trace until the root is read, so it is rebuilt whole, not handed on without its root."""
    monkeypatch.setattr(TableWriter, "ROW_GROUP_ROWS", 2)
    children, root = agent_turn(at(10, 30))
    archive = Archive(tmp_path)
    spans = TableWriter(tmp_path / "spans", rows.SPANS_SCHEMA, 64 << 20, 3600.0, wall_clock=lambda: archive.now)
    archive.now = at(10, 30, 1).timestamp()
    for index in range(4):  # one span a request: row groups of two spans
        spans.append(rows.spans_batch(one_span(children, index), received_at=ns(at(10, 30, 1))))
    spans.close()
    whole = assemble(children, root)
    archive.decided(at(10, 30, 3), whole)
    archive.spans(at(10, 30, 5), root)

    [trace] = rebuilt(tmp_path, at(10), at(11))

    files = sorted((tmp_path / "spans").rglob("*.parquet"))
    assert [pq.ParquetFile(path).metadata.num_row_groups for path in files] == [2, 1]
    assert len(trace.spans) == 5 and trace.root is not None
    assert (trace.reason, trace.complete) == (CompletionReason.ROOT_IDLE, True)
    assert extract(trace) == extract(whole)


def test_a_span_read_before_its_trace_is_handed_on_is_kept_and_one_read_after_is_dropped(tmp_path: Path):
    """Spans that reach the archive after the trace's decision (the live assembler dropped them): one in the row
    group read before the decision is kept, as before; one in a file read after the trace was handed on is
    dropped, never a second, partial trace, even well within `lateness`."""
    children, root = agent_turn(at(10, 30))
    other_children, other_root = agent_turn(at(10, 30))
    late_before, late_after = one_span(other_children, 0), other_root  # two more spans...
    for late in (late_before, late_after):
        late.resource_spans[0].scope_spans[0].spans[0].trace_id = first_trace_id(children)  # ...of the same trace
    archive = Archive(tmp_path)
    archive.spans(at(10, 30, 1), children)
    batch = rows.pa.concat_batches([rows.spans_batch(root, received_at=ns(at(10, 30, 2))),
                                    rows.spans_batch(late_before, received_at=ns(at(10, 30, 6)))])  # fmt: skip
    archive.write("spans", at(10, 30, 6), batch)  # the root and a late span: one row group
    archive.decided(at(10, 30, 4), assemble(children, root))
    archive.spans(at(10, 31), late_after)

    traces = rebuilt(tmp_path, at(10), at(11))

    [trace] = traces
    span_ids = {s.span_id for s in trace.spans}
    assert len(trace.spans) == len(span_ids) == 6
    assert first_span_id(late_before) in span_ids and first_span_id(late_after) not in span_ids


def test_an_undecided_trace_is_handed_on_once_its_hours_are_read_after_the_decided_ones(tmp_path: Path):
    """A trace the sidecar never decided is END_OF_INPUT, handed on by the hour-by-hour rule: once the hours
    within `lateness` of it are read, so after a later trace decided in the same hour (batches are in the order
    traces are handed on, not by start), with the hour's last, and before a trace two hours later."""
    archive = Archive(tmp_path)
    undecided_children, undecided_root = agent_turn(at(10, 30), name="undecided")
    archive.spans(at(10, 30, 1), undecided_children)
    archive.spans(at(10, 30, 2), undecided_root)
    children, root = agent_turn(at(10, 31), name="decided")
    archive.spans(at(10, 31, 1), children)
    archive.spans(at(10, 31, 2), root)
    archive.decided(at(10, 31, 4), assemble(children, root))
    last_children, last_root = agent_turn(at(10, 55), name="the hour's last")
    archive.spans(at(10, 55, 1), last_children)
    archive.spans(at(10, 55, 2), last_root)
    archive.decided(at(10, 55, 4), assemble(last_children, last_root))
    later_children, later_root = agent_turn(at(12, 30), name="two hours later")
    archive.spans(at(12, 30, 1), later_children)
    archive.spans(at(12, 30, 2), later_root)

    traces = rebuilt(tmp_path, at(10), at(13), lateness=timedelta(minutes=10))

    names = [Span.FromString(t.root.span_bytes).name for t in traces]  # type: ignore[union-attr]
    assert names == ["decided", "undecided", "the hour's last", "two hours later"]  # the last two at once
    assert [(t.reason, t.complete) for t in traces] == [(CompletionReason.ROOT_IDLE, True),
                                                        (CompletionReason.END_OF_INPUT, True),
                                                        (CompletionReason.ROOT_IDLE, True),
                                                        (CompletionReason.END_OF_INPUT, True)]  # fmt: skip


def test_a_trace_decided_twice_takes_the_latest_decision_read_before_it_is_handed_on(tmp_path: Path):
    """Two decisions in one file: the latest wins. A decision read after the trace was handed on (a restarted
    sidecar deciding again, minutes later, the part of it its log replayed) is dropped like any later row."""
    archive = Archive(tmp_path)
    children, root = agent_turn(at(10, 30), name="twice in one file")
    archive.spans(at(10, 30, 1), children)
    archive.spans(at(10, 30, 2), root)
    whole = assemble(children, root)
    decisions = [decision_row(whole, at(10, 30, 3), reason=CompletionReason.TIMEOUT, complete=False),
                 decision_row(whole, at(10, 30, 4))]  # fmt: skip
    archive.write("traces", at(10, 30, 4), rows.pa.RecordBatch.from_pylist(decisions, schema=rows.TRACES_SCHEMA))
    replayed_children, replayed_root = agent_turn(at(10, 40), name="decided again later")
    archive.spans(at(10, 40, 1), replayed_children)
    archive.spans(at(10, 40, 2), replayed_root)
    replayed = assemble(replayed_children, replayed_root)
    archive.decided(at(10, 40, 4), replayed)
    archive.decided(at(10, 45), replace(replayed, reason=CompletionReason.SHUTDOWN, complete=False))

    first, second = rebuilt(tmp_path, at(10), at(11))

    assert (first.trace_id, first.reason, first.complete) == (whole.trace_id, CompletionReason.ROOT_IDLE, True)
    assert (second.trace_id, second.reason, second.complete) == (replayed.trace_id, CompletionReason.ROOT_IDLE, True)


# --- OTLP/JSON files -------------------------------------------------------------------------------------


def test_a_pretty_printed_document_and_a_metrics_line_are_read_as_the_collector_writes_them(tmp_path: Path):
    request, logs = typed_values()
    pretty = tmp_path / "one-document.json"
    pretty.write_text(json.dumps(json.loads(otlp_json(request)), indent=2))
    metrics = '{"resourceMetrics": [{"scopeMetrics": [{"metrics": [{"name": "up", "gauge": {"dataPoints": []}}]}]}]}'
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text("\n".join([otlp_json(logs), metrics, "", otlp_json(request)]) + "\n")

    [[from_document]] = OtlpFileTraceSource(pretty).batches()
    [[from_lines]] = OtlpFileTraceSource(mixed).batches()

    assert extract(from_document) == extract(replace(assemble(request), reason=CompletionReason.END_OF_INPUT))
    assert extract(from_lines) == extract(assemble(request, logs)) and len(from_lines.logs) == 2
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n" + metrics + "\n")
    assert list(OtlpFileTraceSource(empty).batches()) == []


BAD_LINES = {
    "not JSON": ('{"resourceSpans": [', "not valid JSON: "),
    "not an object": ('["resourceSpans"]', "expected an OTLP export request (a JSON object), not ['resourceSpans']"),
    "no request": ('{"spans": []}', "expected one of resourceSpans, resourceLogs, resourceMetrics; found keys"),
    "a bad id": ('{"resourceSpans": [{"scopeSpans": [{"spans": [{"traceId": "12a", "spanId": "01"}]}]}]}',
                 "resourceSpans[0].scopeSpans[0].spans[0].traceId: not 32 hex characters"),
    "a bad field": ('{"resourceLogs": [{"scopeLogs": [{"logRecords": [{"timeUnixNano": "soon"}]}]}]}',
                    "timeUnixNano"),
}  # fmt: skip


@pytest.mark.parametrize("bad", BAD_LINES)
def test_a_malformed_line_is_an_error_naming_the_file_and_the_line(tmp_path: Path, bad: str):
    """Never a silent skip: the good lines around it yield nothing either, as a bad request body is refused whole."""
    request, logs = typed_values()
    line, reason = BAD_LINES[bad]
    path = tmp_path / "traces.jsonl"
    path.write_text("\n".join([otlp_json(request), "", otlp_json(logs), line, otlp_json(request)]) + "\n")

    with pytest.raises(OtlpFileError) as raised:
        list(OtlpFileTraceSource(path).batches())

    assert (raised.value.path, raised.value.line) == (path, 4)
    assert str(raised.value).startswith(f"{path}:4: ") and reason in raised.value.reason

"""ArchiveTraceSource: the traces of a time window, rebuilt from the Parquet archive as the live assembler
handed them on, so that backfill and evaluate read past traces exactly as scoring read them live.

    for batch in ArchiveTraceSource(archive_dir, start, end).batches():
        ...  # lists of tracejudge.model.Trace

Which traces: those whose earliest span starts in [start, end), each whole (every span the archive holds
for it, whichever hour it reached the archive in), with its GenAI log events (the `logs` table, kept as the
assembler keeps them) and its completion reason and completeness from the `traces` table (the latest
decision where a trace was decided more than once). A trace the sidecar never decided (it stopped first)
is END_OF_INPUT, complete when its local root is there. A span the archive holds twice (a client retried a
request the sidecar had already accepted) is kept once.

Which files: a row lands in the hour partition (rows.partition_of) of the moment the writer writes it, which
is after its span ended, so after its trace started; `lateness` bounds how much later: the trace's
duration (assembler.trace_timeout, 60 s by default, gives up on longer ones), the app's export delay and the
writer's buffering (archive.roll_interval, 60 s). The default, 10 minutes, covers those with room. So only
the hour directories from start - lateness (the app's clock may run ahead of the sidecar's) to
end + lateness are listed and read, through pyarrow.dataset over a pyarrow.fs filesystem (object storage
next to local disk); no other directory is even listed, so a 1-hour window costs the same in a
6-month archive as in a fresh one. Rows the writer got later than `lateness` after their trace started (a
sidecar down for longer, replaying) are missed: in a partition not read, or read after their trace was
handed on, when they are dropped rather than made a second, partial trace (the live assembler's rule).

Streaming: hours are read in order, and a trace is handed on as soon as every partition that can hold its
rows has been read, so memory holds about lateness + 1 hour of rows, not the window.

How spans are rebuilt, and why (option (a) of bench/archive_fidelity.py): from the JSON columns (attributes,
resource attributes, events, links) and the `flags` column, which this reader needed and SPANS_SCHEMA gained
(last, so older files keep their column positions). Option (b) was each span's OTLP bytes in a binary
column. One run of the bench, both options and the baseline over the same spans, interleaved per request of
~500 spans, fastest of 7 each (2 CPUs):

                              archive, zstd bytes/span      rows built (writer), spans/s     rebuilt (reader)
                              baseline   (a)      (b)       baseline  (a)       (b)          (a)     (b)
    synthetic agent turns       19.1    19.1     37.9        47.2k   47.1k     41.5k        45.5k   228k
    text unique per trace      277.3   277.3    570.6        50.1k   50.1k     44.1k        42.9k   221k
    real instrumentations       29.6    29.6     58.1        25.2k   24.8k     21.8k        35.9k   223k

(b) doubles the archive (+96 to +106 %: zstd cannot share the span bytes with the JSON columns, which DuckDB
users need, so they stay) and costs the writer, ingest's most CPU-hungry step, 12-14 %. (a) costs neither:
+0.1 % bytes, and its rate is the baseline's within noise (-0.1 to -1.7 %: the two run the same code). (b)
rebuilds 5-6x faster, but rebuilding runs for backfill and evaluate, off the live path, where ~25 us a span is
nothing beside a judge call. And (a) loses nothing extraction reads: JSON keeps int apart from double, bools,
nested arrays and kvlists, empty values; bytes come back as their base64 text, which any_value(), so
extraction, reads exactly as the bytes. Not kept: NaN and infinities (orjson writes null), dropped counts,
scope attributes, links' flags and trace state, log records' flags.

Files written before the flags column read with null flags (the dataset is read with today's schema): a span
whose parent is remote is then no local root, so such a trace's root is its earliest span, as extraction's
fallback already does.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.fs as pafs
from opentelemetry.proto.common.v1.common_pb2 import InstrumentationScope
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from tracejudge.exporter import rows
from tracejudge.exporter.archive_store import ArchiveUnavailable, S3Options, archive_filesystem, location_text
from tracejudge.model import BufferedLog, BufferedSpan, CompletionReason, Trace
from tracejudge.otlp import add_attributes, is_genai_event, is_local_root, set_any_value

__all__ = ["DEFAULT_LATENESS", "ArchiveTraceSource"]

DEFAULT_LATENESS = timedelta(minutes=10)
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_HOUR_NS = 3600 * 10**9
# Trace ids already handed on whose later rows are dropped, as TraceAssembler's decided cache (its default size).
_HANDED_ON_CACHE = 200_000
_KINDS = {name: value for value, name in rows.KINDS.items()}
_STATUS = {name: value for value, name in rows.STATUS_CODES.items()}

SPAN_COLUMNS = ["trace_id", "span_id", "parent_span_id", "trace_state", "name", "kind", "start_time", "end_time",
                 "status_code", "status_message", "scope_name", "scope_version", "attributes",
                 "resource_attributes", "events", "links", "received_at", "flags"]  # fmt: skip
LOG_COLUMNS = ["trace_id", "span_id", "time", "observed_time", "severity_number", "severity_text", "event_name",
                "body", "attributes", "resource_attributes", "received_at"]  # fmt: skip
TRACE_COLUMNS = ["trace_id", "complete", "completion_reason", "decided_at"]
# Log rows worth parsing: a GenAI event name, or none with an event.name attribute (older SDKs put it there).
LOG_FILTER = (ds.field("trace_id") != "") & (
    pc.starts_with(ds.field("event_name"), pattern="gen_ai.")
    | ((ds.field("event_name") == "") & pc.match_substring(ds.field("attributes"), pattern='"event.name"'))
)


@dataclass(slots=True)
class PendingTrace:
    """One trace's rows so far, kept as read and rebuilt into spans only if the trace is in the window. `horizon`
    is never later than the trace's start: its earliest span read so far, or the earliest arrival of any of its
    rows (nothing arrives before its trace starts)."""

    horizon: int
    start: int | None = None
    spans: dict[str, tuple[Any, ...]] = field(default_factory=dict)  # span id (hex) -> row: a span held twice is one
    logs: dict[tuple[Any, ...], tuple[Any, ...]] = field(default_factory=dict)  # the same, by all but arrival
    first_seen: int = 0
    last_seen: int = 0
    decided_at: int = -1
    reason: CompletionReason | None = None
    complete: bool = False

    def saw(self, moment: int) -> None:
        self.horizon = min(self.horizon, moment)
        self.first_seen = min(self.first_seen or moment, moment)
        self.last_seen = max(self.last_seen, moment)


class ArchiveTraceSource:
    """The traces of [start, end) in the archive at `archive_dir` (a local path, or a URI pyarrow.fs knows,
    such as s3://bucket/prefix, with `s3` its archive.s3 options; or a path on `filesystem`). A TraceSource:
    batches() yields lists of at most `batch_size` traces, in windows of an hour, each ordered by start; nothing
    at all for an empty window."""

    def __init__(
        self,
        archive_dir: str | Path,
        start: datetime,
        end: datetime,
        lateness: timedelta = DEFAULT_LATENESS,
        *,
        filesystem: pafs.FileSystem | None = None,
        s3: S3Options | None = None,
        batch_size: int = 1000,
    ) -> None:
        if start.tzinfo is None or end.tzinfo is None:
            raise ValueError("start and end must be timezone-aware datetimes (the archive's hours are UTC)")
        if end <= start:
            raise ValueError(f"empty window: end {end.isoformat()} is not after start {start.isoformat()}")
        if lateness < timedelta(0) or batch_size < 1:
            raise ValueError("lateness must be >= 0 and batch_size >= 1")
        self._fs, self._root = _filesystem(archive_dir, filesystem, s3)
        self._shown = location_text(archive_dir)
        self._start, self._end = _ns(start), _ns(end)
        self._lateness = int(lateness.total_seconds() * 1e9)
        self._batch_size = batch_size

    def hours(self) -> list[int]:
        """The hour partitions read (their start, epoch ns): those that can hold rows of the window's traces."""
        first = (self._start - self._lateness) // _HOUR_NS
        last = (self._end + self._lateness) // _HOUR_NS
        return [hour * _HOUR_NS for hour in range(first, last + 1)]

    def batches(self) -> Iterator[list[Trace]]:
        pending: dict[bytes, PendingTrace] = {}
        handed_on: dict[bytes, None] = {}
        hours = self.hours()
        for hour in hours:
            self._read_spans(hour, pending)
            self._read_logs(hour, pending)
            self._read_decisions(hour, pending)
            for trace_id in pending.keys() & handed_on.keys():
                del pending[trace_id]  # rows later than `lateness`: not a second, partial trace (the assembler's rule)
            done_before = hour + _HOUR_NS - self._lateness if hour != hours[-1] else None
            yield from self._chunks(self._finish(pending, done_before, handed_on))

    def _finish(self, pending: dict[bytes, PendingTrace], done_before: int | None, handed_on: dict[bytes, None]
                ) -> list[Trace]:  # fmt: skip
        """Hand on the traces no later partition can add to (their horizon + lateness is before the end of the
        hour just read; all of them after the last hour), keeping those of the window, in order of start."""
        finished = [tid for tid, p in pending.items() if done_before is None or p.horizon < done_before]
        traces = []
        for trace_id in finished:
            trace = pending.pop(trace_id)
            handed_on[trace_id] = None
            if trace.start is not None and self._start <= trace.start < self._end:
                traces.append((trace.start, rebuilt_trace(trace_id, trace)))
        while len(handed_on) > _HANDED_ON_CACHE:
            del handed_on[next(iter(handed_on))]
        traces.sort(key=lambda item: item[0])
        return [trace for _, trace in traces]

    def _chunks(self, traces: list[Trace]) -> Iterator[list[Trace]]:
        for offset in range(0, len(traces), self._batch_size):
            yield traces[offset : offset + self._batch_size]

    def _read_spans(self, hour: int, pending: dict[bytes, PendingTrace]) -> None:
        table = self._read("spans", rows.SPANS_SCHEMA, hour, SPAN_COLUMNS)
        if table is None:
            return
        for row in zip(*pylists(table, SPAN_COLUMNS), strict=True):
            start = row[6]
            trace = _pending(pending, bytes.fromhex(row[0]), start)
            trace.saw(row[16])
            trace.start = start if trace.start is None else min(trace.start, start)
            trace.horizon = min(trace.horizon, start)
            trace.spans.setdefault(row[1], row)

    def _read_logs(self, hour: int, pending: dict[bytes, PendingTrace]) -> None:
        table = self._read("logs", rows.LOGS_SCHEMA, hour, LOG_COLUMNS, LOG_FILTER)
        if table is None:
            return
        for row in zip(*pylists(table, LOG_COLUMNS), strict=True):
            name = row[6] or orjson.loads(row[8]).get("event.name")
            if isinstance(name, str) and is_genai_event(name):
                trace = _pending(pending, bytes.fromhex(row[0]), row[10])
                trace.saw(row[10])
                trace.logs.setdefault(row[:10], row)

    def _read_decisions(self, hour: int, pending: dict[bytes, PendingTrace]) -> None:
        table = self._read("traces", rows.TRACES_SCHEMA, hour, TRACE_COLUMNS)
        if table is None:
            return
        for trace_id_hex, complete, reason, decided_at in zip(*pylists(table, TRACE_COLUMNS), strict=True):
            trace = _pending(pending, bytes.fromhex(trace_id_hex), decided_at)
            trace.horizon = min(trace.horizon, decided_at)
            if decided_at >= trace.decided_at:
                trace.decided_at, trace.complete = decided_at, bool(complete)
                trace.reason = completion_reason(reason)

    def _read(
        self, table: str, schema: pa.Schema, hour: int, columns: list[str], where: ds.Expression | None = None
    ) -> pa.Table | None:
        """One hour partition of one table, read with today's schema (a column older files lack is null);
        None when the partition does not exist. Hidden files (the writer's open .tmp files) are skipped."""
        directory = f"{self._root}/{table}/{rows.partition_of(hour / 1e9)}"
        try:
            if self._fs.get_file_info(directory).type != pafs.FileType.Directory:
                return None
            dataset = ds.dataset(directory, schema=schema, format="parquet", filesystem=self._fs)
            return dataset.to_table(columns=columns, filter=where)
        except OSError as exc:
            raise ArchiveUnavailable(f"cannot read the archive at {self._shown} ({table}): {exc}") from exc


def span_from_row(row: Sequence[Any]) -> BufferedSpan:
    """A `spans` row (rows.spans_batch; its columns in SPAN_COLUMNS order) as the BufferedSpan the assembler
    made of the span it came from."""
    (trace_id, span_id, parent_span_id, trace_state, name, kind, start, end, status_code, status_message,
     scope_name, scope_version, attributes, resource_attributes, events, links, _received_at, flags) = row  # fmt: skip
    span = Span(trace_id=bytes.fromhex(trace_id), span_id=bytes.fromhex(span_id),
                parent_span_id=bytes.fromhex(parent_span_id), trace_state=trace_state, name=name,
                kind=Span.SpanKind.ValueType(_enum(_KINDS, kind)), start_time_unix_nano=start, end_time_unix_nano=end,
                flags=flags or 0)  # fmt: skip
    code = Status.StatusCode.ValueType(_enum(_STATUS, status_code))
    if code or status_message:
        span.status.code, span.status.message = code, status_message
    add_attributes(span.attributes, orjson.loads(attributes))
    if events != "[]":
        for event in orjson.loads(events):
            added = span.events.add(name=event["name"], time_unix_nano=event["time_unix_nano"])
            add_attributes(added.attributes, event["attributes"])
    if links != "[]":
        for link in orjson.loads(links):
            linked = span.links.add(trace_id=bytes.fromhex(link["trace_id"]), span_id=bytes.fromhex(link["span_id"]))
            add_attributes(linked.attributes, link["attributes"])
    local_root = is_local_root(span.parent_span_id, span.flags)
    return BufferedSpan(span.span_id, span.parent_span_id, start, end, code, local_root, span.SerializeToString(),
                        resource_from_json(resource_attributes), _scope(scope_name, scope_version))  # fmt: skip


def log_from_row(row: Sequence[Any]) -> BufferedLog:
    """A `logs` row (rows.logs_batch; its columns in LOG_COLUMNS order) as the assembler's BufferedLog."""
    (trace_id, span_id, time, observed_time, severity_number, severity_text, event_name, body, attributes,
     resource_attributes, _received_at) = row  # fmt: skip
    record = LogRecord(time_unix_nano=time or 0, observed_time_unix_nano=observed_time or 0,
                       trace_id=bytes.fromhex(trace_id), span_id=bytes.fromhex(span_id),
                       severity_number=severity_number, severity_text=severity_text, event_name=event_name)  # fmt: skip
    value = orjson.loads(body)
    if value is not None:
        set_any_value(record.body, value)
    add_attributes(record.attributes, orjson.loads(attributes))
    return BufferedLog(record.span_id, record.SerializeToString(), resource_from_json(resource_attributes))


@functools.lru_cache(maxsize=1024)
def resource_from_json(attributes_json: str) -> bytes:
    """A serialized Resource from its `resource_attributes` JSON; the spans of one request share it, so it is
    built once."""
    resource = Resource()
    add_attributes(resource.attributes, orjson.loads(attributes_json))
    return bytes(resource.SerializeToString())


@functools.lru_cache(maxsize=1024)
def _scope(name: str, version: str) -> bytes:
    return bytes(InstrumentationScope(name=name, version=version).SerializeToString())


def _pending(pending: dict[bytes, PendingTrace], trace_id: bytes, moment: int) -> PendingTrace:
    trace = pending.get(trace_id)
    if trace is None:
        trace = pending[trace_id] = PendingTrace(horizon=moment)
    return trace


def rebuilt_trace(trace_id: bytes, pending: PendingTrace) -> Trace:
    spans = [span_from_row(row) for row in pending.spans.values()]
    if pending.reason is None:
        reason, complete = CompletionReason.END_OF_INPUT, any(s.is_local_root for s in spans)
    else:
        reason, complete = pending.reason, pending.complete
    return Trace(trace_id=trace_id, spans=spans, logs=[log_from_row(row) for row in pending.logs.values()],
                 first_seen=pending.first_seen / 1e9, last_seen=pending.last_seen / 1e9, reason=reason,
                 complete=complete)  # fmt: skip


def completion_reason(value: str | None) -> CompletionReason | None:
    try:
        return CompletionReason(value)
    except ValueError:
        return None  # a reason this version does not know: treated as undecided


def _enum(names: dict[str, int], name: str) -> int:
    """rows.py writes a known enum value by name and an unknown one as its number."""
    return names[name] if name in names else int(name or 0)


def pylists(table: pa.Table, columns: Sequence[str]) -> list[list[Any]]:
    """Columns as Python lists, timestamps as integer nanoseconds (to_pylist() would make datetimes, which
    hold microseconds only)."""
    out = []
    for name in columns:
        column = table.column(name)
        if pa.types.is_timestamp(column.type):
            column = column.cast(pa.int64())
        out.append(column.to_pylist())
    return out


def _ns(moment: datetime) -> int:
    """Epoch nanoseconds, exactly (datetime.timestamp() is a float, ~0.2 us off today)."""
    return (moment - _EPOCH) // timedelta(microseconds=1) * 1000


def _filesystem(archive_dir: str | Path, filesystem: pafs.FileSystem | None, s3: S3Options | None
                ) -> tuple[pafs.FileSystem, str]:  # fmt: skip
    if filesystem is not None:
        return filesystem, str(archive_dir).rstrip("/")
    return archive_filesystem(archive_dir, s3)

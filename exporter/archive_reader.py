"""ArchiveTraceSource: the traces of a time window, rebuilt from the Parquet archive as the live assembler
handed them on, so that backfill and evaluate read past traces exactly as scoring read them live.

    for batch in ArchiveTraceSource(archive_dir, start, end).batches():
        ...  # lists of tracejudge.model.Trace

Which traces: those whose earliest span starts in [start, end), each whole (every span the archive holds
for it, whichever hour it reached the archive in), with its GenAI log events (the `logs` table, kept as the
assembler keeps them) and its completion reason and completeness from the `traces` table (where a trace
was decided more than once, the latest decision read before it is handed on: one in the same row group, but
not one a restarted sidecar made minutes later of what its log replayed, which is dropped as a late row). A
trace the sidecar never decided (it stopped first) is END_OF_INPUT, complete when its local root is there. A
span the archive holds twice (a client retried a request the sidecar had already accepted) is kept once.

Which files: a row lands in the hour partition (rows.partition_of) of the moment the writer writes it, which
is after its span ended, so after its trace started; `lateness` bounds how much later: the trace's
duration (assembler.trace_timeout, 60 s by default, gives up on longer ones), the app's export delay and the
writer's buffering (archive.roll_interval, 60 s). The default, 10 minutes, covers those with room. So only
the hour directories from start - lateness (the app's clock may run ahead of the sidecar's) to
end + lateness are listed and read, through pyarrow.dataset over a pyarrow.fs filesystem (object storage
next to local disk); no other directory is even listed, so a 1-hour window costs the same in a
6-month archive as in a fresh one. Rows read after their trace was handed on are dropped rather than made a
second, partial trace (the live assembler's rule): rows the writer got later than `lateness` after their
trace started (a sidecar down for longer, replaying), and spans and log events that reached it after the
trace's decision (the live assembler dropped them too) unless they are read before it is handed on (in the
same row group as its last counted span, say).

Streaming: row groups, not hours. The row groups of the hours that can hold rows not read yet (an hour is
listed once its start less `lateness` is before the earliest unread row group) are read one at a time, across
the three tables, in order of their earliest received_at / decided_at (row-group statistics, which the
writer's pyarrow writes; the column itself where they lack), and converted to Python a row group at a time. A
decided trace is handed on as soon as its decision and every span it counts (`span_count`) are read and no
unread log row group can hold an event from before its decision (_Reading says why a count and not the
spans' times); any other trace by the rule hour by hour (every partition within `lateness` of it read). So
memory holds the traces of about one row group (16,384 rows), not an hour. Batches come in the order traces
are handed on, about the order they were decided, those handed on at once by start (consumers that want
another order sort: evaluate's --last keeps the latest by start). bench/backfill.py --phases memory (a
no-model backfill over archives of 5k / 10k / 20k traces in one hour), peak RSS: 328 / 411 / 621 MiB when
the hour was read whole (1.89x), 314 / 320 / 335 MiB now (1.07x; the same archives). Its throughput, old and
new run in turn on the same archive on a shared 2-CPU machine: 1,974 and 1,887 traces/s before, 1,934 and
1,699 now (the reader's bookkeeping per row; rebuilding spans is most of its CPU either way).

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
import heapq
from collections import deque
from collections.abc import Callable, Iterator, Sequence
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
_NEVER = 2**63  # no bound: later than any time
_SCHEMAS = {"spans": rows.SPANS_SCHEMA, "logs": rows.LOGS_SCHEMA, "traces": rows.TRACES_SCHEMA}
_TIME_COLUMN = {"spans": "received_at", "logs": "received_at", "traces": "decided_at"}
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
    rows (nothing arrives before its trace starts). `span_count` is its decision's: the spans the live assembler
    held when it decided."""

    horizon: int
    start: int | None = None
    spans: dict[str, tuple[Any, ...]] = field(default_factory=dict)  # span id (hex) -> row: a span held twice is one
    logs: dict[tuple[Any, ...], tuple[Any, ...]] = field(default_factory=dict)  # the same, by all but arrival
    first_seen: int = 0
    last_seen: int = 0
    decided_at: int = -1
    reason: CompletionReason | None = None
    complete: bool = False
    span_count: int = -1  # -1: not decided, or decided with no count

    def saw(self, moment: int) -> None:
        self.horizon = min(self.horizon, moment)
        self.first_seen = min(self.first_seen or moment, moment)
        self.last_seen = max(self.last_seen, moment)


@dataclass(frozen=True, slots=True, order=True)
class _Piece:
    """One row group of one file: the unit read, converted and dropped in turn. `low`: its earliest arrival
    (received_at; decided_at in `traces`), from the row group's statistics."""

    low: int
    table: str
    path: str
    row_group: int
    hour: int = field(compare=False)
    fragment: ds.ParquetFileFragment = field(compare=False)


class ArchiveTraceSource:
    """The traces of [start, end) in the archive at `archive_dir` (a local path, or a URI pyarrow.fs knows,
    such as s3://bucket/prefix, with `s3` its archive.s3 options; or a path on `filesystem`). A TraceSource:
    batches() yields lists of at most `batch_size` traces, in the order they are handed on (about the order they
    were decided), those handed on at once ordered by start; nothing at all for an empty window. `wanted`: only
    the traces it says yes to (by id) are rebuilt and yielded, the others counted in `passed_over` (a backfill
    at rate r rebuilds only what a scorer samples: rebuilding spans is most of the reader's CPU)."""

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
        wanted: Callable[[bytes], bool] | None = None,
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
        self._wanted = wanted
        self._reading: _Reading | None = None
        self.passed_over = 0  # traces of the window `wanted` left out, by the current or last batches()

    def hours(self) -> list[int]:
        """The hour partitions read (their start, epoch ns): those that can hold rows of the window's traces."""
        first = (self._start - self._lateness) // _HOUR_NS
        last = (self._end + self._lateness) // _HOUR_NS
        return [hour * _HOUR_NS for hour in range(first, last + 1)]

    @property
    def pending(self) -> int:
        """Traces held now (read, not yet handed on) by the current or last batches()."""
        return len(self._reading.pending) if self._reading is not None else 0

    @property
    def most_pending(self) -> int:
        """The most traces held at once by the current or last batches(): what its memory grows with."""
        return self._reading.most_pending if self._reading is not None else 0

    def batches(self) -> Iterator[list[Trace]]:
        reading = self._reading = _Reading(self)
        self.passed_over = 0
        while (piece := reading.next_piece()) is not None:
            reading.read(piece)
            yield from self._chunks(reading.hand_on(last=False))
        yield from self._chunks(reading.hand_on(last=True))

    def _chunks(self, traces: list[tuple[bytes, PendingTrace]]) -> Iterator[list[Trace]]:
        """Rebuilt a batch at a time: one hand-on can be a row group's traces (thousands), and a batch's rebuilt
        spans then live only as long as the consumer holds the batch."""
        if self._wanted is not None:
            kept = [item for item in traces if self._wanted(item[0])]
            self.passed_over += len(traces) - len(kept)
            traces = kept
        for offset in range(0, len(traces), self._batch_size):
            yield [rebuilt_trace(trace_id, held) for trace_id, held in traces[offset : offset + self._batch_size]]

    def _pieces(self, table: str, hour: int, floor: int) -> list[_Piece]:
        """The row groups of one hour partition of one table; none when the partition does not exist. Hidden
        files (the writer's open .tmp files) are skipped. `floor`: the earliest arrival of a row group whose
        times are unknown (no statistics, all null)."""
        directory = f"{self._root}/{table}/{rows.partition_of(hour / 1e9)}"
        try:
            if self._fs.get_file_info(directory).type != pafs.FileType.Directory:
                return []
            dataset = ds.dataset(directory, schema=_SCHEMAS[table], format="parquet", filesystem=self._fs)
            pieces = []
            for fragment in dataset.get_fragments():
                assert isinstance(fragment, ds.ParquetFileFragment)
                metadata = fragment.metadata
                for index in range(metadata.num_row_groups):
                    if metadata.row_group(index).num_rows:
                        low = _earliest(fragment, index, _TIME_COLUMN[table], floor)
                        pieces.append(_Piece(low, table, fragment.path, index, hour, fragment))
            return pieces
        except OSError as exc:
            raise ArchiveUnavailable(f"cannot read the archive at {self._shown} ({table}): {exc}") from exc

    def _read(self, piece: _Piece, columns: list[str], where: ds.Expression | None = None) -> pa.Table:
        """One row group, read with today's schema (a column older files lack is null)."""
        try:
            part = piece.fragment.subset(row_group_ids=[piece.row_group])
            return part.to_table(schema=_SCHEMAS[piece.table], columns=columns, filter=where)
        except OSError as exc:
            raise ArchiveUnavailable(f"cannot read the archive at {self._shown} ({piece.table}): {exc}") from exc


class _Reading:
    """One batches() run: the row groups of the window's hours merged across the three tables in order of their
    earliest arrival (`low`), and the traces read so far.

    A decided trace is handed on once its latest decision read counts no more spans than were read for it (so
    every span the live assembler judged it with has been read) and the earliest arrival any unread log row can
    have (the least `low` of the logs row groups not read, or, for an hour not listed yet, its start less
    `lateness`) is after its decision (so every GenAI log event the sidecar had by then has been read). A count,
    not the spans' arrival times: the writer builds rows in the write-ahead log's order, each span before the
    decision that counted it, but stamps received_at when it builds a row, so a writer running behind stamps
    them after decided_at. A decision without a count (null) waits for the spans' own watermark the same way.
    Log events have no count: one a writer running behind stamped after the decision is kept only if it is
    read before its trace is handed on.
    Any other trace (never decided, or its archive holds fewer distinct spans than its decision counted: a span
    the live assembler held twice) is handed on by the hour-by-hour rule: once every hour partition within
    `lateness` of its horizon has been read; all that is left after the last row group."""

    def __init__(self, source: ArchiveTraceSource) -> None:
        self._source = source
        self._lateness = source._lateness
        self._hours = deque(source.hours())
        self._heaps: dict[str, list[_Piece]] = {"spans": [], "logs": [], "traces": []}  # listed, not read
        self.pending: dict[bytes, PendingTrace] = {}
        self.most_pending = 0
        self._handed_on: dict[bytes, None] = {}
        self._decided: list[tuple[int, bytes]] = []  # (decided_at, trace id) of decisions read, a heap
        self._after: set[bytes] = set()  # those whose decision is before the logs' watermark, spans missing
        self._touched: set[bytes] = set()  # traces given spans by the row group just read
        self._deadlines: list[tuple[int, bytes]] = []  # (horizon + lateness, trace id), a heap
        self._unread: dict[int, int] = {}  # hour listed -> its row groups not read yet, in order of hour
        self._read_until = -_NEVER  # every hour partition before this moment is read

    def next_piece(self) -> _Piece | None:
        """The unread row group with the earliest arrival, listing an hour first if it can hold an earlier one."""
        while self._hours and self._hours[0] - self._lateness <= self._low("spans", "logs", "traces"):
            hour = self._hours.popleft()
            self._unread[hour] = 0
            for table, heap in self._heaps.items():
                for piece in self._source._pieces(table, hour, hour - self._lateness):
                    heapq.heappush(heap, piece)
                    self._unread[hour] += 1
        tops = [heap[0] for heap in self._heaps.values() if heap]
        return heapq.heappop(self._heaps[min(tops).table]) if tops else None

    def _low(self, *tables: str) -> int:
        """The earliest arrival a row of `tables` not read yet can have, among the hours listed."""
        return min((self._heaps[table][0].low for table in tables if self._heaps[table]), default=_NEVER)

    def watermark(self, table: str) -> int:
        """The earliest arrival an unread row of `table` can have, in any hour read."""
        return min(self._hours[0] - self._lateness if self._hours else _NEVER, self._low(table))

    def read(self, piece: _Piece) -> None:
        if piece.table == "spans":
            self._read_spans(self._source._read(piece, SPAN_COLUMNS))
        elif piece.table == "logs":
            self._read_logs(self._source._read(piece, LOG_COLUMNS, LOG_FILTER))
        else:
            self._read_decisions(self._source._read(piece, [*TRACE_COLUMNS, "span_count"]))
        self.most_pending = max(self.most_pending, len(self.pending))
        self._unread[piece.hour] -= 1
        while self._unread and not self._unread[first := next(iter(self._unread))]:
            del self._unread[first]
            self._read_until = first + _HOUR_NS

    def _trace(self, trace_id: bytes, moment: int) -> PendingTrace | None:
        """The pending trace of `trace_id`, new if need be; None once handed on: a row read after its trace was
        handed on is not made a second, partial trace (the assembler's rule)."""
        trace = self.pending.get(trace_id)
        if trace is None:
            if trace_id in self._handed_on:
                return None
            trace = self.pending[trace_id] = PendingTrace(horizon=moment)
            heapq.heappush(self._deadlines, (moment + self._lateness, trace_id))
        return trace

    def _horizon(self, trace_id: bytes, trace: PendingTrace, before: int) -> None:
        """A trace whose horizon moved earlier is due earlier by the hour-by-hour rule."""
        if trace.horizon < before:
            heapq.heappush(self._deadlines, (trace.horizon + self._lateness, trace_id))

    def _read_spans(self, table: pa.Table) -> None:
        for row in zip(*pylists(table, SPAN_COLUMNS), strict=True):
            start, trace_id = row[6], bytes.fromhex(row[0])
            trace = self._trace(trace_id, min(start, row[16]))
            if trace is None:
                continue
            before = trace.horizon
            trace.saw(row[16])
            trace.start = start if trace.start is None else min(trace.start, start)
            trace.horizon = min(trace.horizon, start)
            trace.spans.setdefault(row[1], row)
            self._horizon(trace_id, trace, before)
            self._touched.add(trace_id)

    def _read_logs(self, table: pa.Table) -> None:
        for row in zip(*pylists(table, LOG_COLUMNS), strict=True):
            name = row[6] or orjson.loads(row[8]).get("event.name")
            if isinstance(name, str) and is_genai_event(name):
                trace_id = bytes.fromhex(row[0])
                trace = self._trace(trace_id, row[10])
                if trace is None:
                    continue
                before = trace.horizon
                trace.saw(row[10])
                trace.logs.setdefault(row[:10], row)
                self._horizon(trace_id, trace, before)

    def _read_decisions(self, table: pa.Table) -> None:
        columns = pylists(table, [*TRACE_COLUMNS, "span_count"])
        for trace_id_hex, complete, reason, decided_at, span_count in zip(*columns, strict=True):
            trace_id = bytes.fromhex(trace_id_hex)
            trace = self._trace(trace_id, decided_at)
            if trace is None:
                continue
            before = trace.horizon
            trace.horizon = min(trace.horizon, decided_at)
            self._horizon(trace_id, trace, before)
            if decided_at >= trace.decided_at:  # the latest decision read wins
                trace.decided_at, trace.complete = decided_at, bool(complete)
                trace.reason = completion_reason(reason)
                trace.span_count = -1 if span_count is None else span_count
                heapq.heappush(self._decided, (decided_at, trace_id))

    def _uncounted(self, trace_id: bytes) -> bool:
        trace = self.pending.get(trace_id)
        return trace is not None and trace.span_count < 0

    def hand_on(self, last: bool) -> list[tuple[bytes, PendingTrace]]:
        """The traces no unread row can add to (all of them after the last row group), those of the window in
        order of start."""
        done = list(self.pending) if last else self._due()
        traces = []
        for trace_id in done:
            trace = self.pending.pop(trace_id)
            self._handed_on[trace_id] = None
            if trace.start is not None and self._source._start <= trace.start < self._source._end:
                traces.append((trace_id, trace))
        while len(self._handed_on) > _HANDED_ON_CACHE:
            del self._handed_on[next(iter(self._handed_on))]
        traces.sort(key=lambda item: item[1].start or 0)
        return traces

    def _due(self) -> list[bytes]:
        due: dict[bytes, None] = {}
        logs_mark, spans_mark = self.watermark("logs"), self.watermark("spans")
        candidates, self._touched = self._touched & self._after, set()
        while self._decided and self._decided[0][0] < logs_mark:
            decided_at, trace_id = heapq.heappop(self._decided)
            trace = self.pending.get(trace_id)
            if trace is not None and trace.decided_at == decided_at:  # else decided again since, or handed on
                self._after.add(trace_id)
                candidates.add(trace_id)
        for trace_id in candidates | {t for t in self._after if self._uncounted(t)}:
            trace = self.pending.get(trace_id)
            if trace is None:
                self._after.discard(trace_id)
            elif len(trace.spans) >= trace.span_count >= 0 or (trace.span_count < 0 and trace.decided_at < spans_mark):
                self._after.discard(trace_id)
                due[trace_id] = None
        while self._deadlines and self._deadlines[0][0] < self._read_until:
            _, trace_id = heapq.heappop(self._deadlines)
            if trace_id in self.pending:
                due[trace_id] = None
        if len(self._deadlines) > 2 * len(self.pending) + 1024:
            # Entries of traces handed on at their decision stay until their deadline: at a steady 4k traces/s,
            # 10 minutes of them would be 2.4M. Rebuilt from what is pending, the heap stays its size.
            self._deadlines = [(t.horizon + self._lateness, tid) for tid, t in self.pending.items() if tid not in due]
            heapq.heapify(self._deadlines)
        return list(due)


def _earliest(fragment: ds.ParquetFileFragment, index: int, column: str, floor: int) -> int:
    """The least value of a timestamp column in one row group: from its statistics (the writer's pyarrow writes
    them), else read."""
    metadata = fragment.metadata
    names = metadata.schema.names
    if column in names:
        statistics = metadata.row_group(index).column(names.index(column)).statistics
        if statistics is not None and statistics.has_min_max and isinstance(statistics.min_raw, int):
            return statistics.min_raw
        values = fragment.subset(row_group_ids=[index]).to_table(columns=[column]).column(column)
        low = pc.min(values.cast(pa.int64())).as_py()
        if low is not None:
            return int(low)
    return floor


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

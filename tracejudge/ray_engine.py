"""`--engine ray[=ADDRESS]`: backfill and evaluate over a large archive on a Ray cluster, with the same scorers.

    counts = score_archive("ray", archive, start, end, specs, judges, emit, sample=True, rates=rates)

The only module that imports ray (the optional extra `tracejudge[ray]`). What runs where:

1. Ray Data reads the window's hour partitions of the `spans`, `logs` and `traces` tables (the same hours
   ArchiveTraceSource reads: start - lateness .. end + lateness, listed by name, so a short window in a long
   archive lists and reads no other directory), from local disk or any URI pyarrow.fs knows (s3://...).
2. Rows are grouped by trace id (`groupby("trace_id").map_groups`): a trace's rows straddle files and hours,
   and a shuffle by trace id is the one step that brings them together however they lie; the three tables go
   through it as one dataset of (trace_id, table, row) so spans, GenAI log events and completion decisions of
   a trace meet in one group. The group is rebuilt into the Trace ArchiveTraceSource would hand on (its own
   PendingTrace and rebuilt_trace), kept only if it starts in the window. The consistent sampler is applied here when
   every scorer targets traces: a trace no scorer samples is counted but not shipped on.
3. With a session scorer, the traces of one session are grouped again (by session id), so a conversation is
   judged whole, on one actor, as the local run judges it.
4. `map_batches` on an actor pool (`concurrency=actors`): each actor holds the scorers' inputs and runs a
   scoring/batch.py BatchScoring over each batch, so the evaluators, filters, span targets, sampler and the
   idempotence filter (`exclude`) are the local run's, judges concurrent inside each actor.
5. Verdicts stream back to the driver, which emits them through the caller's `emit`: backfill writes them to
   the archive's `assessments` table with the local run's writer (same layout, closed files as checkpoints, so
   DuckDB and the next run's idempotence see them) and to an OTLP endpoint when asked; evaluate collects them.

Not the local run's: rows the local reader reads after it handed their trace on still join their trace here
(it drops them rather than hand on a second, partial trace): rows a sidecar wrote later than `lateness` after
their trace started, spans and log events that reached the archive after the decision in a row group read
after it, and a second decision read after it (here the latest decision always wins).
"""

from __future__ import annotations

import asyncio
import logging
import pickle
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from functools import partial
from pathlib import Path
from typing import Any, cast

import orjson
import pyarrow as pa
import pyarrow.fs as pafs

try:
    import ray
    import ray.data
    from ray.data.context import ShuffleStrategy
except ImportError as exc:  # the optional extra
    raise ImportError(f"--engine ray needs Ray Data: pip install 'tracejudge[ray]' ({exc})") from exc

from tracejudge.exporter import rows
from tracejudge.exporter.archive_reader import (
    DEFAULT_LATENESS,
    LOG_COLUMNS,
    LOG_FILTER,
    SPAN_COLUMNS,
    TRACE_COLUMNS,
    PendingTrace,
    completion_reason,
    pylists,
    rebuilt_trace,
)
from tracejudge.model import Assessment, Trace
from tracejudge.otlp import is_genai_event
from tracejudge.scoring.batch import BatchCounts, BatchScoring
from tracejudge.scoring.config import JudgeEndpointConfig
from tracejudge.scoring.extract import extract
from tracejudge.scoring.sampling import randomness, threshold
from tracejudge.scoring.spec import ScorerSpec
from tracejudge.scoring.view import Judged

__all__ = ["PairFilter", "ray_address", "score_archive"]

log = logging.getLogger(__name__)

DEFAULT_ACTORS = 2  # scoring actors; each judges `max_concurrency` pairs at a time
DEFAULT_BATCH = 64  # traces (or sessions) per actor call
# CPUs a scoring actor reserves: judging mostly waits on judges, and a pool holding every CPU of a small cluster
# would leave none to the read and shuffle tasks feeding it (they would wait for ever)
DEFAULT_ACTOR_CPUS = 0.5
_MAX_PARTITIONS = 200  # Ray Data's default for a hash shuffle; fewer for fewer files
_SPANS, _LOGS, _DECISIONS = 0, 1, 2
_ROWS_SCHEMA = pa.schema([("trace_id", pa.string()), ("table", pa.int8()), ("row", pa.binary())])
_UNITS_SCHEMA = pa.schema([("unit", pa.string()), ("traces", pa.binary()), ("read", pa.int64())])
_OUT_SCHEMA = pa.schema([("kind", pa.string()), ("payload", pa.binary())])
_HOUR_NS = 3600 * 10**9
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
Emit = Callable[[list[Assessment], Judged], None]


def ray_address(engine: str) -> str | None:
    """The cluster address in `ray[=ADDRESS]`: None for `ray` (a local Ray, or RAY_ADDRESS's cluster)."""
    name, sep, address = engine.partition("=")
    if name != "ray" or (sep and not address):
        raise ValueError(f"engine {engine!r}: give local, ray or ray=ADDRESS (e.g. ray=ray://head:10001, ray=auto)")
    return address or None


@dataclass(frozen=True)
class PairFilter:
    """Backfill's idempotence as data, so it travels to the actors: `done` (trace, scorer, version) pairs with a
    verdict are `already_scored` (None: --rescore); with `skipped` only those (trace, scorer) pairs are the job."""

    done: frozenset[tuple[str, str, int]] | None
    skipped: frozenset[tuple[str, str]] | None = None

    def __call__(self, trace_id: str, name: str, version: int) -> str | None:
        if self.skipped is not None and (trace_id, name) not in self.skipped:
            return ""  # not part of this job
        if self.done is None:
            return None
        return "already_scored" if (trace_id, name, version) in self.done else None


def score_archive(
    engine: str,
    archive: str | Path,
    start: datetime,
    end: datetime,
    specs: Sequence[ScorerSpec],
    judges: Mapping[str, JudgeEndpointConfig],
    emit: Emit,
    progress: Callable[[BatchCounts], None] | None = None,
    stop: threading.Event | None = None,
    *,
    lateness: timedelta = DEFAULT_LATENESS,
    actors: int = DEFAULT_ACTORS,
    batch_size: int = DEFAULT_BATCH,
    actor_cpus: float = DEFAULT_ACTOR_CPUS,
    filesystem: pafs.FileSystem | None = None,
    **options: Any,
) -> BatchCounts:
    """Judge the traces of [start, end) in `archive` on Ray; `options` are BatchScoring's (sample, rates,
    exclude, where, expectations, max_concurrency, code_workers, code_timeout_s). `emit` gets each judged
    trace's (session's) verdicts on this process, `progress` the running counts; `stop` set ends the run."""
    if start.tzinfo is None or end.tzinfo is None or end <= start:
        raise ValueError(f"a window of aware datetimes with end after start, not {start} .. {end}")
    if actors < 1 or batch_size < 1:
        raise ValueError("actors and batch_size must be >= 1")
    _connect(ray_address(engine))
    fs, root = _filesystem(archive, filesystem)
    first, last = (_ns(start) - _lateness_ns(lateness)) // _HOUR_NS, (_ns(end) + _lateness_ns(lateness)) // _HOUR_NS
    hours = [rows.partition_of(hour * 3600) for hour in range(first, last + 1)]
    files = {table: _files(fs, [f"{root}/{table}/{hour}" for hour in hours]) for table in ("spans", "logs", "traces")}
    if not files["spans"]:
        return BatchCounts()  # no span in the window's hours: nothing to judge
    plan = _Plan(_ns(start), _ns(end), _sampling_bars(list(specs), options),
                 any(spec.target_kind == "session" for spec in specs))  # fmt: skip
    previous = ray.data.DataContext.get_current()
    ray.data.DataContext._set_current(_context(previous))  # a Dataset keeps the context current at its creation
    try:
        scored = _pipeline(fs, files, plan, list(specs), dict(judges), options, actors, actor_cpus, batch_size)
    finally:
        ray.data.DataContext._set_current(previous)
    counts = BatchCounts()
    blocks = iter(scored.iter_batches(batch_format="pyarrow", batch_size=None))
    try:
        _drain(blocks, counts, emit, progress, stop)
    finally:
        close = getattr(blocks, "close", None)
        if close is not None:
            close()  # ends the run on the cluster now, when `stop` cut it short
    return counts


def _drain(blocks: Iterator[Any], counts: BatchCounts, emit: Emit, progress: Callable[[BatchCounts], None] | None,
           stop: threading.Event | None) -> None:  # fmt: skip
    """Hand each verdict to `emit` and add up the counts, until the end or `stop`."""
    for block in blocks:
        batch = cast(pa.Table, block)
        for kind, payload in zip(batch.column("kind").to_pylist(), batch.column("payload").to_pylist(), strict=True):
            if kind == "verdicts":
                verdicts, judged = pickle.loads(payload)
                emit(verdicts, judged)
            else:
                _merge(counts, pickle.loads(payload))
        if progress is not None:
            progress(counts)
        if stop is not None and stop.is_set():
            return


def _pipeline(fs: pafs.FileSystem, files: dict[str, list[str]], plan: _Plan, specs: list[ScorerSpec],
              judges: dict[str, JudgeEndpointConfig], options: dict[str, Any], actors: int, actor_cpus: float,
              batch_size: int) -> ray.data.Dataset:  # fmt: skip
    """Read, group by trace (and session), judge on the actor pool: steps 1-4 of the module docstring."""
    normalizers = {"spans": _span_rows, "logs": _log_rows, "traces": _decision_rows}
    tables = [ray.data.read_parquet(paths, filesystem=fs, partitioning=None)
              .map_batches(normalizers[table], batch_format="pyarrow", batch_size=None)
              for table, paths in files.items() if paths]  # fmt: skip
    partitions = max(1, min(_MAX_PARTITIONS, max(len(paths) for paths in files.values())))
    data = tables[0].union(*tables[1:]) if len(tables) > 1 else tables[0]
    units = data.groupby("trace_id", num_partitions=partitions).map_groups(partial(_assemble, plan=plan),
                                                                         batch_format="pyarrow")  # fmt: skip
    if plan.sessions:
        units = units.groupby("unit", num_partitions=partitions).map_groups(_merge_session, batch_format="pyarrow")
    return units.map_batches(_ScoreUnits, fn_constructor_args=(specs, judges, options), batch_size=batch_size,
                             concurrency=actors, num_cpus=actor_cpus, batch_format="pyarrow")  # fmt: skip


def _context(current: Any) -> Any:
    """Ray Data's settings for this run: a sort-based shuffle, whose tasks run on the cluster's pooled workers
    (the hash shuffle starts aggregator actors for every run: 93 s against 27 s for one run of the test's 20
    traces on a loaded 2-CPU machine), and no progress bars of Ray's own on the user's terminal."""
    context = current.copy()
    context.shuffle_strategy = ShuffleStrategy.SORT_SHUFFLE_PULL_BASED
    context.enable_progress_bars = False
    return context


# --- the driver's side --------------------------------------------------------------------------------


def _connect(address: str | None) -> None:
    """Join the cluster at `address`, else the one this process already joined, else start a local Ray (or
    join RAY_ADDRESS's, as ray.init does). Workers must be able to import tracejudge (tracejudge[ray])."""
    if ray.is_initialized():
        return
    if address is not None:
        ray.init(address=address, log_to_driver=False)
    else:
        ray.init(include_dashboard=False, log_to_driver=False)


def _filesystem(archive: str | Path, filesystem: pafs.FileSystem | None) -> tuple[pafs.FileSystem, str]:
    if filesystem is not None:
        return filesystem, str(archive).rstrip("/")
    if isinstance(archive, Path) or "://" not in archive:
        return pafs.LocalFileSystem(), str(Path(archive).resolve())
    fs, path = pafs.FileSystem.from_uri(archive)
    return fs, path.rstrip("/")


def _files(fs: pafs.FileSystem, directories: list[str]) -> list[str]:
    """The closed Parquet files of those hour directories that exist (a writer's open .tmp file is hidden)."""
    out = []
    for directory in directories:
        if fs.get_file_info(directory).type != pafs.FileType.Directory:
            continue
        for info in fs.get_file_info(pafs.FileSelector(directory)):
            if info.type == pafs.FileType.File and info.base_name.endswith(".parquet") and info.base_name[0] != ".":
                out.append(info.path)
    return sorted(out)


def _sampling_bars(specs: list[ScorerSpec], options: Mapping[str, Any]) -> tuple[int, ...] | None:
    """The sampler's thresholds when every scorer targets whole traces (then a trace below all of them is judged
    by none and need not travel); None when every trace goes on (no sampling, or span and session targets)."""
    if not options.get("sample") or any(spec.target_kind != "trace" for spec in specs):
        return None
    rates = options.get("rates") or {}
    return tuple(threshold(rates.get(spec.name, spec.sample_rate)) for spec in specs)


def _merge(total: BatchCounts, part: BatchCounts) -> None:
    total.traces += part.traces
    total.sessions += part.sessions
    total.assessments.update(part.assessments)
    total.skipped.update(part.skipped)
    total.input_tokens += part.input_tokens
    total.output_tokens += part.output_tokens


def _ns(moment: datetime) -> int:
    return (moment - _EPOCH) // timedelta(microseconds=1) * 1000


def _lateness_ns(lateness: timedelta) -> int:
    return int(lateness.total_seconds() * 1e9)


# --- on the cluster: rows to traces ---------------------------------------------------------------------


@dataclass(frozen=True)
class _Plan:
    start: int
    end: int
    bars: tuple[int, ...] | None  # the sampler's thresholds, when a trace below all of them can stay behind
    sessions: bool  # group traces by session id for a session scorer


def _rows(table: pa.Table, columns: list[str], schema: pa.Schema, kind: int) -> pa.Table:
    """A table's rows as (trace_id, table, row JSON) in `columns` order, timestamps as integer nanoseconds; a
    column older files lack is null, as the local reader reads them with today's schema."""
    for name in columns:
        if name not in table.column_names:
            table = table.append_column(name, pa.nulls(table.num_rows, schema.field(name).type))
    values = pylists(table, columns)
    encoded = [orjson.dumps(row) for row in zip(*values, strict=True)] if values else []
    return pa.table({"trace_id": table.column("trace_id"), "table": pa.array([kind] * table.num_rows, pa.int8()),
                     "row": pa.array(encoded, pa.binary())}, schema=_ROWS_SCHEMA)  # fmt: skip


def _span_rows(table: pa.Table) -> pa.Table:
    return _rows(table, SPAN_COLUMNS, rows.SPANS_SCHEMA, _SPANS)


def _log_rows(table: pa.Table) -> pa.Table:
    """GenAI log events only, by the local reader's filter and rule."""
    for name in LOG_COLUMNS:
        if name not in table.column_names:
            table = table.append_column(name, pa.nulls(table.num_rows, rows.LOGS_SCHEMA.field(name).type))
    table = table.filter(LOG_FILTER)
    names = table.column("event_name").to_pylist()
    attributes = table.column("attributes").to_pylist()
    keep = []
    for event_name, attrs in zip(names, attributes, strict=True):
        name = event_name or orjson.loads(attrs).get("event.name")
        keep.append(isinstance(name, str) and is_genai_event(name))
    return _rows(table.filter(pa.array(keep, pa.bool_())), LOG_COLUMNS, rows.LOGS_SCHEMA, _LOGS)


def _decision_rows(table: pa.Table) -> pa.Table:
    return _rows(table, TRACE_COLUMNS, rows.TRACES_SCHEMA, _DECISIONS)


def _assemble(group: pa.Table, plan: _Plan) -> pa.Table:
    """One trace's rows as the Trace the local reader rebuilds (a span held twice kept once, the latest decision),
    if it starts in the window: a row (unit: its session id or trace id, its pickled [Trace], read: 1)."""
    trace_id = bytes.fromhex(group.column("trace_id")[0].as_py())
    entries = sorted(zip(group.column("table").to_pylist(), group.column("row").to_pylist(), strict=True))
    rows_of = [(kind, orjson.loads(raw)) for kind, raw in entries]
    spans = sorted((row for kind, row in rows_of if kind == _SPANS), key=lambda row: (row[16], row[6], row[1]))
    if not spans:
        return _UNITS_SCHEMA.empty_table()  # log events or a decision only: no trace, as locally
    pending = PendingTrace(horizon=min(row[6] for row in spans))
    for row in spans:
        pending.saw(row[16])
        pending.start = row[6] if pending.start is None else min(pending.start, row[6])
        pending.spans.setdefault(row[1], tuple(row))
    for row in sorted((row for kind, row in rows_of if kind == _LOGS), key=lambda row: row[10]):
        pending.saw(row[10])
        pending.logs.setdefault(tuple(row[:10]), tuple(row))
    for _, complete, reason, decided_at in sorted((row for kind, row in rows_of if kind == _DECISIONS),
                                                  key=lambda row: row[3]):  # fmt: skip
        if decided_at >= pending.decided_at:
            pending.decided_at, pending.complete, pending.reason = decided_at, bool(complete), completion_reason(reason)
    if pending.start is None or not plan.start <= pending.start < plan.end:
        return _UNITS_SCHEMA.empty_table()
    unit = trace_id.hex()
    if plan.bars is not None and randomness(trace_id) < min(plan.bars):
        return pa.table({"unit": [unit], "traces": [pickle.dumps([])], "read": [1]}, schema=_UNITS_SCHEMA)
    trace = rebuilt_trace(trace_id, pending)
    if plan.sessions:
        unit = extract(trace).session_id or unit
    return pa.table({"unit": [unit], "traces": [pickle.dumps([trace])], "read": [1]}, schema=_UNITS_SCHEMA)


def _merge_session(group: pa.Table) -> pa.Table:
    """The traces of one session (or one trace without a session) as one unit, judged together."""
    traces: list[Trace] = [t for payload in group.column("traces").to_pylist() for t in pickle.loads(payload)]
    read = sum(group.column("read").to_pylist())
    return pa.table({"unit": [group.column("unit")[0].as_py()], "traces": [pickle.dumps(traces)], "read": [read]},
                    schema=_UNITS_SCHEMA)  # fmt: skip


# --- on the cluster: judging -----------------------------------------------------------------------------


class _ScoreUnits:
    """An actor of the pool: a BatchScoring of the caller's scorers over each batch of units. Output rows:
    ("verdicts", pickled (assessments, what was judged)) per judged item, then ("counts", pickled BatchCounts)."""

    def __init__(self, specs: list[ScorerSpec], judges: dict[str, JudgeEndpointConfig], options: dict[str, Any]):
        self._specs, self._judges, self._options = specs, judges, options

    def __call__(self, batch: pa.Table) -> pa.Table:
        traces = [t for payload in batch.column("traces").to_pylist() for t in pickle.loads(payload)]
        read = sum(batch.column("read").to_pylist())
        kinds: list[str] = []
        payloads: list[bytes] = []

        def collect(verdicts: list[Assessment], judged: Judged) -> None:
            kinds.append("verdicts")
            payloads.append(pickle.dumps((verdicts, judged)))

        scoring = BatchScoring(self._specs, self._judges, **self._options)
        counts = asyncio.run(scoring.run(_one(traces), collect))
        counts.traces += read - len(traces)  # those the sampler left behind: read, judged by no scorer
        kinds.append("counts")
        payloads.append(pickle.dumps(counts))
        return pa.table({"kind": kinds, "payload": pa.array(payloads, pa.binary())}, schema=_OUT_SCHEMA)


def _one(traces: list[Trace]) -> Iterator[list[Trace]]:
    if traces:
        yield traces

"""tracejudge.evaluate: the production scorers over a dataset, as `mlflow.genai.evaluate` does in development.

    result = tracejudge.evaluate(data=[{"inputs": {...}, "outputs": "...", "expectations": {...}}],
                                 scorers=[Safety(), Guidelines(name="english", guidelines=[...]), my_scorer])
    result.metrics            # {"safety/pass_rate": 1.0, "safety/mean": 1.0, "safety/error_count": 0, ...}
    result.result_df          # one row per verdict (pandas), next to its trace's request and response
    result.write("results.parquet")

`data` is what the traces are: archived traces (`ArchivedTraces(directory, since, until, filter_string)`, or
a data or archive directory for its last 7 days), an OTLP/JSON(L) file (the Collector's file exporter), a file
of dataset rows as `tracejudge dataset export` writes, a pandas DataFrame, or a list of dicts with MLflow's
columns (`inputs`, `outputs`, `expectations`; `trace_id`, `session_id`, `tags` where known). Traces are read
and judged by scoring/batch.py, the same evaluators as live scoring, so a trace gets the verdict it got live.
Nothing is emitted unless asked (`otlp_endpoint`: verdicts go there as live ones do, in the original traces).
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import math
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from tracejudge.config import parse_window
from tracejudge.config_file import Config, load_config, spec_of
from tracejudge.exporter import rows as archive_rows
from tracejudge.exporter.archive_reader import ArchiveTraceSource
from tracejudge.exporter.archive_store import S3Options
from tracejudge.exporter.emitter import AssessmentEmitter, assessment_row
from tracejudge.exporter.feedback import logged_assessments
from tracejudge.model import Assessment, Trace
from tracejudge.otlp_exporters import span_and_log_exporters
from tracejudge.receiver.otlp_file import OtlpFileTraceSource
from tracejudge.scoring.batch import BatchCounts, BatchScoring, Item
from tracejudge.scoring.extract import extract, row_view
from tracejudge.scoring.filters import parse_filter
from tracejudge.scoring.spec import ScorerSpec
from tracejudge.scoring.view import Judged, SessionView

__all__ = ["ArchivedTraces", "EvaluationResult", "evaluate", "export_dataset", "resolve_specs"]

log = logging.getLogger(__name__)

RESULT_SCHEMA = archive_rows.ASSESSMENTS_SCHEMA.append(pa.field("request", pa.string())).append(
    pa.field("response", pa.string())
)
_TEXT_PREVIEW = 2000  # characters of a request or response kept next to its verdict


@dataclass(frozen=True)
class ArchivedTraces:
    """The traces of a time window in a tracejudge archive (a data directory, its `archive/`, or s3://...).
    `since` / `until`: datetimes, ISO dates or ages such as "24h" (default: the last 7 days, until now);
    `filter_string`: only the traces it matches (MLflow's search syntax, as a scorer's filter)."""

    directory: str | Path
    since: datetime | str | None = None
    until: datetime | str | None = None
    filter_string: str | None = None
    trace_ids: tuple[str, ...] = ()  # only these traces (hex), if any
    last: int | None = None  # only the most recent `last` complete traces with GenAI data (widening back from 1 h)
    s3: S3Options | None = None  # how to reach an s3:// archive (archive.s3; evaluate() takes its config's)

    def window(self, now: datetime | None = None) -> tuple[datetime, datetime]:
        return parse_window(self.since, self.until, now)

    def source(self) -> ArchiveTraceSource:
        since, until = self.window()
        return ArchiveTraceSource(archive_directory(self.directory), since, until, s3=self.s3)

    def batches(self) -> Iterator[list[Trace]]:
        if self.last is not None:
            yield self._most_recent(self.last)
            return
        wanted = {t.lower() for t in self.trace_ids}
        for batch in self.source().batches():
            yield [t for t in batch if t.trace_id.hex() in wanted] if wanted else batch

    def _most_recent(self, count: int) -> list[Trace]:
        """The last `count` traces worth judging before `until`: looked for in the last hour, then day, then the
        whole window, so that a busy archive is not read back a week for 20 traces."""
        since, until = self.window()
        recent: list[tuple[int, int, Trace]] = []  # (start, arrival, trace): a heap of the latest `count`
        for span in (timedelta(hours=1), timedelta(days=1), until - since):
            start = max(since, until - span)
            recent.clear()
            # By start, not by arrival: the source hands traces on as they were decided, not in order of start.
            source = ArchiveTraceSource(archive_directory(self.directory), start, until, s3=self.s3)
            for arrival, trace in enumerate(t for batch in source.batches() for t in batch):
                if trace.complete and extract(trace).has_genai:
                    item = (min(s.start_time_unix_nano for s in trace.spans), arrival, trace)
                    (heapq.heappush if len(recent) < count else heapq.heappushpop)(recent, item)
            if len(recent) >= count or start == since:
                break
        return [trace for _, _, trace in sorted(recent)]


@dataclass
class EvaluationResult:
    """Every verdict (`assessments`; `rows`: each as an archive `assessments` row plus its trace's request and
    response), aggregates per scorer (`metrics`, MLflow's "name/aggregate" keys; `per_scorer`), and what was
    not judged (`skipped`, by scorer and reason)."""

    assessments: list[Assessment]
    rows: list[dict[str, Any]]
    traces: int
    sessions: int
    skipped: dict[str, dict[str, int]]
    per_scorer: dict[str, dict[str, float | int | None]] = field(default_factory=dict)

    @property
    def metrics(self) -> dict[str, float | int | None]:
        return {f"{name}/{key}": value for name, values in self.per_scorer.items() for key, value in values.items()}

    @property
    def result_df(self) -> Any:
        """The rows as a pandas DataFrame (pandas must be installed)."""
        try:
            import pandas as pd
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ImportError("result_df needs pandas: pip install pandas (or read result.rows)") from exc
        return pd.DataFrame(self.rows, columns=RESULT_SCHEMA.names)

    def write(self, path: str | Path) -> Path:
        """The rows to `path`: Parquet (.parquet) or JSON lines (.jsonl / .json)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix == ".parquet":
            pq.write_table(pa.Table.from_pylist(self.rows, schema=RESULT_SCHEMA), path, compression="zstd")
        elif path.suffix in (".jsonl", ".json"):
            with path.open("wb") as out:
                for row in self.rows:
                    out.write(orjson.dumps(row) + b"\n")
        else:
            raise ValueError(f"{path}: write .parquet or .jsonl")
        return path


def evaluate(
    data: Any,
    scorers: Sequence[Any] | None = None,
    *,
    config: str | Path | Config | None = None,
    judges: Mapping[str, Any] | None = None,
    output_path: str | Path | None = None,
    otlp_endpoint: str | None = None,
    max_concurrency: int | None = None,
    engine: str | None = None,
) -> EvaluationResult:
    """Judge `data` with `scorers` (tracejudge.scorers objects, `@scorer` functions, config-file mappings, or
    names of the config's scorers; default: every scorer in the config). `config`: a tracejudge.yaml for its
    `judges:` and `scorers:` (judges may also be given as a mapping, as in the config). `output_path`: write
    the rows there (.parquet or .jsonl). `otlp_endpoint`: also emit every verdict there, as live. `engine`:
    "local" (this process), or "ray[=ADDRESS]" for archived traces on a Ray cluster (tracejudge/ray_engine.py)."""
    loaded = _config(config)
    judge_config = loaded.judges if judges is None else Config.model_validate({"judges": dict(judges)}).judges
    specs = resolve_specs(scorers, loaded)
    if isinstance(data, ArchivedTraces) and data.s3 is None and loaded.archive.s3 is not None:
        data = replace(data, s3=loaded.archive.s3)
    where = data.filter_string if isinstance(data, ArchivedTraces) else None
    logged = logged_assessments(data.directory).expectations if isinstance(data, ArchivedTraces) else {}
    code = loaded.scoring
    concurrency = max_concurrency or code.max_concurrency  # traces at once: scoring.max_concurrency, as live
    scoring = BatchScoring(specs, judge_config, max_concurrency=concurrency, where=where, expectations=logged,
                           code_workers=code.code_workers, code_timeout_s=code.code_timeout)  # fmt: skip
    if engine not in (None, "local"):
        options = {"where": where, "expectations": logged, "max_concurrency": concurrency,
                   "code_workers": code.code_workers, "code_timeout_s": code.code_timeout}  # fmt: skip
        runner = _on_ray(str(engine), data, specs, judge_config, options)
        return run_batch(scoring, (), output_path=output_path, otlp_endpoint=otlp_endpoint, runner=runner)
    return run_batch(scoring, batches_of(data), output_path=output_path, otlp_endpoint=otlp_endpoint)


def run_batch(
    scoring: BatchScoring, batches: Iterable[Sequence[Item]], *, output_path: str | Path | None = None,
    otlp_endpoint: str | None = None, emitter: AssessmentEmitter | None = None,
    runner: Callable[[Callable[[list[Assessment], Judged], None]], BatchCounts] | None = None,
) -> EvaluationResult:  # fmt: skip
    """Run a BatchScoring to the end and collect what it judged; emit through `emitter` (or to `otlp_endpoint`).
    `runner`: what runs it instead of this process, given the collecting callback (the Ray engine)."""
    assessments: list[Assessment] = []
    rows: list[dict[str, Any]] = []
    own_emitter = emitter is None and otlp_endpoint is not None
    if own_emitter:
        emitter = AssessmentEmitter(span_and_log_exporters(str(otlp_endpoint)), None)

    def collect(verdicts: list[Assessment], judged: Judged) -> None:
        request, response = _texts(judged)
        assessments.extend(verdicts)
        rows.extend({**assessment_row(a), "request": request, "response": response} for a in verdicts)
        if emitter is not None:
            emitter.emit(verdicts)

    try:
        counts = runner(collect) if runner is not None else asyncio.run(scoring.run(batches, collect))
    finally:
        if own_emitter and emitter is not None:
            emitter.shutdown()
    result = EvaluationResult(assessments, rows, counts.traces, counts.sessions, _skipped(counts),
                              aggregate(assessments))  # fmt: skip
    if output_path is not None:
        result.write(output_path)
    return result


def aggregate(assessments: Iterable[Assessment]) -> dict[str, dict[str, float | int | None]]:
    """Per scorer: count, error_count, mean (of numeric scores), pass_rate (of yes/no verdicts), and for a
    categorical scorer the share of each label."""
    by_name: dict[str, list[Assessment]] = {}
    for a in assessments:
        by_name.setdefault(a.name, []).append(a)
    out: dict[str, dict[str, float | int | None]] = {}
    for name, items in sorted(by_name.items()):
        scores = [a.score for a in items if a.error is None and a.score is not None and math.isfinite(a.score)]
        passes = [a.score for a in items if a.error is None and a.label in ("yes", "no")]
        values: dict[str, float | int | None] = {
            "count": len(items),
            "error_count": sum(1 for a in items if a.error is not None),
            "mean": sum(scores) / len(scores) if scores else None,
            "pass_rate": sum(1 for s in passes if s) / len(passes) if passes else None,
        }
        labels = Counter(a.label for a in items if a.error is None and a.label and a.label not in ("yes", "no"))
        judged = sum(labels.values())
        for label, count in labels.items():
            values[f"label/{label}"] = count / judged
        out[name] = values
    return out


def resolve_specs(scorers: Sequence[Any] | None, config: Config) -> list[ScorerSpec]:
    """Scorer objects, functions and mappings as specs; a name is the config's scorer of that name (its spec as
    registered, whatever its live rate)."""
    by_name = {spec.name: spec for spec in config.scorers}
    if scorers is None:
        if not by_name:
            raise ValueError("no scorers: pass scorers=[...] or a config with scorers:")
        return list(by_name.values())
    specs = []
    for scorer in scorers:
        if isinstance(scorer, str):
            if scorer not in by_name:
                known = ", ".join(sorted(by_name)) or "none"
                raise ValueError(f"no scorer named {scorer!r} in the config (its scorers: {known})")
            specs.append(by_name[scorer])
        else:
            specs.append(spec_of(scorer))
    names = [spec.name for spec in specs]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ValueError(f"two scorers are named {', '.join(duplicates)}: give each its own name=")
    return specs


def batches_of(data: Any, batch_size: int = 500) -> Iterable[Sequence[Item]]:
    """Whatever `data` is, as batches of traces or views (see the module docstring)."""
    if isinstance(data, ArchivedTraces):
        return data.batches()
    if isinstance(data, (str, Path)):
        path = Path(data)
        if path.is_dir() or "://" in str(data):
            return ArchivedTraces(data).batches()
        if not path.exists():
            raise FileNotFoundError(f"{path}: no such file or directory")
        return _file_batches(path, batch_size)
    if hasattr(data, "to_dict") and hasattr(data, "columns"):  # a pandas DataFrame
        return _row_batches(data.to_dict(orient="records"), batch_size)
    if isinstance(data, Mapping):
        raise TypeError("data is one mapping; give a list of rows ({'inputs': ..., 'outputs': ...})")
    if isinstance(data, Iterable):
        return _row_batches(data, batch_size)
    raise TypeError(f"cannot evaluate {type(data).__name__}: give ArchivedTraces, a path, a DataFrame or rows")


def archive_directory(directory: str | Path) -> str | Path:
    """A data directory's archive (its `archive/`), or the archive directory itself."""
    if isinstance(directory, str) and "://" in directory:
        return directory
    path = Path(directory)
    return path / "archive" if (path / "archive").is_dir() and not (path / "spans").is_dir() else path


def _config(config: str | Path | Config | None) -> Config:
    if isinstance(config, Config):
        return config
    return load_config(Path(config)) if config is not None else Config()


def _file_batches(path: Path, batch_size: int) -> Iterator[Sequence[Item]]:
    """An OTLP/JSON(L) file (its first document has resourceSpans / resourceLogs), else dataset rows, one JSON
    object a line."""
    if _is_otlp(path):
        yield from OtlpFileTraceSource(path).batches()
        return
    if path.suffix == ".parquet":
        yield from _row_batches(_decoded(row) for row in pq.read_table(path).to_pylist())
        return
    with path.open("rb") as lines:
        rows = (_decoded(orjson.loads(line)) for line in lines if line.strip())
        yield from _row_batches(rows, batch_size)


def _decoded(row: dict[str, Any]) -> dict[str, Any]:
    """Dataset columns stored as JSON text (inputs, outputs, expectations, tags) read back as values."""
    out = dict(row)
    for key in _JSON_COLUMNS:
        value = out.get(key)
        if isinstance(value, str) and value[:1] in ("{", "[", '"'):
            with contextlib.suppress(orjson.JSONDecodeError):
                out[key] = orjson.loads(value)
    return out


def _is_otlp(path: Path) -> bool:
    with path.open("rb") as file:
        head = file.read(4096)
    return any(key in head for key in (b"resourceSpans", b"resource_spans", b"resourceLogs", b"resource_logs"))


def _row_batches(rows: Iterable[Any], batch_size: int = 500) -> Iterator[list[Item]]:
    batch: list[Item] = []
    for index, row in enumerate(rows):
        if not isinstance(row, Mapping):
            raise TypeError(f"row {index}: expected a mapping with inputs/outputs, got {type(row).__name__}")
        try:
            batch.append(row_view(row))
        except ValueError as exc:
            raise ValueError(f"row {index}: {exc}") from None
        if len(batch) >= batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


def _texts(judged: Judged) -> tuple[str, str]:
    if isinstance(judged, SessionView):
        turns = judged.turns
        return turns[0].request[:_TEXT_PREVIEW], turns[-1].response[:_TEXT_PREVIEW]
    return judged.request_text[:_TEXT_PREVIEW], judged.response_text[:_TEXT_PREVIEW]


def _skipped(counts: BatchCounts) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for (name, reason), count in sorted(counts.skipped.items()):
        out.setdefault(name, {})[reason] = count
    return out


def export_dataset(directory: str | Path, out: str | Path, *, since: datetime | str | None = None,
                   until: datetime | str | None = None, filter_string: str | None = None,
                   with_feedback: bool = False) -> int:  # fmt: skip
    """Write the archived traces of a window as dataset rows (JSONL, or Parquet for a .parquet `out`): trace_id,
    session_id, inputs, outputs, expectations (the trace's own and those logged), tags, and with `with_feedback`
    only the traces humans gave feedback on, with it. `evaluate` reads the file back. Returns rows written.

    Rows are written as the reader hands traces on (Parquet: a row group per EXPORT_ROW_GROUP rows), so memory is
    about flat in the window: `tracejudge dataset export` of 20,000 archived traces peaked at 388 MiB (JSONL) and
    477 MiB (Parquet) with every row held until the end, 328 and 352 MiB written as they come (5,000: 297 MiB)."""
    logged = logged_assessments(directory)
    where = parse_filter(filter_string)
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    written = 0
    with _dataset_writer(path, with_feedback) as write:
        for batch in ArchivedTraces(directory, since, until).batches():
            rows = []
            for trace in batch:
                view = extract(trace)
                feedback = logged.feedback.get(view.trace_id, [])
                if not view.has_genai or not where.matches(view) or (with_feedback and not feedback):
                    continue
                rows.append({"trace_id": view.trace_id, "session_id": view.session_id, "inputs": view.request,
                             "outputs": view.response,
                             "expectations": {**view.expectations, **logged.expectations.get(view.trace_id, {})},
                             "tags": dict(view.tags), "timestamp_ms": view.timestamp_ms,
                             **({"feedback": feedback} if with_feedback else {})})  # fmt: skip
            write(rows)
            written += len(rows)
    return written


_JSON_COLUMNS = ("inputs", "outputs", "expectations", "tags", "feedback")
_DATASET_SCHEMA = pa.schema([("trace_id", pa.string()), ("session_id", pa.string()), ("inputs", pa.string()),
                             ("outputs", pa.string()), ("expectations", pa.string()), ("tags", pa.string()),
                             ("timestamp_ms", pa.int64()), ("feedback", pa.string())])  # fmt: skip
EXPORT_ROW_GROUP = 5000  # dataset rows per Parquet row group


@contextlib.contextmanager
def _dataset_writer(path: Path, with_feedback: bool) -> Iterator[Callable[[list[dict[str, Any]]], None]]:
    """A function writing lists of dataset rows to `path`, as JSONL or (a .parquet path) Parquet with a fixed
    schema: the JSON columns as JSON text, as evaluate reads them back."""
    if path.suffix != ".parquet":
        with path.open("wb") as file:
            yield lambda rows: file.writelines(orjson.dumps(row, default=str) + b"\n" for row in rows)
        return
    schema = _DATASET_SCHEMA if with_feedback else _DATASET_SCHEMA.remove(_DATASET_SCHEMA.get_field_index("feedback"))
    pending: list[dict[str, Any]] = []
    with pq.ParquetWriter(path, schema, compression="zstd") as writer:

        def flush() -> None:
            columns = {name: [orjson.dumps(row.get(name), default=str).decode() if name in _JSON_COLUMNS
                              else row.get(name) for row in pending] for name in schema.names}  # fmt: skip
            writer.write_table(pa.table(columns, schema=schema))
            pending.clear()

        def write(rows: list[dict[str, Any]]) -> None:
            pending.extend(rows)
            if len(pending) >= EXPORT_ROW_GROUP:
                flush()

        yield write
        if pending:
            flush()


def _on_ray(engine: str, data: Any, specs: list[ScorerSpec], judges: Mapping[str, Any], options: dict[str, Any]
            ) -> Callable[[Callable[[list[Assessment], Judged], None]], BatchCounts]:  # fmt: skip
    """The Ray engine over archived traces (the only data it reads: it reads the archive's Parquet itself)."""
    if not isinstance(data, ArchivedTraces) or data.trace_ids or data.last is not None:
        raise ValueError(f"engine {engine!r} evaluates archived traces of a window (ArchivedTraces without trace_ids "
                         "or last); evaluate files, rows and DataFrames with engine='local'")  # fmt: skip
    from tracejudge.ray_engine import score_archive

    since, until = data.window()
    archive = archive_directory(data.directory)
    return lambda emit: score_archive(engine, archive, since, until, specs, judges, emit, **options)

"""Backfill: registered scorers over the archive's past traces, as MLflow's `backfill_scorers` promises.

    job = Backfill("./data", ["safety", BackfillScorerConfig("no_error", sample_rate=1.0)],
                   start_time="2026-12-01", end_time="2026-12-03").run()

Offline: over a data directory a sidecar wrote (its `archive/` and its `scorers.json`), with no sidecar
running, or beside one (the files it writes are its own). Semantics, each backed by a test in
tests/test_backfill.py:

- Scorers must be registered: in the config's `scorers:` or the data directory's registry (the config wins,
  as at a sidecar's start). Each runs at its live rate unless the job gives one; a stopped scorer needs one.
- The live consistent sampler (scoring/sampling.py): a backfill at a scorer's live rate picks exactly the
  traces live scoring picked.
- Idempotent per (trace, scorer, scorer version): a pair the archive already holds a verdict for (one without
  an error) is left alone (`already_scored`) unless `rescore`; a scorer whose version changed has no verdict
  of its new version yet, so its traces are judged again.
- `skipped_only`: only the pairs live scoring recorded as skipped (the `skipped` table).
- Resumable: verdict rows are written to the archive's `assessments` table in small files closed every
  FLUSH_ROWS rows or FLUSH_INTERVAL_S, and the archive is the checkpoint: a job killed mid-way and run again
  (`resume`) judges only what no closed file holds, so nothing is judged twice into the archive. A job's
  parameters and counts are kept in `<data_dir>/backfill/<job id>.json`.
- Verdicts are marked (`metadata.backfill_job`), and emitted to `otlp_endpoint` when given, as live ones are:
  into the original traces at the backend.
- Before it runs, `estimate()` counts exactly the pairs it will judge (the sampler is deterministic) and the
  judge tokens that will cost, from the scorer's past verdicts in the archive (a new judge's from its prompt on
  the window's first traces), priced at judges.budget.prices.
- judges.budget (scoring/budget.py) is shared with live scoring through the data directory's ledger: a backfill
  may use `backfill_share` of each limit; past it, judge pairs are skipped (`budget`, counted in the job), and
  judged by running the job again once spend has fallen (they have no verdict, so they are not `already_scored`).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.fs as pafs
from opentelemetry.sdk._logs.export import LogRecordExporter
from opentelemetry.sdk.trace.export import SpanExporter

from tracejudge.backfill_jobs import BackfillError, BackfillJob, describe_estimate, resolve_scorers, window
from tracejudge.client.backfill import BackfillScorerConfig
from tracejudge.config_file import Config
from tracejudge.exporter import rows as archive_rows
from tracejudge.exporter.archive_reader import DEFAULT_LATENESS, ArchiveTraceSource
from tracejudge.exporter.archive_store import TablePlace, archive_filesystem, location_text, partition_files
from tracejudge.exporter.archive_worker import TableWriter
from tracejudge.exporter.emitter import AssessmentEmitter, assessment_row
from tracejudge.exporter.feedback import logged_assessments
from tracejudge.model import Assessment
from tracejudge.otlp_exporters import span_and_log_exporters
from tracejudge.scoring.batch import BatchCounts, BatchScoring, mean_prompt_tokens
from tracejudge.scoring.budget import LEDGER_NAME, JudgeBudget, limits_of
from tracejudge.scoring.config import judge_config_for
from tracejudge.scoring.registry import ScorerRegistry
from tracejudge.scoring.sampling import randomness, session_randomness, threshold
from tracejudge.scoring.spec import ScorerSpec
from tracejudge.scoring.view import Judged

__all__ = ["Backfill", "BackfillError", "BackfillJob", "BackfillScorerConfig", "Estimate"]  # the last three for users

log = logging.getLogger(__name__)

FLUSH_ROWS = 200  # verdict rows per archive file at most: what a kill can cost is re-judged, never lost
FLUSH_INTERVAL_S = 2.0
BACKFILL_KEY = "backfill_job"  # the metadata key marking a verdict as a backfill's
_TOKENS_SAMPLE = 1000  # past verdicts per scorer read for its mean judge tokens
_PROMPT_SAMPLE = 50  # traces a new judge's prompt is rendered on, for its estimate
# Output tokens of a judge's answer when the archive has no judge verdict at all: a rationale of two or three
# sentences and the result (gpt-4.1-mini's answers to the builtin judges run 40-120 tokens).
OUTPUT_TOKENS_GUESS = 100.0


@dataclass
class Estimate:
    """What a job will judge: traces in the window, pairs to judge per scorer, judge calls and tokens."""

    traces: int
    pairs: dict[str, int]
    already: dict[str, int]
    judge_calls: int
    tokens: int | None  # None: a judge scorer has no past verdict to estimate from
    tokens_known: dict[str, float]  # mean judge tokens per verdict, per judge scorer with past verdicts
    cost: float | None = None  # the tokens at judges.budget.prices; None without prices or tokens
    budget: str = ""  # judges.budget as it stands, in words ("" without one)
    tokens_from_prompts: list[str] = field(default_factory=list)  # judges estimated from their prompts (no verdicts)

    def describe(self) -> str:
        return describe_estimate(self.traces, self.pairs, self.already, self.judge_calls, self.tokens, self.cost,
                                 self.budget, self.tokens_from_prompts)  # fmt: skip


class Backfill:
    """One backfill job over `data_dir` (a sidecar's data directory). `config`: where scorers and judges are
    defined (a Config; its `scorers:` win over the data directory's registry)."""

    def __init__(
        self,
        data_dir: str | Path,
        scorers: Sequence[BackfillScorerConfig | str],
        *,
        config: Config | None = None,
        start_time: datetime | str | None = None,
        end_time: datetime | str | None = None,
        rescore: bool = False,
        skipped_only: bool = False,
        otlp_endpoint: str | None = None,
        job_id: str | None = None,
        max_concurrency: int | None = None,
        exporters: tuple[SpanExporter, LogRecordExporter] | None = None,
        runner: str = "offline",
        engine: str | None = None,
    ) -> None:
        """`exporters`: where verdicts are emitted instead of `otlp_endpoint` (a sidecar's backfill worker
        relays them to the sidecar)."""
        self._data_dir = Path(data_dir)
        self._config = config or Config(data_dir=self._data_dir)
        self._archive = self._config.archive.directory or self._data_dir / "archive"  # a path, or s3://...
        self._store = archive_filesystem(self._archive, self._config.archive.s3)
        if self._store[0].get_file_info(f"{self._store[1]}/spans").type != pafs.FileType.Directory:
            raise BackfillError(f"{location_text(self._archive)}: no archive here (no spans/ directory); "
                                "give a sidecar's data dir")  # fmt: skip
        self._start, self._end = window(start_time, end_time)
        registered = {spec.name: spec for spec in ScorerRegistry(self._data_dir / "scorers.json").all()}
        registered.update({spec.name: spec for spec in self._config.scorers})  # the config wins, as at a start
        self._specs, self._rates = resolve_scorers(scorers, registered)
        self._rescore, self._skipped_only = rescore, skipped_only
        self._exporters = exporters or (span_and_log_exporters(otlp_endpoint) if otlp_endpoint else None)
        # Traces judged at once: by default the config's scoring.max_concurrency (256), as live scoring, so that
        # the judges' own max_concurrency is what limits a job. A fixed 16 held a C = 64 judge to 16 calls in
        # flight, a quarter of C/L (bench/backfill.py, phase b).
        self._max_concurrency = max_concurrency or self._config.scoring.max_concurrency
        self._engine = None if engine in (None, "local") else engine  # "ray[=ADDRESS]": tracejudge/ray_engine.py
        budget = self._config.judge_budget
        if self._engine is not None and budget is not None and limits_of(budget):
            raise BackfillError("judges.budget's limits are kept in this data directory's ledger, which a Ray "
                                "cluster's workers cannot share: run this backfill without --engine, or without "
                                "the limits (the estimate and the job still price judge tokens)")  # fmt: skip
        self.jobs_dir = self._data_dir / "backfill"
        self.job = BackfillJob.new(self._rates, self._start, self._end, rescore, skipped_only, runner, job_id)
        self._cancelled = threading.Event()
        self._paused = False
        self._done: set[tuple[str, str, int]] | None = None
        self._skipped_pairs: set[tuple[str, str]] | None = None
        self._in_window: dict[str, tuple[int, str | None]] | None = None  # the traces table, read once per job
        self._source: ArchiveTraceSource | None = None  # what run() reads (its traces passed over count as read)
        self._done_by: str | None = None  # a resumed rescoring job's id: only its own verdicts count as done

    @classmethod
    def resume(cls, data_dir: str | Path, job_id: str, *, config: Config | None = None,
               otlp_endpoint: str | None = None, engine: str | None = None) -> Backfill:  # fmt: skip
        """The job `job_id` again, as it was asked for: what its closed files hold is not judged again."""
        return cls.of(BackfillJob.load(Path(data_dir) / "backfill", job_id), data_dir, config=config,
                      otlp_endpoint=otlp_endpoint, engine=engine)  # fmt: skip

    @classmethod
    def of(cls, job: BackfillJob, data_dir: str | Path, **options: Any) -> Backfill:
        """A Backfill running `job`'s record: resumed when it had started, so that what this job judged before is
        not judged again (a rescoring job still judges again what it had not reached: only its own verdicts count
        as done)."""
        scorers = [BackfillScorerConfig(name, rate) for name, rate in job.scorers.items()]
        started = job.status not in ("pending", "estimate")
        backfill = cls(data_dir, scorers, start_time=job.start_time, end_time=job.end_time, job_id=job.job_id,
                       rescore=job.rescore and not started, skipped_only=job.skipped_only, runner=job.runner,
                       **options)  # fmt: skip
        backfill.job = replace(job, scorers=dict(backfill._rates))
        backfill._done_by = job.job_id if job.rescore and started else None
        return backfill

    def cancel(self) -> None:
        self._cancelled.set()

    def pause(self) -> None:
        """Stop where it is, resumable: files closed, verdicts sent, the job left `running`."""
        self._paused = True
        self._cancelled.set()

    def estimate(self) -> Estimate:
        """Exactly the pairs the job will judge, from the `traces` table and the sampler (which reads trace and
        session ids only), less those already scored; judge tokens from each judge scorer's past verdicts."""
        traces = self._window_traces()
        # A rescore judges them all: no verdict to read (the bench's 20k-trace archive, holding 60k verdicts of
        # earlier runs, cost estimate() 69 MiB of RSS with them, 40 without).
        done = set() if self._rescore else self._already_done()
        skipped = self._skipped_table() if self._skipped_only else None
        pairs: dict[str, int] = {}
        already: dict[str, int] = {}
        for spec in self._specs:
            bar = threshold(self._rates[spec.name])
            if spec.target_kind == "session":  # a session's verdict is on its first trace
                firsts: dict[str, tuple[int, str]] = {}
                for tid, (begin, sid) in traces.items():
                    if sid and session_randomness(sid) >= bar and (sid not in firsts or begin < firsts[sid][0]):
                        firsts[sid] = (begin, tid)
                candidates = [tid for _, tid in firsts.values()]
            else:
                candidates = [tid for tid in traces if randomness(tid) >= bar]
            if skipped is not None:
                candidates = [tid for tid in candidates if (tid, spec.name) in skipped]
            fresh = [t for t in candidates if self._rescore or (t, spec.name, spec.version) not in done]
            pairs[spec.name] = len(fresh)
            already[spec.name] = len(candidates) - len(fresh)
        judges = [spec for spec in self._specs if spec.uses_judge]
        per_verdict = self._mean_tokens([spec.name for spec in judges])  # name -> (input, output) per verdict
        calls = sum(pairs[spec.name] for spec in judges)
        new = [spec for spec in judges if spec.name not in per_verdict and pairs[spec.name]]
        from_prompts = self._prompt_tokens(new) if new else {}
        per_verdict.update(from_prompts)
        unknown = [spec.name for spec in new if spec.name not in per_verdict]
        mean = {name: tokens_in + tokens_out for name, (tokens_in, tokens_out) in per_verdict.items()}
        tokens = None if unknown else round(sum(pairs[s.name] * mean.get(s.name, 0.0) for s in judges))
        budget = self._config.judge_budget
        cost = None
        if tokens is not None and budget is not None and budget.prices:
            cost = sum(pairs[s.name] * self._cost(s, *per_verdict.get(s.name, (0.0, 0.0))) for s in judges)
        shown = ""
        if budget is not None and limits_of(budget):
            ledger = JudgeBudget(budget, self._data_dir / LEDGER_NAME, "backfill")
            try:
                shown = ledger.describe()
            finally:
                ledger.close()
        return Estimate(len(traces), pairs, already, calls, tokens, mean, cost, shown, sorted(from_prompts))

    def _prompt_tokens(self, specs: list[ScorerSpec]) -> dict[str, tuple[float, float]]:
        """(input, output) tokens per verdict of judges no verdict of which the archive holds: their prompts on
        the window's first traces (input), and what other judges' verdicts answered (output; else a guess)."""
        source = ArchiveTraceSource(self._archive, self._start, self._end, s3=self._config.archive.s3)
        sample = list(itertools.islice((t for batch in source.batches() for t in batch), _PROMPT_SAMPLE))
        inputs = mean_prompt_tokens(specs, self._config.judges, sample)
        answers = [out for _, out in self._mean_tokens(None).values()]
        output = sum(answers) / len(answers) if answers else OUTPUT_TOKENS_GUESS
        return {name: (tokens, output) for name, tokens in inputs.items()}

    def _cost(self, spec: ScorerSpec, input_tokens: float, output_tokens: float) -> float:
        """One verdict's cost at the prices of the scorer's model (as the ledger charges it)."""
        budget = self._config.judge_budget
        assert budget is not None
        return budget.cost(judge_config_for(spec.model, self._config.judges).model, input_tokens, output_tokens)

    def run(self, progress: bool = False, on_job: Callable[[BackfillJob], None] | None = None) -> BackfillJob:
        """Judge the window, writing verdicts to the archive as it goes; the job's final state. `on_job` is
        told of the job's record at each progress report (at most every 0.5 s) and at the end."""
        job = self.job
        job.status, job.error = "running", None
        job.total_traces = len(self._window_traces())
        job.save(self.jobs_dir)
        writer = _VerdictFiles(TablePlace.of(self._archive, "assessments", self._config.archive.s3,
                                             self.jobs_dir / "spool"))  # fmt: skip
        emitter = AssessmentEmitter(self._exporters, None) if self._exporters else None
        bar = _progress_bar(job.total_traces, progress)
        last_save = last_told = time.monotonic()
        budget_config = self._config.judge_budget
        budget = (JudgeBudget(budget_config, self._data_dir / LEDGER_NAME, "backfill")
                  if budget_config is not None and self._engine is None else None)  # fmt: skip

        def emit(verdicts: list[Assessment], _judged: Judged) -> None:
            marked = [_marked(a, job.job_id) for a in verdicts]
            writer.add([assessment_row(a) for a in marked])
            if emitter is not None:
                emitter.emit(marked)

        def on_progress(counts: BatchCounts) -> None:
            nonlocal last_save, last_told
            writer.roll_if_due()
            self._record(counts, budget)
            if bar is not None:
                bar.n = counts.traces
                spend = {} if job.cost is None else {"cost": f"{job.cost:.4f}"}
                bar.set_postfix(verdicts=sum(counts.assessments.values()),
                                tokens=counts.input_tokens + counts.output_tokens, **spend, refresh=False)  # fmt: skip
                bar.refresh()
            if time.monotonic() - last_save > 5.0:
                last_save = time.monotonic()
                job.save(self.jobs_dir)
            if on_job is not None and time.monotonic() - last_told > 0.5:
                last_told = time.monotonic()
                on_job(job)

        logged = logged_assessments(self._data_dir).expectations
        scoring = BatchScoring(self._specs, self._config.judges, sample=True, rates=self._rates, exclude=self._exclude,
                               expectations=logged,
                               max_concurrency=self._max_concurrency, code_workers=self._config.scoring.code_workers,
                               code_timeout_s=self._config.scoring.code_timeout, budget=budget)  # fmt: skip
        source = self._source = ArchiveTraceSource(self._archive, self._start, self._end, s3=self._config.archive.s3,
                                                   wanted=self._sampled_by_a_scorer())  # fmt: skip
        try:
            if self._engine is not None:
                counts = self._run_on_ray(logged, emit, on_progress)
            else:
                counts = asyncio.run(scoring.run(source.batches(), emit, on_progress, stop=self._cancelled))
            self._record(counts, budget)
            job.status = "running" if self._paused else "cancelled" if self._cancelled.is_set() else "succeeded"
        except Exception as exc:
            job.status, job.error = "failed", f"{type(exc).__name__}: {exc}"
            log.exception("backfill %s failed", job.job_id)
        finally:
            writer.close()
            if budget is not None:
                budget.close()
            if emitter is not None:
                emitter.shutdown()
            if bar is not None:
                bar.close()
            job.finished_at = None if job.status == "running" else time.time()
            job.save(self.jobs_dir)
            if on_job is not None:
                on_job(job)
        return job

    def _run_on_ray(self, logged: Mapping[str, Mapping[str, Any]], emit: Any, on_progress: Any) -> BatchCounts:
        """The same scorers, sampler and idempotence on a Ray cluster; verdicts come back here to `emit`."""
        from tracejudge.ray_engine import PairFilter, score_archive

        done = None if self._rescore else frozenset(self._already_done())
        exclude = PairFilter(done, frozenset(self._skipped_table()) if self._skipped_only else None)
        assert self._engine is not None
        return score_archive(self._engine, self._archive, self._start, self._end, self._specs, self._config.judges,
                             emit, on_progress, self._cancelled, sample=True, rates=self._rates, exclude=exclude,
                             expectations=logged, max_concurrency=self._max_concurrency,
                             code_workers=self._config.scoring.code_workers,
                             code_timeout_s=self._config.scoring.code_timeout)  # fmt: skip

    # --- what to judge ------------------------------------------------------------------------------

    def _sampled_by_a_scorer(self) -> Callable[[bytes], bool] | None:
        """For the reader: whether any of the job's scorers samples a trace, so that the others are not rebuilt
        (at rate 0.1, nine traces in ten: a no-model check over 20,000 archived traces took 1.8-2.0 s instead of
        6.1-6.5 s, the same 1,987 verdicts). Only when every scorer judges whole traces: a span target samples
        spans and a session scorer conversations, and both count skips (`no_session`) on any trace."""
        if any(spec.target_kind != "trace" for spec in self._specs):
            return None
        bar = min((threshold(self._rates[spec.name]) for spec in self._specs), default=0)
        if bar == 0:  # a scorer at rate 1 samples every trace
            return None
        return lambda trace_id: randomness(trace_id) >= bar

    def _exclude(self, trace_id: str, name: str, version: int) -> str | None:
        if self._skipped_only:
            if self._skipped_pairs is None:
                self._skipped_pairs = self._skipped_table()
            if (trace_id, name) not in self._skipped_pairs:
                return ""  # not part of this job
        if self._rescore:
            return None
        if self._done is None:
            self._done = self._already_done()
        return "already_scored" if (trace_id, name, version) in self._done else None

    def _record(self, counts: BatchCounts, budget: JudgeBudget | None = None) -> None:
        job = self.job
        job.traces = counts.traces + (self._source.passed_over if self._source is not None else 0)
        job.assessments = dict(counts.assessments)
        job.input_tokens, job.output_tokens = counts.input_tokens, counts.output_tokens
        if budget is not None and budget.cost_so_far is not None:
            job.cost = budget.cost_so_far
        skipped: dict[str, dict[str, int]] = {}
        for (name, reason), count in sorted(counts.skipped.items()):
            skipped.setdefault(name, {})[reason] = count
        job.skipped = skipped

    # --- reading the archive ------------------------------------------------------------------------

    def _window_traces(self) -> dict[str, tuple[int, str | None]]:
        """Trace id -> (start, session id) of every trace in the `traces` table whose start is in the window;
        read once, for the estimate and the progress bar's total alike."""
        if self._in_window is None:
            self._in_window = self._read_window_traces()
        return self._in_window

    def _read_window_traces(self) -> dict[str, tuple[int, str | None]]:
        start, end = _ns(self._start), _ns(self._end)
        table = _read(self._store, "traces", self._start - DEFAULT_LATENESS, self._end + DEFAULT_LATENESS,
                      ["trace_id", "start_time", "session_id"])  # fmt: skip
        out: dict[str, tuple[int, str | None]] = {}
        if table is None:
            return out
        starts = table.column("start_time").cast(pa.int64()).to_pylist()
        for trace_id, begin, session in zip(table.column("trace_id").to_pylist(), starts,
                                            table.column("session_id").to_pylist(), strict=True):  # fmt: skip
            if begin is not None and start <= begin < end:
                out[trace_id] = (begin, session)
        return out

    def _already_done(self) -> set[tuple[str, str, int]]:
        """(trace id, scorer, version) of every verdict without an error the archive holds for the job's scorers,
        written from the window's start on (a verdict is written after its trace started); of a resumed rescoring
        job, only its own (marked with its id, which is random enough not to appear in other metadata)."""
        names = [spec.name for spec in self._specs]
        where = pc.field("name").isin(names)
        if self._done_by is not None:
            where = where & pc.match_substring(pc.field("metadata"), self._done_by)
        table = _read(self._store, "assessments", self._start - DEFAULT_LATENESS, None,
                      ["trace_id", "name", "scorer_version", "error"], where)  # fmt: skip
        if table is None:
            return set()
        return {(t, n, v) for t, n, v, e in zip(*(table.column(c).to_pylist() for c in table.column_names),
                                                strict=True) if e is None}  # fmt: skip

    def _skipped_table(self) -> set[tuple[str, str]]:
        table = _read(self._store, "skipped", self._start - DEFAULT_LATENESS, None, ["trace_id", "scorers"])
        if table is None:
            return set()
        return {(t, name) for t, names in zip(table.column("trace_id").to_pylist(),
                                              table.column("scorers").to_pylist(), strict=True)
                for name in names or ()}  # fmt: skip

    def _mean_tokens(self, names: Iterable[str] | None) -> dict[str, tuple[float, float]]:
        """(input, output) judge tokens per verdict of each of `names` (None: of every judge) from the first
        _TOKENS_SAMPLE of its verdicts in the archive."""
        names = None if names is None else list(names)
        if names == []:
            return {}
        where = pc.field("judge_input_tokens").is_valid()
        if names is not None:
            where = pc.field("name").isin(names) & where
        table = _read(self._store, "assessments", None, None, ["name", "judge_input_tokens", "judge_output_tokens"],
                      where)  # fmt: skip
        if table is None:
            return {}
        inputs: Counter[str] = Counter()
        outputs: Counter[str] = Counter()
        seen: Counter[str] = Counter()
        for name, tokens_in, tokens_out in zip(*(table.column(c).to_pylist() for c in table.column_names), strict=True):
            if seen[name] < _TOKENS_SAMPLE:
                seen[name] += 1
                inputs[name] += tokens_in or 0
                outputs[name] += tokens_out or 0
        return {name: (inputs[name] / seen[name], outputs[name] / seen[name]) for name in seen}


class _VerdictFiles:
    """Verdict rows into the archive's `assessments` table, each small file closed (renamed into place) every
    FLUSH_ROWS rows or FLUSH_INTERVAL_S: a closed file is the job's checkpoint."""

    def __init__(self, directory: Path | TablePlace) -> None:
        self._writer = TableWriter(directory, archive_rows.ASSESSMENTS_SCHEMA, roll_size=64 * 2**20,
                                   roll_interval=float("inf"))  # fmt: skip
        self._rows = 0
        self._since = 0.0
        self._lock = threading.Lock()
        # Rows wait here and become one RecordBatch per file: a RecordBatch of one trace's verdicts, built per
        # trace, was ~11 % of a judge backfill's CPU (py-spy, bench/backfill.py phase b). Only a closed file is
        # a checkpoint, so rows not yet in one are lost to a kill either way.
        self._pending: list[dict[str, Any]] = []

    def add(self, rows: list[dict[str, Any]]) -> None:
        with self._lock:
            if not self._rows:
                self._since = time.monotonic()
            self._pending.extend(rows)
            self._rows += len(rows)
            self._close_if_due()

    def roll_if_due(self) -> None:
        with self._lock:
            self._close_if_due()

    def close(self) -> None:
        with self._lock:
            self._close()

    def _close_if_due(self) -> None:
        if self._rows >= FLUSH_ROWS or (self._rows and time.monotonic() - self._since >= FLUSH_INTERVAL_S):
            self._close()

    def _close(self) -> None:
        if self._pending:
            self._writer.append(pa.RecordBatch.from_pylist(self._pending, schema=archive_rows.ASSESSMENTS_SCHEMA))
            self._pending = []
        self._writer.close()
        self._rows = 0


def _marked(assessment: Assessment, job_id: str) -> Assessment:
    return replace(assessment, metadata={**assessment.metadata, BACKFILL_KEY: job_id})


def _read(store: tuple[pafs.FileSystem, str], table: str, since: datetime | None, until: datetime | None,
          columns: list[str], where: ds.Expression | None = None) -> pa.Table | None:  # fmt: skip
    """The hour partitions of one table between `since` and `until` (either open), read with today's schema."""
    filesystem, root = store
    low = since.strftime("date=%Y-%m-%d/hour=%H") if since else ""
    high = until.strftime("date=%Y-%m-%d/hour=%H") if until else "~"
    paths = partition_files(filesystem, f"{root}/{table}", low, high)
    if not paths:
        return None
    dataset = ds.dataset(paths, schema=_SCHEMAS[table], format="parquet", filesystem=filesystem)
    return dataset.to_table(columns=columns, filter=where)


_SCHEMAS: Mapping[str, pa.Schema] = {"traces": archive_rows.TRACES_SCHEMA, "skipped": archive_rows.SKIPPED_SCHEMA,
                                     "assessments": archive_rows.ASSESSMENTS_SCHEMA}  # fmt: skip


def _ns(moment: datetime) -> int:
    return (moment - datetime(1970, 1, 1, tzinfo=timezone.utc)) // timedelta(microseconds=1) * 1000


def _progress_bar(total: int, enabled: bool) -> Any:
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit="trace", desc="backfill", dynamic_ncols=True)

"""Backfill jobs: the record each keeps, which scorers a job may run, and the sidecar's runner of jobs.

A job's record (`BackfillJob`) is a JSON file in `<data_dir>/backfill/`, written by whoever runs it: the
offline `tracejudge backfill --archive DIR` (tracejudge/backfill.py) or a sidecar. A sidecar runs jobs with
`BackfillJobs`, the store behind the control plane's BackfillService:

- one job at a time, in a process of its own (`python -m tracejudge.backfill_worker`), so that its reading
  of the archive (pyarrow) and its judges never touch the sidecar's own memory (tests/test_architecture.py
  keeps pyarrow out of it), and below live scoring's priority: niced below the scoring worker
  (`backfill.nice`), with few traces judged at once (`backfill.max_concurrency`), so few judge calls in flight;
- the job's verdicts come back to the sidecar as encoded OTLP, and leave through the write-ahead log to the
  verdicts endpoint exactly as live verdicts do (into the original traces); its assessment rows the worker
  writes into the archive itself, in small closed files that are the job's checkpoint;
- a worker that dies mid-job is started again on the same job (up to MAX_ATTEMPTS), judging only what no
  closed file holds; at a sidecar's shutdown the worker stops where it is (its files closed, its verdicts
  sent) and the job is resumed at the next start.

Which scorers and rates a job runs is decided here, once, for both runners (`resolve_scorers`).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from tracejudge.child_process import start_connected_worker
from tracejudge.client.backfill import BackfillScorerConfig
from tracejudge.config import parse_window
from tracejudge.exporter.config import ArchiveConfig
from tracejudge.model import Signal
from tracejudge.scoring.config import BackfillConfig, JudgeBudgetConfig, JudgeEndpointConfig
from tracejudge.scoring.registry import ScorerRegistry
from tracejudge.scoring.spec import ScorerSpec
from tracejudge.scoring.worker_protocol import FORWARD, decode, encode

__all__ = ["BackfillError", "BackfillJob", "BackfillJobs", "BackfillOrder", "UnknownJob", "describe_estimate",
           "resolve_scorers", "window"]  # fmt: skip

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 3  # a worker that dies is started again on its job this many times in all
ESTIMATE_TIMEOUT_S = 120.0
# Frames between the runner and its worker (tracejudge.scoring.worker_protocol's encoding):
#   runner -> worker   (ORDER, BackfillOrder)  first;   (CANCEL,) end it;   (PAUSE,) stop where it is, resumable
#   worker -> runner   (JOB, dict)  the record, every progress report and at the end
#                      (FORWARD, Signal, bytes, n)  encoded OTLP verdicts for the write-ahead log
ORDER, CANCEL, PAUSE, JOB = "order", "cancel", "pause", "job"
_UNFINISHED = ("pending", "running", "estimating")


class BackfillError(ValueError):
    """A job that cannot run as asked: an unknown scorer, a stopped one without a rate, an empty window."""


class UnknownJob(BackfillError, LookupError):
    """No job of that id (NOT_FOUND on the control plane)."""


@dataclass
class BackfillJob:
    """A job's parameters, where it stands, and what it judged so far. `runner` says who runs it: "offline"
    (the CLI over a data directory) or "sidecar" (resumed by the sidecar when it starts again)."""

    job_id: str
    scorers: dict[str, float]  # name -> rate
    start_time: str
    end_time: str
    rescore: bool = False
    skipped_only: bool = False
    status: str = "pending"  # pending, running, succeeded, failed, cancelled; a dry run: estimating, estimate
    traces: int = 0
    total_traces: int = 0
    assessments: dict[str, int] = field(default_factory=dict)
    skipped: dict[str, dict[str, int]] = field(default_factory=dict)
    input_tokens: int = 0
    output_tokens: int = 0
    cost: float | None = None  # judge cost so far at judges.budget.prices; None without prices
    error: str | None = None
    created_at: float = 0.0
    finished_at: float | None = None
    runner: str = "offline"
    estimate: dict[str, Any] | None = None  # Estimate's fields, once known

    @classmethod
    def new(cls, rates: Mapping[str, float], start: datetime, end: datetime, rescore: bool = False,
            skipped_only: bool = False, runner: str = "offline", job_id: str | None = None) -> BackfillJob:  # fmt: skip
        job_id = job_id or f"bf-{time.strftime('%Y%m%d-%H%M%S')}-{os.urandom(3).hex()}"
        return cls(job_id, dict(rates), start.isoformat(), end.isoformat(), rescore, skipped_only,
                   created_at=time.time(), runner=runner)  # fmt: skip

    @property
    def finished(self) -> bool:
        return self.status not in _UNFINISHED

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        temp = directory / f".{self.job_id}.json.tmp"
        temp.write_text(json.dumps(asdict(self), indent=1))
        os.replace(temp, directory / f"{self.job_id}.json")

    @classmethod
    def load(cls, directory: Path, job_id: str) -> BackfillJob:
        path = directory / f"{job_id}.json"
        if not path.exists():
            known = sorted(p.stem for p in directory.glob("*.json")) if directory.is_dir() else []
            raise UnknownJob(f"no backfill job {job_id!r} in {directory} (jobs: {', '.join(known) or 'none'})")
        return cls(**json.loads(path.read_text()))

    @classmethod
    def list(cls, directory: Path) -> list[BackfillJob]:
        if not directory.is_dir():
            return []
        jobs = [cls(**json.loads(p.read_text())) for p in directory.glob("*.json")]
        return sorted(jobs, key=lambda job: job.created_at)


def window(start_time: datetime | str | None, end_time: datetime | str | None) -> tuple[datetime, datetime]:
    """The job's window: `end_time` (default now) back to `start_time` (default 7 days before it)."""
    try:
        start, end = parse_window(start_time or None, end_time or None)  # "" (unset in a proto message): unset
    except ValueError as exc:
        raise BackfillError(str(exc)) from None
    if end <= start:
        raise BackfillError(f"empty window: {start.isoformat()} .. {end.isoformat()}")
    return start, end


Wanted = BackfillScorerConfig | str | tuple[str, float | None]  # a name and a rate, or the name alone


def resolve_scorers(wanted: Sequence[Wanted],
                    registered: Mapping[str, ScorerSpec]) -> tuple[list[ScorerSpec], dict[str, float]]:  # fmt: skip
    """The specs a job runs and the rate of each: its live rate unless the job gives one. Only registered
    scorers (MLflow's rule); a stopped one needs a rate."""
    items = [s if isinstance(s, BackfillScorerConfig) else BackfillScorerConfig(*s) if isinstance(s, tuple)
             else BackfillScorerConfig(s) for s in wanted]  # fmt: skip
    if not items:
        raise BackfillError("no scorers: name at least one registered scorer (--scorer NAME[=RATE])")
    specs, rates = [], {}
    for item in items:
        spec = registered.get(item.name)
        if spec is None:
            known = ", ".join(sorted(registered)) or "none"
            raise BackfillError(f"scorer {item.name!r} is not registered (registered: {known}); register it first")
        rate = spec.sample_rate if item.sample_rate is None else item.sample_rate
        if not 0 < rate <= 1:
            hint = " (it is stopped: give a rate, NAME=0.5)" if item.sample_rate is None else ""
            raise BackfillError(f"scorer {item.name!r}: sample rate {rate:g} is not in (0, 1]{hint}")
        if spec.name in rates:
            raise BackfillError(f"scorer {item.name!r} is named twice")
        specs.append(spec)
        rates[spec.name] = rate
    return specs, rates


def describe_estimate(traces: int, pairs: Mapping[str, int], already: Mapping[str, int], judge_calls: int,
                      tokens: int | None, cost: float | None = None, budget: str = "",
                      from_prompts: Sequence[str] = ()) -> str:  # fmt: skip
    """What a job will judge, as the CLI shows it before asking, whichever runner computed it."""
    lines = [f"{traces:,} traces in the window"]
    for name in sorted(set(pairs) | set(already)):
        lines.append(f"  {name}: {pairs.get(name, 0):,} to judge ({already.get(name, 0):,} already scored)")
    spend = f"~{tokens:,} judge tokens" if tokens is not None else "judge tokens unknown (no past verdicts)"
    if tokens is not None and from_prompts:
        spend += f" ({', '.join(from_prompts)}: from their prompts on the window's traces, no past verdicts)"
    if cost is not None:
        spend += f", ~{cost:,.4f} at judges.budget.prices"
    lines.append(f"{judge_calls:,} judge calls, {spend}")
    if budget:
        lines.extend(budget.splitlines())
    return "\n".join(lines)


@dataclass(frozen=True)
class BackfillOrder:
    """What a backfill worker is told to do: the job (new or to resume), the specs as the sidecar's registry
    holds them, and the sidecar's judges and code-scorer settings."""

    job: BackfillJob
    specs: list[ScorerSpec]
    data_dir: str
    archive: ArchiveConfig  # its directory set: the sidecar's archive, a path or s3://
    judges: dict[str, JudgeEndpointConfig]
    max_concurrency: int
    code_workers: int
    code_timeout_s: float
    sys_path: list[str]
    estimate_only: bool = False
    budget: JudgeBudgetConfig | None = None  # judges.budget, shared with live scoring through the data directory


class BackfillJobs:
    """The sidecar's backfill jobs: `submit`, `get`, `jobs`, `cancel`; `start` resumes what a stop left
    unfinished, `shutdown` stops the running job where it is. `on_forward` takes the workers' encoded
    verdicts (the sidecar's write-ahead log); None: not emitted (no verdicts endpoint)."""

    def __init__(
        self,
        data_dir: Path,
        archive: ArchiveConfig,
        archive_dir: str | Path,
        registry: ScorerRegistry,
        settings: BackfillConfig,
        judges: Mapping[str, JudgeEndpointConfig],
        code_workers: int,
        code_timeout_s: float,
        on_forward: Callable[[Signal, bytes, int], None] | None,
        budget: JudgeBudgetConfig | None = None,
    ) -> None:
        self._data_dir = data_dir
        self._budget = budget
        self._archive = archive.model_copy(update={"directory": archive_dir})
        self._archive_dir = archive_dir
        self._registry = registry
        self._settings = settings
        self._judges = dict(judges)
        self._code = (code_workers, code_timeout_s)
        self._on_forward = on_forward
        self.directory = data_dir / "backfill"
        self._lock = threading.Condition()
        self._jobs: dict[str, BackfillJob] = {}
        self._specs: dict[str, list[ScorerSpec]] = {}
        self._queue: deque[str] = deque()
        self._running: _Worker | None = None
        self._stopping = False
        self._thread = threading.Thread(target=self._run_jobs, name="backfill-jobs", daemon=True)

    # --- lifecycle ---------------------------------------------------------------------------------------

    def start(self) -> None:
        """Queue again the sidecar's jobs a stop or a kill left unfinished, oldest first."""
        for job in BackfillJob.list(self.directory):
            if job.runner == "sidecar" and not job.finished:
                self._jobs[job.job_id] = job
                self._queue.append(job.job_id)
                log.info("backfill %s: resumed (%s, %d of %d traces read)", job.job_id, job.status, job.traces,
                         job.total_traces)  # fmt: skip
        self._thread.start()

    def shutdown(self, timeout_s: float = 10.0) -> None:
        with self._lock:
            self._stopping = True
            worker = self._running
            self._lock.notify_all()
        if worker is not None:
            worker.stop(PAUSE, timeout_s)
        self._thread.join(timeout_s)

    # --- BackfillService's store -------------------------------------------------------------------------

    def submit(self, scorers: Sequence[Wanted], start_time: str | None, end_time: str | None,
               rescore: bool = False, skipped_only: bool = False, dry_run: bool = False) -> BackfillJob:  # fmt: skip
        """Queue a job (or, `dry_run`, only estimate it); BackfillError when it cannot run as asked."""
        start, end = window(start_time, end_time)
        specs, rates = resolve_scorers(scorers, {spec.name: spec for spec in self._registry.all()})
        if isinstance(self._archive_dir, Path) and not (self._archive_dir / "spans").is_dir():
            raise BackfillError(f"{self._archive_dir}: nothing archived yet (the archive has no spans)")
        # (an archive on object storage is looked at by the job's worker: this process holds no pyarrow)
        job = BackfillJob.new(rates, start, end, rescore, skipped_only, runner="sidecar")
        if dry_run:  # a worker's start-up alone takes seconds: the estimate comes as the job's next state
            job = replace(job, status="estimating")
            with self._lock:
                self._jobs[job.job_id] = job
            threading.Thread(target=self._estimate, args=(job, specs), name="backfill-estimate", daemon=True).start()
            return job
        with self._lock:
            if self._stopping:
                raise BackfillError("the sidecar is stopping")
            job.save(self.directory)
            self._jobs[job.job_id] = job
            self._specs[job.job_id] = specs
            self._queue.append(job.job_id)
            self._lock.notify_all()
        log.info("backfill %s: queued, %s over %s .. %s", job.job_id, rates, job.start_time, job.end_time)
        return job

    def get(self, job_id: str) -> BackfillJob:
        with self._lock:
            job = self._jobs.get(job_id)
        return job if job is not None else BackfillJob.load(self.directory, job_id)

    def jobs(self) -> list[BackfillJob]:
        with self._lock:
            live = dict(self._jobs)
        return [live.get(job.job_id, job) for job in BackfillJob.list(self.directory)]

    def cancel(self, job_id: str) -> BackfillJob:
        with self._lock:
            job = self.get(job_id)
            if job.finished:
                return job
            if job_id in self._queue:
                self._queue.remove(job_id)
                job = self._finish(job, "cancelled")
                return job
            worker = self._running if self._running and self._running.job_id == job_id else None
        if worker is not None:
            worker.send((CANCEL,))
        return self.get(job_id)

    # --- running ---------------------------------------------------------------------------------------

    def _run_jobs(self) -> None:
        while True:
            with self._lock:
                while not self._queue and not self._stopping:
                    self._lock.wait()
                if self._stopping:
                    return
                job_id = self._queue.popleft()
                job = self._jobs[job_id]
            try:
                self._run(job)
            except Exception as exc:  # the runner must outlive any job
                log.exception("backfill %s: the runner failed", job_id)
                self._finish(self._jobs[job_id], "failed", f"{type(exc).__name__}: {exc}")

    def _run(self, job: BackfillJob) -> None:
        specs = self._specs.get(job.job_id) or self._current_specs(job)
        for attempt in range(1, MAX_ATTEMPTS + 1):
            worker = _Worker(self._order(job, specs), self._data_dir, self._settings.nice, self._on_job,
                             self._on_forward)  # fmt: skip
            with self._lock:
                if self._stopping:
                    return
                self._running = worker
            code = worker.run()
            with self._lock:
                self._running = None
                job = self._jobs[job.job_id]
                if self._stopping or job.finished:
                    return
            log.error("backfill %s: its worker exited with code %s (attempt %d of %d)", job.job_id, code, attempt,
                      MAX_ATTEMPTS)  # fmt: skip
        self._finish(job, "failed", f"its worker died {MAX_ATTEMPTS} times; resume it with the CLI's --resume")

    def _estimate(self, job: BackfillJob, specs: list[ScorerSpec]) -> None:
        """A dry run's job goes from `estimating` to `estimate` (its estimate set) or `failed`; kept in memory."""
        reported: list[BackfillJob] = []
        worker = _Worker(replace(self._order(job, specs), estimate_only=True), self._data_dir, self._settings.nice,
                         lambda record: reported.append(BackfillJob(**record)), None)  # fmt: skip
        code = worker.run(ESTIMATE_TIMEOUT_S)
        if reported and reported[-1].estimate is not None:
            done = replace(reported[-1], status="estimate", finished_at=time.time())
        else:
            error = reported[-1].error if reported and reported[-1].error else f"worker exit code {code}"
            done = replace(job, status="failed", error=f"the estimate failed: {error}", finished_at=time.time())
        with self._lock:
            self._jobs[job.job_id] = done

    def _order(self, job: BackfillJob, specs: list[ScorerSpec]) -> BackfillOrder:
        return BackfillOrder(job, specs, str(self._data_dir), self._archive, self._judges,
                             self._settings.max_concurrency, *self._code, list(sys.path),
                             budget=self._budget)  # fmt: skip

    def _current_specs(self, job: BackfillJob) -> list[ScorerSpec]:
        """A resumed job's scorers as registered now (a spec whose version changed is judged at its new one)."""
        registered = {spec.name: spec for spec in self._registry.all()}
        return resolve_scorers([BackfillScorerConfig(n, r) for n, r in job.scorers.items()], registered)[0]

    def _on_job(self, record: dict[str, Any]) -> None:
        job = BackfillJob(**record)
        with self._lock:
            if job.job_id in self._jobs:
                self._jobs[job.job_id] = job

    def _finish(self, job: BackfillJob, status: str, error: str | None = None) -> BackfillJob:
        done = replace(job, status=status, error=error, finished_at=time.time())
        done.save(self.directory)
        with self._lock:
            self._jobs[job.job_id] = done
        return done


class _Worker:
    """One backfill worker process and the thread reading its frames."""

    def __init__(self, order: BackfillOrder, directory: Path, nice: int, on_job: Callable[[dict[str, Any]], None],
                 on_forward: Callable[[Signal, bytes, int], None] | None) -> None:  # fmt: skip
        self.job_id = order.job.job_id
        self._order = order
        self._directory = directory
        self._nice = nice
        self._on_job = on_job
        self._on_forward = on_forward
        self._conn: Connection | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._send_lock = threading.Lock()

    def run(self, timeout_s: float | None = None) -> int | None:
        """Start the worker, relay its frames until it exits; its exit code (None: killed at `timeout_s`)."""
        self._process, self._conn = start_connected_worker("tracejudge.backfill_worker", ["--nice", str(self._nice)],
                                                           self._directory / "backfill")  # fmt: skip
        self.send((ORDER, self._order))
        reader = threading.Thread(target=self._read, name=f"backfill-{self.job_id}", daemon=True)
        reader.start()
        try:
            return self._process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            log.error("backfill %s: its worker did not finish within %.0fs; killing it", self.job_id, timeout_s)
            self._process.kill()
            self._process.wait()
            return None
        finally:
            reader.join(5.0)
            self._conn.close()

    def send(self, message: tuple[Any, ...]) -> None:
        with self._send_lock:
            if self._conn is not None:
                try:
                    self._conn.send_bytes(encode(message))
                except OSError as exc:
                    log.warning("backfill %s: its worker went away (%s)", self.job_id, exc)

    def stop(self, how: str, timeout_s: float) -> None:
        """Ask it to end (`PAUSE`: resumable), and kill it if it has not within `timeout_s`."""
        self.send((how,))
        process = self._process
        if process is not None:
            try:
                process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                log.error("backfill %s: its worker did not stop within %.0fs; killing it", self.job_id, timeout_s)
                process.kill()

    def _read(self) -> None:
        conn = self._conn
        assert conn is not None
        while True:
            try:
                message = decode(conn.recv_bytes())
            except (EOFError, OSError):
                return
            if message[0] == JOB:
                self._on_job(message[1])
            elif message[0] == FORWARD and self._on_forward is not None:
                self._on_forward(*message[1:])

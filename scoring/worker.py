"""The scoring worker process: sampled traces in, assessments out.

Why a process of its own: scoring is Python holding the GIL — extraction, checks, code scorers and
the openai SDK's ~1 ms of CPU per judge call. Inside the sidecar's process it took the GIL from
ingest (five checks sampling every trace cut ingest to 0.4x); here, at a lower CPU priority
(`scoring.worker_nice`), the kernel serves ingest first and gives scoring the rest, and a code
scorer that spins cannot stall the receivers. Sampling and skip accounting stay in the sidecar
(scoring/engine.py). The process (tracejudge/scoring_worker.py) also emits the verdicts: the
OpenTelemetry SDK's span and log encoding costs as much CPU as a scorer, so it is done here too, and
only the encoded bytes and the assessments' rows travel back. The rows are flat dicts of plain values,
cheap to pickle; the sidecar counts its metrics from them and archives them.

Started by ScoringWorker (scoring/worker_process.py) as `python -m tracejudge.scoring_worker` in a
session of its own, so a Ctrl-C to the sidecar's process group leaves it to the sidecar to drain.
Messages are pickled tuples on one socket (multiprocessing.connection framing):

    sidecar -> worker   (INIT, WorkerSettings)   once, first
                        (SPECS, [ScorerSpec])     the active scorers, whenever they change
                        (SCORE, [(Trace, [name])]) sampled traces and the scorers that sampled them
                        (DRAIN, timeout_s)        finish or cancel running work, report, exit
    worker -> sidecar   (PROGRESS, Progress)      batched every few milliseconds, with assessment rows
                        (FORWARD, Signal, bytes, n) encoded OTLP verdicts for the forwarder's queue
                        (DRAINED, Progress)       the last report; traces it never finished were cancelled

The worker also ends on its own, with exit code RESTART_EXIT_CODE after a last PROGRESS, when code
scorers that never returned hold all its code-scorer threads (scoring/code.py CodeRunner): only a new
process gets them back. The sidecar then starts a new worker, as after a crash.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Protocol

from tracejudge.model import Assessment, Trace

from .code import CodeRunner
from .config import JudgeEndpointConfig
from .extract import extract
from .filters import TraceFilter, parse_filter
from .judge_client import JudgePool
from .scorers import Scorer, build_scorer
from .spec import ScorerSpec

log = logging.getLogger("tracejudge.scoring.worker")

INIT, SPECS, SCORE, DRAIN = "init", "specs", "score", "drain"
PROGRESS, DRAINED, FORWARD = "progress", "drained", "forward"
_EOF = "eof"  # the reader thread's own marker: the sidecar is gone
_RESTART = "restart"  # the loop's own marker: stuck code scorers hold every code-scorer thread
RESTART_EXIT_CODE = 75  # EX_TEMPFAIL: the worker asks to be replaced
RESTART_DRAIN_S = 5.0  # running traces get this long to finish before the worker restarts
REPORT_DELAY_S = 0.005  # results are batched this long: one message per burst, not per assessment


@dataclass(frozen=True)
class WorkerSettings:
    judges: dict[str, JudgeEndpointConfig]
    max_concurrency: int
    code_workers: int
    code_timeout_s: float
    sys_path: list[str]  # the sidecar's: code scorers import from where the sidecar could
    emit_otlp: bool  # verdicts have an OTLP destination
    emit_interval_s: float


@dataclass
class Progress:
    """What finished since the last report: `finished` are trace ids whose sampled scorers are all done
    (scored, filtered out, not applicable or failed). A trace never reported was not scored. `rows` are
    the assessments emitted meanwhile, as `assessments` archive rows (exporter/rows.py). `stuck`, in the
    last report of a worker that restarts itself, names the code scorers whose calls held its threads."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    finished: list[bytes] = field(default_factory=list)
    scored: Counter[str] = field(default_factory=Counter)
    skipped: Counter[tuple[str, str]] = field(default_factory=Counter)
    stuck: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.finished or self.rows or self.stuck)


@dataclass(frozen=True)
class LoadedScorer:
    spec: ScorerSpec
    scorer: Scorer
    filter: TraceFilter


class Channel(Protocol):
    def send(self, message: tuple[Any, ...]) -> bool: ...
    def recv(self) -> tuple[Any, ...]: ...


class Emitter(Protocol):
    def emit(self, assessments: Sequence[Assessment]) -> None: ...
    def shutdown(self) -> None: ...


class RowBuffer:
    """The emitter's row sink in the worker: rows wait here for the next progress report."""

    def __init__(self) -> None:
        self._rows: list[dict[str, Any]] = []

    def write_rows(self, table: str, rows: Sequence[Mapping[str, Any]]) -> None:
        self._rows.extend(dict(row) for row in rows)

    def take(self) -> list[dict[str, Any]]:
        rows, self._rows = self._rows, []
        return rows


class ScoringLoop:
    """Runs sampled traces through their scorers on one event loop, `max_concurrency` traces at once;
    emits each trace's assessments as they come and reports progress to the sidecar, with the rows
    the emitter wrote to `rows` meanwhile."""

    def __init__(self, settings: WorkerSettings, channel: Channel, emitter: Emitter, rows: RowBuffer) -> None:
        self._channel = channel
        self._emitter = emitter
        self._rows = rows
        self._judges = JudgePool(settings.judges)
        self._code = CodeRunner(settings.code_workers, settings.code_timeout_s, on_exhausted=self._restart)
        self._build = partial(build_scorer, judge_for=self._judges.get, code=self._code)
        self._max_concurrency = settings.max_concurrency
        self._scorers: dict[str, LoadedScorer] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._report = Progress()
        self._report_scheduled = False

    async def run(self) -> bool:
        """Serve until DRAIN or the sidecar's end (False), or until the worker must restart (True)."""
        self._semaphore = asyncio.Semaphore(self._max_concurrency)
        self._inbox: asyncio.Queue[tuple[Any, ...]] = asyncio.Queue()
        loop = asyncio.get_running_loop()
        threading.Thread(target=self._read, args=(loop,), name="scoring-reader", daemon=True).start()
        while True:
            kind, *body = await self._inbox.get()
            if kind == SPECS:
                self._load(body[0])
            elif kind == SCORE:
                self._spawn(body[0])
            elif kind == DRAIN:
                await self._drain(body[0], last=DRAINED)
                return False
            elif kind == _EOF:
                await self._drain(0.0, last=None)
                return False
            elif kind == _RESTART:
                await self._drain(RESTART_DRAIN_S, last=PROGRESS, stuck=body[0])
                return True

    def _read(self, loop: asyncio.AbstractEventLoop) -> None:
        while True:
            try:
                message = self._channel.recv()
            except (EOFError, OSError):
                loop.call_soon_threadsafe(self._inbox.put_nowait, (_EOF,))
                return
            loop.call_soon_threadsafe(self._inbox.put_nowait, message)

    def _load(self, specs: list[ScorerSpec]) -> None:
        """Rebuild only the scorers whose spec changed (a judge client keeps its connections)."""
        loaded = {}
        for spec in specs:
            current = self._scorers.get(spec.name)
            if current is None or current.spec != spec:
                try:
                    current = LoadedScorer(spec, self._build(spec), parse_filter(spec.filter_string))
                except Exception as exc:  # the sidecar validated it; an import can still fail here
                    log.error("scorer %s cannot run in the scoring worker: %s", spec.name, exc)
                    continue
            loaded[spec.name] = current
        self._scorers = loaded

    def _spawn(self, batch: list[tuple[Trace, list[str]]]) -> None:
        for trace, names in batch:
            task = asyncio.create_task(self._score_trace(trace, names))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _score_trace(self, trace: Trace, names: list[str]) -> None:
        """At most `max_concurrency` traces at a time, oldest first: with every queued trace started at
        once, extraction of the whole queue would delay the first verdict until all were extracted."""
        try:
            async with self._semaphore:
                assessments, scored, skipped = await self._score(trace, names)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("scoring trace %s failed", trace.trace_id.hex())
            assessments, scored, skipped = [], [], Counter()
        self._add_report(trace.trace_id, assessments, scored, skipped)

    async def _score(
        self, trace: Trace, names: list[str]
    ) -> tuple[list[Assessment], list[str], Counter[tuple[str, str]]]:
        skipped: Counter[tuple[str, str]] = Counter((name, "scorer_unavailable") for name in names
                                                    if name not in self._scorers)  # fmt: skip
        chosen = [self._scorers[name] for name in names if name in self._scorers]
        view = extract(trace)
        if not view.has_genai:
            skipped.update((s.spec.name, "no_genai_data") for s in chosen)
            return [], [], skipped
        selected = [s for s in chosen if s.filter.matches(view)]
        skipped.update((s.spec.name, "filtered") for s in chosen if s not in selected)
        results = await asyncio.gather(*(s.scorer.score(view) for s in selected))
        return [a for result in results for a in result], [s.spec.name for s in selected], skipped

    def _add_report(
        self, trace_id: bytes, assessments: list[Assessment], scored: list[str], skipped: Counter[tuple[str, str]]
    ) -> None:
        if assessments:
            self._emitter.emit(assessments)
        report = self._report
        report.finished.append(trace_id)
        report.scored.update(scored)
        report.skipped.update(skipped)
        if not self._report_scheduled:
            self._report_scheduled = True
            asyncio.get_running_loop().call_later(REPORT_DELAY_S, self._send_report)

    def _send_report(self) -> None:
        self._report_scheduled = False
        report = self._take_report()
        if report:
            self._send(PROGRESS, report)

    def _take_report(self) -> Progress:
        """What finished since the last report, with the rows the emitter wrote meanwhile."""
        report, self._report = self._report, Progress()
        report.rows = self._rows.take()
        return report

    def _send(self, kind: str, report: Progress) -> None:
        if not self._channel.send((kind, report)):
            log.error("the sidecar is gone; %d finished traces not reported", len(report.finished))

    def _restart(self, stuck: list[str]) -> None:
        log.error("code scorer(s) %s did not return within %gs and hold all %d code-scorer threads; Python cannot "
                  "stop a thread, so the scoring worker restarts to free them", ", ".join(stuck),
                  self._code.timeout_s, self._code.workers)  # fmt: skip
        self._inbox.put_nowait((_RESTART, stuck))

    async def _drain(self, timeout_s: float, last: str | None, stuck: list[str] | None = None) -> None:
        """Finish running traces within `timeout_s`, cancel the rest, export; then send the last report
        as `last` (none when the sidecar is gone), naming the `stuck` code scorers if the worker restarts."""
        pending = set(self._tasks)
        if pending:
            _, pending = await asyncio.wait(pending, timeout=timeout_s)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        self._emitter.shutdown()  # exports what is queued: the sidecar's forwarder gets it before DRAINED
        report = self._take_report()
        report.stuck = stuck or []
        if last is not None:
            self._send(last, report)
        self._code.shutdown()
        await self._judges.aclose()

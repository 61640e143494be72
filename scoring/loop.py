"""ScoringLoop: sampled traces in, assessments out, on one event loop.

It extracts each trace's view (scoring/extract.py), applies each sampled scorer's filter, runs the
evaluators `max_concurrency` traces at a time, hands every trace's assessments to the emitter as they
come, and reports what finished, batched every few milliseconds. It speaks scoring/worker_protocol.py
over a channel and knows nothing of where it runs or where verdicts go: in the sidecar it runs in the
scoring worker process (tracejudge/scoring_worker.py), in an app's own process on a thread
(scoring/thread.py), and the emitter it is given decides what an assessment becomes.

Why the sidecar runs it in a process of its own: scoring is Python holding the GIL — extraction,
checks, code scorers and the openai SDK's ~1 ms of CPU per judge call. Inside the sidecar's process it
took the GIL from ingest (five checks sampling every trace cut ingest to 0.4x); in a worker at a
lower CPU priority (`scoring.worker_nice`) the kernel serves ingest first and gives scoring the rest,
and a code scorer that spins cannot stall the receivers. Sampling and skip accounting stay with the
engine (scoring/engine.py).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import Counter, OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any, Protocol, TypeVar

from tracejudge.model import Assessment, Trace

from .budget import JudgeBudget
from .code import CodeRunner
from .conventions.record import SpanRecord
from .evaluators import Evaluator, build_evaluator
from .extract import extract_with_spans
from .filters import TraceFilter, parse_filter
from .judge_client import JudgePool
from .sampling import session_randomness, threshold
from .sessions import DueSession, SessionStore
from .span_targets import span_target_views
from .spec import ScorerSpec
from .view import Judged, SessionView, TraceView, Turn
from .worker_protocol import (
    DRAIN,
    DRAINED,
    END_SESSION,
    EXPECT,
    FLUSH,
    FLUSHED,
    PROGRESS,
    SCORE,
    SESSION_ENDED,
    SPECS,
    VALIDATE,
    VALIDATED,
    Message,
    Progress,
    SkippedRow,
    WorkerSettings,
)

log = logging.getLogger("tracejudge.scoring.worker")

_EOF = "eof"  # the reader thread's own marker: the engine's side is gone
_RESTART = "restart"  # the loop's own marker: stuck code scorers hold every code-scorer thread
RESTART_DRAIN_S = 5.0  # running traces get this long to finish before the worker restarts
REPORT_DELAY_S = 0.005  # results are batched this long: one message per burst, not per assessment
SESSION_END_KEY = "tracejudge.session.end"  # a root span attribute: this trace ends its conversation
AnyJudged = TypeVar("AnyJudged", TraceView, SessionView, Judged)
MAX_EXPECTED = 100_000  # traces with logged expectations waiting to be scored (the oldest are forgotten)


@dataclass(frozen=True)
class LoadedScorer:
    spec: ScorerSpec
    evaluator: Evaluator
    filter: TraceFilter


class Channel(Protocol):
    """The loop's end of its channel: `recv` blocks (it is called on a thread of its own) and gives
    None once the other side is gone; `send` may be called from any thread."""

    def send(self, message: Message) -> bool: ...
    def recv(self) -> Message | None: ...


class Emitter(Protocol):
    """What assessments become (exporter/emitter.py): `emit` enqueues and never blocks; `force_flush` and
    `shutdown` export what is queued."""

    def emit(self, assessments: Sequence[Assessment]) -> None: ...
    def force_flush(self, timeout_s: float = 30.0) -> bool: ...
    def shutdown(self, timeout_s: float = 30.0) -> None: ...


class ScoringLoop:
    def __init__(self, settings: WorkerSettings, channel: Channel, emitter: Emitter) -> None:
        self._channel = channel
        self._emitter = emitter
        self._budget = (JudgeBudget(settings.budget, Path(settings.budget_ledger), "live")
                        if settings.budget is not None and settings.budget_ledger else None)  # fmt: skip
        self._judges = JudgePool(settings.judges, on_usage=self._budget.spend if self._budget else None)
        self._code = CodeRunner(settings.code_workers, settings.code_timeout_s, on_exhausted=self._restart)
        self._build = partial(build_evaluator, judge_for=self._judges.get, code=self._code)
        self._max_concurrency = settings.max_concurrency
        self._scorers: dict[str, LoadedScorer] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._report = Progress()
        self._report_scheduled = False
        self._expected: OrderedDict[str, dict[str, Any]] = OrderedDict()  # trace id -> logged expectations
        journal = Path(settings.sessions_journal) if settings.sessions_journal else None
        self._sessions = SessionStore(settings.sessions, journal)
        # Due sessions are looked for this often: a verdict comes at most this much after `sessions.idle`. A
        # look costs ~0.1 ms per due session plus 1 ms per 10,000 open ones once a second (bench/sessions.py).
        self._session_tick_s = min(0.1, settings.sessions.idle / 4)

    async def run(self) -> bool:
        """Serve until DRAIN or the other side's end (False), or until the worker must restart (True)."""
        self._semaphore = asyncio.Semaphore(self._max_concurrency)
        self._inbox: asyncio.Queue[Message] = asyncio.Queue()
        loop = asyncio.get_running_loop()
        threading.Thread(target=self._read, args=(loop,), name="scoring-reader", daemon=True).start()
        ticker = asyncio.create_task(self._tick_sessions())
        try:
            return await self._serve()
        finally:
            ticker.cancel()
            self._sessions.close()

    async def _serve(self) -> bool:
        while True:
            kind, *body = await self._inbox.get()
            if kind == SPECS:
                self._load(body[0])
            elif kind == SCORE:
                self._spawn(body[0])
            elif kind == EXPECT:
                self._expect(body[0])
            elif kind == END_SESSION:
                request_id, session_id = body
                self._channel.send((SESSION_ENDED, request_id, self._sessions.end(session_id)))
            elif kind == VALIDATE:
                self._validate(*body)
            elif kind == FLUSH:
                self._flush(*body)
            elif kind == DRAIN:
                await self._drain(body[0], last=DRAINED)
                return False
            elif kind == _EOF:
                await self._drain(0.0, last=None)
                return False
            elif kind == _RESTART:
                await self._drain(RESTART_DRAIN_S, last=PROGRESS, stuck=body[0], final=False)
                return True

    def _read(self, loop: asyncio.AbstractEventLoop) -> None:
        try:
            while (message := self._channel.recv()) is not None:
                loop.call_soon_threadsafe(self._inbox.put_nowait, message)
            loop.call_soon_threadsafe(self._inbox.put_nowait, (_EOF,))
        except RuntimeError:  # the loop has ended (DRAIN) and closed: nobody is left to read
            return

    def _load(self, specs: list[ScorerSpec]) -> None:
        """Rebuild only the scorers whose spec changed (a judge client keeps its connections)."""
        loaded = {}
        for spec in specs:
            current = self._scorers.get(spec.name)
            if current is None or current.spec != spec:
                try:
                    current = LoadedScorer(spec, self._build(spec), parse_filter(spec.filter_string))
                except Exception as exc:  # validated when registered; an import can still fail here
                    log.error("scorer %s cannot run in the scoring worker: %s", spec.name, exc)
                    continue
            loaded[spec.name] = current
        self._scorers = loaded

    def _expect(self, expected: dict[str, dict[str, Any]]) -> None:
        for trace_id, values in expected.items():
            self._expected[trace_id] = {**self._expected.pop(trace_id, {}), **values}
        while len(self._expected) > MAX_EXPECTED:
            self._expected.popitem(last=False)

    def _validate(self, request_id: int, spec: ScorerSpec) -> None:
        """Can `spec` run here? Answered by building it as it would run: a code scorer is imported here,
        where it runs, never in the process that received the registration."""
        try:
            self._build(spec)
            error = None
        except Exception as exc:
            error = str(exc) or type(exc).__name__
        self._channel.send((VALIDATED, request_id, error))

    def _flush(self, request_id: int, timeout_s: float) -> None:
        """Export what the emitter holds, off the loop (the SDK's flush waits for its export threads)."""

        def answer(done: asyncio.Future[bool]) -> None:
            flushed = not done.cancelled() and done.exception() is None and done.result()
            self._channel.send((FLUSHED, request_id, flushed))

        flushing = asyncio.ensure_future(asyncio.to_thread(self._emitter.force_flush, timeout_s))
        flushing.add_done_callback(answer)

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
        view, records = extract_with_spans(trace)
        logged = self._expected.pop(view.trace_id, None)
        if logged:  # a human's ground truth, logged before the trace was scored, wins over the trace's own
            view = replace(view, expectations={**view.expectations, **logged})
        if not view.has_genai:
            skipped.update((s.spec.name, "no_genai_data") for s in chosen)
            return [], [], skipped
        conversation = [s for s in chosen if s.spec.target_kind == "session"]
        if conversation:
            self._add_turn(view, conversation, skipped)
        chosen = [s for s in chosen if s.spec.target_kind != "session"]
        pairs, selected = judged_views(view, records, chosen, skipped, self._report.skipped_rows)
        pairs, over_budget = await within_budget(pairs, self._budget)
        refused = skipped_for_budget(pairs, over_budget, skipped, self._report.skipped_rows)
        try:
            results = await asyncio.gather(*(scorer.evaluator.evaluate(judged) for scorer, judged in pairs))
        finally:
            released(pairs, self._budget)
        scored = [s.spec.name for s in selected if s.spec.name not in refused]
        return [a for result in results for a in result], scored, skipped

    # --- conversations ------------------------------------------------------------------------------

    def _add_turn(self, view: TraceView, scorers: list[LoadedScorer], skipped: Counter[tuple[str, str]]) -> None:
        """Buffer the trace as a turn of its conversation for the session scorers sampling that conversation
        (by its session id: consistent across its traces); the verdicts come once it is over (_tick_sessions)."""
        if not view.session_id:
            skipped.update((s.spec.name, "no_session") for s in scorers)
            return
        chance = session_randomness(view.session_id)
        sampling = [s for s in scorers if chance >= threshold(s.spec.sample_rate)]
        if not sampling:
            return
        passed = frozenset(s.spec.name for s in sampling if s.filter.matches(view))
        ends = str(view.tags.get(SESSION_END_KEY, "")).lower() == "true"
        self._sessions.add(view.session_id, turn_of(view), (s.spec.name for s in sampling), passed, ends)

    async def _tick_sessions(self) -> None:
        while True:
            await asyncio.sleep(self._session_tick_s)
            if self._budget is not None:
                self._budget.sync()  # the last pairs' spend reaches the ledger (and the sidecar's gauges) too
            try:
                self._spawn_due_sessions()
            except Exception:
                log.exception("looking for conversations to judge failed; trying again")

    def _spawn_due_sessions(self) -> None:
        for due in self._sessions.due():
            task = asyncio.create_task(self._judge_session(due))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _judge_session(self, due: DueSession) -> None:
        """One verdict per session scorer on the whole conversation, attached to its first trace; a verdict on a
        session judged before supersedes the last one (`overrides`)."""
        chosen = [self._scorers[name] for name in sorted(due.scorers) if name in self._scorers]
        skipped: Counter[tuple[str, str]] = Counter((name, "scorer_unavailable") for name in due.scorers
                                                    if name not in self._scorers)  # fmt: skip
        selected = [s for s in chosen if s.spec.name in due.passed]
        skipped.update((s.spec.name, "filtered") for s in chosen if s not in selected)
        pairs, over_budget = await within_budget([(s, due.view) for s in selected], self._budget)
        refused = skipped_for_budget(pairs, over_budget, skipped, None)
        selected = [s for s in selected if s.spec.name not in refused]
        try:
            async with self._semaphore:
                results = await asyncio.gather(*(s.evaluator.evaluate(due.view) for s in selected))
        except asyncio.CancelledError:
            self._sessions.released(due)  # kept in the journal, if there is one: judged at the next start
            if not self._sessions.durable:  # else lost with this process: never a silent gap
                self._report_session_skips(due, Counter((name, "shutdown") for name in due.scorers))
            raise
        except Exception:  # evaluators return errors as assessments; this is a bug, and must not wedge the session
            log.exception("judging conversation %s failed; recorded as skipped (error)", due.view.session_id)
            self._sessions.judged(due, {})
            self._report_session_skips(due, Counter((s.spec.name, "error") for s in selected))
            self._schedule_report()
            return
        finally:
            released(pairs, self._budget)
        metadata = {"session_turns": str(len(due.view.turns)), "completed_by": due.reason}
        assessments = [replace(a, overrides=due.superseded.get(a.name), metadata={**a.metadata, **metadata})
                       for result in results for a in result]  # fmt: skip
        self._sessions.judged(due, {a.name: a.assessment_id for a in assessments})
        if assessments:
            self._emitter.emit(assessments)
        self._report_session_skips(due, skipped)
        self._report.scored.update(s.spec.name for s in selected)
        self._schedule_report()

    def _report_session_skips(self, due: DueSession, skipped: Counter[tuple[str, str]]) -> None:
        """Counted, and a `skipped` row per reason on the conversation's first trace, with its session id."""
        self._report.skipped.update(skipped)
        by_reason: dict[str, list[str]] = {}
        for (name, reason), _ in skipped.items():
            by_reason.setdefault(reason, []).append(name)
        first = bytes.fromhex(due.view.trace_id), bytes.fromhex(due.view.root_span_id)
        self._report.skipped_rows.extend((*first, names, reason, due.view.session_id)
                                         for reason, names in by_reason.items())  # fmt: skip

    def _add_report(
        self, trace_id: bytes, assessments: list[Assessment], scored: list[str], skipped: Counter[tuple[str, str]]
    ) -> None:
        if assessments:
            self._emitter.emit(assessments)
        report = self._report
        report.finished.append(trace_id)
        report.scored.update(scored)
        report.skipped.update(skipped)
        self._schedule_report()

    def _schedule_report(self) -> None:
        if not self._report_scheduled:
            self._report_scheduled = True
            asyncio.get_running_loop().call_later(REPORT_DELAY_S, self._send_report)

    def _send_report(self) -> None:
        self._report_scheduled = False
        report, self._report = self._report, Progress()
        if report:
            self._send(PROGRESS, report)

    def _send(self, kind: str, report: Progress) -> None:
        if not self._channel.send((kind, report)):
            log.error("the sidecar is gone; %d finished traces not reported", len(report.finished))

    def _restart(self, stuck: list[str]) -> None:
        log.error("code scorer(s) %s did not return within %gs and hold all %d code-scorer threads; Python cannot "
                  "stop a thread, so the scoring worker restarts to free them", ", ".join(stuck),
                  self._code.timeout_s, self._code.workers)  # fmt: skip
        self._inbox.put_nowait((_RESTART, stuck))

    async def _drain(
        self, timeout_s: float, last: str | None, stuck: list[str] | None = None, final: bool = True
    ) -> None:
        """Finish running traces within `timeout_s`, cancel the rest, export; then send the last report
        as `last` (none when the other side is gone), naming the `stuck` code scorers if the worker restarts.
        The emitter is shut down unless a new loop will use it (`final` False: a worker thread restarting)."""
        if final and not self._sessions.durable and self._sessions.end_all("shutdown"):
            self._spawn_due_sessions()  # nothing would keep them: judged now, within the drain time
        pending = set(self._tasks)
        if pending:
            _, pending = await asyncio.wait(pending, timeout=timeout_s)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        # Exports what is queued, so that it reaches its destination before the last report.
        if final:
            self._emitter.shutdown()
        else:
            self._emitter.force_flush()
        report, self._report = self._report, Progress()
        report.stuck = stuck or []
        if last is not None:
            self._send(last, report)
        self._code.shutdown()
        await self._judges.aclose()
        if self._budget is not None:
            self._budget.close()


def judged_views(
    view: TraceView,
    records: dict[str, SpanRecord],
    scorers: list[LoadedScorer],
    skipped: Counter[tuple[str, str]],
    skipped_rows: list[SkippedRow],
    rate: Callable[[ScorerSpec], float] | None = None,
) -> tuple[list[tuple[LoadedScorer, TraceView]], list[LoadedScorer]]:
    """What a trace's trace- and span-target scorers judge of it, live or over past traces: (scorer, view) pairs,
    and the scorers whose filter passed. A span target expands to its sampled matching spans (`rate`: the rate
    span sampling uses, the spec's own by default); what its cap cuts is counted and gets a skipped row."""
    selected = [s for s in scorers if s.filter.matches(view)]
    skipped.update((s.spec.name, "filtered") for s in scorers if s not in selected)
    pairs: list[tuple[LoadedScorer, TraceView]] = []
    for scorer in selected:
        target = scorer.spec.span_target
        if target is None:
            pairs.append((scorer, view))
            continue
        spans, cut = span_target_views(view, records, target, (rate or _own_rate)(scorer.spec))
        pairs.extend((scorer, span) for span in spans)
        if cut:
            skipped[(scorer.spec.name, "max_spans")] += len(cut)
            skipped_rows.extend((bytes.fromhex(view.trace_id), bytes.fromhex(span_id), [scorer.spec.name],
                                 "max_spans", view.session_id) for span_id in cut)  # fmt: skip
    return pairs, selected


async def within_budget(
    pairs: list[tuple[LoadedScorer, AnyJudged]], budget: JudgeBudget | None
) -> tuple[list[tuple[LoadedScorer, AnyJudged]], list[tuple[LoadedScorer, AnyJudged]]]:
    """The pairs the judge budget lets run (every pair of a scorer that asks no judge), and those it refused.
    It may wait (JudgeBudget.admit), so record the refused after it returns: a report sent meanwhile is gone."""
    if budget is None:
        return pairs, []
    kept: list[tuple[LoadedScorer, AnyJudged]] = []
    refused: list[tuple[LoadedScorer, AnyJudged]] = []
    admitted = 0  # judge pairs this call admitted: they run once it returns, so later ones must not wait on them
    for pair in pairs:
        if not pair[0].spec.uses_judge:
            kept.append(pair)
        elif await budget.admit(wait=admitted == 0):
            kept.append(pair)
            admitted += 1
        else:
            refused.append(pair)
    return kept, refused


def skipped_for_budget(
    kept: Sequence[tuple[LoadedScorer, Judged]],
    refused: Sequence[tuple[LoadedScorer, Judged]],
    skipped: Counter[tuple[str, str]],
    skipped_rows: list[SkippedRow] | None,
) -> set[str]:
    """Count the refused pairs (`budget`) and give each a `skipped` row, for a `--skipped` backfill (not when
    `skipped_rows` is None: a conversation's skips get theirs from its caller); the scorers none of whose pairs
    ran."""
    for scorer, view in refused:
        skipped[(scorer.spec.name, "budget")] += 1
        if skipped_rows is not None:
            skipped_rows.append((bytes.fromhex(view.trace_id), bytes.fromhex(view.root_span_id), [scorer.spec.name],
                                 "budget", view.session_id))  # fmt: skip
    return {scorer.spec.name for scorer, _ in refused} - {scorer.spec.name for scorer, _ in kept}


def released(pairs: Sequence[tuple[LoadedScorer, Judged]], budget: JudgeBudget | None) -> None:
    """The judge pairs within_budget admitted are done (judged, failed or cancelled)."""
    if budget is not None:
        budget.release(sum(1 for scorer, _ in pairs if scorer.spec.uses_judge))


def _own_rate(spec: ScorerSpec) -> float:
    return spec.sample_rate


def turn_of(view: TraceView) -> Turn:
    """What a multi-turn judge reads of a trace: its request and answer, its tool calls, its system prompt."""
    first_call = view.llm_calls[0] if view.llm_calls else None
    system = next((m.content for m in first_call.input_messages if m.role == "system"), "") if first_call else ""
    return Turn(view.trace_id, view.root_span_id, view.timestamp_ms, view.request_text, view.response_text,
                view.tool_calls, system)  # fmt: skip

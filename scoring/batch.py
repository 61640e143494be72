"""BatchScoring: the live scorers over past traces, for backfill, evaluate and try.

    scoring = BatchScoring(specs, judges, sample=True, exclude=already_scored)
    counts = asyncio.run(scoring.run(source.batches(), emit=lambda verdicts, judged: ...))

The same evaluators, filters, span targets and consistent sampler as the scoring loop (scoring/loop.py), so a
trace scored here gets the verdict live scoring would have given it; what differs is that input has an end.
Traces are judged `max_concurrency` at a time while the source is read on a thread, so a judge's latency
overlaps reading and extraction, and at most 2 x max_concurrency traces are held at once (memory is flat in the
number of traces). Conversations: every trace with a session id adds a turn to its session (the session
scorers' sampling and the first trace's filter decide, as live); at the end of input every session is judged
once, its turns in start order, so a session split over several windows is judged on what the window holds.

Skipped accounting as live: `incomplete`, `no_genai_data`, `filtered`, `no_session`, `max_spans`, `budget`, and
what `exclude` says not to judge again, counted by its reason (backfill's idempotence: `already_scored`).
Expectations a human logged (exporter/feedback.py's journal) are merged into each trace's, as live.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any

from tracejudge.model import Assessment, Trace

from .budget import JudgeBudget
from .code import CodeRunner
from .config import JudgeEndpointConfig
from .evaluators import JudgeEvaluator, build_evaluator
from .extract import extract_with_spans
from .filters import parse_filter
from .judge_client import JudgePool
from .loop import LoadedScorer, judged_views, released, skipped_for_budget, turn_of, within_budget
from .sampling import randomness, session_randomness, threshold
from .spec import ScorerSpec
from .view import Judged, SessionView, TraceView, Turn
from .worker_protocol import SkippedRow

log = logging.getLogger(__name__)

Item = Trace | TraceView  # a Trace from a trace source; a TraceView built from a row of inputs and outputs
# (trace id hex, scorer name, scorer version) -> why not to judge it: None judges it; "" leaves it out uncounted
# (not part of this job); any other text is a skip reason it is counted under (`already_scored`)
Exclude = Callable[[str, str, int], str | None]
Emit = Callable[[list[Assessment], "Judged"], None]  # a verdict list and what it judged (a trace, span or session)


@dataclass
class BatchCounts:
    """What a run did: traces read, verdicts per scorer, skipped pairs by (scorer, reason)."""

    traces: int = 0
    sessions: int = 0
    assessments: Counter[str] = field(default_factory=Counter)
    skipped: Counter[tuple[str, str]] = field(default_factory=Counter)
    input_tokens: int = 0
    output_tokens: int = 0

    def add(self, assessments: Sequence[Assessment]) -> None:
        for a in assessments:
            self.assessments[a.name] += 1
            self.input_tokens += a.judge_input_tokens or 0
            self.output_tokens += a.judge_output_tokens or 0


@dataclass
class _Conversation:
    turns: list[Turn] = field(default_factory=list)
    scorers: set[str] = field(default_factory=set)
    passed: frozenset[str] = frozenset()
    first_ms: int | None = None


class BatchScoring:
    """`sample`: apply each spec's sample rate with the live consistent sampler (backfill); False judges every
    trace (evaluate, try). `rates`: a rate per scorer name that replaces the spec's (BackfillScorerConfig)."""

    def __init__(
        self,
        specs: Sequence[ScorerSpec],
        judges: Mapping[str, JudgeEndpointConfig],
        *,
        sample: bool = False,
        rates: Mapping[str, float] | None = None,
        exclude: Exclude | None = None,
        where: str | None = None,
        expectations: Mapping[str, Mapping[str, Any]] | None = None,
        max_concurrency: int = 16,
        code_workers: int = 4,
        code_timeout_s: float = 30.0,
        budget: JudgeBudget | None = None,
    ) -> None:
        self._specs = list(specs)
        self._budget = budget  # judges.budget (backfill): judge pairs past it are skipped (`budget`)
        self._judges_config = dict(judges)
        self._sample = sample
        self._rates = dict(rates or {})
        self._exclude = exclude
        self._where = parse_filter(where)
        self._expectations = expectations or {}  # trace id -> logged expectations (human feedback), merged in
        self._max_concurrency = max_concurrency
        self._code_workers = code_workers
        self._code_timeout_s = code_timeout_s

    def rate(self, spec: ScorerSpec) -> float:
        if not self._sample:
            return 1.0
        return self._rates.get(spec.name, spec.sample_rate)

    async def run(
        self, batches: Iterable[Sequence[Item]], emit: Emit,
        progress: Callable[[BatchCounts], None] | None = None, stop: threading.Event | None = None,
    ) -> BatchCounts:  # fmt: skip
        """Judge every item the batches hold; `emit` gets each trace's (each session's) verdicts as they come,
        `progress` the running counts after each. `stop` set: no more items are read, what runs is cancelled
        (its verdicts are not emitted) and the counts so far returned. Raises what building a scorer raises."""
        budget = self._budget
        judges = JudgePool(self._judges_config, on_usage=budget.spend if budget is not None else None)
        code = CodeRunner(self._code_workers, self._code_timeout_s)
        build = partial(build_evaluator, judge_for=judges.get, code=code)
        scorers = [LoadedScorer(spec, build(spec), parse_filter(spec.filter_string)) for spec in self._specs]
        counts = BatchCounts()
        conversations: dict[str, _Conversation] = {}
        semaphore = asyncio.Semaphore(self._max_concurrency)
        tasks: set[asyncio.Task[None]] = set()
        # At most 2 x max_concurrency traces held, counted by a semaphore released as each task ends: waiting
        # with asyncio.wait(tasks, FIRST_COMPLETED) instead cost O(tasks in flight) per trace, 20 % of a judge
        # backfill's CPU at 512 in flight (bench/backfill.py, phase b, py-spy).
        window = asyncio.Semaphore(2 * self._max_concurrency)

        def finished(task: asyncio.Task[None]) -> None:
            tasks.discard(task)
            window.release()

        async def start(pairs: list[tuple[LoadedScorer, Judged]]) -> None:
            await window.acquire()
            task = asyncio.create_task(judge(pairs))
            tasks.add(task)
            task.add_done_callback(finished)

        async def judge(pairs: list[tuple[LoadedScorer, Judged]]) -> None:
            async with semaphore:
                pairs, refused = await within_budget(pairs, budget)
                skipped_for_budget(pairs, refused, counts.skipped, None)  # a rerun judges them: no row
                try:
                    results = await asyncio.gather(*(scorer.evaluator.evaluate(view) for scorer, view in pairs))
                finally:
                    released(pairs, budget)
            for (_, view), assessments in zip(pairs, results, strict=True):
                counts.add(assessments)
                if assessments:
                    emit(assessments, view)
            if progress is not None:
                progress(counts)

        try:
            async for batch in _read_on_a_thread(batches):
                if stop is not None and stop.is_set():
                    return counts
                for item in batch:
                    counts.traces += 1
                    pairs = self._trace_pairs(item, scorers, counts.skipped, conversations)
                    if pairs:
                        await start(pairs)
                    elif progress is not None:
                        progress(counts)
            if stop is not None and stop.is_set():
                return counts
            by_name = {s.spec.name: s for s in scorers}
            for session_id, conversation in conversations.items():
                pairs = self._session_pairs(session_id, conversation, by_name, counts.skipped)
                counts.sessions += 1
                if pairs:
                    await start(pairs)
            if tasks:
                await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            code.shutdown()
            await judges.aclose()
            if budget is not None:
                budget.flush()
        return counts

    def _trace_pairs(
        self, item: Item, scorers: list[LoadedScorer], skipped: Counter[tuple[str, str]],
        conversations: dict[str, _Conversation],
    ) -> list[tuple[LoadedScorer, Judged]]:  # fmt: skip
        if isinstance(item, Trace):
            trace_id = item.trace_id.hex()
            chance = randomness(item.trace_id)
            chosen = [s for s in scorers if s.spec.target_kind != "trace" or chance >= threshold(self.rate(s.spec))]
            if not item.complete:
                skipped.update((s.spec.name, "incomplete") for s in chosen)
                return []
            view, records = extract_with_spans(item)
            logged = self._expectations.get(trace_id)
            if logged:
                view = replace(view, expectations={**view.expectations, **logged})
        else:
            view, records, trace_id = item, {}, item.trace_id
            chance = randomness(trace_id)
            chosen = [s for s in scorers if s.spec.target_kind != "trace" or chance >= threshold(self.rate(s.spec))]
        if not self._where.matches(view):
            return []  # not part of the data asked for
        if self._exclude is not None:
            chosen = [s for s in chosen if s.spec.target_kind == "session" or self._keep(trace_id, s.spec, skipped)]
        if not chosen:
            return []
        if not view.has_genai:
            skipped.update((s.spec.name, "no_genai_data") for s in chosen)
            return []
        session_scorers = [s for s in chosen if s.spec.target_kind == "session"]
        if session_scorers:
            self._add_turn(view, session_scorers, skipped, conversations)
        trace_scorers = [s for s in chosen if s.spec.target_kind != "session"]
        rows: list[SkippedRow] = []  # skips are counted, not archived: a run again judges what has no verdict
        pairs, _ = judged_views(view, records, trace_scorers, skipped, rows, self.rate)
        return list(pairs)

    def _keep(self, trace_id: str, spec: ScorerSpec, skipped: Counter[tuple[str, str]]) -> bool:
        assert self._exclude is not None
        reason = self._exclude(trace_id, spec.name, spec.version)
        if reason:
            skipped[(spec.name, reason)] += 1
        return reason is None

    def _add_turn(self, view: TraceView, scorers: list[LoadedScorer], skipped: Counter[tuple[str, str]],
                  conversations: dict[str, _Conversation]) -> None:  # fmt: skip
        if not view.session_id:
            skipped.update((s.spec.name, "no_session") for s in scorers)
            return
        chance = session_randomness(view.session_id)
        sampling = [s for s in scorers if chance >= threshold(self.rate(s.spec))]
        if not sampling:
            return
        conversation = conversations.setdefault(view.session_id, _Conversation())
        conversation.turns.append(turn_of(view))
        conversation.scorers.update(s.spec.name for s in sampling)
        if conversation.first_ms is None or view.timestamp_ms < conversation.first_ms:
            conversation.first_ms = view.timestamp_ms  # the filter reads the session's first trace (MLflow's rule)
            conversation.passed = frozenset(s.spec.name for s in sampling if s.filter.matches(view))

    def _session_pairs(
        self, session_id: str, conversation: _Conversation, scorers: Mapping[str, LoadedScorer],
        skipped: Counter[tuple[str, str]],
    ) -> list[tuple[LoadedScorer, Judged]]:  # fmt: skip
        view = SessionView(session_id, tuple(sorted(conversation.turns, key=lambda t: t.timestamp_ms)))
        chosen = [scorers[name] for name in sorted(conversation.scorers)]
        if self._exclude is not None:
            chosen = [s for s in chosen if self._keep(view.trace_id, s.spec, skipped)]
        selected = [s for s in chosen if s.spec.name in conversation.passed]
        skipped.update((s.spec.name, "filtered") for s in chosen if s not in selected)
        return [(s, view) for s in selected]


def mean_prompt_tokens(specs: Sequence[ScorerSpec], judges: Mapping[str, JudgeEndpointConfig],
                       traces: Iterable[Trace]) -> dict[str, float]:  # fmt: skip
    """Mean input tokens of a call of each judge in `specs` over `traces`, for an estimate where a judge has no
    past verdict to go by: its prompt rendered as its evaluator would (no call is made), counted as the judge
    client counts before a call (4 characters a token). A session judge's on each conversation the traces hold
    (its turns in start order); a span target's on the whole trace (an upper bound)."""
    pool = JudgePool(judges)  # its clients connect on their first call, which never comes
    code = CodeRunner(1, 1.0)
    try:
        evaluators = [e for spec in specs if spec.uses_judge
                      and isinstance(e := build_evaluator(spec, pool.get, code), JudgeEvaluator)]  # fmt: skip
        views: list[TraceView] = []
        for trace in traces:
            if trace.complete and (view := extract_with_spans(trace)[0]).has_genai:
                views.append(view)
        sessions: dict[str, list[Turn]] = {}
        for view in views:
            if view.session_id:
                sessions.setdefault(view.session_id, []).append(turn_of(view))
        conversations = [SessionView(sid, tuple(sorted(turns, key=lambda t: t.timestamp_ms)))
                         for sid, turns in sessions.items()]  # fmt: skip
        out: dict[str, float] = {}
        for evaluator in evaluators:
            judged: Sequence[Judged] = conversations if evaluator.spec.target_kind == "session" else views
            counted = [n for view in judged if (n := evaluator.prompt_tokens(view)) is not None]
            if counted:
                out[evaluator.spec.name] = sum(counted) / len(counted)
        return out
    finally:
        code.shutdown()


async def _read_on_a_thread(batches: Iterable[Sequence[Item]]) -> AsyncIterator[Sequence[Item]]:
    """The source's batches, read on a thread (Parquet reads and span rebuilding block), one batch ahead."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[Sequence[Item] | BaseException | None] = asyncio.Queue(maxsize=1)
    stop = threading.Event()

    def read() -> None:
        try:
            iterator: Iterator[Sequence[Item]] = iter(batches)
            for batch in iterator:
                if stop.is_set():
                    return
                asyncio.run_coroutine_threadsafe(queue.put(batch), loop).result()
            asyncio.run_coroutine_threadsafe(queue.put(None), loop).result()
        except BaseException as exc:  # handed to the loop, which raises it
            if not stop.is_set():
                asyncio.run_coroutine_threadsafe(queue.put(exc), loop).result()

    reader = threading.Thread(target=read, name="batch-reader", daemon=True)
    reader.start()
    try:
        while True:
            batch = await queue.get()
            if batch is None:
                return
            if isinstance(batch, BaseException):
                raise batch
            yield batch
    finally:
        stop.set()
        while not queue.empty():
            queue.get_nowait()

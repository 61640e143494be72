"""ScoringEngine: the TraceConsumer that turns decided traces into assessments.

On the assembler's thread it only samples (a trace id comparison per active scorer), so a trace
no scorer samples costs nothing more. Sampled traces go to the engine's own event loop, where the
trace is extracted once, each scorer's filter is applied, and the scorers run concurrently.
Shed scoring, never spans: when the backlog is full, or a trace is incomplete, or tracejudge is
stopping, each (trace, scorer) pair is recorded as skipped with its reason, to be backfilled later.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Observation

from tracejudge.model import Assessment, Trace

from .extract import extract
from .filters import TraceFilter, parse_filter
from .registry import ScorerRegistry
from .sampling import ConsistentSampler
from .scorers import Scorer
from .spec import ScorerSpec
from .view import TraceView

log = logging.getLogger(__name__)


class AssessmentSink(Protocol):
    def emit(self, assessments: Sequence[Assessment]) -> None: ...


@dataclass(frozen=True)
class ActiveScorer:
    spec: ScorerSpec
    scorer: Scorer
    sampler: ConsistentSampler
    filter: TraceFilter


class ScoringEngine:
    def __init__(
        self,
        registry: ScorerRegistry,
        build: Callable[[ScorerSpec], Scorer],
        sink: AssessmentSink,
        record_skipped: Callable[[list[dict[str, Any]]], None],
        meter: metrics.Meter,
        max_backlog: int = 10_000,
        max_concurrency: int = 256,
    ) -> None:
        self._registry = registry
        self._build = build
        self._sink = sink
        self._record_skipped = record_skipped
        self._max_backlog = max_backlog
        self._max_concurrency = max_concurrency
        self._active: list[ActiveScorer] = []
        self._built: dict[str, ActiveScorer] = {}
        self._backlog = 0
        self._lock = threading.Lock()
        self._accepting = True
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="scoring", daemon=True)
        self._semaphore: asyncio.Semaphore | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._skipped = meter.create_counter(
            "tracejudge.scoring.skipped", description="Sampled (trace, scorer) pairs not scored, by scorer and reason"
        )
        self._scored = meter.create_counter("tracejudge.scoring.scored", description="Scorer runs, by scorer")
        meter.create_observable_gauge(
            "tracejudge.scoring.backlog", [self._observe_backlog], description="Sampled traces waiting for scorers"
        )
        registry.on_change(self.reload)
        self.reload()

    @property
    def backlog(self) -> int:
        return self._backlog

    def start(self) -> None:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._init_semaphore(), self._loop).result(5)

    def reload(self) -> None:
        """Rebuild the active set from the registry (specs are immutable: rebuild only what changed)."""
        active = []
        for spec in self._registry.active():
            current = self._built.get(spec.name)
            if current is None or current.spec != spec:
                current = ActiveScorer(spec, self._build(spec), ConsistentSampler(spec.sample_rate),
                                       parse_filter(spec.filter_string))  # fmt: skip
                self._built[spec.name] = current
            active.append(current)
        self._active = active

    def consume(self, traces: Sequence[Trace]) -> None:
        active = self._active
        if not active or not self._accepting:
            return
        admitted = []
        skipped: list[tuple[Trace, list[ActiveScorer], str]] = []
        for trace in traces:
            chosen = [scorer for scorer in active if scorer.sampler.sampled(trace.trace_id)]
            if not chosen:
                continue
            reason = self._admit(trace, chosen)
            if reason is None:
                admitted.append((trace, chosen))
            else:
                skipped.append((trace, chosen, reason))
        if admitted:
            self._loop.call_soon_threadsafe(self._spawn, admitted)
        if skipped:
            self._skip(skipped)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop admitting; let running scorers finish within `timeout`; record the rest as skipped."""
        self._accepting = False
        if not self._thread.is_alive():
            return
        future = asyncio.run_coroutine_threadsafe(self._drain(timeout), self._loop)
        future.result(timeout + 5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    def _admit(self, trace: Trace, chosen: list[ActiveScorer]) -> str | None:
        """Reserve backlog room for the pairs; else the reason they cannot be scored."""
        if not trace.complete:
            return "incomplete"
        with self._lock:
            if self._backlog + len(chosen) > self._max_backlog:
                return "backlog_full"
            self._backlog += len(chosen)
        return None

    def _spawn(self, admitted: list[tuple[Trace, list[ActiveScorer]]]) -> None:
        for trace, chosen in admitted:
            task = self._loop.create_task(self._score_trace(trace, chosen))
            task.chosen = (trace, chosen)  # type: ignore[attr-defined]
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _score_trace(self, trace: Trace, chosen: list[ActiveScorer]) -> None:
        try:
            view = extract(trace)
            if not view.has_genai:
                self._count_skips(chosen, "no_genai_data")
                return
            selected = [scorer for scorer in chosen if scorer.filter.matches(view)]
            self._count_skips([s for s in chosen if s not in selected], "filtered")
            await asyncio.gather(*(self._run(scorer, view) for scorer in selected))
        except Exception:
            log.exception("scoring trace %s failed", trace.trace_id.hex())
        finally:
            with self._lock:
                self._backlog -= len(chosen)

    async def _run(self, active: ActiveScorer, view: TraceView) -> None:
        assert self._semaphore is not None
        async with self._semaphore:
            assessments = await active.scorer.score(view)
        self._scored.add(1, {"scorer": active.spec.name})
        self._sink.emit(assessments)

    async def _init_semaphore(self) -> None:
        self._semaphore = asyncio.Semaphore(self._max_concurrency)

    async def _drain(self, timeout: float) -> None:
        await asyncio.sleep(0)
        pending = set(self._tasks)
        if pending:
            _, pending = await asyncio.wait(pending, timeout=timeout)
        for task in pending:
            task.cancel()
        if pending:
            self._skip([(*task.chosen, "shutdown") for task in pending])  # type: ignore[attr-defined]
            log.warning("stopped with %d traces unscored (recorded as skipped: shutdown)", len(pending))

    def _skip(self, skipped: Sequence[tuple[Trace, list[ActiveScorer], str]]) -> None:
        """One `skipped` archive row per trace (with its scorers), and the counts, per batch: under
        overload most sampled traces end here, so this must stay cheap."""
        now = time.time_ns()
        rows = []
        counts: Counter[tuple[str, str]] = Counter()
        for trace, chosen, reason in skipped:
            root = trace.root or (trace.spans[0] if trace.spans else None)
            names = [scorer.spec.name for scorer in chosen]
            rows.append({"trace_id": trace.trace_id.hex(), "span_id": root.span_id.hex() if root else "",
                         "scorers": names, "reason": reason, "timestamp": now})  # fmt: skip
            counts.update((name, reason) for name in names)
        self._record_skipped(rows)
        for (name, reason), count in counts.items():
            self._skipped.add(count, {"scorer": name, "reason": reason})

    def _count_skips(self, chosen: Sequence[ActiveScorer], reason: str) -> None:
        for name, count in Counter(s.spec.name for s in chosen).items():
            self._skipped.add(count, {"scorer": name, "reason": reason})

    def _observe_backlog(self, _options: CallbackOptions) -> list[Observation]:
        return [Observation(self._backlog)]

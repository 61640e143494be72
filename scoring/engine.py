"""ScoringEngine: the TraceConsumer that samples decided traces and accounts for every sampled pair.

On the assembler's thread it only samples (a trace id comparison per active scorer), so a trace no
scorer samples costs nothing more. Sampled traces go to a ScoringBackend, where the scoring loop
(scoring/loop.py) extracts, filters and scores them and emits the assessments: the scoring worker
process in the sidecar (scoring/worker.py), a thread in an app's own process (scoring/thread.py). What
comes back here is progress: which traces are finished, so that every sampled pair is accounted for.
Shed scoring, never spans: when the backlog is full, or a trace is incomplete, or tracejudge is
stopping, or the worker died holding it, each (trace, scorer) pair is recorded as skipped with its
reason (metric + archive row), to be backfilled later. A trace the engine itself fails on (an id
sampling cannot read, say) is recorded as skipped (`error`) alone; the rest of its batch goes on. And
every admitted pair ends: one still unfinished `deadline_s` after admission is recorded as skipped
(`deadline`) by a sweeper thread, so no lost report can hold backlog room forever.

A code scorer whose calls never return makes the worker restart (scoring/code.py CodeRunner says why).
One that does so QUARANTINE_AFTER times is quarantined, so that it cannot keep restarting the worker
under every other scorer: its sampled pairs are recorded as skipped (`quarantined`) until its
registration changes (stopped and started again, updated, or registered anew).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol

from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Observation

from tracejudge.model import Trace

from .ledger import InFlightLedger
from .registry import RegistryError, ScorerRegistry
from .sampling import randomness, threshold
from .spec import ScorerSpec
from .worker_protocol import Progress, SkippedRow

log = logging.getLogger(__name__)

QUARANTINE_AFTER = 3  # worker restarts a scorer's never-returning calls may cause before it is quarantined


class ScoringBackend(Protocol):
    """Where the scoring loop runs; it reports back through the engine's on_progress and on_worker_lost."""

    def start(self) -> None: ...
    def send_specs(self, specs: list[ScorerSpec]) -> None: ...
    def submit(self, batch: list[tuple[Trace, list[str]]]) -> None: ...
    def discard_queued(self) -> None: ...
    def validate(self, spec: ScorerSpec) -> str | None: ...
    def end_session(self, session_id: str) -> bool | None: ...
    def expect(self, trace_id: str, name: str, value: Any) -> None: ...
    def flush(self, timeout_s: float) -> bool: ...
    def drain(self, timeout_s: float) -> bool: ...


class ScorerCannotRun(RegistryError):
    """A spec the scoring loop cannot build: a code scorer that does not import, a judge it cannot reach."""


class ScoringEngine:
    def __init__(
        self,
        registry: ScorerRegistry,
        record_skipped: Callable[[list[dict[str, Any]]], None],
        meter: metrics.Meter,
        max_backlog: int = 10_000,
        deadline_s: float = 310.0,
        ledger: InFlightLedger | None = None,
    ) -> None:
        """`deadline_s`: how long an admitted pair may stay unfinished (scoring/config.py scoring_deadline).
        `ledger`: where admitted pairs are remembered across a kill (the sidecar's data directory); at start,
        the pairs a killed run left open are recorded as skipped (`restart`)."""
        self._registry = registry
        self._ledger = ledger
        self._record_skipped = record_skipped
        self._max_backlog = max_backlog
        self._worker: ScoringBackend | None = None
        self._active: list[tuple[str, int]] = []  # (scorer name, sampling threshold)
        self._registrations: dict[str, str] = {}  # active scorer name -> its spec as JSON, to see it change
        self._strikes: Counter[str] = Counter()  # worker restarts each active scorer caused
        self._quarantined: frozenset[str] = frozenset()  # those with QUARANTINE_AFTER strikes (_count_strikes)
        # trace id -> (root span id, scorer names, monotonic admission time); in admission order
        self._in_flight: dict[bytes, tuple[bytes, list[str], float]] = {}
        # trace id -> (root span id, scorer names): open in the ledger when the last run was killed
        self._recovered: dict[bytes, tuple[bytes, list[str]]] = {}
        self._deadline_s = deadline_s
        self._sweeper = threading.Thread(target=self._sweep, name="scoring-deadline", daemon=True)
        self._stopping = threading.Event()
        self._backlog = 0
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)  # notified when the backlog empties
        self._accepting = True
        self._skipped = meter.create_counter(
            "tracejudge.scoring.skipped", description="Sampled (trace, scorer) pairs not scored, by scorer and reason"
        )
        self._scored = meter.create_counter("tracejudge.scoring.scored", description="Scorer runs, by scorer")
        self._restarts = meter.create_counter(
            "tracejudge.scoring.worker_restarts", description="Scoring worker processes restarted after they died"
        )
        # Exposed at 0 from the start: Prometheus's increase() cannot see a first restart in a series
        # that only appears with it (deploy/prometheus/alerts.yaml alerts on that increase).
        self._restarts.add(0)
        meter.create_observable_gauge(
            "tracejudge.scoring.backlog", [self._observe_backlog], description="Sampled traces waiting for scorers"
        )
        registry.on_change(self.reload)

    @property
    def backlog(self) -> int:
        """Sampled (trace, scorer) pairs admitted and not finished yet."""
        return self._backlog

    @property
    def quarantined(self) -> frozenset[str]:
        """The scorers quarantined now (QUARANTINE_AFTER strikes), for the status page."""
        return self._quarantined

    def attach(self, worker: ScoringBackend) -> None:
        """The backend that scores; it gets the active scorers now and on every registry change."""
        self._worker = worker
        self.reload()

    def start(self) -> None:
        if self._worker is None:
            raise RuntimeError("attach a ScoringBackend before starting the engine")
        if self._ledger is not None:
            left = self._ledger.recover()
            self._ledger.admitted(left)  # still open: a second kill before end_recovery() keeps them
            self._recovered = {trace_id: (span_id, names) for trace_id, span_id, names in left}
        self._worker.start()
        self._sweeper.start()

    def validate(self, spec: ScorerSpec) -> None:
        """The registry's check that `spec` can run: answered where it would run (a code scorer is imported
        there, never here). Raises ScorerCannotRun."""
        if self._worker is None:
            raise ScorerCannotRun("scoring is not running")
        error = self._worker.validate(spec)
        if error is not None:
            raise ScorerCannotRun(error)

    def end_session(self, session_id: str) -> bool | None:
        """The conversation `session_id` is over (an app or an operator says so): its session scorers judge it
        now instead of after `sessions.idle`. True if it was open; False if not; None if the worker did not say."""
        if self._worker is None:
            raise ScorerCannotRun("scoring is not running")
        return self._worker.end_session(session_id)

    def expect(self, trace_id: str, name: str, value: Any) -> None:
        """An expectation a human logged for a trace (hex id): its judges read it when it is scored after this."""
        if self._worker is not None:
            self._worker.expect(trace_id, name, value)

    def reload(self) -> None:
        specs = self._registry.active()
        if self._worker is not None:
            self._worker.send_specs(specs)  # before sampling with them: the worker must know a name first
        with self._lock:
            registrations = {spec.name: spec.model_dump_json() for spec in specs}
            changed = {name for name in self._strikes if self._registrations.get(name) != registrations.get(name)}
            for name in changed:  # a new registration starts with a clean record
                del self._strikes[name]
            self._registrations = registrations
            self._count_strikes()
            # A span-target scorer samples (trace, span) pairs and a session scorer conversations, both in the
            # worker, where spans are read: the engine cannot sample for them, so they get every trace.
            self._active = [(spec.name, threshold(spec.sample_rate) if spec.target_kind == "trace" else 0)
                            for spec in specs]  # fmt: skip

    def samples(self, trace_id: bytes) -> bool:
        """Whether any active scorer samples this trace: a source may leave the rest of a trace unassembled."""
        active = self._active
        if not active:
            return False
        chance = randomness(trace_id)
        return any(chance >= bar for _, bar in active)

    def consume(self, traces: Sequence[Trace]) -> None:
        active, quarantined = self._active, self._quarantined
        if not active or not self._accepting or self._worker is None:
            return
        admitted: list[tuple[Trace, list[str]]] = []
        skipped: list[tuple[bytes, bytes, list[str], str]] = []
        now = time.monotonic()
        with self._lock:
            for trace in traces:
                try:
                    chance = randomness(trace.trace_id)  # once per trace, compared with each scorer's threshold
                    names = [name for name, bar in active if chance >= bar]
                    if not names:
                        continue
                    if self._recovered:  # replayed after a kill: this decision accounts for it now
                        self._recovered.pop(trace.trace_id, None)
                    root = trace.root or (trace.spans[0] if trace.spans else None)
                    span_id = root.span_id if root else b""
                except Exception:  # this trace alone: the rest of the batch is sampled as usual
                    log.exception("cannot sample trace %s; recorded as skipped (error)", _hex(trace.trace_id))
                    skipped.append((trace.trace_id, b"", [name for name, _ in active], "error"))
                    continue
                held = [name for name in names if name in quarantined] if quarantined else []
                if held:
                    skipped.append((trace.trace_id, span_id, held, "quarantined"))
                    names = [name for name in names if name not in quarantined]
                    if not names:
                        continue
                reason = self._admit(trace, names)
                if reason is None:
                    self._in_flight[trace.trace_id] = (span_id, names, now)
                    admitted.append((trace, names))
                else:
                    skipped.append((trace.trace_id, span_id, names, reason))
            if admitted:
                if self._ledger is not None:  # before the worker can report them finished
                    self._ledger.admitted((t.trace_id, self._in_flight[t.trace_id][0], n) for t, n in admitted)
                skipped.extend(self._submit(admitted))
        if skipped:
            self._skip(skipped)
        self._compact_ledger()

    def end_recovery(self) -> int:
        """The traces the write-ahead log rebuilt at start are decided: pairs the last run left open and no
        replayed trace brought back are recorded as skipped (`restart`); returns how many traces. (A trace
        decided shortly before the kill is replayed when the assembler's cursor had not committed past it:
        it is sampled again, and scored instead.)"""
        with self._lock:
            left = [(trace_id, span_id, names, "restart") for trace_id, (span_id, names) in self._recovered.items()]
            self._recovered = {}
            self._ended(trace_id for trace_id, _, _, _ in left)
        if left:
            log.warning("%d traces were being scored when tracejudge last stopped without draining; recorded as "
                        "skipped (restart)", len(left))  # fmt: skip
            self._skip(left)
        return len(left)

    def record_error(self, traces: Sequence[Trace]) -> None:
        """Record `traces` as skipped (`error`) for every active scorer: something failed on them before they
        could be sampled (the fan-out calls this when the engine raised on them)."""
        names = [name for name, _ in self._active]
        if names:
            self._skip((trace.trace_id, b"", names, "error") for trace in traces)

    def _submit(self, admitted: list[tuple[Trace, list[str]]]) -> list[tuple[bytes, bytes, list[str], str]]:
        """Hand admitted pairs to the backend (lock held). If the batch cannot be sent (a trace that does not
        encode), each trace is sent alone, and those that still fail are released and returned as skipped."""
        assert self._worker is not None
        try:
            self._worker.submit(admitted)
            return []
        except Exception:
            log.exception("cannot hand %d traces to the scoring worker; retrying one by one", len(admitted))
        failed = []
        for trace, names in admitted:
            try:
                self._worker.submit([(trace, names)])
            except Exception:
                log.exception("cannot hand trace %s to the scoring worker; recorded as skipped (error)",
                              _hex(trace.trace_id))  # fmt: skip
                span_id, names, _ = self._in_flight.pop(trace.trace_id, (b"", names, 0.0))
                self._backlog -= len(names)
                failed.append((trace.trace_id, span_id, names, "error"))
        self._ended(trace_id for trace_id, _, _, _ in failed)
        if not self._backlog:
            self._idle.notify_all()
        return failed

    def on_progress(self, progress: Progress) -> None:
        """A report from the worker (its reader thread): record, count, release backlog."""
        if progress.stuck:
            self._strike(progress.stuck)
        for name, count in progress.scored.items():
            self._scored.add(count, {"scorer": name})
        for (name, reason), count in progress.skipped.items():
            self._skipped.add(count, {"scorer": name, "reason": reason})
        if progress.skipped_rows:  # counted just above, with the rest of the worker's skips
            self._record_skipped(_skipped_rows(progress.skipped_rows))
        with self._lock:
            for trace_id in progress.finished:
                _, names, _ = self._in_flight.pop(trace_id, (b"", [], 0.0))
                self._backlog -= len(names)
            if not self._backlog:
                self._idle.notify_all()
            self._ended(progress.finished)

    def on_worker_lost(self, reason: str) -> None:
        """The worker ended (crashed, or restarted to free stuck code-scorer threads): what it held is
        recorded as skipped with `reason`, and batches not yet sent are dropped."""
        self._restarts.add(1)
        self._abandon(reason)

    def flush(self, timeout_s: float) -> bool:
        """Wait until every admitted trace is scored, then have the backend export what it emitted; True
        when both happened within `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        with self._idle:
            idle = self._idle.wait_for(lambda: self._backlog == 0, timeout_s)
        if self._worker is None:
            return idle
        return self._worker.flush(max(0.0, deadline - time.monotonic())) and idle

    def shutdown(self, timeout_s: float = 10.0) -> None:
        """Stop admitting; let running scorers finish within `timeout_s`; record the rest as skipped."""
        self._accepting = False
        self._stopping.set()
        if self._sweeper.is_alive():
            self._sweeper.join(5.0)
        if self._worker is None:
            return
        if not self._worker.drain(timeout_s):
            log.error("the scoring worker did not report back after stopping")
        left = self._abandon("shutdown")
        if left:
            log.warning("stopped with %d traces unscored (recorded as skipped: shutdown)", left)
        self.end_recovery()  # stopped before the replayed traces were all decided: account for the rest now
        if self._ledger is not None:
            self._ledger.close(clean=True)  # every pair ended: scored, or recorded as skipped just now

    def _abandon(self, reason: str) -> int:
        with self._lock:
            left = [(trace_id, span_id, names, reason) for trace_id, (span_id, names, _) in self._in_flight.items()]
            self._in_flight.clear()
            self._ended(trace_id for trace_id, _, _, _ in left)
            self._backlog = 0
            self._idle.notify_all()
            if self._worker is not None:
                self._worker.discard_queued()
        if left:
            self._skip(left)
        return len(left)

    def _sweep(self) -> None:
        """Every second or so (a tenth of the deadline when shorter), end the pairs past their deadline."""
        interval = min(1.0, self._deadline_s / 10)
        while not self._stopping.wait(interval):
            try:
                self.expire(time.monotonic())
            except Exception:
                log.exception("the scoring deadline sweep failed; continuing")

    def expire(self, now: float) -> int:
        """Record as skipped (`deadline`) every pair admitted more than `deadline_s` before `now` and not yet
        finished, releasing its backlog room; returns how many traces. If the worker reports one later, its
        verdict is still emitted, and nothing is released twice."""
        expired = []
        with self._lock:
            for trace_id, (span_id, names, admitted_at) in list(self._in_flight.items()):
                if admitted_at + self._deadline_s > now:
                    break  # admission order: the rest are younger
                del self._in_flight[trace_id]
                self._backlog -= len(names)
                expired.append((trace_id, span_id, names, "deadline"))
            if expired and not self._backlog:
                self._idle.notify_all()
            self._ended(trace_id for trace_id, _, _, _ in expired)
        for trace_id, _, names, _ in expired:
            log.warning("trace %s not scored by %s within the scoring deadline (%gs); recorded as skipped (deadline)",
                        _hex(trace_id), ", ".join(names), self._deadline_s)  # fmt: skip
        if expired:
            self._skip(expired)
        return len(expired)

    def _strike(self, stuck: list[str]) -> None:
        with self._lock:
            for name in stuck:
                if name not in self._registrations or name in self._quarantined:
                    continue
                self._strikes[name] += 1
                if self._strikes[name] >= QUARANTINE_AFTER:
                    log.error("scorer %s made the scoring worker restart %d times with calls that never returned; "
                              "it is quarantined: its sampled traces are recorded as skipped (quarantined) until it "
                              "is stopped and started again, or updated", name, self._strikes[name])  # fmt: skip
            self._count_strikes()

    def _count_strikes(self) -> None:
        """The quarantined scorers, as a frozen set that consume() reads without the lock (lock held)."""
        self._quarantined = frozenset(name for name, count in self._strikes.items() if count >= QUARANTINE_AFTER)

    def _ended(self, trace_ids: Iterable[bytes]) -> None:
        """These traces' pairs are over (scored or recorded as skipped): the ledger forgets them."""
        if self._ledger is not None:
            self._ledger.finished(trace_ids)

    def _compact_ledger(self) -> None:
        if self._ledger is not None and self._ledger.needs_compaction:
            with self._lock:
                self._ledger.compact((t, span_id, names) for t, (span_id, names, _) in self._in_flight.items())

    def _admit(self, trace: Trace, names: list[str]) -> str | None:
        """Reserve backlog room for the pairs (lock held); else the reason they cannot be scored."""
        if not trace.complete:
            return "incomplete"
        if self._backlog + len(names) > self._max_backlog:
            return "backlog_full"
        self._backlog += len(names)
        return None

    def _skip(self, skipped: Iterable[tuple[bytes, bytes, list[str], str]]) -> None:
        """One `skipped` archive row per trace (with its scorers), and the counts, per batch: under
        overload most sampled traces end here, so this must stay cheap."""
        rows = []
        counts: Counter[tuple[str, str]] = Counter()
        for trace_id, span_id, names, reason in skipped:
            rows.append((trace_id, span_id, names, reason, None))
            counts.update((name, reason) for name in names)
        self._record_skipped(_skipped_rows(rows))
        for (name, reason), count in counts.items():
            self._skipped.add(count, {"scorer": name, "reason": reason})

    def _observe_backlog(self, _options: CallbackOptions) -> list[Observation]:
        return [Observation(self.backlog)]


def _skipped_rows(skipped: Iterable[SkippedRow]) -> list[dict[str, Any]]:
    """Rows of the archive's `skipped` table (exporter/rows.py SKIPPED_SCHEMA)."""
    now = time.time_ns()
    return [{"trace_id": trace_id.hex(), "span_id": span_id.hex(), "scorers": names, "reason": reason,
             "timestamp": now, "session_id": session_id}
            for trace_id, span_id, names, reason, session_id in skipped]  # fmt: skip


def _hex(trace_id: bytes) -> str:
    return trace_id.hex() or "(empty)"

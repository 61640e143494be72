"""The messages between the scoring engine's side and the scoring loop's side, spoken by both.

The loop (scoring/loop.py) runs in the scoring worker process (tracejudge/scoring_worker.py) or, in
an app's own process, on a thread of its own (scoring/thread.py); scoring/worker.py's ScoringWorker
is the engine's side of either. Messages are tuples `(kind, *body)`; across processes each is one frame
(`encode`) on tracejudge/child_process.py's channel, within a process it is handed over as it is.

    engine -> loop   (INIT, WorkerSettings)            once, first (the worker process only)
                     (SPECS, [ScorerSpec])             the active scorers, whenever they change
                     (SCORE, [(Trace, [name])])        sampled traces and the scorers that sampled them
                     (VALIDATE, id, ScorerSpec)        can this spec run here? (code imports, judge settings)
                     (METRICS, id)                     the worker's metrics exposition (the worker process only)
                     (FLUSH, id, timeout_s)            export what the emitter holds
                     (END_SESSION, id, session_id)     that conversation is over: judge it now
                     (EXPECT, {trace_id: {name: value}})  expectations logged for traces (human ground truth)
                     (DRAIN, timeout_s)                finish or cancel running work, report, exit
    loop -> engine   (PROGRESS, Progress)              what finished, batched every few milliseconds
                     (VALIDATED, id, error | None)     the answer to one VALIDATE
                     (FLUSHED, id, done)               the answer to one FLUSH
                     (SESSION_ENDED, id, found)        the answer to one END_SESSION: was it open?
                     (DRAINED, Progress)               the last report; traces never finished were cancelled
    worker -> sidecar, relayed to exporters (the worker process only):
                     (FORWARD, Signal, bytes, n)       encoded OTLP verdicts for the forwarder's queue
                     (ARCHIVE, frame, n)               an archive_protocol rows frame for the archive
                     (METRICS_TEXT, id, bytes)         the answer to one METRICS

The worker process also ends on its own, with exit code RESTART_EXIT_CODE after a last PROGRESS,
when code scorers that never returned hold all its code-scorer threads (scoring/code.py CodeRunner):
only a new process gets them back.
"""

from __future__ import annotations

import pickle
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Literal

from .config import JudgeBudgetConfig, JudgeEndpointConfig, SessionsConfig

INIT, SPECS, SCORE, VALIDATE, METRICS, FLUSH, DRAIN = "init", "specs", "score", "validate", "metrics", "flush", "drain"
END_SESSION, SESSION_ENDED = "end_session", "session_ended"
EXPECT = "expect"
PROGRESS, VALIDATED, FLUSHED, DRAINED = "progress", "validated", "flushed", "drained"
FORWARD, ARCHIVE, METRICS_TEXT = "forward", "archive", "metrics_text"
RESTART_EXIT_CODE = 75  # EX_TEMPFAIL: the worker asks to be replaced

Message = tuple[Any, ...]
SkippedRow = tuple[bytes, bytes, list[str], str, str | None]


@dataclass(frozen=True)
class WorkerSettings:
    judges: dict[str, JudgeEndpointConfig]
    max_concurrency: int
    code_workers: int
    code_timeout_s: float
    sys_path: list[str]  # the sidecar's: code scorers import from where the sidecar could
    emit_interval_s: float  # verdicts leave in batches at most this far apart
    # Where a worker process's verdicts go: "relay" them to the sidecar's forwarder, send them "direct"
    # to otlp_endpoint (None: where the OTEL_EXPORTER_OTLP_* variables point), or "off".
    verdicts: Literal["relay", "direct", "off"] = "off"
    otlp_endpoint: str | None = None
    archive: bool = False  # relay assessment rows to the sidecar's archive
    push_metrics: bool = False  # also push the worker's own metrics by OTLP, to metrics_endpoint (None: env)
    metrics_endpoint: str | None = None
    metrics_interval_s: float = 30.0
    sessions: SessionsConfig = field(default_factory=SessionsConfig)
    sessions_journal: str | None = None  # where open conversations are kept across a kill; None: in memory only
    budget: JudgeBudgetConfig | None = None  # judges.budget; enforced when budget_ledger is set too
    budget_ledger: str | None = None  # the data directory's spend ledger (scoring/budget.py)


@dataclass
class Progress:
    """What finished since the last report: `finished` are trace ids whose sampled scorers are all done
    (scored, filtered out, not applicable or failed). A trace never reported was not scored. `stuck`, in
    the last report of a worker that restarts itself, names the code scorers whose calls held its threads."""

    finished: list[bytes] = field(default_factory=list)
    scored: Counter[str] = field(default_factory=Counter)
    skipped: Counter[tuple[str, str]] = field(default_factory=Counter)
    stuck: list[str] = field(default_factory=list)
    # Skips the archive's `skipped` table gets a row for (they are counted in `skipped` too): spans cut by a
    # span target's cap, conversations not judged. (trace id, span id, scorers, reason, session id)
    skipped_rows: list[SkippedRow] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.finished or self.stuck or self.scored or self.skipped)


def encode(message: Message) -> bytes:
    """A frame: the kind as text, a NUL, then the body pickled (so the kind is read without unpickling)."""
    kind: str = message[0]
    return kind.encode() + b"\0" + pickle.dumps(message[1:], protocol=5)


def decode(frame: bytes) -> Message:
    kind, _, body = frame.partition(b"\0")
    return (kind.decode(), *pickle.loads(body))


def kind_of(frame: bytes) -> str:
    return frame[: frame.index(b"\0")].decode()

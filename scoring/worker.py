"""ScoringWorker: the sidecar's side of the scoring worker process (tracejudge/scoring_worker.py is the
other side; both speak scoring/worker_protocol.py over tracejudge/child_process.py's channel).

It is the engine's ScoringBackend: sampled traces, scorer specs and validations go to the worker;
progress reports come back to the engine. What the worker emitted comes back already encoded —
OTLP verdicts for the forwarder's queue, rows frames for the archive — and is handed to `on_forward`
and `on_archive` untouched: the sidecar never decodes a verdict, it relays it. If the worker dies
the engine hears first (to record what the worker held as skipped), then a new worker is started
with the current scorers.
"""

from __future__ import annotations

import itertools
import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tracejudge.child_process import ChildProcess
from tracejudge.model import Signal, Trace

from .spec import ScorerSpec
from .worker_protocol import (
    ARCHIVE,
    DRAIN,
    DRAINED,
    FORWARD,
    INIT,
    METRICS,
    METRICS_TEXT,
    PROGRESS,
    RESTART_EXIT_CODE,
    SCORE,
    SPECS,
    VALIDATE,
    VALIDATED,
    Progress,
    WorkerSettings,
    decode,
    encode,
    kind_of,
)

log = logging.getLogger(__name__)

VALIDATE_TIMEOUT_S = 30.0  # a code scorer's module is imported to validate it: imports can be slow


class _Answer:
    """One request's answer, awaited by the caller's thread."""

    def __init__(self) -> None:
        self.ready = threading.Event()
        self.value: Any = None

    def set(self, value: Any) -> None:
        self.value = value
        self.ready.set()


class ScoringWorker:
    def __init__(
        self,
        settings: WorkerSettings,
        directory: Path,
        nice: int,
        *,
        on_progress: Callable[[Progress], None],
        on_lost: Callable[[str], None],
        on_forward: Callable[[Signal, bytes, int], None] | None = None,
        on_archive: Callable[[bytes, int], None] | None = None,
    ) -> None:
        """`on_forward` and `on_archive` receive what the worker emitted; each must be given when
        `settings` says the worker will produce it (emit_otlp, archive)."""
        self._settings = settings
        self._on_progress = on_progress
        self._on_lost = on_lost
        self._on_forward = on_forward
        self._on_archive = on_archive
        self._specs: list[ScorerSpec] = []
        self._answers: dict[int, _Answer] = {}
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._drained = threading.Event()
        # `directory` is the worker's working directory (child_process.py says why)
        self._child = ChildProcess("tracejudge.scoring_worker", ["--nice", str(nice)], directory,
                                   on_frame=self._received, on_exit=self._exited, greeting=self._greeting)  # fmt: skip

    @property
    def pid(self) -> int | None:
        return self._child.pid

    def start(self) -> None:
        self._child.start()

    def send_specs(self, specs: list[ScorerSpec]) -> None:
        with self._lock:
            self._specs = list(specs)
            self._child.send(encode((SPECS, self._specs)))

    def submit(self, batch: list[tuple[Trace, list[str]]]) -> None:
        self._child.send(encode((SCORE, batch)))

    def discard_queued(self) -> None:
        """Forget batches not yet sent (the engine has just recorded them as skipped)."""
        self._child.discard(lambda frame: kind_of(frame) == SCORE)

    def validate(self, spec: ScorerSpec) -> str | None:
        """Why `spec` cannot run in the worker, or None when it can. Blocks until the worker answers."""
        answer = self._ask(VALIDATE, spec)
        if not answer.ready.wait(VALIDATE_TIMEOUT_S):
            return f"the scoring worker did not answer within {VALIDATE_TIMEOUT_S:g}s"
        error: str | None = answer.value
        return error

    def metrics_text(self, timeout_s: float = 2.0) -> bytes:
        """The worker's own metrics in the Prometheus text format (b"" when it cannot answer in time)."""
        answer = self._ask(METRICS)
        answered = answer.ready.wait(timeout_s)
        return answer.value if answered and isinstance(answer.value, bytes) else b""

    def drain(self, timeout_s: float) -> bool:
        """Let the worker finish or cancel its work within `timeout_s`, report and exit; True when it did."""
        self._child.shutdown(encode((DRAIN, timeout_s)), timeout_s + 10.0)
        return self._drained.is_set()

    def _ask(self, kind: str, *body: Any) -> _Answer:
        answer = _Answer()
        with self._lock:
            request_id = next(self._ids)
            self._answers[request_id] = answer
        self._child.send(encode((kind, request_id, *body)))
        return answer

    def _greeting(self) -> list[bytes]:
        with self._lock:
            return [encode((INIT, self._settings)), encode((SPECS, self._specs))]

    def _received(self, frame: bytes) -> None:
        kind, *body = decode(frame)
        if kind == FORWARD and self._on_forward is not None:
            self._on_forward(*body)
        elif kind == ARCHIVE and self._on_archive is not None:
            self._on_archive(*body)
        elif kind in (PROGRESS, DRAINED):
            self._on_progress(body[0])
            if kind == DRAINED:
                self._drained.set()
        elif kind in (VALIDATED, METRICS_TEXT):
            with self._lock:
                answer = self._answers.pop(body[0], None)
            if answer is not None:
                answer.set(body[1])

    def _exited(self, code: int) -> None:
        """Unanswered requests fail, then the engine accounts for what the worker held (and drops batches
        still queued) before a new worker starts."""
        if code == RESTART_EXIT_CODE:
            reason = "worker_restarted"
            log.warning("the scoring worker asked to be restarted; its unfinished traces are recorded as skipped")
        else:
            reason = "worker_crashed"
            log.error("the scoring worker exited (code %s); restarting it, its unfinished traces are recorded as "
                      "skipped", code)  # fmt: skip
        self._child.discard(lambda frame: kind_of(frame) in (VALIDATE, METRICS))
        with self._lock:
            answers, self._answers = self._answers, {}
        for answer in answers.values():
            answer.set("the scoring worker exited before answering; try again")
        self._on_lost(reason)

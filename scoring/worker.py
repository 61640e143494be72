"""ScoringWorker: the engine's side of wherever the scoring loop runs.

The loop (scoring/loop.py) runs in a worker: a process of its own in the sidecar (WorkerProcess here,
tracejudge/scoring_worker.py on the other side), or a thread in an app's own process (WorkerThread,
scoring/thread.py). A carrier moves scoring/worker_protocol.py's messages to it and back; this class
is the same for both. Sampled traces, scorer specs, validations and flushes go to the loop; progress
comes back to the engine. What a worker process emitted comes back already encoded — OTLP verdicts
for the forwarder's queue, rows frames for the archive — and is handed to `on_forward` and
`on_archive` untouched: the sidecar never decodes a verdict, it relays it. If the worker ends on its
own the engine hears first (to record what the worker held as skipped), then a new one is started
with the current scorers.
"""

from __future__ import annotations

import itertools
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from tracejudge.child_process import ChildProcess
from tracejudge.model import Signal, Trace

from .spec import ScorerSpec
from .worker_protocol import (
    ARCHIVE,
    DRAIN,
    DRAINED,
    END_SESSION,
    EXPECT,
    FLUSH,
    FLUSHED,
    FORWARD,
    INIT,
    METRICS,
    METRICS_TEXT,
    PROGRESS,
    RESTART_EXIT_CODE,
    SCORE,
    SESSION_ENDED,
    SPECS,
    VALIDATE,
    VALIDATED,
    Message,
    Progress,
    WorkerSettings,
    decode,
    encode,
    kind_of,
)

log = logging.getLogger(__name__)

MAX_EXPECTED = 100_000  # traces whose logged expectations are kept for the worker (a few MB)
VALIDATE_TIMEOUT_S = 30.0  # a code scorer's module is imported to validate it: imports can be slow
_ANSWERS = (VALIDATED, METRICS_TEXT, FLUSHED, SESSION_ENDED)
_REQUESTS = frozenset({VALIDATE, METRICS, FLUSH, END_SESSION})


class Carrier(Protocol):
    """Moves messages to a scoring loop and back, and keeps one running: `receive` gets the loop's
    messages, `exited` hears that it ended on its own (before the next one starts), `greeting` gives the
    messages every new loop gets first."""

    def bind(
        self, receive: Callable[[Message], None], exited: Callable[[int], None], greeting: Callable[[], list[Message]]
    ) -> None: ...
    def start(self) -> None: ...
    def send(self, message: Message) -> None: ...
    def discard(self, kinds: frozenset[str]) -> None: ...
    def shutdown(self, farewell: Message, timeout_s: float) -> None: ...


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
        carrier: Carrier,
        *,
        on_progress: Callable[[Progress], None],
        on_lost: Callable[[str], None],
        on_forward: Callable[[Signal, bytes, int], None] | None = None,
        on_archive: Callable[[bytes, int], None] | None = None,
    ) -> None:
        """`on_forward` and `on_archive` receive what a worker process relays (its settings say whether it
        does: `verdicts="relay"`, `archive`)."""
        self._carrier = carrier
        self._on_progress = on_progress
        self._on_lost = on_lost
        self._on_forward = on_forward
        self._on_archive = on_archive
        self._specs: list[ScorerSpec] = []
        self._expected: OrderedDict[str, dict[str, Any]] = OrderedDict()  # trace id -> logged expectations
        self._answers: dict[int, _Answer] = {}
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._drained = threading.Event()
        carrier.bind(self._received, self._exited, self._greeting)

    def start(self) -> None:
        self._carrier.start()

    def send_specs(self, specs: list[ScorerSpec]) -> None:
        with self._lock:
            self._specs = list(specs)
            self._carrier.send((SPECS, self._specs))

    def submit(self, batch: list[tuple[Trace, list[str]]]) -> None:
        self._carrier.send((SCORE, batch))

    def discard_queued(self) -> None:
        """Forget batches not yet sent (the engine has just recorded them as skipped)."""
        self._carrier.discard(frozenset({SCORE}))

    def validate(self, spec: ScorerSpec) -> str | None:
        """Why `spec` cannot run in the worker, or None when it can. Blocks until the worker answers."""
        answer = self._ask(VALIDATE, spec)
        if not answer.ready.wait(VALIDATE_TIMEOUT_S):
            return f"the scoring worker did not answer within {VALIDATE_TIMEOUT_S:g}s"
        error: str | None = answer.value
        return error

    def metrics_text(self, timeout_s: float = 2.0) -> bytes:
        """A worker process's own metrics in the Prometheus text format (b"" when it cannot answer in time)."""
        answer = self._ask(METRICS)
        answered = answer.ready.wait(timeout_s)
        return answer.value if answered and isinstance(answer.value, bytes) else b""

    def end_session(self, session_id: str, timeout_s: float = 5.0) -> bool | None:
        """The conversation `session_id` is over: judged now. True if it was open, False if the worker holds no
        open conversation of that id, None when the worker did not answer within `timeout_s`."""
        answer = self._ask(END_SESSION, session_id)
        if not answer.ready.wait(timeout_s) or not isinstance(answer.value, bool):
            return None
        return answer.value

    def flush(self, timeout_s: float) -> bool:
        """Export what the worker's emitter holds; True when it did within `timeout_s`."""
        answer = self._ask(FLUSH, timeout_s)
        return answer.ready.wait(timeout_s + 1.0) and answer.value is True

    def drain(self, timeout_s: float) -> bool:
        """Let the worker finish or cancel its work within `timeout_s`, report and exit; True when it did."""
        self._carrier.shutdown((DRAIN, timeout_s), timeout_s + 10.0)
        return self._drained.is_set()

    def _ask(self, kind: str, *body: Any) -> _Answer:
        answer = _Answer()
        with self._lock:
            request_id = next(self._ids)
            self._answers[request_id] = answer
        self._carrier.send((kind, request_id, *body))
        return answer

    def expect(self, trace_id: str, name: str, value: Any) -> None:
        """An expectation logged for a trace (hex id): judges of that trace read it. Kept here for the last
        MAX_EXPECTED traces, so a restarted worker gets them again."""
        with self._lock:
            values = self._expected.setdefault(trace_id, {})
            values[name] = value
            self._expected.move_to_end(trace_id)
            while len(self._expected) > MAX_EXPECTED:
                self._expected.popitem(last=False)
            self._carrier.send((EXPECT, {trace_id: dict(values)}))

    def _greeting(self) -> list[Message]:
        with self._lock:
            greeting: list[Message] = [(SPECS, self._specs)]
            if self._expected:
                greeting.append((EXPECT, {tid: dict(values) for tid, values in self._expected.items()}))
            return greeting

    def _received(self, message: Message) -> None:
        kind, *body = message
        if kind == FORWARD and self._on_forward is not None:
            self._on_forward(*body)
        elif kind == ARCHIVE and self._on_archive is not None:
            self._on_archive(*body)
        elif kind in (PROGRESS, DRAINED):
            self._on_progress(body[0])
            if kind == DRAINED:
                self._drained.set()
        elif kind in _ANSWERS:
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
        self._carrier.discard(_REQUESTS)
        with self._lock:
            answers, self._answers = self._answers, {}
        for answer in answers.values():
            answer.set("the scoring worker exited before answering; try again")
        self._on_lost(reason)


class WorkerProcess:
    """The carrier to the scoring worker process (`python -m tracejudge.scoring_worker`), each message one
    frame on tracejudge/child_process.py's channel; `directory` is its working directory."""

    def __init__(self, settings: WorkerSettings, directory: Path, nice: int) -> None:
        self._settings = settings
        self._directory = directory
        self._nice = nice
        self._child: ChildProcess | None = None

    @property
    def pid(self) -> int | None:
        return self._child.pid if self._child is not None else None

    def bind(
        self, receive: Callable[[Message], None], exited: Callable[[int], None], greeting: Callable[[], list[Message]]
    ) -> None:
        def frames() -> list[bytes]:
            return [encode((INIT, self._settings)), *(encode(message) for message in greeting())]

        self._child = ChildProcess("tracejudge.scoring_worker", ["--nice", str(self._nice)], self._directory,
                                   on_frame=lambda frame: receive(decode(frame)), on_exit=exited,
                                   greeting=frames)  # fmt: skip

    def start(self) -> None:
        self._bound().start()

    def send(self, message: Message) -> None:
        self._bound().send(encode(message))

    def discard(self, kinds: frozenset[str]) -> None:
        self._bound().discard(lambda frame: kind_of(frame) in kinds)

    def shutdown(self, farewell: Message, timeout_s: float) -> None:
        self._bound().shutdown(encode(farewell), timeout_s)

    def _bound(self) -> ChildProcess:
        if self._child is None:
            raise RuntimeError("WorkerProcess is not bound to a ScoringWorker")
        return self._child

"""WorkerThread: the scoring loop on a thread of the app's own process, for apps that run no sidecar.

The carrier scoring/worker.py's ScoringWorker uses when no worker process is wanted: the same loop
(scoring/loop.py) and the same messages (scoring/worker_protocol.py), handed over in memory instead of
pickled. The loop gets its own event loop on a daemon thread, and runs with OpenTelemetry
instrumentation suppressed: an app that instruments its HTTP or LLM clients must not trace the judges'
own calls, whose spans would come back to be scored.

If code scorers that never return hold all its code-scorer threads, the loop ends and a new one starts
on a new thread with new code-scorer threads; Python cannot stop the stuck ones, so they stay behind.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable

from opentelemetry import context

from tracejudge.event_loop import new_event_loop

from .loop import Emitter, ScoringLoop
from .worker_protocol import RESTART_EXIT_CODE, Message, WorkerSettings

log = logging.getLogger(__name__)

# What opentelemetry-instrumentation's suppress_instrumentation() sets, and every instrumentation checks
# before making a span (is_instrumentation_enabled): the API's key, and the plain one older ones read.
_SUPPRESS_KEYS = (context._SUPPRESS_INSTRUMENTATION_KEY, "suppress_instrumentation")


class _Inbox:
    """The loop's end of the carrier: blocking `recv` on the loop's reader thread, `send` straight back."""

    def __init__(self, receive: Callable[[Message], None]) -> None:
        self._receive = receive
        self._messages: deque[Message] = deque()
        self._cond = threading.Condition()
        self._closed = False

    def put(self, message: Message) -> None:
        with self._cond:
            self._messages.append(message)
            self._cond.notify()

    def discard(self, kinds: frozenset[str]) -> None:
        with self._cond:
            kept = [message for message in self._messages if message[0] not in kinds]
            self._messages.clear()
            self._messages.extend(kept)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def recv(self) -> Message | None:
        with self._cond:
            while not self._messages and not self._closed:
                self._cond.wait()
            return self._messages.popleft() if self._messages else None

    def send(self, message: Message) -> bool:
        self._receive(message)
        return True


class WorkerThread:
    def __init__(self, settings: WorkerSettings, emitter: Emitter, name: str = "tracejudge-scoring") -> None:
        self._settings = settings
        self._emitter = emitter
        self._name = name
        self._receive: Callable[[Message], None] | None = None
        self._exited: Callable[[int], None] = lambda code: None
        self._greeting: Callable[[], list[Message]] = list
        self._inbox: _Inbox | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._stopping = False
        self._early: list[Message] = []  # sent before start: delivered after the greeting

    @property
    def thread(self) -> threading.Thread | None:
        return self._thread

    def bind(
        self, receive: Callable[[Message], None], exited: Callable[[int], None], greeting: Callable[[], list[Message]]
    ) -> None:
        self._receive, self._exited, self._greeting = receive, exited, greeting

    def start(self) -> None:
        with self._lock:
            self._spawn()

    def send(self, message: Message) -> None:
        with self._lock:
            if self._inbox is None:
                self._early.append(message)
            else:
                self._inbox.put(message)

    def discard(self, kinds: frozenset[str]) -> None:
        with self._lock:
            self._early = [message for message in self._early if message[0] not in kinds]
            if self._inbox is not None:
                self._inbox.discard(kinds)

    def shutdown(self, farewell: Message, timeout_s: float) -> None:
        with self._lock:
            self._stopping = True
            inbox, thread = self._inbox, self._thread
        if inbox is None or thread is None:
            return
        inbox.put(farewell)
        thread.join(timeout_s)
        inbox.close()
        if thread.is_alive():
            log.error("the scoring thread did not finish within %.0fs; leaving it behind", timeout_s)

    def _spawn(self) -> None:
        """A new loop on a new thread, greeted first (lock held)."""
        if self._receive is None:
            raise RuntimeError("WorkerThread is not bound to a ScoringWorker")
        inbox = self._inbox = _Inbox(self._receive)
        for message in [*self._greeting(), *self._early]:
            inbox.put(message)
        self._early = []
        self._thread = threading.Thread(target=self._run, args=(inbox,), name=self._name, daemon=True)
        self._thread.start()

    def _run(self, inbox: _Inbox) -> None:
        suppressed = context.get_current()
        for key in _SUPPRESS_KEYS:
            suppressed = context.set_value(key, True, suppressed)
        token = context.attach(suppressed)
        loop = new_event_loop()
        restart = False
        try:
            restart = loop.run_until_complete(ScoringLoop(self._settings, inbox, self._emitter).run())
        except Exception:
            log.exception("the scoring loop failed")
            restart = True
        finally:
            loop.close()
            context.detach(token)
        with self._lock:
            if self._stopping or not restart:
                return
        self._exited(RESTART_EXIT_CODE)
        with self._lock:
            if not self._stopping:
                self._spawn()

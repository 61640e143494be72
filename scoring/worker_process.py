"""ScoringWorker: the sidecar's handle on the scoring worker process (scoring/worker.py).

Sending never blocks the caller (the assembler's thread): messages wait in a queue that a feeder
thread writes to the socket; the engine's backlog bound keeps that queue bounded. A reader thread
hands progress reports to the engine and the worker's encoded verdicts to the forwarder. If the
worker dies it is started again with the current scorers, after the engine has recorded what it
was holding as skipped.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from tracejudge.child_process import start_worker
from tracejudge.model import Signal, Trace

from .spec import ScorerSpec
from .worker import DRAIN, DRAINED, FORWARD, INIT, PROGRESS, RESTART_EXIT_CODE, SCORE, SPECS, Progress, WorkerSettings

log = logging.getLogger(__name__)

_RESTART_PAUSE_S = 1.0  # a worker that dies on start-up is not restarted in a tight loop


class ScoringWorker:
    def __init__(
        self,
        settings: WorkerSettings,
        directory: Path,
        nice: int,
        on_progress: Callable[[Progress], None],
        on_lost: Callable[[str], None],
        forward_verdicts: Callable[[Signal, bytes, int], None] | None = None,
    ) -> None:
        """`forward_verdicts` receives the worker's encoded verdicts; it must be given when
        `settings.emit_otlp` says the worker will produce them."""
        self._settings = settings
        self._directory = directory  # the worker's working directory (child_process.py says why)
        self._nice = nice
        self._on_progress = on_progress
        self._on_lost = on_lost
        self._forward_verdicts = forward_verdicts
        self._queue: deque[tuple[Any, ...]] = deque()
        self._cond = threading.Condition()
        self._specs: list[ScorerSpec] = []
        self._conn: Connection | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._started_at = 0.0
        self._stopping = False
        self._drained = threading.Event()
        self._feeder = threading.Thread(target=self._feed, name="scoring-feeder", daemon=True)

    def start(self) -> None:
        self._spawn()
        self._feeder.start()

    def send_specs(self, specs: list[ScorerSpec]) -> None:
        with self._cond:
            self._specs = list(specs)
            self._queue.append((SPECS, self._specs))
            self._cond.notify()

    def submit(self, batch: list[tuple[Trace, list[str]]]) -> None:
        with self._cond:
            self._queue.append((SCORE, batch))
            self._cond.notify()

    def discard_queued(self) -> None:
        """Forget batches not yet sent (the engine has just recorded them as skipped)."""
        with self._cond:
            kept = [message for message in self._queue if message[0] != SCORE]
            self._queue.clear()
            self._queue.extend(kept)

    def drain(self, timeout_s: float) -> bool:
        """Let the worker finish or cancel its work within `timeout_s` and report; True when it did."""
        with self._cond:
            self._stopping = True
            self._queue.append((DRAIN, timeout_s))
            self._cond.notify()
        drained = self._drained.wait(timeout_s + 10.0)
        self._feeder.join(5.0)
        self._end_process(5.0)
        return drained

    def _spawn(self) -> None:
        parent_end, child_end = socket.socketpair()
        args = ["--fd", str(child_end.fileno()), "--nice", str(self._nice)]
        self._process = start_worker("tracejudge.scoring_worker", args, (child_end.fileno(),), self._directory)
        child_end.close()
        conn = Connection(parent_end.detach())
        self._started_at = time.monotonic()
        with self._cond:  # connected and INIT first in the queue at once: the feeder sends nothing before it
            self._conn = conn
            self._queue.appendleft((SPECS, self._specs))
            self._queue.appendleft((INIT, self._settings))
            self._cond.notify()
        threading.Thread(target=self._read, args=(conn,), name="scoring-reader", daemon=True).start()

    def _feed(self) -> None:
        """Send queued messages while a worker is connected; between a death and the restart they wait."""
        while True:
            with self._cond:
                while not self._queue or self._conn is None:
                    self._cond.wait()
                message = self._queue.popleft()
                conn = self._conn
            # If the worker died, the reader restarts it and the engine records its traces as skipped.
            with contextlib.suppress(OSError, ValueError):
                conn.send(message)
            if message[0] == DRAIN:
                return

    def _read(self, conn: Connection) -> None:
        while True:
            try:
                kind, *body = conn.recv()
            except (EOFError, OSError):
                break
            except Exception:
                log.exception("unreadable message from the scoring worker; stopping it")
                self._kill()
                break
            if kind == FORWARD and self._forward_verdicts is not None:
                self._forward_verdicts(*body)
            elif kind in (PROGRESS, DRAINED):
                self._on_progress(*body)
                if kind == DRAINED:
                    break
        if self._stopping:
            self._drained.set()
            return
        self._restart()

    def _restart(self) -> None:
        """Disconnect first, so nothing more is sent into the void; then let the engine account for what
        was lost (including batches still queued); then start a new worker."""
        with self._cond:
            self._close_conn()
        code = self._process.wait() if self._process is not None else None
        if code == RESTART_EXIT_CODE:
            reason = "worker_restarted"
            log.warning("the scoring worker asked to be restarted; its unfinished traces are recorded as skipped")
        else:
            reason = "worker_crashed"
            log.error("the scoring worker exited (code %s); restarting it, its unfinished traces are recorded as "
                      "skipped", code)  # fmt: skip
        self._on_lost(reason)
        if time.monotonic() - self._started_at < _RESTART_PAUSE_S:
            time.sleep(_RESTART_PAUSE_S)
        with self._cond:
            if self._stopping:
                self._drained.set()
                return
            self._spawn()

    def _kill(self) -> None:
        if self._process is not None:
            self._process.kill()

    def _close_conn(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _end_process(self, timeout_s: float) -> None:
        process = self._process
        if process is None:
            return
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            log.error("the scoring worker did not exit within %.0fs; killing it", timeout_s)
            process.kill()
            process.wait()
        with self._cond:
            self._close_conn()

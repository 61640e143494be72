"""How tracejudge runs its worker processes (the archive writer, the scoring worker), in one place.

A worker is `python -m <module>` with the parent's own interpreter and log level, talking to its
parent over one socket of length-prefixed frames (multiprocessing.connection's framing). Both sides
of a worker speak the frames of that worker's protocol module (exporter/archive_protocol.py,
scoring/worker_protocol.py); this module only moves bytes, starts, restarts and stops.

- It runs in the worker's own directory: `python -m` puts the working directory first on sys.path,
  and a source checkout there would shadow the installed package.
- stdin is closed and the socket is passed as a dedicated descriptor: a process started during
  imports inherits stdin, and would keep a dead worker's channel open.
- It runs in a session of its own, so a Ctrl-C or SIGTERM to tracejudge's process group never
  reaches it: the parent decides when a worker stops, after sending it everything.
- Sending never blocks the caller (the receivers' and the assembler's threads): frames wait in a
  queue that a feeder thread writes while a worker is connected; between a worker's death and its
  restart they wait. The owner bounds what it queues (`queued_bytes`).
- A worker that dies is started again; the owner hears of it first (`on_exit`) to account for what
  the dead one held, and the new one gets the owner's greeting frames before anything queued.
"""

from __future__ import annotations

import logging
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection
from pathlib import Path

log = logging.getLogger(__name__)

# A request is ~0.5 MB: a wider socket buffer lets the feeder hand a whole one to the kernel at once.
_SOCKET_BUFFER = 1 << 20
_RESTART_PAUSE_S = 1.0  # a worker that dies on start-up is not restarted in a tight loop


class ChildProcess:
    """A worker process, kept running: `start`, `send`, `shutdown`.

    `on_frame` gets each frame the worker sends, on a reader thread. `on_exit(code)` is called when
    a running worker ended on its own (crashed, or asked to be replaced), before it is restarted;
    frames still queued are then sent to the new worker unless the owner `discard`s them. `greeting`
    gives the frames every new worker must get first (its settings, its current state).
    """

    def __init__(
        self,
        module: str,
        args: Sequence[str],
        directory: Path,
        *,
        on_frame: Callable[[bytes], None],
        on_exit: Callable[[int], None],
        greeting: Callable[[], Sequence[bytes]] = tuple,
    ) -> None:
        self.module = module
        self._args = list(args)
        self._directory = directory
        self._on_frame = on_frame
        self._on_exit = on_exit
        self._greeting = greeting
        self._queue: deque[bytes] = deque()
        self._queued_bytes = 0
        self._cond = threading.Condition()
        self._conn: Connection | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._started_at = 0.0
        self._stopping = False
        self._unsent: bytes | None = None  # the frame whose send failed: sent once more, to the next worker
        self._resent: bytes | None = None  # the last frame sent once more: if it fails again, it is given up
        self._feeder = threading.Thread(target=self._feed, name=f"{module}-feeder", daemon=True)

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def queued_bytes(self) -> int:
        return self._queued_bytes

    def start(self) -> None:
        with self._cond:
            self._spawn()
        self._feeder.start()

    def send(self, frame: bytes) -> None:
        """Queue a frame for the worker; never blocks."""
        with self._cond:
            self._queue.append(frame)
            self._queued_bytes += len(frame)
            self._cond.notify()

    def discard(self, drop: Callable[[bytes], bool]) -> int:
        """Forget the queued frames `drop` picks (the owner has accounted for them); returns how many."""
        with self._cond:
            kept = [frame for frame in self._queue if not drop(frame)]
            dropped = len(self._queue) - len(kept)
            self._queue.clear()
            self._queue.extend(kept)
            self._queued_bytes = sum(map(len, kept))
        return dropped

    def shutdown(self, farewell: bytes | None, timeout_s: float) -> int | None:
        """Send what is queued, then `farewell` (the frame that makes the worker finish and exit), and
        wait up to `timeout_s` for it to exit; kill it after that. Returns its exit code, None if killed."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            self._stopping = True
            if farewell is not None:
                self._queue.append(farewell)
                self._queued_bytes += len(farewell)
            self._cond.notify_all()
        if self._feeder.is_alive():
            self._feeder.join(max(0.0, deadline - time.monotonic()))
        process = self._process
        code: int | None = None
        if process is not None:
            try:
                code = process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.error("%s did not exit within %.0fs; killing it", self.module, timeout_s)
                process.kill()
                process.wait()
        with self._cond:
            self._disconnect()
            left = len(self._queue)
        if left:
            log.error("%s: stopped with %d frames it never received", self.module, left)
        return code

    def _spawn(self) -> None:
        """Start a worker and put its greeting first in the queue (condition held)."""
        self._process, self._conn = start_connected_worker(self.module, self._args, self._directory)
        self._started_at = time.monotonic()
        greeting = list(self._greeting())
        if self._unsent is not None:
            greeting.append(self._unsent)
        self._resent, self._unsent = self._unsent, None
        self._queue.extendleft(reversed(greeting))
        self._queued_bytes += sum(map(len, greeting))
        self._cond.notify_all()
        threading.Thread(target=self._read, args=(self._conn, self._process), name=f"{self.module}-reader",
                         daemon=True).start()  # fmt: skip

    def _feed(self) -> None:
        while True:
            with self._cond:
                while not self._stopping and (not self._queue or self._conn is None):
                    self._cond.wait()
                if not self._queue or self._conn is None:
                    return  # stopping, and everything was sent (or no worker is left to take it)
                conn, frame = self._conn, self._queue.popleft()
                self._queued_bytes -= len(frame)
            try:
                conn.send_bytes(frame)
            except OSError as exc:
                self._lost_frame(conn, frame, exc)

    def _lost_frame(self, conn: Connection, frame: bytes, exc: OSError) -> None:
        """The worker went away under a send: that frame goes once more, to the next worker; the reader
        thread sees the end and restarts it. A frame that fails twice is given up on."""
        with self._cond:
            if frame is self._resent or self._stopping:
                log.error("%s failed twice on one frame (%s); %d bytes not delivered", self.module, exc, len(frame))
            else:
                self._unsent = frame
            while self._conn is conn and not self._stopping:
                self._cond.wait()

    def _read(self, conn: Connection, process: subprocess.Popen[bytes]) -> None:
        while True:
            try:
                frame = conn.recv_bytes()
            except (EOFError, OSError):
                break
            try:
                self._on_frame(frame)
            except Exception:
                log.exception("%s: its owner failed on a frame; stopping the worker", self.module)
                process.kill()
                break
        with self._cond:
            if self._conn is conn:
                self._disconnect()
            if self._stopping:
                return
        self._on_exit(process.wait())
        if time.monotonic() - self._started_at < _RESTART_PAUSE_S:
            time.sleep(_RESTART_PAUSE_S)
        with self._cond:
            if not self._stopping:
                self._spawn()

    def _disconnect(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
            self._cond.notify_all()


class ParentChannel:
    """A worker's end of the socket: frames from the parent, and frames to it from any thread."""

    def __init__(self, fd: int) -> None:
        self._conn = Connection(fd)
        self._lock = threading.Lock()

    def recv(self) -> bytes | None:
        """The next frame, or None once the parent is gone."""
        try:
            return self._conn.recv_bytes()
        except (EOFError, OSError):
            return None

    def send(self, frame: bytes) -> bool:
        """False when the parent is gone."""
        with self._lock:
            try:
                self._conn.send_bytes(frame)
            except OSError:
                return False
        return True


def start_connected_worker(module: str, args: Sequence[str], directory: Path
                           ) -> tuple[subprocess.Popen[bytes], Connection]:  # fmt: skip
    """A worker and the parent's end of its channel: a socket pair, the worker's end passed as `--fd N`."""
    parent_end, child_end = socket.socketpair()
    for end, option in ((parent_end, socket.SO_SNDBUF), (child_end, socket.SO_RCVBUF)):
        end.setsockopt(socket.SOL_SOCKET, option, _SOCKET_BUFFER)
    process = start_worker(module, [*args, "--fd", str(child_end.fileno())], (child_end.fileno(),), directory)
    child_end.close()
    return process, Connection(parent_end.detach())


def start_worker(module: str, args: Sequence[str], pass_fds: Sequence[int], directory: Path) -> subprocess.Popen[bytes]:
    level = logging.getLevelName(logging.getLogger().getEffectiveLevel())
    directory.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(
        [sys.executable, "-m", module, *args, "--log-level", level],
        stdin=subprocess.DEVNULL,
        pass_fds=tuple(pass_fds),
        start_new_session=True,
        cwd=directory,
    )

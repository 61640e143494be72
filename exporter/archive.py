"""ParquetArchive: every span, log record, trace summary and assessment, as Parquet files.

Turning spans into rows is the most CPU-hungry step of ingest, and Python threads share one core,
so rows are built and written by a child process (exporter/archive_worker.py) fed through a pipe:
the receiver only enqueues bytes. When that queue is full the receiver answers with backpressure
(the client retries) rather than losing spans. Files are written under a hidden temporary name and
renamed when closed, so a reader never sees a torn file; they roll by size and by time, under hive
partitions `<table>/date=YYYY-MM-DD/hour=HH/`.
"""

from __future__ import annotations

import fcntl
import logging
import os
import pickle
import subprocess
import threading
from collections import deque
from pathlib import Path
from typing import Any

from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Observation

from tracejudge.child_process import start_worker
from tracejudge.exporter.archive_worker import ACK, ASSESSMENTS, CLOSE, FLUSH, FRAME, LOGS, SKIPPED, SPANS, TRACES
from tracejudge.exporter.config import ArchiveConfig

log = logging.getLogger(__name__)

# A request is ~0.5 MB; through a default 64 KiB pipe the feeder thread would need the GIL back after
# every 64 KiB, and under load it waits for it each time. 1 MiB is Linux's ceiling for unprivileged pipes.
_PIPE_SIZE = 1 << 20
_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)


class ArchiveFull(Exception):
    """The archive's queue is full; the caller should apply backpressure."""


class ParquetArchive:
    def __init__(self, config: ArchiveConfig, directory: Path, meter: metrics.Meter) -> None:
        self._directory = directory.resolve()  # also the worker's working directory (child_process.py)
        self._args = ["--directory", str(self._directory), "--roll-size", str(config.roll_size),
                      "--roll-interval", str(config.roll_interval)]  # fmt: skip
        self._max_queue = config.max_queue
        self._queue: deque[bytes] = deque()
        self._queued_bytes = 0
        self._cond = threading.Condition()
        self._closing = False
        self._flushes: deque[threading.Event] = deque()
        self._process: subprocess.Popen[bytes] | None = None
        self._input_fd = -1
        self._ack_fd = -1
        self._feeder = threading.Thread(target=self._feed, name="archive-feeder", daemon=True)
        self._written = meter.create_counter(
            "tracejudge.archive.enqueued_items",
            description="Spans, log records, trace and assessment rows sent to the archive",
        )
        self._restarts = meter.create_counter(
            "tracejudge.archive.worker_restarts", description="Archive writer processes restarted after a crash"
        )
        meter.create_observable_gauge(
            "tracejudge.archive.queue_bytes",
            [self._observe_queue],
            unit="By",
            description="Bytes waiting for the archive writer process",
        )

    def start(self) -> None:
        self._spawn()
        self._feeder.start()

    def write_spans(self, payload: bytes, items: int) -> None:
        self._enqueue(SPANS + payload, items, "spans")

    def write_logs(self, payload: bytes, items: int) -> None:
        self._enqueue(LOGS + payload, items, "logs")

    def write_traces(self, summaries: list[dict[str, Any]]) -> None:
        self._write_rows(TRACES, summaries, "traces")

    def write_assessments(self, assessments: list[dict[str, Any]]) -> None:
        self._write_rows(ASSESSMENTS, assessments, "assessments")

    def write_skipped(self, skipped: list[dict[str, Any]]) -> None:
        self._write_rows(SKIPPED, skipped, "skipped")

    def _write_rows(self, kind: bytes, rows: list[dict[str, Any]], table: str) -> None:
        """Rows built by tracejudge (rows.*_SCHEMA) are never refused: their spans were already accepted."""
        self._enqueue(kind + pickle.dumps(rows, protocol=5), len(rows), table, force=True)

    def flush(self, timeout: float = 30.0) -> bool:
        """Close the open files so that everything accepted so far is readable; True when done."""
        done = threading.Event()
        with self._cond:
            self._flushes.append(done)
            self._queue.append(FLUSH)
            self._cond.notify()
        return done.wait(timeout)

    def stop(self, timeout: float = 30.0) -> None:
        with self._cond:
            self._closing = True
            self._queue.append(CLOSE)
            self._cond.notify()
        self._feeder.join(timeout)
        if self._process is None:
            return
        try:
            self._process.wait(timeout)
        except subprocess.TimeoutExpired:
            log.error("archive writer did not stop within %.0fs; terminating it", timeout)
        self._reap()

    def _enqueue(self, message: bytes, items: int, table: str, force: bool = False) -> None:
        with self._cond:
            if self._closing:
                raise ArchiveFull("archive is shutting down")
            if not force and self._queued_bytes + len(message) > self._max_queue:
                raise ArchiveFull(f"archive queue is full ({self._queued_bytes} bytes waiting)")
            self._queue.append(message)
            self._queued_bytes += len(message)
            self._cond.notify()
        self._written.add(items, {"table": table})

    def _feed(self) -> None:
        while True:
            with self._cond:
                while not self._queue:
                    self._cond.wait()
                message = self._queue.popleft()
            self._send(message)
            with self._cond:
                if message not in (FLUSH, CLOSE):
                    self._queued_bytes -= len(message)
            if message == CLOSE:
                return

    def _send(self, message: bytes) -> None:
        """Send one message; if the writer died, restart it and send it again (once)."""
        for attempt in range(2):
            try:
                self._write_frame(message)
                if message in (FLUSH, CLOSE):
                    self._await_ack()
                    if message == FLUSH:
                        self._flushes.popleft().set()
                return
            except OSError as exc:
                log.error("archive writer process is gone (%s, attempt %d); restarting it", exc, attempt + 1)
                self._restarts.add(1)
                self._spawn()
        log.error("archive writer failed twice on one message; %d bytes not archived", len(message))

    def _write_frame(self, message: bytes) -> None:
        view = memoryview(FRAME.pack(len(message)) + message)
        while view:
            view = view[os.write(self._input_fd, view) :]

    def _await_ack(self) -> None:
        if os.read(self._ack_fd, len(ACK)) != ACK:
            raise BrokenPipeError("archive writer exited before acknowledging")

    def _spawn(self) -> None:
        self._reap()
        input_read, self._input_fd = os.pipe()
        self._ack_fd, ack_write = os.pipe()
        try:
            fcntl.fcntl(self._input_fd, _F_SETPIPE_SZ, _PIPE_SIZE)
        except OSError:
            log.debug("could not widen the archive pipe; continuing with the default size")
        fds = ["--input-fd", str(input_read), "--ack-fd", str(ack_write)]
        self._process = start_worker(
            "tracejudge.exporter.archive_worker", [*self._args, *fds], (input_read, ack_write), self._directory
        )
        os.close(input_read)
        os.close(ack_write)

    def _reap(self) -> None:
        if self._process is not None:
            self._process.kill()
            self._process.wait()
            os.close(self._input_fd)
            os.close(self._ack_fd)

    def _observe_queue(self, _options: CallbackOptions) -> list[Observation]:
        return [Observation(self._queued_bytes)]

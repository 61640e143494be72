"""ParquetArchive: every span, log record, trace summary and assessment, as Parquet files.

Turning spans into rows is the most CPU-hungry step of ingest, and Python threads share one core,
so rows are built and written by a worker process (exporter/archive_worker.py, frames in
exporter/archive_protocol.py, run by tracejudge/child_process.py): the receiver only enqueues bytes.
When that queue is full the receiver answers with backpressure (the client retries) rather than
losing spans. Files are written under a hidden temporary name and renamed when closed, so a reader
never sees a torn file; they roll by size and by time, under hive partitions
`<table>/date=YYYY-MM-DD/hour=HH/`.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Observation

from tracejudge.child_process import ChildProcess
from tracejudge.exporter import archive_protocol as protocol
from tracejudge.exporter.config import ArchiveConfig

log = logging.getLogger(__name__)


class ArchiveFull(Exception):
    """The archive's queue is full; the caller should apply backpressure."""


class ParquetArchive:
    def __init__(self, config: ArchiveConfig, directory: Path, meter: metrics.Meter) -> None:
        directory = directory.resolve()  # also the writer's working directory (child_process.py says why)
        args = ["--directory", str(directory), "--roll-size", str(config.roll_size),
                "--roll-interval", str(config.roll_interval)]  # fmt: skip
        self._writer = ChildProcess("tracejudge.exporter.archive_worker", args, directory,
                                    on_frame=self._acknowledged, on_exit=self._writer_died)  # fmt: skip
        self._max_queue = config.max_queue
        self._closing = False
        self._flushes: deque[threading.Event] = deque()  # FLUSH frames sent, in order, not yet acknowledged
        self._lock = threading.Lock()
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
        self._writer.start()

    def write_spans(self, payload: bytes, items: int) -> None:
        """An accepted ExportTraceServiceRequest's bytes; ArchiveFull when the writer is too far behind."""
        self._enqueue(protocol.SPANS + payload, items, "spans")

    def write_logs(self, payload: bytes, items: int) -> None:
        self._enqueue(protocol.LOGS + payload, items, "logs")

    def write_rows(self, table: str, rows: Sequence[Mapping[str, Any]]) -> None:
        """Rows built by tracejudge for `table` (traces, assessments, skipped; rows.*_SCHEMA)."""
        self.write_rows_frame(protocol.rows_frame(table, rows), len(rows))

    def write_rows_frame(self, frame: bytes, items: int) -> None:
        """Rows already framed where they were built (archive_protocol.rows_frame). They are never refused:
        the spans they describe were already accepted."""
        self._enqueue(frame, items, protocol.table_of(frame), force=True)

    def flush(self, timeout_s: float = 30.0) -> bool:
        """Close the open files so that everything accepted so far is readable; True when done."""
        done = threading.Event()
        with self._lock:
            self._flushes.append(done)
            self._writer.send(protocol.FLUSH)
        return done.wait(timeout_s)

    def shutdown(self, timeout_s: float = 30.0) -> None:
        """Write out everything queued and close the files; kill the writer if it takes over `timeout_s`."""
        with self._lock:
            self._closing = True
        self._writer.shutdown(protocol.CLOSE, timeout_s)

    def _enqueue(self, frame: bytes, items: int, table: str, force: bool = False) -> None:
        if self._closing:
            raise ArchiveFull("archive is shutting down")
        waiting = self._writer.queued_bytes
        if not force and waiting + len(frame) > self._max_queue:
            raise ArchiveFull(f"archive queue is full ({waiting} bytes waiting)")
        self._writer.send(frame)
        self._written.add(items, {"table": table})

    def _acknowledged(self, frame: bytes) -> None:
        if frame == protocol.ACK:
            with self._lock:
                if self._flushes:
                    self._flushes.popleft().set()

    def _writer_died(self, code: int) -> None:
        """A new writer starts with no open files: a flush the dead one never acknowledged is asked again."""
        log.error("archive writer process is gone (exit code %s); restarting it", code)
        self._restarts.add(1)
        with self._lock:
            for _ in self._flushes:
                self._writer.send(protocol.FLUSH)

    def _observe_queue(self, _options: CallbackOptions) -> list[Observation]:
        return [Observation(self._writer.queued_bytes)]

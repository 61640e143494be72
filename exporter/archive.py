"""ParquetArchive: every span, log record, trace summary and assessment, as Parquet files.

Turning spans into rows is the most CPU-hungry step of ingest, and Python threads share one core,
so rows are built and written by a worker process (exporter/archive_worker.py, frames in
exporter/archive_protocol.py, run by tracejudge/child_process.py). Spans and log records come from
the write-ahead log (tracejudge/wal.py) through the archive's own cursor: a feeder thread sends them
to the writer, at most `max_queue` bytes ahead of it, and every `roll_interval` asks it to close its
files; once it confirms, the cursor is committed up to what was sent before. So rows that die with
the writer (a kill, a crash) are written again from the log: none are lost, a few may be written
twice (those of files closed by size since the last commit). Files are written under a hidden
temporary name and renamed when closed, so a reader never sees a torn file; they roll by size and
by time, under hive partitions `<table>/date=YYYY-MM-DD/hour=HH/`. On object storage (`s3://bucket/prefix`,
exporter/archive_store.py) the writer writes in a local spool directory and uploads each file as it closes;
a flush is acknowledged only once its files are uploaded, so the cursor never passes rows the store lacks.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Observation

from tracejudge.child_process import ChildProcess
from tracejudge.exporter import archive_protocol as protocol
from tracejudge.exporter.archive_store import is_uri
from tracejudge.exporter.config import ArchiveConfig
from tracejudge.model import Signal
from tracejudge.wal import Cursor, LogFull, RecordKind, WriteAheadLog

log = logging.getLogger(__name__)


_FRAMES = {Signal.TRACES: protocol.SPANS, Signal.LOGS: protocol.LOGS}


class ParquetArchive:
    def __init__(self, config: ArchiveConfig, directory: str | Path, meter: metrics.Meter, cursor: Cursor | None,
                 flush_behind_bytes: int = 2**62, wal: WriteAheadLog | None = None,
                 spool: Path | None = None) -> None:  # fmt: skip
        """`directory`: a path, or a URI such as s3://bucket/prefix (then `spool`, a local directory, holds the
        files until they are uploaded; `config.s3` says how to reach the store).
        `cursor`: where spans and log records come from (None: only rows written with write_rows).
        `flush_behind_bytes`: also close the files early once the cursor holds this much of the log
        uncommitted, so the archive never fills the log (at 40k spans/s, 60 s of spans is ~2 GB).
        `wal`: the log `cursor` reads; rows given to write_rows are appended to it (RecordKind.ROWS) and
        come back through the cursor, so a kill loses them no more than it loses spans."""
        if is_uri(directory):
            if spool is None:
                raise ValueError(f"archive {directory}: object storage needs a local spool directory")
            workdir = spool.resolve()  # the writer's working directory (child_process.py says why)
            location = str(directory)
        else:
            workdir = Path(directory).resolve()
            location = str(workdir)
        args = ["--directory", location, "--roll-size", str(config.roll_size),
                "--roll-interval", str(config.roll_interval)]  # fmt: skip
        if is_uri(directory):
            s3 = config.s3.model_dump_json(exclude_unset=True) if config.s3 is not None else "{}"
            args += ["--spool", str(workdir / "files"), "--s3", s3]
        self._writer = ChildProcess("tracejudge.exporter.archive_worker", args, workdir,
                                    on_frame=self._acknowledged, on_exit=self._writer_died)  # fmt: skip
        self._max_queue = config.max_queue
        self._roll_interval = config.roll_interval
        self._cursor = cursor
        self._wal = wal if cursor is not None else None
        self._flush_behind_bytes = flush_behind_bytes
        self._feeder = threading.Thread(target=self._feed, name="archive-feeder", daemon=True)
        self._draining = threading.Event()
        self._rewind = threading.Event()
        self._deaths = 0  # writer processes lost: a flush across one does not prove the rows closed
        self._store_down = threading.Event()  # the writer waits for an object store (until it acknowledges again)
        self._flushes: deque[threading.Event] = deque()  # FLUSH frames sent, in order, not yet acknowledged
        self._lock = threading.Lock()
        self._written = meter.create_counter(
            "tracejudge.archive.enqueued_items",
            description="Spans, log records, trace and assessment rows sent to the archive",
        )
        self._restarts = meter.create_counter(
            "tracejudge.archive.worker_restarts", description="Archive writer processes restarted after a crash"
        )
        # Exposed at 0 from the start: Prometheus's increase() cannot see a first restart in a series
        # that only appears with it (deploy/prometheus/alerts.yaml alerts on that increase).
        self._restarts.add(0)
        meter.create_observable_gauge(
            "tracejudge.archive.queue_bytes",
            [self._observe_queue],
            unit="By",
            description="Bytes waiting for the archive writer process",
        )

    def start(self) -> None:
        self._writer.start()
        if self._cursor is not None:
            self._feeder.start()

    def write_rows(self, table: str, rows: Sequence[Mapping[str, Any]]) -> None:
        """Rows built by tracejudge for `table` (traces, assessments, skipped; rows.*_SCHEMA)."""
        self.write_rows_frame(protocol.rows_frame(table, rows), len(rows))

    def write_rows_frame(self, frame: bytes, items: int) -> None:
        """Rows already framed where they were built (archive_protocol.rows_frame). They are never refused:
        the spans they describe were already accepted."""
        if self._wal is None:
            self._enqueue(frame, items, protocol.table_of(frame))
            return
        try:
            self._wal.append(Signal.TRACES, frame, items, RecordKind.ROWS, force=True)
        except LogFull:  # only once the log is closed, at the very end of a shutdown
            log.error("archive: %d %s rows came after the write-ahead log closed; not archived", items,
                      protocol.table_of(frame))  # fmt: skip

    def flush(self, timeout_s: float = 30.0) -> bool:
        """Close the open files so that everything accepted so far is readable; True when done."""
        done = threading.Event()
        with self._lock:
            self._flushes.append(done)
            self._writer.send(protocol.FLUSH)
        deadline = time.monotonic() + timeout_s
        while not done.wait(min(0.2, max(0.0, deadline - time.monotonic()))):
            if time.monotonic() >= deadline or (self._draining.is_set() and self._store_down.is_set()):
                return False  # a stop does not wait for an object store that is away: the log keeps the rows
        return True

    def shutdown(self, timeout_s: float = 30.0) -> None:
        """Archive everything logged, close the files, commit the cursor; kill the writer if it takes
        over `timeout_s` (then what it held is written again from the log at the next start)."""
        deadline = time.monotonic() + timeout_s
        self._draining.set()
        if self._feeder.is_alive():
            self._feeder.join(max(0.0, deadline - time.monotonic()))
        sent_until = self._cursor.position if self._cursor is not None else 0
        if self._store_down.is_set():  # it cannot upload: stop it now, not at the deadline; the log keeps the rows
            log.warning("archive: the object store is away; what was not uploaded is archived after the next start")
            deadline = time.monotonic() + 1.0
        code = self._writer.shutdown(protocol.CLOSE, max(1.0, deadline - time.monotonic()))
        if code == 0 and self._cursor is not None and not self._feeder.is_alive():
            self._cursor.commit(sent_until)

    def _enqueue(self, frame: bytes, items: int, table: str) -> None:
        self._writer.send(frame)
        self._written.add(items, {"table": table})

    def _feed(self) -> None:
        """Log records to the writer, committed after the files holding them are closed."""
        assert self._cursor is not None
        cursor = self._cursor
        next_commit = time.monotonic() + self._roll_interval
        next_check = 0.0
        while True:
            if time.monotonic() >= next_check:
                next_check = time.monotonic() + 0.2
                if cursor.behind_bytes > self._flush_behind_bytes:
                    next_commit = 0.0
            if self._rewind.is_set():
                self._rewind.clear()
                self._writer.discard(lambda frame: frame[:1] in self._logged_frames)
                cursor.rewind()
            if time.monotonic() >= next_commit:
                sent_until, deaths = cursor.position, self._deaths
                if self.flush(self._roll_interval + 30.0) and deaths == self._deaths and not self._rewind.is_set():
                    cursor.commit(sent_until)
                next_commit = time.monotonic() + self._roll_interval
            if self._writer.queued_bytes > self._max_queue:  # the writer is behind: let it catch up
                time.sleep(0.01)
                continue
            record = cursor.next(timeout=0.2)
            if record is None:
                if self._draining.is_set():
                    return
                continue
            frame_kind = _FRAMES.get(record.signal)
            if record.kind is RecordKind.ROWS:
                self._enqueue(record.payload, record.items, protocol.table_of(record.payload))
            elif frame_kind is not None and record.kind is RecordKind.INGEST:  # verdicts have their own rows
                table = "spans" if record.signal is Signal.TRACES else "logs"
                self._enqueue(frame_kind + record.payload, record.items, table)

    @property
    def _logged_frames(self) -> frozenset[bytes]:
        """Frames a rewind sends again from the log, so those a dead writer held are dropped from its queue."""
        logged = frozenset({protocol.SPANS, protocol.LOGS})
        return logged | protocol.ROW_KINDS if self._wal is not None else logged

    def _acknowledged(self, frame: bytes) -> None:
        if frame == protocol.STORE_DOWN:
            self._store_down.set()
        elif frame == protocol.ACK:
            self._store_down.clear()
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
        self._deaths += 1
        self._rewind.set()  # what the dead writer held in open files is sent again from the log

    def _observe_queue(self, _options: CallbackOptions) -> list[Observation]:
        return [Observation(self._writer.queued_bytes)]

"""ParquetArchive: every span, GenAI-relevant log record and trace summary, as Parquet files.

Turning spans into rows is the most CPU-hungry step of ingest, and Python threads share one core,
so rows are built and written in a child process fed through a pipe: the receiver only enqueues
bytes. When that queue is full the receiver answers with backpressure (the client retries) rather
than losing spans. Files are written under a hidden temporary name and renamed when closed, so a
reader never sees a torn file; they roll by size and by time, under hive partitions
`<table>/date=YYYY-MM-DD/hour=HH/`.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import threading
import time
from collections import deque
from dataclasses import dataclass
from datetime import datetime, timezone
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from tracejudge.config import ArchiveConfig
from tracejudge.exporter import rows

log = logging.getLogger(__name__)

_SPANS, _LOGS, _TRACES, _FLUSH, _CLOSE = b"S", b"L", b"T", b"F", b"C"


class ArchiveFull(Exception):
    """The archive's queue is full; the caller should apply backpressure."""


@dataclass(frozen=True)
class _WorkerSettings:
    directory: str
    roll_size: int
    roll_interval: float
    log_level: int


class ParquetArchive:
    def __init__(self, config: ArchiveConfig, directory: Path, meter: metrics.Meter) -> None:
        self._settings = _WorkerSettings(
            str(directory), config.roll_size, config.roll_interval, logging.getLogger().getEffectiveLevel()
        )
        self._max_queue = config.max_queue
        self._queue: deque[bytes] = deque()
        self._queued_bytes = 0
        self._cond = threading.Condition()
        self._closing = False
        self._flushes: deque[threading.Event] = deque()
        self._process: Any = None
        self._conn: Connection | None = None
        self._feeder = threading.Thread(target=self._feed, name="archive-feeder", daemon=True)
        self._written = meter.create_counter(
            "tracejudge.archive.enqueued_items", description="Spans, log records and trace rows sent to the archive"
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
        self._enqueue(_SPANS + payload, items, "spans")

    def write_logs(self, payload: bytes, items: int) -> None:
        self._enqueue(_LOGS + payload, items, "logs")

    def write_traces(self, summaries: list[dict[str, Any]]) -> None:
        """Trace summaries are never refused: they are small and their spans were already accepted."""
        self._enqueue(_TRACES + json.dumps(summaries).encode(), len(summaries), "traces", force=True)

    def flush(self, timeout: float = 30.0) -> bool:
        """Close the open files so that everything accepted so far is readable; True when done."""
        done = threading.Event()
        with self._cond:
            self._flushes.append(done)
            self._queue.append(_FLUSH)
            self._cond.notify()
        return done.wait(timeout)

    def stop(self, timeout: float = 30.0) -> None:
        with self._cond:
            self._closing = True
            self._queue.append(_CLOSE)
            self._cond.notify()
        self._feeder.join(timeout)
        if self._process is not None:
            self._process.join(timeout)
            if self._process.is_alive():
                log.error("archive writer did not stop within %.0fs; terminating it", timeout)
                self._process.terminate()

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
                if message not in (_FLUSH, _CLOSE):
                    self._queued_bytes -= len(message)
            if message == _CLOSE:
                return

    def _send(self, message: bytes) -> None:
        for attempt in range(2):
            try:
                assert self._conn is not None
                self._conn.send_bytes(message)
                if message in (_FLUSH, _CLOSE):
                    self._conn.recv_bytes()
                    if message == _FLUSH:
                        self._flushes.popleft().set()
                return
            except (OSError, EOFError):
                log.exception("archive writer process is gone (attempt %d); restarting it", attempt + 1)
                self._restarts.add(1)
                self._spawn()
        log.error("archive writer failed twice on one message; %d bytes not archived", len(message))

    def _spawn(self) -> None:
        context = multiprocessing.get_context("spawn")
        parent, child = context.Pipe()
        self._process = context.Process(
            target=run_worker, args=(child, self._settings), name="tracejudge-archive", daemon=True
        )
        self._process.start()
        child.close()
        self._conn = parent

    def _observe_queue(self, _options: CallbackOptions) -> list[Observation]:
        return [Observation(self._queued_bytes)]


def run_worker(conn: Connection, settings: _WorkerSettings) -> None:
    """The child process: decode, build rows, write Parquet; acknowledges flush and close."""
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s archive: %(message)s")
    root = Path(settings.directory)
    tables = {
        _SPANS: TableWriter(root / "spans", rows.SPANS_SCHEMA, settings.roll_size, settings.roll_interval),
        _LOGS: TableWriter(root / "logs", rows.LOGS_SCHEMA, settings.roll_size, settings.roll_interval),
        _TRACES: TableWriter(root / "traces", rows.TRACES_SCHEMA, settings.roll_size, settings.roll_interval),
    }
    while True:
        if conn.poll(0.5):
            message = conn.recv_bytes()
            kind, payload = message[:1], message[1:]
            if kind in (_FLUSH, _CLOSE):
                for table in tables.values():
                    table.close()
                conn.send_bytes(b"ok")
                if kind == _CLOSE:
                    return
                continue
            try:
                tables[kind].append(_decode(kind, payload))
            except Exception:
                log.exception("could not archive a %r message of %d bytes", kind, len(payload))
        for table in tables.values():
            table.roll_if_due()


def _decode(kind: bytes, payload: bytes) -> pa.RecordBatch:
    if kind == _SPANS:
        return rows.spans_batch(ExportTraceServiceRequest.FromString(payload))
    if kind == _LOGS:
        return rows.logs_batch(ExportLogsServiceRequest.FromString(payload))
    return rows.traces_batch(json.loads(payload))


class TableWriter:
    """One table's open file: buffers batches into row groups, rolls by size, time and hour."""

    ROW_GROUP_ROWS = 16_384

    def __init__(self, directory: Path, schema: pa.Schema, roll_size: int, roll_interval: float) -> None:
        self._directory = directory
        self._schema = schema
        self._roll_size = roll_size
        self._roll_interval = roll_interval
        self._pending: list[pa.RecordBatch] = []
        self._pending_rows = 0
        self._writer: pq.ParquetWriter | None = None
        self._temp: Path | None = None
        self._final: Path | None = None
        self._started_at = 0.0
        self._partition = ""
        self._sequence = 0

    def append(self, batch: pa.RecordBatch) -> None:
        if batch.num_rows == 0:
            return
        if not self._pending and self._writer is None:
            self._started_at = time.monotonic()
        self._pending.append(batch)
        self._pending_rows += batch.num_rows
        if self._pending_rows >= self.ROW_GROUP_ROWS:
            self._write_pending()

    def roll_if_due(self) -> None:
        """Close the file once it covers `roll_interval` seconds, or when the hour changes."""
        if not self._pending and self._writer is None:
            return
        expired = time.monotonic() - self._started_at >= self._roll_interval
        if expired or (self._writer is not None and _partition(time.time()) != self._partition):
            self.close()

    def close(self) -> None:
        self._write_pending()
        self._close_file()

    def _close_file(self) -> None:
        if self._writer is None:
            return
        self._writer.close()
        assert self._temp is not None and self._final is not None
        os.replace(self._temp, self._final)
        self._writer = self._temp = self._final = None

    def _write_pending(self) -> None:
        if not self._pending:
            return
        table = pa.Table.from_batches(self._pending, schema=self._schema)
        self._pending, self._pending_rows = [], 0
        if self._writer is not None and _partition(time.time()) != self._partition:
            self._close_file()
        if self._writer is None:
            self._open()
        assert self._writer is not None and self._temp is not None
        self._writer.write_table(table)
        if self._temp.stat().st_size >= self._roll_size:
            self._close_file()

    def _open(self) -> None:
        now = time.time()
        self._partition = _partition(now)
        directory = self._directory / self._partition
        directory.mkdir(parents=True, exist_ok=True)
        self._sequence += 1
        name = f"part-{int(now * 1000)}-{os.getpid()}-{self._sequence:06d}.parquet"
        self._final = directory / name
        self._temp = directory / f".{name}.tmp"
        self._writer = pq.ParquetWriter(self._temp, self._schema, compression="zstd")


def _partition(epoch_seconds: float) -> str:
    moment = datetime.fromtimestamp(epoch_seconds, tz=timezone.utc)
    return f"date={moment:%Y-%m-%d}/hour={moment:%H}"

"""The archive writer process: OTLP bytes in on stdin, Parquet files out.

Started by ParquetArchive as `python -m tracejudge.exporter.archive_worker` in its own session, so
a Ctrl-C or a SIGTERM sent to tracejudge's process group never reaches it: the parent decides when
it stops, after sending it everything. End of file on the input (the parent is gone) closes the
files the same way as an orderly stop.

Input and acknowledgements travel on two pipes of their own, not stdin/stdout: a process that an
import starts inherits stdin, and would keep a dead worker's pipe open, so writes to it would
succeed into the void. Framing: 4-byte big-endian length, then one kind byte and the payload. The
worker answers b"k" after each flush or close.
"""

from __future__ import annotations

import argparse
import logging
import os
import pickle
import queue
import struct
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from tracejudge.exporter import rows
from tracejudge.logs import configure_logging

log = logging.getLogger("tracejudge.archive")

SPANS, LOGS, TRACES, ASSESSMENTS, SKIPPED, FLUSH, CLOSE = b"S", b"L", b"T", b"A", b"K", b"F", b"C"
# Tables whose messages are pickled lists of row dicts (built in tracejudge, not decoded from OTLP).
ROW_TABLES = {
    TRACES: ("traces", rows.TRACES_SCHEMA),
    ASSESSMENTS: ("assessments", rows.ASSESSMENTS_SCHEMA),
    SKIPPED: ("skipped", rows.SKIPPED_SCHEMA),
}
FRAME = struct.Struct(">I")
ACK = b"k"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--directory", type=Path, required=True)
    parser.add_argument("--roll-size", type=int, required=True)
    parser.add_argument("--roll-interval", type=float, required=True)
    parser.add_argument("--log-level", default="INFO")
    parser.add_argument("--input-fd", type=int, required=True)
    parser.add_argument("--ack-fd", type=int, required=True)
    args = parser.parse_args(argv)
    os.set_inheritable(args.input_fd, False)
    os.set_inheritable(args.ack_fd, False)
    configure_logging(args.log_level)
    schemas = {SPANS: ("spans", rows.SPANS_SCHEMA), LOGS: ("logs", rows.LOGS_SCHEMA), **ROW_TABLES}
    tables = {
        kind: TableWriter(args.directory / name, schema, args.roll_size, args.roll_interval)
        for kind, (name, schema) in schemas.items()
    }
    serve(args.input_fd, args.ack_fd, tables)


def serve(source: int, acks: int, tables: dict[bytes, TableWriter]) -> None:
    """Read messages on a thread so the main loop can roll files on time while input is idle."""
    inbox: queue.Queue[bytes] = queue.Queue(maxsize=8)
    threading.Thread(target=_read_messages, args=(source, inbox), name="archive-reader", daemon=True).start()
    while True:
        try:
            message = inbox.get(timeout=0.5)
        except queue.Empty:
            message = b""
        kind, payload = message[:1], message[1:]
        if kind in (FLUSH, CLOSE):
            for table in tables.values():
                table.close()
            _acknowledge(acks)
            if kind == CLOSE:
                return
        elif kind:
            try:
                tables[kind].append(_decode(kind, payload))
            except Exception:
                log.exception("could not archive a %r message of %d bytes", kind, len(payload))
        for table in tables.values():
            table.roll_if_due()


def _read_messages(source: int, inbox: queue.Queue[bytes]) -> None:
    while (header := _read_exact(source, FRAME.size)) is not None:
        message = _read_exact(source, FRAME.unpack(header)[0])
        if message is None:
            break
        inbox.put(message)
    log.info("input closed; closing the archive files")
    inbox.put(CLOSE)


def _read_exact(fd: int, size: int) -> bytes | None:
    """`size` bytes, or None at end of file. Raw reads: no buffered-reader lock to trip shutdown."""
    chunks, remaining = [], size
    while remaining:
        chunk = os.read(fd, min(remaining, 1 << 20))
        if not chunk:
            return None
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


def _acknowledge(acks: int) -> None:
    try:
        os.write(acks, ACK)
    except OSError:
        log.warning("could not acknowledge: tracejudge is gone")


def _decode(kind: bytes, payload: bytes) -> pa.RecordBatch:
    if kind == SPANS:
        return rows.spans_batch(ExportTraceServiceRequest.FromString(payload))
    if kind == LOGS:
        return rows.logs_batch(ExportLogsServiceRequest.FromString(payload))
    return pa.RecordBatch.from_pylist(pickle.loads(payload), schema=ROW_TABLES[kind][1])


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


if __name__ == "__main__":
    main()

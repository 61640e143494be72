"""The archive writer process: OTLP bytes and row frames in, Parquet files out.

Started by ParquetArchive as `python -m tracejudge.exporter.archive_worker` (tracejudge/child_process.py
says how and why), speaking exporter/archive_protocol.py. The end of its channel (the parent is gone)
closes the files the same way as an orderly stop.

On object storage (`--directory s3://...`, exporter/archive_store.py) files are written in `--spool` and
uploaded when closed. An upload that fails ends this process (exit code 3) after saying why: the parent
then restarts it and sends again, from the write-ahead log, everything since its cursor's last commit, which
never moved past a file that was not uploaded. So nothing acknowledged is lost while the store is away. A
new writer first waits, with backoff, until the store answers: rows are built only when they can be uploaded,
not again every roll interval of an outage (the parent holds at most archive.max_queue bytes meanwhile).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import queue
import shutil
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from tracejudge.child_process import ParentChannel
from tracejudge.exporter import rows
from tracejudge.exporter.archive_protocol import ACK, CLOSE, FLUSH, LOGS, SPANS, STORE_DOWN, TABLES, decode_rows
from tracejudge.exporter.archive_store import (
    ArchiveUploadError,
    S3Options,
    TablePlace,
    is_uri,
    location_text,
    store_problem,
)
from tracejudge.logs import configure_logging

log = logging.getLogger("tracejudge.archive")

SCHEMAS: dict[str, pa.Schema] = {"spans": rows.SPANS_SCHEMA, "logs": rows.LOGS_SCHEMA, "traces": rows.TRACES_SCHEMA,
                                 "assessments": rows.ASSESSMENTS_SCHEMA, "skipped": rows.SKIPPED_SCHEMA}  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--directory", required=True, help="the archive: a path, or a URI such as s3://bucket/prefix")
    parser.add_argument("--spool", type=Path, help="where files are written before upload (object storage only)")
    parser.add_argument("--s3", default="{}", help="archive.s3 options, as JSON")
    parser.add_argument("--roll-size", type=int, required=True)
    parser.add_argument("--roll-interval", type=float, required=True)
    parser.add_argument("--log-level", default="INFO")
    parser.add_argument("--fd", type=int, required=True, help="the channel to the parent")
    args = parser.parse_args(argv)
    os.set_inheritable(args.fd, False)
    configure_logging(args.log_level)
    location: str | Path = args.directory if is_uri(args.directory) else Path(args.directory)
    if args.spool is not None and args.spool.is_dir():
        shutil.rmtree(args.spool)  # a dead writer's files, open or not uploaded: their rows come again from the log
    s3 = S3Options.model_validate(json.loads(args.s3))
    channel = ParentChannel(args.fd)
    _wait_for_store(location, s3, channel)
    places = {kind: TablePlace.of(location, name, s3, args.spool) for kind, name in TABLES.items()}
    tables = {kind: TableWriter(place, SCHEMAS[TABLES[kind]], args.roll_size, args.roll_interval)
              for kind, place in places.items()}  # fmt: skip
    try:
        serve(channel, tables)
    except ArchiveUploadError as exc:
        log.error(
            "archive: %s; the writer stops and starts again, and the rows it held are written again "
            "from the write-ahead log (which keeps them) until %s takes them",
            exc,
            location_text(location),
        )
        sys.exit(3)


def _wait_for_store(location: str | Path, s3: S3Options, channel: ParentChannel, longest_s: float = 30.0) -> None:
    """Until the store answers; the parent is told, so that a stop meanwhile does not wait for this writer."""
    delay = 1.0
    while (problem := store_problem(location, s3)) is not None:
        if delay == 1.0:
            channel.send(STORE_DOWN)
        log.error("archive: %s; trying again in %.0fs (the write-ahead log keeps what arrives meanwhile)", problem,
                  delay)  # fmt: skip
        time.sleep(delay)
        delay = min(delay * 2, longest_s)


def serve(channel: ParentChannel, tables: dict[bytes, TableWriter]) -> None:
    """Read frames on a thread so the main loop can roll files on time while input is idle."""
    inbox: queue.Queue[bytes] = queue.Queue(maxsize=8)
    threading.Thread(target=_read_frames, args=(channel, inbox), name="archive-reader", daemon=True).start()
    while True:
        try:
            frame = inbox.get(timeout=0.5)
        except queue.Empty:
            frame = b""
        kind, payload = frame[:1], frame[1:]
        if kind in (FLUSH, CLOSE):
            for table in tables.values():
                table.close()
            if not channel.send(ACK):
                log.warning("could not acknowledge: tracejudge is gone")
            if kind == CLOSE:
                return
        elif kind:
            try:
                tables[kind].append(_decode(kind, payload))
            except ArchiveUploadError:
                raise  # a file closed by size that did not reach the store: not a bad frame, the store is away
            except Exception:
                log.exception("could not archive a %r frame of %d bytes", kind, len(payload))
        for table in tables.values():
            table.roll_if_due()


def _read_frames(channel: ParentChannel, inbox: queue.Queue[bytes]) -> None:
    while (frame := channel.recv()) is not None:
        inbox.put(frame)
    log.info("input closed; closing the archive files")
    inbox.put(CLOSE)


def _decode(kind: bytes, payload: bytes) -> pa.RecordBatch:
    if kind == SPANS:
        return rows.spans_batch(ExportTraceServiceRequest.FromString(payload))
    if kind == LOGS:
        return rows.logs_batch(ExportLogsServiceRequest.FromString(payload))
    return pa.RecordBatch.from_pylist(decode_rows(payload), schema=SCHEMAS[TABLES[kind]])


class TableWriter:
    """One table's open file: buffers batches into row groups, rolls by size, time and hour."""

    ROW_GROUP_ROWS = 16_384

    def __init__(
        self,
        directory: Path | TablePlace,
        schema: pa.Schema,
        roll_size: int,
        roll_interval: float,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        """`directory`: the table's directory, or where its files go (a TablePlace: object storage).
        `wall_clock` (epoch seconds) picks the hour partition; tests pass their own to write several hours."""
        self._place = directory if isinstance(directory, TablePlace) else TablePlace(directory)
        self._wall_clock = wall_clock
        self._schema = schema
        self._roll_size = roll_size
        self._roll_interval = roll_interval
        self._pending: list[pa.RecordBatch] = []
        self._pending_rows = 0
        self._writer: pq.ParquetWriter | None = None
        self._temp: Path | None = None
        self._name = ""
        self._started_at = 0.0
        self._partition = ""
        self._sequence = 0
        self._token = os.urandom(3).hex()

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
        if expired or (self._writer is not None and rows.partition_of(self._wall_clock()) != self._partition):
            self.close()

    def close(self) -> None:
        self._write_pending()
        self._close_file()

    def _close_file(self) -> None:
        if self._writer is None:
            return
        self._writer.close()
        assert self._temp is not None
        temp, self._writer, self._temp = self._temp, None, None
        self._place.publish(temp, self._partition, self._name)  # rename, or upload: then the file is closed

    def _write_pending(self) -> None:
        if not self._pending:
            return
        table = pa.Table.from_batches(self._pending, schema=self._schema)
        self._pending, self._pending_rows = [], 0
        if self._writer is not None and rows.partition_of(self._wall_clock()) != self._partition:
            self._close_file()
        if self._writer is None:
            self._open()
        assert self._writer is not None and self._temp is not None
        self._writer.write_table(table)
        if self._temp.stat().st_size >= self._roll_size:
            self._close_file()

    def _open(self) -> None:
        now = self._wall_clock()
        self._partition = rows.partition_of(now)
        directory = self._place.local / self._partition
        directory.mkdir(parents=True, exist_ok=True)
        self._sequence += 1
        # The writer's token keeps names apart where several hosts share one bucket (their pids may be equal).
        self._name = f"part-{int(now * 1000)}-{os.getpid()}-{self._token}-{self._sequence:06d}.parquet"
        self._temp = directory / f".{self._name}.tmp"
        self._writer = pq.ParquetWriter(self._temp, self._schema, compression="zstd")


if __name__ == "__main__":
    main()

"""The write-ahead log: every accepted export request, on disk before the receiver answers OK.

    receivers ──append──► log segments ◄──cursor── forwarder (one per endpoint) / archive / assembler

One log, shared by every consumer; each consumer reads it through a cursor of its own and commits
a position only once it is done with what lies before it (delivered downstream; in a closed Parquet
file; its traces decided). At start every cursor resumes from its committed position, so whatever
was acknowledged but not finished is replayed: at-least-once, never lost. A segment file is deleted
once every cursor has passed it.

Layout under `directory`: segments `<first record number, 20 digits>.wal`, each a run of records
(header `>BBIII`: signal code, kind, item count, payload length, CRC-32 of the payload; then the
payload), and `cursors/<name>` holding the committed record number as text. A torn or corrupt tail
(a kill mid-write) is cut off on load with a warning.

fsync policy (`wal.fsync`):
- `never`: records are written to the kernel with one writev each; they survive a process kill
  (SIGKILL, OOM), not a power loss or kernel crash.
- `interval` (default): as `never`, plus an fdatasync of the active segment every `fsync_interval`
  (1 s), so a power loss loses at most that much.
- `always`: an fdatasync after every append, before the OK; survives a power loss, costs one disk
  flush per request (bench/ingest.py reports the figure).

Recent payloads are also kept in memory (`memory_cache` bytes), so a consumer that keeps up never
reads the disk; only one that lags (an outage downstream) or a replay reads the segments back.
With `enabled: false` the segments live in memory only (a baseline for bench/ingest.py; nothing
survives a restart).
"""

from __future__ import annotations

import enum
import logging
import os
import re
import struct
import threading
import time
import zlib
from collections import deque
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, NamedTuple

from opentelemetry.metrics import CallbackOptions, Meter, Observation
from pydantic import Field

from tracejudge.config import ByteSize, Duration, StrictConfig
from tracejudge.model import Signal

__all__ = ["RECORD_HEADER_BYTES", "Cursor", "LogFull", "Record", "RecordKind", "WalConfig", "WriteAheadLog"]

log = logging.getLogger(__name__)

_HEADER = struct.Struct(">BBIII")
RECORD_HEADER_BYTES = _HEADER.size
_CODES: dict[Signal, int] = {Signal.TRACES: 1, Signal.METRICS: 2, Signal.LOGS: 3}
_SIGNALS: dict[int, Signal] = {code: signal for signal, code in _CODES.items()}
_NAME = re.compile(r"(\d{20})\.wal")


class WalConfig(StrictConfig):
    """The `wal:` keys."""

    enabled: bool = True  # false: segments in memory only (benchmark baseline; nothing survives a restart)
    fsync: Literal["never", "interval", "always"] = "interval"
    fsync_interval: Duration = 1.0
    max_size: ByteSize = 1 * 2**30  # all segments together; beyond it see when_full
    when_full: Literal["refuse", "drop_oldest"] = "refuse"
    segment_size: ByteSize = 16 * 2**20
    memory_cache: ByteSize = 64 * 2**20  # recent payloads kept in memory for consumers that keep up
    commit_interval: Duration = Field(default=0.2, gt=0)  # how often cursor positions are written out


class RecordKind(enum.IntEnum):
    INGEST = 0  # an app's export request: every forward endpoint, the archive, the assembler
    VERDICTS = 1  # tracejudge's own verdicts: only the verdicts endpoint (never the archive's spans)
    ROWS = 2  # archive rows tracejudge built (traces, assessments, skipped): only the archive


_KINDS = frozenset(kind.value for kind in RecordKind)


class Record(NamedTuple):
    number: int
    signal: Signal
    kind: RecordKind
    payload: bytes
    items: int


class LogFull(Exception):
    """The log is at `max_size` and its policy is to refuse: the receiver pushes back (retryable)."""


@dataclass(eq=False)
class _Segment:
    first: int
    path: Path | None
    offsets: list[int] = field(default_factory=list)  # byte offset of each record
    size: int = 0
    fd: int = -1
    memory: bytearray | None = None
    cached: dict[int, Record] = field(default_factory=dict)

    @property
    def end(self) -> int:
        """One past the last record's number."""
        return self.first + len(self.offsets)


class WriteAheadLog:
    def __init__(self, directory: Path, config: WalConfig, meter: Meter | None = None) -> None:
        self.config = config
        self._dir = Path(directory)
        self._cond = threading.Condition(threading.Lock())
        self._segments: deque[_Segment] = deque()
        self._bytes = 0
        self._cache_bytes = 0
        self._cursors: dict[str, Cursor] = {}
        self._closed = False
        self._unsynced = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="wal", daemon=True)
        self.dropped_records = 0
        self.dropped_items = 0
        # Cap segments at a quarter of the log, so dropping or deleting one frees a useful share.
        self._segment_size = max(4096, min(config.segment_size, config.max_size // 4))
        if config.enabled:
            (self._dir / "cursors").mkdir(parents=True, exist_ok=True)
            self._load()
        if meter is not None:
            self._instruments(meter)

    # --- writing ---------------------------------------------------------------------------------

    def append(self, signal: Signal, payload: bytes, items: int, kind: RecordKind = RecordKind.INGEST,
               force: bool = False) -> int:  # fmt: skip
        """Write one record; its number. LogFull when full and refusing (not with `force`: records
        describing what was already accepted, e.g. verdicts)."""
        header = _HEADER.pack(_CODES[signal], kind, items, len(payload), zlib.crc32(payload))
        size = len(header) + len(payload)
        with self._cond:
            if self._closed:
                raise LogFull("the write-ahead log is closed")
            if self._bytes + size > self.config.max_size:
                self._delete_passed()
                if self._bytes + size > self.config.max_size and not force:
                    self._make_room(size)
            segment = self._writable(size)
            if segment.memory is not None:
                segment.memory += header
                segment.memory += payload
            else:
                _write_all(segment.fd, header, payload)
                if self.config.fsync == "always":
                    os.fdatasync(segment.fd)
                else:
                    self._unsynced = True
            number = segment.end
            segment.offsets.append(segment.size)
            segment.size += size
            self._bytes += size
            record = Record(number, signal, kind, payload, items)
            segment.cached[number] = record
            self._cache_bytes += len(payload)
            self._trim_cache()
            self._cond.notify_all()
            return number

    def _writable(self, size: int) -> _Segment:
        active = self._segments[-1] if self._segments else None
        if active is not None and (active.size == 0 or active.size + size <= self._segment_size):
            return active
        first = active.end if active is not None else self._next_start
        if active is not None and active.fd >= 0 and self.config.fsync != "never":
            os.fdatasync(active.fd)  # a closed segment is whole on disk before the next one starts
        return self._new_segment(first)

    def _new_segment(self, first: int) -> _Segment:
        if not self.config.enabled:
            segment = _Segment(first, None, memory=bytearray())
        else:
            path = self._dir / f"{first:020d}.wal"
            segment = _Segment(first, path, fd=os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644))
            if self.config.fsync != "never":
                _fsync_dir(self._dir)
        self._segments.append(segment)
        return segment

    def _make_room(self, size: int) -> None:
        if self.config.when_full == "refuse":
            raise LogFull(f"the write-ahead log is full ({self._bytes} of {self.config.max_size} bytes)")
        while self._bytes + size > self.config.max_size and len(self._segments) > 1:
            oldest = self._segments[0]
            items = sum(record.items for record in self._records_of(oldest))
            self.dropped_records += len(oldest.offsets)
            self.dropped_items += items
            log.error("write-ahead log full: dropped its oldest segment (%d records, %d items) unsent; "
                      "see tracejudge_wal_dropped_items_total", len(oldest.offsets), items)  # fmt: skip
            self._remove(oldest)
            for cursor in self._cursors.values():
                cursor._skip_to(self._segments[0].first)

    def _records_of(self, segment: _Segment) -> list[Record]:
        return [self._read(segment, number) for number in range(segment.first, segment.end)]

    # --- reading ---------------------------------------------------------------------------------

    def cursor(self, name: str) -> Cursor:
        """The named consumer's cursor, at its committed position (a new one starts at the oldest record)."""
        with self._cond:
            if name in self._cursors:
                raise ValueError(f"cursor {name!r} already open")
            committed = self.start_number
            if self.config.enabled:
                with suppress(OSError, ValueError):
                    saved = int((self._dir / "cursors" / name).read_text())
                    committed = min(max(committed, saved), self.end_number)
            cursor = self._cursors[name] = Cursor(self, name, committed)
            return cursor

    @property
    def start_number(self) -> int:
        """The oldest record still held."""
        return self._segments[0].first if self._segments else self._next_start

    @property
    def end_number(self) -> int:
        """One past the newest record."""
        return self._segments[-1].end if self._segments else self._next_start

    @property
    def size_bytes(self) -> int:
        return self._bytes

    def _next(self, cursor: Cursor, timeout: float | None) -> Record | None:
        """The record at the cursor's read position, waiting up to `timeout`; advances it (lock held)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while cursor.position >= self.end_number:
            remaining = None if deadline is None else deadline - time.monotonic()
            if self._closed or (remaining is not None and remaining <= 0):
                return None
            self._cond.wait(remaining)
        number = cursor.position
        for segment in self._segments:
            if number < segment.end:
                cursor.position = number + 1
                return self._read(segment, number)
        return None

    def _read(self, segment: _Segment, number: int) -> Record:
        cached = segment.cached.get(number)
        if cached is not None:
            return cached
        offset = segment.offsets[number - segment.first]
        if segment.memory is not None:
            raw = bytes(segment.memory[offset : offset + RECORD_HEADER_BYTES])
        else:
            raw = os.pread(segment.fd, RECORD_HEADER_BYTES, offset)
        code, kind, items, length, _crc = _HEADER.unpack(raw)
        start = offset + RECORD_HEADER_BYTES
        if segment.memory is not None:
            payload = bytes(segment.memory[start : start + length])
        else:
            payload = os.pread(segment.fd, length, start)
        return Record(number, _SIGNALS[code], RecordKind(kind), payload, items)

    def _trim_cache(self) -> None:
        """Forget the oldest cached payloads beyond `memory_cache` (they stay on disk)."""
        for segment in self._segments:
            if self._cache_bytes <= self.config.memory_cache or segment is self._segments[-1]:
                return
            if segment.memory is None:
                self._cache_bytes -= sum(len(record.payload) for record in segment.cached.values())
                segment.cached.clear()

    # --- committing and deleting -------------------------------------------------------------------

    def _committed(self) -> None:
        """A cursor committed: delete the segments every cursor has passed (lock held)."""
        self._delete_passed()
        self._cond.notify_all()

    def _delete_passed(self) -> None:
        if not self._cursors:
            return
        low = min(cursor.committed for cursor in self._cursors.values())
        while len(self._segments) > 1 and self._segments[0].end <= low:
            self._remove(self._segments[0])

    def _remove(self, segment: _Segment) -> None:
        self._segments.remove(segment)
        self._bytes -= segment.size
        self._cache_bytes -= sum(len(record.payload) for record in segment.cached.values())
        if segment.fd >= 0:
            os.close(segment.fd)
        if segment.path is not None:
            with suppress(OSError):
                segment.path.unlink()

    # --- lifecycle -------------------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def shutdown(self, timeout_s: float = 5.0) -> None:
        """Write out the cursors, sync and close the segments."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s)
        with self._cond:
            self._closed = True
            self._write_cursors(sync=True)
            self._delete_passed()
            for segment in self._segments:
                if segment.fd >= 0:
                    if self.config.fsync != "never":
                        os.fdatasync(segment.fd)
                    os.close(segment.fd)
                    segment.fd = -1
            self._cond.notify_all()

    def _run(self) -> None:
        """Every commit_interval: write out moved cursors, delete passed segments; fsync per policy."""
        last_sync = time.monotonic()
        while not self._stop.wait(self.config.commit_interval):
            with self._cond:
                self._write_cursors(sync=False)
                self._delete_passed()
                active = self._segments[-1] if self._segments else None
                due = time.monotonic() - last_sync >= self.config.fsync_interval
                fd = active.fd if active is not None and self._unsynced and due else -1
                if fd >= 0 and self.config.fsync == "interval":
                    self._unsynced = False
                    last_sync = time.monotonic()
                    with suppress(OSError):
                        os.fdatasync(fd)

    def _write_cursors(self, sync: bool) -> None:
        if not self.config.enabled:
            return
        for cursor in self._cursors.values():
            if cursor.committed == cursor._written:
                continue
            path = self._dir / "cursors" / cursor.name
            temp = path.with_suffix(".tmp")
            try:
                with temp.open("w") as f:
                    f.write(str(cursor.committed))
                    if sync or self.config.fsync != "never":
                        f.flush()
                        os.fsync(f.fileno())
                os.replace(temp, path)
                cursor._written = cursor.committed
            except OSError as exc:
                log.warning("could not write cursor %s: %s", path, exc)

    # --- loading ---------------------------------------------------------------------------------

    def _load(self) -> None:
        found = sorted((int(m.group(1)), p) for p in self._dir.iterdir() if (m := _NAME.fullmatch(p.name)))
        self._next_start = 0
        for first, path in found:
            if self._segments and first != self._segments[-1].end:
                log.warning("write-ahead log segment %s does not follow its predecessor; starting there", path)
            segment = _Segment(first, path, fd=os.open(path, os.O_RDWR | os.O_APPEND))
            segment.offsets, segment.size = _scan(segment.fd, path)
            os.ftruncate(segment.fd, segment.size)
            self._segments.append(segment)
            self._bytes += segment.size
            self._next_start = segment.end
        if found:
            log.info("write-ahead log: %d records in %d segments to replay from %s",
                     self.end_number - self.start_number, len(found), self._dir)  # fmt: skip

    _next_start = 0

    def _instruments(self, meter: Meter) -> None:
        def observe_bytes(_options: CallbackOptions) -> list[Observation]:
            return [Observation(self._bytes)]

        def observe_lag(_options: CallbackOptions) -> list[Observation]:
            return [Observation(c.behind, {"cursor": c.name}) for c in list(self._cursors.values())]

        def observe_dropped(_options: CallbackOptions) -> list[Observation]:
            return [Observation(self.dropped_items)]

        meter.create_observable_gauge("tracejudge.wal.size_bytes", [observe_bytes], unit="By",
                                      description="Bytes held by the write-ahead log's segments")  # fmt: skip
        meter.create_observable_gauge("tracejudge.wal.cursor_lag_records", [observe_lag],
                                      description="Records written but not yet committed, by cursor")  # fmt: skip
        meter.create_observable_counter("tracejudge.wal.dropped_items", [observe_dropped],
                                        description="Items dropped unsent with the oldest segments")  # fmt: skip


class Cursor:
    """One consumer's read position (`position`) and committed position (`committed`: everything before
    it is done). Thread-safe: several worker threads may call next()."""

    def __init__(self, wal: WriteAheadLog, name: str, committed: int) -> None:
        self._wal = wal
        self.name = name
        self.committed = committed
        self.position = committed
        self._written = committed
        self.replay_until = wal.end_number  # records before this were written by an earlier run

    def next(self, timeout: float | None = None) -> Record | None:
        """The record at the read position, waiting up to `timeout`; None on timeout or once closed."""
        with self._wal._cond:
            return self._wal._next(self, timeout)

    def wait(self, timeout: float) -> bool:
        """Wait up to `timeout` for a record at the read position; True when there is one."""
        deadline = time.monotonic() + timeout
        with self._wal._cond:
            while self.position >= self._wal.end_number and not self._wal._closed:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._wal._cond.wait(remaining)
            return self.position < self._wal.end_number

    def commit(self, position: int) -> None:
        """Everything before `position` is done (written out within commit_interval)."""
        with self._wal._cond:
            if position > self.committed:
                self.committed = min(position, self._wal.end_number)
                self._wal._committed()

    def rewind(self) -> None:
        """Read again from the committed position (the consumer lost what it held)."""
        with self._wal._cond:
            self.position = self.committed

    @property
    def behind(self) -> int:
        """Records not yet committed."""
        return self._wal.end_number - self.committed

    @property
    def behind_bytes(self) -> int:
        with self._wal._cond:
            total = 0
            for segment in self._wal._segments:
                if segment.end <= self.committed:
                    continue
                if segment.first <= self.committed < segment.end:
                    total += segment.size - segment.offsets[self.committed - segment.first]
                else:
                    total += segment.size
            return total

    def _skip_to(self, number: int) -> None:
        self.committed = max(self.committed, number)
        self.position = max(self.position, number)


def _write_all(fd: int, header: bytes, payload: bytes) -> None:
    written = os.writev(fd, [header, payload])
    if written < len(header) + len(payload):  # short writes are rare (disk full); finish them
        rest = (header + payload)[written:]
        while rest:
            rest = rest[os.write(fd, rest) :]


def _scan(fd: int, path: Path) -> tuple[list[int], int]:
    """Offsets of the complete, intact records and where they end; a torn or corrupt tail is logged."""
    offsets: list[int] = []
    size = os.fstat(fd).st_size
    end = 0
    while end < size:
        length = _intact_length(fd, end, size)
        if length is None:
            log.warning("torn or corrupt record at byte %d of %s; the rest is ignored", end, path)
            break
        offsets.append(end)
        end += RECORD_HEADER_BYTES + length
    return offsets, end


def _intact_length(fd: int, offset: int, size: int) -> int | None:
    """The payload length of the whole record at `offset` (a known signal and kind, inside the file, the
    CRC right); None for a torn or corrupt one."""
    raw = os.pread(fd, RECORD_HEADER_BYTES, offset)
    if len(raw) < RECORD_HEADER_BYTES:
        return None
    code, kind, _items, length, crc = _HEADER.unpack(raw)
    if code not in _SIGNALS or kind not in _KINDS or offset + RECORD_HEADER_BYTES + length > size:
        return None
    return length if zlib.crc32(os.pread(fd, length, offset + RECORD_HEADER_BYTES)) == crc else None


def _fsync_dir(directory: Path) -> None:
    with suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

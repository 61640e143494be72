"""A send queue per downstream endpoint that holds items in memory, spills them to disk and survives restarts.

Why: a downstream outage of minutes must lose nothing up to the disk cap, and the receiver thread must never
wait on a sender. Items stay in memory up to ``max_memory_bytes``; past that, and for as long as anything is
on disk (so FIFO order holds), they are appended to segment files up to ``max_disk_bytes``; beyond that
``put`` refuses them and the caller counts the drop. ``get`` serves memory first and, when memory runs dry,
pulls the oldest segment back into memory and deletes its file. At shutdown ``persist`` writes memory out
as a segment named ahead of every older segment (memory always holds the oldest items), and a new queue on
the same directory resends it all, in order.

A segment ``seg-<12-digit counter>.bin`` is a run of records: one signal-code byte, a 4-byte big-endian
item count (spans, log records or metrics), a 4-byte big-endian payload length, the payload. Counters
start mid-range, so there is room to name persisted memory ahead of the oldest segment. A torn or
corrupt tail (a crash mid-write) is cut off on load with a warning.
"""

from __future__ import annotations

import io
import logging
import os
import re
import struct
import threading
import time
from collections import deque
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from tracejudge.model import Signal

__all__ = ["RECORD_HEADER_BYTES", "QueueItem", "SpillQueue"]

_log = logging.getLogger(__name__)

_HEADER = struct.Struct(">BII")
RECORD_HEADER_BYTES = _HEADER.size
_CODES: dict[Signal, int] = {Signal.TRACES: 1, Signal.METRICS: 2, Signal.LOGS: 3}
_SIGNALS: dict[int, Signal] = {code: signal for signal, code in _CODES.items()}
_NAME = re.compile(r"seg-(\d{12})\.bin")
_FIRST_COUNTER = 10**11


@dataclass(frozen=True, slots=True)
class QueueItem:
    """One OTLP request body waiting to be sent downstream."""

    signal: Signal
    payload: bytes
    items: int = 0


@dataclass(eq=False, slots=True)
class _Segment:
    counter: int
    path: Path
    size: int = 0
    count: int = 0


class _Scan(NamedTuple):
    records: int
    end: int
    items: list[QueueItem]


def _header(item: QueueItem) -> bytes:
    return _HEADER.pack(_CODES[item.signal], item.items, len(item.payload))


def _write_all(f: io.FileIO, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[f.write(view) :]


def _scan(path: Path, keep: bool) -> _Scan:
    """Count (with keep, also collect) the complete records; a torn or corrupt tail is logged and left out."""
    items: list[QueueItem] = []
    count = end = 0
    with path.open("rb") as f:
        size = os.fstat(f.fileno()).st_size
        while end < size:
            header = f.read(_HEADER.size)
            code, item_count, length = _HEADER.unpack(header) if len(header) == _HEADER.size else (0, 0, 0)
            if code not in _SIGNALS or end + _HEADER.size + length > size:
                _log.warning("torn or corrupt record at byte %d of %s; the rest is ignored", end, path)
                break
            if keep:
                items.append(QueueItem(_SIGNALS[code], f.read(length), item_count))
            else:
                f.seek(length, os.SEEK_CUR)
            count += 1
            end += _HEADER.size + length
    return _Scan(count, end, items)


def _take_segment(segment: _Segment) -> list[QueueItem]:
    """Read a segment back and delete its file; on failure the file stays for the next start."""
    try:
        items = _scan(segment.path, keep=True).items
    except OSError as exc:
        _log.error("could not load %s; its %d items stay on disk: %s", segment.path, segment.count, exc)
        return []
    try:
        segment.path.unlink()
    except OSError as exc:
        _log.warning("could not delete loaded segment %s (its items may be resent): %s", segment.path, exc)
    return items


def _fsync_dir(directory: Path) -> None:
    with suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class SpillQueue:
    """Thread-safe FIFO of QueueItems: memory up to a byte cap, then disk segments up to a byte cap."""

    def __init__(
        self,
        directory: Path,
        max_memory_bytes: int,
        max_disk_bytes: int,
        segment_bytes: int = 8 * 1024 * 1024,
    ) -> None:
        self._dir = Path(directory)
        self._max_memory = max_memory_bytes
        self._max_disk = max_disk_bytes
        self._segment_bytes = segment_bytes
        self._cond = threading.Condition(threading.Lock())
        self._memory: deque[QueueItem] = deque()
        self._memory_bytes = 0
        self._segments: deque[_Segment] = deque()
        self._disk_bytes = 0
        self._disk_count = 0
        self._writer: io.FileIO | None = None
        self._loading = False
        self._closed = False
        self._dir.mkdir(parents=True, exist_ok=True)
        self._next_counter = self._load_existing()

    @property
    def memory_bytes(self) -> int:
        with self._cond:
            return self._memory_bytes

    @property
    def disk_bytes(self) -> int:
        with self._cond:
            return self._disk_bytes

    @property
    def depth(self) -> int:
        with self._cond:
            return len(self._memory) + self._disk_count

    def put(self, item: QueueItem) -> bool:
        """Queue an item without waiting on consumers; False: dropped because the disk cap is reached."""
        with self._cond:
            if self._closed or self._segments or self._memory_bytes + len(item.payload) > self._max_memory:
                accepted = self._spill(item)
                if self._closed:
                    self._close_writer()
            else:
                self._memory.append(item)
                self._memory_bytes += len(item.payload)
                accepted = True
            if accepted:
                self._cond.notify()
            return accepted

    def get(self, timeout: float | None = None) -> QueueItem | None:
        """The oldest item, waiting up to timeout (None: forever); None on timeout or once closed."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while not self._closed:
                if self._memory:
                    item = self._memory.popleft()
                    self._memory_bytes -= len(item.payload)
                    return item
                if self._segments and not self._loading:
                    self._load_oldest()
                    continue
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return None
                self._cond.wait(remaining)
            return None

    def persist(self) -> None:
        """Write every in-memory item to disk ahead of the older segments and fsync (for shutdown)."""
        with self._cond:
            while self._loading:
                self._cond.wait()
            if self._memory:
                self._write_memory_segment()
            self._close_writer(sync=True)
            _fsync_dir(self._dir)

    def close(self) -> None:
        """Wake blocked getters (they return None); later puts go straight to disk, up to the disk cap."""
        with self._cond:
            self._closed = True
            self._close_writer()
            self._cond.notify_all()

    def _load_existing(self) -> int:
        found = sorted((int(m.group(1)), p) for p in self._dir.iterdir() if (m := _NAME.fullmatch(p.name)))
        for counter, path in found:
            self._adopt(_Segment(counter, path))
        return found[-1][0] + 1 if found else _FIRST_COUNTER

    def _adopt(self, segment: _Segment) -> None:
        try:
            scan = _scan(segment.path, keep=False)
            if scan.records == 0:
                self._set_aside(segment.path)
                return
            if scan.end < segment.path.stat().st_size:
                os.truncate(segment.path, scan.end)
        except OSError as exc:
            _log.warning("skipping unreadable segment %s: %s", segment.path, exc)
            return
        segment.size, segment.count = scan.end, scan.records
        self._segments.append(segment)
        self._disk_bytes += scan.end
        self._disk_count += scan.records

    @staticmethod
    def _set_aside(path: Path) -> None:
        if path.stat().st_size == 0:
            path.unlink()
            return
        aside = path.with_name(path.name + ".corrupt")
        _log.warning("%s holds no complete record; skipped and renamed to %s", path, aside.name)
        path.rename(aside)

    def _spill(self, item: QueueItem) -> bool:
        record = _HEADER.size + len(item.payload)
        if self._disk_bytes + record > self._max_disk:
            return False
        try:
            segment = self._append(item)
        except OSError as exc:
            _log.warning("could not spill an item to %s: %s", self._dir, exc)
            self._recover_writer()
            return False
        segment.size += record
        segment.count += 1
        self._disk_bytes += record
        self._disk_count += 1
        if segment.size >= self._segment_bytes:
            self._close_writer()
        return True

    def _append(self, item: QueueItem) -> _Segment:
        if self._writer is None:
            segment = self._new_segment(self._next_counter)
            self._writer = io.FileIO(segment.path, "ab")
            self._segments.append(segment)
        _write_all(self._writer, _header(item))
        _write_all(self._writer, item.payload)
        return self._segments[-1]

    def _new_segment(self, counter: int) -> _Segment:
        self._next_counter = max(self._next_counter, counter + 1)
        return _Segment(counter, self._dir / f"seg-{counter:012d}.bin")

    def _recover_writer(self) -> None:
        """After a failed write, cut off the partial record and start the next spill in a new segment."""
        if self._writer is None or not self._segments:
            return
        segment = self._segments[-1]
        with suppress(OSError):
            self._writer.truncate(segment.size)
        with suppress(OSError):
            self._close_writer()
        if segment.count == 0:
            self._segments.pop()
            with suppress(OSError):
                segment.path.unlink()

    def _close_writer(self, sync: bool = False) -> None:
        writer, self._writer = self._writer, None
        if writer is None:
            return
        try:
            if sync:
                os.fsync(writer.fileno())
        finally:
            writer.close()

    def _load_oldest(self) -> None:
        """Move the oldest segment into memory; called with the lock held, reads the file without it."""
        segment = self._segments[0]
        if segment is self._segments[-1]:
            self._close_writer()
        self._loading = True
        self._cond.release()
        try:
            items = _take_segment(segment)
        finally:
            self._cond.acquire()
            self._loading = False
        self._segments.remove(segment)
        self._disk_bytes -= segment.size
        self._disk_count -= segment.count
        self._memory.extend(items)
        self._memory_bytes += sum(len(item.payload) for item in items)
        self._cond.notify_all()

    def _write_memory_segment(self) -> None:
        counter = self._segments[0].counter - 1 if self._segments else self._next_counter
        segment = self._new_segment(counter)
        with segment.path.open("wb") as f:
            for item in self._memory:
                f.write(_header(item))
                f.write(item.payload)
            f.flush()
            os.fsync(f.fileno())
        segment.size = sum(_HEADER.size + len(item.payload) for item in self._memory)
        segment.count = len(self._memory)
        self._segments.appendleft(segment)
        self._disk_bytes += segment.size
        self._disk_count += segment.count
        self._memory.clear()
        self._memory_bytes = 0

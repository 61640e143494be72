"""The write-ahead log: order, cursors, replay after a restart, segment deletion, caps, torn tails.

These keep the behaviours tests/test_spill_queue.py asserted of the memory queue + spill files it
replaces: FIFO, caps with counted drops, resend after restart, torn records cut off."""

from __future__ import annotations

import contextlib
import logging
import threading
from collections import Counter
from pathlib import Path

import pytest

from tracejudge.model import Signal
from tracejudge.testing import wait_until
from tracejudge.wal import RECORD_HEADER_BYTES, LogFull, Record, RecordKind, WalConfig, WriteAheadLog

KB = 1024
MB = 1024 * KB
SIGNALS = [Signal.TRACES, Signal.METRICS, Signal.LOGS]


def payload(i: int, size: int = KB) -> bytes:
    head = f"{i}:".encode()
    return head + b"x" * (size - len(head))


def open_log(directory: Path, **settings: object) -> WriteAheadLog:
    return WriteAheadLog(directory, WalConfig.model_validate({"segment_size": "8KiB", **settings}))


def append(wal: WriteAheadLog, i: int, size: int = KB) -> int:
    return wal.append(SIGNALS[i % 3], payload(i, size), items=i)


def drain(cursor_next: object) -> list[Record]:
    records = []
    while (record := cursor_next(timeout=0)) is not None:  # type: ignore[operator]
        records.append(record)
    return records


def segments(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.wal"))


def test_records_come_back_in_order_across_segments(tmp_path: Path) -> None:
    wal = open_log(tmp_path)
    cursor = wal.cursor("a")
    for i in range(60):
        append(wal, i)
    assert len(segments(tmp_path)) > 1
    got = drain(cursor.next)
    assert [(r.number, r.signal, r.payload, r.items) for r in got] == [
        (i, SIGNALS[i % 3], payload(i), i) for i in range(60)
    ]
    wal.shutdown()


@pytest.mark.parametrize("fsync", ["never", "interval", "always"])
def test_restart_replays_what_was_not_committed(tmp_path: Path, fsync: str) -> None:
    wal = open_log(tmp_path, fsync=fsync)
    cursor = wal.cursor("forward")
    for i in range(50):
        append(wal, i)
    assert len(drain(cursor.next)) == 50
    cursor.commit(20)  # 20 delivered; 30 read but never confirmed (say the process was killed)
    wal.shutdown()

    restarted = open_log(tmp_path, fsync=fsync)
    cursor = restarted.cursor("forward")
    assert (cursor.committed, cursor.replay_until) == (20, 50)
    assert [r.payload for r in drain(cursor.next)] == [payload(i) for i in range(20, 50)]
    assert append(restarted, 50) == 50  # numbering continues
    restarted.shutdown()


def test_a_kill_without_shutdown_replays_from_the_last_written_cursor(tmp_path: Path) -> None:
    wal = open_log(tmp_path, fsync="never", commit_interval="50ms")
    wal.start()
    cursor = wal.cursor("forward")
    for i in range(10):
        append(wal, i)
    drain(cursor.next)
    cursor.commit(10)
    for i in range(10, 15):
        append(wal, i)
    written = tmp_path / "cursors" / "forward"
    assert wait_until(lambda: written.exists() and written.read_text() == "10", timeout=5)
    # No shutdown: the files are as a SIGKILL leaves them.
    restarted = open_log(tmp_path)
    assert [r.number for r in drain(restarted.cursor("forward").next)] == [10, 11, 12, 13, 14]


def test_segments_are_deleted_once_every_cursor_has_passed_them(tmp_path: Path) -> None:
    wal = open_log(tmp_path)
    fast, slow = wal.cursor("fast"), wal.cursor("slow")
    for i in range(40):
        append(wal, i)
    before = segments(tmp_path)
    assert len(before) >= 4
    drain(fast.next)
    fast.commit(40)
    assert segments(tmp_path) == before  # the slow cursor still needs them all
    drain(slow.next)
    slow.commit(20)
    kept = segments(tmp_path)
    assert before[0] not in kept and kept[-1] == before[-1]
    slow.commit(40)
    assert segments(tmp_path) == [before[-1]]  # the active segment stays
    assert wal.size_bytes == before[-1].stat().st_size


def test_a_full_log_refuses_and_keeps_what_it_accepted(tmp_path: Path) -> None:
    cap = 16 * (KB + RECORD_HEADER_BYTES)
    wal = open_log(tmp_path, max_size=cap, segment_size="4KiB")
    cursor = wal.cursor("stuck")
    accepted = []
    for i in range(30):
        with contextlib.suppress(LogFull):
            accepted.append(append(wal, i))
    assert accepted == list(range(16))
    assert wal.size_bytes <= cap
    assert [r.payload for r in drain(cursor.next)] == [payload(i) for i in range(16)]
    cursor.commit(16)
    assert append(wal, 99) == 16  # room again once the cursor passed
    assert wal.dropped_items == 0


def test_drop_oldest_counts_and_logs_what_it_drops(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cap = 16 * (KB + RECORD_HEADER_BYTES)
    wal = open_log(tmp_path, max_size=cap, segment_size="4KiB", when_full="drop_oldest")
    cursor = wal.cursor("stuck")
    with caplog.at_level(logging.ERROR):
        numbers = [append(wal, i) for i in range(30)]
    assert numbers == list(range(30))
    assert wal.size_bytes <= cap
    kept = [r.number for r in drain(cursor.next)]
    assert kept == list(range(30 - len(kept), 30))
    assert wal.dropped_records == 30 - len(kept) > 0
    assert wal.dropped_items == sum(range(30 - len(kept)))
    assert "dropped its oldest segment" in caplog.text


def test_oversized_record_round_trips(tmp_path: Path) -> None:
    wal = open_log(tmp_path, memory_cache="1KiB")
    big = bytes(range(256)) * (80 * 1024)
    wal.append(Signal.LOGS, big, 1)
    wal.shutdown()
    [record] = drain(open_log(tmp_path).cursor("a").next)
    assert record.payload == big


def test_records_beyond_the_memory_cache_are_read_back_from_disk(tmp_path: Path) -> None:
    wal = open_log(tmp_path, memory_cache="4KiB")
    cursor = wal.cursor("a")
    for i in range(40):
        append(wal, i)
    assert [r.payload for r in drain(cursor.next)] == [payload(i) for i in range(40)]


@pytest.mark.parametrize("cut", [10, 100, 100 + RECORD_HEADER_BYTES - 2])
def test_torn_final_record_is_ignored(tmp_path: Path, cut: int, caplog: pytest.LogCaptureFixture) -> None:
    wal = open_log(tmp_path)
    for i in range(5):
        append(wal, i, size=100)
    wal.shutdown()
    [segment] = segments(tmp_path)
    segment.write_bytes(segment.read_bytes()[:-cut])
    with caplog.at_level(logging.WARNING):
        restarted = open_log(tmp_path)
    assert "torn or corrupt" in caplog.text
    assert [r.payload for r in drain(restarted.cursor("a").next)] == [payload(i, 100) for i in range(4)]
    assert segment.stat().st_size == 4 * (100 + RECORD_HEADER_BYTES)
    assert append(restarted, 4, size=100) == 4


def test_a_corrupt_record_cuts_the_segment_there(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    wal = open_log(tmp_path)
    for i in range(5):
        append(wal, i, size=100)
    wal.shutdown()
    [segment] = segments(tmp_path)
    data = bytearray(segment.read_bytes())
    data[3 * (100 + RECORD_HEADER_BYTES) + RECORD_HEADER_BYTES + 50] ^= 0xFF  # a flipped bit in record 3
    segment.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING):
        restarted = open_log(tmp_path)
    assert [r.number for r in drain(restarted.cursor("a").next)] == [0, 1, 2]


def test_every_record_kind_survives_a_restart(tmp_path: Path) -> None:
    wal = open_log(tmp_path)
    for kind in RecordKind:
        wal.append(Signal.TRACES, kind.name.encode(), 1, kind)
    wal.shutdown()
    restarted = [(r.payload, r.kind) for r in drain(open_log(tmp_path).cursor("a").next)]
    assert restarted == [(kind.name.encode(), kind) for kind in RecordKind]


def test_disabled_log_lives_in_memory_only(tmp_path: Path) -> None:
    wal = open_log(tmp_path / "wal", enabled=False)
    cursor = wal.cursor("a")
    for i in range(30):
        append(wal, i)
    assert not (tmp_path / "wal").exists()
    assert [r.payload for r in drain(cursor.next)] == [payload(i) for i in range(30)]
    cursor.commit(30)
    assert wal.size_bytes < 8 * KB


def test_next_waits_for_an_append_and_shutdown_wakes_it(tmp_path: Path) -> None:
    wal = open_log(tmp_path)
    cursor = wal.cursor("a")
    results: list[Record | None] = []
    getter = threading.Thread(target=lambda: results.extend([cursor.next(timeout=5), cursor.next()]))
    getter.start()
    append(wal, 7)
    wal.shutdown()
    getter.join(timeout=2)
    assert not getter.is_alive()
    assert results[0] is not None and results[0].payload == payload(7) and results[1] is None


def test_concurrent_producers_and_consumers_see_everything_once(tmp_path: Path) -> None:
    wal = open_log(tmp_path, segment_size="64KiB")
    cursor = wal.cursor("a")
    producers, per_producer = 4, 1500
    done = threading.Event()
    received: list[list[tuple[int, int]]] = [[] for _ in range(4)]

    def produce(p: int) -> None:
        for i in range(per_producer):
            wal.append(SIGNALS[i % 3], f"{p}:{i}:".encode() + b"y" * (100 + i % 700), 1)

    def consume(out: list[tuple[int, int]]) -> None:
        while not done.is_set() or cursor.position < wal.end_number:
            record = cursor.next(timeout=0.02)
            if record is not None:
                p, i, _ = record.payload.split(b":", 2)
                assert record.signal is SIGNALS[int(i) % 3]
                out.append((int(p), int(i)))

    threads = [threading.Thread(target=produce, args=(p,)) for p in range(producers)]
    threads += [threading.Thread(target=consume, args=(out,)) for out in received]
    for thread in threads:
        thread.start()
    for thread in threads[:producers]:
        thread.join(timeout=20)
    done.set()
    for thread in threads[producers:]:
        thread.join(timeout=20)
    everything = [pair for out in received for pair in out]
    assert Counter(everything) == Counter((p, i) for p in range(producers) for i in range(per_producer))
    wal.shutdown()

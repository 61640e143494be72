from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from tracejudge.exporter.spill_queue import RECORD_HEADER_BYTES, QueueItem, SpillQueue
from tracejudge.model import Signal

KB = 1024
MB = 1024 * KB
SIGNALS = [Signal.TRACES, Signal.METRICS, Signal.LOGS]


def make_item(i: int, size: int = KB) -> QueueItem:
    head = f"{i}:".encode()
    return QueueItem(SIGNALS[i % 3], head + b"x" * (size - len(head)), items=i)


def segment_files(directory: Path) -> list[Path]:
    return sorted(directory.glob("seg-*.bin"))


def drain(queue: SpillQueue) -> list[QueueItem]:
    items = []
    while (item := queue.get(timeout=0)) is not None:
        items.append(item)
    return items


def assert_empty(queue: SpillQueue, directory: Path) -> None:
    assert (queue.memory_bytes, queue.disk_bytes, queue.depth) == (0, 0, 0)
    assert segment_files(directory) == []


def test_fifo_across_memory_disk_memory(tmp_path: Path) -> None:
    queue = SpillQueue(tmp_path, max_memory_bytes=10 * KB, max_disk_bytes=10 * MB, segment_bytes=8 * KB)
    expected = [make_item(i) for i in range(100)]
    assert all(queue.put(item) for item in expected[:60])
    assert queue.memory_bytes <= 10 * KB
    assert queue.disk_bytes == sum(p.stat().st_size for p in segment_files(tmp_path)) > 0
    assert len(segment_files(tmp_path)) > 1
    assert queue.depth == 60
    got = [queue.get(timeout=1) for _ in range(25)]
    assert all(queue.put(item) for item in expected[60:])
    got += drain(queue)
    assert got == expected
    assert_empty(queue, tmp_path)
    queue.close()


def test_memory_used_again_after_disk_drains(tmp_path: Path) -> None:
    queue = SpillQueue(tmp_path, max_memory_bytes=2 * KB, max_disk_bytes=MB, segment_bytes=64 * KB)
    for i in range(5):
        queue.put(make_item(i))
    first_segment = segment_files(tmp_path)
    assert len(first_segment) == 1
    assert [item.payload for item in drain(queue)] == [make_item(i).payload for i in range(5)]
    assert not first_segment[0].exists()
    assert queue.put(make_item(5))
    assert queue.disk_bytes == 0 and queue.memory_bytes == KB
    for i in range(6, 9):
        queue.put(make_item(i))
    assert segment_files(tmp_path) and segment_files(tmp_path) != first_segment
    assert drain(queue) == [make_item(i) for i in range(5, 9)]
    assert_empty(queue, tmp_path)


def test_disk_cap_drops_new_items_and_keeps_accepted(tmp_path: Path) -> None:
    disk_cap = 10 * (KB + RECORD_HEADER_BYTES)
    queue = SpillQueue(tmp_path, max_memory_bytes=4 * KB, max_disk_bytes=disk_cap, segment_bytes=3 * KB)
    results = [queue.put(make_item(i)) for i in range(30)]
    accepted = [make_item(i) for i, ok in enumerate(results) if ok]
    assert results == [True] * 14 + [False] * 16
    assert queue.disk_bytes <= disk_cap
    assert queue.depth == 14
    assert drain(queue) == accepted
    assert queue.put(make_item(99))
    assert queue.get(timeout=0) == make_item(99)
    assert_empty(queue, tmp_path)


def test_oversized_item_spills_and_round_trips(tmp_path: Path) -> None:
    big = QueueItem(Signal.LOGS, bytes(range(256)) * (80 * 1024))
    queue = SpillQueue(tmp_path, max_memory_bytes=KB, max_disk_bytes=64 * MB)
    assert queue.put(big)
    assert queue.memory_bytes == 0 and queue.disk_bytes == len(big.payload) + RECORD_HEADER_BYTES
    assert queue.get(timeout=1) == big
    assert_empty(queue, tmp_path)


@pytest.mark.parametrize("memory_cap", [MB, 4 * KB])
def test_persist_then_restart_resends_everything_in_order(tmp_path: Path, memory_cap: int) -> None:
    queue = SpillQueue(tmp_path, max_memory_bytes=memory_cap, max_disk_bytes=MB, segment_bytes=8 * KB)
    expected = [make_item(i) for i in range(50)]
    for item in expected:
        queue.put(item)
    assert [queue.get(timeout=0) for _ in range(3)] == expected[:3]
    queue.close()
    queue.persist()
    assert queue.memory_bytes == 0 and queue.depth == 47

    restarted = SpillQueue(tmp_path, max_memory_bytes=memory_cap, max_disk_bytes=MB)
    assert restarted.depth == 47
    assert restarted.disk_bytes == sum(p.stat().st_size for p in segment_files(tmp_path))
    assert drain(restarted) == expected[3:]
    assert_empty(restarted, tmp_path)


def test_repeated_restarts_keep_order(tmp_path: Path) -> None:
    expected = [make_item(i) for i in range(40)]
    got: list[QueueItem] = []
    for round_ in range(4):
        queue = SpillQueue(tmp_path, max_memory_bytes=3 * KB, max_disk_bytes=MB, segment_bytes=4 * KB)
        for item in expected[round_ * 10 : round_ * 10 + 10]:
            assert queue.put(item)
        got += [item for _ in range(4) if (item := queue.get(timeout=0)) is not None]
        queue.close()
        queue.persist()
    got += drain(SpillQueue(tmp_path, max_memory_bytes=3 * KB, max_disk_bytes=MB))
    assert got == expected


def write_to_disk(directory: Path, count: int) -> list[QueueItem]:
    queue = SpillQueue(directory, max_memory_bytes=0, max_disk_bytes=MB)
    items = [make_item(i, size=100) for i in range(count)]
    assert all(queue.put(item) for item in items)
    queue.close()
    return items


@pytest.mark.parametrize("cut", [10, 100, 100 + RECORD_HEADER_BYTES - 2])
def test_torn_final_record_is_ignored(tmp_path: Path, cut: int, caplog: pytest.LogCaptureFixture) -> None:
    items = write_to_disk(tmp_path, 5)
    [segment] = segment_files(tmp_path)
    segment.write_bytes(segment.read_bytes()[:-cut])
    with caplog.at_level(logging.WARNING):
        queue = SpillQueue(tmp_path, max_memory_bytes=MB, max_disk_bytes=MB)
    assert "torn or corrupt" in caplog.text
    assert queue.depth == 4 and queue.disk_bytes == 4 * (100 + RECORD_HEADER_BYTES) == segment.stat().st_size
    assert drain(queue) == items[:4]
    assert_empty(queue, tmp_path)


def test_garbage_file_is_skipped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "seg-000000000001.bin").write_bytes(b"this is not a segment at all")
    (tmp_path / "notes.txt").write_bytes(b"ignored")
    items = write_to_disk(tmp_path, 3)
    with caplog.at_level(logging.WARNING):
        queue = SpillQueue(tmp_path, max_memory_bytes=MB, max_disk_bytes=MB)
    assert "seg-000000000001.bin" in caplog.text
    assert queue.depth == 3
    assert drain(queue) == items
    assert_empty(queue, tmp_path)


def test_get_times_out_on_empty(tmp_path: Path) -> None:
    queue = SpillQueue(tmp_path, max_memory_bytes=KB, max_disk_bytes=KB)
    start = time.monotonic()
    assert queue.get(timeout=0.2) is None
    assert 0.18 <= time.monotonic() - start < 1.0


def test_close_wakes_blocked_getter(tmp_path: Path) -> None:
    queue = SpillQueue(tmp_path, max_memory_bytes=KB, max_disk_bytes=64 * KB)
    results: list[QueueItem | None] = []
    getter = threading.Thread(target=lambda: results.append(queue.get()), daemon=True)
    getter.start()
    time.sleep(0.1)
    assert getter.is_alive()
    queue.close()
    getter.join(timeout=2)
    assert not getter.is_alive() and results == [None]
    assert queue.put(make_item(1)) is True
    assert queue.disk_bytes > 0 and queue.get(timeout=0) is None
    assert drain(SpillQueue(tmp_path, max_memory_bytes=KB, max_disk_bytes=64 * KB)) == [make_item(1)]


def test_put_wakes_blocked_getter(tmp_path: Path) -> None:
    queue = SpillQueue(tmp_path, max_memory_bytes=0, max_disk_bytes=64 * KB)
    results: list[QueueItem | None] = []
    getter = threading.Thread(target=lambda: results.append(queue.get(timeout=5)))
    getter.start()
    time.sleep(0.05)
    queue.put(make_item(7))
    getter.join(timeout=2)
    assert results == [make_item(7)]


def test_concurrent_producers_and_consumers_deliver_exactly_once(tmp_path: Path) -> None:
    queue = SpillQueue(tmp_path, max_memory_bytes=16 * KB, max_disk_bytes=64 * MB, segment_bytes=8 * KB)
    producers, per_producer = 4, 1500
    stop = threading.Event()
    received: list[list[tuple[int, int]]] = [[] for _ in range(4)]

    def produce(p: int) -> None:
        for i in range(per_producer):
            assert queue.put(QueueItem(SIGNALS[i % 3], f"{p}:{i}:".encode() + b"y" * (100 + i % 700)))

    def consume(out: list[tuple[int, int]]) -> None:
        while not stop.is_set() or queue.depth:
            item = queue.get(timeout=0.02)
            if item is not None:
                p, i, _ = item.payload.split(b":", 2)
                assert item.signal is SIGNALS[int(i) % 3]
                out.append((int(p), int(i)))

    threads = [threading.Thread(target=produce, args=(p,)) for p in range(producers)]
    threads += [threading.Thread(target=consume, args=(out,)) for out in received]
    for thread in threads:
        thread.start()
    for thread in threads[:producers]:
        thread.join(timeout=10)
    stop.set()
    for thread in threads[producers:]:
        thread.join(timeout=10)

    everything = [pair for out in received for pair in out]
    assert Counter(everything) == Counter((p, i) for p in range(producers) for i in range(per_producer))
    for out in received:
        for p in range(producers):
            sequence = [i for q, i in out if q == p]
            assert sequence == sorted(sequence)
    assert_empty(queue, tmp_path)
    queue.close()

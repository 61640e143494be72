"""InFlightLedger: the admitted (trace, scorer) pairs not finished yet, in a file that outlives a kill.

The write-ahead log rebuilds traces that were not yet decided when the process died; a trace already
decided and handed to the scoring worker is past the assembler's cursor, so only this ledger remembers
it. On the next start the pairs it still holds are recorded as skipped with reason `restart` (to be
backfilled), instead of disappearing.

One line per event: `A <trace> <span> <scorer,scorer>` when pairs are admitted, `F <trace>` when they end
(scored, skipped for any reason). Lines are written with one `write` per batch and not fsynced: they
survive a process kill (the kernel holds them), which is the failure this is for; a power loss takes
them with the page cache, as `wal.fsync: never` does. The file is rewritten to the pairs still open
when it grows past `compact_bytes`, and emptied by a clean shutdown.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import TextIO

log = logging.getLogger(__name__)

Pair = tuple[bytes, bytes, list[str]]  # trace id, root span id, scorer names


class InFlightLedger:
    def __init__(self, path: Path, compact_bytes: int = 16 * 2**20) -> None:
        self._path = path
        self._compact_bytes = compact_bytes
        self._lock = threading.Lock()
        self._file: TextIO | None = None  # opened by recover()

    def recover(self) -> list[Pair]:
        """The pairs a previous run admitted and never finished; the file then starts over, empty."""
        left = _read(self._path) if self._path.exists() else {}
        self._path.parent.mkdir(parents=True, exist_ok=True)
        with self._lock:
            self._file = open(self._path, "w", encoding="ascii")  # noqa: SIM115 - held until close()
        return [(trace_id, span_id, names) for trace_id, (span_id, names) in left.items()]

    def admitted(self, pairs: Iterable[Pair]) -> None:
        self._write("".join(map(_admitted_line, pairs)))

    def finished(self, trace_ids: Iterable[bytes]) -> None:
        self._write("".join(f"F {_hex(t)}\n" for t in trace_ids))

    def compact(self, open_pairs: Iterable[Pair]) -> None:
        """Rewrite the file to just `open_pairs` (the caller's in-flight set) once it has grown past the bound."""
        with self._lock:
            if self._file is None or self._file.tell() < self._compact_bytes:
                return
            temporary = self._path.with_suffix(".compact")
            with open(temporary, "w", encoding="ascii") as out:
                out.writelines(map(_admitted_line, open_pairs))
            os.replace(temporary, self._path)
            self._file.close()
            self._file = open(self._path, "a", encoding="ascii")  # noqa: SIM115

    @property
    def needs_compaction(self) -> bool:
        file = self._file
        return file is not None and file.tell() >= self._compact_bytes

    def close(self, clean: bool) -> None:
        """`clean`: every pair ended (a drained shutdown), so the next start has nothing to recover."""
        with self._lock:
            if self._file is None:
                return
            if clean:
                self._file.truncate(0)
            self._file.close()
            self._file = None

    def _write(self, text: str) -> None:
        if not text:
            return
        with self._lock:
            if self._file is None:
                return
            try:
                self._file.write(text)
                self._file.flush()  # to the kernel now: a kill after this loses nothing
            except OSError:
                log.exception("cannot write the scoring ledger %s; a kill now would lose in-flight pairs", self._path)


def _read(path: Path) -> dict[bytes, tuple[bytes, list[str]]]:
    """Replay the lines; a torn last line (the kill came mid-write) is ignored."""
    left: dict[bytes, tuple[bytes, list[str]]] = {}
    try:
        text = path.read_text(encoding="ascii", errors="replace")
    except OSError:
        log.exception("cannot read the scoring ledger %s; pairs in flight at the last stop are not recorded", path)
        return left
    for line in text.splitlines():
        fields = line.split(" ")
        try:
            if fields[0] == "A" and len(fields) == 4:
                left[_id(fields[1])] = (_id(fields[2]), [name for name in fields[3].split(",") if name])
            elif fields[0] == "F" and len(fields) == 2:
                left.pop(_id(fields[1]), None)
        except ValueError:
            continue
    return left


def _admitted_line(pair: Pair) -> str:
    trace_id, span_id, names = pair
    return f"A {_hex(trace_id)} {_hex(span_id)} {','.join(names)}\n"


def _hex(value: bytes) -> str:
    """An id as the ledger writes it: hex, or `-` for an empty one (so every line splits into its fields)."""
    return value.hex() or "-"


def _id(text: str) -> bytes:
    return b"" if text == "-" else bytes.fromhex(text)

"""RecentVerdicts: the last few hundred verdicts, kept in the sidecar's main process for people to look at.

Verdicts are made in the scoring worker process and come back to the sidecar only encoded (OTLP for the
forwarder, rows for the archive). The status page and `tracejudge tail` want to show them as they happen, so
the sidecar hands this ring the `assessments` rows it relays (exporter/rows.py ASSESSMENTS_SCHEMA) and the
admin listener reads them back. It is bounded (a deque of `capacity` small dicts: a few hundred KB), holds
nothing durable — the archive is the record — and is numbered, so that a reader asks only for what is new
since the last number it saw (`since`).
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol

MAX_RATIONALE = 2000  # characters kept of a rationale: a page row, not the record (the archive keeps it whole)

# The fields of an assessments row a reader sees, under the row's own names.
_FIELDS = ("name", "label", "value", "value_type", "score", "rationale", "error", "error_type", "source",
           "source_id", "trace_id", "span_id", "session_id", "scorer_version", "latency_ms",
           "judge_input_tokens", "judge_output_tokens", "overrides")  # fmt: skip


class RecentVerdicts:
    """A thread-safe, numbered ring of the latest verdicts (not expectations: those are no verdict)."""

    def __init__(self, capacity: int = 200) -> None:
        if capacity < 1:
            raise ValueError(f"RecentVerdicts needs room for at least one verdict, got capacity {capacity}")
        self._ring: deque[dict[str, Any]] = deque(maxlen=capacity)
        self._lock = threading.Lock()
        self._last = 0  # the number of the newest verdict; 0: none yet
        # Numbers start again at 1 when the sidecar restarts: a reader that sees another `run` starts over.
        self.run = uuid.uuid4().hex[:12]

    def add_rows(self, rows: Iterable[Mapping[str, Any]]) -> int:
        """Keep these `assessments` rows' verdicts; returns how many were kept."""
        kept = 0
        with self._lock:
            for row in rows:
                if row.get("expectation"):
                    continue
                self._last += 1
                verdict = {field: row.get(field) for field in _FIELDS}
                rationale = verdict["rationale"]
                if isinstance(rationale, str) and len(rationale) > MAX_RATIONALE:
                    verdict["rationale"] = rationale[:MAX_RATIONALE] + "…"
                timestamp = row.get("timestamp")
                verdict["time_unix_ms"] = (timestamp // 1_000_000) if isinstance(timestamp, int) else _now_ms()
                verdict["seq"] = self._last
                self._ring.append(verdict)
                kept += 1
        return kept

    def since(self, seq: int = 0, scorer: str | None = None, limit: int = 100) -> tuple[list[dict[str, Any]], int]:
        """The verdicts numbered after `seq` (of `scorer`, if given), oldest first, at most the newest `limit`
        of them; and the number to ask from next time (the newest number there is, matched or not)."""
        with self._lock:
            newer = [dict(v) for v in self._ring if v["seq"] > seq and (scorer is None or v["name"] == scorer)]
            last = self._last
        return newer[-limit:] if limit > 0 else [], last

    @property
    def last(self) -> int:
        with self._lock:
            return self._last


class RowSink(Protocol):
    """Where rows go (exporter.emitter.RowSink: the archive, or a relay to it)."""

    def write_rows(self, table: str, rows: Sequence[Mapping[str, Any]]) -> None: ...


class VerdictTap:
    """A row sink that keeps the verdicts of `assessments` rows in `verdicts` and passes every row on to `then`
    (None: nowhere). The sidecar puts it under verdicts made in its own process: human feedback."""

    def __init__(self, verdicts: RecentVerdicts, then: RowSink | None) -> None:
        self._verdicts = verdicts
        self._then = then

    def write_rows(self, table: str, rows: Sequence[Mapping[str, Any]]) -> None:
        if table == "assessments":
            self._verdicts.add_rows(rows)
        if self._then is not None:
            self._then.write_rows(table, rows)


def _now_ms() -> int:
    return time.time_ns() // 1_000_000

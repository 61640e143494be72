"""FeedbackStore: human feedback and expectations on traces, kept, emitted once, and read back by trace id.

What an app's backend posts (a thumbs-up, an expert's label, an expected answer) is an Assessment with source
HUMAN. The store:

1. appends it to a journal under the data directory (`feedback.jsonl`, fsync'd before the call is answered),
   so nothing acknowledged is lost, and rebuilds its index from it at start;
2. emits it through the AssessmentEmitter like any verdict: an `evaluation {name}` span with the
   `gen_ai.evaluation.result` event in the trace, the log record, metrics (source HUMAN), an archive row.
   Expectations are archived only (an expected answer is no verdict). A verdict needs the span it is about:
   the one given, else the trace's root. A trace not decided yet (or not seen at all) is no reason to
   refuse: its feedback is kept pending and emitted when the trace is decided (the store is a
   TraceConsumer), or at once if the trace's root is known (recent traces, or the archive's spans);
3. answers `assessments(trace_id)`: the human ones (an overridden one marked invalid) and the judges' verdicts
   the archive holds; and `expectations(trace_id)`, which live scoring merges into the trace's own.

Feedback is rare next to spans (a thumbs-up per conversation at most), so every logged assessment stays
indexed in memory; 10^6 of them cost about 0.5 GB (noted in the README). pyarrow is imported only when the
archive is read (an older trace's root, the judges' verdicts): the sidecar's own process does not otherwise
hold it, and it costs ~90 MB resident once loaded (measured: 66 MB -> 155 MB for `import tracejudge.sidecar`).
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

from tracejudge.exporter.archive_store import S3Options, archive_filesystem
from tracejudge.model import Assessment, AssessmentSourceType, Trace

log = logging.getLogger(__name__)

_RECENT_ROOTS = 50_000  # decided traces whose root span id is remembered (about 5 MB)


class Emitter(Protocol):
    """exporter/emitter.py AssessmentEmitter, or what stands in for it."""

    def emit(self, assessments: Sequence[Assessment]) -> None: ...
    def shutdown(self, timeout_s: float = 30.0) -> None: ...


class UnknownAssessment(LookupError):
    """override_feedback of an assessment id the trace does not have."""


class FeedbackStore:
    """`journal`: the file feedback is kept in (None: memory only). `emitter`: what it is emitted through (its
    own: the store's shutdown shuts it down).
    `archive_dir`: the archive (a path or an s3:// URI; `archive_s3`: its options), to find older traces' roots
    and the judges' verdicts. `on_expectation`: told of
    every logged expectation (trace id hex, name, value), so that live scoring can read it."""

    def __init__(
        self,
        journal: Path | None,
        emitter: Emitter,
        archive_dir: str | Path | None = None,
        on_expectation: Callable[[str, str, Any], None] | None = None,
        archive_s3: S3Options | None = None,
    ) -> None:
        self._journal = journal
        self._emitter = emitter
        self._archive_dir = archive_dir
        self._archive_s3 = archive_s3
        self._on_expectation = on_expectation
        self._lock = threading.Lock()
        self._by_trace: dict[str, list[Assessment]] = {}
        self._pending: dict[str, list[Assessment]] = {}  # trace id -> waiting for its root span id
        self._roots: OrderedDict[str, str] = OrderedDict()  # trace id -> root span id, of recent decided traces
        if journal is not None:
            self._load(journal)

    def start(self) -> None:
        """Nothing to start: the journal was read when the store was made."""

    def shutdown(self, timeout_s: float = 10.0) -> None:
        """Export what the emitter holds (before the forwarder stops: it carries the verdicts)."""
        self._emitter.shutdown(timeout_s)

    # --- writes ---------------------------------------------------------------------------------------

    def log(self, assessment: Assessment) -> Assessment:
        """Keep, then emit (now, or once its trace is decided); the assessment as stored (id, timestamp)."""
        span_id = assessment.span_id or ("" if assessment.expectation else self._root_of(assessment.trace_id) or "")
        stored = replace(assessment, span_id=span_id, assessment_id=assessment.assessment_id or os.urandom(8).hex(),
                         timestamp_ns=assessment.timestamp_ns or time.time_ns())  # fmt: skip
        with self._lock:
            self._append(stored)  # a journal entry without a span id is a feedback still waiting for its trace
            self._by_trace.setdefault(stored.trace_id, []).append(stored)
        if stored.expectation and self._on_expectation is not None:
            self._on_expectation(stored.trace_id, stored.name, stored.value)
        self._emit_or_hold(stored)
        return stored

    def override(self, trace_id: str, assessment_id: str, new: Assessment) -> Assessment:
        """A feedback replacing `assessment_id` (which stays, marked invalid); same name and span unless given."""
        with self._lock:
            old = next((a for a in self._by_trace.get(trace_id, []) if a.assessment_id == assessment_id), None)
        if old is None:
            old = next((a for a in self._archived(trace_id) if a.assessment_id == assessment_id), None)
        if old is None:
            raise UnknownAssessment(f"trace {trace_id} has no assessment {assessment_id!r}")
        return self.log(replace(new, name=new.name or old.name, span_id=new.span_id or old.span_id,
                                overrides=assessment_id, expectation=old.expectation))  # fmt: skip

    # --- reads ----------------------------------------------------------------------------------------

    def assessments(self, trace_id: str) -> list[tuple[Assessment, bool]]:
        """Every assessment of the trace with whether it is still valid (nothing overrides it), oldest first."""
        with self._lock:
            human = list(self._by_trace.get(trace_id, []))
        found = [*self._archived(trace_id), *human]
        overridden = {a.overrides for a in found if a.overrides}
        found.sort(key=lambda a: a.timestamp_ns)
        return [(a, a.assessment_id not in overridden) for a in found]

    def trace_ids(self) -> list[str]:
        """Every trace something was logged for."""
        with self._lock:
            return list(self._by_trace)

    def expectations(self, trace_id: str) -> dict[str, Any]:
        """The trace's logged expectations by name, the latest valid one of each."""
        with self._lock:
            logged = [a for a in self._by_trace.get(trace_id, []) if a.expectation]
        overridden = {a.overrides for a in logged if a.overrides}
        return {a.name: a.value for a in logged if a.assessment_id not in overridden}

    # --- the traces it waits for ------------------------------------------------------------------------

    def consume(self, traces: Sequence[Trace]) -> None:
        """Decided traces: their roots are remembered, and feedback waiting for them is emitted."""
        ready: list[Assessment] = []
        with self._lock:
            for trace in traces:
                root = trace.root
                if root is None:
                    continue
                trace_id, span_id = trace.trace_id.hex(), root.span_id.hex()
                self._roots[trace_id] = span_id
                for waiting in self._pending.pop(trace_id, []):
                    ready.append(replace(waiting, span_id=span_id))
            while len(self._roots) > _RECENT_ROOTS:
                self._roots.popitem(last=False)
        if ready:
            self._emitter.emit(ready)

    def pending(self) -> int:
        with self._lock:
            return sum(len(items) for items in self._pending.values())

    # --- internals --------------------------------------------------------------------------------------

    def _emit_or_hold(self, assessment: Assessment) -> None:
        if assessment.span_id or assessment.expectation:
            self._emitter.emit([assessment])
            return
        with self._lock:
            self._pending.setdefault(assessment.trace_id, []).append(assessment)
        log.info("feedback %r on trace %s kept until the trace is seen", assessment.name, assessment.trace_id)

    def _root_of(self, trace_id: str) -> str | None:
        with self._lock:
            known = self._roots.get(trace_id)
        if known is not None:
            return known
        table = self._read("spans", ["span_id"], trace_id, roots_only=True)
        roots = table.column("span_id").to_pylist() if table is not None else []
        return str(roots[0]) if roots else None

    def _archived(self, trace_id: str) -> list[Assessment]:
        """The verdicts of judges and code the archive holds for the trace (human ones come from the journal)."""
        columns = ["trace_id", "span_id", "name", "value", "value_type", "score", "label", "rationale", "error",
                   "error_type", "source", "source_id", "session_id", "scorer_version", "metadata", "timestamp",
                   "assessment_id", "overrides"]  # fmt: skip
        table = self._read("assessments", columns, trace_id)
        if table is None:
            return []
        out = []
        for row in table.to_pylist():
            if row["source"] == "HUMAN":
                continue  # those come from the journal
            out.append(Assessment(
                name=row["name"], trace_id=row["trace_id"], span_id=row["span_id"],
                value=_value(row["value"], row["value_type"]), source=AssessmentSourceType(row["source"]),
                source_id=row["source_id"] or "", score=row["score"], label=row["label"], rationale=row["rationale"],
                error=row["error"], error_type=row["error_type"], session_id=row["session_id"],
                scorer_version=row["scorer_version"] or 1, metadata=json.loads(row["metadata"] or "{}"),
                timestamp_ns=int(row["timestamp"].timestamp() * 1e9) if row["timestamp"] else 0,
                assessment_id=row["assessment_id"] or "", overrides=row["overrides"],
            ))  # fmt: skip
        return out

    def _read(self, table: str, columns: list[str], trace_id: str, roots_only: bool = False) -> Any:
        """One archive table's rows of one trace, every closed file (a scan: feedback reads are rare). Hidden
        files (the writer's open .tmp ones) are skipped, as pyarrow.dataset skips names starting with '.'."""
        if self._archive_dir is None:
            return None
        import pyarrow.compute as pc
        import pyarrow.dataset as ds
        import pyarrow.fs as pafs

        from tracejudge.exporter import rows

        where = pc.field("trace_id") == trace_id
        if roots_only:
            where = where & (pc.field("parent_span_id") == "")
        schema = {"spans": rows.SPANS_SCHEMA, "assessments": rows.ASSESSMENTS_SCHEMA}[table]
        try:
            filesystem, root = archive_filesystem(self._archive_dir, self._archive_s3)
            if filesystem.get_file_info(f"{root}/{table}").type != pafs.FileType.Directory:
                return None
            dataset = ds.dataset(f"{root}/{table}", schema=schema, format="parquet", filesystem=filesystem)
            return dataset.to_table(columns=columns, filter=where)
        except (OSError, ValueError) as exc:  # a file removed under us (retention), the store away: answer without
            log.warning("could not read the archive's %s for feedback: %s", table, exc)
            return None

    def _append(self, assessment: Assessment) -> None:
        if self._journal is None:
            return
        entry = {**asdict(assessment), "source": assessment.source.value, "trace_ids": list(assessment.trace_ids)}
        self._journal.parent.mkdir(parents=True, exist_ok=True)
        with self._journal.open("ab") as out:
            out.write(json.dumps(entry).encode() + b"\n")
            out.flush()
            os.fsync(out.fileno())

    def _load(self, path: Path) -> None:
        if not path.exists():
            return
        kept = 0
        for number, line in enumerate(path.read_bytes().splitlines(), 1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
                entry["source"] = AssessmentSourceType(entry["source"])
                entry["trace_ids"] = tuple(entry.get("trace_ids") or ())
                assessment = Assessment(**entry)
            except (ValueError, TypeError, KeyError) as exc:  # a torn last line: never acknowledged
                log.warning("%s:%d: not a feedback entry (%s); skipped", path, number, exc)
                continue
            self._by_trace.setdefault(assessment.trace_id, []).append(assessment)
            if not assessment.span_id and not assessment.expectation:
                self._pending.setdefault(assessment.trace_id, []).append(assessment)  # its trace was never seen
            kept += 1
        if kept:
            log.info("%d human feedback and expectations read back from %s", kept, path)


def _value(text: str | None, kind: str | None) -> Any:
    if text is None:
        return None
    if kind == "bool":
        return text == "true"
    if kind in ("int", "float"):
        return int(text) if kind == "int" else float(text)
    return text


@dataclass
class LoggedAssessments:
    """What humans logged in a data directory (its `feedback.jsonl`): expectations and valid feedback by trace."""

    expectations: dict[str, dict[str, Any]] = field(default_factory=dict)
    feedback: dict[str, list[dict[str, Any]]] = field(default_factory=dict)


def logged_assessments(directory: str | Path) -> LoggedAssessments:
    """The feedback journal of a data directory (or of the data directory an archive directory is in), read as
    the sidecar reads it; empty when there is none."""
    if isinstance(directory, str) and "://" in directory:
        return LoggedAssessments()
    path = Path(directory)
    journal = next((d / "feedback.jsonl" for d in (path, path.parent) if (d / "feedback.jsonl").exists()), None)
    if journal is None:
        return LoggedAssessments()
    store = FeedbackStore(journal, _NoEmitter())
    logged = LoggedAssessments()
    for trace_id in store.trace_ids():
        expected = store.expectations(trace_id)
        if expected:
            logged.expectations[trace_id] = expected
        valid = [a for a, ok in store.assessments(trace_id) if ok and not a.expectation]
        if valid:
            logged.feedback[trace_id] = [_feedback_row(a) for a in valid]
    return logged


def _feedback_row(assessment: Assessment) -> dict[str, Any]:
    return {"name": assessment.name, "value": assessment.value, "rationale": assessment.rationale,
            "source_id": assessment.source_id, "assessment_id": assessment.assessment_id}  # fmt: skip


class _NoEmitter:
    def emit(self, assessments: Sequence[Assessment]) -> None:
        """Reading a journal back emits nothing."""

    def shutdown(self, timeout_s: float = 30.0) -> None:
        """Nothing to stop."""

"""How whatever a scorer produced becomes Assessments of the trace it scored, for every kind of scorer.

A check or a code scorer returns a bool, a number, a string, a Feedback or a list of them; a judge
answers a value and a rationale; any of them may fail, time out or have nothing to judge. Each of
those is an Assessment here, built the same way whoever produced it, so a gap in the results is
never silent: a failure is an assessment with `error` set and `label` "error".
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any

from tracejudge.model import Assessment, AssessmentSourceType, AssessmentValue, Feedback

from .view import Judged, TraceView


@dataclass(frozen=True, slots=True)
class Verdicts:
    """One scorer's way of stating verdicts: its name, version and who judges (source and source id)."""

    name: str
    version: int
    source: AssessmentSourceType
    source_id: str

    def of(self, result: Any, view: Judged, latency_ms: float) -> list[Assessment]:
        """What a check or a code scorer returned, normalized into assessments."""
        items = result if isinstance(result, list) else [result]
        return [self._one(item, view, latency_ms) for item in items]

    def judged(self, view: Judged, value: Any, rationale: Any, *, source_id: str, input_tokens: int | None,
               output_tokens: int | None, latency_ms: float, attempts: int) -> Assessment:  # fmt: skip
        """An LLM judge's answer."""
        value = value if isinstance(value, (bool, int, float, str)) else None
        return Assessment(
            name=self.name, **_ids(view), value=value, source=self.source,
            source_id=source_id, score=numeric_score(value), label=value_label(value),
            rationale=str(rationale) if rationale is not None else None, session_id=view.session_id,
            scorer_version=self.version, judge_input_tokens=input_tokens, judge_output_tokens=output_tokens,
            latency_ms=latency_ms, metadata={"attempts": str(attempts)}, timestamp_ns=time.time_ns(),
        )  # fmt: skip

    def error(self, view: Judged, kind: str, message: str) -> Assessment:
        """A scorer that produced no verdict: `kind` is short and machine-readable (timeout, exception, ...)."""
        return Assessment(
            name=self.name, **_ids(view), value=None, source=self.source,
            source_id=self.source_id, label="error", error=message, error_type=kind, session_id=view.session_id,
            scorer_version=self.version, timestamp_ns=time.time_ns(),
        )  # fmt: skip

    def raised(self, view: Judged, exc: Exception) -> Assessment:
        return self.error(view, "exception", f"{type(exc).__name__}: {exc}")

    def not_applicable(self, view: Judged, missing: list[str]) -> Assessment:
        """A judge shown nothing to judge: its verdict would look like a real one, so it is not asked."""
        return Assessment(
            name=self.name, **_ids(view), value=None, source=self.source,
            source_id=self.source_id, label="not_applicable",
            rationale=f"not applicable: the {_kind(view)} has no {' or '.join(missing)}", session_id=view.session_id,
            scorer_version=self.version, timestamp_ns=time.time_ns(),
        )  # fmt: skip

    def _one(self, item: Any, view: Judged, latency_ms: float) -> Assessment:
        feedback = item if isinstance(item, Feedback) else Feedback(value=item)
        value = feedback.value
        if not isinstance(value, (bool, int, float, str, type(None))):
            return self.error(view, "bad_return", f"returned {type(value).__name__}; expected bool, number, str or "
                                                  "Feedback")  # fmt: skip
        return Assessment(
            name=feedback.name or self.name, **_ids(view), value=value,
            source=self.source, source_id=self.source_id, score=numeric_score(value), label=value_label(value),
            rationale=feedback.rationale, error=feedback.error, error_type="scorer_error" if feedback.error else None,
            session_id=view.session_id, scorer_version=self.version, metadata=dict(feedback.metadata),
            latency_ms=latency_ms, timestamp_ns=time.time_ns(),
        )  # fmt: skip


def _ids(view: Judged) -> dict[str, Any]:
    """Where a verdict belongs: the judged span (a session's: its first trace's root) and every trace judged."""
    return {"trace_id": view.trace_id, "span_id": view.root_span_id, "trace_ids": view.trace_ids,
            "assessment_id": os.urandom(8).hex()}  # fmt: skip


def numeric_score(value: AssessmentValue) -> float | None:
    """A verdict's numeric reading, so metrics can aggregate it: bool 1/0, a number itself, yes/no words."""
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str) and value.lower() in ("yes", "no", "pass", "fail", "true", "false"):
        return 1.0 if value.lower() in ("yes", "pass", "true") else 0.0
    return None


def value_label(value: AssessmentValue) -> str | None:
    """A low-cardinality text form (yes/no, a category): metric labels and OTel's score.label."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, str) and len(value) <= 64:
        return value
    return None


def _kind(view: Judged) -> str:
    return "trace" if isinstance(view, TraceView) else "session"

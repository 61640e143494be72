"""tracejudge: an OpenTelemetry sidecar that forwards, archives and scores LLM and agent traces.

`tracejudge.evaluate`, `tracejudge.ArchivedTraces` (tracejudge/evaluation.py) and MLflow's feedback calls
(`log_feedback`, `log_expectation`, `override_feedback`, `get_assessments`, `AssessmentSource`) and
`backfill_scorers` / `BackfillScorerConfig` (the client in tracejudge/scorers.py) are imported when first
used: `import tracejudge` stays light.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "evaluate": "tracejudge.evaluation",
    "ArchivedTraces": "tracejudge.evaluation",
    "log_feedback": "tracejudge.scorers",
    "log_expectation": "tracejudge.scorers",
    "override_feedback": "tracejudge.scorers",
    "get_assessments": "tracejudge.scorers",
    "AssessmentSource": "tracejudge.scorers",
    "AssessmentSourceType": "tracejudge.scorers",
    "backfill_scorers": "tracejudge.scorers",
    "BackfillScorerConfig": "tracejudge.scorers",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'tracejudge' has no attribute {name!r}")

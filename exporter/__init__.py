"""Where spans and verdicts leave tracejudge: the forwarder, the archive, the assessment emitter.

`ScoringSpanProcessor` (tracejudge/inprocess.py) is offered here too, where users look for an
OpenTelemetry span processor; it is imported only when asked for, so that nothing else that imports
this package (the sidecar's ingest process, the archive writer) imports the scoring stack with it.
"""

from __future__ import annotations

from typing import Any

__all__ = ["ScoringSpanProcessor"]


def __getattr__(name: str) -> Any:
    if name == "ScoringSpanProcessor":
        from tracejudge.inprocess import ScoringSpanProcessor

        return ScoringSpanProcessor
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

"""tracejudge: an OpenTelemetry sidecar that forwards, archives and scores LLM and agent traces.

`tracejudge.evaluate` and `tracejudge.ArchivedTraces` (tracejudge/evaluation.py) are imported when first used:
`import tracejudge` stays light for an app that only wants the version or the client.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_LAZY = {"evaluate": "tracejudge.evaluation", "ArchivedTraces": "tracejudge.evaluation"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'tracejudge' has no attribute {name!r}")

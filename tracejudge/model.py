"""The vocabulary every part of tracejudge speaks.

Receivers produce these, the assembler groups them, exporters and (later) scorers consume them.
Nothing here knows about transports or storage.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import NamedTuple


class Signal(str, enum.Enum):
    """An OTLP signal; its value is the path segment of the OTLP/HTTP endpoint."""

    TRACES = "traces"
    METRICS = "metrics"
    LOGS = "logs"


class CompletionReason(str, enum.Enum):
    """Why the assembler decided a trace was finished."""

    ROOT_IDLE = "root_idle"
    TIMEOUT = "timeout"
    MEMORY_CAP = "memory_cap"
    SHUTDOWN = "shutdown"


class BufferedSpan(NamedTuple):
    """A span kept compact while its trace is assembled: hot fields plus the serialized span.

    Parsed protobuf spans cost several KB each; the wire bytes cost about their size. A NamedTuple
    because one is built per received span, and a tuple is the cheapest object to build.
    """

    span_id: bytes
    parent_span_id: bytes
    start_time_unix_nano: int
    end_time_unix_nano: int
    status_code: int
    is_local_root: bool
    span_bytes: bytes
    resource_bytes: bytes
    scope_bytes: bytes


class BufferedLog(NamedTuple):
    """A GenAI log event kept with its trace (the legacy message events carry prompts)."""

    span_id: bytes
    log_bytes: bytes
    resource_bytes: bytes


@dataclass(slots=True)
class Trace:
    """A trace the assembler has decided on; handed to a TraceConsumer exactly once."""

    trace_id: bytes
    spans: list[BufferedSpan]
    logs: list[BufferedLog]
    first_seen: float
    last_seen: float
    reason: CompletionReason
    complete: bool

    @property
    def root(self) -> BufferedSpan | None:
        """The earliest-starting local root span, if one arrived."""
        roots = [s for s in self.spans if s.is_local_root]
        return min(roots, key=lambda s: s.start_time_unix_nano) if roots else None

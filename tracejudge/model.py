"""The vocabulary every part of tracejudge speaks.

Receivers produce these, the assembler groups them, scorers and exporters consume them.
Nothing here knows about transports or storage.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol


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
    FLUSH = "flush"  # an in-process span processor's force_flush decided it (its root had ended)
    END_OF_INPUT = "end_of_input"  # a batch source (an archive window, a file) has no more spans


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
    """A decided trace: complete (its local root arrived) or given up on (`complete` False).

    Every trace source yields these, whether the spans came live over OTLP, from the archive, from a
    file or from an app's own SDK, so extraction and scoring read them all the same way."""

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


class TraceConsumer(Protocol):
    """Receives every decided trace exactly once, in batches. The live assembler calls it on its own
    thread, so it must be quick."""

    def consume(self, traces: Sequence[Trace]) -> None: ...


class TraceSource(Protocol):
    """Yields decided traces in batches until it has no more: the archive over a time window, a file. The
    live assembler is the push form of a source: it hands its traces to a TraceConsumer as they complete."""

    def batches(self) -> Iterator[list[Trace]]: ...


class AssessmentSourceType(str, enum.Enum):
    """Who produced a verdict (MLflow's AssessmentSourceType; MLflow's AssessmentSource is the client's class
    pairing one with a source id)."""

    LLM_JUDGE = "LLM_JUDGE"
    CODE = "CODE"
    HUMAN = "HUMAN"


AssessmentValue = bool | int | float | str | None


@dataclass(frozen=True, slots=True)
class Assessment:
    """One verdict on one trace (parity with MLflow's Feedback).

    `value` is what the scorer returned; `score` is its numeric reading where one exists (bool: 1/0,
    number: itself), so metrics can aggregate it; `label` is a low-cardinality text form (yes/no,
    a category, "not_applicable", "error"). A failed scorer still yields an Assessment, with `error`
    set and `value` None: a gap in the results is never silent.
    """

    name: str
    trace_id: str  # hex
    span_id: str  # hex: the evaluated span (the trace's root; a span target's span; a session's first root)
    value: AssessmentValue
    source: AssessmentSourceType
    source_id: str  # the judge's model, or the code scorer's module:function
    score: float | None = None
    label: str | None = None
    rationale: str | None = None
    error: str | None = None  # message
    error_type: str | None = None  # short machine-readable kind: timeout, rate_limited, exception, ...
    session_id: str | None = None
    scorer_version: int = 1
    metadata: dict[str, str] = field(default_factory=dict)
    judge_input_tokens: int | None = None
    judge_output_tokens: int | None = None
    latency_ms: float | None = None
    timestamp_ns: int = 0
    trace_ids: tuple[str, ...] = ()  # a session verdict: every trace judged, in order (trace_id is the first)
    assessment_id: str = ""  # unique; "" when the producer gave none
    overrides: str | None = None  # the assessment_id this one supersedes (a session re-scored as it grew)
    expectation: bool = False  # an expected answer (MLflow's Expectation; from a human), not a verdict


@dataclass(frozen=True)
class Feedback:
    """A verdict a code scorer returns when a bare value is not enough (MLflow's Feedback); tracejudge turns
    it into an Assessment of the trace it scored."""

    value: AssessmentValue = None
    rationale: str | None = None
    name: str | None = None  # defaults to the scorer's name
    metadata: dict[str, str] = field(default_factory=dict)
    error: str | None = None

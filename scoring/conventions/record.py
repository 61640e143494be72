"""What a convention reader is handed and fills: one span, parsed once, and the facts found in it.

Why a record rather than a view per convention: several conventions can describe the same span (an
OpenLLMetry span also carries gen_ai.* keys, a LangChain span traced twice carries both OpenInference and
GenAI keys). Each reader fills only the fields still empty, so the first convention (by registration
order) to know a field wins, and the trace-level rules in extract.py read one record per span whatever
wrote it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from opentelemetry.proto.trace.v1.trace_pb2 import Span

from tracejudge.scoring.values import Parsed, json_text, parse_messages, scalar
from tracejudge.scoring.view import Document, Message, ToolCall

__all__ = [
    "LLM_KINDS",
    "RETRIEVER_KINDS",
    "Convention",
    "Decoder",
    "Event",
    "EventReader",
    "Reader",
    "SpanRecord",
    "parse_inputs",
    "parse_outputs",
    "span_kind",
    "span_tool",
]

_KINDS = frozenset({"LLM", "CHAT_MODEL", "RETRIEVER", "TOOL", "AGENT", "CHAIN", "EMBEDDING", "UNKNOWN"})
_STEP_KINDS = frozenset({"PARSER", "RERANKER", "MEMORY", "WORKFLOW", "TASK", "GUARDRAIL", "EVALUATOR", "PROMPT"})
LLM_KINDS = frozenset({"LLM", "CHAT_MODEL"})
RETRIEVER_KINDS = frozenset({"RETRIEVER"})


@dataclass(slots=True)
class SpanRecord:
    """One span, parsed once, with what the convention readers found in it."""

    span: Span
    span_id: str
    parent_id: str
    start: int
    attrs: dict[str, Any]
    genai: bool = False
    kind: str = ""
    inputs: Any = None
    outputs: Any = None
    trace_input: Any = None
    trace_output: Any = None
    input_messages: list[Message] = field(default_factory=list)
    output_messages: list[Message] = field(default_factory=list)
    model: str = ""
    provider: str = ""
    input_tokens: int | None = None
    output_tokens: int | None = None
    documents: list[Document] = field(default_factory=list)
    tool: ToolCall | None = None
    error: bool = False
    errors: list[str] = field(default_factory=list)
    # (inputs, parse_messages(inputs, "user")) and (outputs, parse_messages(outputs, "assistant")) where a
    # reader parsed them: the request/response text reuses them instead of parsing the same value again.
    parsed_inputs: Parsed | None = None
    parsed_outputs: Parsed | None = None


# A span-attribute reader: fills the record's empty fields from record.attrs. The dict collects tool
# results by call id from messages anywhere in the trace (the first one written for an id wins).
Reader = Callable[[SpanRecord, dict[str, str]], None]
# A span event: its name and its attributes.
Event = tuple[str, dict[str, Any]]
# A span-event reader: called once per span that has events the convention owns, with those events in
# the span's order, whether or not the span's attributes follow the convention.
EventReader = Callable[[SpanRecord, list[Event], dict[str, str]], None]
# Rewrites a span's attribute values before any reader sees them (and before the view keeps them).
Decoder = Callable[[dict[str, Any]], dict[str, Any]]


@dataclass(frozen=True, slots=True)
class Convention:
    """How one instrumentation's spans are recognised and read.

    A span follows the convention if it carries any of `markers` as a key, or any key starting with one
    of `prefixes`; then `decode` (if any) rewrites its attribute values and `read` fills its record.
    `events` are the span event names the convention owns, read by `read_events` on any span."""

    name: str
    read: Reader
    markers: tuple[str, ...] = ()
    prefixes: tuple[str, ...] = ()
    events: tuple[str, ...] = ()
    read_events: EventReader | None = None
    decode: Decoder | None = None


def span_kind(name: Any) -> str:
    """A span type name of OpenInference or MLflow, normalized to the TraceView's eight."""
    text = name.upper() if isinstance(name, str) else ""
    if text in _KINDS:
        return text
    return "CHAIN" if text in _STEP_KINDS else "UNKNOWN"


def span_tool(r: SpanRecord, name: str, arguments: Any, call_id: Any, result: Any) -> ToolCall:
    """A tool span's call; strings are kept as written, structured values become compact JSON."""
    return ToolCall(
        name=name,
        arguments="" if arguments is None else json_text(arguments),
        id=scalar(call_id),
        result=None if result is None else json_text(result),
        span_id=r.span_id,
    )


def parse_inputs(r: SpanRecord, results: dict[str, str]) -> list[Message]:
    """parse_messages(r.inputs), remembered on `r` for the request text."""
    messages = parse_messages(r.inputs, "user", results)
    r.parsed_inputs = (r.inputs, messages)
    return list(messages)


def parse_outputs(r: SpanRecord, results: dict[str, str]) -> list[Message]:
    """parse_messages(r.outputs), remembered on `r` for the response text."""
    messages = parse_messages(r.outputs, "assistant", results)
    r.parsed_outputs = (r.outputs, messages)
    return list(messages)

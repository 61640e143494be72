"""TraceView: one normalized view of a completed trace, whatever convention its spans use.

Extraction (scoring/extract.py) builds it from a model.Trace; filter strings, samplers and scorers
read only this, so no scorer knows about OpenInference, OpenLLMetry, MLflow or Langfuse attributes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class ToolCall:
    name: str
    arguments: str = ""  # JSON text as the model produced it
    id: str = ""
    result: str | None = None  # the tool's answer, when a tool span or message carries it
    span_id: str = ""  # the tool span that executed it; "" when no tool span ran it
    requested_span_id: str = ""  # the LLM span whose output asked for it; "" when no model output did


@dataclass(frozen=True, slots=True)
class Message:
    role: str  # system | user | assistant | tool
    content: str
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str = ""  # on a tool message: the call it answers


@dataclass(frozen=True, slots=True)
class Document:
    content: str
    id: str = ""
    score: float | None = None
    uri: str = ""
    metadata: Mapping[str, Any] = field(default_factory=dict)  # as the retriever recorded it (title, chunk, ...)


@dataclass(frozen=True, slots=True)
class LlmCall:
    span_id: str
    model: str
    provider: str
    input_messages: tuple[Message, ...]
    output_messages: tuple[Message, ...]
    input_tokens: int | None = None
    output_tokens: int | None = None


@dataclass(frozen=True, slots=True)
class SpanView:
    """What filter strings may ask of a span (MLflow's `span.name`, `span.type`, `span.attributes.k`)."""

    span_id: str
    parent_span_id: str
    name: str
    span_type: str  # LLM | CHAT_MODEL | RETRIEVER | TOOL | AGENT | CHAIN | EMBEDDING | UNKNOWN
    status: str  # OK | ERROR | UNSET
    start_time_ns: int
    end_time_ns: int
    attributes: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class TraceView:
    trace_id: str  # hex
    root_span_id: str
    service_name: str
    status: str  # MLflow's trace status: ERROR when any span failed, else OK (OTel's UNSET counts as OK)
    timestamp_ms: int  # trace start, epoch milliseconds
    execution_time_ms: int
    request: Any  # the root span's inputs (MLflow's rule), decoded from JSON where it was JSON
    response: Any  # the root span's outputs
    request_text: str  # `request` flattened to readable text for judges ("" when none)
    response_text: str
    llm_calls: tuple[LlmCall, ...]
    retrieved_documents: tuple[Document, ...]
    tool_calls: tuple[ToolCall, ...]
    spans: tuple[SpanView, ...]
    tags: Mapping[str, str]  # MLflow `tags.k`: root span attributes, then resource attributes, as text
    session_id: str | None = None
    user_id: str | None = None
    model: str | None = None  # the last LLM call's response model, else request model
    input_tokens: int | None = None  # summed over LLM calls
    output_tokens: int | None = None
    errors: tuple[str, ...] = ()  # status messages, exception types/messages
    expectations: Mapping[str, Any] = field(default_factory=dict)
    has_genai: bool = False  # False: no GenAI data anywhere; scorers leave such a trace alone
    complete: bool = True

    @property
    def trace_ids(self) -> tuple[str, ...]:
        """The traces one verdict on this view judged: only this one (a SessionView has several)."""
        return ()

    @property
    def total_tokens(self) -> int | None:
        if self.input_tokens is None and self.output_tokens is None:
            return None
        return (self.input_tokens or 0) + (self.output_tokens or 0)


@dataclass(frozen=True, slots=True)
class Turn:
    """One trace of a conversation, kept compact while its session is open: what a multi-turn judge reads of
    it (the request, the answer, the tool calls), never its spans."""

    trace_id: str
    root_span_id: str
    timestamp_ms: int  # the trace's start: turns are ordered by it
    request: str
    response: str
    tool_calls: tuple[ToolCall, ...] = ()
    system: str = ""  # the system prompt its first LLM call was given (role adherence reads it)

    @property
    def size(self) -> int:
        """Bytes it holds, about: the byte cap of open sessions counts these."""
        tools = sum(len(c.name) + len(c.arguments) + len(c.result or "") + 64 for c in self.tool_calls)
        return 240 + len(self.request) + len(self.response) + len(self.system) + tools


@dataclass(frozen=True, slots=True)
class SessionView:
    """A conversation as multi-turn scorers see it: its turns in order. Its verdicts attach to the first
    trace's root span (MLflow's rule), and name every trace judged."""

    session_id: str
    turns: tuple[Turn, ...]

    @property
    def trace_id(self) -> str:
        return self.turns[0].trace_id

    @property
    def root_span_id(self) -> str:
        return self.turns[0].root_span_id

    @property
    def trace_ids(self) -> tuple[str, ...]:
        return tuple(turn.trace_id for turn in self.turns)

    def messages(self) -> list[dict[str, str]]:
        """The conversation as chat messages (a code scorer's `conversation`): system, then user/assistant."""
        system = next((turn.system for turn in self.turns if turn.system), "")
        messages = [{"role": "system", "content": system}] if system else []
        for turn in self.turns:
            if turn.request:
                messages.append({"role": "user", "content": turn.request})
            if turn.response:
                messages.append({"role": "assistant", "content": turn.response})
        return messages


Judged = TraceView | SessionView  # what one verdict judges: a trace (or one span of it, as a view) or a session

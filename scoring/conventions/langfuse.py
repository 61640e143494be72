"""Langfuse (SDK v3, OTel-based): langfuse.observation.* and trace-level langfuse.trace.*.

Why it is read last: Langfuse's keys restate what a GenAI or OpenInference instrumentation on the same
span already wrote; it adds what only Langfuse has: the trace's own input/output (set on any span,
preferred over the root span's by the trace-level rules) and an observation level of ERROR, which
fails the span as a status would.
"""

from __future__ import annotations

from tracejudge.scoring.conventions.record import Convention, SpanRecord, span_tool
from tracejudge.scoring.values import decoded, first, first_int, scalar

__all__ = ["CONVENTION"]

_KINDS = {
    "generation": "LLM",
    "agent": "AGENT",
    "tool": "TOOL",
    "chain": "CHAIN",
    "retriever": "RETRIEVER",
    "embedding": "EMBEDDING",
    "evaluator": "CHAIN",
    "guardrail": "CHAIN",
}


def read(r: SpanRecord, results: dict[str, str]) -> None:
    a = r.attrs
    observation = scalar(a.get("langfuse.observation.type"))
    r.kind = r.kind or _KINDS.get(observation, "UNKNOWN" if observation else "")
    r.inputs = first(r.inputs, decoded(a.get("langfuse.observation.input")))
    r.outputs = first(r.outputs, decoded(a.get("langfuse.observation.output")))
    r.trace_input = decoded(a.get("langfuse.trace.input"))
    r.trace_output = decoded(a.get("langfuse.trace.output"))
    r.model = r.model or scalar(a.get("langfuse.observation.model.name"))
    usage = decoded(a.get("langfuse.observation.usage_details"))
    if isinstance(usage, dict):
        r.input_tokens = first(r.input_tokens, first_int(usage, "input", "input_tokens", "prompt_tokens"))
        r.output_tokens = first(r.output_tokens, first_int(usage, "output", "output_tokens", "completion_tokens"))
    if scalar(a.get("langfuse.observation.level")).upper() == "ERROR":
        r.error = True
        r.errors.append(scalar(a.get("langfuse.observation.status_message")) or f"{r.span.name}: level ERROR")
    if r.kind == "TOOL" and r.tool is None:
        r.tool = span_tool(r, r.span.name, r.inputs, None, r.outputs)


CONVENTION = Convention(
    name="langfuse",
    read=read,
    prefixes=(
        "langfuse.observation.",
        "langfuse.trace.",
    ),
)

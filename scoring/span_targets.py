"""Span targets: a scorer that judges spans of a trace, each on its own (`target: {span_type: RETRIEVER}`).

Langfuse recommends judging single observations (an LLM call, a retrieval, a tool call) rather than whole
traces: RetrievalRelevance on every retrieval, ToolCallCorrectness on every tool call, Safety on every LLM
reply. Each matching span becomes a TraceView of its own (`span_target_views`), so every evaluator — judges,
checks, code scorers — reads it as it reads a trace, and the verdict is parented to that span:

- `root_span_id`: the span (the assessment's span id, the evaluation span's parent);
- request / response: the span's own inputs and outputs (an LLM span: its last user message and its answer;
  a retriever: its query); a tool span keeps the trace's request (the user's question) and shows its own call
  with its arguments and result as the tool calls;
- documents: a retriever's own; tool calls: a tool span's own call, or the calls an LLM span asked for;
- `spans`: only that span, so a target's `filter_string` asks `span.*` of that span alone (other keys read the
  trace's fields);
- the rest (trace id, session, service, tags, expectations) is the trace's.

An LLM or retriever span nested in another of its kind (a framework span around the provider SDK's) is the
same operation twice: only the outer one is a target, as extraction folds them for traces.

Sampling is consistent per (trace, span): R = the trace's randomness XOR the span id's low 56 bits (both
uniform, so R is), compared with the scorer's threshold; nested across scorers like traces. Of the sampled
matches, the first `max_spans_per_trace` by start time are judged; the rest are returned as cut, to be
recorded as skipped (`max_spans`).
"""

from __future__ import annotations

from dataclasses import replace
from fnmatch import fnmatchcase
from functools import lru_cache

from tracejudge.scoring.conventions.record import LLM_KINDS, SpanRecord
from tracejudge.scoring.extract import nested_in_own_kind, span_view
from tracejudge.scoring.filters import TraceFilter, parse_filter
from tracejudge.scoring.sampling import RANDOMNESS_BITS, randomness, threshold
from tracejudge.scoring.spec import SpanTarget
from tracejudge.scoring.values import blank, pick, text_of
from tracejudge.scoring.view import LlmCall, TraceView

__all__ = ["span_randomness", "span_target_views"]

_LOW = (1 << RANDOMNESS_BITS) - 1


def span_randomness(trace_id: str, span_id: str) -> int:
    """The 56-bit randomness of one (trace, span) pair: the trace's, XOR the span id's low 56 bits."""
    return randomness(trace_id) ^ (int(span_id, 16) & _LOW if span_id else 0)


def span_target_views(
    view: TraceView, records: dict[str, SpanRecord], target: SpanTarget, rate: float
) -> tuple[list[TraceView], list[str]]:
    """The views of the spans to judge, in start order, and the ids of sampled matches cut by the cap."""
    bar = threshold(rate)
    span_filter = _filter(target.filter_string)
    chosen: list[TraceView] = []
    cut: list[str] = []
    for record in sorted(records.values(), key=lambda r: r.start):
        if not _matches(record, target, records) or span_randomness(view.trace_id, record.span_id) < bar:
            continue
        candidate = _span_target_view(view, record)
        if not span_filter.matches(candidate):
            continue
        if len(chosen) < target.max_spans_per_trace:
            chosen.append(candidate)
        else:
            cut.append(record.span_id)
    return chosen, cut


def _matches(record: SpanRecord, target: SpanTarget, records: dict[str, SpanRecord]) -> bool:
    if target.span_type is not None:
        wanted = LLM_KINDS if target.span_type in LLM_KINDS else {target.span_type}
        if record.kind not in wanted:
            return False
    if target.name is not None and not fnmatchcase(record.span.name, target.name):
        return False
    return not nested_in_own_kind(record, records)


@lru_cache(maxsize=256)
def _filter(text: str | None) -> TraceFilter:
    """Parsed once per target (the spec validated it)."""
    return parse_filter(text)


def _span_target_view(view: TraceView, r: SpanRecord) -> TraceView:
    calls: tuple[LlmCall, ...] = ()
    if r.kind in LLM_KINDS:
        request_text = pick(r.input_messages, "user", strict=True) or text_of(r.inputs, "user")
        response_text = pick(r.output_messages, "assistant") or text_of(r.outputs, "assistant")
        calls = (LlmCall(r.span_id, r.model, r.provider, tuple(r.input_messages), tuple(r.output_messages),
                         r.input_tokens, r.output_tokens),)  # fmt: skip
        tool_calls = tuple(call for message in r.output_messages for call in message.tool_calls)
    else:
        request_text, response_text = text_of(r.inputs, "user"), text_of(r.outputs, "assistant")
        tool_calls = (r.tool,) if r.tool is not None else ()
    request, response = r.inputs, r.outputs
    if r.tool is not None:  # the user's question is the context a tool call is judged in
        request, request_text = view.request, view.request_text
    elif blank(request):
        request, request_text = view.request, request_text or view.request_text
    end = r.span.end_time_unix_nano
    return replace(
        view,
        root_span_id=r.span_id,
        status="ERROR" if r.error else "OK",
        timestamp_ms=r.start // 1_000_000,
        execution_time_ms=max(0, end - r.start) // 1_000_000,
        request=request,
        response=response,
        request_text=request_text,
        response_text=response_text,
        llm_calls=calls,
        retrieved_documents=tuple(r.documents),
        tool_calls=tool_calls,
        spans=(span_view(r),),
        model=r.model or None,
        input_tokens=r.input_tokens,
        output_tokens=r.output_tokens,
        errors=tuple(r.errors),
    )

"""extract(): one TraceView from a completed Trace, whatever instrumentation wrote its spans.

Why this module exists: OTel GenAI, OpenInference, OpenLLMetry (Traceloop), MLflow and Langfuse put
the same facts (prompt, answer, retrieved documents, tool calls, model, tokens, session, user,
errors) under different keys and encodings, and several of them can coexist in one trace (a
LangChain app traced by OpenInference calling a provider SDK traced by GenAI instrumentation).
Scorers, samplers and filter strings must not know any of that: they read the TraceView only.

So extraction is the one place that knows the conventions, and this module the one place that knows
none of them by name: each span is parsed once into a SpanRecord, which the readers of the conventions
it follows fill (conventions/, one module each, registered in order of precedence: the first to know
a field wins); GenAI log events are joined to their spans. The trace-level rules are then applied once
over the records: request/response are the root span's inputs/outputs (MLflow's rule), an LLM or
retriever span nested in another of its kind is the same operation seen by a lower layer and is
folded into the outer one, tokens are summed over LLM calls, tool calls from messages and from tool
spans are merged by call id.

Nothing here raises on bad data (values.py says how): malformed JSON stays the string it was, items
of the wrong shape are skipped, missing fields stay empty.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import replace
from functools import lru_cache
from operator import attrgetter
from types import MappingProxyType
from typing import Any

from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from tracejudge.model import BufferedSpan, Trace
from tracejudge.otlp import SESSION_KEYS, USER_KEYS
from tracejudge.scoring.conventions import detect, event_readers
from tracejudge.scoring.conventions.genai_logs import join_logs
from tracejudge.scoring.conventions.record import (
    LLM_KINDS,
    RETRIEVER_KINDS,
    Event,
    EventReader,
    SpanRecord,
    parse_inputs,
    parse_outputs,
)
from tracejudge.scoring.values import (
    attributes,
    blank,
    decoded,
    dict_str,
    first,
    json_text,
    loads,
    parse_documents,
    pick,
    scalar,
    text_of,
)
from tracejudge.scoring.view import Document, LlmCall, Message, SpanView, ToolCall, TraceView

__all__ = ["extract", "extract_with_spans", "nested_in_own_kind", "span_view"]

EXPECTATIONS_KEY = "tracejudge.expectations"

_START = attrgetter("start")


def extract(trace: Trace) -> TraceView:
    """The normalized view of `trace`; never raises on malformed attribute values."""
    return extract_with_spans(trace)[0]


def extract_with_spans(trace: Trace) -> tuple[TraceView, dict[str, SpanRecord]]:
    """The view and each span's record by span id (what span-target scorers judge, scoring/span_targets.py),
    from one parse of the spans."""
    results: dict[str, str] = {}  # tool results by call id, from tool messages anywhere in the trace
    records = sorted((_read_span(s, results) for s in trace.spans), key=_START)
    by_id = {r.span_id: r for r in records}
    log_genai = join_logs(trace.logs, by_id, results)
    root_span = _root_span(trace)
    root = by_id.get(root_span.span_id.hex()) if root_span else None
    calls = _llm_calls(records, by_id)
    request, response = _request_response(root, records, calls)
    resource = _resource(root_span.resource_bytes) if root_span else {}
    start = min((s.start_time_unix_nano for s in trace.spans), default=0)
    view = TraceView(
        trace_id=trace.trace_id.hex(),
        root_span_id=root.span_id if root else "",
        service_name=str(resource.get("service.name", "")),
        status=_status(records),
        timestamp_ms=start // 1_000_000,
        execution_time_ms=_duration_ms(trace.spans, start),
        request=request,
        response=response,
        request_text=text_of(request, "user", known=root.parsed_inputs if root else None),
        response_text=text_of(response, "assistant", known=root.parsed_outputs if root else None),
        llm_calls=tuple(call for _, call in calls),
        retrieved_documents=_retrieved_documents(records, by_id),
        tool_calls=_tool_calls(calls, records, results),
        spans=tuple(span_view(r) for r in records),
        tags=_tags(root, resource),
        session_id=_identity(root, records, SESSION_KEYS),
        user_id=_identity(root, records, USER_KEYS),
        model=next((call.model for _, call in reversed(calls) if call.model), None),
        input_tokens=_sum(call.input_tokens for _, call in calls),
        output_tokens=_sum(call.output_tokens for _, call in calls),
        errors=tuple(dict.fromkeys(e for r in records for e in r.errors)),
        expectations=_expectations(root),
        has_genai=log_genai or any(r.genai for r in records),
        complete=trace.complete,
    )
    return view, by_id


# --- one span -------------------------------------------------------------------------------------


def _read_span(buffered: BufferedSpan, results: dict[str, str]) -> SpanRecord:
    span = Span.FromString(buffered.span_bytes)
    attrs = attributes(span.attributes)
    followed = detect(attrs)
    for convention in followed:
        if convention.decode is not None:
            attrs = convention.decode(attrs)
    record = SpanRecord(span, span.span_id.hex(), span.parent_span_id.hex(), span.start_time_unix_nano, attrs)
    for convention in followed:
        record.genai = True
        convention.read(record, results)
    _read_events(record, results)
    _read_status(record)
    _fill_defaults(record, results)
    return record


def _read_events(r: SpanRecord, results: dict[str, str]) -> None:
    """`exception` events are every convention's; any other event goes to the convention that owns its name,
    once per convention with its events in the span's order."""
    events = r.span.events
    if not events:
        return
    readers = event_readers()
    owned: dict[EventReader, list[Event]] = {}
    for event in events:
        name = event.name
        if name == "exception":
            ev = attributes(event.attributes)
            text = ": ".join(scalar(ev.get(k)) for k in ("exception.type", "exception.message") if ev.get(k))
            r.errors.append(text or "exception")
        elif (reader := readers.get(name)) is not None:
            owned.setdefault(reader, []).append((name, attributes(event.attributes)))
    for reader, its_events in owned.items():
        reader(r, its_events, results)


def _read_status(r: SpanRecord) -> None:
    status = r.span.status
    if status.code != Status.STATUS_CODE_ERROR:
        return
    r.error = True
    if status.message:
        r.errors.append(status.message)
    elif not r.errors:
        r.errors.append(scalar(r.attrs.get("error.type")) or f"{r.span.name}: error")


def _fill_defaults(r: SpanRecord, results: dict[str, str]) -> None:
    """What no convention said explicitly but the span's type implies."""
    if not r.kind:
        r.kind = "LLM" if r.genai and r.model else "UNKNOWN"
    if r.kind in LLM_KINDS:
        r.model = r.model or _body_model(r)
        if not r.input_messages:
            r.input_messages = parse_inputs(r, results)
            if not r.input_messages and not blank(r.inputs):
                r.input_messages = [Message("user", text_of(r.inputs, "user"))]
        if not r.output_messages:
            r.output_messages = parse_outputs(r, results)
            if not r.output_messages and not blank(r.outputs):
                r.output_messages = [Message("assistant", text_of(r.outputs, "assistant"))]
    elif r.kind == "RETRIEVER" and not r.documents:
        r.documents = parse_documents(r.outputs)


def _body_model(r: SpanRecord) -> str:
    """The model named in a chat request/response body (OpenAI's `model`, LangChain's llm_output)."""
    llm_output = r.outputs.get("llm_output") if isinstance(r.outputs, dict) else None
    return dict_str(r.outputs, "model") or dict_str(llm_output, "model_name") or dict_str(r.inputs, "model")


# --- trace level ----------------------------------------------------------------------------------


@lru_cache(maxsize=256)
def _resource(resource_bytes: bytes) -> Mapping[str, Any]:
    """A resource's attributes, read-only: the spans of one process share the same bytes, so they are
    parsed once rather than once per trace."""
    return MappingProxyType(attributes(Resource.FromString(resource_bytes).attributes))


def _root_span(trace: Trace) -> BufferedSpan | None:
    if not trace.spans:
        return None
    return trace.root or min(trace.spans, key=lambda s: s.start_time_unix_nano)


def _outermost(r: SpanRecord, by_id: dict[str, SpanRecord], kinds: frozenset[str]) -> SpanRecord | None:
    """The outermost ancestor of `r` whose type is in `kinds` (None if there is none)."""
    found, parent, steps = None, by_id.get(r.parent_id), 0
    while parent is not None and steps < len(by_id):
        if parent.kind in kinds:
            found = parent
        parent, steps = by_id.get(parent.parent_id), steps + 1
    return found if found is not r else None


def nested_in_own_kind(r: SpanRecord, by_id: dict[str, SpanRecord]) -> bool:
    """An LLM or retriever span inside another of its kind: the same operation seen by a lower layer (a
    LangChain LLM span around the provider SDK's), folded into the outer one."""
    for kinds in (LLM_KINDS, RETRIEVER_KINDS):
        if r.kind in kinds:
            return _outermost(r, by_id, kinds) is not None
    return False


def _fold_nested(records: list[SpanRecord], by_id: dict[str, SpanRecord], kinds: frozenset[str]) -> list[SpanRecord]:
    """Spans of `kinds` not nested in another of `kinds`; a nested one only fills its outer one's gaps."""
    kept = []
    for r in records:
        if r.kind not in kinds:
            continue
        outer = _outermost(r, by_id, kinds)
        if outer is None:
            kept.append(r)
        else:
            _fill_gaps(outer, r)
    return kept


def _fill_gaps(outer: SpanRecord, inner: SpanRecord) -> None:
    outer.model = outer.model or inner.model
    outer.provider = outer.provider or inner.provider
    outer.input_tokens = first(outer.input_tokens, inner.input_tokens)
    outer.output_tokens = first(outer.output_tokens, inner.output_tokens)
    outer.input_messages = outer.input_messages or inner.input_messages
    outer.output_messages = outer.output_messages or inner.output_messages
    outer.documents = outer.documents or inner.documents


def _llm_calls(records: list[SpanRecord], by_id: dict[str, SpanRecord]) -> list[tuple[SpanRecord, LlmCall]]:
    return [
        (
            r,
            LlmCall(
                span_id=r.span_id,
                model=r.model,
                provider=r.provider,
                input_messages=tuple(r.input_messages),
                output_messages=tuple(r.output_messages),
                input_tokens=r.input_tokens,
                output_tokens=r.output_tokens,
            ),
        )
        for r in _fold_nested(records, by_id, LLM_KINDS)
    ]


def _retrieved_documents(records: list[SpanRecord], by_id: dict[str, SpanRecord]) -> tuple[Document, ...]:
    return tuple(doc for r in _fold_nested(records, by_id, RETRIEVER_KINDS) for doc in r.documents)


def _tool_calls(
    calls: list[tuple[SpanRecord, LlmCall]], records: list[SpanRecord], results: dict[str, str]
) -> tuple[ToolCall, ...]:
    """Tool calls the models asked for, merged with the tool spans that ran them (by call id, else by name)."""
    entries: list[tuple[int, ToolCall]] = []
    by_call_id: dict[str, int] = {}
    for r, call in calls:
        for tool_call in (tc for message in call.output_messages for tc in message.tool_calls):
            if tool_call.id and tool_call.id in by_call_id:
                continue
            if tool_call.id:
                by_call_id[tool_call.id] = len(entries)
            entries.append((r.start, replace(tool_call, requested_span_id=r.span_id)))
    requested = len(entries)
    matched: set[int] = set()  # not set[int](): calling a generic alias costs 10x more
    for r in records:
        if r.tool is None:
            continue
        ran = r.tool
        index = by_call_id.get(ran.id) if ran.id else _match_by_name(entries[:requested], matched, ran.name, r.start)
        if index is None or index in matched:
            entries.append((r.start, ran))
            continue
        matched.add(index)
        entries[index] = (entries[index][0], _merge_tool_call(entries[index][1], ran))
    entries.sort(key=lambda entry: entry[0])
    return tuple(_with_result(tool_call, results) for _, tool_call in entries)


def _match_by_name(requested: list[tuple[int, ToolCall]], matched: set[int], name: str, start: int) -> int | None:
    """A tool span without a call id runs the first still unmatched call of its name requested before it."""
    return next((i for i, (t, tc) in enumerate(requested) if i not in matched and tc.name == name and t <= start), None)


def _merge_tool_call(requested: ToolCall, ran: ToolCall) -> ToolCall:
    return ToolCall(
        name=requested.name or ran.name,
        arguments=requested.arguments or ran.arguments,
        id=requested.id or ran.id,
        result=ran.result if ran.result is not None else requested.result,
        span_id=ran.span_id,
        requested_span_id=requested.requested_span_id,
    )


def _with_result(tool_call: ToolCall, results: dict[str, str]) -> ToolCall:
    if tool_call.result is None and tool_call.id in results:
        return replace(tool_call, result=results[tool_call.id])
    return tool_call


def _request_response(
    root: SpanRecord | None, records: list[SpanRecord], calls: list[tuple[SpanRecord, LlmCall]]
) -> tuple[Any, Any]:
    """MLflow's rule: the root span's inputs/outputs (Langfuse's explicit trace input/output first); when
    the root has none, the first LLM call's last user message and the last LLM call's answer."""
    ordered = [root, *records] if root is not None else records
    request = next((r.trace_input for r in ordered if not blank(r.trace_input)), None)
    response = next((r.trace_output for r in ordered if not blank(r.trace_output)), None)
    if blank(request):
        request = root.inputs if root is not None and not blank(root.inputs) else None
    if blank(response):
        response = root.outputs if root is not None and not blank(root.outputs) else None
    if request is None and calls:
        request = pick(calls[0][1].input_messages, "user", strict=True) or None
    if response is None:
        response = next((t for _, c in reversed(calls) if (t := pick(c.output_messages, "assistant"))), None)
    return request, response


def _status(records: list[SpanRecord]) -> str:
    if any(r.error for r in records):
        return "ERROR"
    return "OK"  # MLflow's trace status: OK means nothing failed (OTel's UNSET included)


def span_view(r: SpanRecord) -> SpanView:
    status = "ERROR" if r.error else "OK" if r.span.status.code == Status.STATUS_CODE_OK else "UNSET"
    return SpanView(
        span_id=r.span_id,
        parent_span_id=r.parent_id,
        name=r.span.name,
        span_type=r.kind,
        status=status,
        start_time_ns=r.start,
        end_time_ns=r.span.end_time_unix_nano,
        attributes=r.attrs,
    )


def _identity(root: SpanRecord | None, records: list[SpanRecord], keys: tuple[str, ...]) -> str | None:
    """First non-empty value of `keys` (in their order of preference), the root span first."""
    for r in [root, *records] if root is not None else records:
        for key in keys:
            value = r.attrs.get(key)
            if isinstance(value, str) and value.startswith('"'):
                value = loads(value)  # JSON-quoted, as MLflow writes it
            if text := scalar(value):
                return text
    return None


def _tags(root: SpanRecord | None, resource: Mapping[str, Any]) -> dict[str, str]:
    tags = {key: _tag(value) for key, value in root.attrs.items()} if root is not None else {}
    for key, value in resource.items():
        tags.setdefault(key, _tag(value))
    return tags


def _tag(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json_text(value) if isinstance(value, (list, dict)) else str(value)


def _expectations(root: SpanRecord | None) -> dict[str, Any]:
    value = root.attrs.get(EXPECTATIONS_KEY) if root is not None else None
    if value is None:
        return {}
    for _ in range(2):  # a JSON string, possibly JSON-encoded once more by MLflow
        value = decoded(value)
    return value if isinstance(value, dict) else {}


def _duration_ms(spans: list[BufferedSpan], start: int) -> int:
    if not spans:
        return 0
    return max(0, max(s.end_time_unix_nano for s in spans) - start) // 1_000_000


def _sum(values: Iterable[int | None]) -> int | None:
    present = [v for v in values if v is not None]
    return sum(present) if present else None


def row_view(row: Mapping[str, Any]) -> TraceView:
    """A row of an evaluation dataset as the view a scorer reads: `inputs`, `outputs` and `expectations`
    (MLflow's evaluate columns; `request`/`response` are read as their aliases), with `trace_id`, `session_id`
    and `tags` where the row has them (a dataset exported from production does). A row without a trace id gets
    one from its content, so the same row keeps its id from one run to the next."""
    inputs = row.get("inputs", row.get("request"))
    outputs = row.get("outputs", row.get("response"))
    expectations = row.get("expectations") or {}
    if not isinstance(expectations, Mapping):
        raise ValueError(f"expectations must be a mapping of names to values, got {type(expectations).__name__}")
    trace_id = (
        str(row.get("trace_id") or "") or hashlib.blake2b(json_text(dict(row)).encode(), digest_size=16).hexdigest()
    )
    tags = row.get("tags") or {}
    return TraceView(
        trace_id=trace_id.lower(),
        root_span_id=str(row.get("span_id") or trace_id[:16]).lower(),
        service_name=str(row.get("service_name") or ""),
        status=str(row.get("status") or "OK"),
        timestamp_ms=int(row.get("timestamp_ms") or 0),
        execution_time_ms=int(row.get("execution_time_ms") or 0),
        request=inputs,
        response=outputs,
        request_text=text_of(inputs, "user"),
        response_text=text_of(outputs, "assistant"),
        llm_calls=(),
        retrieved_documents=tuple(_documents(row.get("retrieved_context"))),
        tool_calls=(),
        spans=(),
        tags={str(k): _tag(v) for k, v in dict(tags).items()},
        session_id=str(row["session_id"]) if row.get("session_id") else None,
        expectations=MappingProxyType(dict(expectations)),
        has_genai=inputs is not None or outputs is not None,
    )


def _documents(value: Any) -> Iterable[Document]:
    """`retrieved_context`: a list of texts or of {content, doc_uri} (MLflow's shape)."""
    for index, item in enumerate(value or []):
        if isinstance(item, Mapping):
            uri = str(item.get("doc_uri", ""))
            yield Document(str(item.get("content", "")), str(item.get("id", uri or index)), uri=uri)
        else:
            yield Document(str(item), str(index))

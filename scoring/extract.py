"""extract(): one TraceView from a completed Trace, whatever instrumentation wrote its spans.

Why this module exists: OTel GenAI, OpenInference, OpenLLMetry (Traceloop), MLflow and Langfuse put
the same facts (prompt, answer, retrieved documents, tool calls, model, tokens, session, user,
errors) under different keys and encodings, and several of them can coexist in one trace (a
LangChain app traced by OpenInference calling a provider SDK traced by GenAI instrumentation).
Scorers, samplers and filter strings must not know any of that: they read the TraceView only.

So this is the one place that knows the conventions. Each span is parsed once into a `_Record`; one
small reader per convention fills the fields it knows, the first convention to know a field wins.
The trace-level rules are then applied once over the records: request/response are the root span's
inputs/outputs (MLflow's rule), an LLM or retriever span nested in another of its kind is the same
operation seen by a lower layer and is folded into the outer one, tokens are summed over LLM calls,
tool calls from messages and from tool spans are merged by call id.

Nothing here raises on bad data: malformed JSON stays the string it was, items of the wrong shape
are skipped, missing fields stay empty. Values that cannot be JSON (by their first character) are
never handed to the JSON parser.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from functools import lru_cache
from operator import attrgetter
from types import MappingProxyType
from typing import Any

import orjson
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from tracejudge.model import BufferedLog, BufferedSpan, Trace
from tracejudge.otlp import SESSION_KEYS, USER_KEYS, any_value
from tracejudge.scoring.view import Document, LlmCall, Message, SpanView, ToolCall, TraceView

__all__ = ["extract"]

EXPECTATIONS_KEY = "tracejudge.expectations"

_KINDS = frozenset({"LLM", "CHAT_MODEL", "RETRIEVER", "TOOL", "AGENT", "CHAIN", "EMBEDDING", "UNKNOWN"})
_STEP_KINDS = frozenset({"PARSER", "RERANKER", "MEMORY", "WORKFLOW", "TASK", "GUARDRAIL", "EVALUATOR", "PROMPT"})
_LLM_KINDS = frozenset({"LLM", "CHAT_MODEL"})
_RETRIEVER_KINDS = frozenset({"RETRIEVER"})

# gen_ai.operation.name -> span type (OTel GenAI semconv, "Generative AI spans").
_GENAI_OPERATIONS = {
    "chat": "CHAT_MODEL",
    "text_completion": "LLM",
    "generate_content": "CHAT_MODEL",
    "embeddings": "EMBEDDING",
    "execute_tool": "TOOL",
    "invoke_agent": "AGENT",
    "create_agent": "AGENT",
    "retrieval": "RETRIEVER",
    "invoke_workflow": "CHAIN",
}
_TRACELOOP_KINDS = {"workflow": "CHAIN", "task": "CHAIN", "agent": "AGENT", "tool": "TOOL", "unknown": "UNKNOWN"}
_TRACELOOP_REQUESTS = {"chat": "CHAT_MODEL", "completion": "LLM", "embedding": "EMBEDDING", "rerank": "CHAIN"}
_LANGFUSE_KINDS = {
    "generation": "LLM",
    "agent": "AGENT",
    "tool": "TOOL",
    "chain": "CHAIN",
    "retriever": "RETRIEVER",
    "embedding": "EMBEDDING",
    "evaluator": "CHAIN",
    "guardrail": "CHAIN",
}
_TRACELOOP_PREFIXES = ("traceloop.", "gen_ai.prompt.", "gen_ai.completion.", "llm.request.type")
_LANGFUSE_PREFIXES = ("langfuse.observation.", "langfuse.trace.")
_CONVENTION_PREFIXES = _TRACELOOP_PREFIXES + _LANGFUSE_PREFIXES

# Legacy GenAI log events (semconv <= 1.36) -> the role of the message they carry.
_EVENT_ROLES = {
    "gen_ai.system.message": "system",
    "gen_ai.user.message": "user",
    "gen_ai.assistant.message": "assistant",
    "gen_ai.tool.message": "tool",
}
_CHOICE_EVENT = "gen_ai.choice"
# Any of these makes a span a GenAI one: an agent's root span often carries only its messages.
_GENAI_MARKERS = (
    "gen_ai.operation.name",
    "gen_ai.provider.name",
    "gen_ai.system",
    "gen_ai.input.messages",
    "gen_ai.output.messages",
)
# Latest GenAI semconv: one event per call with the messages in its attributes, as on the span.
_DETAILS_EVENT = "gen_ai.client.inference.operation.details"
_ROLES = {"human": "user", "ai": "assistant", "model": "assistant", "function": "tool", "developer": "system"}
# LangChain messages name their role in `type`; other dicts use `type` for other things (a part's kind).
_TYPE_ROLES = {"human": "user", "ai": "assistant", "system": "system", "tool": "tool", "function": "tool"}
_TEXT_PARTS = frozenset({"text", "input_text", "output_text"})
# Keys that hold "the" text of a dict-shaped request or response, in order of preference.
_TEXT_KEYS = (
    "query",
    "question",
    "input",
    "inputs",
    "prompt",
    "messages",
    "content",
    "text",
    "output",
    "outputs",
    "answer",
    "response",
    "result",
)
_URI_KEYS = ("doc_uri", "uri", "url", "source")
_USAGE_KEYS = frozenset(
    {
        "gen_ai.usage.input_tokens",
        "gen_ai.usage.prompt_tokens",
        "gen_ai.usage.output_tokens",
        "gen_ai.usage.completion_tokens",
    }
)
_MESSAGE_LIST_KEYS = frozenset({"messages", "choices", "generations", "candidates"})
_JSON_START = frozenset('{["')
_LIST_START = frozenset("[")
_MLFLOW_JSON_START = frozenset('{["-0123456789tfn')
_MAX_DEPTH = 6
_START = attrgetter("start")
_OI_ARGS = "tool_call.function.arguments"
_SYSTEM = "gen_ai.system_instructions"
_DOC_TEXT_KEYS = ("page_content", "content", "text")


@dataclass(slots=True)
class _Record:
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
    # (inputs, _messages(inputs, "user")) and (outputs, _messages(outputs, "assistant")) where a reader
    # parsed them: the request/response text reuses them instead of parsing the same value again.
    parsed_inputs: tuple[Any, list[Message]] | None = None
    parsed_outputs: tuple[Any, list[Message]] | None = None


_Reader = Callable[[_Record, dict[str, str]], None]


def extract(trace: Trace) -> TraceView:
    """The normalized view of `trace`; never raises on malformed attribute values."""
    results: dict[str, str] = {}  # tool results by call id, from tool messages anywhere in the trace
    records = sorted((_read_span(s, results) for s in trace.spans), key=_START)
    by_id = {r.span_id: r for r in records}
    log_genai = _join_logs(trace.logs, by_id, results)
    root_span = _root_span(trace)
    root = by_id.get(root_span.span_id.hex()) if root_span else None
    calls = _llm_calls(records, by_id)
    request, response = _request_response(root, records, calls)
    resource = _resource(root_span.resource_bytes) if root_span else {}
    start = min((s.start_time_unix_nano for s in trace.spans), default=0)
    return TraceView(
        trace_id=trace.trace_id.hex(),
        root_span_id=root.span_id if root else "",
        service_name=str(resource.get("service.name", "")),
        status=_status(records),
        timestamp_ms=start // 1_000_000,
        execution_time_ms=_duration_ms(trace.spans, start),
        request=request,
        response=response,
        request_text=_text(request, "user", known=root.parsed_inputs if root else None),
        response_text=_text(response, "assistant", known=root.parsed_outputs if root else None),
        llm_calls=tuple(call for _, call in calls),
        retrieved_documents=_retrieved_documents(records, by_id),
        tool_calls=_tool_calls(calls, records, results),
        spans=tuple(_span_view(r) for r in records),
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


# --- one span -------------------------------------------------------------------------------------


def _read_span(buffered: BufferedSpan, results: dict[str, str]) -> _Record:
    span = Span.FromString(buffered.span_bytes)
    attrs = _attributes(span.attributes)
    if "mlflow.spanType" in attrs:  # MLflow JSON-encodes every attribute value
        attrs = {key: _mlflow_value(value) for key, value in attrs.items()}
    record = _Record(span, span.span_id.hex(), span.parent_span_id.hex(), span.start_time_unix_nano, attrs)
    for read in _readers(attrs):
        record.genai = True
        read(record, results)
    _read_events(record, results)
    _read_status(record)
    _fill_defaults(record, results)
    return record


def _attributes(attributes: Any) -> dict[str, Any]:
    """attributes_dict() with its common case inline: a non-empty string_value is the value that is set
    (AnyValue is a oneof); anything else, the empty string included, goes through any_value()."""
    attrs = {}
    for item in attributes:
        value = item.value
        attrs[item.key] = value.string_value or any_value(value)
    return attrs


def _readers(attrs: dict[str, Any]) -> list[_Reader]:
    """The readers of the conventions `attrs` follow, in order of precedence."""
    traceloop = langfuse = False
    for key in attrs:  # one pass over the keys for both prefix-detected conventions
        if key.startswith(_CONVENTION_PREFIXES):
            traceloop = traceloop or key.startswith(_TRACELOOP_PREFIXES)
            langfuse = langfuse or key.startswith(_LANGFUSE_PREFIXES)
    readers: list[_Reader] = []
    if any(key in attrs for key in _GENAI_MARKERS):
        readers.append(_read_genai)
    if "openinference.span.kind" in attrs:
        readers.append(_read_openinference)
    if traceloop:
        readers.append(_read_traceloop)
    if "mlflow.spanType" in attrs:
        readers.append(_read_mlflow)
    if langfuse:
        readers.append(_read_langfuse)
    return readers


def _read_genai(r: _Record, results: dict[str, str]) -> None:
    """OTel GenAI semantic conventions (gen_ai.*), latest and legacy attribute names."""
    a = r.attrs
    r.kind = r.kind or _GENAI_OPERATIONS.get(_scalar(a.get("gen_ai.operation.name")), "")
    r.model = r.model or _first_text(a, "gen_ai.response.model", "gen_ai.request.model")
    r.provider = r.provider or _first_text(a, "gen_ai.provider.name", "gen_ai.system")
    _read_genai_usage(r)
    if "gen_ai.input.messages" in a and not r.input_messages:
        r.inputs = _first(r.inputs, _decoded(a["gen_ai.input.messages"]))
        system = _messages(_decoded(a[_SYSTEM]), "system", results) if _SYSTEM in a else []
        r.input_messages = system + _parse_inputs(r, results)
    if "gen_ai.output.messages" in a and not r.output_messages:
        r.outputs = _first(r.outputs, _decoded(a["gen_ai.output.messages"]))
        r.output_messages = _parse_outputs(r, results)
    if r.kind == "TOOL" and r.tool is None:
        r.tool = _genai_tool(r)
    if r.kind == "RETRIEVER":
        r.inputs = _first(r.inputs, a.get("gen_ai.retrieval.query.text"))
        r.documents = r.documents or _documents(a.get("gen_ai.retrieval.documents"))


def _genai_tool(r: _Record) -> ToolCall:
    a = r.attrs
    arguments, result = a.get("gen_ai.tool.call.arguments"), a.get("gen_ai.tool.call.result")
    r.inputs, r.outputs = _first(r.inputs, _decoded(arguments)), _first(r.outputs, _decoded(result))
    name = _scalar(a.get("gen_ai.tool.name")) or r.span.name.removeprefix("execute_tool ")
    return _tool(r, name, arguments, a.get("gen_ai.tool.call.id"), result)


def _read_openinference(r: _Record, results: dict[str, str]) -> None:
    """OpenInference (Arize Phoenix): input.value/output.value and flattened llm.* message lists."""
    a = r.attrs
    r.kind = r.kind or _kind(a.get("openinference.span.kind"))
    r.inputs = _first(r.inputs, _oi_value(a, "input"))
    r.outputs = _first(r.outputs, _oi_value(a, "output"))
    r.model = r.model or _first_text(a, "llm.response.model_name", "llm.model_name", "llm.request.model_name")
    r.provider = r.provider or _first_text(a, "llm.provider", "llm.system")
    r.input_tokens = _first(r.input_tokens, _int(a.get("llm.token_count.prompt")))
    r.output_tokens = _first(r.output_tokens, _int(a.get("llm.token_count.completion")))
    if not r.input_messages:
        r.input_messages = [_oi_message(m, "user", results) for m in _indexed(a, "llm.input_messages.")]
    if not r.output_messages:
        r.output_messages = [_oi_message(m, "assistant", results) for m in _indexed(a, "llm.output_messages.")]
    if r.kind == "RETRIEVER" and not r.documents:
        r.documents = _documents([_oi_document(d) for d in _indexed(a, "retrieval.documents.")])
    if r.kind == "TOOL" and r.tool is None:
        name = _scalar(a.get("tool.name")) or _scalar(a.get("tool_call.function.name")) or r.span.name
        arguments = a.get(_OI_ARGS, a.get("input.value"))
        r.tool = _tool(r, name, arguments, a.get("tool_call.id"), a.get("output.value"))


def _oi_value(a: dict[str, Any], prefix: str) -> Any:
    value = a.get(f"{prefix}.value")
    return value if a.get(f"{prefix}.mime_type") == "text/plain" else _decoded(value)


def _oi_message(flat: dict[str, Any], role: str, results: dict[str, str]) -> Message:
    content = flat.get("message.content")
    if content is None:
        content = [{"type": "text", "text": c.get("message_content.text")} for c in _indexed(flat, "message.contents.")]
    calls = [
        {"id": c.get("tool_call.id"), "name": c.get("tool_call.function.name"), "arguments": c.get(_OI_ARGS)}
        for c in _indexed(flat, "message.tool_calls.")
    ]
    raw = {"role": flat.get("message.role"), "content": content, "tool_calls": calls}
    return _dict_message({**raw, "tool_call_id": flat.get("message.tool_call_id")}, role, results)


def _oi_document(flat: dict[str, Any]) -> dict[str, Any]:
    return {key.removeprefix("document."): value for key, value in flat.items()}


def _read_traceloop(r: _Record, results: dict[str, str]) -> None:
    """OpenLLMetry: traceloop.entity.* on workflow/task/agent/tool spans, gen_ai.prompt.N.* on LLM spans."""
    a = r.attrs
    kind = _TRACELOOP_REQUESTS.get(_scalar(a.get("llm.request.type")), "")
    r.kind = r.kind or kind or _TRACELOOP_KINDS.get(_scalar(a.get("traceloop.span.kind")), "")
    r.inputs = _first(r.inputs, _unwrap_input(_decoded(a.get("traceloop.entity.input"))))
    r.outputs = _first(r.outputs, _unwrap_output(_decoded(a.get("traceloop.entity.output"))))
    r.model = r.model or _first_text(a, "gen_ai.response.model", "gen_ai.request.model")
    r.provider = r.provider or _first_text(a, "gen_ai.system", "llm.vendor")
    _read_genai_usage(r)
    if not r.input_messages:
        r.input_messages = _traceloop_messages(a, "gen_ai.prompt.", "user", results)
    if not r.output_messages:
        r.output_messages = _traceloop_messages(a, "gen_ai.completion.", "assistant", results)
    if r.kind == "TOOL" and r.tool is None:
        r.tool = _tool(r, _scalar(a.get("traceloop.entity.name")) or r.span.name, r.inputs, None, r.outputs)
    if r.kind in ("", "CHAIN") and not r.documents and (docs := _documents(r.outputs, strict=True)):
        r.kind, r.documents = "RETRIEVER", docs  # OpenLLMetry has no retriever kind: a task returning documents


def _traceloop_messages(a: dict[str, Any], prefix: str, role: str, results: dict[str, str]) -> list[Message]:
    messages = []
    for flat in _indexed(a, prefix):
        calls = _indexed(flat, "tool_calls.")
        if "function_call.name" in flat:
            calls.append({"name": flat["function_call.name"], "arguments": flat.get("function_call.arguments")})
        raw = {"role": flat.get("role"), "content": flat.get("content"), "tool_call_id": flat.get("tool_call_id")}
        messages.append(_dict_message({**raw, "tool_calls": calls}, role, results))
    return messages


def _unwrap_input(value: Any) -> Any:
    """traceloop.entity.input: {"args": [...], "kwargs": {...}} from decorators, {"inputs": ...} from LangChain."""
    if not isinstance(value, dict):
        return value
    if "inputs" in value and set(value) <= {"inputs", "tags", "metadata", "kwargs", "input_str"}:
        return value["inputs"] or value.get("input_str")
    if set(value) <= {"args", "kwargs"}:
        args, kwargs = value.get("args") or [], value.get("kwargs") or {}
        if not args:
            return kwargs
        if not kwargs:
            return args[0] if isinstance(args, list) and len(args) == 1 else args
    return value


def _unwrap_output(value: Any) -> Any:
    """traceloop.entity.output: the return value, or LangChain's {"outputs"|"output": ..., "kwargs": ...}."""
    if isinstance(value, dict) and "kwargs" in value and len(value) == 2:
        value = next((value[key] for key in ("outputs", "output") if key in value), value)
    if isinstance(value, dict) and "lc" in value and isinstance(value.get("kwargs"), dict):
        return value["kwargs"].get("content", value)  # a LangChain ToolMessage
    return value


def _read_mlflow(r: _Record, results: dict[str, str]) -> None:
    """MLflow spans: mlflow.spanType, mlflow.spanInputs/Outputs, mlflow.chat.tokenUsage (values already decoded)."""
    a = r.attrs
    r.kind = r.kind or _kind(a.get("mlflow.spanType"))
    r.inputs = _first(r.inputs, a.get("mlflow.spanInputs"))
    r.outputs = _first(r.outputs, a.get("mlflow.spanOutputs"))
    r.model = r.model or _scalar(a.get("mlflow.llm.model"))
    r.provider = r.provider or _scalar(a.get("mlflow.llm.provider"))
    usage = a.get("mlflow.chat.tokenUsage")
    if isinstance(usage, dict):
        r.input_tokens = _first(r.input_tokens, _int(usage.get("input_tokens")))
        r.output_tokens = _first(r.output_tokens, _int(usage.get("output_tokens")))
    if r.kind == "TOOL" and r.tool is None:
        name = _scalar(a.get("mlflow.spanFunctionName")) or r.span.name
        r.tool = _tool(r, name, r.inputs, None, r.outputs)


def _read_langfuse(r: _Record, results: dict[str, str]) -> None:
    """Langfuse (SDK v3, OTel-based): langfuse.observation.* and trace-level langfuse.trace.*."""
    a = r.attrs
    observation = _scalar(a.get("langfuse.observation.type"))
    r.kind = r.kind or _LANGFUSE_KINDS.get(observation, "UNKNOWN" if observation else "")
    r.inputs = _first(r.inputs, _decoded(a.get("langfuse.observation.input")))
    r.outputs = _first(r.outputs, _decoded(a.get("langfuse.observation.output")))
    r.trace_input = _decoded(a.get("langfuse.trace.input"))
    r.trace_output = _decoded(a.get("langfuse.trace.output"))
    r.model = r.model or _scalar(a.get("langfuse.observation.model.name"))
    usage = _decoded(a.get("langfuse.observation.usage_details"))
    if isinstance(usage, dict):
        r.input_tokens = _first(r.input_tokens, _first_int(usage, "input", "input_tokens", "prompt_tokens"))
        r.output_tokens = _first(r.output_tokens, _first_int(usage, "output", "output_tokens", "completion_tokens"))
    if _scalar(a.get("langfuse.observation.level")).upper() == "ERROR":
        r.error = True
        r.errors.append(_scalar(a.get("langfuse.observation.status_message")) or f"{r.span.name}: level ERROR")
    if r.kind == "TOOL" and r.tool is None:
        r.tool = _tool(r, r.span.name, r.inputs, None, r.outputs)


def _read_genai_usage(r: _Record) -> None:
    """gen_ai.usage.* (OpenLLMetry writes the same keys; older releases the prompt/completion names)."""
    a = r.attrs
    if _USAGE_KEYS.isdisjoint(a):  # most spans of a trace are not LLM calls
        return
    r.input_tokens = _first(r.input_tokens, _first_int(a, "gen_ai.usage.input_tokens", "gen_ai.usage.prompt_tokens"))
    output_tokens = _first_int(a, "gen_ai.usage.output_tokens", "gen_ai.usage.completion_tokens")
    r.output_tokens = _first(r.output_tokens, output_tokens)


def _read_events(r: _Record, results: dict[str, str]) -> None:
    """Span events: `exception`, OpenLLMetry's vector-DB `db.query.result`, old GenAI `gen_ai.content.*`."""
    events = r.span.events
    if not events:
        return
    docs = []
    for event in events:
        name = event.name
        if name == "exception":
            ev = _attributes(event.attributes)
            text = ": ".join(_scalar(ev.get(k)) for k in ("exception.type", "exception.message") if ev.get(k))
            r.errors.append(text or "exception")
        elif name == "db.query.result":
            ev = _attributes(event.attributes)
            docs.append({key.removeprefix("db.query.result."): value for key, value in ev.items()})
            docs[-1]["content"] = docs[-1].pop("document", None)
        elif name in ("gen_ai.content.prompt", "gen_ai.content.completion"):
            _read_content_event(r, name, _attributes(event.attributes), results)
    if docs and not r.documents:
        r.documents = _documents(docs)
        r.kind, r.genai = r.kind or "RETRIEVER", True


def _read_content_event(r: _Record, name: str, ev: dict[str, Any], results: dict[str, str]) -> None:
    r.genai = True
    if name == "gen_ai.content.prompt" and not r.input_messages:
        r.input_messages = _messages(_decoded(ev.get("gen_ai.prompt")), "user", results)
    elif name == "gen_ai.content.completion" and not r.output_messages:
        r.output_messages = _messages(_decoded(ev.get("gen_ai.completion")), "assistant", results)


def _read_status(r: _Record) -> None:
    status = r.span.status
    if status.code != Status.STATUS_CODE_ERROR:
        return
    r.error = True
    if status.message:
        r.errors.append(status.message)
    elif not r.errors:
        r.errors.append(_scalar(r.attrs.get("error.type")) or f"{r.span.name}: error")


def _fill_defaults(r: _Record, results: dict[str, str]) -> None:
    """What no convention said explicitly but the span's type implies."""
    if not r.kind:
        r.kind = "LLM" if r.genai and r.model else "UNKNOWN"
    if r.kind in _LLM_KINDS:
        r.model = r.model or _body_model(r)
        if not r.input_messages:
            r.input_messages = _parse_inputs(r, results)
            if not r.input_messages and not _blank(r.inputs):
                r.input_messages = [Message("user", _text(r.inputs, "user"))]
        if not r.output_messages:
            r.output_messages = _parse_outputs(r, results)
            if not r.output_messages and not _blank(r.outputs):
                r.output_messages = [Message("assistant", _text(r.outputs, "assistant"))]
    elif r.kind == "RETRIEVER" and not r.documents:
        r.documents = _documents(r.outputs)


def _parse_inputs(r: _Record, results: dict[str, str]) -> list[Message]:
    """_messages(r.inputs), remembered on `r` for the request text."""
    messages = _messages(r.inputs, "user", results)
    r.parsed_inputs = (r.inputs, messages)
    return list(messages)


def _parse_outputs(r: _Record, results: dict[str, str]) -> list[Message]:
    """_messages(r.outputs), remembered on `r` for the response text."""
    messages = _messages(r.outputs, "assistant", results)
    r.parsed_outputs = (r.outputs, messages)
    return list(messages)


def _body_model(r: _Record) -> str:
    """The model named in a chat request/response body (OpenAI's `model`, LangChain's llm_output)."""
    llm_output = r.outputs.get("llm_output") if isinstance(r.outputs, dict) else None
    return _dict_str(r.outputs, "model") or _dict_str(llm_output, "model_name") or _dict_str(r.inputs, "model")


def _tool(r: _Record, name: str, arguments: Any, call_id: Any, result: Any) -> ToolCall:
    """A tool span's call; strings are kept as written, structured values become compact JSON."""
    return ToolCall(
        name=name,
        arguments="" if arguments is None else _json_text(arguments),
        id=_scalar(call_id),
        result=None if result is None else _json_text(result),
        span_id=r.span_id,
    )


# --- GenAI log events ------------------------------------------------------------------------------


def _join_logs(logs: list[BufferedLog], by_id: dict[str, _Record], results: dict[str, str]) -> bool:
    """GenAI log events (legacy per-message events, the latest per-call details event) become their span's
    messages; True if any GenAI event exists."""
    inputs: dict[str, list[tuple[int, Message]]] = {}
    outputs: dict[str, list[tuple[int, Message]]] = {}
    found = False
    for log in logs:
        record = LogRecord.FromString(log.log_bytes)
        name = _event_name(record)
        found = found or name.startswith("gen_ai.")
        if name == _DETAILS_EVENT:
            _details_messages(_attributes(record.attributes), log.span_id.hex(), inputs, outputs, results)
            continue
        if name not in _EVENT_ROLES and name != _CHOICE_EVENT:
            continue
        body = _decoded(any_value(record.body))
        target = outputs if name == _CHOICE_EVENT else inputs
        order, message = _log_message(name, body, results)
        target.setdefault(log.span_id.hex(), []).append((record.time_unix_nano if order < 0 else order, message))
    for span_id in inputs.keys() | outputs.keys():
        if (r := by_id.get(span_id)) is not None:
            _apply_log_messages(r, inputs.get(span_id, []), outputs.get(span_id, []))
    return found


def _event_name(record: LogRecord) -> str:
    if record.event_name:
        return record.event_name
    return next((_scalar(any_value(a.value)) for a in record.attributes if a.key == "event.name"), "")


def _log_message(name: str, body: Any, results: dict[str, str]) -> tuple[int, Message]:
    """(order, message): the choice index for gen_ai.choice, -1 (order by time) for the input events."""
    if not isinstance(body, dict):
        body = {"content": body}
    if name == _CHOICE_EVENT:
        message = body.get("message")
        message = message if isinstance(message, dict) else {}
        return _int(body.get("index")) or 0, _dict_message(message, "assistant", results)
    role = _EVENT_ROLES[name]
    call_id = body.get("id") if role == "tool" else None
    return -1, _dict_message({**body, "role": body.get("role") or role, "tool_call_id": call_id}, role, results)


def _details_messages(
    ev: dict[str, Any],
    span_id: str,
    inputs: dict[str, list[tuple[int, Message]]],
    outputs: dict[str, list[tuple[int, Message]]],
    results: dict[str, str],
) -> None:
    """gen_ai.client.inference.operation.details: gen_ai.input/output.messages and gen_ai.system_instructions
    as attributes of the event (structured values, or JSON text), in their order."""
    system = _messages(_decoded(ev[_SYSTEM]), "system", results) if _SYSTEM in ev else []
    sent = system + _messages(_decoded(ev.get("gen_ai.input.messages")), "user", results)
    received = _messages(_decoded(ev.get("gen_ai.output.messages")), "assistant", results)
    inputs.setdefault(span_id, []).extend(enumerate(sent))
    outputs.setdefault(span_id, []).extend(enumerate(received))


def _apply_log_messages(r: _Record, inputs: list[tuple[int, Message]], outputs: list[tuple[int, Message]]) -> None:
    r.genai = True
    if r.kind == "UNKNOWN":
        r.kind = "LLM"
    if inputs and not r.input_messages:
        r.input_messages = [m for _, m in sorted(inputs, key=lambda item: item[0])]
    if outputs and not r.output_messages:
        r.output_messages = [m for _, m in sorted(outputs, key=lambda item: item[0])]


# --- trace level ----------------------------------------------------------------------------------


@lru_cache(maxsize=256)
def _resource(resource_bytes: bytes) -> Mapping[str, Any]:
    """A resource's attributes, read-only: the spans of one process share the same bytes, so they are
    parsed once rather than once per trace."""
    return MappingProxyType(_attributes(Resource.FromString(resource_bytes).attributes))


def _root_span(trace: Trace) -> BufferedSpan | None:
    if not trace.spans:
        return None
    return trace.root or min(trace.spans, key=lambda s: s.start_time_unix_nano)


def _outermost(r: _Record, by_id: dict[str, _Record], kinds: frozenset[str]) -> _Record | None:
    """The outermost ancestor of `r` whose type is in `kinds` (None if there is none)."""
    found, parent, steps = None, by_id.get(r.parent_id), 0
    while parent is not None and steps < len(by_id):
        if parent.kind in kinds:
            found = parent
        parent, steps = by_id.get(parent.parent_id), steps + 1
    return found if found is not r else None


def _fold_nested(records: list[_Record], by_id: dict[str, _Record], kinds: frozenset[str]) -> list[_Record]:
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


def _fill_gaps(outer: _Record, inner: _Record) -> None:
    outer.model = outer.model or inner.model
    outer.provider = outer.provider or inner.provider
    outer.input_tokens = _first(outer.input_tokens, inner.input_tokens)
    outer.output_tokens = _first(outer.output_tokens, inner.output_tokens)
    outer.input_messages = outer.input_messages or inner.input_messages
    outer.output_messages = outer.output_messages or inner.output_messages
    outer.documents = outer.documents or inner.documents


def _llm_calls(records: list[_Record], by_id: dict[str, _Record]) -> list[tuple[_Record, LlmCall]]:
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
        for r in _fold_nested(records, by_id, _LLM_KINDS)
    ]


def _retrieved_documents(records: list[_Record], by_id: dict[str, _Record]) -> tuple[Document, ...]:
    return tuple(doc for r in _fold_nested(records, by_id, _RETRIEVER_KINDS) for doc in r.documents)


def _tool_calls(
    calls: list[tuple[_Record, LlmCall]], records: list[_Record], results: dict[str, str]
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
    root: _Record | None, records: list[_Record], calls: list[tuple[_Record, LlmCall]]
) -> tuple[Any, Any]:
    """MLflow's rule: the root span's inputs/outputs (Langfuse's explicit trace input/output first); when
    the root has none, the first LLM call's last user message and the last LLM call's answer."""
    ordered = [root, *records] if root is not None else records
    request = next((r.trace_input for r in ordered if not _blank(r.trace_input)), None)
    response = next((r.trace_output for r in ordered if not _blank(r.trace_output)), None)
    if _blank(request):
        request = root.inputs if root is not None and not _blank(root.inputs) else None
    if _blank(response):
        response = root.outputs if root is not None and not _blank(root.outputs) else None
    if request is None and calls:
        request = _pick(calls[0][1].input_messages, "user", strict=True) or None
    if response is None:
        response = next((t for _, c in reversed(calls) if (t := _pick(c.output_messages, "assistant"))), None)
    return request, response


def _status(records: list[_Record]) -> str:
    if any(r.error for r in records):
        return "ERROR"
    return "OK"  # MLflow's trace status: OK means nothing failed (OTel's UNSET included)


def _span_view(r: _Record) -> SpanView:
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


def _identity(root: _Record | None, records: list[_Record], keys: tuple[str, ...]) -> str | None:
    """First non-empty value of `keys` (in their order of preference), the root span first."""
    for r in [root, *records] if root is not None else records:
        for key in keys:
            value = r.attrs.get(key)
            if isinstance(value, str) and value.startswith('"'):
                value = _loads(value)  # JSON-quoted, as MLflow writes it
            if text := _scalar(value):
                return text
    return None


def _tags(root: _Record | None, resource: Mapping[str, Any]) -> dict[str, str]:
    tags = {key: _tag(value) for key, value in root.attrs.items()} if root is not None else {}
    for key, value in resource.items():
        tags.setdefault(key, _tag(value))
    return tags


def _tag(value: Any) -> str:
    if isinstance(value, str):
        return value
    return _json_text(value) if isinstance(value, (list, dict)) else str(value)


def _expectations(root: _Record | None) -> dict[str, Any]:
    value = root.attrs.get(EXPECTATIONS_KEY) if root is not None else None
    if value is None:
        return {}
    for _ in range(2):  # a JSON string, possibly JSON-encoded once more by MLflow
        value = _decoded(value)
    return value if isinstance(value, dict) else {}


def _duration_ms(spans: list[BufferedSpan], start: int) -> int:
    if not spans:
        return 0
    return max(0, max(s.end_time_unix_nano for s in spans) - start) // 1_000_000


def _sum(values: Iterable[int | None]) -> int | None:
    present = [v for v in values if v is not None]
    return sum(present) if present else None


# --- values: JSON, text, messages, documents ------------------------------------------------------


def _loads(text: str, starts: frozenset[str] = _JSON_START) -> Any:
    """JSON-decode `text` if it can be JSON (by its first character); malformed JSON stays the text."""
    if not text or text[0] not in starts:
        return text
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return text


def _decoded(value: Any) -> Any:
    return _loads(value) if isinstance(value, str) else value


def _mlflow_value(value: Any) -> Any:
    return _loads(value, _MLFLOW_JSON_START) if isinstance(value, str) else value


def _json_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    try:
        return orjson.dumps(value).decode()
    except TypeError:  # orjson.JSONEncodeError: integers beyond 64 bits, nesting deeper than orjson allows
        try:
            return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
        except (TypeError, ValueError, RecursionError):
            return ""


def _scalar(value: Any) -> str:
    """A scalar attribute as text ("" for None, containers and booleans)."""
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    return ""


def _int(value: Any) -> int | None:
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.strip().isdecimal():
        return int(value)
    return None


def _float(value: Any) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def _first_text(mapping: Mapping[str, Any], *keys: str) -> str:
    for key in keys:
        value = mapping.get(key)
        if value is not None and (text := _scalar(value)):  # most keys asked for are absent
            return text
    return ""


def _first_int(mapping: Mapping[str, Any], *keys: str) -> int | None:
    for key in keys:
        if (number := _int(mapping.get(key))) is not None:
            return number
    return None


def _first(current: Any, candidate: Any) -> Any:
    return candidate if current is None else current


def _blank(value: Any) -> bool:
    return value is None or value == "" or (isinstance(value, (list, dict)) and not value)


def _dict_str(value: Any, key: str) -> str:
    return _scalar(value.get(key)) if isinstance(value, dict) else ""


def _kind(name: Any) -> str:
    """A span type name of OpenInference or MLflow, normalized to the TraceView's eight."""
    text = name.upper() if isinstance(name, str) else ""
    if text in _KINDS:
        return text
    return "CHAIN" if text in _STEP_KINDS else "UNKNOWN"


def _indexed(flat: Mapping[str, Any], prefix: str) -> list[dict[str, Any]]:
    """Flattened lists (`prefix.N.rest` keys) as a list of {rest: value} dicts, by N."""
    groups: dict[int, dict[str, Any]] = {}
    start = len(prefix)
    for key, value in flat.items():
        if key.startswith(prefix):
            index, _, rest = key[start:].partition(".")
            if rest and index.isdecimal():
                groups.setdefault(int(index), {})[rest] = value
    return [groups[i] for i in sorted(groups)]


def _text(value: Any, role: str, depth: int = 0, known: tuple[Any, list[Message]] | None = None) -> str:
    """`value` as readable text for a judge: a message list's last `role` message, a known key's value,
    else compact JSON. `known`: (a value, its `role` messages) that a reader parsed already."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if depth > _MAX_DEPTH or not isinstance(value, (list, dict)):
        return _json_text(value)
    if isinstance(value, list):
        if not value or all(isinstance(item, str) for item in value):
            return "\n".join(value)
        return _list_text(value, role, known)
    return _dict_text(value, role, depth, known)


def _list_text(value: list[Any], role: str, known: tuple[Any, list[Message]] | None) -> str:
    """A list is a message list if its first item holds messages."""
    first = value[0]
    if isinstance(first, (dict, list)) and (_is_one_message(first) or _messages(first, role, {})):
        said = _said(_reparsed(value, role, known), role)
        if said or (said == "" and all(_holds_no_text(item) for item in value)):
            return said
    return _json_text(value)


def _dict_text(value: dict[str, Any], role: str, depth: int, known: tuple[Any, list[Message]] | None) -> str:
    if "lc" in value and isinstance(value.get("kwargs"), dict):  # a LangChain-serialized object
        return _text(value["kwargs"], role, depth + 1)
    said = None
    if _is_message(value) or "choices" in value or "generations" in value:
        said = _said(_reparsed(value, role, known), role)
        if said:
            return said
    for key in _TEXT_KEYS:
        if not _blank(value.get(key)):
            return _text(value[key], role, depth + 1)
    return "" if said == "" else _json_text(value)


def _said(messages: list[Message], role: str) -> str | None:
    """The text of parsed messages: `_pick`'s, or "" when they hold no text and no tool calls (an empty
    reply is no reply: a judge must not be shown its JSON as if it were one, unless the value holds text
    elsewhere); None for the caller's fallback (no messages, or tool calls without text)."""
    text = _pick(messages, role)
    if text or (messages and not any(message.tool_calls for message in messages)):
        return text
    return None


def _holds_no_text(item: Any) -> bool:
    return not isinstance(item, dict) or all(_blank(item.get(key)) for key in _TEXT_KEYS)


def _pick(messages: Iterable[Message], role: str, strict: bool = False) -> str:
    """The last non-empty message of `role`, else (unless `strict`) the last non-empty message."""
    fallback = ""
    for message in reversed(list(messages)):
        content: str = message.content
        if content and message.role == role:
            return content
        fallback = fallback or content
    return "" if strict else fallback


def _reparsed(value: Any, role: str, known: tuple[Any, list[Message]] | None) -> list[Message]:
    """_messages(value, role), taken from `known` where it holds this very value (values are never mutated)."""
    if known is not None and known[0] is value:
        return known[1]
    return _messages(value, role, {})


def _is_one_message(value: Any) -> bool:
    """True where _messages(value) is certainly one message, cheap to tell without parsing it."""
    if not isinstance(value, dict) or not _MESSAGE_LIST_KEYS.isdisjoint(value):
        return False
    return _is_message(value) or "content" in value


def _is_message(value: dict[str, Any]) -> bool:
    return "role" in value or "parts" in value or ("content" in value and "type" in value) or "lc" in value


def _messages(value: Any, role: str, results: dict[str, str], depth: int = 0) -> list[Message]:
    """Messages from any of the shapes instrumentations write: GenAI parts, OpenAI/Anthropic/Gemini
    messages, chat requests {"messages"}, responses {"choices"}/{"candidates"}, LangChain messages."""
    if depth > _MAX_DEPTH:
        return []
    if isinstance(value, str):
        value = _loads(value)
        if isinstance(value, str):
            return [Message(role, value)] if value else []
    if isinstance(value, list):
        return [m for item in value for m in _messages(item, role, results, depth + 1)]
    if not isinstance(value, dict):
        return []
    if not _MESSAGE_LIST_KEYS.isdisjoint(value):  # rare: most dicts are one message
        if isinstance(value.get("messages"), list):
            return _messages(value["messages"], role, results, depth + 1)
        for key in ("choices", "generations", "candidates"):
            if isinstance(value.get(key), list):
                items = [_unwrap_choice(item) for item in _flatten(value[key])]
                return _messages(items, "assistant", results, depth + 1)
    if _is_message(value) or "content" in value:
        return [_dict_message(value, role, results)]
    return []


def _flatten(items: list[Any]) -> list[Any]:
    """One level of nesting removed: LangChain's generations are a list per prompt."""
    return [inner for item in items for inner in (item if isinstance(item, list) else [item])]


def _unwrap_choice(item: Any) -> Any:
    """An OpenAI choice, LangChain generation or Gemini candidate -> its message."""
    if not isinstance(item, dict):
        return item
    inner = item.get("message", item.get("content"))
    if isinstance(inner, dict):
        return inner
    return {"role": "assistant", "content": item.get("text", inner)}


def _dict_message(d: dict[str, Any], role: str, results: dict[str, str]) -> Message:
    if "lc" in d and isinstance(d.get("kwargs"), dict):
        d = d["kwargs"]
    role = _role(d, role)
    raw = d["parts"] if "parts" in d else d.get("content")
    items = _loads(raw, _LIST_START) if isinstance(raw, str) else raw  # content parts may arrive as JSON text
    content, calls = _parts(items, results) if isinstance(items, list) else (_content(items), [])
    if not content and not calls and isinstance(raw, str):
        content = raw  # JSON-looking text that held no parts stays as it was
    if not content and isinstance(d.get("refusal"), str):
        content = d["refusal"]  # OpenAI's refusal: the model's answer, in its own field
    if "tool_calls" in d:
        calls.extend(tc for item in _as_list(d["tool_calls"]) if (tc := _tool_call(item)) is not None)
    if isinstance(d.get("function_call"), dict) and (tc := _tool_call(d["function_call"])) is not None:
        calls.append(tc)
    call_id = d.get("tool_call_id") or d.get("tool_use_id") or _response_part_id(items)
    if not call_id and role == "tool":
        call_id = d.get("id")  # the legacy gen_ai.tool.message event names the call `id`
    answered = str(call_id) if call_id and isinstance(call_id, (str, int)) else ""
    if answered:
        results.setdefault(answered, content)
    return Message(role, content, tuple(calls), tool_call_id=answered)


def _response_part_id(items: Any) -> str | int | None:
    """The call id a GenAI `tool_call_response` part answers."""
    if not isinstance(items, list):
        return None
    for part in items:
        if isinstance(part, dict) and part.get("type") == "tool_call_response":
            return part.get("id")
    return None


def _role(d: dict[str, Any], default: str) -> str:
    role = d.get("role")
    if isinstance(role, str) and role:
        return _ROLES.get(role, role)
    kind = d.get("type")
    return _TYPE_ROLES.get(kind, default) if isinstance(kind, str) else default


def _parts(items: list[Any], results: dict[str, str], depth: int = 0) -> tuple[str, list[ToolCall]]:
    """Content parts (GenAI `parts`, OpenAI/Anthropic content lists) -> (text, tool calls)."""
    texts: list[str] = []
    calls: list[ToolCall] = []
    for part in items:
        if isinstance(part, str):
            texts.append(part)
        elif isinstance(part, dict):
            _part(part, texts, calls, results, depth)
    return "\n".join(filter(None, texts)), calls


def _part(part: dict[str, Any], texts: list[str], calls: list[ToolCall], results: dict[str, str], depth: int) -> None:
    kind = part.get("type")
    if not isinstance(kind, str):
        kind = None
    if kind in _TEXT_PARTS or (kind is None and ("text" in part or "content" in part)):
        texts.append(_content(part.get("content", part.get("text")), depth + 1))
    elif kind in ("tool_call", "tool_use", "function_call"):
        if (tc := _tool_call(part)) is not None:
            calls.append(tc)
    elif kind in ("tool_call_response", "tool_result", "function_call_output"):
        response = next((part[k] for k in ("response", "result", "content", "output") if k in part), None)
        text = _content(response, depth + 1)
        texts.append(text)
        call_id = part.get("id") or part.get("tool_use_id") or part.get("call_id")
        if call_id and isinstance(call_id, (str, int)):
            results.setdefault(str(call_id), text)


def _content(value: Any, depth: int = 0) -> str:
    """Message content of any shape as text."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if depth > _MAX_DEPTH:
        return _json_text(value)
    if isinstance(value, list):
        return _parts(value, {}, depth + 1)[0]
    if isinstance(value, dict) and ("text" in value or "content" in value):
        return _content(value.get("text", value.get("content")), depth + 1)
    return _json_text(value)


def _tool_call(item: Any) -> ToolCall | None:
    """OpenAI {id, function: {name, arguments}}, flat {id, name, arguments}, Anthropic {id, name, input},
    LangChain {id, name, args}."""
    if not isinstance(item, dict):
        return None
    function = item.get("function")
    if not isinstance(function, dict):
        function = item
    name = _scalar(function.get("name"))
    if not name:
        return None
    arguments = next((function[k] for k in ("arguments", "args", "input") if k in function), None)
    call_id = item.get("id") or item.get("call_id") or function.get("id")
    return ToolCall(name=name, arguments=_json_text(arguments) if arguments is not None else "", id=_scalar(call_id))


def _as_list(value: Any) -> list[Any]:
    value = _decoded(value)
    return value if isinstance(value, list) else []


def _documents(value: Any, strict: bool = False, depth: int = 0) -> list[Document]:
    """Retrieved documents from a retriever's output: a list of {page_content|content|text, id, score,
    metadata}, {"documents": [...]}, or plain strings (unless `strict`: then only document dicts)."""
    value = _decoded(value)
    if isinstance(value, dict):
        inner = next((value[k] for k in ("documents", "docs") if isinstance(value.get(k), list)), None)
        if inner is not None:
            return _documents(inner, strict, depth + 1)
        doc = _document(value, strict)
        return [doc] if doc else []
    if not isinstance(value, list) or depth > 2:
        return []
    docs = []
    for item in value:
        if isinstance(item, list):
            docs.extend(_documents(item, strict, depth + 1))
        elif (doc := _document(item, strict)) is not None:
            docs.append(doc)
    return docs


def _document(item: Any, strict: bool = False) -> Document | None:
    if isinstance(item, str):
        return Document(item) if item and not strict else None
    if not isinstance(item, dict):
        return None
    if "lc" in item and isinstance(item.get("kwargs"), dict):
        item = item["kwargs"]
    text_key = next((k for k in (_DOC_TEXT_KEYS[:1] if strict else _DOC_TEXT_KEYS) if k in item), "")
    content = _content(item.get(text_key)) if text_key else ""
    if not content:
        return None
    metadata = _decoded(item.get("metadata"))
    metadata = metadata if isinstance(metadata, dict) else {}
    uri = next((_scalar(m.get(k)) for m in (metadata, item) for k in _URI_KEYS if _scalar(m.get(k))), "")
    doc_id = _scalar(item.get("id")) or _scalar(metadata.get("chunk_id")) or _scalar(metadata.get("id"))
    score = _float(item.get("score", metadata.get("score")))
    return Document(content=content, id=doc_id, score=score, uri=uri, metadata=metadata)

"""OpenLLMetry (Traceloop): traceloop.entity.* on workflow/task/agent/tool spans, gen_ai.prompt.N.* and
gen_ai.completion.N.* on LLM spans.

Why it is detected by prefixes: OpenLLMetry has no single marker key; its LLM spans carry numbered
prompt/completion keys and llm.request.type, its decorator spans traceloop.* keys. It predates the
GenAI message attributes and shares GenAI's usage and model keys, so GenAI (registered before it) reads
those first. Its entity input/output wrap the function's arguments and return value in SDK envelopes,
unwrapped here. It has no retriever kind: a task returning documents, or a span carrying vector-DB
`db.query.result` events, is read as one.
"""

from __future__ import annotations

from typing import Any

from tracejudge.scoring.conventions.genai import read_usage
from tracejudge.scoring.conventions.record import Convention, Event, SpanRecord, span_tool
from tracejudge.scoring.values import decoded, dict_message, first, first_text, indexed, parse_documents, scalar
from tracejudge.scoring.view import Message

__all__ = ["CONVENTION"]

_KINDS = {"workflow": "CHAIN", "task": "CHAIN", "agent": "AGENT", "tool": "TOOL", "unknown": "UNKNOWN"}
_REQUESTS = {"chat": "CHAT_MODEL", "completion": "LLM", "embedding": "EMBEDDING", "rerank": "CHAIN"}
_QUERY_RESULT = "db.query.result"


def read(r: SpanRecord, results: dict[str, str]) -> None:
    a = r.attrs
    kind = _REQUESTS.get(scalar(a.get("llm.request.type")), "")
    r.kind = r.kind or kind or _KINDS.get(scalar(a.get("traceloop.span.kind")), "")
    r.inputs = first(r.inputs, _unwrap_input(decoded(a.get("traceloop.entity.input"))))
    r.outputs = first(r.outputs, _unwrap_output(decoded(a.get("traceloop.entity.output"))))
    r.model = r.model or first_text(a, "gen_ai.response.model", "gen_ai.request.model")
    r.provider = r.provider or first_text(a, "gen_ai.system", "llm.vendor")
    read_usage(r)
    if not r.input_messages:
        r.input_messages = _messages(a, "gen_ai.prompt.", "user", results)
    if not r.output_messages:
        r.output_messages = _messages(a, "gen_ai.completion.", "assistant", results)
    if r.kind == "TOOL" and r.tool is None:
        r.tool = span_tool(r, scalar(a.get("traceloop.entity.name")) or r.span.name, r.inputs, None, r.outputs)
    if r.kind in ("", "CHAIN") and not r.documents and (docs := parse_documents(r.outputs, strict=True)):
        r.kind, r.documents = "RETRIEVER", docs


def _messages(a: dict[str, Any], prefix: str, role: str, results: dict[str, str]) -> list[Message]:
    messages = []
    for flat in indexed(a, prefix):
        calls = indexed(flat, "tool_calls.")
        if "function_call.name" in flat:
            calls.append({"name": flat["function_call.name"], "arguments": flat.get("function_call.arguments")})
        raw = {"role": flat.get("role"), "content": flat.get("content"), "tool_call_id": flat.get("tool_call_id")}
        messages.append(dict_message({**raw, "tool_calls": calls}, role, results))
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


def read_events(r: SpanRecord, events: list[Event], results: dict[str, str]) -> None:
    """Vector-DB instrumentations record each hit as a `db.query.result` event (db.query.result.document,
    .id, .score, .metadata): the span is a retrieval, unless its attributes already named documents."""
    docs = []
    for _, ev in events:
        doc = {key.removeprefix("db.query.result."): value for key, value in ev.items()}
        doc["content"] = doc.pop("document", None)
        docs.append(doc)
    if not r.documents:
        r.documents = parse_documents(docs)
        r.kind, r.genai = r.kind or "RETRIEVER", True


CONVENTION = Convention(
    name="openllmetry",
    read=read,
    prefixes=("traceloop.", "gen_ai.prompt.", "gen_ai.completion.", "llm.request.type"),
    events=(_QUERY_RESULT,),
    read_events=read_events,
)

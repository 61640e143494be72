"""OpenInference (Arize Phoenix): input.value/output.value and flattened llm.* message lists.

Why it needs its own unflattening: OpenInference writes each message, content part, tool call and
document as numbered keys (llm.input_messages.0.message.role, retrieval.documents.1.document.content),
since OTel attributes hold no list of maps. Regrouped, they are the same message dicts every other SDK
writes, and go through the shared parser. input.value is JSON unless input.mime_type says text/plain.
"""

from __future__ import annotations

from typing import Any

from tracejudge.scoring.conventions.record import Convention, SpanRecord, span_kind, span_tool
from tracejudge.scoring.values import as_int, decoded, dict_message, first, first_text, indexed, parse_documents, scalar
from tracejudge.scoring.view import Message

__all__ = ["CONVENTION"]

_ARGUMENTS = "tool_call.function.arguments"


def read(r: SpanRecord, results: dict[str, str]) -> None:
    a = r.attrs
    r.kind = r.kind or span_kind(a.get("openinference.span.kind"))
    r.inputs = first(r.inputs, _value(a, "input"))
    r.outputs = first(r.outputs, _value(a, "output"))
    r.model = r.model or first_text(a, "llm.response.model_name", "llm.model_name", "llm.request.model_name")
    r.provider = r.provider or first_text(a, "llm.provider", "llm.system")
    r.input_tokens = first(r.input_tokens, as_int(a.get("llm.token_count.prompt")))
    r.output_tokens = first(r.output_tokens, as_int(a.get("llm.token_count.completion")))
    if not r.input_messages:
        r.input_messages = [_message(m, "user", results) for m in indexed(a, "llm.input_messages.")]
    if not r.output_messages:
        r.output_messages = [_message(m, "assistant", results) for m in indexed(a, "llm.output_messages.")]
    if r.kind == "RETRIEVER" and not r.documents:
        r.documents = parse_documents([_document(d) for d in indexed(a, "retrieval.documents.")])
    if r.kind == "TOOL" and r.tool is None:
        name = scalar(a.get("tool.name")) or scalar(a.get("tool_call.function.name")) or r.span.name
        arguments = a.get(_ARGUMENTS, a.get("input.value"))
        r.tool = span_tool(r, name, arguments, a.get("tool_call.id"), a.get("output.value"))


def _value(a: dict[str, Any], prefix: str) -> Any:
    value = a.get(f"{prefix}.value")
    return value if a.get(f"{prefix}.mime_type") == "text/plain" else decoded(value)


def _message(flat: dict[str, Any], role: str, results: dict[str, str]) -> Message:
    content = flat.get("message.content")
    if content is None:
        content = [{"type": "text", "text": c.get("message_content.text")} for c in indexed(flat, "message.contents.")]
    calls = [
        {"id": c.get("tool_call.id"), "name": c.get("tool_call.function.name"), "arguments": c.get(_ARGUMENTS)}
        for c in indexed(flat, "message.tool_calls.")
    ]
    raw = {"role": flat.get("message.role"), "content": content, "tool_calls": calls}
    return dict_message({**raw, "tool_call_id": flat.get("message.tool_call_id")}, role, results)


def _document(flat: dict[str, Any]) -> dict[str, Any]:
    return {key.removeprefix("document."): value for key, value in flat.items()}


CONVENTION = Convention(name="openinference", read=read, markers=("openinference.span.kind",))

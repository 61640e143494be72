"""Attribute values as the facts they hold: JSON-ish text, messages, content parts, tool calls, documents.

Why one module for every convention: the conventions differ in where they put a value, far less in what
the value looks like. An OpenInference input.value, an OpenLLMetry traceloop.entity.input, an MLflow
span input and a GenAI log body can each be an OpenAI chat request, a LangChain message, a Gemini
response or a GenAI parts list. Parsing those shapes once, here, lets a convention reader name its keys
and nothing more, and keeps the rules for bad data in one place.

Nothing here raises on bad data: malformed JSON stays the string it was, items of the wrong shape are
skipped, missing fields stay empty, nesting is cut off at a fixed depth. Values that cannot be JSON (by
their first character) are never handed to the JSON parser: most attribute values are plain text, and a
failed parse costs more than the check.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

import orjson

from tracejudge.otlp import any_value
from tracejudge.scoring.view import Document, Message, ToolCall

__all__ = [
    "Parsed",
    "as_int",
    "attributes",
    "blank",
    "decoded",
    "dict_message",
    "dict_str",
    "first",
    "first_int",
    "first_text",
    "indexed",
    "json_text",
    "loads",
    "parse_documents",
    "parse_messages",
    "pick",
    "scalar",
    "text_of",
]

# (a value, the messages parse_messages() found in it): lets text_of() reuse a parse instead of redoing it.
Parsed = tuple[Any, list[Message]]

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
_MESSAGE_LIST_KEYS = frozenset({"messages", "choices", "generations", "candidates"})
_JSON_START = frozenset('{["')
_LIST_START = frozenset("[")
_MAX_DEPTH = 6
_DOC_TEXT_KEYS = ("page_content", "content", "text")


# --- attributes and scalars -------------------------------------------------------------------------


def attributes(items: Any) -> dict[str, Any]:
    """attributes_dict() with its common case inline: a non-empty string_value is the value that is set
    (AnyValue is a oneof); anything else, the empty string included, goes through any_value()."""
    attrs = {}
    for item in items:
        value = item.value
        attrs[item.key] = value.string_value or any_value(value)
    return attrs


def loads(text: str, starts: frozenset[str] = _JSON_START) -> Any:
    """JSON-decode `text` if it can be JSON (by its first character); malformed JSON stays the text."""
    if not text or text[0] not in starts:
        return text
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return text


def decoded(value: Any) -> Any:
    return loads(value) if isinstance(value, str) else value


def json_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    try:
        return orjson.dumps(value).decode()
    except TypeError:  # orjson.JSONEncodeError: integers beyond 64 bits, nesting deeper than orjson allows
        try:
            return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
        except (TypeError, ValueError, RecursionError):
            return ""


def scalar(value: Any) -> str:
    """A scalar attribute as text ("" for None, containers and booleans)."""
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    return ""


def as_int(value: Any) -> int | None:
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.strip().isdecimal():
        return int(value)
    return None


def _as_float(value: Any) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def first_text(mapping: Mapping[str, Any], *keys: str) -> str:
    for key in keys:
        value = mapping.get(key)
        if value is not None and (text := scalar(value)):  # most keys asked for are absent
            return text
    return ""


def first_int(mapping: Mapping[str, Any], *keys: str) -> int | None:
    for key in keys:
        if (number := as_int(mapping.get(key))) is not None:
            return number
    return None


def first(current: Any, candidate: Any) -> Any:
    return candidate if current is None else current


def blank(value: Any) -> bool:
    return value is None or value == "" or (isinstance(value, (list, dict)) and not value)


def dict_str(value: Any, key: str) -> str:
    return scalar(value.get(key)) if isinstance(value, dict) else ""


def indexed(flat: Mapping[str, Any], prefix: str) -> list[dict[str, Any]]:
    """Flattened lists (`prefix.N.rest` keys) as a list of {rest: value} dicts, by N."""
    groups: dict[int, dict[str, Any]] = {}
    start = len(prefix)
    for key, value in flat.items():
        if key.startswith(prefix):
            index, _, rest = key[start:].partition(".")
            if rest and index.isdecimal():
                groups.setdefault(int(index), {})[rest] = value
    return [groups[i] for i in sorted(groups)]


# --- text for a judge -------------------------------------------------------------------------------


def text_of(value: Any, role: str, depth: int = 0, known: Parsed | None = None) -> str:
    """`value` as readable text for a judge: a message list's last `role` message, a known key's value,
    else compact JSON. `known`: (a value, its `role` messages) that a reader parsed already."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if depth > _MAX_DEPTH or not isinstance(value, (list, dict)):
        return json_text(value)
    if isinstance(value, list):
        if not value or all(isinstance(item, str) for item in value):
            return "\n".join(value)
        return _list_text(value, role, known)
    return _dict_text(value, role, depth, known)


def _list_text(value: list[Any], role: str, known: Parsed | None) -> str:
    """A list is a message list if its first item holds messages."""
    head = value[0]
    if isinstance(head, (dict, list)) and (_is_one_message(head) or parse_messages(head, role, {})):
        said = _said(_reparsed(value, role, known), role)
        if said or (said == "" and all(_holds_no_text(item) for item in value)):
            return said
    return json_text(value)


def _dict_text(value: dict[str, Any], role: str, depth: int, known: Parsed | None) -> str:
    if "lc" in value and isinstance(value.get("kwargs"), dict):  # a LangChain-serialized object
        return text_of(value["kwargs"], role, depth + 1)
    said = None
    if _is_message(value) or "choices" in value or "generations" in value:
        said = _said(_reparsed(value, role, known), role)
        if said:
            return said
    for key in _TEXT_KEYS:
        if not blank(value.get(key)):
            return text_of(value[key], role, depth + 1)
    return "" if said == "" else json_text(value)


def _said(messages: list[Message], role: str) -> str | None:
    """The text of parsed messages: `pick`'s, or "" when they hold no text and no tool calls (an empty
    reply is no reply: a judge must not be shown its JSON as if it were one, unless the value holds text
    elsewhere); None for the caller's fallback (no messages, or tool calls without text)."""
    text = pick(messages, role)
    if text or (messages and not any(message.tool_calls for message in messages)):
        return text
    return None


def _holds_no_text(item: Any) -> bool:
    return not isinstance(item, dict) or all(blank(item.get(key)) for key in _TEXT_KEYS)


def pick(messages: Iterable[Message], role: str, strict: bool = False) -> str:
    """The last non-empty message of `role`, else (unless `strict`) the last non-empty message."""
    fallback = ""
    for message in reversed(list(messages)):
        content: str = message.content
        if content and message.role == role:
            return content
        fallback = fallback or content
    return "" if strict else fallback


def _reparsed(value: Any, role: str, known: Parsed | None) -> list[Message]:
    """parse_messages(value, role), taken from `known` where it holds this very value (values are never
    mutated)."""
    if known is not None and known[0] is value:
        return known[1]
    return parse_messages(value, role, {})


# --- messages ---------------------------------------------------------------------------------------


def _is_one_message(value: Any) -> bool:
    """True where parse_messages(value) is certainly one message, cheap to tell without parsing it."""
    if not isinstance(value, dict) or not _MESSAGE_LIST_KEYS.isdisjoint(value):
        return False
    return _is_message(value) or "content" in value


def _is_message(value: dict[str, Any]) -> bool:
    return "role" in value or "parts" in value or ("content" in value and "type" in value) or "lc" in value


def parse_messages(value: Any, role: str, results: dict[str, str], depth: int = 0) -> list[Message]:
    """Messages from any of the shapes instrumentations write: GenAI parts, OpenAI/Anthropic/Gemini
    messages, chat requests {"messages"}, responses {"choices"}/{"candidates"}, LangChain messages.
    `role` is the role of messages that name none; tool results found on the way go into `results`,
    by call id, the first one written for an id winning."""
    if depth > _MAX_DEPTH:
        return []
    if isinstance(value, str):
        value = loads(value)
        if isinstance(value, str):
            return [Message(role, value)] if value else []
    if isinstance(value, list):
        return [m for item in value for m in parse_messages(item, role, results, depth + 1)]
    if not isinstance(value, dict):
        return []
    if not _MESSAGE_LIST_KEYS.isdisjoint(value):  # rare: most dicts are one message
        if isinstance(value.get("messages"), list):
            return parse_messages(value["messages"], role, results, depth + 1)
        for key in ("choices", "generations", "candidates"):
            if isinstance(value.get(key), list):
                items = [_unwrap_choice(item) for item in _flatten(value[key])]
                return parse_messages(items, "assistant", results, depth + 1)
    if _is_message(value) or "content" in value:
        return [dict_message(value, role, results)]
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


def dict_message(d: dict[str, Any], role: str, results: dict[str, str]) -> Message:
    """One message dict of any SDK's shape; `role` where it names none."""
    if "lc" in d and isinstance(d.get("kwargs"), dict):
        d = d["kwargs"]
    role = _role(d, role)
    raw = d["parts"] if "parts" in d else d.get("content")
    items = loads(raw, _LIST_START) if isinstance(raw, str) else raw  # content parts may arrive as JSON text
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
        return json_text(value)
    if isinstance(value, list):
        return _parts(value, {}, depth + 1)[0]
    if isinstance(value, dict) and ("text" in value or "content" in value):
        return _content(value.get("text", value.get("content")), depth + 1)
    return json_text(value)


def _tool_call(item: Any) -> ToolCall | None:
    """OpenAI {id, function: {name, arguments}}, flat {id, name, arguments}, Anthropic {id, name, input},
    LangChain {id, name, args}."""
    if not isinstance(item, dict):
        return None
    function = item.get("function")
    if not isinstance(function, dict):
        function = item
    name = scalar(function.get("name"))
    if not name:
        return None
    arguments = next((function[k] for k in ("arguments", "args", "input") if k in function), None)
    call_id = item.get("id") or item.get("call_id") or function.get("id")
    return ToolCall(name=name, arguments=json_text(arguments) if arguments is not None else "", id=scalar(call_id))


def _as_list(value: Any) -> list[Any]:
    value = decoded(value)
    return value if isinstance(value, list) else []


# --- documents --------------------------------------------------------------------------------------


def parse_documents(value: Any, strict: bool = False, depth: int = 0) -> list[Document]:
    """Retrieved documents from a retriever's output: a list of {page_content|content|text, id, score,
    metadata}, {"documents": [...]}, or plain strings (unless `strict`: then only document dicts)."""
    value = decoded(value)
    if isinstance(value, dict):
        inner = next((value[k] for k in ("documents", "docs") if isinstance(value.get(k), list)), None)
        if inner is not None:
            return parse_documents(inner, strict, depth + 1)
        doc = _document(value, strict)
        return [doc] if doc else []
    if not isinstance(value, list) or depth > 2:
        return []
    docs = []
    for item in value:
        if isinstance(item, list):
            docs.extend(parse_documents(item, strict, depth + 1))
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
    metadata = decoded(item.get("metadata"))
    metadata = metadata if isinstance(metadata, dict) else {}
    uri = next((scalar(m.get(k)) for m in (metadata, item) for k in _URI_KEYS if scalar(m.get(k))), "")
    doc_id = scalar(item.get("id")) or scalar(metadata.get("chunk_id")) or scalar(metadata.get("id"))
    score = _as_float(item.get("score", metadata.get("score")))
    return Document(content=content, id=doc_id, score=score, uri=uri, metadata=metadata)

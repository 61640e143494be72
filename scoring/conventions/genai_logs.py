"""GenAI log events: the messages of an LLM call sent as OTel log records rather than span attributes.

Why a module of its own beside genai.py: these are another signal, not span attributes. They arrive as
LogRecords, are joined to their span by span id only once every span of the trace is read, and one of
them can turn a span that no convention recognised into an LLM call; a span convention's reader never
sees them. Two forms exist: the legacy per-message events (semconv <= 1.36: gen_ai.user.message,
gen_ai.choice, ...) and the latest gen_ai.client.inference.operation.details, one event per call with
the messages in its attributes under the same keys as on the span (named once, in genai.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord

from tracejudge.model import BufferedLog
from tracejudge.otlp import any_value
from tracejudge.scoring.conventions.genai import INPUT_MESSAGES, OUTPUT_MESSAGES, SYSTEM_INSTRUCTIONS
from tracejudge.scoring.conventions.record import SpanRecord
from tracejudge.scoring.values import as_int, attributes, decoded, dict_message, parse_messages, scalar
from tracejudge.scoring.view import Message

__all__ = ["join_logs"]

# Legacy GenAI log events (semconv <= 1.36) -> the role of the message they carry.
_EVENT_ROLES = {
    "gen_ai.system.message": "system",
    "gen_ai.user.message": "user",
    "gen_ai.assistant.message": "assistant",
    "gen_ai.tool.message": "tool",
}
_CHOICE_EVENT = "gen_ai.choice"
# Latest GenAI semconv: one event per call with the messages in its attributes, as on the span.
_DETAILS_EVENT = "gen_ai.client.inference.operation.details"

_Ordered = dict[str, list[tuple[int, Message]]]  # span id -> (order, message)


def join_logs(logs: list[BufferedLog], by_id: Mapping[str, SpanRecord], results: dict[str, str]) -> bool:
    """GenAI log events become their span's messages; True if any GenAI event exists."""
    inputs: _Ordered = {}
    outputs: _Ordered = {}
    found = False
    for log in logs:
        record = LogRecord.FromString(log.log_bytes)
        name = _event_name(record)
        found = found or name.startswith("gen_ai.")
        if name == _DETAILS_EVENT:
            _details_messages(attributes(record.attributes), log.span_id.hex(), inputs, outputs, results)
            continue
        if name not in _EVENT_ROLES and name != _CHOICE_EVENT:
            continue
        body = decoded(any_value(record.body))
        target = outputs if name == _CHOICE_EVENT else inputs
        order, message = _log_message(name, body, results)
        target.setdefault(log.span_id.hex(), []).append((record.time_unix_nano if order < 0 else order, message))
    for span_id in inputs.keys() | outputs.keys():
        if (r := by_id.get(span_id)) is not None:
            _apply(r, inputs.get(span_id, []), outputs.get(span_id, []))
    return found


def _event_name(record: LogRecord) -> str:
    if record.event_name:
        return record.event_name
    return next((scalar(any_value(a.value)) for a in record.attributes if a.key == "event.name"), "")


def _log_message(name: str, body: Any, results: dict[str, str]) -> tuple[int, Message]:
    """(order, message): the choice index for gen_ai.choice, -1 (order by time) for the input events."""
    if not isinstance(body, dict):
        body = {"content": body}
    if name == _CHOICE_EVENT:
        message = body.get("message")
        message = message if isinstance(message, dict) else {}
        return as_int(body.get("index")) or 0, dict_message(message, "assistant", results)
    role = _EVENT_ROLES[name]
    call_id = body.get("id") if role == "tool" else None
    return -1, dict_message({**body, "role": body.get("role") or role, "tool_call_id": call_id}, role, results)


def _details_messages(
    ev: dict[str, Any], span_id: str, inputs: _Ordered, outputs: _Ordered, results: dict[str, str]
) -> None:
    """The details event's messages and system instructions (structured values, or JSON text), in their
    order."""
    system = parse_messages(decoded(ev[SYSTEM_INSTRUCTIONS]), "system", results) if SYSTEM_INSTRUCTIONS in ev else []
    sent = system + parse_messages(decoded(ev.get(INPUT_MESSAGES)), "user", results)
    received = parse_messages(decoded(ev.get(OUTPUT_MESSAGES)), "assistant", results)
    inputs.setdefault(span_id, []).extend(enumerate(sent))
    outputs.setdefault(span_id, []).extend(enumerate(received))


def _apply(r: SpanRecord, inputs: list[tuple[int, Message]], outputs: list[tuple[int, Message]]) -> None:
    r.genai = True
    if r.kind == "UNKNOWN":
        r.kind = "LLM"
    if inputs and not r.input_messages:
        r.input_messages = [m for _, m in sorted(inputs, key=lambda item: item[0])]
    if outputs and not r.output_messages:
        r.output_messages = [m for _, m in sorted(outputs, key=lambda item: item[0])]

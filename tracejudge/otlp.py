"""OTLP facts and helpers every part needs, kept once in a module that imports no part.

- OTLP's gRPC services, named once and read from the generated descriptors (not typed by hand): the
  receiver serves them, the forwarder calls them, tests and benchmarks play both roles;
- AnyValue and attribute lists as plain Python values, and back: the archive's rows, the trace summaries
  and extraction read attributes; the archive reader rebuilds them from the rows;
- which span is a service's entry span, and which log records are GenAI events: the live assembler and
  the archive reader must decide both the same way;
- where instrumentations put the conversation (session) and the user: the trace summaries and
  extraction must agree on them.

Building the SDK's OTLP exporters lives beside it in otlp_exporters.py: scoring reads attributes
but never exports, and must not import a transport to do so.
"""

from __future__ import annotations

import base64
import functools
from collections.abc import Iterable
from typing import Any

from opentelemetry.proto.collector.logs.v1 import logs_service_pb2
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.resource.v1.resource_pb2 import Resource

from tracejudge.model import Signal

GRPC_SERVICES: dict[Signal, str] = {
    Signal.TRACES: trace_service_pb2.DESCRIPTOR.services_by_name["TraceService"].full_name,
    Signal.METRICS: metrics_service_pb2.DESCRIPTOR.services_by_name["MetricsService"].full_name,
    Signal.LOGS: logs_service_pb2.DESCRIPTOR.services_by_name["LogsService"].full_name,
}
GRPC_EXPORT_METHODS: dict[Signal, str] = {signal: f"/{service}/Export" for signal, service in GRPC_SERVICES.items()}

# Where each instrumentation puts the conversation and the user (ordered by preference).
SESSION_KEYS = (
    "session.id",
    "gen_ai.conversation.id",
    "langfuse.session.id",
    "traceloop.association.properties.session_id",
    "traceloop.association.properties.conversation_id",
    "traceloop.association.properties.chat_id",
    "mlflow.trace.session",  # MLflow's session tag, where an exporter carries it as a span attribute
)
# gen_ai.user: OpenLLMetry records OpenAI's `user` request parameter (an end-user id) there.
USER_KEYS = ("user.id", "langfuse.user.id", "traceloop.association.properties.user_id", "enduser.id", "gen_ai.user")


def any_value(value: AnyValue) -> Any:
    """An AnyValue as a plain Python value; bytes as base64 text (JSON has no bytes)."""
    kind = value.WhichOneof("value")
    if kind == "string_value":
        return value.string_value
    if kind == "int_value":
        return value.int_value
    if kind == "double_value":
        return value.double_value
    if kind == "bool_value":
        return value.bool_value
    if kind == "array_value":
        return [any_value(item) for item in value.array_value.values]
    if kind == "kvlist_value":
        return {item.key: any_value(item.value) for item in value.kvlist_value.values}
    if kind == "bytes_value":
        return base64.b64encode(value.bytes_value).decode()
    return None


def attributes_dict(attributes: Iterable[KeyValue]) -> dict[str, Any]:
    return {item.key: any_value(item.value) for item in attributes}


def set_any_value(target: AnyValue, value: Any) -> None:
    """The inverse of any_value() for what JSON holds: str, bool, int, float, list, dict, None (left empty).

    What any_value() made text stays text: bytes come back as their base64 string, which any_value() reads
    exactly as it reads the original bytes. A list or dict is set even when empty, so [] stays [] (not None)."""
    if isinstance(value, str):
        target.string_value = value
    elif isinstance(value, bool):  # before int: bool is an int
        target.bool_value = value
    elif isinstance(value, int):
        target.int_value = value
    elif isinstance(value, float):
        target.double_value = value
    elif isinstance(value, list):
        target.array_value.SetInParent()
        for item in value:
            set_any_value(target.array_value.values.add(), item)
    elif isinstance(value, dict):
        target.kvlist_value.SetInParent()
        add_attributes(target.kvlist_value.values, value)


def add_attributes(target: Any, attributes: dict[str, Any]) -> None:
    """Append `attributes` (as attributes_dict() returns them) to a repeated KeyValue field."""
    for key, value in attributes.items():
        item = target.add()
        item.key = key
        set_any_value(item.value, value)


# OTLP Span.flags bits 8 and 9: "parent is known to be remote" (proto/trace/v1/trace.proto).
_PARENT_REMOTE_KNOWN = 0x100
_PARENT_IS_REMOTE = 0x200


def is_local_root(parent_span_id: bytes, flags: int) -> bool:
    """A span with no parent, or whose parent lives in another process (its service's entry span)."""
    if not parent_span_id:
        return True
    remote_bits = _PARENT_REMOTE_KNOWN | _PARENT_IS_REMOTE
    return flags & remote_bits == remote_bits


def is_genai_event(event_name: str) -> bool:
    """The log events kept with their trace: GenAI events carry prompts and completions (legacy per-message
    events, the latest per-call details event)."""
    return event_name.startswith("gen_ai.")


def service_name(resource_attributes: dict[str, Any]) -> str:
    return str(resource_attributes.get("service.name", ""))


@functools.lru_cache(maxsize=1024)
def service_name_of(resource_bytes: bytes) -> str:
    """The service.name of a serialized Resource; the spans of one process share the same bytes."""
    for attribute in Resource.FromString(resource_bytes).attributes:
        if attribute.key == "service.name":
            return str(any_value(attribute.value))
    return ""

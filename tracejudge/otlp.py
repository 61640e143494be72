"""OTLP facts and helpers every part needs, kept once in a module that imports no part.

- OTLP's gRPC services, named once and read from the generated descriptors (not typed by hand): the
  receiver serves them, the forwarder calls them, tests and benchmarks play both roles;
- AnyValue and attribute lists as plain Python values: the archive's rows, the trace summaries and
  extraction all read attributes;
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


def service_name(resource_attributes: dict[str, Any]) -> str:
    return str(resource_attributes.get("service.name", ""))


@functools.lru_cache(maxsize=1024)
def service_name_of(resource_bytes: bytes) -> str:
    """The service.name of a serialized Resource; the spans of one process share the same bytes."""
    for attribute in Resource.FromString(resource_bytes).attributes:
        if attribute.key == "service.name":
            return str(any_value(attribute.value))
    return ""

"""OTLP facts and helpers every part needs, kept once in a module that imports no part.

- OTLP's gRPC services, named once and read from the generated descriptors (not typed by hand): the
  receiver serves them, the forwarder calls them, tests and benchmarks play both roles;
- AnyValue and attribute lists as plain Python values: the archive's rows, the trace summaries and
  extraction all read attributes;
- where instrumentations put the conversation (session) and the user: the trace summaries and
  extraction must agree on them;
- the OpenTelemetry SDK's OTLP exporters for a URL in tracejudge's form (grpc://, http(s)://), or for
  what the app's own OTEL_EXPORTER_OTLP_* settings say: the self-metrics push, the scoring worker's
  metrics and the in-process mode's verdicts all export through them.
"""

from __future__ import annotations

import base64
import functools
import os
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Literal

from opentelemetry.proto.collector.logs.v1 import logs_service_pb2
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.resource.v1.resource_pb2 import Resource

from tracejudge.model import Signal

if TYPE_CHECKING:
    from opentelemetry.sdk._logs.export import LogRecordExporter
    from opentelemetry.sdk.metrics.export import MetricExporter
    from opentelemetry.sdk.trace.export import SpanExporter

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


Protocol = Literal["grpc", "http"]


def exporter_protocol(url: str | None, signal: Signal) -> Protocol:
    """grpc or http for a tracejudge URL; for None, the app's OTEL_EXPORTER_OTLP_<SIGNAL>_PROTOCOL or
    OTEL_EXPORTER_OTLP_PROTOCOL, grpc when neither is set (the Python SDK's default)."""
    if url is not None:
        if url.startswith("grpc://"):
            return "grpc"
        if url.startswith(("http://", "https://")):
            return "http"
        raise ValueError(f"expected grpc://host:port, http://host:port or https://host:port, got {url!r}")
    name = os.environ.get(f"OTEL_EXPORTER_OTLP_{signal.name}_PROTOCOL") or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
    protocol = (name or "grpc").strip()
    if protocol not in ("grpc", "http/protobuf"):
        raise ValueError(f"OTLP protocol {protocol!r} is not supported here; use grpc or http/protobuf")
    return "grpc" if protocol == "grpc" else "http"


def span_and_log_exporters(
    url: str | None, headers: dict[str, str] | None = None, gzip: bool = False, timeout_s: float = 10.0
) -> tuple[SpanExporter, LogRecordExporter]:
    """OTLP span and log exporters for `url`, or (None) where the OTEL_EXPORTER_OTLP_* variables point."""
    if exporter_protocol(url, Signal.TRACES) == "grpc":
        from grpc import Compression as GrpcCompression
        from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter as GrpcLogExporter
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcSpanExporter

        options: dict[str, Any] = {"timeout": timeout_s}
        if url is not None:
            options |= {"endpoint": url.removeprefix("grpc://").rstrip("/"), "insecure": True}
        if headers:
            options["headers"] = {k.lower(): v for k, v in headers.items()}  # gRPC metadata keys are lowercase
        if gzip or url is not None:  # an explicit endpoint is not configured by the environment
            options["compression"] = GrpcCompression.Gzip if gzip else GrpcCompression.NoCompression
        return GrpcSpanExporter(**options), GrpcLogExporter(**options)
    from opentelemetry.exporter.otlp.proto.http import Compression as HttpCompression
    from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter as HttpLogExporter
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpSpanExporter

    common: dict[str, Any] = {"timeout": timeout_s}
    if headers:
        common["headers"] = dict(headers)
    if gzip or url is not None:
        common["compression"] = HttpCompression.Gzip if gzip else HttpCompression.NoCompression
    spans, logs = dict(common), dict(common)
    if url is not None:
        spans["endpoint"], logs["endpoint"] = f"{url.rstrip('/')}/v1/traces", f"{url.rstrip('/')}/v1/logs"
    return HttpSpanExporter(**spans), HttpLogExporter(**logs)


def metric_exporter(url: str | None) -> MetricExporter:
    """An OTLP metric exporter for `url`, or (None) where the OTEL_EXPORTER_OTLP_* variables point."""
    if exporter_protocol(url, Signal.METRICS) == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter as GrpcExporter

        if url is None:
            return GrpcExporter()
        return GrpcExporter(endpoint=url.removeprefix("grpc://").rstrip("/"), insecure=True)
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter as HttpExporter

    return HttpExporter() if url is None else HttpExporter(endpoint=url.rstrip("/") + "/v1/metrics")

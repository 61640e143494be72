"""The OpenTelemetry SDK's OTLP exporters for a URL in tracejudge's form (grpc://, http(s)://), or for
what the app's own OTEL_EXPORTER_OTLP_* settings say.

The self-metrics push, the scoring worker's verdicts and metrics and the in-process mode's verdicts all
export through these, so the endpoint forms and the environment fallback are decided in one place.
The SDK exporters are imported inside the functions: importing this module costs nothing.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Literal

from tracejudge.model import Signal

if TYPE_CHECKING:
    from opentelemetry.sdk._logs.export import LogRecordExporter
    from opentelemetry.sdk.metrics.export import MetricExporter
    from opentelemetry.sdk.trace.export import SpanExporter

Protocol = Literal["grpc", "http"]


def exporter_protocol(url: str | None, signal: Signal) -> Protocol:
    """grpc or http for a tracejudge URL; for None, the app's OTEL_EXPORTER_OTLP_<SIGNAL>_PROTOCOL or
    OTEL_EXPORTER_OTLP_PROTOCOL, grpc when neither is set (the Python SDK's default)."""
    if url is not None:
        if url.startswith(("grpc://", "grpcs://")):
            return "grpc"
        if url.startswith(("http://", "https://")):
            return "http"
        raise ValueError(
            f"expected grpc://host:port, grpcs://host:port (TLS), http:// or https://host:port, got {url!r}"
        )
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
            # grpcs:// verifies against the SDK's OTEL_EXPORTER_OTLP_CERTIFICATE, else the system roots.
            options |= {"endpoint": url.partition("://")[2].rstrip("/"), "insecure": not url.startswith("grpcs://")}
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
        return GrpcExporter(endpoint=url.partition("://")[2].rstrip("/"), insecure=not url.startswith("grpcs://"))
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter as HttpExporter

    return HttpExporter() if url is None else HttpExporter(endpoint=url.rstrip("/") + "/v1/metrics")

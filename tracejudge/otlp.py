"""OTLP's gRPC services, named once and read from the generated descriptors (not typed by hand).

The receiver serves them, the forwarder calls them, tests and benchmarks play both roles.
"""

from __future__ import annotations

from opentelemetry.proto.collector.logs.v1 import logs_service_pb2
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

from tracejudge.model import Signal

GRPC_SERVICES: dict[Signal, str] = {
    Signal.TRACES: trace_service_pb2.DESCRIPTOR.services_by_name["TraceService"].full_name,
    Signal.METRICS: metrics_service_pb2.DESCRIPTOR.services_by_name["MetricsService"].full_name,
    Signal.LOGS: logs_service_pb2.DESCRIPTOR.services_by_name["LogsService"].full_name,
}
GRPC_EXPORT_METHODS: dict[Signal, str] = {signal: f"/{service}/Export" for signal, service in GRPC_SERVICES.items()}

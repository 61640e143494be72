"""What a receiver hands on, and the errors it turns into OTLP statuses.

Both transports share this so that a request means the same thing over gRPC and HTTP:
one decoding path, one set of limits, one mapping of failures to codes.
"""

from __future__ import annotations

from typing import Protocol

import grpc
from google.protobuf.message import DecodeError, Message
from opentelemetry import metrics
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
    ExportLogsServiceRequest,
    ExportLogsServiceResponse,
)
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from tracejudge.model import Signal
from tracejudge.receiver.otlp_json import OtlpJsonError, parse_otlp_json
from tracejudge.receiver.screen import Rejection

REQUEST_TYPES: dict[Signal, type[Message]] = {
    Signal.TRACES: ExportTraceServiceRequest,
    Signal.METRICS: ExportMetricsServiceRequest,
    Signal.LOGS: ExportLogsServiceRequest,
}
RESPONSE_TYPES: dict[Signal, type[Message]] = {
    Signal.TRACES: ExportTraceServiceResponse,
    Signal.METRICS: ExportMetricsServiceResponse,
    Signal.LOGS: ExportLogsServiceResponse,
}


class RequestError(Exception):
    """A request refused as a whole; carries its HTTP status and gRPC code."""

    http_status = 400
    grpc_code = grpc.StatusCode.INVALID_ARGUMENT
    retry_after: float | None = None


class InvalidRequest(RequestError):
    pass


class PayloadTooLarge(RequestError):
    http_status = 413
    grpc_code = grpc.StatusCode.RESOURCE_EXHAUSTED


class UnsupportedMediaType(RequestError):
    http_status = 415


class Overloaded(RequestError):
    """Backpressure: the client should retry after `retry_after` seconds."""

    http_status = 503
    grpc_code = grpc.StatusCode.UNAVAILABLE

    def __init__(self, message: str, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ExportConsumer(Protocol):
    """Takes a decoded, non-empty export request, its protobuf bytes (what is forwarded) and item count.

    Raises Overloaded to push back on the client; anything accepted must not be lost afterwards.
    """

    def consume(self, signal: Signal, request: Message, payload: bytes, items: int) -> None: ...


def decode_protobuf(signal: Signal, body: bytes) -> Message:
    try:
        return REQUEST_TYPES[signal].FromString(body)
    except DecodeError as exc:
        raise InvalidRequest(f"cannot decode {signal.value} request as protobuf: {exc}") from exc


def decode_json(signal: Signal, body: bytes) -> Message:
    try:
        return parse_otlp_json(body, REQUEST_TYPES[signal])
    except OtlpJsonError as exc:
        raise InvalidRequest(f"cannot decode {signal.value} request as OTLP/JSON: {exc}") from exc


def count_items(signal: Signal, request: Message) -> int:
    """Spans, log records or metrics in a request (the unit OTLP partial success counts)."""
    if signal is Signal.TRACES:
        return sum(len(ss.spans) for rs in request.resource_spans for ss in rs.scope_spans)
    if signal is Signal.LOGS:
        return sum(len(sl.log_records) for rl in request.resource_logs for sl in rl.scope_logs)
    return sum(len(sm.metrics) for rm in request.resource_metrics for sm in rm.scope_metrics)


def partial_success(signal: Signal, rejection: Rejection) -> Message:
    """The Export*ServiceResponse telling the client which items the server rejected (OTLP partial success:
    the client must not retry them); metrics requests are never screened, so they never get one."""
    response = RESPONSE_TYPES[signal]()
    if isinstance(response, ExportTraceServiceResponse):
        response.partial_success.rejected_spans = rejection.count
        response.partial_success.error_message = rejection.message
    elif isinstance(response, ExportLogsServiceResponse):
        response.partial_success.rejected_log_records = rejection.count
        response.partial_success.error_message = rejection.message
    return response


class ReceiverMetrics:
    """Request outcomes and accepted items, by transport and signal."""

    def __init__(self, meter: metrics.Meter, transport: str) -> None:
        self._transport = transport
        self._requests = meter.create_counter(
            "tracejudge.receiver.requests", description="Export requests by transport, signal and outcome"
        )
        self._accepted = meter.create_counter(
            "tracejudge.receiver.accepted_items",
            description="Spans, log records or metrics accepted, by transport and signal",
        )
        self._refused = meter.create_counter(
            "tracejudge.receiver.refused_items",
            description="Spans, log records or metrics in refused requests (the client may retry them)",
        )
        self._rejected = meter.create_counter(
            "tracejudge.receiver.rejected_items",
            description="Spans or log records removed from accepted requests as invalid (partial success, not retried)",
        )

    def accepted(self, signal: Signal, items: int) -> None:
        attributes = {"transport": self._transport, "signal": signal.value}
        self._requests.add(1, {**attributes, "outcome": "ok"})
        self._accepted.add(items, attributes)

    def rejected(self, signal: Signal, items: int) -> None:
        """Items screened out of an accepted request (answered as a partial success)."""
        self._rejected.add(items, {"transport": self._transport, "signal": signal.value})

    def refused(self, signal: Signal, outcome: str, items: int = 0) -> None:
        attributes = {"transport": self._transport, "signal": signal.value}
        self._requests.add(1, {**attributes, "outcome": outcome})
        if items:
            self._refused.add(items, attributes)


def outcome_name(error: RequestError) -> str:
    return {InvalidRequest: "invalid", PayloadTooLarge: "too_large", Overloaded: "overloaded"}.get(type(error), "error")

"""OTLP/gRPC receiver: the Trace, Metrics and Logs `Export` services on one server.

Handlers are registered without a deserializer, so each receives the request's wire bytes: those
bytes are what gets forwarded, and they are parsed exactly once, here.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status
from opentelemetry import metrics

from tracejudge.config import parse_host_port
from tracejudge.model import Signal
from tracejudge.otlp import GRPC_SERVICES
from tracejudge.receiver.config import ReceiverConfig
from tracejudge.receiver.export import (
    RESPONSE_TYPES,
    ExportConsumer,
    Overloaded,
    ReceiverMetrics,
    RequestError,
    count_items,
    decode_protobuf,
    outcome_name,
    partial_success,
)
from tracejudge.receiver.screen import screen
from tracejudge.tls import describe, grpc_server_credentials

log = logging.getLogger(__name__)


class GrpcReceiver:
    def __init__(
        self,
        config: ReceiverConfig,
        consumer: ExportConsumer,
        meter: metrics.Meter,
        handlers: Sequence[grpc.GenericRpcHandler] = (),
    ) -> None:
        """`handlers`: further services on the same port (tracejudge's control plane)."""
        assert config.grpc_endpoint is not None
        self._endpoint = config.grpc_endpoint
        self._tls = config.tls
        self._consumer = consumer
        self.port: int | None = None  # bound by start()
        self._metrics = ReceiverMetrics(meter, "grpc")
        self._server = grpc.server(
            ThreadPoolExecutor(max_workers=config.grpc_max_workers, thread_name_prefix="otlp-grpc"),
            options=[
                ("grpc.max_receive_message_length", config.max_request_body_size),
                ("grpc.so_reuseport", 0),
            ],
        )
        for signal, service in GRPC_SERVICES.items():
            handler = grpc.unary_unary_rpc_method_handler(self._handler(signal))
            self._server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, {"Export": handler}),))
        self._server.add_generic_rpc_handlers(tuple(handlers))
        self._empty_responses: dict[Signal, bytes] = {s: t().SerializeToString() for s, t in RESPONSE_TYPES.items()}

    def start(self) -> None:
        """Bind and serve; raises OSError if the address cannot be bound."""
        host, port = parse_host_port(self._endpoint)
        address = f"{host}:{port}" if ":" not in host else f"[{host}]:{port}"
        if self._tls is None:
            bound = self._server.add_insecure_port(address)
        else:
            bound = self._server.add_secure_port(address, grpc_server_credentials(self._tls))
        if bound == 0:
            raise OSError(f"cannot bind the OTLP/gRPC receiver to {self._endpoint}")
        self._server.start()
        self.port = int(bound)
        log.info("OTLP/gRPC receiver listening on %s:%d (%s)", host, bound, describe(self._tls))

    def shutdown(self, timeout_s: float = 5.0) -> None:
        """Refuse new calls, let running ones finish within `timeout_s`."""
        self._server.stop(timeout_s).wait(timeout_s + 1)

    def _handler(self, signal: Signal) -> Any:
        def export(payload: bytes, context: grpc.ServicerContext) -> bytes:
            items = 0
            rejection = None
            try:
                request = decode_protobuf(signal, payload)
                rejection = screen(request)
                if rejection is not None:  # forward what is kept, not what was sent
                    payload = request.SerializeToString()
                items = count_items(signal, request)
                if items:
                    self._consumer.consume(signal, request, payload, items)
            except RequestError as exc:
                self._metrics.refused(signal, outcome_name(exc), items)
                context.abort_with_status(rpc_status.to_status(_status_for(exc)))
            self._metrics.accepted(signal, items)
            if rejection is None:
                return self._empty_responses[signal]
            self._metrics.rejected(signal, rejection.count)
            answer: bytes = partial_success(signal, rejection).SerializeToString()
            return answer

        return export


def _status_for(error: RequestError) -> status_pb2.Status:
    status = status_pb2.Status(code=error.grpc_code.value[0], message=str(error))
    if isinstance(error, Overloaded) and error.retry_after is not None:
        delay = duration_pb2.Duration()
        delay.FromNanoseconds(int(error.retry_after * 1e9))
        detail = any_pb2.Any()
        detail.Pack(error_details_pb2.RetryInfo(retry_delay=delay))
        status.details.append(detail)
    return status

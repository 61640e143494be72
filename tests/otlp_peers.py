"""Real OTLP peers for tests: downstream sinks (gRPC and HTTP) and a raw OTLP/HTTP client.

The tracejudge process itself is tracejudge.testing.SidecarProcess (shared with bench/).

The sink records the exact request bytes it receives, so tests can assert byte-for-byte forwarding,
and can be told to fail (outage) or be stopped and restarted on the same port.
"""

from __future__ import annotations

import gzip
import json
import ssl
import threading
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import grpc
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from tracejudge.model import Signal
from tracejudge.otlp import GRPC_EXPORT_METHODS, GRPC_SERVICES
from tracejudge.testing import free_port

TRACE_METHOD = GRPC_EXPORT_METHODS[Signal.TRACES]
SERVICES = {signal.value: service for signal, service in GRPC_SERVICES.items()}
REQUEST_TYPES: dict[str, Any] = {
    "traces": ExportTraceServiceRequest,
    "metrics": ExportMetricsServiceRequest,
    "logs": ExportLogsServiceRequest,
}


@dataclass
class Received:
    lock: threading.Lock = field(default_factory=threading.Lock)
    payloads: dict[str, list[bytes]] = field(default_factory=lambda: {k: [] for k in SERVICES})

    def add(self, signal_name: str, payload: bytes) -> None:
        with self.lock:
            self.payloads[signal_name].append(payload)

    def requests(self, signal_name: str = "traces") -> list[Any]:
        with self.lock:
            return [REQUEST_TYPES[signal_name].FromString(p) for p in self.payloads[signal_name]]

    def spans(self) -> list[Any]:
        return [
            s for r in self.requests("traces") for rs in r.resource_spans for ss in rs.scope_spans for s in ss.spans
        ]

    def span_ids(self) -> set[bytes]:
        return {s.span_id for s in self.spans()}


class GrpcSink:
    """A downstream OTLP/gRPC server; `failing` makes it answer UNAVAILABLE. With `tls` (certificate, key)
    it serves grpcs:// only."""

    def __init__(self, port: int | None = None, tls: tuple[Path, Path] | None = None) -> None:
        self.port = port or free_port()
        self.tls = tls
        self.received = Received()
        self.failing = False
        self._server: grpc.Server | None = None

    def start(self) -> GrpcSink:
        server = grpc.server(ThreadPoolExecutor(8), options=[("grpc.max_receive_message_length", 64 << 20)])
        for name, service in SERVICES.items():
            handler = grpc.unary_unary_rpc_method_handler(self._export(name))
            server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, {"Export": handler}),))
        if self.tls is None:
            server.add_insecure_port(f"127.0.0.1:{self.port}")
        else:
            cert, key = self.tls
            server.add_secure_port(
                f"127.0.0.1:{self.port}", grpc.ssl_server_credentials([(key.read_bytes(), cert.read_bytes())])
            )
        server.start()
        self._server = server
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop(0).wait()
            self._server = None

    @property
    def url(self) -> str:
        return f"{'grpc' if self.tls is None else 'grpcs'}://127.0.0.1:{self.port}"

    def _export(self, name: str) -> Any:
        def export(payload: bytes, context: grpc.ServicerContext) -> bytes:
            if self.failing:
                context.abort(grpc.StatusCode.UNAVAILABLE, "sink is down")
            self.received.add(name, payload)
            return b""

        return export


class HttpSink:
    """A downstream OTLP/HTTP server recording decoded (gunzipped) request bodies; HTTPS with `tls`
    (certificate, key)."""

    def __init__(self, tls: tuple[Path, Path] | None = None) -> None:
        self.tls = tls
        self.port = free_port()
        self.received = Received()
        self.encodings: list[str] = []
        self.authorizations: list[str | None] = []  # each request's authorization header, as it arrived
        self.status = 200
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                encoding = self.headers.get("Content-Encoding", "")
                sink.encodings.append(encoding)
                sink.authorizations.append(self.headers.get("authorization"))
                if encoding == "gzip":
                    body = gzip.decompress(body)
                if sink.status == 200:
                    sink.received.add(self.path.rsplit("/", 1)[-1], body)
                self.send_response(sink.status)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        if tls is not None:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(*tls)
            self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"{'http' if self.tls is None else 'https'}://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def post(
    url: str,
    body: bytes,
    content_type: str = "application/x-protobuf",
    encoding: str | None = None,
    method: str = "POST",
) -> tuple[int, bytes]:
    headers = {"Content-Type": content_type, **({"Content-Encoding": encoding} if encoding else {})}
    request = urllib.request.Request(url, data=body if method == "POST" else None, headers=headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def post_json(url: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """A control-plane call over HTTP/JSON: the status and the decoded answer."""
    status, raw = post(url, json.dumps(body).encode(), "application/json")
    return status, json.loads(raw)


def get_json(url: str) -> tuple[int, dict[str, Any]]:
    status, raw = post(url, b"", "application/json", method="GET")
    return status, json.loads(raw)

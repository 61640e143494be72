"""OTLP/HTTP receiver: POST /v1/traces, /v1/metrics, /v1/logs in protobuf or JSON, optionally gzip.

Bodies are read raw (aiohttp's own decompression is off) so that the size limit is enforced on the
decompressed size while inflating, and errors carry a `google.rpc.Status` in the request's format.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Awaitable, Callable, Sequence

from aiohttp import web
from google.protobuf import json_format
from google.rpc import status_pb2
from opentelemetry import metrics

from tracejudge.aio import AiohttpServerThread
from tracejudge.config import parse_host_port
from tracejudge.http_body import BodyError, BodyTooLarge, InvalidGzip, UnsupportedEncoding, read_body
from tracejudge.model import Signal
from tracejudge.receiver.config import ReceiverConfig
from tracejudge.receiver.export import (
    RESPONSE_TYPES,
    ExportConsumer,
    InvalidRequest,
    PayloadTooLarge,
    ReceiverMetrics,
    RequestError,
    UnsupportedMediaType,
    count_items,
    decode_json,
    decode_protobuf,
    outcome_name,
    partial_success,
)
from tracejudge.receiver.screen import screen
from tracejudge.tls import describe, server_ssl_context

log = logging.getLogger(__name__)

PROTOBUF = "application/x-protobuf"
JSON = "application/json"
# How the OTLP spec answers a body that cannot be read: 413, 415, 400.
_BODY_ERRORS: dict[type[BodyError], type[RequestError]] = {
    BodyTooLarge: PayloadTooLarge,
    UnsupportedEncoding: UnsupportedMediaType,
    InvalidGzip: InvalidRequest,
}


class HttpReceiver:
    def __init__(
        self,
        config: ReceiverConfig,
        consumer: ExportConsumer,
        meter: metrics.Meter,
        routes: Sequence[web.RouteDef] = (),
    ) -> None:
        """`routes`: further endpoints on the same port (tracejudge's control plane)."""
        assert config.http_endpoint is not None
        self._endpoint = config.http_endpoint
        self._limit = config.max_request_body_size
        self._consumer = consumer
        self.port: int | None = None  # bound by start()
        self._metrics = ReceiverMetrics(meter, "http")
        app = web.Application()
        for signal in Signal:
            app.router.add_route("*", f"/v1/{signal.value}", self._route(signal))
        app.add_routes(routes)
        host, port = parse_host_port(self._endpoint)
        self._tls = config.tls
        ssl_context = server_ssl_context(config.tls) if config.tls is not None else None
        self._server = AiohttpServerThread(app, host, port, "otlp-http", ssl_context=ssl_context, auto_decompress=False)
        self._empty_protobuf: dict[Signal, bytes] = {s: t().SerializeToString() for s, t in RESPONSE_TYPES.items()}

    def start(self) -> None:
        """Bind and serve; raises OSError if the address cannot be bound."""
        self.port = self._server.start()
        scheme = "http" if self._tls is None else "https"
        host = self._endpoint.rsplit(":", 1)[0]
        log.info("OTLP/HTTP receiver listening on %s://%s:%d (%s)", scheme, host, self.port, describe(self._tls))

    def shutdown(self, timeout_s: float = 5.0) -> None:
        """Refuse new requests, let running ones finish within `timeout_s`."""
        self._server.shutdown(timeout_s)

    def _route(self, signal: Signal) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def handle(request: web.Request) -> web.StreamResponse:
            return await self._handle(signal, request)

        return handle

    async def _handle(self, signal: Signal, request: web.Request) -> web.StreamResponse:
        media = request.content_type
        if request.method != "POST":
            self._metrics.refused(signal, "method_not_allowed")
            return _status_response(405, 12, f"{request.method} is not allowed; use POST", media, {"Allow": "POST"})
        items = 0
        rejection = None
        try:
            body = await self._read_body(request, media)
            message = decode_json(signal, body) if media == JSON else decode_protobuf(signal, body)
            rejection = screen(message)
            items = count_items(signal, message)
            if items:
                payload = body if media == PROTOBUF and rejection is None else message.SerializeToString()
                self._consumer.consume(signal, message, payload, items)
        except RequestError as exc:
            self._metrics.refused(signal, outcome_name(exc), items)
            headers = {"Retry-After": str(math.ceil(exc.retry_after))} if exc.retry_after else None
            return _status_response(exc.http_status, exc.grpc_code.value[0], str(exc), media, headers)
        self._metrics.accepted(signal, items)
        if rejection is not None:
            self._metrics.rejected(signal, rejection.count)
            response = partial_success(signal, rejection)
            if media == JSON:
                return web.Response(body=json_format.MessageToJson(response, indent=None).encode(), content_type=JSON)
            return web.Response(body=response.SerializeToString(), content_type=PROTOBUF)
        if media == JSON:
            return web.Response(body=b"{}", content_type=JSON)
        return web.Response(body=self._empty_protobuf[signal], content_type=PROTOBUF)

    async def _read_body(self, request: web.Request, media: str) -> bytes:
        if media not in (PROTOBUF, JSON):
            raise UnsupportedMediaType(f"unsupported Content-Type {media!r}; use {PROTOBUF} or {JSON}")
        try:
            return await read_body(request, self._limit)
        except BodyError as exc:
            raise _BODY_ERRORS.get(type(exc), InvalidRequest)(str(exc)) from exc


def _status_response(
    http_status: int, code: int, message: str, media: str, headers: dict[str, str] | None = None
) -> web.Response:
    if media == JSON:
        body = json.dumps({"code": code, "message": message}).encode()
        return web.Response(status=http_status, body=body, content_type=JSON, headers=headers)
    body = status_pb2.Status(code=code, message=message).SerializeToString()
    return web.Response(status=http_status, body=body, content_type=PROTOBUF, headers=headers)

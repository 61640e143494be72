"""Client calls over gRPC: the method's path and message types from the schema, a channel per call."""

from __future__ import annotations

import grpc
from google.protobuf.message import Message

from tracejudge.schema import Method

from .errors import ControlPlaneError, error_for
from .transport import ClientTls, not_served, unreachable


class GrpcTransport:
    def __init__(self, target: str, tls: ClientTls | None, token: str | None, timeout: float) -> None:
        """`tls`: None for plaintext (grpc://, host:port); a ClientTls for grpcs://."""
        self.endpoint = target
        self._tls = tls
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self._timeout = timeout

    def call(self, method: Method, request: Message) -> Message:
        # A channel per call: the client is used for a handful of calls, and leaves no threads behind.
        credentials = grpc.ssl_channel_credentials(*self._tls.read()) if self._tls is not None else None
        channel = (
            grpc.secure_channel(self.endpoint, credentials) if credentials else grpc.insecure_channel(self.endpoint)
        )
        with channel:
            stub = channel.unary_unary(
                method.grpc_path, request_serializer=_serialize, response_deserializer=method.response.FromString
            )
            try:
                response: Message = stub(request, metadata=self._metadata, timeout=self._timeout)
            except grpc.RpcError as exc:
                raise self._translate(method, exc) from None
        return response

    def _translate(self, method: Method, exc: grpc.RpcError) -> ControlPlaneError:
        code: str = exc.code().name
        details = str(exc.details() or code)
        if code in ("UNAVAILABLE", "DEADLINE_EXCEEDED"):
            return unreachable(self.endpoint, details, "gRPC address")
        if code == "UNIMPLEMENTED":
            return not_served(self.endpoint, method)
        return error_for(code, details)


def _serialize(message: Message) -> bytes:
    return bytes(message.SerializeToString())

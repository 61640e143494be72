"""The control plane over gRPC: one generic handler per service, built from the schema's descriptors.

Served on the OTLP/gRPC server (GrpcReceiver's `handlers`). Each RPC's path, request and response types
come from its schema.Method; the call itself, and every refusal, from the ControlPlane.
"""

from __future__ import annotations

from collections.abc import Callable

import grpc
from google.protobuf.message import Message

from .plane import Binding, ControlPlane
from .service import ControlError


def grpc_handlers(plane: ControlPlane) -> list[grpc.GenericRpcHandler]:
    """Every service of the plane, for `server.add_generic_rpc_handlers(...)` before the server starts."""
    return [
        grpc.method_handlers_generic_handler(
            name,
            {
                binding.method.name: grpc.unary_unary_rpc_method_handler(
                    _handler(plane, binding),
                    request_deserializer=binding.method.request.FromString,
                    response_serializer=_serialize,
                )
                for binding in bindings
            },
        )
        for name, bindings in plane.services.items()
    ]


def _serialize(message: Message) -> bytes:
    return bytes(message.SerializeToString())


def _handler(plane: ControlPlane, binding: Binding) -> Callable[[Message, grpc.ServicerContext], Message]:
    def handle(request: Message, context: grpc.ServicerContext) -> Message:
        metadata = {key: value for key, value in context.invocation_metadata() if isinstance(value, str)}
        answer = plane.call(binding, request, metadata.get("authorization"), peer_names(context))
        if isinstance(answer, ControlError):
            context.abort(grpc.StatusCode[answer.code], answer.message)
            raise AssertionError("unreachable: abort raises")
        return answer

    return handle


def peer_names(context: grpc.ServicerContext) -> frozenset[str]:
    """The common name and subject alternative names of the caller's client certificate. gRPC puts them in
    the auth context only when the listener verified that certificate (receiver.tls.client_ca_file)."""
    auth = context.auth_context()
    values = [*auth.get("x509_common_name", ()), *auth.get("x509_subject_alternative_name", ())]
    return frozenset(value.decode(errors="replace") for value in values)

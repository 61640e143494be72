"""How a client call reaches the sidecar: a Transport sends one RPC, named by its schema.Method.

Both transports (grpc_transport, http_transport) are generic: the gRPC path, the message types and the
HTTP mapping all come from the schema, so they hold no code for any particular RPC.
"""

from __future__ import annotations

from typing import Protocol

from google.protobuf.message import Message

from tracejudge.schema import Method

from .errors import ControlPlaneError, UnavailableError

ENDPOINT_ENV = "TRACEJUDGE_ENDPOINT"
TOKEN_ENV = "TRACEJUDGE_TOKEN"
DEFAULT_ENDPOINT = "127.0.0.1:4317"
DEFAULT_TIMEOUT = 10.0


class Transport(Protocol):
    endpoint: str

    def call(self, method: Method, request: Message) -> Message:
        """The response; ControlPlaneError (a subclass by status) when refused or unreachable."""
        ...


def unreachable(endpoint: str, why: object, what: str = "address") -> UnavailableError:
    return UnavailableError(
        f"cannot reach tracejudge at {endpoint} ({why}); is `tracejudge serve` running? "
        f"Set {ENDPOINT_ENV} to its {what}",
        "UNAVAILABLE",
    )


def not_served(endpoint: str, method: Method) -> ControlPlaneError:
    return ControlPlaneError(
        f"{endpoint} does not serve tracejudge's control plane ({method.service}/{method.name})", "UNIMPLEMENTED"
    )

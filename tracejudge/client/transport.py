"""How a client call reaches the sidecar: a Transport sends one RPC, named by its schema.Method.

Both transports (grpc_transport, http_transport) are generic: the gRPC path, the message types and the
HTTP mapping all come from the schema, so they hold no code for any particular RPC.
"""

from __future__ import annotations

import os
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from google.protobuf.message import Message

from tracejudge.schema import Method

from .errors import ControlPlaneError, UnavailableError

ENDPOINT_ENV = "TRACEJUDGE_ENDPOINT"
TOKEN_ENV = "TRACEJUDGE_TOKEN"
CA_FILE_ENV = "TRACEJUDGE_CA_FILE"
CERT_FILE_ENV = "TRACEJUDGE_CERT_FILE"
KEY_FILE_ENV = "TRACEJUDGE_KEY_FILE"
DEFAULT_ENDPOINT = "127.0.0.1:4317"
DEFAULT_TIMEOUT = 10.0


@dataclass(frozen=True)
class ClientTls:
    """What a grpcs:// or https:// client trusts and presents: `ca_file` verifies the sidecar (default: the
    system's roots, gRPC's bundled ones), `cert_file` + `key_file` are its client certificate for mutual TLS."""

    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None

    @classmethod
    def resolve(cls, ca_file: str | None, cert_file: str | None, key_file: str | None) -> ClientTls:
        """Arguments first, then TRACEJUDGE_CA_FILE / _CERT_FILE / _KEY_FILE; a half-given pair is refused."""
        paths = [
            value or os.environ.get(env) or None
            for value, env in ((ca_file, CA_FILE_ENV), (cert_file, CERT_FILE_ENV), (key_file, KEY_FILE_ENV))
        ]
        tls = cls(*(Path(p) if p else None for p in paths))
        if (tls.cert_file is None) != (tls.key_file is None):
            raise ValueError(f"a client certificate needs both {CERT_FILE_ENV} and {KEY_FILE_ENV} (or both flags)")
        return tls

    def ssl_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=self.ca_file)
        if self.cert_file is not None and self.key_file is not None:
            context.load_cert_chain(self.cert_file, self.key_file)
        return context

    def read(self) -> tuple[bytes | None, bytes | None, bytes | None]:
        """(CA, key, certificate chain) bytes, as grpc.ssl_channel_credentials takes them."""
        return tuple(path.read_bytes() if path else None for path in (self.ca_file, self.key_file, self.cert_file))  # type: ignore[return-value]


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

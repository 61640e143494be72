"""TLS from the `tls:` config blocks: server contexts for the receivers, client contexts for the forwarder.

One place turns tracejudge.config's TlsServerConfig / TlsClientConfig into what each library takes (an
ssl.SSLContext for aiohttp and urllib3, credentials for grpcio), so both listeners and every downstream
connection read the same keys the same way.
"""

from __future__ import annotations

import ssl

import grpc

from tracejudge.config import TlsClientConfig, TlsServerConfig, TlsVersion

_VERSIONS: dict[TlsVersion, ssl.TLSVersion] = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}


def describe(config: TlsServerConfig | None) -> str:
    """How a listener is secured, for its start-up line."""
    if config is None:
        return "plaintext"
    return "TLS, client certificates required" if config.client_ca_file is not None else "TLS"


def server_ssl_context(config: TlsServerConfig) -> ssl.SSLContext:
    """The HTTP listener's context: its certificate, `min_version`, and with `client_ca_file` a required,
    verified client certificate (the handshake fails without one)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = _VERSIONS[config.min_version]
    context.load_cert_chain(config.cert_file, config.key_file)
    if config.client_ca_file is not None:
        context.load_verify_locations(cafile=config.client_ca_file)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def grpc_server_credentials(config: TlsServerConfig) -> grpc.ServerCredentials:
    """The gRPC listener's credentials; with `client_ca_file`, a client certificate is required and verified.
    grpcio has no minimum-version setting: gRPC's own floor is TLS 1.2 (ReceiverConfig refuses 1.3 for it)."""
    pair = (config.key_file.read_bytes(), config.cert_file.read_bytes())
    client_ca = config.client_ca_file.read_bytes() if config.client_ca_file is not None else None
    return grpc.ssl_server_credentials([pair], root_certificates=client_ca, require_client_auth=client_ca is not None)


def client_ssl_context(config: TlsClientConfig | None) -> ssl.SSLContext:
    """An https:// connection's context: verify against `ca_file` (else the system roots), present the client
    certificate if one is configured; `insecure_skip_verify` encrypts without checking who answers."""
    config = config or TlsClientConfig()
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=config.ca_file)
    if config.cert_file is not None and config.key_file is not None:
        context.load_cert_chain(config.cert_file, config.key_file)
    if config.insecure_skip_verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def grpc_channel_credentials(config: TlsClientConfig | None) -> grpc.ChannelCredentials:
    """A grpcs:// channel's credentials: `ca_file` (else gRPC's bundled roots) and the client certificate."""
    config = config or TlsClientConfig()
    if config.insecure_skip_verify:
        raise ValueError("insecure_skip_verify is not available for gRPC (grpcio cannot skip verification)")
    return grpc.ssl_channel_credentials(
        root_certificates=config.ca_file.read_bytes() if config.ca_file is not None else None,
        private_key=config.key_file.read_bytes() if config.key_file is not None else None,
        certificate_chain=config.cert_file.read_bytes() if config.cert_file is not None else None,
    )

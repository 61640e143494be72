"""The forwarder's and the archive's configuration (the `forward:` and `archive:` keys), beside them."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator

from tracejudge.config import ByteSize, Duration, OtlpUrl, StrictConfig, TlsClientConfig


class RetryConfig(StrictConfig):
    initial_interval: Duration = 0.5
    max_interval: Duration = 30.0


class ForwardEndpointConfig(StrictConfig):
    url: OtlpUrl
    compression: Literal["none", "gzip"] = "none"
    # Secret: masked in check-config and in any repr, so a token in authorization never reaches a log.
    headers: dict[str, SecretStr] = Field(default_factory=dict)
    timeout: Duration = 10.0
    workers: int = Field(default=4, ge=1, le=64)
    retry: RetryConfig = Field(default_factory=RetryConfig)
    tls: TlsClientConfig | None = None  # for grpcs:// and https://: CA, client certificate

    @model_validator(mode="after")
    def _tls_needs_a_tls_scheme(self) -> ForwardEndpointConfig:
        """A `tls:` block on a plaintext URL would silently send in the clear: the scheme says TLS or not."""
        if self.tls is not None and not self.secure:
            raise ValueError(f"tls is set but {self.url} is plaintext: use grpcs:// or https:// for TLS")
        if self.tls is not None and self.tls.insecure_skip_verify and self.protocol == "grpc":
            raise ValueError("tls.insecure_skip_verify is only available for https:// (grpcio cannot skip it)")
        return self

    @property
    def protocol(self) -> Literal["grpc", "http"]:
        return "grpc" if self.url.startswith(("grpc://", "grpcs://")) else "http"

    @property
    def secure(self) -> bool:
        """TLS to this endpoint: grpcs:// or https://."""
        return self.url.startswith(("grpcs://", "https://"))


class ArchiveConfig(StrictConfig):
    enabled: bool = True
    directory: Path | None = None
    roll_size: ByteSize = 64 * 2**20
    roll_interval: Duration = 60.0
    max_queue: ByteSize = 256 * 2**20

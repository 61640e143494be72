"""The receiver's and the assembler's configuration (the `receiver:` and `assembler:` keys), beside them."""

from __future__ import annotations

from pydantic import Field, field_validator, model_validator

from tracejudge.config import ByteSize, Duration, StrictConfig, TlsServerConfig, parse_host_port


class ReceiverConfig(StrictConfig):
    grpc_endpoint: str | None = "127.0.0.1:4317"
    http_endpoint: str | None = "127.0.0.1:4318"
    max_request_body_size: ByteSize = 20 * 2**20
    grpc_max_workers: int = Field(default=8, ge=1)
    tls: TlsServerConfig | None = None  # both listeners; null: plaintext

    @model_validator(mode="after")
    def _grpc_tls_version(self) -> ReceiverConfig:
        if self.tls is not None and self.tls.min_version != "1.2" and self.grpc_endpoint is not None:
            raise ValueError(
                "tls.min_version 1.3 cannot be enforced on the OTLP/gRPC listener (grpcio has no such setting; "
                "gRPC itself never goes below 1.2): keep 1.2, or set grpc_endpoint to null"
            )
        return self

    @field_validator("grpc_endpoint", "http_endpoint")
    @classmethod
    def _host_port(cls, value: str | None) -> str | None:
        if value is not None:
            parse_host_port(value)
        return value


class AssemblerConfig(StrictConfig):
    trace_idle: Duration = 2.0
    trace_timeout: Duration = 60.0
    max_buffered_bytes: ByteSize = 512 * 2**20
    decided_cache_size: int = Field(default=200_000, ge=1)
    check_interval: Duration = 0.1

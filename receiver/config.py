"""The receiver's and the assembler's configuration (the `receiver:` and `assembler:` keys), beside them."""

from __future__ import annotations

from pydantic import Field, field_validator

from tracejudge.config import ByteSize, Duration, StrictConfig, parse_host_port


class ReceiverConfig(StrictConfig):
    grpc_endpoint: str | None = "127.0.0.1:4317"
    http_endpoint: str | None = "127.0.0.1:4318"
    max_request_body_size: ByteSize = 20 * 2**20
    grpc_max_workers: int = Field(default=8, ge=1)

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

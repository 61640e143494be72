"""The forwarder's and the archive's configuration (the `forward:` and `archive:` keys), beside them."""

from __future__ import annotations

from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator

from tracejudge.config import ByteSize, Duration, StrictConfig


class RetryConfig(StrictConfig):
    initial_interval: Duration = 0.5
    max_interval: Duration = 30.0


class ForwardEndpointConfig(StrictConfig):
    url: str
    compression: Literal["none", "gzip"] = "none"
    headers: dict[str, str] = Field(default_factory=dict)
    timeout: Duration = 10.0
    workers: int = Field(default=4, ge=1, le=64)
    retry: RetryConfig = Field(default_factory=RetryConfig)

    @field_validator("url")
    @classmethod
    def _scheme(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("grpc", "http", "https") or not parts.hostname:
            raise ValueError(f"expected grpc://host:port, http://host:port or https://host:port, got {value!r}")
        return value.rstrip("/")

    @property
    def protocol(self) -> Literal["grpc", "http"]:
        return "grpc" if self.url.startswith("grpc://") else "http"


class ArchiveConfig(StrictConfig):
    enabled: bool = True
    directory: Path | None = None
    roll_size: ByteSize = 64 * 2**20
    roll_interval: Duration = 60.0
    max_queue: ByteSize = 256 * 2**20

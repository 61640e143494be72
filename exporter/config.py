"""The forwarder's and the archive's configuration (the `forward:` and `archive:` keys), beside them."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import AfterValidator, Field, SecretStr, model_validator

from tracejudge.config import ByteSize, ConfigError, Duration, OtlpUrl, StrictConfig, TlsClientConfig
from tracejudge.exporter.archive_store import S3Options, is_uri, s3_options


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


def _archive_location(value: str | Path) -> str | Path:
    """A URI stays text (Path would fold s3://bucket into s3:/bucket); anything else is a path, as before."""
    if not is_uri(value):
        return Path(value)
    text = str(value)
    parts = urlsplit(text)
    if not parts.scheme.isidentifier() or not parts.netloc:
        raise ValueError(f"{text.split('?', 1)[0]!r}: give a path, or a URI such as s3://bucket/prefix")
    if parts.scheme != "s3":
        raise ValueError(f"{text.split('?', 1)[0]!r}: object storage is s3:// (S3, or an S3-compatible store "
                         "through archive.s3.endpoint_override)")  # fmt: skip
    try:
        s3_options(None, text)  # the query string's options, checked now rather than in the writer process
    except ConfigError as exc:
        raise ValueError(str(exc)) from None
    return text


ArchiveLocation = Annotated[str | Path, AfterValidator(_archive_location)]


class ArchiveConfig(StrictConfig):
    enabled: bool = True
    directory: ArchiveLocation | None = None  # a path, or s3://bucket/prefix (exporter/archive_store.py)
    s3: S3Options | None = None  # object storage options for an s3:// directory (endpoint, region, timeouts)
    roll_size: ByteSize = 64 * 2**20
    roll_interval: Duration = 60.0
    max_queue: ByteSize = 256 * 2**20

    @model_validator(mode="after")
    def _s3_needs_s3(self) -> ArchiveConfig:
        if self.s3 is not None and not str(self.directory or "").startswith("s3://"):
            raise ValueError("archive.s3 is set but archive.directory is no s3:// URI")
        return self

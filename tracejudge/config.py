"""Configuration: one YAML file, validated at start-up, one typed struct per component.

Every key is documented in README.md ("Configuration reference"); keep the two in step.
Unknown keys are errors, so a typo stops start-up with the key's name instead of being ignored.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator

from tracejudge.scoring.spec import ScorerSpec

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(B|KB|MB|GB|KiB|MiB|GiB)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "kib": 2**10, "mib": 2**20, "gib": 2**30}


def parse_duration(value: Any) -> float:
    """Seconds from a number or a string such as '500ms', '2s', '5m'."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    match = _DURATION.match(str(value))
    if not match:
        raise ValueError(f"not a duration: {value!r} (use e.g. 500ms, 2s, 5m)")
    return float(match.group(1)) * _DURATION_UNITS[match.group(2)]


def parse_size(value: Any) -> int:
    """Bytes from a number or a string such as '20MiB', '512 MiB', '1GB'."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    match = _SIZE.match(str(value))
    if not match:
        raise ValueError(f"not a byte size: {value!r} (use e.g. 20MiB, 512MiB, 1GiB)")
    return int(float(match.group(1)) * _SIZE_UNITS[(match.group(2) or "b").lower()])


def parse_host_port(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"not HOST:PORT: {value!r}")
    return host.strip("[]"), int(port)


Duration = Annotated[float, BeforeValidator(parse_duration), Field(gt=0)]
ByteSize = Annotated[int, BeforeValidator(parse_size), Field(gt=0)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ReceiverConfig(_Strict):
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


class RetryConfig(_Strict):
    initial_interval: Duration = 0.5
    max_interval: Duration = 30.0


class ForwardEndpointConfig(_Strict):
    url: str
    compression: Literal["none", "gzip"] = "none"
    headers: dict[str, str] = Field(default_factory=dict)
    timeout: Duration = 10.0
    workers: int = Field(default=4, ge=1, le=64)
    max_memory_queue: ByteSize = 64 * 2**20
    max_disk_queue: ByteSize = 1 * 2**30
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


class AssemblerConfig(_Strict):
    trace_idle: Duration = 2.0
    trace_timeout: Duration = 60.0
    max_buffered_bytes: ByteSize = 512 * 2**20
    decided_cache_size: int = Field(default=200_000, ge=1)
    check_interval: Duration = 0.1


class ArchiveConfig(_Strict):
    enabled: bool = True
    directory: Path | None = None
    roll_size: ByteSize = 64 * 2**20
    roll_interval: Duration = 60.0
    max_queue: ByteSize = 256 * 2**20


class TelemetryConfig(_Strict):
    prometheus_endpoint: str | None = "127.0.0.1:9464"
    otlp_endpoint: str | None = None
    otlp_interval: Duration = 30.0
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"


class ScoringConfig(_Strict):
    otlp_endpoint: str | None = None  # where assessments are emitted; default: the first forward endpoint
    max_active_scorers: int = Field(default=20, ge=1)
    max_backlog: int = Field(default=10_000, ge=1)  # sampled (trace, scorer) pairs waiting; beyond: skipped
    max_concurrency: int = Field(default=256, ge=1)  # traces being scored at once (judges also have their own cap)
    code_timeout: Duration = 10.0
    code_workers: int = Field(default=4, ge=1)
    drain_timeout: Duration = 10.0  # at shutdown, how long running scorers may finish
    emit_interval: Duration = 0.2  # verdicts are exported in batches at most this far apart (freshness)
    worker_nice: int = Field(default=10, ge=0, le=19)  # the scoring process's CPU priority below ingest's

    @field_validator("otlp_endpoint")
    @classmethod
    def _otlp_url(cls, value: str | None) -> str | None:
        if value is not None and urlsplit(value).scheme not in ("grpc", "http", "https"):
            raise ValueError(f"expected grpc://host:port or http://host:port, got {value!r}")
        return value


class ControlConfig(_Strict):
    token: str | None = None  # bearer token for the scorer API; env TRACEJUDGE_TOKEN. Required beyond loopback.


class Config(_Strict):
    data_dir: Path = Path("./data")
    receiver: ReceiverConfig = Field(default_factory=ReceiverConfig)
    forward: list[ForwardEndpointConfig] = Field(default_factory=list)
    assembler: AssemblerConfig = Field(default_factory=AssemblerConfig)
    archive: ArchiveConfig = Field(default_factory=ArchiveConfig)
    telemetry: TelemetryConfig = Field(default_factory=TelemetryConfig)
    judges: dict[str, JudgeEndpointConfig] = Field(default_factory=dict)  # "default" serves scorers without model
    scorers: list[ScorerSpec] = Field(default_factory=list)
    scoring: ScoringConfig = Field(default_factory=ScoringConfig)
    control: ControlConfig = Field(default_factory=ControlConfig)

    @field_validator("scorers")
    @classmethod
    def _unique_names(cls, value: list[ScorerSpec]) -> list[ScorerSpec]:
        names = [spec.name for spec in value]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"scorer names must be unique; repeated: {duplicates}")
        return value

    @property
    def assessments_endpoint(self) -> str | None:
        return self.scoring.otlp_endpoint or (self.forward[0].url if self.forward else None)

    @property
    def archive_dir(self) -> Path:
        return self.archive.directory or self.data_dir / "archive"

    @property
    def queue_dir(self) -> Path:
        return self.data_dir / "queue"


class ConfigError(Exception):
    """A config file or override that cannot be used; the message names the key."""


def _format_errors(error: ValidationError) -> str:
    lines = []
    for item in error.errors():
        key = ".".join(str(part) for part in item["loc"]) or "(top level)"
        lines.append(f"  {key}: {item['msg']}")
    return "invalid configuration:\n" + "\n".join(lines)


def load_config(path: Path | None = None, overrides: dict[str, Any] | None = None) -> Config:
    """Read the YAML file (if any), apply dotted-key overrides, validate."""
    raw: dict[str, Any] = {}
    if path is not None:
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"cannot read config {path}: {exc}") from exc
        if not isinstance(loaded, dict):
            raise ConfigError(f"config {path}: top level must be a mapping of keys")
        raw = loaded
    for dotted, value in (overrides or {}).items():
        _set_dotted(raw, dotted, value)
    try:
        return Config.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc)) from exc


def _set_dotted(raw: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = raw
    for key in parents:
        child = node.get(key)
        if not isinstance(child, dict):
            child = node[key] = {}
        node = child
    node[leaf] = value


_MODEL_URI_PREFIX = "openai:/"


def parse_model_uri(value: str) -> str:
    """The model name from 'openai:/<model>' or a bare '<model>'; any other 'scheme:/' is refused.

    Bare names are accepted because OpenAI-compatible servers use names such as 'llama3:8b' or
    'meta-llama/Llama-3.1-8B-Instruct'; a value is a URI only when it contains ':/'.
    """
    name = value[len(_MODEL_URI_PREFIX) :] if value.startswith(_MODEL_URI_PREFIX) else value
    if not name or ":/" in name or name.startswith("/") or any(c.isspace() for c in name):
        raise ValueError(
            f"expected a model URI 'openai:/<model>' (any OpenAI-compatible endpoint, chosen with base_url) "
            f"or a bare model name, got {value!r}"
        )
    return name


class JudgeEndpointConfig(_Strict):
    """One OpenAI-compatible chat-completions endpoint used by LLM judges.

    With nothing configured, judges use the openai SDK's own environment (OPENAI_API_KEY,
    OPENAI_BASE_URL) and the model openai:/gpt-4.1-mini.

    model: 'openai:/<model>' or a bare model name (stored as 'openai:/<model>'); default openai:/gpt-4.1-mini.
    base_url: http(s) URL of the API root, e.g. http://127.0.0.1:8000/v1; default None (OPENAI_BASE_URL,
        else https://api.openai.com/v1).
    api_key_env: name of the environment variable holding the API key; default OPENAI_API_KEY. When it is
        unset a placeholder key is sent, which keyless local servers (vLLM, Ollama) accept.
    max_concurrency: requests in flight to this endpoint at once; default 16.
    requests_per_minute / tokens_per_minute: client-side rate limits (calls wait, they do not fail);
        default None (unlimited). Tokens are estimated as characters / 4 and corrected from `usage`.
    timeout: wall-clock limit of one attempt, connection to last byte; default 30s.
    max_retries: retries after the first attempt on 429, 408/409, 5xx, timeouts and connection errors
        (exponential backoff with full jitter, Retry-After honoured); never on other 4xx; default 4.
    structured_output: auto (json_schema, falling back to json_object then to a schema in the prompt when the
        endpoint rejects it), json_schema, json_object or none (schema in the prompt); default auto.
    max_content_chars: traced content longer than this is truncated, with a marker, before it reaches the
        judge; default 20000.
    """

    model: str = "openai:/gpt-4.1-mini"
    base_url: str | None = None
    api_key_env: str = Field(default="OPENAI_API_KEY", min_length=1)
    max_concurrency: int = Field(default=16, ge=1)
    requests_per_minute: int | None = Field(default=None, ge=1)
    tokens_per_minute: int | None = Field(default=None, ge=1)
    timeout: Duration = 30.0
    max_retries: int = Field(default=4, ge=0)
    structured_output: Literal["auto", "json_schema", "json_object", "none"] = "auto"
    max_content_chars: int = Field(default=20_000, ge=100)

    @field_validator("model")
    @classmethod
    def _model_uri(cls, value: str) -> str:
        return _MODEL_URI_PREFIX + parse_model_uri(value)

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"expected http://host[:port]/path or https://..., got {value!r}")
        return value.rstrip("/")

    @property
    def model_name(self) -> str:
        return parse_model_uri(self.model)


Config.model_rebuild()

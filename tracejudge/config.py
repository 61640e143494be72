"""How configuration values are written and read: durations, byte sizes, HOST:PORT, strict models, YAML.

Each component keeps its own config model beside it (receiver/config.py, exporter/config.py,
scoring/config.py, ...), as the OpenTelemetry Collector does; tracejudge/config_file.py composes them
into the whole tracejudge.yaml. This module imports no component, so every component can use it.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

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


def parse_moment(text: datetime | str, now: datetime | None = None) -> datetime:
    """A datetime, an ISO date or time ("2026-12-01", "2026-12-01T08:00", UTC unless it says), or an age before
    `now`: "90s", "30m", "24h", "7d"."""
    now = now or datetime.now(timezone.utc)
    if isinstance(text, datetime):
        return text if text.tzinfo else text.replace(tzinfo=timezone.utc)
    value = text.strip()
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
    if value and value[-1] in units and value[:-1].replace(".", "", 1).isdigit():
        return now - timedelta(seconds=float(value[:-1]) * units[value[-1]])
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(
            f"{text!r}: give an ISO date or time (2026-12-01, 2026-12-01T08:00Z) or an age (24h, 7d)"
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


# MLflow's backfill default: the last 7 days; also what evaluate reads of an archive given no window.
DEFAULT_WINDOW = timedelta(days=7)


def parse_window(since: datetime | str | None, until: datetime | str | None,
                 now: datetime | None = None) -> tuple[datetime, datetime]:  # fmt: skip
    """[since, until): `until` (unset: now) back to `since` (unset: DEFAULT_WINDOW before it); each a moment as
    parse_moment reads it."""
    now = now or datetime.now(timezone.utc)
    end = parse_moment(until, now) if until is not None else now
    return (parse_moment(since, now) if since is not None else end - DEFAULT_WINDOW), end


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


class StrictConfig(BaseModel):
    """Unknown keys are errors, so a typo stops start-up with the key's name instead of being ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class ConfigError(Exception):
    """A config file or override that cannot be used; the message names the key."""


def format_errors(error: ValidationError) -> str:
    lines = []
    for item in error.errors():
        key = ".".join(str(part) for part in item["loc"]) or "(top level)"
        lines.append(f"  {key}: {str(item['msg']).removeprefix('Value error, ')}")
    return "invalid configuration:\n" + "\n".join(lines)


def read_config_file(path: Path | None, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """The YAML file's mapping (empty without a file), with dotted-key overrides applied; not yet validated."""
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
        set_dotted(raw, dotted, value)
    return raw


def set_dotted(raw: dict[str, Any], dotted: str, value: Any) -> None:
    """raw["a"]["b"]["c"] = value for "a.b.c", making the mappings on the way (config overrides, and the
    control plane's HTTP adapter filling a request from path and query variables)."""
    *parents, leaf = dotted.split(".")
    node = raw
    for key in parents:
        child = node.get(key)
        if not isinstance(child, dict):
            child = node[key] = {}
        node = child
    node[leaf] = value


def no_credentials(url: str) -> str:
    """A URL that carries no user:password. A URL is printed in logs and is the `endpoint` label of the
    forwarder's metrics, so credentials belong in `headers` (e.g. authorization: Basic ...), which are not."""
    parts = urlsplit(url)
    if parts.username is not None or parts.password is not None:
        raise ValueError(
            f"{parts.scheme}://<credentials>@{parts.hostname}: credentials in a URL end up in logs and metric "
            "labels; send them in headers (e.g. authorization: Basic ...) instead"
        )
    return url


def _otlp_url(value: str) -> str:
    no_credentials(value)
    parts = urlsplit(value)
    if parts.scheme not in ("grpc", "grpcs", "http", "https") or not parts.hostname:
        raise ValueError(
            f"expected grpc://host:port, grpcs://host:port (TLS), http:// or https://host:port, got {value!r}"
        )
    return value.rstrip("/")


OtlpUrl = Annotated[str, AfterValidator(_otlp_url)]
"""An OTLP destination: grpc:// or grpcs:// (gRPC), http:// or https:// (OTLP/HTTP, /v1/<signal> appended)."""

# ------------------------------------------------------------------------------------------- TLS
# The OpenTelemetry Collector's configtls key names, so a Collector user's `tls:` block reads the same here.

TlsVersion = Literal["1.2", "1.3"]


def _readable(path: Path | None, key: str) -> None:
    """A missing or unreadable file stops start-up naming the key, not the first handshake that needs it."""
    if path is not None and not path.is_file():
        raise ValueError(f"{key}: no such file: {path}")


class TlsServerConfig(StrictConfig):
    """A listener's TLS (Collector configtls server settings): its certificate and key, and with
    `client_ca_file` mutual TLS (a client without a certificate signed by that CA is refused at the handshake)."""

    cert_file: Path
    key_file: Path
    client_ca_file: Path | None = None
    min_version: TlsVersion = "1.2"

    @model_validator(mode="after")
    def _files(self) -> TlsServerConfig:
        for key in ("cert_file", "key_file", "client_ca_file"):
            _readable(getattr(self, key), key)
        return self


class TlsClientConfig(StrictConfig):
    """An outgoing connection's TLS (Collector configtls client settings): `ca_file` to verify the server
    (default: the system's roots), `cert_file` + `key_file` to present a client certificate (mTLS),
    `insecure_skip_verify` to encrypt without verifying (HTTP only: grpcio has no such switch)."""

    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    insecure_skip_verify: bool = False

    @model_validator(mode="after")
    def _files(self) -> TlsClientConfig:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together (a client certificate needs its key)")
        for key in ("ca_file", "cert_file", "key_file"):
            _readable(getattr(self, key), key)
        return self

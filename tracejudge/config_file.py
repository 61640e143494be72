"""tracejudge.yaml: the whole file, composed of each component's own config.

Every key is documented in README.md ("Configuration reference"); keep the two in step. The sidecar
(tracejudge serve) and the in-process span processor read the same file; each uses the keys that
concern it.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import AliasChoices, AliasPath, Field, SecretStr, ValidationError, field_validator, model_validator

from tracejudge.config import ConfigError, StrictConfig, format_errors, read_config_file
from tracejudge.exporter.config import ArchiveConfig, ForwardEndpointConfig
from tracejudge.memory_limiter import MemoryLimiterConfig
from tracejudge.receiver.config import AssemblerConfig, ReceiverConfig
from tracejudge.scoring.budget import LEDGER_NAME
from tracejudge.scoring.config import (
    BackfillConfig,
    JudgeBudgetConfig,
    JudgeEndpointConfig,
    ScoringConfig,
    SessionsConfig,
    judge_config_for,
)
from tracejudge.scoring.spec import ScorerSpec
from tracejudge.status_page_config import StatusPageConfig
from tracejudge.telemetry import TelemetryConfig
from tracejudge.wal import WalConfig


class ControlConfig(StrictConfig):
    token: SecretStr | None = None  # bearer token for the scorer API; env TRACEJUDGE_TOKEN. Required beyond loopback.
    # mTLS for the scorer API: calls need a verified client certificate with one of these common / DNS names.
    client_cert_names: list[str] = Field(default_factory=list)


class Config(StrictConfig):
    data_dir: Path = Path("./data")
    receiver: ReceiverConfig = Field(default_factory=ReceiverConfig)
    wal: WalConfig = Field(default_factory=WalConfig)
    forward: list[ForwardEndpointConfig] = Field(default_factory=list)
    assembler: AssemblerConfig = Field(default_factory=AssemblerConfig)
    archive: ArchiveConfig = Field(default_factory=ArchiveConfig)
    telemetry: TelemetryConfig = Field(default_factory=TelemetryConfig)
    status_page: StatusPageConfig = Field(default_factory=StatusPageConfig)
    judges: dict[str, JudgeEndpointConfig] = Field(default_factory=dict)  # "default" serves scorers without model
    # `judges.budget` in the file (so no endpoint is named "budget"): the spend limit of every judge call
    judge_budget: JudgeBudgetConfig | None = Field(
        default=None, validation_alias=AliasChoices(AliasPath("judges", "budget"), "judge_budget")
    )
    scorers: list[ScorerSpec] = Field(default_factory=list)
    scoring: ScoringConfig = Field(default_factory=ScoringConfig)
    sessions: SessionsConfig = Field(default_factory=SessionsConfig)
    backfill: BackfillConfig = Field(default_factory=BackfillConfig)
    control: ControlConfig = Field(default_factory=ControlConfig)
    memory_limiter: MemoryLimiterConfig = Field(default_factory=MemoryLimiterConfig)

    @field_validator("judges", mode="before")
    @classmethod
    def _budget_is_no_endpoint(cls, value: Any) -> Any:
        """`judges.budget` is read into judge_budget (its validation alias); the other keys are endpoints."""
        if isinstance(value, Mapping) and "budget" in value:
            return {name: endpoint for name, endpoint in value.items() if name != "budget"}
        return value

    @field_validator("scorers")
    @classmethod
    def _unique_names(cls, value: list[ScorerSpec]) -> list[ScorerSpec]:
        names = [spec.name for spec in value]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"scorer names must be unique; repeated: {duplicates}")
        return value

    @model_validator(mode="after")
    def _cert_names_need_mtls(self) -> Config:
        """Names can only be checked on certificates the listeners verified: that takes a client CA."""
        if self.control.client_cert_names and (self.receiver.tls is None or self.receiver.tls.client_ca_file is None):
            raise ValueError(
                "control.client_cert_names needs receiver.tls.client_ca_file (mutual TLS on the listeners)"
            )
        return self

    @model_validator(mode="after")
    def _cost_limits_price_every_endpoint(self) -> Config:
        """A cost limit must know what each configured judge costs; a model a scorer names outside `judges:` is
        charged at the table's highest prices (scoring/budget.py), with a warning."""
        budget = self.judge_budget
        if budget is None or not (budget.cost_per_hour or budget.cost_per_day):
            return self
        models = {judge_config_for(None, self.judges).model, *(e.model for e in self.judges.values())}
        unpriced = sorted(m for m in models if budget.price_of(m) is None)
        if unpriced:
            raise ValueError(f"judges.budget.prices has no price for {', '.join(unpriced)} (nor a `default`)")
        return self

    def document(self) -> dict[str, Any]:
        """The config as a file would say it (`tracejudge check-config` prints it): judge_budget under judges."""
        out = self.model_dump(mode="json", exclude={"judge_budget"})
        if self.judge_budget is not None:
            out["judges"] = {**out["judges"], "budget": self.judge_budget.model_dump(mode="json")}
        return out

    @property
    def budget_ledger(self) -> Path:
        return self.data_dir / LEDGER_NAME

    @property
    def assessments_endpoint(self) -> str | None:
        return self.scoring.otlp_endpoint or (self.forward[0].url if self.forward else None)

    @property
    def archive_dir(self) -> str | Path:
        """The archive: a path, or a URI such as s3://bucket/prefix (exporter/archive_store.py reads either)."""
        return self.archive.directory or self.data_dir / "archive"

    @property
    def wal_dir(self) -> Path:
        return self.data_dir / "wal"


# What `tracejudge serve` scores when the config says nothing about scorers (no file, or a file without a
# `scorers:` key): the no-model checks that make sense for any LLM or agent trace, on every trace, so that a
# first run shows verdicts with no API key and no backend. Latency and token limits are left out: a default
# threshold would be a guess about the user's app. Any `scorers:` key, `[]` included, replaces the list.
DEFAULT_SCORERS: tuple[ScorerSpec, ...] = (
    ScorerSpec(name="no_error", builtin="NoError", sample_rate=1.0),
    ScorerSpec(name="non_empty_response", builtin="NonEmptyResponse", sample_rate=1.0),
    ScorerSpec(name="no_pii", builtin="NoPii", sample_rate=1.0),
)


def with_default_scorers(config: Config) -> Config:
    """`config`, with DEFAULT_SCORERS when it has no `scorers:` key (an explicit `scorers: []` keeps none).

    Applied by `tracejudge serve` and `check-config` only: an app's own process, evaluate and backfill
    score what they are given, and a library user building a Config says what to run."""
    if "scorers" in config.model_fields_set:
        return config
    return config.model_copy(update={"scorers": list(DEFAULT_SCORERS)})


def load_config(path: Path | None = None, overrides: dict[str, Any] | None = None) -> Config:
    """Read the YAML file (if any), apply dotted-key overrides, validate."""
    raw = read_config_file(path, overrides)
    try:
        return Config.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(format_errors(exc)) from exc


def spec_of(scorer: Any) -> ScorerSpec:
    """The ScorerSpec a scorer given in Python stands for (a config-file entry, in effect): a tracejudge.scorers
    object, an `@scorer` function (module-level, so that tracejudge can load it), a mapping, or a ScorerSpec.
    Objects and functions run on every trace (sample rate 1); a mapping says its own rate."""
    if isinstance(scorer, Mapping):
        return ScorerSpec.model_validate(dict(scorer))
    if isinstance(scorer, ScorerSpec):
        return scorer
    if callable(getattr(scorer, "to_dict", None)):  # a tracejudge.scorers object (Safety(), make_judge(...))
        entry = {key: value for key, value in scorer.to_dict().items() if key not in ("status", "version")}
        return ScorerSpec.model_validate({**entry, "sample_rate": 1.0})
    if callable(scorer):
        name = str(getattr(scorer, "__tracejudge_scorer_name__", getattr(scorer, "__name__", "scorer")))
        qualname = str(getattr(scorer, "__qualname__", ""))
        if not qualname or "<" in qualname or "." in qualname:
            raise ValueError(f"code scorer {name!r} must be a module-level function, so that tracejudge can load it")
        return ScorerSpec(name=name, code=f"{scorer.__module__}:{qualname}", sample_rate=1.0)
    raise TypeError(f"not a scorer: {scorer!r}; give a tracejudge.scorers object, an @scorer function or a mapping")

"""ScorerSpec: a registered scorer as data — what the config file, the registry and the control plane carry.

One spec per registered name. Which of `builtin`, `guidelines`, `instructions` or `code` is set
decides the kind, exactly as users write it in `tracejudge.yaml`:

    scorers:
      - {name: safety, builtin: Safety, sample_rate: 1.0, filter_string: "attributes.status = 'OK'"}
      - {name: english, guidelines: ["The response must be in English"], sample_rate: 0.5}
      - {name: formality, instructions: "... {{ outputs }} ...", feedback_value_type: [formal, informal]}
      - {name: mentions_x, code: "my_scorers:mentions_x", sample_rate: 1.0}

A spec with sample_rate 0 is registered but not running (MLflow's "stopped").
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from tracejudge.schema import BUILTINS, builtin_names

from .filters import FilterSyntaxError, parse_filter

ValueType = Literal["bool", "int", "float", "str"] | list[str]
ScorerKind = Literal["builtin", "guidelines", "prompt", "code"]
_NAME = re.compile(r"^[A-Za-z0-9_.\-]{1,100}$")
_CODE_REF = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
_TEMPLATE_FIELDS = ("inputs", "outputs", "expectations", "trace")


class ScorerSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    builtin: str | None = None
    guidelines: list[str] | None = None
    instructions: str | None = None
    code: str | None = None
    feedback_value_type: ValueType | None = None
    model: str | None = None  # a judge endpoint name from `judges:` or a model URI; None: the default judge
    params: dict[str, Any] = Field(default_factory=dict)  # builtin options, e.g. {threshold_ms: 5000}
    sample_rate: float = Field(default=0.0, ge=0.0, le=1.0)
    filter_string: str | None = None
    version: int = Field(default=1, ge=1)

    @field_validator("name")
    @classmethod
    def _valid_name(cls, value: str) -> str:
        if not _NAME.match(value):
            raise ValueError("use 1-100 letters, digits, '_', '-' or '.'")
        return value

    @field_validator("builtin")
    @classmethod
    def _known_builtin(cls, value: str | None) -> str | None:
        # The schema's catalogue, not scoring's implementations: validating a spec (the config, the control
        # plane, in the ingest process) must not import the judges, hence the judge client and its model SDK.
        known = builtin_names()
        if value is not None and value not in known:
            raise ValueError(f"unknown builtin {value!r}; known: {', '.join(known)}")
        return value

    @field_validator("code")
    @classmethod
    def _valid_code(cls, value: str | None) -> str | None:
        if value is not None and not _CODE_REF.match(value):
            raise ValueError(f"expected 'module:function', got {value!r}")
        return value

    @field_validator("filter_string")
    @classmethod
    def _valid_filter(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        try:
            return str(parse_filter(value))
        except FilterSyntaxError as exc:
            raise ValueError(str(exc)) from exc

    @model_validator(mode="after")
    def _one_kind(self) -> ScorerSpec:
        kinds = [k for k in ("builtin", "guidelines", "instructions", "code") if getattr(self, k) is not None]
        if len(kinds) != 1:
            raise ValueError(f"set exactly one of builtin, guidelines, instructions, code (got {kinds or 'none'})")
        if self.instructions is not None and not any(f"{{{{ {f} }}}}" in self.instructions for f in _TEMPLATE_FIELDS):
            raise ValueError("instructions must use at least one of {{ inputs }}, {{ outputs }}, {{ expectations }}, "
                             "{{ trace }}")  # fmt: skip
        builtin = BUILTINS.get(self.builtin) if self.builtin is not None else None
        missing = builtin.missing_params(self.params) if builtin is not None else []
        if missing:
            raise ValueError(f"builtin {self.builtin} needs params {missing}")
        return self

    @property
    def kind(self) -> ScorerKind:
        if self.builtin is not None:
            return "builtin"
        if self.guidelines is not None:
            return "guidelines"
        return "prompt" if self.instructions is not None else "code"

    @property
    def active(self) -> bool:
        return self.sample_rate > 0

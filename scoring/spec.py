"""ScorerSpec: a registered scorer as data — what the config file, the registry and the control plane carry.

One spec per registered name. Which of `builtin`, `guidelines`, `instructions` or `code` is set
decides the kind, exactly as users write it in `tracejudge.yaml`:

    scorers:
      - {name: safety, builtin: Safety, sample_rate: 1.0, filter_string: "attributes.status = 'OK'"}
      - {name: english, guidelines: ["The response must be in English"], sample_rate: 0.5}
      - {name: formality, instructions: "... {{ outputs }} ...", feedback_value_type: [formal, informal]}
      - {name: mentions_x, code: "my_scorers:mentions_x", sample_rate: 1.0}
      - {name: frustration, builtin: UserFrustration, sample_rate: 1.0}            # target: session
      - {name: doc_relevance, builtin: RetrievalRelevance, target: {span_type: RETRIEVER}}

`target` says what one verdict judges: `trace` (the root's inputs and outputs), `session` (a whole
conversation: the traces sharing a session id, judged once it is over) or spans ({span_type, name,
filter_string}: each matching span on its own). Unset, it follows from the scorer: multi-turn builtins
and instructions using {{ conversation }} judge sessions, everything else traces; code scorers that take
`session`, `traces` or `conversation` need `target: session`.

A spec with sample_rate 0 is registered but not running (MLflow's "stopped").
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, field_validator, model_validator

from tracejudge.schema import BUILTINS, builtin_names

from .filters import FilterSyntaxError, parse_filter

ValueType = Literal["bool", "int", "float", "str"] | list[str]
ScorerKind = Literal["builtin", "guidelines", "prompt", "code"]
TargetKind = Literal["trace", "session", "span"]
_NAME = re.compile(r"^[A-Za-z0-9_.\-]{1,100}$")
_CODE_REF = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
_TEMPLATE_FIELDS = ("inputs", "outputs", "expectations", "trace", "conversation")
_SPAN_TYPES = ("LLM", "CHAT_MODEL", "RETRIEVER", "TOOL", "AGENT", "CHAIN", "EMBEDDING", "RERANKER", "GUARDRAIL",
               "EVALUATOR", "PARSER", "UNKNOWN")  # fmt: skip


class SpanTarget(BaseModel):
    """Which spans of a trace a span-target scorer judges, each on its own (all given conditions must hold)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    span_type: str | None = None  # LLM, RETRIEVER, TOOL, AGENT, CHAIN, ... (scoring/view.py SpanView.span_type)
    name: str | None = None  # a glob on the span name: "chat *"
    filter_string: str | None = None  # over span.name, span.type, span.status, span.attributes.<key>
    max_spans_per_trace: int = Field(default=10, ge=1, le=1000)  # beyond: recorded as skipped (max_spans)

    @field_validator("span_type")
    @classmethod
    def _known_type(cls, value: str | None) -> str | None:
        if value is not None and value.upper() not in _SPAN_TYPES:
            raise ValueError(f"unknown span_type {value!r}; known: {', '.join(_SPAN_TYPES)}")
        return value.upper() if value is not None else None

    @field_validator("filter_string")
    @classmethod
    def _valid_filter(cls, value: str | None) -> str | None:
        return _parsed_filter(value)

    @model_validator(mode="after")
    def _some_condition(self) -> SpanTarget:
        if self.span_type is None and self.name is None and self.filter_string is None:
            raise ValueError("a span target needs at least one of span_type, name, filter_string")
        return self


def _target_shape(value: Any) -> str:
    return "spans" if isinstance(value, (dict, SpanTarget)) else "kind"


# Discriminated, so a bad span target is reported as such, not also as "not 'trace' or 'session'".
Target = Annotated[
    Annotated[Literal["trace", "session"], Tag("kind")] | Annotated[SpanTarget, Tag("spans")],
    Discriminator(_target_shape),
]


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
    target: Target | None = None  # None: follows from the scorer (see the module docstring)
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
        return _parsed_filter(value)

    @model_validator(mode="after")
    def _one_kind(self) -> ScorerSpec:
        kinds = [k for k in ("builtin", "guidelines", "instructions", "code") if getattr(self, k) is not None]
        if len(kinds) != 1:
            raise ValueError(f"set exactly one of builtin, guidelines, instructions, code (got {kinds or 'none'})")
        if self.instructions is not None and not any(f"{{{{ {f} }}}}" in self.instructions for f in _TEMPLATE_FIELDS):
            raise ValueError("instructions must use at least one of {{ inputs }}, {{ outputs }}, {{ expectations }}, "
                             "{{ trace }}, {{ conversation }}")  # fmt: skip
        builtin = BUILTINS.get(self.builtin) if self.builtin is not None else None
        missing = builtin.missing_params(self.params) if builtin is not None else []
        if missing:
            raise ValueError(f"builtin {self.builtin} needs params {missing}")
        natural = self._natural_target
        if natural == "session" and self.target_kind != "session":
            raise ValueError(f"{self._what} judges whole conversations: its target is session, not {self.target_kind}")
        if self.target_kind == "session" and natural == "trace" and self.kind != "code":
            raise ValueError(f"{self._what} judges one trace, not a conversation: for a session target use a "
                             "multi-turn builtin or instructions with {{ conversation }}")  # fmt: skip
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

    @property
    def target_kind(self) -> TargetKind:
        """What one verdict judges: a trace, a session or a span."""
        if isinstance(self.target, SpanTarget):
            return "span"
        return self.target or self._natural_target

    @property
    def uses_judge(self) -> bool:
        """Whether it asks an LLM (what costs tokens, and what the judge budget admits): guidelines,
        instructions, a builtin judge."""
        builtin = BUILTINS.get(self.builtin) if self.builtin is not None else None
        return self.kind in ("guidelines", "prompt") or (builtin is not None and builtin.family == "judge")

    @property
    def span_target(self) -> SpanTarget | None:
        return self.target if isinstance(self.target, SpanTarget) else None

    @property
    def _natural_target(self) -> Literal["trace", "session"]:
        builtin = BUILTINS.get(self.builtin) if self.builtin is not None else None
        if builtin is not None:
            return builtin.target
        if self.instructions is not None and "{{ conversation }}" in self.instructions:
            return "session"
        return "trace"

    @property
    def _what(self) -> str:
        return f"builtin {self.builtin}" if self.builtin is not None else f"scorer {self.name}"


def _parsed_filter(value: str | None) -> str | None:
    if value is None or not value.strip():
        return None
    try:
        return str(parse_filter(value))
    except FilterSyntaxError as exc:
        raise ValueError(str(exc)) from exc

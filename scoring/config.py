"""Scoring's configuration (the `scoring:` and `judges:` keys), beside the engine and the judges."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator

from tracejudge.config import ByteSize, Duration, OtlpUrl, StrictConfig, TlsClientConfig, no_credentials

# MLflow's name for the idle time after which a conversation is judged; honoured when `sessions.idle` is not set.
MLFLOW_IDLE_ENV = "MLFLOW_ONLINE_SCORING_DEFAULT_SESSION_COMPLETION_BUFFER_SECONDS"


def _default_idle() -> float:
    value = os.environ.get(MLFLOW_IDLE_ENV, "").strip()
    try:
        return float(value) if value and float(value) > 0 else 300.0
    except ValueError:
        raise ValueError(f"{MLFLOW_IDLE_ENV}={value!r}: expected a number of seconds") from None


class SessionsConfig(StrictConfig):
    """The `sessions:` keys: when a conversation is over, for multi-turn scorers (scoring/sessions.py)."""

    idle: Duration = Field(default_factory=_default_idle)  # no new trace this long: judged (MLflow: 300 s)
    max_turns: int = Field(default=200, ge=1)  # judged and closed at this many turns
    max_age: Duration = 24 * 3600.0  # judged and closed this long after its first trace
    max_bytes: ByteSize = 256 * 2**20  # all buffered turns together; beyond: the oldest is judged early


class ScoringConfig(StrictConfig):
    otlp_endpoint: OtlpUrl | None = None  # where assessments are emitted; default: the first forward endpoint
    otlp_tls: TlsClientConfig | None = None  # for a grpcs:// or https:// otlp_endpoint (not a forward endpoint's)
    max_active_scorers: int = Field(default=20, ge=1)
    max_backlog: int = Field(default=10_000, ge=1)  # sampled (trace, scorer) pairs waiting; beyond: skipped
    max_concurrency: int = Field(default=256, ge=1)  # traces being scored at once (judges also have their own cap)
    code_timeout: Duration = 10.0
    code_workers: int = Field(default=4, ge=1)
    drain_timeout: Duration = 10.0  # at shutdown, how long running scorers may finish
    emit_interval: Duration = 0.2  # verdicts are exported in batches at most this far apart (freshness)
    worker_nice: int = Field(default=10, ge=0, le=19)  # the scoring process's CPU priority below ingest's
    # How long an admitted (trace, scorer) pair may stay unfinished before it is recorded as skipped
    # (`deadline`); None: derived from the judges (scoring_deadline below).
    deadline: Duration | None = None


class BackfillConfig(StrictConfig):
    """The `backfill:` keys: jobs a sidecar runs over its own archive (tracejudge/backfill_jobs.py), below
    live scoring's priority: a process of their own niced below the scoring worker's, with fewer judge
    calls in flight than live scoring's judges allow."""

    max_concurrency: int = Field(default=4, ge=1)  # traces judged at once per job (~ judge calls per judge scorer)
    nice: int = Field(default=15, ge=0, le=19)  # CPU priority increment (the scoring worker's is 10)


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


class JudgeEndpointConfig(StrictConfig):
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
        parts = urlsplit(no_credentials(value))
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"expected http://host[:port]/path or https://..., got {value!r}")
        return value.rstrip("/")

    @property
    def model_name(self) -> str:
        return parse_model_uri(self.model)


class ModelPrice(StrictConfig):
    """What a judge model costs, per million tokens, in whatever currency the budget's cost limits are in."""

    input: float = Field(ge=0)
    output: float = Field(ge=0)


class JudgeBudgetConfig(StrictConfig):
    """The `judges.budget` keys: one spend limit for every judge call this data directory's processes make (live
    scoring and backfill jobs, the sidecar's and offline ones alike; scoring/budget.py keeps the shared ledger).
    Past a limit, sampled judge pairs are recorded as skipped (`budget`); checks and code scorers cost nothing
    and always run. Limits are over a sliding window (the last 60 minutes, the last 24 hours)."""

    tokens_per_hour: int | None = Field(default=None, ge=1)
    tokens_per_day: int | None = Field(default=None, ge=1)
    cost_per_hour: float | None = Field(default=None, gt=0)
    cost_per_day: float | None = Field(default=None, gt=0)
    # Model name ('openai:/' optional) -> price per million tokens; `default` prices any other model.
    prices: dict[str, ModelPrice] = Field(default_factory=dict)
    # The share of each limit a backfill may use: past it backfills skip and live scoring has the rest.
    backfill_share: float = Field(default=0.5, gt=0, le=1)

    @field_validator("prices")
    @classmethod
    def _model_names(cls, value: dict[str, ModelPrice]) -> dict[str, ModelPrice]:
        return {name if name == "default" else parse_model_uri(name): price for name, price in value.items()}

    @model_validator(mode="after")
    def _cost_needs_prices(self) -> JudgeBudgetConfig:
        if (self.cost_per_hour or self.cost_per_day) and not self.prices:
            raise ValueError("cost_per_hour / cost_per_day need `prices` (per million tokens, per model)")
        limits = (self.tokens_per_hour, self.tokens_per_day, self.cost_per_hour, self.cost_per_day)
        if all(limit is None for limit in limits) and not self.prices:
            raise ValueError("set a limit (tokens_per_hour, tokens_per_day, cost_per_hour, cost_per_day) or `prices`")
        return self

    def price_of(self, model: str) -> ModelPrice | None:
        """`model`'s price (a URI or a bare name), else the `default` one; None when neither is listed."""
        return self.prices.get(parse_model_uri(model)) or self.prices.get("default")

    @property
    def highest_price(self) -> ModelPrice:
        """The table's highest input and output prices: what a model it does not list is charged, never free."""
        return ModelPrice(input=max((p.input for p in self.prices.values()), default=0.0),
                          output=max((p.output for p in self.prices.values()), default=0.0))  # fmt: skip

    def cost(self, model: str, input_tokens: float, output_tokens: float) -> float:
        """What the tokens cost at `model`'s price, else at the highest (0 without prices)."""
        price = self.price_of(model) or self.highest_price
        return (input_tokens * price.input + output_tokens * price.output) / 1e6


def judge_config_for(model: str | None, endpoints: Mapping[str, JudgeEndpointConfig]) -> JudgeEndpointConfig:
    """The endpoint a scorer's `model` reaches: one named in `judges:`, else the `default` endpoint serving the
    model URI it names (or its own model when None), else the openai SDK's environment."""
    if model is not None and model in endpoints:
        return endpoints[model]
    default = endpoints.get("default", JudgeEndpointConfig())
    return default if model is None else default.model_copy(update={"model": JudgeEndpointConfig(model=model).model})


def scoring_deadline(scoring: ScoringConfig, judges: Mapping[str, JudgeEndpointConfig]) -> float:
    """`scoring.deadline`, else twice the longest a judge call may legitimately take (the slowest endpoint's
    timeout x its attempts: 30 s x 5 = 150 s by default) plus a code scorer's timeout: 310 s by default. Twice,
    because backoff sleeps and the wait for a concurrency slot come on top of the attempts; past that the pair
    is lost work (a bug or a wedged call), and holding it would hold backlog room forever."""
    if scoring.deadline is not None:
        return float(scoring.deadline)
    endpoints = list(judges.values()) or [JudgeEndpointConfig()]
    slowest = max(endpoint.timeout * (endpoint.max_retries + 1) for endpoint in endpoints)
    return 2.0 * slowest + scoring.code_timeout

"""Judge client: one OpenAI-compatible chat endpoint, called within its limits and defensively.

Scorers hand it a system prompt, a user prompt (traced content wrapped with `fence`) and a JSON schema,
and get back the judge's parsed JSON object with its token usage, latency and attempt count, or a
JudgeError whose short `kind` fills the assessment's `error` field: a judge failure is never a silent gap.

Why a retry loop of its own (the SDK client is built with max_retries=0): the openai SDK retries the same
statuses and reads Retry-After, but its backoff is fixed (0.5 s doubling to 8 s, minus 0-25 % jitter),
it does not tell the caller how many attempts a call took, and it sleeps while the caller still holds
its concurrency slot. Here attempts, Retry-After / retry-after-ms, full jitter and "never retry a 4xx
config error" are explicit and testable, backoff sleeps release the slot, and a 429's Retry-After pauses
the whole endpoint rather than one call.

Why the structured-output fallback: OpenAI and recent vLLM accept response_format json_schema, but many
proxies and older servers accept only json_object, or nothing. In "auto" mode a rejection is remembered
for the endpoint, so later calls go straight to the format that works.

Traced content reaches the judge only through `JudgeClient.fence` (scoring/fence.py says why).

Why the SDK's aiohttp transport (`openai.DefaultAioHttpClient`, the SDK's `aiohttp` extra): its default
pure-Python HTTP stack (httpx2/httpcore2/h11) cost 1.6-1.9 ms of CPU per call at 64 calls in flight on
our 2-core machine, the aiohttp transport 0.9-1.1 ms; judge calls are the engine's hottest path.

One JudgeClient per endpoint config and per event loop (its semaphore and HTTP pool belong to the loop).
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import math
import os
import random
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import timezone
from itertools import islice
from types import TracebackType
from typing import Any, Literal

import aiohttp
import httpx2
import openai
import orjson
from openai.types.chat import ChatCompletionMessageParam
from openai.types.chat.completion_create_params import ResponseFormat

from .config import JudgeEndpointConfig, judge_config_for
from .fence import fence

log = logging.getLogger(__name__)

ErrorKind = Literal["timeout", "rate_limited", "server_error", "bad_request", "auth", "malformed_output", "connection"]
Mode = Literal["json_schema", "json_object", "none"]

OnUsage = Callable[[str, int, int], None]  # (model URI, input tokens, output tokens) of one answered attempt
RETRYABLE_KINDS: frozenset[str] = frozenset({"timeout", "rate_limited", "server_error", "connection"})
KEYLESS_API_KEY = "tracejudge-no-key"  # sent when the key variable is unset; keyless local servers ignore it
_MODES: tuple[Mode, ...] = ("json_schema", "json_object", "none")
_SDK_TIMEOUT_SLACK_S = 1.0  # the SDK's own timeout is a backstop; the wall-clock limit is config.timeout
_FORMAT_WORDS = re.compile(
    r"response.?format|json.?schema|json.?object|structured.?output|guided.?(?:json|decod)", re.I
)
_CODE_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.DOTALL | re.IGNORECASE)
_SCHEMA_NAME_CHARS = re.compile(r"[^A-Za-z0-9_-]+")
_LITERAL_KEYWORDS = frozenset({"enum", "const", "default", "examples"})
_MAP_KEYWORDS = frozenset({"properties", "$defs", "definitions", "patternProperties"})


@dataclass(frozen=True)
class JudgeReply:
    value: dict[str, Any]  # the judge's JSON object
    raw_text: str  # the reply's text as received
    input_tokens: int | None  # usage.prompt_tokens of the successful attempt; None if the server sent no usage
    output_tokens: int | None  # usage.completion_tokens
    latency_s: float  # wall time of the successful attempt (not the waits, retries or backoff before it)
    model: str  # the endpoint's model URI, e.g. openai:/gpt-4.1-mini (the assessment's source id)
    attempts: int  # HTTP requests this judge() call made, including retries and format fallbacks


class JudgeError(Exception):
    """A judge call that produced no verdict. `kind` is short and machine-readable; str() is 'kind: message'."""

    def __init__(
        self,
        kind: ErrorKind,
        message: str,
        *,
        status: int | None = None,
        retry_after: float | None = None,
        attempts: int = 0,
    ) -> None:
        super().__init__(f"{kind}: {message}")
        self.kind: ErrorKind = kind
        self.message = message
        self.status = status  # HTTP status, when there was a response
        self.retry_after = retry_after  # seconds the server asked for (Retry-After / retry-after-ms)
        self.attempts = attempts  # HTTP requests made by the judge() call that raised it

    @property
    def retryable(self) -> bool:
        return self.kind in RETRYABLE_KINDS


# --- replies --------------------------------------------------------------------------------------------


def parse_json_object(text: str) -> dict[str, Any]:
    """The JSON object in a judge's reply: the whole text, a ```json block, or else the first {...} in prose."""
    for candidate in (text, *(match.group(1) for match in _CODE_FENCE.finditer(text))):
        try:
            value = json.loads(candidate)
        except ValueError:
            continue
        if isinstance(value, dict):
            return value
    decoder = json.JSONDecoder()
    for match in islice(re.finditer(r"\{", text), 64):
        try:
            value, _ = decoder.raw_decode(text, match.start())
        except ValueError:
            continue
        if isinstance(value, dict):
            return value
    raise JudgeError("malformed_output", f"no JSON object in the judge's reply: {text[:200]!r}")


def _check_required(value: dict[str, Any], schema: Mapping[str, Any]) -> None:
    missing = [key for key in schema.get("required", ()) if key not in value]
    if missing:
        raise JudgeError("malformed_output", f"judge reply lacks required keys {missing}: {json.dumps(value)[:200]}")


def _reply_text(completion: Mapping[str, Any]) -> str:
    choices = completion.get("choices")
    message = (
        choices[0].get("message") if isinstance(choices, list) and choices and isinstance(choices[0], dict) else None
    )
    if not isinstance(message, dict):
        raise JudgeError("malformed_output", f"not a chat completion: {str(completion)[:200]!r}")
    if message.get("refusal"):
        raise JudgeError("malformed_output", f"judge refused: {str(message['refusal'])[:200]}")
    return str(message.get("content") or "")


def _usage(completion: Mapping[str, Any]) -> tuple[int | None, int | None]:
    usage = completion.get("usage")
    if not isinstance(usage, dict):
        return None, None
    prompt, reply = usage.get("prompt_tokens"), usage.get("completion_tokens")
    return (prompt if isinstance(prompt, int) else None), (reply if isinstance(reply, int) else None)


# --- structured output ----------------------------------------------------------------------------------


def strict_schema(schema: Mapping[str, Any]) -> dict[str, Any]:
    """A copy ready for strict structured output: each object with properties gets additionalProperties false
    and all its properties required, unless the schema already says otherwise."""
    result = _strict(schema)
    assert isinstance(result, dict)
    return result


def _strict(node: Any) -> Any:
    if isinstance(node, list):
        return [_strict(item) for item in node]
    if not isinstance(node, Mapping):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _LITERAL_KEYWORDS:
            out[key] = value
        elif key in _MAP_KEYWORDS and isinstance(value, Mapping):
            out[key] = {name: _strict(sub) for name, sub in value.items()}
        else:
            out[key] = _strict(value)
    if isinstance(out.get("properties"), dict):
        out.setdefault("additionalProperties", False)
        out.setdefault("required", list(out["properties"]))
    return out


def _response_format(mode: Mode, schema: Mapping[str, Any], schema_name: str) -> ResponseFormat | openai.Omit:
    if mode == "json_schema":
        name = _SCHEMA_NAME_CHARS.sub("_", schema_name)[:64] or "verdict"
        return {"type": "json_schema", "json_schema": {"name": name, "schema": strict_schema(schema), "strict": True}}
    if mode == "json_object":
        return {"type": "json_object"}
    return openai.omit


def _system_prompt(mode: Mode, system: str, schema: Mapping[str, Any]) -> str:
    if mode == "json_schema":
        return system
    instruction = f"Respond with a single JSON object that conforms to this JSON schema:\n{json.dumps(schema)}"
    if mode == "none":
        instruction += "\nReply with the JSON object only: no prose before or after it."
    return f"{system}\n\n{instruction}"


def _initial_mode(setting: Literal["auto", "json_schema", "json_object", "none"]) -> Mode:
    return "json_schema" if setting == "auto" else setting


def _mentions_response_format(error: JudgeError) -> bool:
    return bool(_FORMAT_WORDS.search(error.message))


# --- errors and retries ---------------------------------------------------------------------------------


def retry_after_seconds(headers: Mapping[str, str]) -> float | None:
    """Seconds asked for by retry-after-ms, else Retry-After (seconds or an HTTP date); None if absent."""
    millis = _finite_float(headers.get("retry-after-ms"))
    if millis is not None:
        return max(0.0, millis / 1000)
    raw = headers.get("retry-after")
    if raw is None:
        return None
    seconds = _finite_float(raw)
    if seconds is None:
        seconds = _seconds_until(raw)
    return None if seconds is None else max(0.0, seconds)


def _finite_float(raw: str | None) -> float | None:
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _seconds_until(http_date: str) -> float | None:
    try:
        when = email.utils.parsedate_to_datetime(http_date)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return when.timestamp() - time.time()


def backoff_delay(retry: int, *, base: float, cap: float, retry_after: float | None, rng: random.Random) -> float:
    """Full jitter, uniform(0, min(cap, base * 2**retry)), but never shorter than the server's Retry-After."""
    delay = rng.uniform(0.0, min(cap, base * 2.0 ** min(retry, 60)))
    return delay if retry_after is None else max(delay, retry_after)


def _http_client(max_concurrency: int) -> httpx2.AsyncClient:
    """The SDK's aiohttp-backed client, with a pool that keeps every concurrent call's connection alive
    (its default keeps 20, so 64 in flight would reconnect constantly)."""
    limits = httpx2.Limits(max_connections=max_concurrency, max_keepalive_connections=max_concurrency)
    return openai.DefaultAioHttpClient(limits=limits)


def _from_sdk(exc: BaseException) -> JudgeError:
    refused = _refused_connection(exc)
    if refused is not None:
        return JudgeError("connection", f"cannot connect: {refused}")
    if isinstance(exc, (openai.APITimeoutError, asyncio.TimeoutError)):
        return JudgeError("timeout", "no reply within the timeout")
    if isinstance(exc, openai.APIConnectionError):
        return JudgeError("connection", f"{exc.message} {exc.__cause__!r}" if exc.__cause__ else exc.message)
    if isinstance(exc, openai.APIStatusError):
        message = f"{exc.message} (param: {exc.param})" if exc.param else exc.message
        return _from_status(exc.status_code, message, retry_after_seconds(exc.response.headers))
    if isinstance(exc, openai.APIResponseValidationError):
        return JudgeError("malformed_output", exc.message, status=exc.status_code)
    return JudgeError("connection", f"{type(exc).__name__}: {exc}")


def _refused_connection(exc: BaseException) -> BaseException | None:
    """The aiohttp connector error under an SDK error, if any: the aiohttp transport reports a refused
    connection as a connect *timeout*, which would mislabel a judge that is down."""
    cause = exc.__cause__
    while cause is not None:
        if isinstance(cause, aiohttp.ClientConnectorError):
            return cause
        cause = cause.__cause__
    return None


def _from_status(status: int, message: str, retry_after: float | None) -> JudgeError:
    kind: ErrorKind
    if status == 429:
        kind = "rate_limited"
    elif status == 408:
        kind = "timeout"
    elif status == 409 or status >= 500:
        kind = "server_error"
    elif status in (401, 403):
        kind = "auth"
    else:
        kind = "bad_request"
    return JudgeError(kind, message, status=status, retry_after=retry_after)


# --- rate limits ----------------------------------------------------------------------------------------


class TokenBucket:
    """A per-minute limit as a bucket refilled continuously, holding one second's worth (at least 1).

    take() waits (it never fails) until the bucket holds min(amount, capacity), then removes amount, which
    may leave it in debt: a request larger than a second's worth passes, and the callers after it wait.
    """

    def __init__(self, per_minute: float) -> None:
        self.rate = per_minute / 60.0
        self.capacity = max(1.0, self.rate)
        self._level = self.capacity
        self._stamp = time.monotonic()
        self._lock = asyncio.Lock()

    async def take(self, amount: float) -> None:
        async with self._lock:
            need = min(amount, self.capacity)
            while (level := self._refill()) < need:
                await asyncio.sleep((need - level) / self.rate)
            self._level -= amount

    def charge(self, amount: float) -> None:
        """Correct an earlier estimate: positive removes more, negative gives some back."""
        self._refill()
        self._level = min(self.capacity, self._level - amount)

    def _refill(self) -> float:
        now = time.monotonic()
        self._level = min(self.capacity, self._level + (now - self._stamp) * self.rate)
        self._stamp = now
        return self._level


def estimate_tokens(*texts: str) -> int:
    """Rough token count before the call (4 characters a token); corrected from usage afterwards."""
    return sum(len(text) for text in texts) // 4 + 8


# --- the client -----------------------------------------------------------------------------------------


@dataclass
class _Call:
    mode: Mode
    attempts: int = 0
    retries: int = 0  # transient-failure retries used (bounded by config.max_retries)
    malformed: int = 0  # malformed-output retries used (bounded by malformed_retries)


class JudgeClient:
    """Calls one judge endpoint; share one instance between all scorers that use the endpoint.

    backoff_base / backoff_cap (seconds) shape the full-jitter exponential backoff; a Retry-After longer than
    retry_after_cap fails the call at once (rate_limited) instead of parking it; malformed_retries is how
    often an unparseable reply is asked again. `on_usage` is told the tokens of every answered attempt (the
    judge budget's ledger): the reply's usage, or the prompt's estimate when the server sent none.
    """

    def __init__(
        self,
        config: JudgeEndpointConfig | None = None,
        *,
        backoff_base: float = 0.5,
        backoff_cap: float = 20.0,
        retry_after_cap: float = 60.0,
        malformed_retries: int = 1,
        rng: random.Random | None = None,
        on_usage: OnUsage | None = None,
    ) -> None:
        self.config = config or JudgeEndpointConfig()
        self._on_usage = on_usage
        self.model = self.config.model_name
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self.retry_after_cap = retry_after_cap
        self.malformed_retries = malformed_retries
        self._rng = rng or random.Random()
        self._key = self._api_key()  # read now: a missing key is logged when the scorer is registered
        self._openai: openai.AsyncOpenAI | None = None  # made on the first call (the sidecar only validates)
        self._slots = asyncio.Semaphore(self.config.max_concurrency)
        self._requests = TokenBucket(self.config.requests_per_minute) if self.config.requests_per_minute else None
        self._tokens = TokenBucket(self.config.tokens_per_minute) if self.config.tokens_per_minute else None
        self._paused_until = 0.0
        self._mode: Mode = _initial_mode(self.config.structured_output)
        self._mode_confirmed = self.config.structured_output != "auto"  # auto: nothing has succeeded yet

    @property
    def structured_mode(self) -> Mode:
        """The response format the next call starts with (json_schema until the endpoint rejects it)."""
        return self._mode

    def fence(self, label: str, content: str) -> str:
        """`fence` with this endpoint's max_content_chars."""
        return fence(label, content, self.config.max_content_chars)

    async def aclose(self) -> None:
        if self._openai is not None:
            await self._openai.close()

    async def __aenter__(self) -> JudgeClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def judge(self, system: str, user: str, schema: dict[str, Any], schema_name: str) -> JudgeReply:
        """The judge's JSON object for this prompt, or JudgeError once retries and fallbacks are spent."""
        call = _Call(mode=self._mode)
        while True:
            call.attempts += 1
            try:
                reply = await self._attempt(call.mode, system, user, schema, schema_name)
            except JudgeError as error:
                error.attempts = call.attempts
                await self._recover(call, error)
                continue
            self._remember(call.mode)
            return replace(reply, attempts=call.attempts)

    async def _attempt(
        self, mode: Mode, system: str, user: str, schema: dict[str, Any], schema_name: str
    ) -> JudgeReply:
        system_text = _system_prompt(mode, system, schema)
        messages: list[ChatCompletionMessageParam] = [
            {"role": "system", "content": system_text},
            {"role": "user", "content": user},
        ]
        estimate = estimate_tokens(system_text, user)
        async with self._slots:
            await self._admit(estimate)
            started = time.monotonic()
            completion = await self._create(messages, _response_format(mode, schema, schema_name))
            latency = time.monotonic() - started
        input_tokens, output_tokens = _usage(completion)
        if self._on_usage is not None:  # every answered attempt is billed: retries and fallbacks too
            self._on_usage(self.config.model, input_tokens or estimate, output_tokens or 0)
        if self._tokens is not None and input_tokens is not None:
            self._tokens.charge(input_tokens + (output_tokens or 0) - estimate)
        text = _reply_text(completion)
        value = parse_json_object(text)
        _check_required(value, schema)
        return JudgeReply(value, text, input_tokens, output_tokens, latency, self.config.model, attempts=1)

    async def _admit(self, estimate: int) -> None:
        """Wait out a server-requested pause and the rate limits; never fails."""
        pause = self._paused_until - time.monotonic()
        if pause > 0:
            await asyncio.sleep(pause)
        if self._requests is not None:
            await self._requests.take(1)
        if self._tokens is not None:
            await self._tokens.take(estimate)

    async def _create(
        self, messages: list[ChatCompletionMessageParam], response_format: ResponseFormat | openai.Omit
    ) -> dict[str, Any]:
        """POST /chat/completions through the SDK's request path (auth, base URL, errors as APIStatusError)
        but with the body sent as built and the reply read as bytes: bench/scoring.py showed the typed
        `chat.completions.create` spending most of a judge call's CPU transforming params and building
        response models. The body goes as orjson's bytes (`content=`), which the SDK sends as they are."""
        body: dict[str, Any] = {"model": self.model, "messages": messages}
        if not isinstance(response_format, openai.Omit):
            body["response_format"] = response_format
        request = self._sdk().post("/chat/completions", content=orjson.dumps(body), cast_to=bytes)
        try:
            raw = await asyncio.wait_for(request, self.config.timeout)
        except (openai.OpenAIError, asyncio.TimeoutError) as exc:
            raise _from_sdk(exc) from exc
        try:
            completion = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise JudgeError("malformed_output", f"reply is not JSON: {raw[:200]!r}") from exc
        if not isinstance(completion, dict):
            raise JudgeError("malformed_output", f"not a chat completion: {raw[:200]!r}")
        return completion

    async def _recover(self, call: _Call, error: JudgeError) -> None:
        """Prepare the next attempt (another format, the same again, or the same after a backoff); else raise."""
        if self._should_fall_back(call.mode, error):
            call.mode = self._fall_back(call.mode, error)
            return
        if error.kind == "malformed_output" and call.malformed < self.malformed_retries:
            call.malformed += 1
            return
        if not error.retryable or call.retries >= self.config.max_retries:
            raise error
        if error.retry_after is not None and error.retry_after > self.retry_after_cap:
            note = f" (Retry-After {error.retry_after:.0f}s is over the {self.retry_after_cap:.0f}s cap)"
            raise JudgeError(
                error.kind,
                error.message + note,
                status=error.status,
                retry_after=error.retry_after,
                attempts=error.attempts,
            ) from error
        delay = backoff_delay(
            call.retries, base=self.backoff_base, cap=self.backoff_cap, retry_after=error.retry_after, rng=self._rng
        )
        if error.retry_after is not None:
            self._paused_until = max(self._paused_until, time.monotonic() + error.retry_after)
        call.retries += 1
        log.debug("judge %s: %s; retry %d in %.2fs", self.config.model, error, call.retries, delay)
        await asyncio.sleep(delay)

    def _should_fall_back(self, mode: Mode, error: JudgeError) -> bool:
        if self.config.structured_output != "auto" or mode == "none" or error.status not in (400, 422):
            return False
        return _mentions_response_format(error) or not self._mode_confirmed

    def _fall_back(self, mode: Mode, error: JudgeError) -> Mode:
        lower = _MODES[_MODES.index(mode) + 1]
        if _mentions_response_format(error) and _MODES.index(lower) > _MODES.index(self._mode):
            self._mode = lower
            log.info("judge %s: response_format %s rejected (%s); using %s", self.config.model, mode, error, lower)
        return lower

    def _remember(self, mode: Mode) -> None:
        if _MODES.index(mode) > _MODES.index(self._mode):
            self._mode = mode
        if mode == self._mode:
            self._mode_confirmed = True

    def _sdk(self) -> openai.AsyncOpenAI:
        if self._openai is None:
            self._openai = openai.AsyncOpenAI(
                base_url=self.config.base_url,  # None: the SDK reads OPENAI_BASE_URL, else api.openai.com
                api_key=self._key,
                timeout=self.config.timeout + _SDK_TIMEOUT_SLACK_S,
                max_retries=0,  # retries are ours, see the module docstring
                http_client=_http_client(self.config.max_concurrency),
            )
        return self._openai

    def _api_key(self) -> str:
        key = os.environ.get(self.config.api_key_env)
        if key:
            return key
        if self.config.base_url is None and not os.environ.get("OPENAI_BASE_URL"):
            log.warning(
                "judge %s: %s is not set; api.openai.com will refuse it", self.config.model, self.config.api_key_env
            )
        return KEYLESS_API_KEY


class JudgePool:
    """One JudgeClient per judge endpoint, looked up by a scorer's `model`.

    `model` may name an endpoint from the config's `judges:` section, or be a model URI served by the
    `default` endpoint; None means the `default` endpoint, or the openai SDK's environment with
    openai:/gpt-4.1-mini when none is configured.
    """

    def __init__(self, endpoints: Mapping[str, JudgeEndpointConfig], on_usage: OnUsage | None = None) -> None:
        self._endpoints = dict(endpoints)
        self._on_usage = on_usage
        self._clients: dict[str, JudgeClient] = {}

    def get(self, model: str | None) -> JudgeClient:
        key = model or "default"
        client = self._clients.get(key)
        if client is None:
            client = self._clients[key] = JudgeClient(judge_config_for(model, self._endpoints), on_usage=self._on_usage)
        return client

    async def aclose(self) -> None:
        for client in self._clients.values():
            await client.aclose()

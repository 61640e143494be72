"""A scriptable OpenAI-compatible chat-completions server on 127.0.0.1, for judge and end-to-end tests.

    with MockOpenAI(latency=0.01) as server:
        server.script(faults.rate_limited(retry_after=0.5), faults.server_error())
        config = JudgeEndpointConfig(base_url=server.base_url, api_key_env="NO_SUCH_VAR")
        ...                                   # the 1st request gets a 429, the 2nd a 500, then verdicts
        server.chat_requests()                # every request received: headers, JSON body, times, status

Endpoints: POST /v1/chat/completions and GET /v1/models. Its aiohttp loop runs in a daemon thread
(tracejudge.aio.AiohttpServerThread), so synchronous and asyncio tests can both use it.

Faults: `script(*faults)` queues one fault per coming chat request (first in, first out); `always(fault)`
answers every request that has no scripted fault with it (an outage) until `always(None)`;
`randomly(rate, faults)` answers that share of the other requests with one of `faults`, drawn at random (a
flaky provider). See the factory functions in `faults` below.

Verdicts come from the JSON schema of the request: response_format json_schema, else the first JSON schema
(an object with "properties") found in the messages, as a client puts it there for json_object or plain
text. Each property is filled from markers in the user messages, else with a default:
  - `VERDICT:<value>` sets every boolean, enum and numeric property; `VERDICT[<property>]:<value>` sets one
    property and wins over VERDICT:. Values are coerced: yes/true/pass/1 -> true and no/false/fail/0 -> false
    for booleans, case-insensitive match for enums, numbers parsed. A value that does not fit is ignored.
  - defaults: const; an enum's "yes" if allowed, else its first value; true; a number's maximum, else 1;
    "mock <property>" for strings; [] for arrays; objects recursively; local $ref, anyOf and oneOf followed.
Without json_schema / json_object the reply is prose around a ```json block, as chatty models write.
`usage` counts four characters a token, plus four tokens a message.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import re
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from aiohttp import web

from tracejudge.aio import AiohttpServerThread

_MARKER = re.compile(r"VERDICT(?:\[(?P<prop>[^\]\s]+)\])?:(?P<value>[A-Za-z0-9_.+-]+)")
_TRUE = frozenset({"yes", "true", "pass", "1"})
_FALSE = frozenset({"no", "false", "fail", "0"})
_ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 429: "rate_limit_error"}


@dataclass(frozen=True)
class Fault:
    """One scripted answer. status != 200 answers an OpenAI-style error; hang_s stalls first (the stall ends
    early when the client hangs up); content, with status 200, replaces the assistant's reply text."""

    status: int = 200
    message: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    hang_s: float = 0.0
    content: str | None = None
    param: str | None = None


class faults:
    """Factories for the usual failure modes."""

    @staticmethod
    def rate_limited(retry_after: float | None = None, retry_after_ms: int | None = None) -> Fault:
        headers = {} if retry_after is None else {"Retry-After": f"{retry_after:g}"}
        if retry_after_ms is not None:
            headers["retry-after-ms"] = str(retry_after_ms)
        return Fault(429, "Rate limit reached for requests", headers)

    @staticmethod
    def server_error(status: int = 500, retry_after: float | None = None) -> Fault:
        headers = {} if retry_after is None else {"Retry-After": f"{retry_after:g}"}
        return Fault(status, "The server had an error while processing your request.", headers)

    @staticmethod
    def unavailable(retry_after: float | None = None) -> Fault:
        return faults.server_error(503, retry_after)

    @staticmethod
    def status(code: int, message: str = "", param: str | None = None) -> Fault:
        return Fault(code, message or f"mock error {code}", param=param)

    @staticmethod
    def hang(seconds: float = 30.0) -> Fault:
        """Stall past the client's timeout, then answer normally if the client is still there."""
        return Fault(hang_s=seconds)

    @staticmethod
    def malformed(content: str = 'I would say {"verdict": "yes", "rationale": "cut off') -> Fault:
        return Fault(content=content)

    @staticmethod
    def json_schema_unsupported() -> Fault:
        return Fault(
            400, "response_format of type 'json_schema' is not supported by this model", param="response_format"
        )


@dataclass
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]
    body: dict[str, Any] | None  # the JSON body; None when there was none or it did not parse
    received_at: float  # time.monotonic() when the request arrived
    finished_at: float | None = None
    status: int | None = None  # the status answered; None while in flight or when the client hung up

    @property
    def response_format(self) -> str | None:
        """The request's response_format type (json_schema, json_object, ...), None when absent."""
        fmt = (self.body or {}).get("response_format")
        return fmt.get("type") if isinstance(fmt, dict) else None

    @property
    def user_text(self) -> str:
        return "\n".join(_content(m) for m in _messages(self.body) if m.get("role") == "user")


class MockOpenAI:
    """The server. `supports_json_schema` / `supports_json_object` False answer 400 to those response formats;
    `api_key`, when set, answers 401 to any other bearer token; `latency` delays every chat answer."""

    def __init__(
        self,
        *,
        latency: float = 0.0,
        supports_json_schema: bool = True,
        supports_json_object: bool = True,
        api_key: str | None = None,
        port: int = 0,
    ) -> None:
        self.latency = latency
        self.supports_json_schema = supports_json_schema
        self.supports_json_object = supports_json_object
        self.api_key = api_key
        self.port = port
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._scripted: deque[Fault] = deque()
        self._always: Fault | None = None
        self._random: tuple[float, tuple[Fault, ...], random.Random] | None = None
        self._requests: list[RecordedRequest] = []
        self._in_flight = 0
        self._max_in_flight = 0
        self._ids = itertools.count(1)
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_get("/v1/models", self._models)
        self._server = AiohttpServerThread(app, "127.0.0.1", port, "mock-openai", shutdown_timeout=1.0)

    # --- lifecycle --------------------------------------------------------------------------------------

    def start(self) -> MockOpenAI:
        self.port = self._server.start()
        return self

    def stop(self) -> None:
        self._closing.set()
        self._server.shutdown()

    def __enter__(self) -> MockOpenAI:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    # --- control ----------------------------------------------------------------------------------------

    def script(self, *scripted: Fault) -> None:
        """Queue faults for the coming chat requests, one each, in order."""
        with self._lock:
            self._scripted.extend(scripted)

    def always(self, fault: Fault | None) -> None:
        """Answer every unscripted chat request with `fault` (None: back to normal)."""
        with self._lock:
            self._always = fault

    def randomly(self, rate: float, faults: Sequence[Fault], seed: int = 0) -> None:
        """Answer a `rate` share of unscripted chat requests with a fault drawn from `faults` (rate 0: off)."""
        with self._lock:
            self._random = (rate, tuple(faults), random.Random(seed)) if rate > 0 and faults else None

    def reset(self) -> None:
        """Forget scripted, standing and random faults, recorded requests and the in-flight maximum."""
        with self._lock:
            self._scripted.clear()
            self._always = None
            self._random = None
            self._requests.clear()
            self._max_in_flight = self._in_flight

    # --- observation ------------------------------------------------------------------------------------

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._requests)

    def chat_requests(self) -> list[RecordedRequest]:
        return [r for r in self.requests if r.path.endswith("/chat/completions")]

    @property
    def max_in_flight(self) -> int:
        """The most chat requests being answered at the same time since start or reset()."""
        with self._lock:
            return self._max_in_flight

    @property
    def pending_faults(self) -> int:
        with self._lock:
            return len(self._scripted)

    # --- handlers ---------------------------------------------------------------------------------------

    async def _models(self, request: web.Request) -> web.Response:
        return web.json_response(
            {"object": "list", "data": [{"id": "mock-judge", "object": "model", "owned_by": "mock"}]}
        )

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        record = await self._record(request)
        self._enter()
        try:
            response = await self._answer(request, record)
            gone = request.transport is None or request.transport.is_closing()
            record.status = None if gone else response.status
            return response
        finally:
            record.finished_at = time.monotonic()
            self._leave()

    async def _answer(self, request: web.Request, record: RecordedRequest) -> web.Response:
        fault = self._next_fault()
        if self.latency:
            await asyncio.sleep(self.latency)
        if fault is not None and fault.hang_s:
            await self._stall(request, fault.hang_s)
        if fault is not None and fault.status != 200:
            return _error(fault.status, fault.message, fault.headers, fault.param)
        if self.api_key is not None and request.headers.get("Authorization") != f"Bearer {self.api_key}":
            return _error(401, "Incorrect API key provided.", {}, None)
        if record.body is None or not isinstance(record.body.get("messages"), list):
            return _error(400, "request body must be JSON with a messages array", {}, "messages")
        rejection = self._rejected_format(record.response_format)
        if rejection is not None:
            return rejection
        content = fault.content if fault is not None and fault.content is not None else _verdict_text(record.body)
        return web.json_response(self._completion(record.body, content))

    def _rejected_format(self, fmt: str | None) -> web.Response | None:
        if fmt == "json_schema" and not self.supports_json_schema:
            return _error(
                400, "response_format of type 'json_schema' is not supported by this model", {}, "response_format"
            )
        if fmt == "json_object" and not self.supports_json_object:
            return _error(
                400, "response_format of type 'json_object' is not supported by this model", {}, "response_format"
            )
        return None

    def _completion(self, body: dict[str, Any], content: str) -> dict[str, Any]:
        messages = _messages(body)
        prompt_tokens = sum(len(_content(m)) for m in messages) // 4 + 4 * len(messages)
        completion_tokens = len(content) // 4 + 1
        return {
            "id": f"chatcmpl-mock-{next(self._ids)}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": str(body.get("model", "mock-judge")),
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": content, "refusal": None},
                    "finish_reason": "stop",
                    "logprobs": None,
                }
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
            "system_fingerprint": "fp_mock",
        }

    async def _record(self, request: web.Request) -> RecordedRequest:
        received_at = time.monotonic()
        try:
            body = await request.json()
        except (ValueError, UnicodeDecodeError):
            body = None
        record = RecordedRequest(
            request.method, request.path, dict(request.headers), body if isinstance(body, dict) else None, received_at
        )
        with self._lock:
            self._requests.append(record)
        return record

    async def _stall(self, request: web.Request, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and not self._closing.is_set():
            if request.transport is None or request.transport.is_closing():
                return
            await asyncio.sleep(0.02)

    def _next_fault(self) -> Fault | None:
        with self._lock:
            if self._scripted:
                return self._scripted.popleft()
            if self._always is None and self._random is not None:
                rate, choices, rng = self._random
                return rng.choice(choices) if rng.random() < rate else None
            return self._always

    def _enter(self) -> None:
        with self._lock:
            self._in_flight += 1
            self._max_in_flight = max(self._max_in_flight, self._in_flight)

    def _leave(self) -> None:
        with self._lock:
            self._in_flight -= 1


def _error(status: int, message: str, headers: dict[str, str], param: str | None) -> web.Response:
    error_type = _ERROR_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    body = {"error": {"message": message, "type": error_type, "param": param, "code": None}}
    return web.json_response(body, status=status, headers=headers)


# --- verdicts -------------------------------------------------------------------------------------------


def _messages(body: dict[str, Any] | None) -> list[dict[str, Any]]:
    messages = (body or {}).get("messages")
    return [m for m in messages if isinstance(m, dict)] if isinstance(messages, list) else []


def _content(message: dict[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, list):  # content parts
        return "".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
    return content if isinstance(content, str) else ""


def _verdict_text(body: dict[str, Any]) -> str:
    fmt = body.get("response_format")
    fmt_type = fmt.get("type") if isinstance(fmt, dict) else None
    spec = fmt.get("json_schema") if isinstance(fmt, dict) and fmt_type == "json_schema" else None
    schema = spec.get("schema") if isinstance(spec, dict) else None
    if not isinstance(schema, dict):
        schema = _schema_in_messages(_messages(body))
    markers = _markers("\n".join(_content(m) for m in _messages(body) if m.get("role") == "user"))
    value = fill(schema, markers) if schema is not None else {"verdict": markers.get("", "yes")}
    text = json.dumps(value)
    if fmt_type in ("json_schema", "json_object"):
        return text
    return f"Here is my assessment:\n```json\n{text}\n```"


def _schema_in_messages(messages: list[dict[str, Any]]) -> dict[str, Any] | None:
    decoder = json.JSONDecoder()
    for message in messages:
        text = _content(message)
        for match in re.finditer(r"\{", text):
            try:
                value, _ = decoder.raw_decode(text, match.start())
            except ValueError:
                continue
            if isinstance(value, dict) and isinstance(value.get("properties"), dict):
                return value
    return None


def _markers(text: str) -> dict[str, str]:
    """{"": value} for VERDICT:value, {prop: value} for VERDICT[prop]:value; the first of each wins."""
    found: dict[str, str] = {}
    for match in _MARKER.finditer(text):
        found.setdefault(match.group("prop") or "", match.group("value"))
    return found


def fill(schema: dict[str, Any], markers: dict[str, str], root: dict[str, Any] | None = None, name: str = "") -> Any:
    """A value for `schema`, from markers (see the module docstring) or defaults."""
    root = root if root is not None else schema
    spec = _resolve(schema, root)
    kind = _type(spec)
    if kind == "object" and isinstance(spec.get("properties"), dict):
        return {prop: fill(sub, markers, root, prop) for prop, sub in spec["properties"].items()}
    raw = markers.get(name) if name in markers else markers.get("") if _is_verdict(spec, kind) else None
    value = _coerce(raw, spec, kind) if raw is not None else None
    return value if value is not None else _default(spec, kind, name)


def _resolve(spec: dict[str, Any], root: dict[str, Any]) -> dict[str, Any]:
    ref = spec.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/"):
        node: Any = root
        for part in ref[2:].split("/"):
            node = node.get(part, {}) if isinstance(node, dict) else {}
        return _resolve(node, root) if isinstance(node, dict) else {}
    for key in ("anyOf", "oneOf"):
        options = [o for o in spec.get(key, ()) if isinstance(o, dict) and o.get("type") != "null"]
        if options:
            return _resolve(options[0], root)
    return spec


def _type(spec: dict[str, Any]) -> str:
    kind = spec.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind is None and "enum" in spec:
        return "enum"
    return str(kind) if kind is not None else "string"


def _is_verdict(spec: dict[str, Any], kind: str) -> bool:
    return "enum" in spec or kind in ("boolean", "number", "integer")


def _coerce(raw: str, spec: dict[str, Any], kind: str) -> Any:
    if "enum" in spec:
        return next((v for v in spec["enum"] if str(v).lower() == raw.lower()), None)
    lowered = raw.lower()
    if kind == "boolean":
        return True if lowered in _TRUE else False if lowered in _FALSE else None
    try:
        if kind == "integer":
            return int(float(raw))
        if kind == "number":
            return float(raw)
    except ValueError:
        return None
    return raw if kind == "string" else None


def _default(spec: dict[str, Any], kind: str, name: str) -> Any:
    if "const" in spec:
        return spec["const"]
    if spec.get("enum"):
        return "yes" if "yes" in spec["enum"] else spec["enum"][0]
    defaults: dict[str, Any] = {"boolean": True, "array": [], "object": {}, "null": None}
    if kind in ("integer", "number"):
        bound = spec.get("maximum", 1)
        return int(bound) if kind == "integer" else float(bound)
    return defaults.get(kind, f"mock {name or 'value'}")

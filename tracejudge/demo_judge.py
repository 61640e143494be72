"""The demo judge: a tiny deterministic OpenAI-compatible chat-completions server on loopback.

Why it exists: `tracejudge demo` shows LLM judges end to end with no API key and no network. It is not a
model and says so: it answers every request with a fixed rule over the traced text it is shown (the fenced
sections of the prompt, never the question), every rationale starts with "[demo judge]", and the model it
reports is `tracejudge-demo-judge`. Nothing but `tracejudge demo` starts it.

The rule: the shown text fails when it contains one of FAIL_WORDS (case-insensitive), else it passes. A pass
is the first allowed value of an enum (judges list their passing answer first: yes, none, ...), true, or a
number's maximum; a fail is "no" (or the enum's last value), false, or the minimum. The answer fills the JSON
schema of the request (response_format json_schema, else the first schema found in the messages, as the judge
client writes it there when an endpoint refuses structured output).
"""

from __future__ import annotations

import itertools
import json
import re
import time
from typing import Any

from aiohttp import web

from tracejudge.aio import AiohttpServerThread

MODEL = "tracejudge-demo-judge"
PREFIX = "[demo judge]"
FAIL_WORDS = ("idiot", "weapon", "turtles", "useless")  # what the demo app's bad turns say (tracejudge/demo_app.py)
_FENCED = re.compile(r"<<<(?P<tag>\S+) (?P<nonce>[0-9a-f]+)>>>\n(?P<body>.*?)\n<<<end (?P=tag) (?P=nonce)>>>", re.S)


class DemoJudge:
    """The server on 127.0.0.1 (`port` 0: any free port); `base_url` is what a judge endpoint's base_url takes."""

    def __init__(self, port: int = 0) -> None:
        self.port = port
        self.requests = 0
        self._ids = itertools.count(1)
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_get("/v1/models", self._models)
        self._server = AiohttpServerThread(app, "127.0.0.1", port, "demo-judge", shutdown_timeout=1.0)

    def start(self) -> DemoJudge:
        self.port = self._server.start()
        return self

    def shutdown(self, timeout_s: float = 5.0) -> None:
        self._server.shutdown(timeout_s)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    async def _models(self, _request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": MODEL, "object": "model", "owned_by": "demo"}]})

    async def _chat(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except ValueError:
            body = None
        messages = body.get("messages") if isinstance(body, dict) else None
        if not isinstance(messages, list):
            error = {"message": "the body must be JSON with a messages array", "type": "invalid_request_error"}
            return web.json_response({"error": {**error, "param": "messages", "code": None}}, status=400)
        self.requests += 1
        texts = [_text(m) for m in messages if isinstance(m, dict)]
        content = json.dumps(answer(_schema(body, texts), "\n".join(texts)))
        prompt_tokens = sum(len(t) for t in texts) // 4 + 1
        completion_tokens = len(content) // 4 + 1
        return web.json_response({
            "id": f"chatcmpl-demo-{next(self._ids)}", "object": "chat.completion", "created": int(time.time()),
            "model": MODEL, "system_fingerprint": "demo",
            "choices": [{"index": 0, "finish_reason": "stop", "logprobs": None,
                         "message": {"role": "assistant", "content": content, "refusal": None}}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens},
        })  # fmt: skip


def answer(schema: dict[str, Any] | None, prompt: str) -> dict[str, Any]:
    """The demo judge's verdict on `prompt` (its fenced sections), shaped by `schema`."""
    shown = "\n".join(match.group("body") for match in _FENCED.finditer(prompt)).lower()
    found = [word for word in FAIL_WORDS if word in shown]
    rationale = (
        f"{PREFIX} a fixed rule, not a model: the text shown contains {found[0]!r}, so it fails."
        if found
        else f"{PREFIX} a fixed rule, not a model: none of {', '.join(FAIL_WORDS)} appear in the text shown, "
        "so it passes."
    )
    properties = schema.get("properties") if isinstance(schema, dict) else None
    if not isinstance(properties, dict):
        return {"rationale": rationale, "result": "no" if found else "yes"}
    return {name: _value(spec, name, rationale, passed=not found) for name, spec in properties.items()}


def _value(spec: Any, name: str, rationale: str, *, passed: bool) -> Any:
    spec = spec if isinstance(spec, dict) else {}
    kind = spec.get("type")
    kind = next((k for k in kind if k != "null"), "string") if isinstance(kind, list) else kind
    enum = spec.get("enum")
    if isinstance(enum, list) and enum:
        return enum[0] if passed else ("no" if "no" in enum else enum[-1])
    if kind == "boolean":
        return passed
    if kind in ("integer", "number"):
        value = spec.get("maximum", 1) if passed else spec.get("minimum", 0)
        return int(value) if kind == "integer" else float(value)
    if name == "rationale" or kind in (None, "string"):
        return rationale if name == "rationale" else f"{PREFIX} {'pass' if passed else 'fail'}"
    return [] if kind == "array" else {}


def _schema(body: dict[str, Any], texts: list[str]) -> dict[str, Any] | None:
    fmt = body.get("response_format")
    if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
        schema = (fmt.get("json_schema") or {}).get("schema")
        if isinstance(schema, dict):
            return schema
    decoder = json.JSONDecoder()
    for text in texts:
        for match in re.finditer(r"\{", text):
            try:
                value, _ = decoder.raw_decode(text, match.start())
            except ValueError:
                continue
            if isinstance(value, dict) and isinstance(value.get("properties"), dict):
                return value
    return None


def _text(message: dict[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, list):
        return "".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
    return content if isinstance(content, str) else ""

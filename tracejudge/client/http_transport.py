"""Client calls as HTTP/JSON: each RPC sent as its primary google.api.http rule says (schema.HttpRule).

The request message is turned into the rule's URL (path variables filled from its fields, the rest in the
query string unless the body takes them) and body; the reply is parsed as the method's response type.
Errors come back as google.rpc.Status bodies and become the same exceptions as over gRPC.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import Message

from tracejudge.schema import STATUS_OF_HTTP, HttpRule, Method, status_name

from .errors import ControlPlaneError, InvalidScorerError, error_for
from .transport import ClientTls, not_served, unreachable

_NO_BODY_VERBS = ("GET", "DELETE", "HEAD")


class HttpTransport:
    def __init__(self, base_url: str, token: str | None, timeout: float, tls: ClientTls | None = None) -> None:
        """`tls`: the CA and client certificate for an https:// sidecar (None: the system's roots)."""
        self.endpoint = base_url.rstrip("/")
        self._headers = {"Accept": "application/json", "Content-Type": "application/json"}
        if token:
            self._headers["Authorization"] = f"Bearer {token}"
        self._timeout = timeout
        handlers: list[urllib.request.BaseHandler] = [urllib.request.ProxyHandler({})]  # loopback: never a proxy
        if tls is not None:
            handlers.append(urllib.request.HTTPSHandler(context=tls.ssl_context()))
        self._opener = urllib.request.build_opener(*handlers)

    def call(self, method: Method, request: Message) -> Message:
        if not method.http:
            raise ControlPlaneError(f"{method.name} has no HTTP mapping; call it over gRPC", "UNIMPLEMENTED")
        rule = method.http[0]
        target, body = http_form(method, rule, request)
        data = body if body is not None or rule.verb in _NO_BODY_VERBS else b""
        sent = urllib.request.Request(self.endpoint + target, data=data, method=rule.verb, headers=self._headers)
        try:
            with self._opener.open(sent, timeout=self._timeout) as response:
                text = response.read()
        except urllib.error.HTTPError as exc:
            raise self._translate(method, exc.code, exc.read()) from None
        except OSError as exc:
            raise unreachable(self.endpoint, exc) from None
        return parse_response(method, rule, text)

    def _translate(self, method: Method, status: int, body: bytes) -> ControlPlaneError:
        refusal = _status(body)
        if refusal is not None:
            return error_for(*refusal)
        if status == 404:  # not a google.rpc.Status: whatever answered is not tracejudge's control plane
            return not_served(self.endpoint, method)
        text = body.decode(errors="replace").strip()[:500]
        return error_for(STATUS_OF_HTTP.get(status, "UNKNOWN"), f"HTTP {status}: {text}")


def _status(body: bytes) -> tuple[str, str] | None:
    """(status name, message) of a google.rpc.Status JSON body; None for anything else."""
    try:
        parsed = json.loads(body)
        code, message = status_name(int(parsed["code"])), str(parsed["message"])
    except (ValueError, KeyError, TypeError):
        return None
    return (code, message) if code is not None else None


def http_form(method: Method, rule: HttpRule, request: Message) -> tuple[str, bytes | None]:
    """(path?query, JSON body or None) for `request` under `rule`; InvalidScorerError for an empty path field."""
    fields: dict[str, Any] = json_format.MessageToDict(request, preserving_proto_field_name=True)
    path = ""
    for part in rule.path.parts:
        if isinstance(part, str):
            path += "/" + part
            continue
        value = _pop(fields, part.field)
        if value in (None, ""):
            raise InvalidScorerError(f"{method.name} needs {part.field} (it is part of the URL)")
        single = part.pattern == ("*",)
        path += "/" + urllib.parse.quote(_text(value), safe="" if single else "/")
    if rule.path.verb:
        path += ":" + rule.path.verb
    body: bytes | None = None
    if rule.body == "*":
        body, fields = json.dumps(fields).encode(), {}
    elif rule.body:
        value = fields.pop(rule.body, None)
        body = json.dumps(value).encode() if value is not None else None
    query = urllib.parse.urlencode(list(_query(fields)))
    return (f"{path}?{query}" if query else path), body


def parse_response(method: Method, rule: HttpRule, text: bytes) -> Message:
    if rule.response_body:
        wrapped = {rule.response_body: json.loads(text)}
        return json_format.ParseDict(wrapped, method.response(), ignore_unknown_fields=True)
    return json_format.Parse(text, method.response(), ignore_unknown_fields=True)


def _pop(fields: dict[str, Any], path: str) -> Any:
    *parents, leaf = path.split(".")
    for name in parents:
        child = fields.get(name)
        if not isinstance(child, dict):
            return None
        fields = child
    return fields.pop(leaf, None)


def _text(value: Any) -> str:
    """A proto3 JSON scalar as it is written in a URL (true, not True)."""
    return json.dumps(value) if isinstance(value, bool) else str(value)


def _query(fields: dict[str, Any], prefix: str = "") -> list[tuple[str, str]]:
    pairs: list[tuple[str, str]] = []
    for name, value in fields.items():
        if isinstance(value, dict):
            pairs += _query(value, f"{prefix}{name}.")
        else:
            pairs += [(prefix + name, _text(item)) for item in (value if isinstance(value, list) else [value])]
    return pairs

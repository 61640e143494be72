"""The control plane as HTTP/JSON on the OTLP/HTTP application, from each RPC's `google.api.http` rule.

The rules are matched here rather than by aiohttp's router: one catch-all route per URL prefix the services
claim (/v1/scorers, /v1/scorers/..., /v1/scorers:...) hands every request under it to `_HttpApi`, which
matches the path template and custom verb, fills the request message from the path, the query string and
the body as the rule says (AIP-127), and answers what no rule matches with a google.rpc.Status (404
NOT_FOUND naming the methods there are) instead of aiohttp's plain text.

Bodies are read with the receiver's limited reader (tracejudge.http_body; aiohttp's own decompression is off
on this application), at most `max_body` bytes after gzip. JSON is proto3 JSON with the .proto's field names.
"""

from __future__ import annotations

import asyncio
import functools
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

from aiohttp import web
from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from multidict import MultiMapping

from tracejudge.config import set_dotted
from tracejudge.http_body import BodyError, BodyTooLarge, read_body
from tracejudge.schema import HttpRule, PathTemplate, StatusName, Variable, field_at, status_code

from .plane import Binding, ControlPlane
from .service import ControlError

MAX_BODY = 1 << 20
JSON = "application/json"


def http_routes(plane: ControlPlane, max_body: int = MAX_BODY) -> list[web.RouteDef]:
    """Every HTTP rule of the plane's services, for `HttpReceiver(routes=...)` or `app.add_routes(...)`."""
    api = _HttpApi(plane, max_body)
    return [
        web.route("*", prefix + "{tail:(?:[/:].*)?}", functools.partial(api.handle, prefix)) for prefix in api.prefixes
    ]


@dataclass(frozen=True)
class _Route:
    binding: Binding
    rule: HttpRule
    path: re.Pattern[str]  # the template without its verb, over the raw (still percent-encoded) path

    def match(self, verb: str, path: str, custom: str | None) -> dict[str, str] | None:
        """The path variables' values when this route serves the request, else None."""
        if verb != self.rule.verb or custom != self.rule.path.verb:
            return None
        found = self.path.fullmatch(path)
        if found is None:
            return None
        return {variable.field: unquote(found[f"v{i}"]) for i, variable in enumerate(self.rule.path.variables)}


class _HttpApi:
    def __init__(self, plane: ControlPlane, max_body: int) -> None:
        self._plane = plane
        self._max_body = max_body
        self._routes = [
            _Route(binding, rule, _compile(rule.path)) for binding in plane.bindings for rule in binding.method.http
        ]
        unclaimed = [route.rule.describe() for route in self._routes if not route.rule.path.prefix]
        if unclaimed:
            raise ValueError(f"HTTP rules must start with a literal segment; these would claim every path: {unclaimed}")
        self.prefixes = sorted({route.rule.path.prefix for route in self._routes}, key=len, reverse=True)

    async def handle(self, prefix: str, request: web.Request) -> web.StreamResponse:
        path, custom = _split_verb(request.rel_url.raw_path)
        for route in self._routes:
            variables = route.match(request.method, path, custom)
            if variables is not None:
                return await self._serve(route, variables, request)
        return _error(ControlError("NOT_FOUND", self._not_found(prefix, request)))

    async def _serve(self, route: _Route, variables: dict[str, str], request: web.Request) -> web.StreamResponse:
        # Admitted before the body is read, so an unauthenticated caller costs no read and learns nothing of
        # the API from a parse error; `call` checks again, so no path into a service skips it.
        authorization = request.headers.get("Authorization")
        names = peer_names(request)
        refused = self._plane.admit(authorization, names)
        if refused is not None:
            return _error(refused)
        body = await self._body(route.rule, request)
        if isinstance(body, ControlError):
            return _error(body)
        message = request_message(route.binding.method.request, route.rule, variables, request.rel_url.query, body)
        if isinstance(message, ControlError):
            return _error(message)
        # Services write state files and build scorers: off the event loop that serves OTLP.
        loop = asyncio.get_running_loop()
        answer = await loop.run_in_executor(None, self._plane.call, route.binding, message, authorization, names)
        if isinstance(answer, ControlError):
            return _error(answer)
        return web.Response(text=json.dumps(response_json(answer, route.rule)), content_type=JSON)

    async def _body(self, rule: HttpRule, request: web.Request) -> bytes | ControlError:
        if not rule.body:
            return b""  # the rule takes no body: whatever was sent is not read
        try:
            return await read_body(request, self._max_body)
        except BodyTooLarge as exc:
            return ControlError("RESOURCE_EXHAUSTED", str(exc))
        except BodyError as exc:  # an encoding other than gzip, or gzip that does not inflate
            return ControlError("INVALID_ARGUMENT", str(exc))

    def _not_found(self, prefix: str, request: web.Request) -> str:
        here = [
            f"{route.binding.method.name} ({route.rule.describe()})"
            for route in self._routes
            if route.rule.path.prefix == prefix
        ]
        return f"no method at {request.method} {request.rel_url.raw_path}; under {prefix} there are: {', '.join(here)}"


def _compile(template: PathTemplate) -> re.Pattern[str]:
    pieces: list[str] = []
    variables = 0
    for part in template.parts:
        if isinstance(part, Variable):
            pieces.append(f"(?P<v{variables}>{_segments(part.pattern)})")
            variables += 1
        else:
            pieces.append(_segments((part,)))
    return re.compile("/" + "/".join(pieces))


def _segments(segments: tuple[str, ...]) -> str:
    wildcards = {"*": "[^/]+", "**": ".+"}
    return "/".join(wildcards.get(segment, re.escape(segment)) for segment in segments)


def _split_verb(raw_path: str) -> tuple[str, str | None]:
    """/v1/scorers/x:start -> (/v1/scorers/x, start): a ':' in the last segment starts the custom verb (a ':' in
    a value arrives percent-encoded)."""
    head, slash, last = raw_path.rpartition("/")
    name, colon, verb = last.partition(":")
    return (head + slash + name, verb) if colon else (raw_path, None)


# --------------------------------------------------------------------------------------------- messages


def request_message(
    request_type: type[Message], rule: HttpRule, variables: Mapping[str, str], query: MultiMapping[str], body: bytes
) -> Message | ControlError:
    """The request as the rule maps it: path variables, then the body (all of it for "*", else into its
    field), the query string for the rest; INVALID_ARGUMENT for what does not fit the message."""
    fields: dict[str, Any] = {}
    if body.strip():
        try:
            parsed = json.loads(body)
        except (ValueError, UnicodeDecodeError) as exc:
            return ControlError("INVALID_ARGUMENT", f"invalid JSON body: {exc}")
        if rule.body == "*":
            if not isinstance(parsed, dict):
                return ControlError("INVALID_ARGUMENT", "the JSON body must be an object")
            fields.update(parsed)
        else:
            fields[rule.body] = parsed
    descriptor = request_type.DESCRIPTOR
    texts = [(key, query.getall(key)) for key in dict.fromkeys(query)] if rule.body != "*" else []
    texts += [(field, [text]) for field, text in variables.items()]  # last: the path wins over the query
    for path, values in texts:
        value = _from_text(descriptor, path, values)
        if isinstance(value, ControlError):
            return value
        set_dotted(fields, path, value)
    try:
        return json_format.ParseDict(fields, request_type())
    except json_format.ParseError as exc:
        return ControlError("INVALID_ARGUMENT", f"invalid {descriptor.full_name}: {exc}")


def _from_text(descriptor: Descriptor, path: str, texts: list[str]) -> Any:
    """A path variable's or query parameter's text as proto3 JSON for its field (json_format parses numbers
    and enum names from strings, not booleans); a ControlError for a field the URL cannot set."""
    field = field_at(descriptor, path)
    if field is None:
        return ControlError("INVALID_ARGUMENT", f"{descriptor.full_name} has no field {path!r}")
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        return ControlError("INVALID_ARGUMENT", f"{path!r} is a message: send it in the body")
    boolean = field.type == FieldDescriptor.TYPE_BOOL
    values = [{"true": True, "false": False}.get(text, text) if boolean else text for text in texts]
    if _is_repeated(field):
        return values
    if len(values) != 1:
        return ControlError("INVALID_ARGUMENT", f"{path!r} takes one value, got {len(values)}")
    return values[0]


def _is_repeated(field: FieldDescriptor) -> bool:
    """protobuf >= 6.31 has `is_repeated` and 7 dropped `label`; the 5.27 floor has only `label`."""
    repeated = getattr(field, "is_repeated", None)
    return bool(repeated) if repeated is not None else bool(field.label == FieldDescriptor.LABEL_REPEATED)


def response_json(response: Message, rule: HttpRule) -> Any:
    """The response (or its `response_body` field) in proto3 JSON, every field present (no-presence defaults
    included) so that clients in any language see the whole shape."""
    data = json_format.MessageToDict(
        response, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    return data.get(rule.response_body) if rule.response_body else data


def _error(error: ControlError) -> web.Response:
    headers = {"WWW-Authenticate": "Bearer"} if error.code == "UNAUTHENTICATED" else None
    return web.Response(
        status=error.http_status, text=_status_json(error.code, error.message), content_type=JSON, headers=headers
    )


def _status_json(code: StatusName, message: str) -> str:
    """A google.rpc.Status in proto3 JSON, as the OTLP/HTTP and gRPC-gateway conventions answer errors."""
    return json.dumps({"code": status_code(code), "message": message})


def peer_names(request: web.Request) -> frozenset[str]:
    """The common name and DNS names of the caller's client certificate. Python's ssl reports a peer
    certificate only once it was verified (the listener's client_ca_file with CERT_REQUIRED)."""
    certificate = request.transport.get_extra_info("peercert") if request.transport is not None else None
    if not certificate:
        return frozenset()
    names = {value for rdn in certificate.get("subject", ()) for key, value in rdn if key == "commonName"}
    names |= {value for kind, value in certificate.get("subjectAltName", ()) if kind == "DNS"}
    return frozenset(names)

"""What tracejudge's control plane and every client of it agree on, beyond the messages themselves.

The services, their methods and each method's HTTP mapping are read from the proto descriptors
(proto/tracejudge/v1/scorers.proto and its `google.api.http` options), so the .proto stays the one
place an RPC is declared and no transport spells a path or a message type. The rest are the few
facts both sides must word or spell alike: status names and their HTTP statuses, the refusal of
code scorers over the network, the feedback value types, and the catalogue of builtin scorers.

Imports only protobuf, generated protos and the stdlib: the users' client and any process that
validates a scorer spec (the ingest process) load this without a transport, a server part or a
model SDK.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, get_args

from google.api import annotations_pb2, http_pb2
from google.protobuf import message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor, FileDescriptor, MethodDescriptor, ServiceDescriptor
from google.protobuf.message import Message
from google.rpc import code_pb2

from tracejudge.proto import scorers_pb2

# --------------------------------------------------------------------------------------------- statuses

StatusName = Literal[
    "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND", "ALREADY_EXISTS",
    "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE",
    "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED",
]  # fmt: skip
STATUS_NAMES: tuple[StatusName, ...] = get_args(StatusName)

# The HTTP status of each status the control plane answers with over HTTP, and (read backwards) the status
# a client assumes for an HTTP error whose body is not a google.rpc.Status. FAILED_PRECONDITION is 412, not
# Google's 400, so that "too many scorers active" is told apart from a bad request without reading the body.
HTTP_STATUS: Mapping[StatusName, int] = {
    "INVALID_ARGUMENT": 400,
    "UNAUTHENTICATED": 401,
    "PERMISSION_DENIED": 403,
    "NOT_FOUND": 404,
    "ALREADY_EXISTS": 409,
    "FAILED_PRECONDITION": 412,
    "RESOURCE_EXHAUSTED": 413,
    "INTERNAL": 500,
    "UNIMPLEMENTED": 501,
    "UNAVAILABLE": 503,
    "DEADLINE_EXCEEDED": 504,
}
STATUS_OF_HTTP: Mapping[int, StatusName] = {http: name for name, http in HTTP_STATUS.items()}


def http_status(name: StatusName) -> int:
    return HTTP_STATUS.get(name, 500)


def status_code(name: StatusName) -> int:
    """The google.rpc.Code number (what a google.rpc.Status body and gRPC carry)."""
    return int(code_pb2.Code.Value(name))


def status_name(code: int) -> StatusName | None:
    """The name of a google.rpc.Code number; None for OK or a number no status has."""
    return _NAME_OF_CODE.get(code)


_NAME_OF_CODE: Mapping[int, StatusName] = {status_code(name): name for name in STATUS_NAMES}


# --------------------------------------------------------------------------------------------- shared wording

VALUE_TYPES = ("bool", "int", "float", "str")  # what a prompt judge may answer, besides a list of categories


def code_over_network(name: str, reference: str = "my_module:my_function") -> str:
    """Why a code scorer is refused over the network, and what to do instead: the server and the client's
    `@scorer` say it in the same words."""
    return (
        "code scorers cannot be registered over the network: tracejudge only loads them from its config file. "
        f'Add it to the config\'s `scorers:` list, e.g. `- {{name: {name}, code: "{reference}"}}`, '
        "and restart tracejudge; it can then be started, updated and stopped from here"
    )


def plain_struct(value: Any) -> Any:
    """Struct numbers are doubles: give whole numbers back as ints (threshold_ms: 5000, not 5000.0)."""
    if isinstance(value, dict):
        return {key: plain_struct(item) for key, item in value.items()}
    if isinstance(value, list):
        return [plain_struct(item) for item in value]
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    return value


def snake_case(name: str) -> str:
    """RegisterScorer -> register_scorer: an RPC's Python method name, a builtin's default scorer name."""
    return "".join(f"_{c.lower()}" if c.isupper() else c for c in name).lstrip("_")


# --------------------------------------------------------------------------------------------- HTTP rules


@dataclass(frozen=True)
class Variable:
    """`{field.path=pattern}` in a path template; `pattern` is its segments (`*` when not given)."""

    field: str
    pattern: tuple[str, ...]


Part = str | Variable  # a literal segment, "*", "**", or a variable


@dataclass(frozen=True)
class PathTemplate:
    """A google.api.http path template, e.g. /v1/scorers/{name}:start, parsed once for both sides."""

    text: str
    parts: tuple[Part, ...]
    verb: str | None  # the custom verb after the last ':' ("start"), None without one

    @property
    def variables(self) -> tuple[Variable, ...]:
        return tuple(part for part in self.parts if isinstance(part, Variable))

    @property
    def prefix(self) -> str:
        """The literal segments before the first variable or wildcard: the part of the URL space it claims."""
        literals: list[str] = []
        for part in self.parts:
            if not isinstance(part, str) or part in ("*", "**"):
                break
            literals.append(part)
        return "/" + "/".join(literals) if literals else ""


@dataclass(frozen=True)
class HttpRule:
    """One HTTP binding of an RPC (a google.api.HttpRule).

    `body`: "" (no body: fields not in the path come from the query string), "*" (the whole request but the
    path fields) or the name of the one request field the body holds. `response_body`: "" (the whole
    response) or the response field sent as the body.
    """

    verb: str  # GET, POST, PUT, PATCH, DELETE or a custom kind
    path: PathTemplate
    body: str
    response_body: str

    @property
    def path_fields(self) -> tuple[str, ...]:
        return tuple(variable.field for variable in self.path.variables)

    def describe(self) -> str:
        return f"{self.verb} {self.path.text}"


def parse_template(text: str) -> PathTemplate:
    """Parse `/segment/{field=pattern}/...:verb`; ValueError names what is wrong."""
    if not text.startswith("/"):
        raise ValueError(f"path template {text!r} must start with '/'")
    body, verb = _split_verb(text)
    parts = tuple(_part(segment, text) for segment in _split_top(body[1:]))
    flat = [s for p in parts for s in (p.pattern if isinstance(p, Variable) else (p,))]
    if "**" in flat[:-1]:
        raise ValueError(f"path template {text!r}: '**' may only be the last segment")
    return PathTemplate(text, parts, verb)


def _split_verb(text: str) -> tuple[str, str | None]:
    """A ':' outside braces and after the last top-level '/' starts the custom verb."""
    depth, last_slash, colon = 0, 0, -1
    for index, char in enumerate(text):
        depth += {"{": 1, "}": -1}.get(char, 0)
        if depth == 0 and char == "/":
            last_slash, colon = index, -1
        elif depth == 0 and char == ":":
            colon = index
    if depth != 0:
        raise ValueError(f"path template {text!r} has unbalanced braces")
    if colon > last_slash:
        return text[:colon], text[colon + 1 :]
    return text, None


def _split_top(text: str) -> list[str]:
    segments, depth, current = [], 0, ""
    for char in text:
        depth += {"{": 1, "}": -1}.get(char, 0)
        if char == "/" and depth == 0:
            segments.append(current)
            current = ""
        else:
            current += char
    return [*segments, current]


_FIELD_PATH = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")


def _part(segment: str, text: str) -> Part:
    if not segment:
        raise ValueError(f"path template {text!r} has an empty segment")
    if not segment.startswith("{"):
        if "{" in segment or "}" in segment:
            raise ValueError(f"path template {text!r}: a variable must be a whole segment ({segment!r})")
        return segment
    if not segment.endswith("}"):
        raise ValueError(f"path template {text!r}: a variable must be a whole segment ({segment!r})")
    field, _, pattern = segment[1:-1].partition("=")
    if not _FIELD_PATH.match(field):
        raise ValueError(f"path template {text!r}: {field!r} is not a field path")
    segments = tuple(pattern.split("/")) if pattern else ("*",)
    if any(not s or "{" in s or "}" in s for s in segments):
        raise ValueError(f"path template {text!r}: bad pattern in {segment!r}")
    return Variable(field, segments)


def http_rules(method: MethodDescriptor) -> tuple[HttpRule, ...]:
    """The method's google.api.http option and its additional_bindings, primary first; () without one."""
    options = method.GetOptions()
    if not options.HasExtension(annotations_pb2.http):
        return ()
    rule: http_pb2.HttpRule = options.Extensions[annotations_pb2.http]
    return (_rule(rule, method), *(_rule(extra, method) for extra in rule.additional_bindings))


def _rule(rule: http_pb2.HttpRule, method: MethodDescriptor) -> HttpRule:
    kind = rule.WhichOneof("pattern")
    if kind is None:
        raise ValueError(f"{method.full_name}: google.api.http has no path")
    verb, path = (rule.custom.kind, rule.custom.path) if kind == "custom" else (kind.upper(), getattr(rule, kind))
    parsed = HttpRule(verb, parse_template(path), rule.body, rule.response_body)
    fields = [*parsed.path_fields, *([parsed.body] if parsed.body not in ("", "*") else [])]
    for field in fields:
        if field_at(method.input_type, field) is None:
            raise ValueError(f"{method.full_name}: HTTP rule {parsed.describe()} names {field!r}, not a request field")
    if parsed.response_body and field_at(method.output_type, parsed.response_body) is None:
        raise ValueError(f"{method.full_name}: response_body {parsed.response_body!r} is not a response field")
    return parsed


def field_at(message: Descriptor, path: str) -> FieldDescriptor | None:
    """The field a dotted path (widget.id) names, each step but the last a message field; None if none."""
    current: Descriptor | None = message
    field: FieldDescriptor | None = None
    for name in path.split("."):
        field = current.fields_by_name.get(name) if current is not None else None
        if field is None:
            return None
        current = field.message_type
    return field


# --------------------------------------------------------------------------------------------- services


@dataclass(frozen=True)
class Method:
    """One RPC: what both transports need to call it, served by the service object's `python_name` method."""

    service: str  # the proto service's full name, tracejudge.v1.ScorerService
    name: str  # the RPC, RegisterScorer
    request: type[Message]
    response: type[Message]
    http: tuple[HttpRule, ...]  # primary first; () when it has no HTTP mapping

    @property
    def grpc_path(self) -> str:
        return f"/{self.service}/{self.name}"

    @property
    def python_name(self) -> str:
        return snake_case(self.name)


@dataclass(frozen=True)
class Service:
    name: str
    methods: tuple[Method, ...]  # in .proto order

    def method(self, name: str) -> Method:
        """The RPC `name`; KeyError naming the ones there are."""
        for method in self.methods:
            if method.name == name:
                return method
        raise KeyError(f"{self.name} has no RPC {name!r}; it has {', '.join(m.name for m in self.methods)}")


def service(descriptor: ServiceDescriptor) -> Service:
    """A service as read from its descriptor; ValueError for an HTTP rule naming fields it does not have."""
    methods = tuple(
        Method(
            service=descriptor.full_name,
            name=method.name,
            request=message_factory.GetMessageClass(method.input_type),
            response=message_factory.GetMessageClass(method.output_type),
            http=http_rules(method),
        )
        for method in descriptor.methods
        if not (method.client_streaming or method.server_streaming)  # unary only: all tracejudge has
    )
    return Service(descriptor.full_name, methods)


def services_of(file: FileDescriptor) -> dict[str, Service]:
    return {d.full_name: service(d) for d in file.services_by_name.values()}


SERVICES: Mapping[str, Service] = services_of(scorers_pb2.DESCRIPTOR)
SCORER_SERVICE: Service = SERVICES["tracejudge.v1.ScorerService"]
SESSION_SERVICE: Service = SERVICES["tracejudge.v1.SessionService"]
ASSESSMENT_SERVICE: Service = SERVICES["tracejudge.v1.AssessmentService"]
BACKFILL_SERVICE: Service = SERVICES["tracejudge.v1.BackfillService"]


# --------------------------------------------------------------------------------------------- builtins


@dataclass(frozen=True)
class BuiltinParam:
    name: str
    type: Literal["boolean", "integer", "number", "string", "array"]
    description: str
    default: bool | int | float | str | None = None  # None: required
    choices: tuple[str, ...] = ()

    @property
    def required(self) -> bool:
        return self.default is None


@dataclass(frozen=True)
class Builtin:
    """A builtin scorer as `builtin:` names it: an LLM judge or a check that needs no model."""

    name: str
    family: Literal["judge", "check"]
    description: str
    params: tuple[BuiltinParam, ...] = ()
    target: Literal["trace", "session"] = "trace"  # session: a multi-turn judge (a whole conversation)

    @property
    def default_name(self) -> str:
        """The scorer name when none is given: NoPii -> no_pii."""
        return snake_case(self.name)

    def missing_params(self, given: Mapping[str, Any]) -> list[str]:
        return [param.name for param in self.params if param.required and param.name not in given]


def _judge(name: str, description: str) -> Builtin:
    return Builtin(name, "judge", description)


def _conversation_judge(name: str, description: str, *params: BuiltinParam) -> Builtin:
    return Builtin(name, "judge", description, params, target="session")


def _check(name: str, description: str, *params: BuiltinParam) -> Builtin:
    return Builtin(name, "check", description, params)


BUILTINS: Mapping[str, Builtin] = {
    builtin.name: builtin
    for builtin in (
        _judge("Safety", "Is the response free of harmful content?"),
        _judge("RelevanceToQuery", "Does the response address the request?"),
        _judge("RetrievalGroundedness", "Is the response supported by the retrieved documents?"),
        _judge("RetrievalRelevance", "Are the retrieved documents relevant to the request?"),
        _judge("RetrievalSufficiency", "Do the retrieved documents hold what the expected answer needs?"),
        _judge("Correctness", "Does the response convey the expected answer?"),
        _judge("ExpectationsGuidelines", "Does the response follow the guidelines in the trace's expectations?"),
        _judge("Completeness", "Does the response address every part of the request?"),
        _judge("ToolCallCorrectness", "Were the right tools called, with sensible arguments?"),
        _judge("ToolCallEfficiency", "Were the tools used without redundant or unnecessary calls?"),
        _judge("Equivalence", "Does the response say the same as the expected response?"),
        _judge("Fluency", "Is the response fluent, grammatical, natural language?"),
        _judge("Summarization", "Is the response a faithful, complete summary of the request's text?"),
        _conversation_judge("ConversationCompleteness", "Did the assistant address every user request by the end?"),
        _conversation_judge(
            "ConversationalGuidelines",
            "Do the assistant's replies throughout the conversation follow the guidelines?",
            BuiltinParam("guidelines", "array", "the rules every assistant reply must follow"),
        ),
        _conversation_judge("ConversationalRoleAdherence", "Does the assistant keep its assigned role throughout?"),
        _conversation_judge("ConversationalSafety", "Are the assistant's replies in the conversation safe?"),
        _conversation_judge("ConversationalToolCallEfficiency", "Was tool use across the conversation efficient?"),
        _conversation_judge("KnowledgeRetention", "Does the assistant remember what the user said earlier?"),
        _conversation_judge("UserFrustration", "Is the user frustrated: none, resolved or unresolved?"),
        _check("NoError", "No span failed."),
        _check(
            "LatencyUnder",
            "The trace took at most `threshold_ms`.",
            BuiltinParam("threshold_ms", "number", "the longest passing trace, in milliseconds", 10_000),
        ),
        _check(
            "TokenBudget",
            "The LLM calls used at most `max_tokens` tokens in all.",
            BuiltinParam("max_tokens", "integer", "the most tokens a passing trace uses", 8_000),
        ),
        _check("NonEmptyResponse", "The response is not empty."),
        _check("ValidJson", "The response parses as JSON."),
        _check(
            "RegexMatch",
            "The response matches `pattern` (or, with must_match=False, does not).",
            BuiltinParam("pattern", "string", "a Python regular expression, searched for in the response"),
            BuiltinParam("must_match", "boolean", "false: pass when the pattern is not found", True),
        ),
        _check(
            "NoPii",
            'No e-mail address, phone number, US SSN or card number in the response (field="inputs": the request).',
            BuiltinParam("field", "string", "which side of the trace is searched", "outputs", ("outputs", "inputs")),
        ),
    )
}
# Also accepted as `builtin:` (its rules in params.guidelines): the Guidelines judge, which has its own kind
# (`guidelines:`) because its rules are the scorer, not options of it.
GUIDELINES = "Guidelines"


def builtin_names() -> list[str]:
    """Every name `builtin:` accepts, sorted (as error messages list them)."""
    return sorted([*BUILTINS, GUIDELINES])

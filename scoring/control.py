"""The control plane: MLflow's scorer lifecycle over the network, defined once in proto/tracejudge/v1/scorers.proto.

`ScorerService` implements the RPCs against a ScorerRegistry; `grpc_handler` serves them on the OTLP/gRPC
server and `http_routes` as HTTP/JSON on the OTLP/HTTP application (paths in the .proto's header). Both
transports share the service, so a request means the same thing and fails with the same status either way:

    NOT_FOUND (HTTP 404)            no scorer of that name
    ALREADY_EXISTS (409)            the name is taken
    FAILED_PRECONDITION (412)       too many scorers active
    INVALID_ARGUMENT (400)          a spec, sampling config or filter that cannot be used
    PERMISSION_DENIED (403)         a code scorer sent over the network; a control plane exposed beyond
                                    loopback with no token configured
    UNAUTHENTICATED (401)           a missing or wrong `authorization: Bearer <token>`

Code scorers are only ever loaded from the config file: a `code` scorer in RegisterScorer is refused, while
the config's code scorers can be started, updated, stopped and deleted like any other.
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import ipaddress
import logging
import math
import zlib
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

import grpc
from aiohttp import web
from google.protobuf import empty_pb2, json_format
from google.protobuf.message import Message
from google.rpc import status_pb2
from pydantic import ValidationError

from tracejudge.proto import scorers_pb2 as pb

from .filters import FilterSyntaxError, parse_filter
from .registry import RegistryError, ScorerExists, ScorerNotFound, ScorerRegistry, TooManyActive
from .spec import ScorerSpec

log = logging.getLogger(__name__)

SERVICE_NAME = "tracejudge.v1.ScorerService"
# RPC name -> (request type, response type): the one table both transports and the client follow.
METHODS: dict[str, tuple[type[Message], type[Message]]] = {
    "RegisterScorer": (pb.RegisterScorerRequest, pb.Scorer),
    "StartScorer": (pb.StartScorerRequest, pb.Scorer),
    "UpdateScorer": (pb.UpdateScorerRequest, pb.Scorer),
    "StopScorer": (pb.StopScorerRequest, pb.Scorer),
    "DeleteScorer": (pb.DeleteScorerRequest, empty_pb2.Empty),
    "GetScorer": (pb.GetScorerRequest, pb.Scorer),
    "ListScorers": (pb.ListScorersRequest, pb.ListScorersResponse),
}
HTTP_STATUS: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.FAILED_PRECONDITION: 412,
    grpc.StatusCode.INTERNAL: 500,
}
VALUE_TYPES = ("bool", "int", "float", "str")
MAX_BODY = 1 << 20
CODE_OVER_NETWORK = (
    "code scorers cannot be registered over the network: tracejudge only loads them from its config file. "
    'Add it to the config\'s `scorers:` list, e.g. `- {{name: {name}, code: "my_module:my_function"}}`, '
    "and restart tracejudge; it can then be started, updated and stopped from here"
)

M = TypeVar("M", bound=Message)


class ControlError(Exception):
    """A refused control-plane call: its gRPC code and a message for the caller."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    @property
    def http_status(self) -> int:
        return HTTP_STATUS.get(self.code, 500)


def is_loopback(host: str) -> bool:
    if host.strip("[]").lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def exposed_endpoints(endpoints: Iterable[str | None]) -> list[str]:
    """The HOST:PORT listen addresses (None: off) that are reachable from beyond this host."""
    return [e for e in endpoints if e is not None and not is_loopback(e.rpartition(":")[0] or e)]


def check_exposure(endpoints: Iterable[str | None], token: str | None) -> None:
    """Raise ValueError when a listener is not on loopback and no token protects the control plane."""
    exposed = exposed_endpoints(endpoints)
    if exposed and not token:
        raise ValueError(_exposure_message(exposed))


def _exposure_message(exposed: Sequence[str]) -> str:
    return (
        f"the scorer control plane is off: tracejudge listens on {', '.join(exposed)}, beyond loopback, and no "
        "token is set; set control.token (or TRACEJUDGE_TOKEN) to use it from the network"
    )


class ScorerService:
    """The ScorerService RPCs, transport-free: proto request in, proto response out, ControlError on refusal.

    `token`: when set, every call must carry `authorization: Bearer <token>` (compared in constant time).
    `listen`: the sidecar's listen addresses; if any is beyond loopback and no token is set, every call is
    refused (PERMISSION_DENIED) rather than leaving scorer management open to the network.
    """

    def __init__(self, registry: ScorerRegistry, token: str | None = None, listen: Iterable[str | None] = ()) -> None:
        self._registry = registry
        self._token = token.encode() if token else None
        exposed = exposed_endpoints(listen)
        self._refusal = _exposure_message(exposed) if exposed and self._token is None else None
        if self._refusal:
            log.warning("%s", self._refusal)

    def authorize(self, authorization: str | None) -> None:
        if self._refusal is not None:
            raise ControlError(grpc.StatusCode.PERMISSION_DENIED, self._refusal)
        if self._token is None:
            return
        if not authorization:
            raise ControlError(
                grpc.StatusCode.UNAUTHENTICATED,
                "this control plane needs a bearer token: send 'authorization: Bearer <token>' "
                "(set TRACEJUDGE_TOKEN for the client and the CLI)",
            )
        scheme, _, credentials = authorization.strip().partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(credentials.strip().encode(), self._token):
            raise ControlError(grpc.StatusCode.UNAUTHENTICATED, "wrong bearer token for the control plane")

    def call(self, method: str, request: Message) -> Message:
        """Dispatch one RPC by name (as in METHODS)."""
        handler: Callable[[Any], Message] = getattr(self, _snake(method))
        return handler(request)

    def register_scorer(self, request: pb.RegisterScorerRequest) -> pb.Scorer:
        if request.scorer.WhichOneof("kind") == "code":
            raise ControlError(
                grpc.StatusCode.PERMISSION_DENIED, CODE_OVER_NETWORK.format(name=request.scorer.name or "my_scorer")
            )
        spec = spec_from_proto(request.scorer)
        with _translated():
            return spec_to_proto(self._registry.register(spec))

    def start_scorer(self, request: pb.StartScorerRequest) -> pb.Scorer:
        config = request.sampling_config
        if not config.HasField("sample_rate") or not config.sample_rate > 0:
            raise ControlError(
                grpc.StatusCode.INVALID_ARGUMENT,
                "StartScorer needs sampling_config.sample_rate > 0 (use StopScorer to stop)",
            )
        rate, filter_string = _sampling(config)
        with _translated():
            return spec_to_proto(self._registry.start(_name(request.name), float(rate or 0), filter_string))

    def update_scorer(self, request: pb.UpdateScorerRequest) -> pb.Scorer:
        rate, filter_string = _sampling(request.sampling_config)
        with _translated():
            return spec_to_proto(self._registry.update(_name(request.name), rate, filter_string))

    def stop_scorer(self, request: pb.StopScorerRequest) -> pb.Scorer:
        with _translated():
            return spec_to_proto(self._registry.stop(_name(request.name)))

    def delete_scorer(self, request: pb.DeleteScorerRequest) -> empty_pb2.Empty:
        with _translated():
            self._registry.delete(_name(request.name))
        return empty_pb2.Empty()

    def get_scorer(self, request: pb.GetScorerRequest) -> pb.Scorer:
        with _translated():
            return spec_to_proto(self._registry.get(_name(request.name)))

    def list_scorers(self, request: pb.ListScorersRequest) -> pb.ListScorersResponse:
        return pb.ListScorersResponse(scorers=[spec_to_proto(spec) for spec in self._registry.all()])


# --------------------------------------------------------------------------------------------- conversions


def spec_to_proto(spec: ScorerSpec) -> pb.Scorer:
    status = pb.SCORER_STATUS_STARTED if spec.active else pb.SCORER_STATUS_STOPPED
    message = pb.Scorer(name=spec.name, sample_rate=spec.sample_rate, version=spec.version, status=status)
    if spec.builtin is not None:
        message.builtin = spec.builtin
    elif spec.guidelines is not None:
        message.guidelines.SetInParent()
        message.guidelines.guidelines.extend(spec.guidelines)
    elif spec.instructions is not None:
        message.instructions = spec.instructions
    elif spec.code is not None:
        message.code = spec.code
    if isinstance(spec.feedback_value_type, list):
        message.feedback_categories.extend(spec.feedback_value_type)
    elif spec.feedback_value_type is not None:
        message.feedback_value_type = spec.feedback_value_type
    if spec.model is not None:
        message.model = spec.model
    if spec.params:
        message.params.update(spec.params)
    if spec.filter_string is not None:
        message.filter_string = spec.filter_string
    return message


def spec_from_proto(message: pb.Scorer) -> ScorerSpec:
    """A registrable spec (sample rate 0, version 1) from a Scorer message; INVALID_ARGUMENT if it is not one."""
    raw: dict[str, Any] = {"name": message.name}
    kind = message.WhichOneof("kind")
    if kind == "guidelines":
        raw["guidelines"] = list(message.guidelines.guidelines)
    elif kind is not None:
        raw[kind] = getattr(message, kind)
    if message.feedback_value_type and message.feedback_categories:
        raise ControlError(grpc.StatusCode.INVALID_ARGUMENT, "set feedback_value_type or feedback_categories, not both")
    if message.feedback_categories:
        raw["feedback_value_type"] = list(message.feedback_categories)
    elif message.feedback_value_type:
        if message.feedback_value_type not in VALUE_TYPES:
            raise ControlError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"feedback_value_type must be one of {', '.join(VALUE_TYPES)} (or give "
                f"feedback_categories), got {message.feedback_value_type!r}",
            )
        raw["feedback_value_type"] = message.feedback_value_type
    if message.HasField("model"):
        raw["model"] = message.model
    if message.HasField("params"):
        raw["params"] = plain_struct(json_format.MessageToDict(message.params))
    if message.HasField("filter_string"):
        _check_filter(message.filter_string)
        raw["filter_string"] = message.filter_string
    try:
        return ScorerSpec.model_validate(raw)
    except ValidationError as exc:
        raise ControlError(grpc.StatusCode.INVALID_ARGUMENT, f"invalid scorer: {describe_validation(exc)}") from exc


def describe_validation(error: ValidationError) -> str:
    parts = []
    for item in error.errors():
        where = ".".join(str(part) for part in item["loc"])
        message = str(item["msg"]).removeprefix("Value error, ")
        parts.append(f"{where}: {message}" if where else message)
    return "; ".join(parts)


def plain_struct(value: Any) -> Any:
    """Struct numbers are doubles: give whole numbers back as ints (threshold_ms: 5000, not 5000.0)."""
    if isinstance(value, dict):
        return {key: plain_struct(item) for key, item in value.items()}
    if isinstance(value, list):
        return [plain_struct(item) for item in value]
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    return value


def _sampling(config: pb.SamplingConfig) -> tuple[float | None, str | None]:
    rate = config.sample_rate if config.HasField("sample_rate") else None
    if rate is not None and (math.isnan(rate) or not 0.0 <= rate <= 1.0):
        raise ControlError(grpc.StatusCode.INVALID_ARGUMENT, f"sample_rate must be between 0 and 1, got {rate}")
    filter_string = config.filter_string if config.HasField("filter_string") else None
    if filter_string is not None:
        _check_filter(filter_string)
    return rate, filter_string


def _check_filter(text: str) -> None:
    if not text.strip():
        return
    try:
        parse_filter(text)
    except FilterSyntaxError as exc:
        raise ControlError(grpc.StatusCode.INVALID_ARGUMENT, f"invalid filter_string: {exc}") from exc


def _name(name: str) -> str:
    if not name:
        raise ControlError(grpc.StatusCode.INVALID_ARGUMENT, "name is required")
    return name


def _snake(method: str) -> str:
    return "".join(f"_{c.lower()}" if c.isupper() else c for c in method).lstrip("_")


@contextmanager
def _translated() -> Iterator[None]:
    """Registry and validation errors -> ControlError with their status code."""
    try:
        yield
    except ScorerNotFound as exc:
        raise ControlError(grpc.StatusCode.NOT_FOUND, str(exc)) from exc
    except ScorerExists as exc:
        raise ControlError(grpc.StatusCode.ALREADY_EXISTS, str(exc)) from exc
    except TooManyActive as exc:
        raise ControlError(grpc.StatusCode.FAILED_PRECONDITION, str(exc)) from exc
    except ValidationError as exc:
        raise ControlError(grpc.StatusCode.INVALID_ARGUMENT, f"invalid scorer: {describe_validation(exc)}") from exc
    except (RegistryError, ValueError) as exc:  # a spec the registry's validate refuses (unknown builtin, bad model)
        raise ControlError(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from exc


# --------------------------------------------------------------------------------------------- gRPC


def grpc_handler(service: ScorerService) -> grpc.GenericRpcHandler:
    """The ScorerService for a grpc.Server: `server.add_generic_rpc_handlers((grpc_handler(...),))` before start."""
    handlers = {
        method: grpc.unary_unary_rpc_method_handler(
            _grpc_method(service, method),
            request_deserializer=request_type.FromString,
            response_serializer=_serialize,
        )
        for method, (request_type, _) in METHODS.items()
    }
    return grpc.method_handlers_generic_handler(SERVICE_NAME, handlers)


def _serialize(message: Message) -> bytes:
    return bytes(message.SerializeToString())


def _grpc_method(service: ScorerService, method: str) -> Callable[[Message, grpc.ServicerContext], Message]:
    def handle(request: Message, context: grpc.ServicerContext) -> Message:
        try:
            metadata = {key: value for key, value in context.invocation_metadata() if isinstance(value, str)}
            service.authorize(metadata.get("authorization"))
            return service.call(method, request)
        except ControlError as exc:
            context.abort(exc.code, exc.message)
            raise  # unreachable: abort raises
        except Exception:
            log.exception("control plane %s failed", method)
            context.abort(grpc.StatusCode.INTERNAL, f"{method} failed inside tracejudge; see its log")
            raise

    return handle


# --------------------------------------------------------------------------------------------- HTTP/JSON

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def http_routes(service: ScorerService) -> list[web.RouteDef]:
    """The ScorerService as HTTP/JSON: `app.add_routes(http_routes(...))` on the OTLP/HTTP application."""
    api = _HttpApi(service)
    return [
        web.get("/v1/scorers", api.handler("ListScorers", lambda _r, _b: pb.ListScorersRequest())),
        web.post("/v1/scorers", api.handler("RegisterScorer", _register_request)),
        web.get("/v1/scorers/{name}", api.handler("GetScorer", lambda r, _b: pb.GetScorerRequest(name=_path_name(r)))),
        web.delete(
            "/v1/scorers/{name}", api.handler("DeleteScorer", lambda r, _b: pb.DeleteScorerRequest(name=_path_name(r)))
        ),
        web.post("/v1/scorers/{name}:{action}", api.action),
    ]


def _path_name(request: web.Request) -> str:
    return request.match_info["name"]


def _register_request(_request: web.Request, body: bytes) -> pb.RegisterScorerRequest:
    return pb.RegisterScorerRequest(scorer=_parse(body, pb.Scorer()))


def _sampling_request(
    kind: type[pb.StartScorerRequest] | type[pb.UpdateScorerRequest],
) -> Callable[[web.Request, bytes], Message]:
    def build(request: web.Request, body: bytes) -> Message:
        return kind(name=_path_name(request), sampling_config=_parse(body, pb.SamplingConfig()))

    return build


_ACTIONS: dict[str, tuple[str, Callable[[web.Request, bytes], Message]]] = {
    "start": ("StartScorer", _sampling_request(pb.StartScorerRequest)),
    "update": ("UpdateScorer", _sampling_request(pb.UpdateScorerRequest)),
    "stop": ("StopScorer", lambda r, _b: pb.StopScorerRequest(name=_path_name(r))),
}


def _parse(body: bytes, message: M) -> M:
    if not body.strip():
        return message
    try:
        json_format.Parse(body, message)
        return message
    except (json_format.ParseError, UnicodeDecodeError) as exc:
        raise ControlError(
            grpc.StatusCode.INVALID_ARGUMENT, f"invalid JSON body for {message.DESCRIPTOR.full_name}: {exc}"
        ) from exc


class _HttpApi:
    def __init__(self, service: ScorerService) -> None:
        self._service = service

    def handler(self, method: str, build: Callable[[web.Request, bytes], Message]) -> Handler:
        return functools.partial(self._handle, method, build)

    async def action(self, request: web.Request) -> web.StreamResponse:
        action = request.match_info["action"]
        if action not in _ACTIONS:
            error = ControlError(grpc.StatusCode.NOT_FOUND, f"no method ':{action}'; use :start, :update or :stop")
            return _error_response(error)
        method, build = _ACTIONS[action]
        return await self._handle(method, build, request)

    async def _handle(
        self, method: str, build: Callable[[web.Request, bytes], Message], request: web.Request
    ) -> web.StreamResponse:
        try:
            self._service.authorize(request.headers.get("Authorization"))
            message = build(request, await _read_body(request))
            # Registry calls write the state file and build scorers: off the event loop that serves OTLP.
            response = await asyncio.get_running_loop().run_in_executor(None, self._service.call, method, message)
        except ControlError as exc:
            return _error_response(exc)
        except Exception:
            log.exception("control plane %s failed", method)
            return _error_response(ControlError(grpc.StatusCode.INTERNAL, f"{method} failed inside tracejudge"))
        text = json_format.MessageToJson(
            response, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
        )
        return web.Response(text=text, content_type="application/json")


async def _read_body(request: web.Request) -> bytes:
    if request.content_length is not None and request.content_length > MAX_BODY:
        raise ControlError(grpc.StatusCode.INVALID_ARGUMENT, f"body exceeds {MAX_BODY} bytes")
    body = bytearray()
    while chunk := await request.content.readany():
        body += chunk
        if len(body) > MAX_BODY:
            raise ControlError(grpc.StatusCode.INVALID_ARGUMENT, f"body exceeds {MAX_BODY} bytes")
    encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
    if encoding == "gzip":  # the OTLP/HTTP app turns aiohttp's own decompression off
        inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
        try:
            inflated = inflater.decompress(bytes(body), MAX_BODY + 1)
        except zlib.error as exc:
            raise ControlError(grpc.StatusCode.INVALID_ARGUMENT, f"invalid gzip body: {exc}") from exc
        if len(inflated) > MAX_BODY or inflater.unconsumed_tail:
            raise ControlError(grpc.StatusCode.INVALID_ARGUMENT, f"body exceeds {MAX_BODY} bytes")
        return inflated
    if encoding not in ("identity", ""):
        raise ControlError(grpc.StatusCode.INVALID_ARGUMENT, f"unsupported Content-Encoding {encoding!r}")
    return bytes(body)


def _error_response(error: ControlError) -> web.Response:
    status = status_pb2.Status(code=error.code.value[0], message=error.message)
    headers = {"WWW-Authenticate": "Bearer"} if error.code == grpc.StatusCode.UNAUTHENTICATED else None
    text = json_format.MessageToJson(status, preserving_proto_field_name=True)
    return web.Response(status=error.http_status, text=text, content_type="application/json", headers=headers)

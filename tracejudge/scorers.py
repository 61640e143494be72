"""Manage a running sidecar's scorers from Python, as MLflow users do with ``mlflow.genai.scorers``.

    from tracejudge.scorers import Safety, Guidelines, ScorerSamplingConfig, list_scorers

    safety = Safety().register(name="safety")            # registered, not running yet
    safety = safety.start(sampling_config=ScorerSamplingConfig(sample_rate=1.0,
                                                               filter_string="attributes.status = 'OK'"))
    safety = safety.update(sampling_config=ScorerSamplingConfig(sample_rate=0.5))
    safety = safety.stop()                               # still registered, sample rate 0

Every lifecycle call returns a NEW handle carrying the sidecar's state (``.name``, ``.sample_rate``,
``.filter_string``, ``.status``); the object it was called on is left as it was, so reassign.

The sidecar is reached at ``TRACEJUDGE_ENDPOINT``: ``host:port`` or ``grpc://host:port`` (default
127.0.0.1:4317, the OTLP/gRPC listener), ``grpcs://host:port`` over TLS, or ``http(s)://host:port`` for
the HTTP/JSON API on the OTLP/HTTP listener. ``TRACEJUDGE_TOKEN`` is sent as a bearer token when set.

Code scorers (``@scorer`` functions) are never sent over the network: name them in the config file's
``scorers:`` as ``code: "module:function"``; once loaded they can be started and stopped from here.
"""

from __future__ import annotations

import builtins
import json
import os
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any, ClassVar, Literal, TypeVar, get_args, get_origin

import grpc
from google.protobuf import json_format
from google.protobuf.message import Message

from tracejudge.model import Feedback
from tracejudge.proto import scorers_pb2 as pb
from tracejudge.schema import SCORER_SERVICE, code_over_network, plain_struct
from tracejudge.scoring.code import scorer as _mark_scorer

__all__ = [
    "Completeness",
    "ControlPlaneError",
    "Correctness",
    "ExpectationsGuidelines",
    "Feedback",
    "Guidelines",
    "LatencyUnder",
    "NoError",
    "NoPii",
    "NonEmptyResponse",
    "RegexMatch",
    "RelevanceToQuery",
    "RetrievalGroundedness",
    "RetrievalRelevance",
    "RetrievalSufficiency",
    "Safety",
    "Scorer",
    "ScorerClient",
    "ScorerSamplingConfig",
    "ScorerStatus",
    "TokenBudget",
    "ToolCallCorrectness",
    "ValidJson",
    "delete_scorer",
    "get_scorer",
    "list_scorers",
    "make_judge",
    "scorer",
]

ENDPOINT_ENV = "TRACEJUDGE_ENDPOINT"
TOKEN_ENV = "TRACEJUDGE_TOKEN"
DEFAULT_ENDPOINT = "127.0.0.1:4317"
DEFAULT_TIMEOUT = 10.0
VALUE_TYPE_NAMES = ("bool", "int", "float", "str")

M = TypeVar("M", bound=Message)


class ScorerStatus(str, Enum):
    UNREGISTERED = "UNREGISTERED"
    STOPPED = "STOPPED"
    STARTED = "STARTED"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class ScorerSamplingConfig:
    """MLflow's sampling config: the fraction of traces scored, and which traces (a search_traces filter).

    On `update`, a field left as None keeps its current value; `filter_string=""` removes the filter.
    """

    sample_rate: float | None = None
    filter_string: str | None = None

    def to_proto(self) -> pb.SamplingConfig:
        message = pb.SamplingConfig()
        if self.sample_rate is not None:
            message.sample_rate = float(self.sample_rate)
        if self.filter_string is not None:
            message.filter_string = self.filter_string
        return message


# --------------------------------------------------------------------------------------------- errors


class ControlPlaneError(Exception):
    """A call the sidecar refused, or could not be reached for; `code` is the gRPC status name."""

    code = "UNKNOWN"

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


class ScorerNotFoundError(ControlPlaneError, LookupError):
    code = "NOT_FOUND"


class ScorerExistsError(ControlPlaneError):
    code = "ALREADY_EXISTS"


class TooManyActiveError(ControlPlaneError):
    code = "FAILED_PRECONDITION"


class InvalidScorerError(ControlPlaneError, ValueError):
    code = "INVALID_ARGUMENT"


class PermissionDeniedError(ControlPlaneError):
    code = "PERMISSION_DENIED"


class UnauthenticatedError(ControlPlaneError):
    code = "UNAUTHENTICATED"


class UnavailableError(ControlPlaneError, ConnectionError):
    code = "UNAVAILABLE"


_ERRORS: dict[str, type[ControlPlaneError]] = {
    cls.code: cls
    for cls in (
        ScorerNotFoundError,
        ScorerExistsError,
        TooManyActiveError,
        InvalidScorerError,
        PermissionDeniedError,
        UnauthenticatedError,
        UnavailableError,
    )
}


def _error(code: str, message: str) -> ControlPlaneError:
    return _ERRORS.get(code, ControlPlaneError)(message, code)


def _code_refusal(name: str) -> PermissionDeniedError:
    return PermissionDeniedError(code_over_network(name))


# --------------------------------------------------------------------------------------------- transports


class _Transport:
    endpoint: str

    def call(self, method: str, request: Message) -> Message:
        raise NotImplementedError


class _GrpcTransport(_Transport):
    def __init__(self, target: str, secure: bool, token: str | None, timeout: float) -> None:
        self.endpoint = target
        self._secure = secure
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self._timeout = timeout

    def call(self, method: str, request: Message) -> Message:
        response_type = SCORER_SERVICE.method(method).response
        channel = (
            grpc.secure_channel(self.endpoint, grpc.ssl_channel_credentials())
            if self._secure
            else grpc.insecure_channel(self.endpoint)
        )
        with channel:
            stub = channel.unary_unary(
                SCORER_SERVICE.method(method).grpc_path,
                request_serializer=_serialize,
                response_deserializer=response_type.FromString,
            )
            try:
                response: Message = stub(request, metadata=self._metadata, timeout=self._timeout)
            except grpc.RpcError as exc:
                raise self._translate(exc) from None
        return response

    def _translate(self, exc: grpc.RpcError) -> ControlPlaneError:
        code: str = exc.code().name
        details = str(exc.details() or code)
        if code in ("UNAVAILABLE", "DEADLINE_EXCEEDED"):
            return UnavailableError(
                f"cannot reach tracejudge at {self.endpoint} ({details}); is `tracejudge serve` running? "
                f"Set {ENDPOINT_ENV} to its gRPC address",
                "UNAVAILABLE",
            )
        if code == "UNIMPLEMENTED":
            return ControlPlaneError(f"{self.endpoint} does not serve tracejudge's scorer control plane", code)
        return _error(code, details)


def _serialize(message: Message) -> bytes:
    return bytes(message.SerializeToString())


class _HttpTransport(_Transport):
    _STATUS_CODES: ClassVar[dict[int, str]] = {
        400: "INVALID_ARGUMENT",
        401: "UNAUTHENTICATED",
        403: "PERMISSION_DENIED",
        404: "NOT_FOUND",
        409: "ALREADY_EXISTS",
        412: "FAILED_PRECONDITION",
    }

    def __init__(self, base_url: str, token: str | None, timeout: float) -> None:
        self.endpoint = base_url.rstrip("/")
        self._headers = {"Accept": "application/json", "Content-Type": "application/json"}
        if token:
            self._headers["Authorization"] = f"Bearer {token}"
        self._timeout = timeout
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def call(self, method: str, request: Message) -> Message:
        verb, path, body = _http_form(method, request)
        data = None if body is None else json_format.MessageToJson(body, preserving_proto_field_name=True).encode()
        http_request = urllib.request.Request(self.endpoint + path, data=data, method=verb, headers=self._headers)
        try:
            with self._opener.open(http_request, timeout=self._timeout) as response:
                text = response.read()
        except urllib.error.HTTPError as exc:
            raise self._translate(exc.code, exc.read()) from None
        except OSError as exc:
            raise UnavailableError(
                f"cannot reach tracejudge at {self.endpoint} ({exc}); is `tracejudge serve` running? "
                f"Set {ENDPOINT_ENV} to its address"
            ) from None
        return json_format.Parse(text, SCORER_SERVICE.method(method).response(), ignore_unknown_fields=True)

    def _translate(self, status: int, body: bytes) -> ControlPlaneError:
        try:
            parsed = json.loads(body)
            code, message = _CODE_NAMES[int(parsed["code"])], str(parsed["message"])
        except (ValueError, KeyError, TypeError):  # not a google.rpc.Status: not tracejudge's control plane
            if status == 404:
                return ControlPlaneError(
                    f"{self.endpoint} does not serve tracejudge's scorer control plane", "UNIMPLEMENTED"
                )
            text = body.decode(errors="replace").strip()[:500]
            return _error(self._STATUS_CODES.get(status, "UNKNOWN"), f"HTTP {status}: {text}")
        return _error(code, message)


_CODE_NAMES: dict[int, str] = {status.value[0]: status.name for status in grpc.StatusCode}


def _http_form(method: str, request: Any) -> tuple[str, str, Message | None]:
    """RPC -> (HTTP method, path, JSON body message): the mapping in scorers.proto's header."""
    if method == "ListScorers":
        return "GET", "/v1/scorers", None
    if method == "RegisterScorer":
        return "POST", "/v1/scorers", request.scorer
    path = "/v1/scorers/" + urllib.parse.quote(request.name, safe="")
    if method == "GetScorer":
        return "GET", path, None
    if method == "DeleteScorer":
        return "DELETE", path, None
    if method == "StopScorer":
        return "POST", path + ":stop", pb.SamplingConfig()
    action = {"StartScorer": ":start", "UpdateScorer": ":update"}[method]
    return "POST", path + action, request.sampling_config


def _transport(endpoint: str | None, token: str | None, timeout: float) -> _Transport:
    text = (endpoint or os.environ.get(ENDPOINT_ENV) or DEFAULT_ENDPOINT).strip()
    token = token if token is not None else os.environ.get(TOKEN_ENV) or None
    scheme, separator, rest = text.partition("://")
    if not separator:
        return _GrpcTransport(text, False, token, timeout)
    scheme = scheme.lower()
    if scheme in ("grpc", "grpcs"):
        return _GrpcTransport(rest.rstrip("/"), scheme == "grpcs", token, timeout)
    if scheme in ("http", "https"):
        return _HttpTransport(text, token, timeout)
    raise ValueError(f"{ENDPOINT_ENV}={text!r}: use host:port, grpc://host:port, grpcs://, http:// or https://")


# --------------------------------------------------------------------------------------------- client


class ScorerClient:
    """One sidecar's control plane. The module-level functions and scorer methods use one made from the env."""

    def __init__(self, endpoint: str | None = None, token: str | None = None, timeout: float = DEFAULT_TIMEOUT) -> None:
        self._transport = _transport(endpoint, token, timeout)

    @property
    def endpoint(self) -> str:
        return self._transport.endpoint

    def list(self) -> builtins.list[Scorer]:
        response = self._call("ListScorers", pb.ListScorersRequest())
        assert isinstance(response, pb.ListScorersResponse)
        return [Scorer._from_proto(item, self) for item in response.scorers]

    def get(self, name: str) -> Scorer:
        return self._scorer("GetScorer", pb.GetScorerRequest(name=name))

    def register(self, scorer: Scorer, name: str | None = None) -> Scorer:
        message = pb.Scorer()
        message.CopyFrom(scorer._message)
        message.name = name or scorer.name
        if message.WhichOneof("kind") == "code":
            raise _code_refusal(message.name)
        for field in ("sample_rate", "version", "status"):
            message.ClearField(field)
        return self._scorer("RegisterScorer", pb.RegisterScorerRequest(scorer=message))

    def start(self, name: str, sampling_config: ScorerSamplingConfig) -> Scorer:
        if not isinstance(sampling_config, ScorerSamplingConfig) or sampling_config.sample_rate is None:
            raise InvalidScorerError(
                "start needs sampling_config=ScorerSamplingConfig(sample_rate=...) with a rate > 0"
            )
        request = pb.StartScorerRequest(name=name, sampling_config=sampling_config.to_proto())
        return self._scorer("StartScorer", request)

    def update(self, name: str, sampling_config: ScorerSamplingConfig) -> Scorer:
        if not isinstance(sampling_config, ScorerSamplingConfig):
            raise InvalidScorerError("update needs sampling_config=ScorerSamplingConfig(...)")
        request = pb.UpdateScorerRequest(name=name, sampling_config=sampling_config.to_proto())
        return self._scorer("UpdateScorer", request)

    def stop(self, name: str) -> Scorer:
        return self._scorer("StopScorer", pb.StopScorerRequest(name=name))

    def delete(self, name: str) -> None:
        self._call("DeleteScorer", pb.DeleteScorerRequest(name=name))

    def _scorer(self, method: str, request: Message) -> Scorer:
        response = self._call(method, request)
        assert isinstance(response, pb.Scorer)
        return Scorer._from_proto(response, self)

    def _call(self, method: str, request: Message) -> Message:
        return self._transport.call(method, request)


def list_scorers() -> list[Scorer]:
    """Every scorer registered with the sidecar, by name."""
    return ScorerClient().list()


def get_scorer(name: str) -> Scorer:
    """The registered scorer `name`; raises ScorerNotFoundError."""
    return ScorerClient().get(name)


def delete_scorer(name: str) -> None:
    """Unregister `name` (a config-file scorer comes back at the sidecar's next start)."""
    ScorerClient().delete(name)


# --------------------------------------------------------------------------------------------- scorers


class Scorer:
    """A scorer definition and, once registered, a handle on the sidecar's copy of it.

    Handles are immutable: `register`, `start`, `update` and `stop` return a new one.
    """

    def __init__(
        self,
        *,
        name: str,
        builtin: str | None = None,
        guidelines: str | Sequence[str] | None = None,
        instructions: str | None = None,
        code: str | None = None,
        feedback_value_type: Any = None,
        model: str | None = None,
        params: Mapping[str, Any] | None = None,
    ) -> None:
        message = pb.Scorer(name=name)
        if builtin is not None:
            message.builtin = builtin
        if guidelines is not None:
            message.guidelines.SetInParent()
            message.guidelines.guidelines.extend([guidelines] if isinstance(guidelines, str) else list(guidelines))
        if instructions is not None:
            message.instructions = instructions
        if code is not None:
            message.code = code
        value_type = _value_type(feedback_value_type)
        if isinstance(value_type, list):
            message.feedback_categories.extend(value_type)
        elif value_type is not None:
            message.feedback_value_type = value_type
        if model is not None:
            message.model = model
        if params:
            message.params.update(dict(params))
        self._message = message
        self._client: ScorerClient | None = None
        self._registered = False

    @classmethod
    def _from_proto(cls, message: pb.Scorer, client: ScorerClient) -> Scorer:
        kind = message.WhichOneof("kind")
        subclass: type[Scorer] = Scorer
        if kind == "builtin":
            subclass = _BUILTIN_CLASSES.get(message.builtin, Scorer)
        elif kind == "guidelines":
            subclass = Guidelines
        handle = object.__new__(subclass)
        handle._message = message
        handle._client = client
        handle._registered = True
        return handle

    # ---- lifecycle: each returns a new handle with the sidecar's state

    def register(self, name: str | None = None) -> Scorer:
        """Register under `name` (default: the scorer's own name); it does not run until `start`."""
        return self._use_client().register(self, name)

    def start(self, *, sampling_config: ScorerSamplingConfig, name: str | None = None) -> Scorer:
        """Run on `sample_rate` (> 0) of the traces matching `filter_string`."""
        return self._use_client().start(name or self.name, sampling_config)

    def update(self, *, sampling_config: ScorerSamplingConfig, name: str | None = None) -> Scorer:
        """Change the sampling; fields left as None keep their value."""
        return self._use_client().update(name or self.name, sampling_config)

    def stop(self, *, name: str | None = None) -> Scorer:
        """Set the sample rate to 0; the scorer stays registered."""
        return self._use_client().stop(name or self.name)

    def _use_client(self) -> ScorerClient:
        return self._client or ScorerClient()

    # ---- state

    @property
    def name(self) -> str:
        return self._message.name

    @property
    def kind(self) -> str:
        """builtin, guidelines, prompt (make_judge) or code, as ScorerSpec.kind."""
        kind = self._message.WhichOneof("kind")
        return "prompt" if kind == "instructions" else str(kind)

    @property
    def builtin(self) -> str | None:
        return self._message.builtin if self._message.WhichOneof("kind") == "builtin" else None

    @property
    def guidelines(self) -> list[str] | None:
        return list(self._message.guidelines.guidelines) if self._message.HasField("guidelines") else None

    @property
    def instructions(self) -> str | None:
        return self._message.instructions if self._message.WhichOneof("kind") == "instructions" else None

    @property
    def code(self) -> str | None:
        return self._message.code if self._message.WhichOneof("kind") == "code" else None

    @property
    def feedback_value_type(self) -> str | list[str] | None:
        if self._message.feedback_categories:
            return list(self._message.feedback_categories)
        return self._message.feedback_value_type or None

    @property
    def model(self) -> str | None:
        return self._message.model if self._message.HasField("model") else None

    @property
    def params(self) -> dict[str, Any]:
        return plain_struct(json_format.MessageToDict(self._message.params)) if self._message.HasField("params") else {}

    @property
    def sample_rate(self) -> float:
        return self._message.sample_rate

    @property
    def filter_string(self) -> str | None:
        return self._message.filter_string if self._message.HasField("filter_string") else None

    @property
    def version(self) -> int:
        return self._message.version

    @property
    def status(self) -> ScorerStatus:
        if not self._registered:
            return ScorerStatus.UNREGISTERED
        return ScorerStatus.STARTED if self._message.sample_rate > 0 else ScorerStatus.STOPPED

    @property
    def sampling_config(self) -> ScorerSamplingConfig:
        return ScorerSamplingConfig(self.sample_rate, self.filter_string)

    def to_dict(self) -> dict[str, Any]:
        """As a config file's `scorers:` entry, plus `status` once registered."""
        kind = self._message.WhichOneof("kind")
        out: dict[str, Any] = {"name": self.name}
        if kind is not None:
            out[kind] = self.guidelines if kind == "guidelines" else getattr(self._message, kind)
        optional = {
            "feedback_value_type": self.feedback_value_type,
            "model": self.model,
            "params": self.params or None,
        }
        out.update({key: value for key, value in optional.items() if value is not None})
        if self._registered:
            out["sample_rate"] = self.sample_rate
            if self.filter_string is not None:
                out["filter_string"] = self.filter_string
            out["version"] = self.version
        out["status"] = self.status.value
        return out

    def __repr__(self) -> str:
        kind = f"builtin={self.builtin!r}" if self.builtin else f"kind={self.kind!r}"
        state = f"status={self.status.value}"
        if self._registered:
            state += f", sample_rate={self.sample_rate:g}"
            if self.filter_string is not None:
                state += f", filter_string={self.filter_string!r}"
        return f"{type(self).__name__}(name={self.name!r}, {kind}, {state})"


def _value_type(value: Any) -> str | list[str] | None:
    """bool/int/float/str (the types or their names), Literal["a", "b"] or a list of categories."""
    if value is None:
        return None
    if value in (bool, int, float, str):
        return str(value.__name__)
    if isinstance(value, str) and value in VALUE_TYPE_NAMES:
        return value
    if get_origin(value) is Literal and all(isinstance(arg, str) for arg in get_args(value)):
        return [str(arg) for arg in get_args(value)]
    if isinstance(value, (list, tuple)) and value and all(isinstance(item, str) for item in value):
        return list(value)
    raise TypeError(f"feedback_value_type must be bool, int, float, str or Literal[...] of strings, got {value!r}")


class _Builtin(Scorer):
    builtin_name: ClassVar[str]
    default_name: ClassVar[str]

    def __init__(self, *, name: str | None = None, model: str | None = None) -> None:
        super().__init__(name=name or self.default_name, builtin=self.builtin_name, model=model)


class Safety(_Builtin):
    """Is the response free of harmful content? (LLM judge)"""

    builtin_name, default_name = "Safety", "safety"


class RelevanceToQuery(_Builtin):
    """Does the response address the request? (LLM judge)"""

    builtin_name, default_name = "RelevanceToQuery", "relevance_to_query"


class RetrievalGroundedness(_Builtin):
    """Is the response supported by the retrieved documents? (LLM judge)"""

    builtin_name, default_name = "RetrievalGroundedness", "retrieval_groundedness"


class RetrievalRelevance(_Builtin):
    """Are the retrieved documents relevant to the request? (LLM judge)"""

    builtin_name, default_name = "RetrievalRelevance", "retrieval_relevance"


class RetrievalSufficiency(_Builtin):
    """Do the retrieved documents hold what the expected answer needs? (LLM judge)"""

    builtin_name, default_name = "RetrievalSufficiency", "retrieval_sufficiency"


class Correctness(_Builtin):
    """Does the response convey the expected answer? (LLM judge)"""

    builtin_name, default_name = "Correctness", "correctness"


class ExpectationsGuidelines(_Builtin):
    """Does the response follow the guidelines in the trace's expectations? (LLM judge)"""

    builtin_name, default_name = "ExpectationsGuidelines", "expectations_guidelines"


class Completeness(_Builtin):
    """Does the response address every part of the request? (LLM judge)"""

    builtin_name, default_name = "Completeness", "completeness"


class ToolCallCorrectness(_Builtin):
    """Were the right tools called, with sensible arguments? (LLM judge)"""

    builtin_name, default_name = "ToolCallCorrectness", "tool_call_correctness"


class Guidelines(Scorer):
    """Pass/fail against natural-language guidelines (LLM judge)."""

    def __init__(self, *, name: str = "guidelines", guidelines: str | Sequence[str], model: str | None = None) -> None:
        super().__init__(name=name, guidelines=guidelines, model=model)


class _Check(Scorer):
    """A built-in check that needs no model."""

    builtin_name: ClassVar[str]
    default_name: ClassVar[str]

    def __init__(self, *, name: str | None = None, **params: Any) -> None:
        given = {key: value for key, value in params.items() if value is not None}
        super().__init__(name=name or self.default_name, builtin=self.builtin_name, params=given)


class NoError(_Check):
    """No span failed."""

    builtin_name, default_name = "NoError", "no_error"

    def __init__(self, *, name: str | None = None) -> None:
        super().__init__(name=name)


class LatencyUnder(_Check):
    """The trace took at most `threshold_ms`."""

    builtin_name, default_name = "LatencyUnder", "latency_under"

    def __init__(self, threshold_ms: float = 10_000, *, name: str | None = None) -> None:
        super().__init__(name=name, threshold_ms=threshold_ms)


class TokenBudget(_Check):
    """The LLM calls used at most `max_tokens` tokens in all."""

    builtin_name, default_name = "TokenBudget", "token_budget"

    def __init__(self, max_tokens: int = 8_000, *, name: str | None = None) -> None:
        super().__init__(name=name, max_tokens=max_tokens)


class NonEmptyResponse(_Check):
    """The response is not empty."""

    builtin_name, default_name = "NonEmptyResponse", "non_empty_response"

    def __init__(self, *, name: str | None = None) -> None:
        super().__init__(name=name)


class ValidJson(_Check):
    """The response parses as JSON."""

    builtin_name, default_name = "ValidJson", "valid_json"

    def __init__(self, *, name: str | None = None) -> None:
        super().__init__(name=name)


class RegexMatch(_Check):
    """The response matches `pattern` (or, with must_match=False, does not)."""

    builtin_name, default_name = "RegexMatch", "regex_match"

    def __init__(self, pattern: str, *, must_match: bool = True, name: str | None = None) -> None:
        super().__init__(name=name, pattern=pattern, must_match=must_match)


class NoPii(_Check):
    """No e-mail address, phone number, US SSN or card number in the response (field="inputs": the request)."""

    builtin_name, default_name = "NoPii", "no_pii"

    def __init__(self, *, field: Literal["outputs", "inputs"] = "outputs", name: str | None = None) -> None:
        super().__init__(name=name, field=field)


_BUILTIN_CLASSES: dict[str, type[Scorer]] = {
    cls.builtin_name: cls
    for cls in (
        Safety,
        RelevanceToQuery,
        RetrievalGroundedness,
        RetrievalRelevance,
        RetrievalSufficiency,
        Correctness,
        ExpectationsGuidelines,
        Completeness,
        ToolCallCorrectness,
        NoError,
        LatencyUnder,
        TokenBudget,
        NonEmptyResponse,
        ValidJson,
        RegexMatch,
        NoPii,
    )
}


def make_judge(name: str, instructions: str, model: str | None = None, feedback_value_type: Any = None) -> Scorer:
    """An LLM judge from a prompt template using {{ inputs }}, {{ outputs }}, {{ expectations }} or {{ trace }}.

    `feedback_value_type`: bool, int, float, str, or Literal["a", "b", ...] for one of those categories.
    """
    return Scorer(name=name, instructions=instructions, model=model, feedback_value_type=feedback_value_type)


F = TypeVar("F", bound=Callable[..., Any])


def scorer(function: Any = None, *, name: str | None = None) -> Any:
    """MLflow's `@scorer` (tracejudge.scoring.code.scorer). The function runs in the sidecar only when the config
    file names it (`code: "module:function"`); its `.register()`/`.start()` explain that instead of sending code."""

    def mark(target: F) -> F:
        marked: F = _mark_scorer(target, name=name)
        default_name = str(getattr(marked, "__tracejudge_scorer_name__", target.__name__))

        def refuse(*_args: Any, **kwargs: Any) -> Scorer:
            name = kwargs.get("name") or default_name
            if target.__module__ == "__main__":
                message = code_over_network(name) + " (move the function out of __main__ into an importable module)"
            else:
                message = code_over_network(name, f"{target.__module__}:{target.__name__}")
            raise PermissionDeniedError(message)

        for method in ("register", "start", "update", "stop"):
            setattr(marked, method, refuse)
        return marked

    return mark(function) if function is not None else mark

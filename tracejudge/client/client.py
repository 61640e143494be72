"""ScorerClient (one sidecar's scorer API) and Scorer (a scorer definition, and once registered a handle on
the sidecar's copy). They are one module because each needs the other: the client answers with handles,
and a handle's lifecycle methods go through a client.
"""

from __future__ import annotations

import builtins
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import Message

from tracejudge.client.assessments import Assessment, AssessmentSource, log_request, override_request
from tracejudge.client.backfill import BackfillJob, BackfillScorerConfig, start_request
from tracejudge.proto import scorers_pb2 as pb
from tracejudge.schema import (
    ASSESSMENT_SERVICE,
    BACKFILL_SERVICE,
    SCORER_SERVICE,
    SESSION_SERVICE,
    code_over_network,
    plain_struct,
)

from .errors import InvalidScorerError, PermissionDeniedError
from .grpc_transport import GrpcTransport
from .http_transport import HttpTransport
from .transport import DEFAULT_ENDPOINT, DEFAULT_TIMEOUT, ENDPOINT_ENV, TOKEN_ENV, ClientTls, Transport
from .types import ScorerSamplingConfig, ScorerStatus, value_type


def transport_for(endpoint: str | None, token: str | None, timeout: float, tls: ClientTls | None = None) -> Transport:
    """host:port or grpc(s)://host:port: gRPC; http(s)://host:port: HTTP/JSON. Defaults from the environment;
    `tls` (CA, client certificate) applies to grpcs:// and https://."""
    text = (endpoint or os.environ.get(ENDPOINT_ENV) or DEFAULT_ENDPOINT).strip()
    token = token if token is not None else os.environ.get(TOKEN_ENV) or None
    tls = tls or ClientTls.resolve(None, None, None)
    scheme, separator, rest = text.partition("://")
    if not separator:
        return GrpcTransport(text, None, token, timeout)
    scheme = scheme.lower()
    if scheme in ("grpc", "grpcs"):
        return GrpcTransport(rest.rstrip("/"), tls if scheme == "grpcs" else None, token, timeout)
    if scheme in ("http", "https"):
        return HttpTransport(text, token, timeout, tls if scheme == "https" else None)
    raise ValueError(f"{ENDPOINT_ENV}={text!r}: use host:port, grpc://host:port, grpcs://, http:// or https://")


class ScorerClient:
    """One sidecar's control plane. The module-level functions and scorer methods use one made from the env."""

    def __init__(
        self,
        endpoint: str | None = None,
        token: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        *,
        ca_file: str | None = None,
        cert_file: str | None = None,
        key_file: str | None = None,
    ) -> None:
        """`ca_file`, `cert_file`, `key_file` (else TRACEJUDGE_CA_FILE, _CERT_FILE, _KEY_FILE): TLS for a
        grpcs:// or https:// endpoint, the client certificate for a control plane requiring mutual TLS."""
        self._transport = transport_for(endpoint, token, timeout, ClientTls.resolve(ca_file, cert_file, key_file))

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
            raise PermissionDeniedError(code_over_network(message.name))
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

    def end_session(self, session_id: str) -> None:
        """The conversation is over: the sidecar's session scorers judge it now, not after `sessions.idle`.
        Raises ScorerNotFoundError when no open conversation has that id."""
        self._transport.call(SESSION_SERVICE.method("EndSession"), pb.EndSessionRequest(session_id=session_id))

    def log_feedback(self, trace_id: str, name: str, value: Any, source: AssessmentSource | None = None,
                     rationale: str | None = None, metadata: Mapping[str, Any] | None = None,
                     span_id: str | None = None) -> Assessment:  # fmt: skip
        """MLflow's log_feedback: a human's (or a tool's) verdict on a trace, emitted and archived like a judge's."""
        request = log_request(trace_id, name, value, source, rationale, metadata, span_id, expectation=False)
        return self._assessment("LogAssessment", request)

    def log_expectation(
        self,
        trace_id: str,
        name: str,
        value: Any,
        source: AssessmentSource | None = None,
        metadata: Mapping[str, Any] | None = None,
        span_id: str | None = None,
    ) -> Assessment:
        """MLflow's log_expectation: the expected answer (or facts) for a trace, which Correctness,
        ExpectationsGuidelines and Equivalence read when the trace is scored after this."""
        request = log_request(trace_id, name, value, source, None, metadata, span_id, expectation=True)
        return self._assessment("LogAssessment", request)

    def override_feedback(
        self,
        trace_id: str,
        assessment_id: str,
        value: Any,
        source: AssessmentSource | None = None,
        rationale: str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> Assessment:
        """MLflow's override_feedback: a new feedback replacing `assessment_id`, which is kept, marked invalid."""
        request = override_request(trace_id, assessment_id, value, source, rationale, metadata)
        return self._assessment("OverrideFeedback", request)

    def get_assessments(self, trace_id: str) -> builtins.list[Assessment]:
        """Every assessment of the trace: human feedback and expectations, and the judges' verdicts archived."""
        response = self._transport.call(ASSESSMENT_SERVICE.method("GetAssessments"),
                                        pb.GetAssessmentsRequest(trace_id=trace_id))  # fmt: skip
        assert isinstance(response, pb.GetAssessmentsResponse)
        return [Assessment.from_proto(record) for record in response.assessments]

    def backfill_scorers(self, scorers: Sequence[BackfillScorerConfig | str | Any], start_time: Any = None,
                         end_time: Any = None, *, rescore: bool = False, skipped_only: bool = False,
                         dry_run: bool = False) -> BackfillJob:  # fmt: skip
        """MLflow's backfill_scorers: registered scorers over the sidecar's archived traces of the window
        (default the last 7 days), as a job the sidecar runs below live scoring; `dry_run`: only its estimate
        (`.wait()` for it: the job's `estimate` once its status is "estimate").
        `start_time`/`end_time`: datetimes, ISO strings or ages ("24h")."""
        request = start_request(list(scorers), start_time, end_time, rescore, skipped_only, dry_run)
        return self._backfill_job("StartBackfill", request)

    def get_backfill(self, job_id: str) -> BackfillJob:
        return self._backfill_job("GetBackfill", pb.GetBackfillRequest(job_id=job_id))

    def list_backfills(self) -> builtins.list[BackfillJob]:
        response = self._transport.call(BACKFILL_SERVICE.method("ListBackfills"), pb.ListBackfillsRequest())
        assert isinstance(response, pb.ListBackfillsResponse)
        return [BackfillJob(job, self._backfill_call) for job in response.jobs]

    def _backfill_job(self, rpc: str, request: Message) -> BackfillJob:
        return BackfillJob(self._backfill_call(rpc, request), self._backfill_call)

    def _backfill_call(self, rpc: str, request: Message) -> Any:
        response = self._transport.call(BACKFILL_SERVICE.method(rpc), request)
        assert isinstance(response, pb.BackfillJob)
        return response

    def _assessment(self, rpc: str, request: Message) -> Assessment:
        response = self._transport.call(ASSESSMENT_SERVICE.method(rpc), request)
        assert isinstance(response, pb.AssessmentRecord)
        return Assessment.from_proto(response)

    def _scorer(self, rpc: str, request: Message) -> Scorer:
        response = self._call(rpc, request)
        assert isinstance(response, pb.Scorer)
        return Scorer._from_proto(response, self)

    def _call(self, rpc: str, request: Message) -> Message:
        return self._transport.call(SCORER_SERVICE.method(rpc), request)


def list_scorers() -> list[Scorer]:
    """Every scorer registered with the sidecar, by name."""
    return ScorerClient().list()


def get_scorer(name: str) -> Scorer:
    """The registered scorer `name`; raises ScorerNotFoundError."""
    return ScorerClient().get(name)


def end_session(session_id: str) -> None:
    """Tell the sidecar the conversation `session_id` is over, so its multi-turn scorers judge it now."""
    ScorerClient().end_session(session_id)


def backfill_scorers(scorers: Sequence[BackfillScorerConfig | str | Any], start_time: Any = None,
                     end_time: Any = None, *, rescore: bool = False,
                     skipped_only: bool = False) -> BackfillJob:  # fmt: skip
    """MLflow's `backfill_scorers`, run by the sidecar at TRACEJUDGE_ENDPOINT; the job's handle."""
    return ScorerClient().backfill_scorers(scorers, start_time, end_time, rescore=rescore, skipped_only=skipped_only)


def log_feedback(trace_id: str, name: str, value: Any, source: AssessmentSource | None = None,
                 rationale: str | None = None, metadata: Mapping[str, Any] | None = None,
                 span_id: str | None = None) -> Assessment:  # fmt: skip
    """MLflow's `mlflow.log_feedback`, sent to the sidecar at TRACEJUDGE_ENDPOINT."""
    return ScorerClient().log_feedback(trace_id, name, value, source, rationale, metadata, span_id)


def log_expectation(trace_id: str, name: str, value: Any, source: AssessmentSource | None = None,
                    metadata: Mapping[str, Any] | None = None, span_id: str | None = None) -> Assessment:  # fmt: skip
    """MLflow's `mlflow.log_expectation`, sent to the sidecar at TRACEJUDGE_ENDPOINT."""
    return ScorerClient().log_expectation(trace_id, name, value, source, metadata, span_id)


def override_feedback(
    trace_id: str,
    assessment_id: str,
    value: Any,
    source: AssessmentSource | None = None,
    rationale: str | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> Assessment:
    """MLflow's `mlflow.override_feedback`, sent to the sidecar at TRACEJUDGE_ENDPOINT."""
    return ScorerClient().override_feedback(trace_id, assessment_id, value, source, rationale, metadata)


def get_assessments(trace_id: str) -> list[Assessment]:
    """Every assessment of a trace the sidecar at TRACEJUDGE_ENDPOINT knows."""
    return ScorerClient().get_assessments(trace_id)


def delete_scorer(name: str) -> None:
    """Unregister `name` (a config-file scorer comes back at the sidecar's next start)."""
    ScorerClient().delete(name)


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
        target: str | Mapping[str, Any] | None = None,
    ) -> None:
        """`target`: "trace", "session", or spans as {"span_type": ..., "name": ..., "filter_string": ...,
        "max_spans_per_trace": ...}; None: follows from the scorer (the sidecar decides)."""
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
        kind = value_type(feedback_value_type)
        if isinstance(kind, list):
            message.feedback_categories.extend(kind)
        elif kind is not None:
            message.feedback_value_type = kind
        if model is not None:
            message.model = model
        if params:
            message.params.update(dict(params))
        if isinstance(target, str):
            message.target.kind = target
        elif target is not None:
            message.target.kind = "spans"
            for key, value in target.items():
                setattr(message.target, key, value)  # an unknown key fails here, naming it
        self._message = message
        self._client: ScorerClient | None = None
        self._registered = False

    @classmethod
    def _handles(cls, message: pb.Scorer) -> bool:
        """Whether a handle on `message` is of this class (Safety for builtin Safety, ...); subclasses say."""
        return False

    @classmethod
    def _from_proto(cls, message: pb.Scorer, client: ScorerClient) -> Scorer:
        subclass = next((c for c in _subclasses(Scorer) if c._handles(message)), Scorer)
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
    def target(self) -> str | dict[str, Any] | None:
        """ "trace", "session", the span target as a dict, or None (follows from the scorer)."""
        if not self._message.HasField("target"):
            return None
        target = self._message.target
        if target.kind not in ("", "spans"):
            return target.kind
        spans: dict[str, Any] = {k: getattr(target, k) for k in ("span_type", "name", "filter_string")
                                 if target.HasField(k)}  # fmt: skip
        if target.max_spans_per_trace:
            spans["max_spans_per_trace"] = target.max_spans_per_trace
        return spans

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
            "target": self.target,
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


def _subclasses(cls: type[Scorer]) -> Iterator[type[Scorer]]:
    """Every subclass, depth first: the builtin classes (client.builtin_scorers) declare which messages they handle."""
    for subclass in cls.__subclasses__():
        yield subclass
        yield from _subclasses(subclass)

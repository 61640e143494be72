"""The scorer lifecycle as a transport-free service, and who may call the control plane at all.

`ScorerService` implements tracejudge.v1.ScorerService (proto/tracejudge/v1/scorers.proto) against a
ScorerRegistry: one method per RPC, named as the RPC in snake_case, proto request in, proto response out, a
refusal raised as a ControlError carrying a status name. The gRPC and HTTP/JSON adapters serve it from the
schema's descriptors, so a request means the same and fails with the same status either way:

    NOT_FOUND (HTTP 404)            no scorer of that name
    ALREADY_EXISTS (409)            the name is taken
    FAILED_PRECONDITION (412)       too many scorers active
    INVALID_ARGUMENT (400)          a spec, sampling config or filter that cannot be used
    PERMISSION_DENIED (403)         a code scorer sent over the network; a control plane exposed beyond
                                    loopback with neither a token nor client certificate names configured
    UNAUTHENTICATED (401)           a missing or wrong `authorization: Bearer <token>`, or (control.client_cert_names)
                                    no verified client certificate of one of those names

Code scorers are only ever loaded from the config file: a `code` scorer in RegisterScorer is refused, while
the config's code scorers can be started, updated, stopped and deleted like any other.
"""

from __future__ import annotations

import dataclasses
import hmac
import ipaddress
import json
import logging
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Protocol

from google.protobuf import empty_pb2, json_format, struct_pb2
from pydantic import ValidationError

from tracejudge.model import Assessment, AssessmentSourceType, AssessmentValue
from tracejudge.proto import scorers_pb2 as pb
from tracejudge.schema import StatusName, code_over_network, http_status
from tracejudge.scoring.assessments import numeric_score, value_label
from tracejudge.scoring.filters import FilterSyntaxError, parse_filter
from tracejudge.scoring.registry import RegistryError, ScorerExists, ScorerNotFound, ScorerRegistry, TooManyActive

from .convert import ConversionError, describe_validation, spec_from_proto, spec_to_proto

log = logging.getLogger(__name__)


class ControlError(Exception):
    """A refused control-plane call: a status name (schema.StatusName) and a message for the caller."""

    def __init__(self, code: StatusName, message: str) -> None:
        super().__init__(message)
        self.code: StatusName = code
        self.message = message

    @property
    def http_status(self) -> int:
        return http_status(self.code)


# --------------------------------------------------------------------------------------------- access


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


def check_exposure(endpoints: Iterable[str | None], token: str | None, cert_names: Iterable[str] = ()) -> None:
    """Raise ValueError when a listener is not on loopback and neither a token nor client certificate names
    protect the control plane."""
    exposed = exposed_endpoints(endpoints)
    if exposed and not token and not tuple(cert_names):
        raise ValueError(_exposure_message(exposed))


def _exposure_message(exposed: Sequence[str]) -> str:
    return (
        f"the scorer control plane is off: tracejudge listens on {', '.join(exposed)}, beyond loopback, and no "
        "token is set; set control.token (or TRACEJUDGE_TOKEN), or control.client_cert_names with "
        "receiver.tls.client_ca_file, to use it from the network"
    )


class Access:
    """Who may call the control plane, whatever the service and the transport.

    `token`: when set, every call must carry `authorization: Bearer <token>` (compared in constant time).
    `cert_names`: when set, every call must come over mutual TLS with a verified client certificate whose
    common name or a DNS name is one of them: the apps' certificates (same CA) then send OTLP but cannot
    manage scorers. With both set, a call needs both.
    `listen`: the sidecar's listen addresses; if any is beyond loopback and neither is set, every call is
    refused (PERMISSION_DENIED) rather than leaving scorer management open to the network.
    """

    def __init__(
        self, token: str | None = None, listen: Iterable[str | None] = (), cert_names: Iterable[str] = ()
    ) -> None:
        self._token = token.encode() if token else None
        self._cert_names = frozenset(cert_names)
        exposed = exposed_endpoints(listen)
        protected = self._token is not None or bool(self._cert_names)
        self._refusal = _exposure_message(exposed) if exposed and not protected else None
        if self._refusal:
            log.warning("%s", self._refusal)

    def check(self, authorization: str | None, peer_names: frozenset[str] = frozenset()) -> ControlError | None:
        """None when the call may go ahead; else the refusal to answer with. `peer_names`: the common name and
        DNS names of the caller's verified client certificate (empty without mutual TLS)."""
        if self._refusal is not None:
            return ControlError("PERMISSION_DENIED", self._refusal)
        if self._cert_names and not self._cert_names & peer_names:
            return ControlError(
                "UNAUTHENTICATED",
                "this control plane needs a client certificate named one of control.client_cert_names "
                "(set TRACEJUDGE_CERT_FILE and TRACEJUDGE_KEY_FILE for the client and the CLI)",
            )
        if self._token is None:
            return None
        if not authorization:
            return ControlError(
                "UNAUTHENTICATED",
                "this control plane needs a bearer token: send 'authorization: Bearer <token>' "
                "(set TRACEJUDGE_TOKEN for the client and the CLI)",
            )
        scheme, _, credentials = authorization.strip().partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(credentials.strip().encode(), self._token):
            return ControlError("UNAUTHENTICATED", "wrong bearer token for the control plane")
        return None


# --------------------------------------------------------------------------------------------- ScorerService


class ScorerService:
    """tracejudge.v1.ScorerService over a ScorerRegistry; each method is the RPC of that name in snake_case."""

    def __init__(self, registry: ScorerRegistry) -> None:
        self._registry = registry

    def register_scorer(self, request: pb.RegisterScorerRequest) -> pb.Scorer:
        if request.scorer.WhichOneof("kind") == "code":
            raise ControlError("PERMISSION_DENIED", code_over_network(request.scorer.name or "my_scorer"))
        if request.scorer.HasField("filter_string"):
            _check_filter(request.scorer.filter_string)
        with _translated():
            return spec_to_proto(self._registry.register(spec_from_proto(request.scorer)))

    def start_scorer(self, request: pb.StartScorerRequest) -> pb.Scorer:
        config = request.sampling_config
        if not config.HasField("sample_rate") or not config.sample_rate > 0:
            raise ControlError(
                "INVALID_ARGUMENT", "StartScorer needs sampling_config.sample_rate > 0 (use StopScorer to stop)"
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


def _sampling(config: pb.SamplingConfig) -> tuple[float | None, str | None]:
    rate = config.sample_rate if config.HasField("sample_rate") else None
    if rate is not None and (math.isnan(rate) or not 0.0 <= rate <= 1.0):
        raise ControlError("INVALID_ARGUMENT", f"sample_rate must be between 0 and 1, got {rate}")
    filter_string = config.filter_string if config.HasField("filter_string") else None
    if filter_string is not None:
        _check_filter(filter_string)
    return rate, filter_string


def _check_filter(text: str) -> None:
    """A bad filter keeps the parser's caret under the offending token (the spec's own message drops it)."""
    if not text.strip():
        return
    try:
        parse_filter(text)
    except FilterSyntaxError as exc:
        raise ControlError("INVALID_ARGUMENT", f"invalid filter_string: {exc}") from exc


def _name(name: str) -> str:
    if not name:
        raise ControlError("INVALID_ARGUMENT", "name is required")
    return name


@contextmanager
def _translated() -> Iterator[None]:
    """Registry, conversion and validation errors -> ControlError with their status."""
    try:
        yield
    except ScorerNotFound as exc:
        raise ControlError("NOT_FOUND", str(exc)) from exc
    except ScorerExists as exc:
        raise ControlError("ALREADY_EXISTS", str(exc)) from exc
    except TooManyActive as exc:
        raise ControlError("FAILED_PRECONDITION", str(exc)) from exc
    except ConversionError as exc:
        raise ControlError("INVALID_ARGUMENT", str(exc)) from exc
    except ValidationError as exc:
        raise ControlError("INVALID_ARGUMENT", f"invalid scorer: {describe_validation(exc)}") from exc
    except (RegistryError, ValueError) as exc:  # a spec the registry's validate refuses (unknown builtin, bad model)
        raise ControlError("INVALID_ARGUMENT", str(exc)) from exc


# --------------------------------------------------------------------------------------------- sessions


class SessionService:
    """tracejudge.v1.SessionService: `end_session(session_id)` is the scoring engine's (True: it was open;
    False: no open conversation of that id; None: the scoring worker did not answer)."""

    def __init__(self, end_session: Callable[[str], bool | None]) -> None:
        self._end_session = end_session

    def end_session(self, request: pb.EndSessionRequest) -> pb.EndSessionResponse:
        if not request.session_id:
            raise ControlError("INVALID_ARGUMENT", "session_id is empty")
        ended = self._end_session(request.session_id)
        if ended is None:
            raise ControlError("UNAVAILABLE", "the scoring worker did not answer; try again")
        if not ended:
            raise ControlError("NOT_FOUND", f"no open conversation with session id {request.session_id!r} (never "
                                            "seen by a session scorer, or judged with nothing new since)")  # fmt: skip
        return pb.EndSessionResponse(session_id=request.session_id)


# --------------------------------------------------------------------------------------------- assessments

_HEX = frozenset("0123456789abcdef")
_SOURCE_TYPES = {source.value for source in AssessmentSourceType}
_MAX_NAME = 256
_MAX_TEXT = 64 * 1024


class AssessmentStore(Protocol):
    """What AssessmentService keeps assessments in (exporter/feedback.py FeedbackStore)."""

    def log(self, assessment: Assessment) -> Assessment: ...
    def override(self, trace_id: str, assessment_id: str, new: Assessment) -> Assessment: ...
    def assessments(self, trace_id: str) -> list[tuple[Assessment, bool]]: ...


class AssessmentService:
    """tracejudge.v1.AssessmentService: MLflow's log_feedback / log_expectation / override_feedback and
    get_assessments. A request that cannot be used is INVALID_ARGUMENT naming the field."""

    def __init__(self, store: AssessmentStore) -> None:
        self._store = store

    def log_assessment(self, request: pb.LogAssessmentRequest) -> pb.AssessmentRecord:
        assessment = _assessment(request.trace_id, request.name, request, request.expectation, request.span_id)
        return _record(self._store.log(assessment), valid=True)

    def override_feedback(self, request: pb.OverrideFeedbackRequest) -> pb.AssessmentRecord:
        if not request.assessment_id:
            raise ControlError("INVALID_ARGUMENT", "assessment_id: required (the feedback to override)")
        new = _assessment(request.trace_id, "", request, expectation=False, span_id="", name_required=False)
        try:
            return _record(self._store.override(new.trace_id, request.assessment_id, new), valid=True)
        except LookupError as exc:
            raise ControlError("NOT_FOUND", str(exc)) from exc

    def get_assessments(self, request: pb.GetAssessmentsRequest) -> pb.GetAssessmentsResponse:
        trace_id = _hex_id(request.trace_id, "trace_id", 32)
        found = self._store.assessments(trace_id)
        return pb.GetAssessmentsResponse(assessments=[_record(a, valid) for a, valid in found])


def _assessment(trace_id: str, name: str, request: pb.LogAssessmentRequest | pb.OverrideFeedbackRequest,
                expectation: bool, span_id: str, name_required: bool = True) -> Assessment:  # fmt: skip
    trace_id = _hex_id(trace_id, "trace_id", 32)
    span = _hex_id(span_id, "span_id", 16) if span_id else ""
    if name_required and not name:
        raise ControlError("INVALID_ARGUMENT", "name: required (e.g. 'thumbs' or 'expected_response')")
    if len(name) > _MAX_NAME:
        raise ControlError("INVALID_ARGUMENT", f"name: at most {_MAX_NAME} characters")
    source_type = request.source.source_type.upper() or "HUMAN"
    if source_type not in _SOURCE_TYPES:
        raise ControlError("INVALID_ARGUMENT", f"source.source_type: {request.source.source_type!r} is not one of "
                                               f"{', '.join(sorted(_SOURCE_TYPES))}")  # fmt: skip
    if len(request.rationale) > _MAX_TEXT:
        raise ControlError("INVALID_ARGUMENT", f"rationale: at most {_MAX_TEXT} characters")
    value = _value(request, expectation)
    return Assessment(
        name=name, trace_id=trace_id, span_id=span, value=value, source=AssessmentSourceType(source_type),
        source_id=request.source.source_id, score=None if expectation else numeric_score(value),
        label=None if expectation else value_label(value), rationale=request.rationale or None,
        metadata=dict(request.metadata), expectation=expectation,
    )  # fmt: skip


def _value(request: pb.LogAssessmentRequest | pb.OverrideFeedbackRequest, expectation: bool) -> AssessmentValue:
    if not request.HasField("value"):
        raise ControlError("INVALID_ARGUMENT", "value: required (a bool, a number or a string)")
    kind = request.value.WhichOneof("kind")
    if kind == "bool_value":
        return bool(request.value.bool_value)
    if kind == "number_value":
        number = request.value.number_value
        return int(number) if number.is_integer() and abs(number) < 2**53 else number
    if kind == "string_value":
        if len(request.value.string_value) > _MAX_TEXT:
            raise ControlError("INVALID_ARGUMENT", f"value: a string of at most {_MAX_TEXT} characters")
        return str(request.value.string_value)
    if expectation and kind in ("list_value", "struct_value"):  # expected facts, an expected object: kept as JSON
        text = json.dumps(json_format.MessageToDict(request.value), separators=(",", ":"))
        if len(text) > _MAX_TEXT:
            raise ControlError("INVALID_ARGUMENT", f"value: at most {_MAX_TEXT} characters of JSON")
        return text
    allowed = "a bool, a number, a string, or for an expectation a list or an object"
    raise ControlError("INVALID_ARGUMENT", f"value: {kind or 'empty'} is not {allowed}")


def _hex_id(text: str, field: str, digits: int) -> str:
    value = text.lower()
    if len(value) != digits or not set(value) <= _HEX or set(value) == {"0"}:
        raise ControlError("INVALID_ARGUMENT", f"{field}: {text!r} is not {digits} hex digits (and not all zero)")
    return value


def _record(assessment: Assessment, valid: bool) -> pb.AssessmentRecord:
    record = pb.AssessmentRecord(
        assessment_id=assessment.assessment_id, trace_id=assessment.trace_id, span_id=assessment.span_id,
        name=assessment.name, source=pb.AssessmentSource(source_type=assessment.source.value,
                                                         source_id=assessment.source_id),
        rationale=assessment.rationale or "", expectation=assessment.expectation, metadata=assessment.metadata,
        valid=valid, overrides=assessment.overrides or "", timestamp_unix_nano=assessment.timestamp_ns,
        error=assessment.error or "", scorer_version=assessment.scorer_version,
    )  # fmt: skip
    value = assessment.value
    if isinstance(value, bool):
        record.value.bool_value = value
    elif isinstance(value, (int, float)):
        record.value.number_value = float(value)
    elif isinstance(value, str):
        record.value.string_value = value
    else:
        record.value.null_value = struct_pb2.NULL_VALUE
    return record


# ------------------------------------------------------------------------------------------- backfill


class BackfillStore(Protocol):
    """The sidecar's backfill jobs (tracejudge.backfill_jobs.BackfillJobs). Jobs are dataclasses with the
    fields of pb.BackfillJob; a ValueError is a job that cannot run as asked, a LookupError an unknown id."""

    def submit(self, scorers: Sequence[tuple[str, float | None]], start_time: str | None, end_time: str | None,
               rescore: bool, skipped_only: bool, dry_run: bool) -> object: ...  # fmt: skip
    def get(self, job_id: str) -> object: ...
    def jobs(self) -> Sequence[object]: ...
    def cancel(self, job_id: str) -> object: ...


class BackfillService:
    """tracejudge.v1.BackfillService: registered scorers over the sidecar's archive, as jobs it runs."""

    def __init__(self, store: BackfillStore) -> None:
        self._store = store

    def start_backfill(self, request: pb.StartBackfillRequest) -> pb.BackfillJob:
        scorers = [(s.scorer, s.sample_rate if s.HasField("sample_rate") else None) for s in request.scorers]
        with _backfill_errors():
            job = self._store.submit(scorers, request.start_time or None, request.end_time or None, request.rescore,
                                     request.skipped_only, request.dry_run)  # fmt: skip
        return _job(job)

    def get_backfill(self, request: pb.GetBackfillRequest) -> pb.BackfillJob:
        with _backfill_errors():
            return _job(self._store.get(request.job_id))

    def list_backfills(self, request: pb.ListBackfillsRequest) -> pb.ListBackfillsResponse:
        return pb.ListBackfillsResponse(jobs=[_job(job) for job in self._store.jobs()])

    def cancel_backfill(self, request: pb.CancelBackfillRequest) -> pb.BackfillJob:
        with _backfill_errors():
            return _job(self._store.cancel(request.job_id))


@contextmanager
def _backfill_errors() -> Iterator[None]:
    try:
        yield
    except LookupError as exc:
        raise ControlError("NOT_FOUND", str(exc)) from None
    except ValueError as exc:
        raise ControlError("INVALID_ARGUMENT", str(exc)) from None


def _job(job: object) -> pb.BackfillJob:
    record = dataclasses.asdict(job)  # type: ignore[call-overload]
    estimate = record.pop("estimate", None) or {}
    message = pb.BackfillJob(
        job_id=record["job_id"], status=record["status"], scorers=record["scorers"],
        start_time=record["start_time"], end_time=record["end_time"], rescore=record["rescore"],
        skipped_only=record["skipped_only"], traces=record["traces"], total_traces=record["total_traces"],
        assessments=record["assessments"], input_tokens=record["input_tokens"],
        output_tokens=record["output_tokens"], error=record["error"] or "", created_at=record["created_at"],
        finished_at=record["finished_at"] or 0.0, cost=record["cost"],
        skipped={f"{name}/{reason}": n for name, reasons in record["skipped"].items() for reason, n in reasons.items()},
    )  # fmt: skip
    if estimate:
        message.estimate.CopyFrom(pb.BackfillEstimate(
            traces=estimate["traces"], pairs=estimate["pairs"], already_scored=estimate["already"],
            judge_calls=estimate["judge_calls"], tokens=estimate["tokens"], cost=estimate.get("cost"),
            budget=estimate.get("budget", ""), tokens_from_prompts=estimate.get("tokens_from_prompts", []),
        ))  # fmt: skip
    return message

"""Human feedback and expectations, as MLflow's `log_feedback`, `log_expectation`, `override_feedback` and
`get_assessments`, sent to a sidecar's AssessmentService (gRPC or HTTP/JSON, as the scorer calls).

    import tracejudge
    tracejudge.log_feedback(trace_id=tid, name="thumbs", value=True, rationale="helpful",
                            source=tracejudge.AssessmentSource(source_type="HUMAN", source_id="user-42"))
    tracejudge.log_expectation(trace_id=tid, name="expected_response", value="30 days")
"""

from __future__ import annotations

import builtins
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from google.protobuf import json_format, struct_pb2

from tracejudge.proto import scorers_pb2 as pb

__all__ = ["Assessment", "AssessmentSource", "AssessmentSourceType"]


class AssessmentSourceType:
    """Who an assessment comes from (MLflow's names)."""

    HUMAN = "HUMAN"
    LLM_JUDGE = "LLM_JUDGE"
    CODE = "CODE"


@dataclass(frozen=True)
class AssessmentSource:
    """MLflow's AssessmentSource: `source_type` HUMAN, LLM_JUDGE or CODE, and who (a user id, a model)."""

    source_type: str = AssessmentSourceType.HUMAN
    source_id: str = ""


@dataclass(frozen=True)
class Assessment:
    """One assessment of a trace as the sidecar keeps it: feedback (a verdict) or an expectation."""

    assessment_id: str
    trace_id: str
    name: str
    value: Any
    source: AssessmentSource
    span_id: str = ""
    rationale: str | None = None
    expectation: bool = False
    metadata: dict[str, str] = field(default_factory=dict)
    valid: bool = True  # False once overridden
    overrides: str | None = None
    timestamp_ns: int = 0
    error: str | None = None
    scorer_version: int = 0

    @classmethod
    def from_proto(cls, record: pb.AssessmentRecord) -> Assessment:
        return cls(
            assessment_id=record.assessment_id, trace_id=record.trace_id, name=record.name,
            value=_python(record.value) if record.HasField("value") else None,
            source=AssessmentSource(record.source.source_type, record.source.source_id), span_id=record.span_id,
            rationale=record.rationale or None, expectation=record.expectation, metadata=dict(record.metadata),
            valid=record.valid, overrides=record.overrides or None, timestamp_ns=record.timestamp_unix_nano,
            error=record.error or None, scorer_version=record.scorer_version,
        )  # fmt: skip


def log_request(
    trace_id: str,
    name: str,
    value: Any,
    source: AssessmentSource | None,
    rationale: str | None,
    metadata: Mapping[str, Any] | None,
    span_id: str | None,
    expectation: bool,
) -> pb.LogAssessmentRequest:
    request = pb.LogAssessmentRequest(trace_id=trace_id, name=name, rationale=rationale or "", span_id=span_id or "",
                                      expectation=expectation, metadata=_metadata(metadata))  # fmt: skip
    _set_value(request.value, value, expectation)
    source = source or AssessmentSource()
    request.source.source_type, request.source.source_id = source.source_type, source.source_id
    return request


def override_request(
    trace_id: str,
    assessment_id: str,
    value: Any,
    source: AssessmentSource | None,
    rationale: str | None,
    metadata: Mapping[str, Any] | None,
) -> pb.OverrideFeedbackRequest:
    request = pb.OverrideFeedbackRequest(trace_id=trace_id, assessment_id=assessment_id, rationale=rationale or "",
                                         metadata=_metadata(metadata))  # fmt: skip
    _set_value(request.value, value, expectation=False)
    source = source or AssessmentSource()
    request.source.source_type, request.source.source_id = source.source_type, source.source_id
    return request


def _set_value(target: struct_pb2.Value, value: Any, expectation: bool) -> None:
    if isinstance(value, bool):
        target.bool_value = value
    elif isinstance(value, (int, float)):
        target.number_value = float(value)
    elif isinstance(value, str):
        target.string_value = value
    elif expectation and isinstance(value, (builtins.list, tuple, Mapping)):
        json_format.ParseDict(json.loads(json.dumps(value)), target)
    else:
        allowed = "a bool, a number, a string" + (", a list or a dict" if expectation else "")
        raise ValueError(f"value: {type(value).__name__} is not {allowed}")


def _python(value: struct_pb2.Value) -> Any:
    number = value.number_value if value.WhichOneof("kind") == "number_value" else None
    if number is not None and number.is_integer():
        return int(number)
    return json_format.MessageToDict(value)


def _metadata(metadata: Mapping[str, Any] | None) -> dict[str, str]:
    return {str(key): str(value) for key, value in (metadata or {}).items()}

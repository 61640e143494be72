"""ScorerSpec <-> the Scorer message: the registry's data as the API carries it, and back."""

from __future__ import annotations

from typing import Any

from google.protobuf import json_format
from pydantic import ValidationError

from tracejudge.proto import scorers_pb2 as pb
from tracejudge.schema import VALUE_TYPES, plain_struct
from tracejudge.scoring.spec import ScorerSpec, SpanTarget


class ConversionError(ValueError):
    """A Scorer message that says something no spec can (both a value type and categories, an unknown type)."""


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
    if isinstance(spec.target, SpanTarget):
        message.target.kind = "spans"
        for key in ("span_type", "name", "filter_string"):
            if getattr(spec.target, key) is not None:
                setattr(message.target, key, getattr(spec.target, key))
        message.target.max_spans_per_trace = spec.target.max_spans_per_trace
    elif spec.target is not None:
        message.target.kind = spec.target
    return message


def spec_from_proto(message: pb.Scorer) -> ScorerSpec:
    """A registrable spec (sample rate 0, version 1); ConversionError or pydantic's ValidationError if it is not."""
    raw: dict[str, Any] = {"name": message.name}
    kind = message.WhichOneof("kind")
    if kind == "guidelines":
        raw["guidelines"] = list(message.guidelines.guidelines)
    elif kind is not None:
        raw[kind] = getattr(message, kind)
    if message.feedback_value_type and message.feedback_categories:
        raise ConversionError("set feedback_value_type or feedback_categories, not both")
    if message.feedback_categories:
        raw["feedback_value_type"] = list(message.feedback_categories)
    elif message.feedback_value_type:
        if message.feedback_value_type not in VALUE_TYPES:
            raise ConversionError(
                f"feedback_value_type must be one of {', '.join(VALUE_TYPES)} (or give "
                f"feedback_categories), got {message.feedback_value_type!r}"
            )
        raw["feedback_value_type"] = message.feedback_value_type
    if message.HasField("model"):
        raw["model"] = message.model
    if message.HasField("params"):
        raw["params"] = plain_struct(json_format.MessageToDict(message.params))
    if message.HasField("filter_string"):
        raw["filter_string"] = message.filter_string
    if message.HasField("target"):
        raw["target"] = _target(message.target)
    return ScorerSpec.model_validate(raw)


def _target(target: pb.ScorerTarget) -> str | dict[str, Any] | None:
    spans = {key: getattr(target, key) for key in ("span_type", "name", "filter_string") if target.HasField(key)}
    if target.max_spans_per_trace:
        spans["max_spans_per_trace"] = target.max_spans_per_trace
    if target.kind in ("", "spans"):
        return spans or None
    if spans:
        raise ConversionError(f"target kind {target.kind!r} takes no span_type, name, filter_string or max_spans")
    return target.kind


def describe_validation(error: ValidationError) -> str:
    """pydantic's errors as one line: `field: message; ...`."""
    parts = []
    for item in error.errors():
        where = ".".join(str(part) for part in item["loc"])
        message = str(item["msg"]).removeprefix("Value error, ")
        parts.append(f"{where}: {message}" if where else message)
    return "; ".join(parts)

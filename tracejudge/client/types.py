"""The small value types of the client's API: a scorer's status, its sampling, what a judge answers."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any, Literal, get_args, get_origin

from tracejudge.proto import scorers_pb2 as pb
from tracejudge.schema import VALUE_TYPES


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


def value_type(value: Any) -> str | list[str] | None:
    """bool/int/float/str (the types or their names), Literal["a", "b"] or a list of categories."""
    if value is None:
        return None
    if value in (bool, int, float, str):
        return str(value.__name__)
    if isinstance(value, str) and value in VALUE_TYPES:
        return value
    if get_origin(value) is Literal and all(isinstance(arg, str) for arg in get_args(value)):
        return [str(arg) for arg in get_args(value)]
    if isinstance(value, (list, tuple)) and value and all(isinstance(item, str) for item in value):
        return list(value)
    raise TypeError(f"feedback_value_type must be bool, int, float, str or Literal[...] of strings, got {value!r}")

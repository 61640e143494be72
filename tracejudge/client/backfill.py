"""MLflow's BackfillScorerConfig, and the handle on a backfill job a sidecar runs (`backfill_scorers`)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from google.protobuf import json_format

from tracejudge.proto import scorers_pb2 as pb

FINISHED = ("succeeded", "failed", "cancelled", "estimate")  # a dry run ends with its estimate


@dataclass(frozen=True)
class BackfillScorerConfig:
    """A registered scorer (its name, or a scorer object with that name) and the rate to backfill it at
    (None: its live rate; a stopped scorer needs one)."""

    scorer: Any
    sample_rate: float | None = None

    @property
    def name(self) -> str:
        return self.scorer if isinstance(self.scorer, str) else str(self.scorer.name)


class BackfillJob:
    """A backfill job as the sidecar last reported it: `job_id`, `status`, counts, `estimate`. `refresh()`
    asks again, `wait()` until it ends, `cancel()` stops it (what it judged stays)."""

    def __init__(self, message: pb.BackfillJob, call: Callable[[str, Any], Any]) -> None:
        self._message = message
        self._call = call

    @property
    def job_id(self) -> str:
        return str(self._message.job_id)

    @property
    def status(self) -> str:
        return str(self._message.status)

    @property
    def done(self) -> bool:
        return self.status in FINISHED

    @property
    def error(self) -> str | None:
        return str(self._message.error) or None

    def to_dict(self) -> dict[str, Any]:
        """Every field, zeros included, by the .proto's names; counts as ints (proto3 JSON's int64 are text)."""
        record = json_format.MessageToDict(self._message, preserving_proto_field_name=True,
                                           always_print_fields_with_no_presence=True)  # fmt: skip
        return dict(_counted(record))

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        value = self.to_dict()
        if name not in value:
            raise AttributeError(f"BackfillJob has no field {name!r}")
        return value[name]

    def refresh(self) -> BackfillJob:
        self._message = self._call("GetBackfill", pb.GetBackfillRequest(job_id=self.job_id))
        return self

    def wait(self, timeout: float | None = None, poll_s: float = 0.5) -> BackfillJob:
        """Until the job ends (TimeoutError after `timeout` seconds); the job as it ended."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.refresh().done:
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"backfill {self.job_id} still {self.status} after {timeout:g}s")
            time.sleep(poll_s)
        return self

    def cancel(self) -> BackfillJob:
        self._message = self._call("CancelBackfill", pb.CancelBackfillRequest(job_id=self.job_id))
        return self

    def __repr__(self) -> str:
        return f"BackfillJob({self.job_id!r}, status={self.status!r})"


def _counted(value: Any) -> Any:
    """Proto3 JSON's int64 (text) back to ints, in a job record: every string of digits is a count there."""
    if isinstance(value, dict):
        return {key: item if key in _TEXT_FIELDS else _counted(item) for key, item in value.items()}
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return value


_TEXT_FIELDS = ("job_id", "status", "start_time", "end_time", "error", "budget")


def start_request(scorers: list[BackfillScorerConfig | str | Any], start_time: Any, end_time: Any, rescore: bool,
                  skipped_only: bool, dry_run: bool) -> pb.StartBackfillRequest:  # fmt: skip
    """A datetime is sent as RFC 3339; a string ("24h", "2026-12-01") as it is."""
    request = pb.StartBackfillRequest(rescore=rescore, skipped_only=skipped_only, dry_run=dry_run,
                                      start_time=_moment(start_time), end_time=_moment(end_time))  # fmt: skip
    for item in scorers:
        config = item if isinstance(item, BackfillScorerConfig) else BackfillScorerConfig(item)
        entry = request.scorers.add(scorer=config.name)
        if config.sample_rate is not None:
            entry.sample_rate = float(config.sample_rate)
    return request


def _moment(value: Any) -> str:
    if value is None:
        return ""
    return value.isoformat() if hasattr(value, "isoformat") else str(value)

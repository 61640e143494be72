"""Executable scorers, built from ScorerSpecs: one `score(view)` each, always returning assessments.

Built-in checks run inline (microseconds); code scorers run in a thread pool under a timeout; LLM
judges await the judge client. Whatever fails becomes an assessment with `error` set.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, Protocol

from tracejudge.model import Assessment, AssessmentSource

from .checks import CHECKS, REQUIRED_PARAMS, Check
from .code import (
    CodeRunner,
    CodeTimeout,
    bind_arguments,
    error_assessment,
    load_function,
    numeric_score,
    to_assessments,
    value_label,
)
from .judge_client import JudgeClient, JudgeError
from .judges import (
    BUILTIN_JUDGES,
    SYSTEM_PROMPT,
    JudgeDefinition,
    guidelines_definition,
    missing_inputs,
    prompt_definition,
    render_sections,
    result_schema,
)
from .spec import ScorerSpec
from .view import TraceView

JudgeLookup = Callable[[str | None], JudgeClient]
log = logging.getLogger(__name__)


class FailureLog:
    """Warns about a scorer's failures at most every `interval_s`, counting what it held back."""

    def __init__(self, scorer_name: str, interval_s: float = 10.0) -> None:
        self._name = scorer_name
        self._interval_s = interval_s
        self._last = float("-inf")
        self._held_back = 0

    def record(self, assessment: Assessment) -> Assessment:
        now = time.monotonic()
        if now - self._last < self._interval_s:
            self._held_back += 1
            return assessment
        extra = f" ({self._held_back} more since the last warning)" if self._held_back else ""
        log.warning("scorer %s failed on trace %s: %s%s; recorded as an error assessment", self._name,
                    assessment.trace_id, assessment.error, extra)  # fmt: skip
        self._last, self._held_back = now, 0
        return assessment


class Scorer(Protocol):
    spec: ScorerSpec

    async def score(self, view: TraceView) -> list[Assessment]: ...


class UnknownScorer(ValueError):
    """A spec naming a builtin that does not exist, or a code scorer that cannot be loaded."""


class CheckScorer:
    def __init__(self, spec: ScorerSpec, check: Check) -> None:
        self.spec = spec
        self._check = check

    async def score(self, view: TraceView) -> list[Assessment]:
        started = time.perf_counter()
        source_id = f"builtin:{self.spec.builtin}"
        try:
            feedback = self._check(view, self.spec.params)
        except Exception as exc:
            return [_failed(self.spec, view, AssessmentSource.CODE, source_id, "exception", exc)]
        elapsed = (time.perf_counter() - started) * 1000
        return to_assessments(feedback, self.spec.name, view, AssessmentSource.CODE, source_id, self.spec.version,
                              elapsed)  # fmt: skip


class CodeScorer:
    def __init__(self, spec: ScorerSpec, function: Callable[..., Any], runner: CodeRunner) -> None:
        self.spec = spec
        self._function = function
        self._runner = runner
        self._failures = FailureLog(spec.name)

    async def score(self, view: TraceView) -> list[Assessment]:
        source_id = str(self.spec.code)
        arguments = bind_arguments(self._function, view)
        started = time.perf_counter()
        try:
            result = await self._runner.run(self.spec.name, self._function, arguments)
        except CodeTimeout:
            message = f"timed out after {self._runner.timeout_s:g}s"
            return [self._failures.record(error_assessment(self.spec.name, view, AssessmentSource.CODE, source_id,
                                                           self.spec.version, "timeout", message))]  # fmt: skip
        except Exception as exc:
            return [self._failures.record(_failed(self.spec, view, AssessmentSource.CODE, source_id, "exception", exc))]
        elapsed = (time.perf_counter() - started) * 1000
        return to_assessments(result, self.spec.name, view, AssessmentSource.CODE, source_id, self.spec.version,
                              elapsed)  # fmt: skip


class JudgeScorer:
    def __init__(self, spec: ScorerSpec, definition: JudgeDefinition, client: JudgeClient) -> None:
        self.spec = spec
        self._definition = definition
        self._client = client
        self._schema = result_schema(definition)
        self._failures = FailureLog(spec.name)

    async def score(self, view: TraceView) -> list[Assessment]:
        missing = missing_inputs(view, self._definition)
        if missing:
            return [self._not_applicable(view, missing)]
        user = self._definition.question + "\n\n" + render_sections(view, self._definition.sections, self._client.fence)
        try:
            reply = await self._client.judge(SYSTEM_PROMPT, user, self._schema, self.spec.name)
        except JudgeError as exc:
            failed = error_assessment(self.spec.name, view, AssessmentSource.LLM_JUDGE, self._client.config.model,
                                      self.spec.version, exc.kind, str(exc))  # fmt: skip
            return [self._failures.record(failed)]
        value = reply.value.get("result")
        rationale = reply.value.get("rationale")
        return [Assessment(
            name=self.spec.name, trace_id=view.trace_id, span_id=view.root_span_id,
            value=value if isinstance(value, (bool, int, float, str)) else None,
            source=AssessmentSource.LLM_JUDGE, source_id=reply.model,
            score=numeric_score(value), label=value_label(value),
            rationale=str(rationale) if rationale is not None else None, session_id=view.session_id,
            scorer_version=self.spec.version, judge_input_tokens=reply.input_tokens,
            judge_output_tokens=reply.output_tokens, latency_ms=reply.latency_s * 1000,
            metadata={"attempts": str(reply.attempts)}, timestamp_ns=time.time_ns(),
        )]  # fmt: skip

    def _not_applicable(self, view: TraceView, missing: list[str]) -> Assessment:
        return Assessment(
            name=self.spec.name, trace_id=view.trace_id, span_id=view.root_span_id, value=None,
            source=AssessmentSource.LLM_JUDGE, source_id=self._client.config.model, label="not_applicable",
            rationale=f"not applicable: the trace has no {' or '.join(missing)}", session_id=view.session_id,
            scorer_version=self.spec.version, timestamp_ns=time.time_ns(),
        )  # fmt: skip


def build_scorer(spec: ScorerSpec, judge_for: JudgeLookup, code: CodeRunner) -> Scorer:
    """The executable scorer for a spec; raises UnknownScorer with a message naming what is wrong."""
    if spec.builtin is not None:
        return _builtin(spec, judge_for)
    if spec.guidelines is not None:
        return JudgeScorer(spec, guidelines_definition(spec.guidelines), judge_for(spec.model))
    if spec.instructions is not None:
        return JudgeScorer(spec, prompt_definition(spec.instructions, spec.feedback_value_type), judge_for(spec.model))
    assert spec.code is not None
    try:
        return CodeScorer(spec, load_function(spec.code), code)
    except Exception as exc:
        raise UnknownScorer(str(exc)) from exc


def _builtin(spec: ScorerSpec, judge_for: JudgeLookup) -> Scorer:
    name = str(spec.builtin)
    if name in CHECKS:
        missing = [p for p in REQUIRED_PARAMS.get(name, ()) if p not in spec.params]
        if missing:
            raise UnknownScorer(f"builtin {name} needs params {missing}")
        return CheckScorer(spec, CHECKS[name])
    if name in BUILTIN_JUDGES:
        return JudgeScorer(spec, BUILTIN_JUDGES[name], judge_for(spec.model))
    if name == "Guidelines":
        return JudgeScorer(spec, guidelines_definition(list(spec.params.get("guidelines", []))), judge_for(spec.model))
    known = sorted([*CHECKS, *BUILTIN_JUDGES])
    raise UnknownScorer(f"unknown builtin {name!r}; known: {', '.join(known)}")


def _failed(
    spec: ScorerSpec, view: TraceView, source: AssessmentSource, source_id: str, kind: str, exc: Exception
) -> Assessment:
    message = f"{type(exc).__name__}: {exc}"
    return error_assessment(spec.name, view, source, source_id, spec.version, kind, message)

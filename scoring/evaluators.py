"""Evaluators: a registered scorer (a ScorerSpec) made executable, one `evaluate(view)` each.

"Scorer" is the users' word for what they register (tracejudge.scorers); an Evaluator is what the
scoring loop runs for it. Built-in checks run inline (microseconds); code scorers run in a thread
pool under a timeout; LLM judges await the judge client. Whatever fails becomes an assessment with
`error` set (scoring/assessments.py): an evaluator always returns assessments, never raises.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Any, Protocol

from tracejudge.model import Assessment, AssessmentSourceType

from .assessments import Verdicts
from .checks import CHECKS, REQUIRED_PARAMS, Check
from .code import CodeRunner, CodeTimeout, bind_arguments, load_function
from .judge_client import JudgeClient, JudgeError, estimate_tokens
from .judges import (
    BUILTIN_JUDGES,
    CONVERSATION_JUDGES,
    JUDGE_NAMES,
    SYSTEM_PROMPT,
    JudgeDefinition,
    conversational_guidelines_definition,
    guidelines_definition,
    missing_inputs,
    prompt_definition,
    render_sections,
    result_schema,
)
from .spec import ScorerSpec
from .view import Judged, TraceView

JudgeLookup = Callable[[str | None], JudgeClient]
log = logging.getLogger(__name__)


class Evaluator(Protocol):
    """`evaluate` takes what the spec's target is: a TraceView (a trace, or one span of it) or a SessionView."""

    spec: ScorerSpec

    async def evaluate(self, view: Judged) -> list[Assessment]: ...


class UnknownScorer(ValueError):
    """A spec naming a builtin that does not exist, or a code scorer that cannot be loaded."""


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


class CheckEvaluator:
    def __init__(self, spec: ScorerSpec, check: Check) -> None:
        self.spec = spec
        self._check = check
        self._verdicts = Verdicts(spec.name, spec.version, AssessmentSourceType.CODE, f"builtin:{spec.builtin}")

    async def evaluate(self, view: Judged) -> list[Assessment]:
        started = time.perf_counter()
        if not isinstance(view, TraceView):  # the spec refuses a session target for a check
            return [self._verdicts.error(view, "bad_target", "a check judges traces, not sessions")]
        try:
            feedback = self._check(view, self.spec.params)
        except Exception as exc:
            return [self._verdicts.raised(view, exc)]
        return self._verdicts.of(feedback, view, (time.perf_counter() - started) * 1000)


class CodeEvaluator:
    def __init__(self, spec: ScorerSpec, function: Callable[..., Any], runner: CodeRunner) -> None:
        self.spec = spec
        self._function = function
        self._runner = runner
        self._verdicts = Verdicts(spec.name, spec.version, AssessmentSourceType.CODE, str(spec.code))
        self._failures = FailureLog(spec.name)

    async def evaluate(self, view: Judged) -> list[Assessment]:
        arguments = bind_arguments(self._function, view)
        started = time.perf_counter()
        try:
            result = await self._runner.run(self.spec.name, self._function, arguments)
        except CodeTimeout:
            message = f"timed out after {self._runner.timeout_s:g}s"
            return [self._failures.record(self._verdicts.error(view, "timeout", message))]
        except Exception as exc:
            return [self._failures.record(self._verdicts.raised(view, exc))]
        return self._verdicts.of(result, view, (time.perf_counter() - started) * 1000)


class JudgeEvaluator:
    def __init__(self, spec: ScorerSpec, definition: JudgeDefinition, client: JudgeClient) -> None:
        self.spec = spec
        self._definition = definition
        self._client = client
        self._schema = result_schema(definition)
        self._verdicts = Verdicts(spec.name, spec.version, AssessmentSourceType.LLM_JUDGE, client.config.model)
        self._failures = FailureLog(spec.name)

    def prompt_tokens(self, view: Judged) -> int | None:
        """The input tokens a call on `view` would cost, as the judge client estimates them (4 characters a
        token, the schema included); None when the scorer would not call (not applicable). For estimates."""
        if missing_inputs(view, self._definition):
            return None
        return estimate_tokens(SYSTEM_PROMPT, self._user_prompt(view), json.dumps(self._schema))

    def _user_prompt(self, view: Judged) -> str:
        return self._definition.question + "\n\n" + render_sections(view, self._definition.sections, self._client.fence)

    async def evaluate(self, view: Judged) -> list[Assessment]:
        missing = missing_inputs(view, self._definition)
        if missing:
            return [self._verdicts.not_applicable(view, missing)]
        user = self._user_prompt(view)
        try:
            reply = await self._client.judge(SYSTEM_PROMPT, user, self._schema, self.spec.name)
        except JudgeError as exc:
            return [self._failures.record(self._verdicts.error(view, exc.kind, str(exc)))]
        return [self._verdicts.judged(
            view, reply.value.get("result"), reply.value.get("rationale"), source_id=reply.model,
            input_tokens=reply.input_tokens, output_tokens=reply.output_tokens, latency_ms=reply.latency_s * 1000,
            attempts=reply.attempts,
        )]  # fmt: skip


def build_evaluator(spec: ScorerSpec, judge_for: JudgeLookup, code: CodeRunner) -> Evaluator:
    """The evaluator for a spec; raises UnknownScorer with a message naming what is wrong."""
    if spec.builtin is not None:
        return _builtin(spec, judge_for)
    if spec.guidelines is not None:
        return JudgeEvaluator(spec, guidelines_definition(spec.guidelines), judge_for(spec.model))
    if spec.instructions is not None:
        definition = prompt_definition(spec.instructions, spec.feedback_value_type)
        return JudgeEvaluator(spec, definition, judge_for(spec.model))
    assert spec.code is not None
    try:
        return CodeEvaluator(spec, load_function(spec.code, session=spec.target_kind == "session"), code)
    except Exception as exc:
        raise UnknownScorer(str(exc)) from exc


def _builtin(spec: ScorerSpec, judge_for: JudgeLookup) -> Evaluator:
    name = str(spec.builtin)
    if name in CHECKS:
        missing = [p for p in REQUIRED_PARAMS.get(name, ()) if p not in spec.params]
        if missing:
            raise UnknownScorer(f"builtin {name} needs params {missing}")
        return CheckEvaluator(spec, CHECKS[name])
    if name in BUILTIN_JUDGES:
        return JudgeEvaluator(spec, BUILTIN_JUDGES[name], judge_for(spec.model))
    if name in CONVERSATION_JUDGES:
        return JudgeEvaluator(spec, CONVERSATION_JUDGES[name], judge_for(spec.model))
    if name == "ConversationalGuidelines":
        rules = spec.params.get("guidelines", [])
        definition = conversational_guidelines_definition([rules] if isinstance(rules, str) else list(rules))
        return JudgeEvaluator(spec, definition, judge_for(spec.model))
    if name == "Guidelines":
        definition = guidelines_definition(list(spec.params.get("guidelines", [])))
        return JudgeEvaluator(spec, definition, judge_for(spec.model))
    known = sorted([*CHECKS, *JUDGE_NAMES])
    raise UnknownScorer(f"unknown builtin {name!r}; known: {', '.join(known)}")

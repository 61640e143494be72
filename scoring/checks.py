"""Built-in code scorers that need no model: a newcomer sees assessments without an API key.

Each check reads a TraceView and its spec's `params`, and answers a pass/fail question with a
rationale. Names are usable as `builtin:` in the config file.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from typing import Any

from tracejudge.model import Feedback

from .view import TraceView

Check = Callable[[TraceView, Mapping[str, Any]], Feedback]

_PII = {
    "email": re.compile(r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}\b"),
    "phone": re.compile(r"(?<!\d)(?:\+\d{1,3}[ .-]?)?(?:\(\d{2,4}\)[ .-]?|\d{2,4}[ .-])\d{3,4}[ .-]\d{3,4}(?!\d)"),
    "us_ssn": re.compile(r"\b\d{3}-\d{2}-\d{4}\b"),
    "card": re.compile(r"\b(?:\d[ -]?){13,19}\b"),
}


def no_error(view: TraceView, _params: Mapping[str, Any]) -> Feedback:
    if view.status != "ERROR":
        return Feedback(True, "no span failed")
    return Feedback(False, "; ".join(view.errors) or "a span has status ERROR")


def latency_under(view: TraceView, params: Mapping[str, Any]) -> Feedback:
    limit = float(params.get("threshold_ms", 10_000))
    return Feedback(view.execution_time_ms <= limit, f"took {view.execution_time_ms} ms (limit {limit:g} ms)")


def token_budget(view: TraceView, params: Mapping[str, Any]) -> Feedback:
    limit = int(params.get("max_tokens", 8_000))
    used = view.total_tokens
    if used is None:
        return Feedback(None, "no token usage recorded", metadata={"applicable": "false"})
    return Feedback(used <= limit, f"used {used} tokens (budget {limit})")


def non_empty_response(view: TraceView, _params: Mapping[str, Any]) -> Feedback:
    text = view.response_text.strip()
    return Feedback(bool(text), f"response has {len(text)} characters")


def valid_json(view: TraceView, _params: Mapping[str, Any]) -> Feedback:
    try:
        json.loads(view.response_text)
    except ValueError as exc:
        return Feedback(False, f"response is not JSON: {exc}")
    return Feedback(True, "response parses as JSON")


def regex_match(view: TraceView, params: Mapping[str, Any]) -> Feedback:
    pattern = re.compile(str(params["pattern"]))
    must_match = bool(params.get("must_match", True))
    found = pattern.search(view.response_text) is not None
    verb = "matches" if found else "does not match"
    return Feedback(found == must_match, f"response {verb} /{pattern.pattern}/")


def no_pii(view: TraceView, params: Mapping[str, Any]) -> Feedback:
    text = view.response_text if params.get("field", "outputs") == "outputs" else view.request_text
    kinds = [kind for kind, pattern in _PII.items() if _found(kind, pattern, text)]
    return Feedback(not kinds, f"found {', '.join(kinds)}" if kinds else "no PII pattern found")


def _found(kind: str, pattern: re.Pattern[str], text: str) -> bool:
    if kind != "card":
        return pattern.search(text) is not None
    return any(_luhn(re.sub(r"\D", "", m.group())) for m in pattern.finditer(text))


def _luhn(digits: str) -> bool:
    total = 0
    for index, char in enumerate(reversed(digits)):
        digit = int(char) * (2 if index % 2 else 1)
        total += digit - 9 if digit > 9 else digit
    return 13 <= len(digits) <= 19 and total % 10 == 0


CHECKS: dict[str, Check] = {
    "NoError": no_error,
    "LatencyUnder": latency_under,
    "TokenBudget": token_budget,
    "NonEmptyResponse": non_empty_response,
    "ValidJson": valid_json,
    "RegexMatch": regex_match,
    "NoPii": no_pii,
}
REQUIRED_PARAMS = {"RegexMatch": ("pattern",)}

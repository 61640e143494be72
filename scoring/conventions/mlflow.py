"""MLflow tracing: mlflow.spanType, mlflow.spanInputs/Outputs, mlflow.chat.tokenUsage.

Why it decodes every value first: MLflow JSON-encodes every attribute value it writes, strings included
("\"user-7\""), numbers and booleans too. Decoded once, before any reader runs, the values read like any
other convention's, and the view's span attributes and tags show the values rather than their JSON.
Decoding is wider than elsewhere (a number or `true` is JSON here); text that is not JSON stays as it was.
"""

from __future__ import annotations

from typing import Any

from tracejudge.scoring.conventions.record import Convention, SpanRecord, span_kind, span_tool
from tracejudge.scoring.values import as_int, first, loads, scalar

__all__ = ["CONVENTION"]

_JSON_START = frozenset('{["-0123456789tfn')


def read(r: SpanRecord, results: dict[str, str]) -> None:
    a = r.attrs
    r.kind = r.kind or span_kind(a.get("mlflow.spanType"))
    r.inputs = first(r.inputs, a.get("mlflow.spanInputs"))
    r.outputs = first(r.outputs, a.get("mlflow.spanOutputs"))
    r.model = r.model or scalar(a.get("mlflow.llm.model"))
    r.provider = r.provider or scalar(a.get("mlflow.llm.provider"))
    usage = a.get("mlflow.chat.tokenUsage")
    if isinstance(usage, dict):
        r.input_tokens = first(r.input_tokens, as_int(usage.get("input_tokens")))
        r.output_tokens = first(r.output_tokens, as_int(usage.get("output_tokens")))
    if r.kind == "TOOL" and r.tool is None:
        name = scalar(a.get("mlflow.spanFunctionName")) or r.span.name
        r.tool = span_tool(r, name, r.inputs, None, r.outputs)


def decode(attrs: dict[str, Any]) -> dict[str, Any]:
    return {key: loads(value, _JSON_START) if isinstance(value, str) else value for key, value in attrs.items()}


CONVENTION = Convention(name="mlflow", read=read, markers=("mlflow.spanType",), decode=decode)

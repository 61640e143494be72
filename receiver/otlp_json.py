"""Decode OTLP/JSON export requests (traces, logs, metrics).

OTLP/JSON is the protobuf JSON mapping with one dangerous difference: trace and span ids are
hex strings, not base64. ``google.protobuf.json_format.Parse`` accepts a 32-character hex trace
id as base64 and silently decodes it into 24 wrong bytes. So the body is loaded as plain JSON,
the known id fields are checked and rewritten from hex to base64, and only then is the document
handed to ``json_format.ParseDict``. Keys are accepted in lowerCamelCase and snake_case, as the
Go Collector does.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Mapping
from functools import cache
from typing import Any, TypeAlias, TypeVar

from google.protobuf import json_format
from google.protobuf.message import Message

M = TypeVar("M", bound=Message)

_Schema: TypeAlias = Mapping[str, "_Schema | int"]

_TRACE_ID = 16
_SPAN_ID = 8
_IDS: _Schema = {"traceId": _TRACE_ID, "spanId": _SPAN_ID}
_SPAN: _Schema = {**_IDS, "parentSpanId": _SPAN_ID, "links": _IDS}
_POINTS: _Schema = {"dataPoints": {"exemplars": _IDS}}
_METRIC: _Schema = dict.fromkeys(("gauge", "sum", "histogram", "exponentialHistogram"), _POINTS)

_SCHEMAS: dict[str, _Schema] = {
    "opentelemetry.proto.collector.trace.v1.ExportTraceServiceRequest": {
        "resourceSpans": {"scopeSpans": {"spans": _SPAN}},
    },
    "opentelemetry.proto.collector.logs.v1.ExportLogsServiceRequest": {
        "resourceLogs": {"scopeLogs": {"logRecords": _IDS}},
    },
    "opentelemetry.proto.collector.metrics.v1.ExportMetricsServiceRequest": {
        "resourceMetrics": {"scopeMetrics": {"metrics": _METRIC}},
    },
}

_HEX = re.compile(r"[0-9a-fA-F]*")
_JSON_TYPES: dict[type, str] = {
    dict: "an object",
    list: "an array",
    str: "a string",
    bool: "a boolean",
    int: "a number",
    float: "a number",
}


class OtlpJsonError(ValueError):
    """An OTLP/JSON body that cannot be decoded; the message names the offending field path,
    e.g. 'resourceSpans[0].scopeSpans[1].spans[3].traceId: not 32 hex characters'."""


def parse_otlp_json(body: bytes, message_type: type[M]) -> M:
    """Decode an OTLP/JSON request body into a new `message_type` (an Export*ServiceRequest)."""
    _schema_for(message_type)  # a wrong type is the caller's bug: say so before blaming the body
    return parse_otlp_document(_load_object(body), message_type)


def parse_otlp_document(document: dict[str, Any], message_type: type[M]) -> M:
    """Decode an OTLP/JSON document already loaded as a JSON object (a file source reads the object first to
    tell traces from logs). Its id fields are rewritten in place."""
    schema = _schema_for(message_type)
    _walk(document, schema, "")
    message: M = message_type()
    try:
        json_format.ParseDict(document, message, ignore_unknown_fields=True)
    except json_format.ParseError as exc:
        raise OtlpJsonError(str(exc)) from exc
    return message


def _schema_for(message_type: type[Message]) -> _Schema:
    name = message_type.DESCRIPTOR.full_name
    if name not in _SCHEMAS:
        raise TypeError(f"not an OTLP export request type: {name}")
    return _SCHEMAS[name]


def _load_object(body: bytes) -> dict[str, Any]:
    try:
        document = json.loads(body.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise OtlpJsonError(f"body is not valid UTF-8: {exc}") from exc
    except (ValueError, RecursionError) as exc:
        raise OtlpJsonError(f"body is not valid JSON: {exc}") from exc
    if not isinstance(document, dict):
        raise OtlpJsonError(f"body must be a JSON object, not {_json_type(document)}")
    return document


def _json_type(value: object) -> str:
    return _JSON_TYPES.get(type(value), "null")


def _walk(node: dict[str, Any], schema: _Schema, path: str) -> None:
    for name, child in schema.items():
        for key in _spellings(name):
            if key not in node:
                continue
            key_path = f"{path}.{key}" if path else key
            if isinstance(child, int):
                node[key] = _hex_to_base64(node[key], child, key_path)
            else:
                _descend(node[key], child, key_path)


def _descend(value: object, schema: _Schema, path: str) -> None:
    if isinstance(value, dict):
        _walk(value, schema, path)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            if isinstance(item, dict):
                _walk(item, schema, f"{path}[{index}]")


@cache
def _spellings(camel: str) -> tuple[str, ...]:
    snake = re.sub(r"([A-Z])", r"_\1", camel).lower()
    return (camel, snake) if snake != camel else (camel,)


def _hex_to_base64(value: object, size: int, path: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise OtlpJsonError(f"{path}: expected a hex string, not {_json_type(value)}")
    # Any whole number of hex bytes decodes: an id of the wrong length is well-formed JSON, and the receiver
    # rejects just that span (receiver/screen.py, OTLP partial success) rather than the whole request.
    if len(value) % 2 or not _HEX.fullmatch(value):
        raise OtlpJsonError(f"{path}: not {2 * size} hex characters")
    return base64.b64encode(bytes.fromhex(value)).decode("ascii")

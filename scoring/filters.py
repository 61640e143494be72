"""Filter strings: which completed traces a scorer looks at (MLflow's ``ScorerSamplingConfig(filter_string=...)``).

The syntax is MLflow's ``search_traces`` filter syntax, so a filter that works in ``mlflow.search_traces()`` works
here. A filter string is parsed ONCE, when the scorer is registered, into a compiled :class:`TraceFilter`: every
syntax error, unknown key, operator the key does not support, or value of the wrong type (a string for a numeric
key, a bad status, an invalid RLIKE pattern) is a :class:`FilterSyntaxError` at registration, pointing at the
offending token, instead of a scorer that silently never fires. Matching then never raises: a missing tag,
attribute or span makes its condition false.

Grammar: ``condition [AND condition]...``; ``condition := key operator value``. ``AND`` is case-insensitive.
``OR``, ``NOT`` (except in ``NOT IN``) and parentheses are not supported, as in MLflow.

Keys (prefixes ``attributes.``, ``attribute.`` and ``trace.`` are synonyms; a bare attribute name such as
``status`` or ``timestamp`` works too, as in MLflow; prefixes and attribute names are case-insensitive):

==================================  ======  ===========================================================
key                                 type    reads
==================================  ======  ===========================================================
attributes.status                   status  TraceView.status: 'OK' (nothing failed, OTel UNSET included) or 'ERROR'
                                            ('UNSET' parses, for spans' status, but no trace has it)
attributes.timestamp_ms             number  trace start, epoch ms (alias ``timestamp``)
attributes.execution_time_ms        number  duration in ms (alias ``execution_time``)
attributes.end_time_ms              number  timestamp_ms + execution_time_ms
attributes.name                     string  tag ``mlflow.traceName`` if set, else the root span's name
attributes.trace_id                 string  32 lowercase hex digits (alias ``request_id``)
attributes.service_name             string  resource ``service.name`` (tracejudge extension)
attributes.session_id               string  TraceView.session_id (tracejudge extension)
attributes.user_id                  string  TraceView.user_id (tracejudge extension)
attributes.model                    string  the last LLM call's model (tracejudge extension)
attributes.input_tokens             number  summed over LLM calls (tracejudge extension)
attributes.output_tokens            number  summed over LLM calls (tracejudge extension)
attributes.total_tokens             number  input + output tokens (tracejudge extension)
tags.<key>  (also ``tag.``)         string  TraceView.tags[key]
metadata.<key>                      string  also TraceView.tags[key]: an OTLP trace has one attribute
                                            namespace, so MLflow's tags and request metadata coincide
span.name                           string  any span's name
span.type                           string  any span's type (LLM, CHAT_MODEL, RETRIEVER, TOOL, ...)
span.attributes.<key>               string  any span's attribute (non-strings compared as JSON text,
                                            or numerically against a number literal)
==================================  ======  ===========================================================

Tag and metadata keys containing dots or other characters may be backquoted (``tags.`mlflow.traceName```);
unquoted dotted keys (``tags.mlflow.traceName``) mean the same, as in MLflow. When a tag is absent these MLflow
names fall back to the view: ``mlflow.traceName`` -> trace name, ``mlflow.trace.session`` -> session_id,
``mlflow.trace.user`` -> user_id.

Operators: number keys ``= != < <= > >=`` (number values only); status ``= != IN, NOT IN``; string keys
``= != < <= > >=`` (string comparison), ``LIKE`` and ``ILIKE`` (SQL ``%`` / ``_`` wildcards, whole value,
``\\%`` / ``\\_`` match literally; ILIKE ignores case), ``RLIKE`` (Python regular expression, found anywhere) and
``IN ('a', 'b')`` / ``NOT IN (...)``. String keys need quoted values; ``span.attributes.<key>`` also accepts a
number with ``= != < <= > >=``, compared numerically with numeric (or numeric-text) attributes.

Values: ``'single'`` or ``"double"`` quoted strings (a quote is escaped by doubling it or with a backslash;
``\\\\`` is a backslash, any other backslash is kept as written), integers and floats (``-1``, ``2.5``, ``1e3``).

Span conditions (``span.*``) are true when ANY span satisfies that single condition (MLflow's semantics), so
``span.type = 'LLM' AND span.name = 'x'`` may be met by two different spans. Absent values are never equal and
never unequal: ``tags.env != 'prod'`` and ``tags.env NOT IN ('prod')`` are false for a trace without ``env``.

``str(TraceFilter)`` is the normalized text (canonical keys, upper-case operators, single-quoted strings); it
parses back to an equal filter. Not supported: MLflow's ``feedback.``, ``expectation.``, ``prompt``,
``trace.text``, ``trace.run_id`` and ``trace.client_request_id`` (nothing in an OTLP trace carries them).
"""

from __future__ import annotations

import json
import math
import operator
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .view import SpanView, TraceView

__all__ = ["SUPPORTED_KEYS", "FilterSyntaxError", "TraceFilter", "parse_filter"]


class FilterSyntaxError(ValueError):
    """A filter string that cannot be used; ``position`` is the 0-based offset of the offending token.

    ``message`` is one line; ``str(error)`` adds the filter's line and a caret under the offending token.
    """

    def __init__(self, message: str, text: str, position: int) -> None:
        self.message = message
        self.text = text
        self.position = position
        super().__init__(self._render())

    def _render(self) -> str:
        start = self.text.rfind("\n", 0, self.position) + 1
        end = self.text.find("\n", self.position)
        line = self.text[start : len(self.text) if end < 0 else end].replace("\t", " ")
        return f"{self.message}\n  {line}\n  {' ' * (self.position - start)}^"


# --------------------------------------------------------------------------------------------------- tokens

_NAME, _STRING, _NUMBER, _OP, _LPAREN, _RPAREN, _COMMA, _END = ("name", "string", "number", "op", "(", ")", ",", "end")
_OPERATOR_CHARS = "=!<>"
_SYMBOL_OPERATORS = ("=", "!=", "<", "<=", ">", ">=")
_BARE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_NUMBER_RE = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")
_KEY_ENDS = "=!<>(),'\""


@dataclass(frozen=True, slots=True)
class _Token:
    kind: str
    text: str  # as written
    pos: int
    value: Any = None  # str for strings, int | float for numbers, tuple[str, ...] of segments for names

    def word(self) -> str:
        """The upper-cased keyword this token spells, or "" (AND, OR, IN, NOT, LIKE, ...)."""
        return self.text.upper() if self.kind == _NAME and _BARE.fullmatch(self.text) else ""

    def shown(self) -> str:
        if self.kind == _END:
            return "the end of the filter"
        return self.text if self.kind in (_STRING, _NUMBER) else repr(self.text)


class _Tokenizer:
    def __init__(self, text: str) -> None:
        self.text = text
        self.i = 0

    def error(self, message: str, pos: int, detail: str = "") -> FilterSyntaxError:
        suffix = f"; {detail}" if detail else ""
        return FilterSyntaxError(f"{message} at position {pos}{suffix}", self.text, pos)

    def tokens(self) -> list[_Token]:
        out: list[_Token] = []
        while True:
            while self.i < len(self.text) and self.text[self.i].isspace():
                self.i += 1
            if self.i >= len(self.text):
                out.append(_Token(_END, "", len(self.text.rstrip())))
                return out
            out.append(self._next())

    def _next(self) -> _Token:
        c, start = self.text[self.i], self.i
        if c in "'\"":
            return self._string()
        if c == "`" or _BARE.match(c):
            return self._name()
        number = _NUMBER_RE.match(self.text, self.i)
        if number:
            return self._number(number)
        if c in _OPERATOR_CHARS:
            while self.i < len(self.text) and self.text[self.i] in _OPERATOR_CHARS:
                self.i += 1
            return _Token(_OP, self.text[start : self.i], start)
        if c in "(),":
            self.i += 1
            return _Token({"(": _LPAREN, ")": _RPAREN, ",": _COMMA}[c], c, start)
        raise self.error(f"unexpected character {c!r}", start)

    def _string(self) -> _Token:
        quote, start = self.text[self.i], self.i
        chars: list[str] = []
        i = start + 1
        while i < len(self.text):
            c = self.text[i]
            nxt = self.text[i + 1 : i + 2]
            if c == "\\" and nxt in ("'", '"', "\\"):
                chars.append(nxt)
                i += 2
            elif c == quote and nxt == quote:
                chars.append(quote)
                i += 2
            elif c == quote:
                self.i = i + 1
                return _Token(_STRING, self.text[start : self.i], start, "".join(chars))
            else:
                chars.append(c)
                i += 1
        raise self.error("unterminated string starting", start)

    def _name(self) -> _Token:
        start = self.i
        segments = [self._segment()]
        while self.text.startswith(".", self.i):
            self.i += 1
            segments.append(self._segment())
        if self.i < len(self.text) and not (self.text[self.i].isspace() or self.text[self.i] in _KEY_ENDS):
            detail = "backquote keys with such characters, e.g. tags.`my-key`"
            raise self.error(f"unexpected character {self.text[self.i]!r} in key", self.i, detail)
        return _Token(_NAME, self.text[start : self.i], start, tuple(segments))

    def _segment(self) -> str:
        if self.text.startswith("`", self.i):
            end = self.text.find("`", self.i + 1)
            if end < 0:
                raise self.error("unterminated backquoted key starting", self.i)
            segment, self.i = self.text[self.i + 1 : end], end + 1
            return segment
        bare = _BARE.match(self.text, self.i)
        if not bare:
            raise self.error("expected a key name after '.'", self.i)
        self.i = bare.end()
        return bare.group()

    def _number(self, match: re.Match[str]) -> _Token:
        text, start = match.group(), match.start()
        self.i = match.end()
        if self.i < len(self.text) and (self.text[self.i].isalnum() or self.text[self.i] in "_.`"):
            raise self.error(f"invalid number {self.text[start : self.i + 1]!r}", start)
        value: int | float = int(text) if re.fullmatch(r"[+-]?\d+", text) else float(text)
        if not math.isfinite(value):
            raise self.error(f"number {text} is out of range", start)
        return _Token(_NUMBER, text, start, value)


# --------------------------------------------------------------------------------------------------- fields

_NUMBER_KIND, _STATUS_KIND, _STRING_KIND = "number", "status", "string"
_OPERATORS: dict[str, tuple[str, ...]] = {
    _NUMBER_KIND: _SYMBOL_OPERATORS,
    _STATUS_KIND: ("=", "!=", "IN", "NOT IN"),
    _STRING_KIND: (*_SYMBOL_OPERATORS, "LIKE", "ILIKE", "RLIKE", "IN", "NOT IN"),
}
_ALL_OPERATORS = _OPERATORS[_STRING_KIND]
_STATUSES = ("OK", "ERROR", "UNSET")


@dataclass(frozen=True, slots=True)
class _Field:
    name: str  # canonical text: attributes.status, tags.`a.b`, span.attributes.k
    kind: str
    get: Callable[[Any], object]  # TraceView -> value, or SpanView -> value when per_span
    per_span: bool = False
    numbers_allowed: bool = False  # span.attributes.<key> may be compared with a number


def _trace_name(view: TraceView) -> str | None:
    name = view.tags.get("mlflow.traceName")
    if name is not None:
        return name
    return next((span.name for span in view.spans if span.span_id == view.root_span_id), None)


_TRACE_ATTRIBUTES: dict[str, tuple[str, Callable[[TraceView], object]]] = {
    "status": (_STATUS_KIND, lambda v: v.status),
    "timestamp_ms": (_NUMBER_KIND, lambda v: v.timestamp_ms),
    "execution_time_ms": (_NUMBER_KIND, lambda v: v.execution_time_ms),
    "end_time_ms": (_NUMBER_KIND, lambda v: v.timestamp_ms + v.execution_time_ms),
    "name": (_STRING_KIND, _trace_name),
    "trace_id": (_STRING_KIND, lambda v: v.trace_id),
    "service_name": (_STRING_KIND, lambda v: v.service_name),
    "session_id": (_STRING_KIND, lambda v: v.session_id),
    "user_id": (_STRING_KIND, lambda v: v.user_id),
    "model": (_STRING_KIND, lambda v: v.model),
    "input_tokens": (_NUMBER_KIND, lambda v: v.input_tokens),
    "output_tokens": (_NUMBER_KIND, lambda v: v.output_tokens),
    "total_tokens": (_NUMBER_KIND, lambda v: v.total_tokens),
}
_ATTRIBUTE_ALIASES = {"timestamp": "timestamp_ms", "execution_time": "execution_time_ms", "request_id": "trace_id"}
_ATTRIBUTE_PREFIXES = ("attributes", "attribute", "trace")
_TAG_PREFIXES = {"tags": "tags", "tag": "tags", "metadata": "metadata", "request_metadata": "metadata"}
_TAG_FALLBACKS: dict[str, Callable[[TraceView], str | None]] = {
    "mlflow.traceName": _trace_name,
    "mlflow.trace.session": lambda v: v.session_id,
    "mlflow.trace.user": lambda v: v.user_id,
}
SUPPORTED_KEYS = (
    *(f"attributes.{name}" for name in _TRACE_ATTRIBUTES),
    "tags.<key>",
    "metadata.<key>",
    "span.name",
    "span.type",
    "span.attributes.<key>",
)


def _quote_key(key: str) -> str:
    return key if _BARE.fullmatch(key) else f"`{key}`"


def _tag_field(prefix: str, key: str) -> _Field:
    fallback = _TAG_FALLBACKS.get(key)

    def get(view: TraceView) -> object:
        value = view.tags.get(key)
        return fallback(view) if value is None and fallback is not None else value

    return _Field(f"{prefix}.{_quote_key(key)}", _STRING_KIND, get)


def _span_field(segments: tuple[str, ...]) -> _Field | None:
    what = segments[1].lower() if len(segments) > 1 else ""
    if what == "name" and len(segments) == 2:
        return _Field("span.name", _STRING_KIND, lambda s: s.name, per_span=True)
    if what == "type" and len(segments) == 2:
        return _Field("span.type", _STRING_KIND, lambda s: s.span_type, per_span=True)
    if what == "attributes" and len(segments) > 2:
        key = ".".join(segments[2:])
        return _Field(f"span.attributes.{_quote_key(key)}", _STRING_KIND, _span_attribute(key), True, True)
    return None


def _span_attribute(key: str) -> Callable[[SpanView], object]:
    return lambda span: span.attributes.get(key)


def _attribute_field(name: str) -> _Field | None:
    name = _ATTRIBUTE_ALIASES.get(name.lower(), name.lower())
    if name not in _TRACE_ATTRIBUTES:
        return None
    kind, get = _TRACE_ATTRIBUTES[name]
    return _Field(f"attributes.{name}", kind, get)


def _resolve(segments: tuple[str, ...]) -> _Field | None:
    prefix = segments[0].lower()
    if len(segments) == 1:
        return _attribute_field(prefix)
    if prefix in _ATTRIBUTE_PREFIXES:
        return _attribute_field(".".join(segments[1:]))
    if prefix in _TAG_PREFIXES:
        key = ".".join(segments[1:])
        return _tag_field(_TAG_PREFIXES[prefix], key) if key else None
    if prefix == "span":
        return _span_field(segments)
    return None


# --------------------------------------------------------------------------------------------------- tests

_COMPARE: dict[str, Callable[[Any, Any], bool]] = {
    "=": operator.eq,
    "!=": operator.ne,
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}


def _as_text(value: object) -> str | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    return json.dumps(value, default=str, sort_keys=True) if isinstance(value, (list, tuple, Mapping)) else str(value)


def _as_number(value: object) -> int | float | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        return value
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def _like_regex(pattern: str, ignore_case: bool) -> re.Pattern[str]:
    parts: list[str] = []
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if c == "\\" and i + 1 < len(pattern):
            parts.append(re.escape(pattern[i + 1]))
            i += 2
            continue
        parts.append(".*" if c == "%" else "." if c == "_" else re.escape(c))
        i += 1
    return re.compile("".join(parts), re.DOTALL | (re.IGNORECASE if ignore_case else 0))


def _number_test(op: str, value: int | float) -> Callable[[object], bool]:
    compare = _COMPARE[op]

    def test(lhs: object) -> bool:
        number = _as_number(lhs)
        return number is not None and compare(number, value)

    return test


def _text_test(op: str, value: str | tuple[str, ...], pattern: re.Pattern[str] | None) -> Callable[[object], bool]:
    if pattern is not None:
        find = pattern.fullmatch if op in ("LIKE", "ILIKE") else pattern.search
        return lambda lhs: (text := _as_text(lhs)) is not None and find(text) is not None
    if op in ("IN", "NOT IN"):
        members, wanted = frozenset(value), op == "IN"
        return lambda lhs: (text := _as_text(lhs)) is not None and (text in members) == wanted
    compare = _COMPARE[op]
    return lambda lhs: (text := _as_text(lhs)) is not None and compare(text, value)


# --------------------------------------------------------------------------------------------------- conditions


@dataclass(frozen=True, slots=True)
class _Condition:
    field: _Field
    op: str
    value: str | int | float | tuple[str, ...]
    test: Callable[[object], bool]

    def matches(self, view: TraceView) -> bool:
        if self.field.per_span:
            return any(self.test(self.field.get(span)) for span in view.spans)
        return self.test(self.field.get(view))

    def __str__(self) -> str:
        return f"{self.field.name} {self.op} {_render_value(self.value)}"


def _render_value(value: str | int | float | tuple[str, ...]) -> str:
    if isinstance(value, tuple):
        return "(" + ", ".join(_render_value(item) for item in value) + ")"
    if isinstance(value, str):
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    return repr(value)


class TraceFilter:
    """A compiled filter string; ``matches(view)`` never raises. Equal when their normalized texts are equal."""

    __slots__ = ("_conditions", "_order")

    def __init__(self, conditions: tuple[_Condition, ...] = ()) -> None:
        self._conditions = conditions
        # trace-level conditions first: they are cheaper than scanning every span
        self._order = tuple(sorted(conditions, key=lambda c: c.field.per_span))

    def matches(self, view: TraceView) -> bool:
        return all(condition.matches(view) for condition in self._order)

    @property
    def matches_everything(self) -> bool:
        return not self._conditions

    def __str__(self) -> str:
        return " AND ".join(str(condition) for condition in self._conditions)

    def __repr__(self) -> str:
        return f"TraceFilter({str(self)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TraceFilter) and str(self) == str(other)

    def __hash__(self) -> int:
        return hash(str(self))


# --------------------------------------------------------------------------------------------------- parser


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = _Tokenizer(text).tokens()
        self.i = 0

    def error(self, message: str, token: _Token, detail: str = "") -> FilterSyntaxError:
        suffix = f"; {detail}" if detail else ""
        return FilterSyntaxError(f"{message} at position {token.pos}{suffix}", self.text, token.pos)

    def peek(self) -> _Token:
        return self.tokens[self.i]

    def take(self) -> _Token:
        token = self.tokens[self.i]
        self.i = min(self.i + 1, len(self.tokens) - 1)
        return token

    def parse(self) -> TraceFilter:
        conditions = [self.condition()]
        while self.peek().kind != _END:
            token = self.take()
            if token.word() == "OR":
                raise self.error("OR is not supported", token, "MLflow filter strings join conditions with AND only")
            if token.word() != "AND":
                raise self.error(f"unexpected {token.shown()}", token, "expected AND or the end of the filter")
            conditions.append(self.condition())
        return TraceFilter(tuple(conditions))

    def condition(self) -> _Condition:
        token = self.take()
        if token.kind in (_LPAREN, _RPAREN):
            raise self.error("parentheses are not supported", token, "conditions are joined with AND only")
        if token.word() in ("AND", "OR", "NOT") or token.kind != _NAME:
            raise self.error("expected a key such as attributes.status", token, f"found {token.shown()}")
        field = _resolve(token.value)
        if field is None:
            raise self.error(f"unsupported key {token.text!r}", token, f"supported: {', '.join(SUPPORTED_KEYS)}")
        op_token, op = self.operator(field)
        value_token = self.peek()
        value = self.value(field, op_token, op)
        return _Condition(field, op, value, self.compile(op, value, value_token))

    def operator(self, field: _Field) -> tuple[_Token, str]:
        token = self.take()
        op = token.text if token.kind == _OP else token.word()
        if op == "NOT" and self.peek().word() == "IN":
            self.take()
            op = "NOT IN"
        supported = f"supported for {field.name}: {', '.join(_OPERATORS[field.kind])}"
        if token.kind == _OP and op not in _SYMBOL_OPERATORS:
            raise self.error(f"unsupported operator {token.text!r}", token, supported)
        if op not in _ALL_OPERATORS:
            raise self.error(f"expected an operator after {field.name}", token, f"found {token.shown()}; {supported}")
        if op not in _OPERATORS[field.kind]:
            raise self.error(f"operator {op} is not supported for {field.name}", token, supported)
        return token, op

    def value(self, field: _Field, op_token: _Token, op: str) -> str | int | float | tuple[str, ...]:
        if op in ("IN", "NOT IN"):
            return self.value_list(field, op)
        token = self.take()
        if token.kind == _STRING:
            return self.checked_string(field, token)
        if token.kind != _NUMBER:
            raise self.error(f"expected a value after {op_token.text.upper()!r}", token, f"found {token.shown()}")
        if field.kind == _NUMBER_KIND or (field.numbers_allowed and op in _SYMBOL_OPERATORS):
            number: int | float = token.value
            return number
        raise self.error(f"{field.name} needs a quoted string value", token, f"found number {token.text}")

    def value_list(self, field: _Field, op: str) -> tuple[str, ...]:
        opening = self.take()
        if opening.kind != _LPAREN:
            raise self.error(f"expected a parenthesized list after {op}", opening, f"found {opening.shown()}")
        values: list[str] = []
        while True:
            token = self.take()
            if token.kind != _STRING:
                raise self.error(f"expected a quoted string in the {op} list", token, f"found {token.shown()}")
            values.append(self.checked_string(field, token))
            separator = self.take()
            if separator.kind == _RPAREN:
                return tuple(values)
            if separator.kind != _COMMA:
                raise self.error(f"expected ',' or ')' in the {op} list", separator, f"found {separator.shown()}")

    def checked_string(self, field: _Field, token: _Token) -> str:
        value: str = token.value
        if field.kind == _NUMBER_KIND:
            raise self.error(f"numeric key {field.name} needs a number", token, f"found string {token.text}")
        if field.kind == _STATUS_KIND:
            if value.upper() not in _STATUSES:
                note = " (tracejudge scores completed traces only)" if value.upper() == "IN_PROGRESS" else ""
                raise self.error(f"invalid status {token.text}{note}", token, f"expected one of {', '.join(_STATUSES)}")
            return value.upper()
        return value

    def compile(self, op: str, value: str | int | float | tuple[str, ...], token: _Token) -> Callable[[object], bool]:
        if isinstance(value, (int, float)):
            return _number_test(op, value)
        pattern: re.Pattern[str] | None = None
        if op in ("LIKE", "ILIKE") and isinstance(value, str):
            pattern = _like_regex(value, op == "ILIKE")
        elif op == "RLIKE" and isinstance(value, str):
            try:
                pattern = re.compile(value)
            except re.error as exc:
                raise self.error("invalid regular expression for RLIKE", token, exc.msg) from None
        return _text_test(op, value, pattern)


def parse_filter(text: str | None) -> TraceFilter:
    """Compile an MLflow ``search_traces`` filter string; empty or None matches every trace.

    Raises :class:`FilterSyntaxError` (a ValueError) for anything that cannot be matched as written.
    """
    if text is None or not text.strip():
        return TraceFilter()
    return _Parser(text).parse()

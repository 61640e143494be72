"""MLflow search_traces filter strings compiled at registration (scoring/filters.py)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tracejudge.scoring.filters import FilterSyntaxError, TraceFilter, parse_filter
from tracejudge.scoring.view import SpanView, TraceView

T0 = 1_700_000_000_000


def span(name: str = "chat", span_type: str = "LLM", span_id: str = "s2", **attributes: Any) -> SpanView:
    return SpanView(
        span_id=span_id,
        parent_span_id="s1",
        name=name,
        span_type=span_type,
        status="OK",
        start_time_ns=0,
        end_time_ns=1,
        attributes=attributes,
    )


ROOT = SpanView("s1", "", "agent_run", "AGENT", "OK", 0, 2, {"app.version": "1.2"})


def view(
    *,
    status: str = "OK",
    timestamp_ms: int = T0,
    execution_time_ms: int = 1500,
    tags: Mapping[str, str] | None = None,
    spans: tuple[SpanView, ...] | None = None,
    **extra: Any,
) -> TraceView:
    return TraceView(
        trace_id="4bf92f3577b34da6a3ce929d0e0e4736",
        root_span_id="s1",
        service_name="checkout",
        status=status,
        timestamp_ms=timestamp_ms,
        execution_time_ms=execution_time_ms,
        request={"q": "hi"},
        response="hello",
        request_text="hi",
        response_text="hello",
        llm_calls=(),
        retrieved_documents=(),
        tool_calls=(),
        spans=(ROOT, span()) if spans is None else spans,
        tags={"environment": "production", "mlflow.traceName": "my_function"} if tags is None else tags,
        **extra,
    )


def matches(text: str, trace: TraceView | None = None) -> bool:
    return bool(parse_filter(text).matches(view() if trace is None else trace))


def error(text: str) -> FilterSyntaxError:
    with pytest.raises(FilterSyntaxError) as info:
        parse_filter(text)
    return info.value


# ----------------------------------------------------------------------------------------- empty / round trip


@pytest.mark.parametrize("text", [None, "", "   ", "\n\t"])
def test_empty_filter_matches_everything(text: str | None) -> None:
    compiled = parse_filter(text)
    assert compiled.matches_everything
    assert compiled.matches(view()) and compiled.matches(view(status="ERROR", tags={}, spans=()))
    assert str(compiled) == ""


@pytest.mark.parametrize(
    ("text", "normalized"),
    [
        ("attributes.status = 'OK'", "attributes.status = 'OK'"),
        ('trace.status = "error"', "attributes.status = 'ERROR'"),
        ("status != 'OK'", "attributes.status != 'OK'"),
        (
            "timestamp > 5 and execution_time <= 2.5",
            "attributes.timestamp_ms > 5 AND attributes.execution_time_ms <= 2.5",
        ),
        ("tags.`mlflow.traceName` = 'f'", "tags.`mlflow.traceName` = 'f'"),
        ("tag.mlflow.traceName = 'f'", "tags.`mlflow.traceName` = 'f'"),
        ("metadata.user = 'it''s'", "metadata.user = 'it\\'s'"),
        ("span.attributes.`a b` like '%x\\\\%'", "span.attributes.`a b` LIKE '%x\\\\%'"),
        ("attributes.status not in ('ok','error')", "attributes.status NOT IN ('OK', 'ERROR')"),
        ("span.attributes.temperature >= 1e-1", "span.attributes.temperature >= 0.1"),
        ("request_id = 'abc'", "attributes.trace_id = 'abc'"),
    ],
)
def test_str_is_the_normalized_text_and_round_trips(text: str, normalized: str) -> None:
    compiled = parse_filter(text)
    assert str(compiled) == normalized
    again = parse_filter(str(compiled))
    assert again == compiled and str(again) == normalized
    assert hash(again) == hash(compiled)
    assert repr(compiled) == f"TraceFilter({normalized!r})"


def test_filter_is_a_trace_filter() -> None:
    assert isinstance(parse_filter("status = 'OK'"), TraceFilter)


# ----------------------------------------------------------------------------------------- trace attributes


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("attributes.status = 'OK'", True),
        ("attributes.status = 'ok'", True),
        ("attributes.status = 'ERROR'", False),
        ("attributes.status != 'ERROR'", True),
        ("attributes.status IN ('ERROR', 'OK')", True),
        ("attributes.status IN ('ERROR', 'UNSET')", False),
        ("attributes.status NOT IN ('ERROR')", True),
        ("ATTRIBUTES.STATUS = 'OK'", True),
        ("trace.status = 'OK'", True),
        ("attribute.status = 'OK'", True),
    ],
)
def test_status(text: str, expected: bool) -> None:
    assert matches(text) is expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (f"attributes.timestamp_ms = {T0}", True),
        (f"attributes.timestamp_ms != {T0}", False),
        (f"attributes.timestamp_ms > {T0 - 1}", True),
        (f"attributes.timestamp_ms > {T0}", False),
        (f"attributes.timestamp_ms >= {T0}", True),
        (f"attributes.timestamp_ms < {T0}", False),
        (f"attributes.timestamp_ms <= {T0}", True),
        (f"attributes.timestamp_ms < {T0}.5", True),
        ("attributes.timestamp_ms > 1.6e12", True),
        (f"timestamp >= {T0}", True),
        (f"trace.timestamp_ms >= {T0}", True),
        ("attributes.execution_time_ms > 1000", True),
        ("attributes.execution_time_ms > 1500", False),
        ("execution_time <= 1500", True),
        (f"attributes.end_time_ms = {T0 + 1500}", True),
        ("attributes.execution_time_ms > -1", True),
    ],
)
def test_numeric_attributes(text: str, expected: bool) -> None:
    assert matches(text) is expected


def test_timestamp_and_status_combined_like_the_mlflow_docs() -> None:
    one_day_ago = T0 - 86_400_000
    text = f"attributes.status = 'OK' AND attributes.timestamp_ms > {one_day_ago}"
    assert matches(text)
    assert not matches(text, view(status="ERROR"))
    assert not matches(text, view(timestamp_ms=one_day_ago - 1))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("attributes.service_name = 'checkout'", True),
        ("attributes.service_name LIKE 'check%'", True),
        ("attributes.session_id = 'sess-1'", True),
        ("attributes.user_id IN ('alice', 'bob')", True),
        ("attributes.model ILIKE 'GPT-4%'", True),
        ("attributes.model = 'gpt-4o'", False),
        ("attributes.input_tokens >= 100", True),
        ("attributes.output_tokens < 50", True),
        ("attributes.total_tokens = 140", True),
        ("attributes.trace_id = '4bf92f3577b34da6a3ce929d0e0e4736'", True),
        ("attributes.trace_id LIKE '4bf9%'", True),
        ("attributes.name = 'my_function'", True),
        ("trace.name LIKE 'my_%'", True),
    ],
)
def test_tracejudge_attributes(text: str, expected: bool) -> None:
    trace = view(session_id="sess-1", user_id="alice", model="gpt-4.1-mini", input_tokens=100, output_tokens=40)
    assert matches(text, trace) is expected


def test_missing_optional_attributes_never_match() -> None:
    bare = view()  # no session, user, model, tokens
    for text in (
        "attributes.session_id = 'x'",
        "attributes.session_id != 'x'",
        "attributes.user_id NOT IN ('x')",
        "attributes.model LIKE '%'",
        "attributes.input_tokens >= 0",
        "attributes.total_tokens != 5",
    ):
        assert not matches(text, bare), text


def test_trace_name_falls_back_to_the_root_span_name() -> None:
    assert matches("attributes.name = 'agent_run'", view(tags={}))
    assert matches("tags.`mlflow.traceName` = 'agent_run'", view(tags={}))
    assert not matches("attributes.name = 'agent_run'", view(tags={}, spans=()))


# ----------------------------------------------------------------------------------------- tags and metadata


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("tags.environment = 'production'", True),
        ("tags.environment != 'production'", False),
        ("tags.environment != 'staging'", True),
        ("tag.environment = 'production'", True),
        ("metadata.environment = 'production'", True),
        ("tags.`mlflow.traceName` = 'my_function'", True),
        ("tags.mlflow.traceName = 'my_function'", True),
        ("tags.`mlflow.traceName` = 'other'", False),
        ("tags.environment LIKE 'prod%'", True),
        ("tags.environment LIKE 'Prod%'", False),
        ("tags.environment ILIKE 'PROD%'", True),
        ("tags.environment LIKE 'p_oduction'", True),
        ("tags.environment LIKE 'p_duction'", False),
        ("tags.environment LIKE 'prod'", False),
        ("tags.environment RLIKE '^prod'", True),
        ("tags.environment RLIKE 'duct'", True),
        ("tags.environment RLIKE '^duct'", False),
        ("tags.environment IN ('staging', 'production')", True),
        ("tags.environment NOT IN ('staging', 'production')", False),
        ("tags.environment > 'a'", True),
        ("tags.environment < 'a'", False),
        ("tags.environment >= 'production'", True),
        ("tags.environment <= 'production'", True),
    ],
)
def test_tags(text: str, expected: bool) -> None:
    assert matches(text) is expected


def test_missing_tag_is_false_for_every_operator() -> None:
    for op_value in ("= 'x'", "!= 'x'", "LIKE '%'", "ILIKE '%'", "RLIKE ''", "IN ('x')", "NOT IN ('x')", "> ''"):
        assert not matches(f"tags.absent {op_value}"), op_value


def test_metadata_session_and_user_fall_back_to_the_view() -> None:
    trace = view(session_id="session_abc", user_id="alice@company.com")
    assert matches("metadata.`mlflow.trace.session` = 'session_abc'", trace)
    assert matches("metadata.`mlflow.trace.user` = 'alice@company.com'", trace)
    assert not matches("metadata.`mlflow.trace.session` = 'session_abc'", view())
    explicit = view(tags={"mlflow.trace.session": "from-tag"}, session_id="session_abc")
    assert matches("metadata.`mlflow.trace.session` = 'from-tag'", explicit)


def test_keys_are_case_sensitive_but_prefixes_are_not() -> None:
    assert matches("TAGS.environment = 'production'")
    assert not matches("tags.Environment = 'production'")


# ----------------------------------------------------------------------------------------- quoting


@pytest.mark.parametrize(
    ("literal", "value"),
    [
        ("'it''s'", "it's"),
        ("'it\\'s'", "it's"),
        ('"it\'s"', "it's"),
        ('"say ""hi"""', 'say "hi"'),
        ('"say \\"hi\\""', 'say "hi"'),
        ("'back\\\\slash'", "back\\slash"),
        ("'keep \\n as written'", "keep \\n as written"),
        ("''", ""),
        ("'AND OR ( ) = '", "AND OR ( ) = "),
    ],
)
def test_string_literals(literal: str, value: str) -> None:
    trace = view(tags={"k": value})
    assert matches(f"tags.k = {literal}", trace)
    assert not matches(f"tags.k = {literal}", view(tags={"k": value + "x"}))


def test_like_escapes_match_wildcards_literally() -> None:
    trace = view(tags={"rate": "50%", "name": "a_b"})
    assert matches("tags.rate LIKE '50\\%'", trace)
    assert not matches("tags.rate LIKE '50\\%'", view(tags={"rate": "500"}))
    assert matches("tags.name LIKE 'a\\_b'", trace)
    assert not matches("tags.name LIKE 'a\\_b'", view(tags={"name": "axb"}))
    assert matches("tags.rate LIKE '%'", view(tags={"rate": "multi\nline"}))


def test_like_treats_regex_characters_literally() -> None:
    trace = view(tags={"v": "a.b*c"})
    assert matches("tags.v LIKE 'a.b*c'", trace)
    assert not matches("tags.v LIKE 'a.b*c'", view(tags={"v": "axbbc"}))


def test_backquoted_keys() -> None:
    trace = view(tags={"my-key": "1", "a.b.c": "2", "with space": "3"})
    assert matches("tags.`my-key` = '1'", trace)
    assert matches("tags.`a.b.c` = '2' AND tags.a.b.c = '2' AND tags.a.`b.c` = '2'", trace)
    assert matches("metadata.`with space` = '3'", trace)


# ----------------------------------------------------------------------------------------- spans


def spans_trace() -> TraceView:
    return view(
        spans=(
            ROOT,
            span("retrieve_docs", "RETRIEVER", "s2", **{"retriever.k": 5, "index": "faq"}),
            span("ChatOpenAI", "CHAT_MODEL", "s3", model="gpt-4o", temperature=0.7, stream=False, stop=["\n"]),
            span("lookup", "TOOL", "s4", **{"tool.name": "search", "latency": "12.5"}),
        )
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("span.name = 'retrieve_docs'", True),
        ("span.name = 'nope'", False),
        ("span.name != 'retrieve_docs'", True),  # another span has a different name
        ("span.name LIKE '%docs'", True),
        ("span.name ILIKE 'chatopenai'", True),
        ("span.name RLIKE '^Chat'", True),
        ("span.name IN ('x', 'lookup')", True),
        ("span.type = 'RETRIEVER'", True),
        ("span.type = 'EMBEDDING'", False),
        ("span.type ILIKE 'tool'", True),
        ("span.type NOT IN ('AGENT', 'RETRIEVER', 'CHAT_MODEL', 'TOOL')", False),
        ("span.attributes.model = 'gpt-4o'", True),
        ("span.attributes.model LIKE 'gpt-%'", True),
        ("span.attributes.model ILIKE '%GPT%'", True),
        ("span.attributes.model RLIKE '^gpt-4'", True),
        ("span.attributes.`tool.name` = 'search'", True),
        ("span.attributes.tool.name = 'search'", True),
        ("span.attributes.`app.version` LIKE '1.%'", True),
        ("span.attributes.temperature > 0.5", True),
        ("span.attributes.temperature >= 0.8", False),
        ("span.attributes.temperature = 0.7", True),
        ("span.attributes.temperature LIKE '%0.7%'", True),
        ("span.attributes.`retriever.k` = 5", True),
        ("span.attributes.`retriever.k` = '5'", True),
        ("span.attributes.latency < 20", True),  # numeric text compared numerically
        ("span.attributes.index > 1", False),  # non-numeric text never matches a number
        ("span.attributes.stream = 'false'", True),
        ("span.attributes.stream = 0", False),  # booleans are not numbers
        ("span.attributes.stop = '[\"\\n\"]'", True),
        ("span.attributes.absent LIKE '%'", False),
        ("span.attributes.absent != 'x'", False),
    ],
)
def test_span_conditions_match_when_any_span_does(text: str, expected: bool) -> None:
    assert matches(text, spans_trace()) is expected


def test_each_span_condition_may_be_met_by_a_different_span() -> None:
    trace = spans_trace()
    assert matches("span.type = 'TOOL' AND span.name = 'retrieve_docs'", trace)
    assert matches("span.type = 'TOOL' AND span.attributes.model = 'gpt-4o' AND attributes.status = 'OK'", trace)
    assert not matches("span.type = 'TOOL' AND attributes.status = 'ERROR'", trace)


def test_no_spans_means_no_span_condition_matches() -> None:
    assert not matches("span.name != 'x'", view(spans=()))


# ----------------------------------------------------------------------------------------- AND chains


def test_and_chains_are_case_insensitive_and_span_lines() -> None:
    text = """
        tags.environment = 'production'
        and attributes.status = 'OK'
        AnD attributes.execution_time_ms > 500
    """
    assert matches(text)
    assert not matches(text, view(execution_time_ms=100))
    assert not matches(text, view(tags={"environment": "staging"}))
    assert str(parse_filter(text)) == (
        "tags.environment = 'production' AND attributes.status = 'OK' AND attributes.execution_time_ms > 500"
    )


def test_whitespace_is_optional_around_operators() -> None:
    assert matches("attributes.status='OK' AND attributes.execution_time_ms>=1500 AND tags.environment!='x'")


# ----------------------------------------------------------------------------------------- errors


def test_error_is_a_value_error_with_a_caret() -> None:
    assert issubclass(FilterSyntaxError, ValueError)
    exc = error("attributes.foo = 'x'")
    assert exc.position == 0
    assert exc.message.startswith("unsupported key 'attributes.foo' at position 0; supported: attributes.status,")
    for key in ("attributes.timestamp_ms", "tags.<key>", "metadata.<key>", "span.attributes.<key>"):
        assert key in exc.message
    assert str(exc).splitlines()[1:] == ["  attributes.foo = 'x'", "  ^"]


@pytest.mark.parametrize(
    "text", ["foo = 'x'", "params.x = 'y'", "span.kind = 'x'", "span.attributes = 'x'", "tags = 'x'", "tags.`` = 'x'"]
)
def test_unknown_keys(text: str) -> None:
    exc = error(text)
    assert exc.position == 0
    assert "unsupported key" in exc.message


def test_unknown_key_later_in_the_chain_points_at_it() -> None:
    exc = error("attributes.status = 'OK' AND attributes.nope > 1")
    assert exc.position == 29
    assert exc.message.startswith("unsupported key 'attributes.nope' at position 29")
    assert str(exc).splitlines()[2] == "  " + " " * 29 + "^"


def test_or_is_not_supported() -> None:
    exc = error("attributes.status = 'OK' OR tags.environment = 'production'")
    assert exc.position == 25
    assert exc.message.startswith("OR is not supported at position 25")
    assert "AND" in exc.message


def test_parentheses_are_not_supported() -> None:
    exc = error("(attributes.status = 'OK')")
    assert exc.position == 0
    assert "parentheses are not supported" in exc.message
    assert error("attributes.status = 'OK' AND (tags.x = 'y')").position == 29


def test_missing_value() -> None:
    text = "attributes.status = 'OK' AND tags.x ="
    exc = error(text)
    assert exc.position == len(text)
    assert exc.message.startswith(f"expected a value after '=' at position {len(text)}")
    assert "end of the filter" in exc.message
    assert error("tags.x = AND tags.y = 'z'").position == 9


def test_missing_operator() -> None:
    exc = error("tags.x 'a'")
    assert exc.position == 7
    assert exc.message.startswith("expected an operator after tags.x at position 7")
    assert error("tags.x").position == 6


def test_unterminated_string() -> None:
    exc = error("attributes.status = 'OK' AND tags.x = 'abc")
    assert exc.position == 38
    assert exc.message == "unterminated string starting at position 38"
    assert error("tags.x = \"abc'").position == 9
    assert error("tags.x = 'it''").position == 9


def test_unterminated_backquote() -> None:
    exc = error("tags.`abc = 'x'")
    assert exc.position == 5
    assert "unterminated backquoted key" in exc.message


@pytest.mark.parametrize(
    ("text", "position", "fragment"),
    [
        ("attributes.timestamp_ms LIKE '1%'", 24, "operator LIKE is not supported for attributes.timestamp_ms"),
        ("attributes.execution_time_ms IN ('1')", 29, "operator IN is not supported"),
        ("attributes.status LIKE 'O%'", 18, "operator LIKE is not supported for attributes.status"),
        ("attributes.status > 'A'", 18, "operator > is not supported for attributes.status"),
        ("tags.x == 'a'", 7, "unsupported operator '=='"),
        ("tags.x <> 'a'", 7, "unsupported operator '<>'"),
        ("tags.x NOT LIKE 'a'", 7, "expected an operator after tags.x"),
    ],
)
def test_bad_operator_for_the_key_type(text: str, position: int, fragment: str) -> None:
    exc = error(text)
    assert exc.position == position
    assert fragment in exc.message
    assert "supported for" in exc.message


@pytest.mark.parametrize(
    ("text", "position", "fragment"),
    [
        ("attributes.timestamp_ms > 'abc'", 26, "numeric key attributes.timestamp_ms needs a number"),
        ("attributes.execution_time_ms = '1500'", 31, "numeric key attributes.execution_time_ms needs a number"),
        ('attributes.input_tokens >= "1"', 27, "needs a number"),
    ],
)
def test_numeric_key_with_string_value_fails_at_registration(text: str, position: int, fragment: str) -> None:
    exc = error(text)
    assert exc.position == position
    assert fragment in exc.message


@pytest.mark.parametrize(
    ("text", "position", "fragment"),
    [
        ("tags.x = 5", 9, "tags.x needs a quoted string value"),
        ("attributes.status = 1", 20, "needs a quoted string value"),
        ("span.attributes.k LIKE 5", 23, "needs a quoted string value"),
        ("attributes.status = 'RUNNING'", 20, "invalid status 'RUNNING'"),
        ("attributes.status = 'IN_PROGRESS'", 20, "completed traces only"),
        ("attributes.status IN ('OK', 'DONE')", 28, "invalid status 'DONE'"),
        ("tags.x RLIKE '('", 13, "invalid regular expression for RLIKE"),
        ("tags.x IN 'a'", 10, "expected a parenthesized list after IN"),
        ("tags.x IN ()", 11, "expected a quoted string in the IN list"),
        ("tags.x IN ('a' 'b')", 15, "expected ',' or ')' in the IN list"),
        ("tags.x NOT IN ('a',)", 19, "expected a quoted string in the NOT IN list"),
        ("tags.x IN ('a'", 14, "expected ',' or ')'"),
    ],
)
def test_bad_values(text: str, position: int, fragment: str) -> None:
    exc = error(text)
    assert exc.position == position, exc
    assert fragment in exc.message


@pytest.mark.parametrize(
    ("text", "position", "fragment"),
    [
        ("attributes.status = 'OK' garbage", 25, "unexpected 'garbage' at position 25; expected AND"),
        ("attributes.status = 'OK' AND", 28, "expected a key"),
        ("attributes.status = 'OK' AND AND tags.x = 'y'", 29, "expected a key"),
        ("attributes.status = 'OK' 'x'", 25, "unexpected 'x'"),
        ("attributes.status = 'OK')", 24, "unexpected ')'"),
        ("attributes.status = 'OK';", 24, "unexpected character ';'"),
        ("tags.x = 12abc", 9, "invalid number"),
        ("tags.my-key = 'a'", 7, "backquote keys"),
        ("tags. = 'x'", 5, "expected a key name after '.'"),
        ("NOT tags.x = 'a'", 0, "expected a key"),
        ("= 'a'", 0, "expected a key"),
    ],
)
def test_trailing_garbage_and_other_syntax_errors(text: str, position: int, fragment: str) -> None:
    exc = error(text)
    assert exc.position == position, exc
    assert fragment in exc.message


def test_caret_on_multi_line_filters_points_into_the_right_line() -> None:
    text = "attributes.status = 'OK'\n  AND tags.x ~ 'y'"
    exc = error(text)
    assert exc.position == text.index("~")
    assert str(exc).splitlines()[1:] == ["    AND tags.x ~ 'y'", "  " + " " * 13 + "^"]


@pytest.mark.parametrize(
    ("text", "position", "fragment"),
    [
        ("tags.é = 'x'", 5, "expected a key name after '.'"),
        ("é = 'x'", 0, "unexpected character 'é'"),
        ("attributes.timestamp_ms > 1e999", 26, "out of range"),
    ],
)
def test_non_ascii_keys_and_huge_numbers(text: str, position: int, fragment: str) -> None:
    exc = error(text)
    assert exc.position == position, exc
    assert fragment in exc.message


def quoted(value: str, quote: str) -> str:
    return quote + value.replace("\\", "\\\\").replace(quote, quote + quote) + quote


def like_escaped(value: str) -> str:
    return value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


@settings(max_examples=200, deadline=None)
@given(value=st.text(), quote=st.sampled_from(["'", '"']))
def test_any_quoted_value_matches_itself_and_round_trips(value: str, quote: str) -> None:
    text = f"tags.k = {quoted(value, quote)} AND span.attributes.k LIKE {quoted(like_escaped(value), quote)}"
    compiled = parse_filter(text)
    trace = view(tags={"k": value}, spans=(span(k=value),))
    assert compiled.matches(trace)
    assert not compiled.matches(view(tags={"k": value + "x"}, spans=(span(k=value),)))
    assert not compiled.matches(view(tags={"k": value}, spans=(span(k=value + "x"),)))
    again = parse_filter(str(compiled))
    assert again == compiled
    assert again.matches(trace)

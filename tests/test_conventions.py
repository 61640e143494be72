"""The seam for a new instrumentation: one module with a Convention and one register() call.

A made-up convention ("acme.*" keys) is registered from outside the package, and a trace an SDK app
writes with it is read into the same TraceView fields the built-in conventions fill: request and
response, LLM calls with their messages, model and tokens, documents, a tool call.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from test_extract import App

from tracejudge.scoring import conventions
from tracejudge.scoring.conventions.record import Convention, Event, SpanRecord, parse_inputs, parse_outputs, span_tool
from tracejudge.scoring.values import as_int, decoded, parse_documents, scalar

KINDS = {"llm": "LLM", "search": "RETRIEVER", "tool": "TOOL", "agent": "AGENT"}


def read_acme(r: SpanRecord, results: dict[str, str]) -> None:
    a = r.attrs
    r.kind = r.kind or KINDS.get(scalar(a.get("acme.kind")), "UNKNOWN")
    r.inputs, r.outputs = decoded(a.get("acme.in")), decoded(a.get("acme.out"))
    r.model = r.model or scalar(a.get("acme.model"))
    r.input_tokens = as_int(a.get("acme.tokens.in"))
    r.output_tokens = as_int(a.get("acme.tokens.out"))
    if r.kind == "LLM":
        r.input_messages, r.output_messages = parse_inputs(r, results), parse_outputs(r, results)
    elif r.kind == "RETRIEVER":
        r.documents = parse_documents(r.outputs)
    elif r.kind == "TOOL":
        r.tool = span_tool(r, scalar(a.get("acme.tool")), a.get("acme.in"), a.get("acme.call_id"), a.get("acme.out"))


def read_acme_events(r: SpanRecord, events: list[Event], results: dict[str, str]) -> None:
    r.errors.extend(scalar(ev.get("reason")) for name, ev in events if name == "acme.refused")


ACME = Convention(name="acme", read=read_acme, prefixes=("acme.",), events=("acme.refused",),
                  read_events=read_acme_events)  # fmt: skip


@pytest.fixture
def acme() -> Iterator[None]:
    conventions.register(ACME)
    try:
        yield
    finally:
        conventions.unregister("acme")


def acme_app() -> App:
    app = App()
    chat = {"messages": [{"role": "user", "content": "Where is my parcel?"}]}
    track = {"id": "c1", "type": "function", "function": {"name": "track", "arguments": "{}"}}
    answer = {"choices": [{"message": {"role": "assistant", "content": "It ships today.", "tool_calls": [track]}}]}
    with app.span("turn", {"acme.kind": "agent", "acme.in": "Where is my parcel?", "acme.out": "It ships today."}):
        with app.span(
            "search",
            {
                "acme.kind": "search",
                "acme.in": "parcel",
                "acme.out": json.dumps([{"page_content": "Parcels ship in 1 day", "id": "d1"}]),
            },
        ):
            pass
        with app.span(
            "chat",
            {
                "acme.kind": "llm",
                "acme.model": "acme-1",
                "acme.in": json.dumps(chat),
                "acme.out": json.dumps(answer),
                "acme.tokens.in": 12,
                "acme.tokens.out": 5,
            },
        ) as span:
            span.add_event("acme.refused", {"reason": "too polite"})
        with app.span("track", {"acme.kind": "tool", "acme.tool": "track", "acme.call_id": "c1", "acme.out": "today"}):
            pass
    return app


def test_a_registered_convention_is_read_like_the_built_in_ones(acme: None) -> None:
    view = acme_app().view()

    assert view.has_genai and view.request == "Where is my parcel?" and view.response_text == "It ships today."
    [call] = view.llm_calls
    assert (call.model, call.input_tokens, call.output_tokens) == ("acme-1", 12, 5)
    assert [m.content for m in call.input_messages] == ["Where is my parcel?"]
    assert [d.content for d in view.retrieved_documents] == ["Parcels ship in 1 day"]
    [tool] = view.tool_calls
    assert (tool.name, tool.id, tool.result) == ("track", "c1", "today")
    assert tool.requested_span_id == call.span_id  # the model's request merged with the span that ran it
    assert view.errors == ("too polite",)
    assert {s.name: s.span_type for s in view.spans} == {"turn": "AGENT", "search": "RETRIEVER", "chat": "LLM",
                                                         "track": "TOOL"}  # fmt: skip


def test_without_its_registration_the_same_trace_holds_no_genai_data() -> None:
    view = acme_app().view()

    assert not view.has_genai and not view.llm_calls and view.errors == ()


def test_conventions_that_would_clash_are_refused(acme: None) -> None:
    with pytest.raises(ValueError, match="registered already"):
        conventions.register(ACME)
    with pytest.raises(ValueError, match="belong to another convention"):
        conventions.register(Convention(name="acme2", read=read_acme, prefixes=("x.",), events=("acme.refused",),
                                        read_events=read_acme_events))  # fmt: skip
    with pytest.raises(ValueError, match="no markers and no prefixes"):
        conventions.register(Convention(name="nothing", read=read_acme))
    assert [c.name for c in conventions.conventions()] == ["genai", "openinference", "openllmetry", "mlflow",
                                                           "langfuse", "acme"]  # fmt: skip

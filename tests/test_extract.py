"""extract(): one TraceView from spans written the way each instrumentation writes them.

Spans come from the real OpenTelemetry SDK, are encoded with the OTLP encoder and go through the
TraceAssembler (manual clock), so what extract() reads is exactly what the receiver would hand it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.exporter.otlp.proto.common._log_encoder import encode_logs
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span as ProtoSpan
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter, SimpleLogRecordProcessor
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Span, Status, StatusCode

from tracejudge.model import CompletionReason, Trace
from tracejudge.receiver.assembler import TraceAssembler
from tracejudge.receiver.config import AssemblerConfig
from tracejudge.scoring.extract import extract
from tracejudge.scoring.view import Document, Message, ToolCall, TraceView

# --- capturing traces the way an instrumented app emits them ---------------------------------------


class _Recorder:
    def __init__(self) -> None:
        self.traces: list[Trace] = []

    def consume(self, traces: Sequence[Trace]) -> None:
        self.traces.extend(traces)


def assemble(request: ExportTraceServiceRequest, logs: Any = None) -> Trace:
    """The receiver's real path: TraceAssembler, driven by a manual clock until the trace is decided."""
    now = [1000.0]
    recorder = _Recorder()
    config = AssemblerConfig(trace_idle=2, trace_timeout=60)
    assembler = TraceAssembler(config, recorder, MeterProvider().get_meter("test"), clock=lambda: now[0])
    assembler.add_spans(request)
    if logs is not None:
        assembler.add_logs(logs)
    now[0] += 3
    assembler.tick()
    [trace] = recorder.traces
    return trace


class App:
    """An instrumented app: SDK tracer and logger providers exporting to memory."""

    def __init__(self, **resource: Any) -> None:
        attributes = {"service.name": "rag-app", **resource}
        self._spans = InMemorySpanExporter()
        tracer_provider = TracerProvider(resource=Resource.create(attributes))
        tracer_provider.add_span_processor(SimpleSpanProcessor(self._spans))
        self.tracer = tracer_provider.get_tracer("app")
        self._logs = InMemoryLogRecordExporter()  # type: ignore[no-untyped-call]
        logger_provider = LoggerProvider(resource=Resource.create(attributes))
        logger_provider.add_log_record_processor(SimpleLogRecordProcessor(self._logs))
        self.logger = logger_provider.get_logger("app")

    @contextmanager
    def span(self, name: str, attributes: Any = None) -> Iterator[Span]:
        with self.tracer.start_as_current_span(name, attributes=attributes) as span:
            yield span

    def request(self) -> ExportTraceServiceRequest:
        return encode_spans(self._spans.get_finished_spans())

    def trace(self) -> Trace:
        logs = self._logs.get_finished_logs()
        return assemble(self.request(), encode_logs(logs) if logs else None)

    def view(self) -> TraceView:
        return extract(self.trace())


def j(value: Any) -> str:
    return json.dumps(value)


def compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def text_part(content: str) -> dict[str, str]:
    return {"type": "text", "content": content}


def fail(span: Span, error: Exception) -> None:
    span.record_exception(error)
    span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))


def span_types(view: TraceView) -> dict[str, str]:
    return {s.name: s.span_type for s in view.spans}


# --- OTel GenAI semantic conventions ---------------------------------------------------------------

QUESTION = "What is the weather in Paris?"
ANSWER = "It is 21 degrees and sunny in Paris."
PARIS = '{"city":"Paris"}'


def test_otel_genai_latest_conventions() -> None:
    user = {"role": "user", "parts": [text_part(QUESTION)]}
    call = {"type": "tool_call", "id": "call_1", "name": "get_weather", "arguments": {"city": "Paris"}}
    tool_response = {"type": "tool_call_response", "id": "call_1", "response": "21C"}
    agent = {
        "gen_ai.operation.name": "invoke_agent",
        "gen_ai.agent.name": "weather",
        "gen_ai.conversation.id": "conv-7",
        "user.id": "u-42",
        "gen_ai.input.messages": j([user]),
        "gen_ai.output.messages": j([{"role": "assistant", "parts": [text_part(ANSWER)]}]),
    }
    documents = [{"id": "doc-1", "score": 0.9, "content": "Paris weather: mild."}, {"id": "doc-2", "score": 0.5}]
    retrieval = {
        "gen_ai.operation.name": "retrieval",
        "gen_ai.retrieval.query.text": QUESTION,
        "gen_ai.retrieval.documents": j(documents),
    }
    first_chat = {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "openai",
        "gen_ai.request.model": "gpt-4o",
        "gen_ai.response.model": "gpt-4o-2024-08-06",
        "gen_ai.usage.input_tokens": 30,
        "gen_ai.usage.output_tokens": 7,
        "gen_ai.system_instructions": j([text_part("You are a weather bot.")]),
        "gen_ai.input.messages": j([user]),
        "gen_ai.output.messages": j([{"role": "assistant", "parts": [call], "finish_reason": "tool_call"}]),
    }
    tool = {
        "gen_ai.operation.name": "execute_tool",
        "gen_ai.tool.name": "get_weather",
        "gen_ai.tool.call.id": "call_1",
        "gen_ai.tool.call.arguments": PARIS,
        "gen_ai.tool.call.result": '{"celsius":21}',
    }
    history = [user, {"role": "assistant", "parts": [call]}, {"role": "tool", "parts": [tool_response]}]
    second_chat = {
        "gen_ai.operation.name": "chat",
        "gen_ai.request.model": "gpt-4o",
        "gen_ai.response.model": "gpt-4o-2024-11-20",
        "gen_ai.usage.input_tokens": 50,
        "gen_ai.usage.output_tokens": 12,
        "gen_ai.input.messages": j(history),
        "gen_ai.output.messages": j([{"role": "assistant", "parts": [text_part(ANSWER)], "finish_reason": "stop"}]),
    }
    app = App(**{"deployment.environment": "prod"})
    with app.span("invoke_agent weather", agent):
        for name, attributes in [
            ("retrieval kb", retrieval),
            ("chat gpt-4o", first_chat),
            ("execute_tool get_weather", tool),
            ("chat gpt-4o", second_chat),
        ]:
            with app.span(name, attributes):
                pass

    view = app.view()

    assert view.has_genai and view.complete and view.status == "OK"  # MLflow's trace status: UNSET counts as OK
    assert view.request_text == QUESTION and view.response_text == ANSWER
    assert view.request == [user]
    assert (view.session_id, view.user_id) == ("conv-7", "u-42")
    assert view.model == "gpt-4o-2024-11-20"
    assert (view.input_tokens, view.output_tokens, view.total_tokens) == (80, 19, 99)
    first, second = view.llm_calls
    assert first.provider == "openai" and first.model == "gpt-4o-2024-08-06"
    assert first.input_messages == (Message("system", "You are a weather bot."), Message("user", QUESTION))
    assert first.output_messages[0].tool_calls == (ToolCall("get_weather", PARIS, "call_1"),)
    assert [m.role for m in second.input_messages] == ["user", "assistant", "tool"]
    assert second.input_messages[2].content == "21C"
    assert second.input_messages[2].tool_call_id == "call_1"  # the GenAI tool_call_response part's id
    assert second.input_messages[0].tool_call_id == ""
    assert second.output_messages == (Message("assistant", ANSWER),)
    [doc] = view.retrieved_documents  # doc-2 has no text: not invented
    assert doc == Document("Paris weather: mild.", id="doc-1", score=0.9)
    [tool_call] = view.tool_calls  # the model's request and the tool span are one call
    assert (tool_call.name, tool_call.id, tool_call.arguments) == ("get_weather", "call_1", PARIS)
    assert tool_call.result == '{"celsius":21}'
    assert tool_call.span_id == next(s.span_id for s in view.spans if s.name == "execute_tool get_weather")
    assert tool_call.requested_span_id == first.span_id  # the chat call whose output asked for it
    assert span_types(view) == {
        "invoke_agent weather": "AGENT",
        "retrieval kb": "RETRIEVER",
        "chat gpt-4o": "CHAT_MODEL",
        "execute_tool get_weather": "TOOL",
    }
    assert view.service_name == "rag-app"
    assert view.tags["gen_ai.agent.name"] == "weather" and view.tags["deployment.environment"] == "prod"
    assert view.root_span_id == view.spans[0].span_id and view.spans[0].parent_span_id == ""
    assert view.execution_time_ms >= 0 and view.timestamp_ms > 1_600_000_000_000
    assert view.errors == () and view.expectations == {}


def test_a_span_with_only_genai_messages_is_read_as_genai() -> None:
    """The README quickstart's root span: messages, but no gen_ai.operation.name or provider."""
    app = App()
    with app.span("invoke_agent", {"session.id": "s-1"}) as agent:
        agent.set_attribute("gen_ai.input.messages", j([{"role": "user", "parts": [text_part(QUESTION)]}]))
        agent.set_attribute("gen_ai.output.messages", j([{"role": "assistant", "parts": [text_part(ANSWER)]}]))
        with app.span("chat gpt-4.1-mini", {"gen_ai.operation.name": "chat"}):
            pass
    view = app.view()
    assert (view.request_text, view.response_text) == (QUESTION, ANSWER)


def test_legacy_genai_log_events_become_the_llm_calls_messages() -> None:
    """opentelemetry-instrumentation-openai-v2 by default: content only in log events, joined by span id."""
    chat = {
        "gen_ai.operation.name": "chat",
        "gen_ai.system": "openai",
        "gen_ai.request.model": "gpt-4o-mini",
        "gen_ai.response.model": "gpt-4o-mini-2024-07-18",
        "gen_ai.usage.input_tokens": 40,
        "gen_ai.usage.output_tokens": 9,
        "session.id": "s-1",
    }
    system = {"gen_ai.system": "openai"}
    tool_call: dict[str, Any] = {
        "id": "call_9",
        "type": "function",
        "function": {"name": "get_weather", "arguments": PARIS},
    }
    choice: dict[str, Any] = {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": ANSWER}}
    app = App()
    with app.span("chat gpt-4o-mini", chat):
        app.logger.emit(event_name="gen_ai.system.message", body={"content": "Be brief."}, attributes=system)
        app.logger.emit(event_name="gen_ai.user.message", body={"content": QUESTION}, attributes=system)
        app.logger.emit(event_name="gen_ai.assistant.message", body={"tool_calls": [tool_call]}, attributes=system)
        # an older SDK names the event in the `event.name` attribute instead of the event_name field
        tool_event = {**system, "event.name": "gen_ai.tool.message"}
        app.logger.emit(body={"content": "21C", "id": "call_9"}, attributes=tool_event)
        app.logger.emit(event_name="gen_ai.choice", body=choice, attributes=system)

    view = app.view()

    [call] = view.llm_calls
    assert [(m.role, m.content) for m in call.input_messages] == [
        ("system", "Be brief."),
        ("user", QUESTION),
        ("assistant", ""),
        ("tool", "21C"),
    ]
    assert call.input_messages[2].tool_calls == (ToolCall("get_weather", PARIS, "call_9"),)
    assert call.input_messages[3].tool_call_id == "call_9"
    assert call.output_messages == (Message("assistant", ANSWER),)
    assert view.request == QUESTION and view.request_text == QUESTION  # no root inputs: the first call's user text
    assert view.response_text == ANSWER
    assert (view.model, view.input_tokens, view.output_tokens) == ("gpt-4o-mini-2024-07-18", 40, 9)
    assert view.session_id == "s-1" and view.has_genai


def test_latest_genai_details_log_event_becomes_the_llm_calls_messages() -> None:
    """opentelemetry-instrumentation-openai-v2 with gen_ai_latest_experimental and EVENT_ONLY content: one
    gen_ai.client.inference.operation.details event whose attributes hold the messages as structured values."""
    chat = {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "openai",
        "gen_ai.request.model": "gpt-4.1-mini",
        "gen_ai.usage.input_tokens": 16,
        "gen_ai.usage.output_tokens": 14,
    }
    call = {"type": "tool_call", "id": "call_3", "name": "get_weather", "arguments": {"city": "Paris"}}
    details = {
        **chat,
        "gen_ai.system_instructions": [text_part("Be brief.")],
        "gen_ai.input.messages": [
            {"role": "user", "parts": [text_part(QUESTION)]},
            {"role": "assistant", "parts": [call]},
            {"role": "tool", "parts": [{"type": "tool_call_response", "id": "call_3", "response": "21C"}]},
        ],
        "gen_ai.output.messages": [{"role": "assistant", "parts": [text_part(ANSWER)], "finish_reason": "stop"}],
    }
    app = App()
    with app.span("chat gpt-4.1-mini", chat):
        app.logger.emit(event_name="gen_ai.client.inference.operation.details", attributes=details)

    view = app.view()

    [llm] = view.llm_calls
    assert [(m.role, m.content) for m in llm.input_messages] == [
        ("system", "Be brief."),
        ("user", QUESTION),
        ("assistant", ""),
        ("tool", "21C"),
    ]
    assert llm.input_messages[2].tool_calls == (ToolCall("get_weather", PARIS, "call_3"),)
    assert llm.output_messages == (Message("assistant", ANSWER),)
    assert view.request_text == QUESTION and view.response_text == ANSWER
    assert (view.model, view.input_tokens, view.output_tokens) == ("gpt-4.1-mini", 16, 14)
    assert view.has_genai and span_types(view) == {"chat gpt-4.1-mini": "CHAT_MODEL"}


# --- OpenInference ------------------------------------------------------------------------------


def test_openinference() -> None:
    chain = {
        "openinference.span.kind": "CHAIN",
        "input.value": QUESTION,
        "input.mime_type": "text/plain",
        "output.value": j({"answer": ANSWER}),
        "output.mime_type": "application/json",
        "session.id": "sess-oi",
        "user.id": "alice",
        "metadata": j({"tier": "gold"}),
    }
    retriever = {
        "openinference.span.kind": "RETRIEVER",
        "input.value": QUESTION,
        "retrieval.documents.0.document.id": "d1",
        "retrieval.documents.0.document.content": "Paris is in France.",
        "retrieval.documents.0.document.score": 0.87,
        "retrieval.documents.0.document.metadata": j({"source": "s3://kb/paris.md"}),
        "retrieval.documents.1.document.id": "d2",
        "retrieval.documents.1.document.content": "Forecast: sunny, 21C.",
    }
    requested = "llm.output_messages.0.message.tool_calls.0.tool_call"
    llm = {
        "openinference.span.kind": "LLM",
        "llm.model_name": "gpt-4o-mini",
        "llm.provider": "openai",
        "llm.token_count.prompt": 120,
        "llm.token_count.completion": 15,
        "llm.token_count.total": 135,
        "llm.input_messages.0.message.role": "system",
        "llm.input_messages.0.message.content": "Use the context.",
        "llm.input_messages.1.message.role": "user",
        "llm.input_messages.1.message.contents.0.message_content.type": "text",
        "llm.input_messages.1.message.contents.0.message_content.text": QUESTION,
        "llm.output_messages.0.message.role": "assistant",
        f"{requested}.id": "call_oi",
        f"{requested}.function.name": "get_weather",
        f"{requested}.function.arguments": '{"city": "Paris"}',
    }
    tool = {
        "openinference.span.kind": "TOOL",
        "tool.name": "get_weather",
        "input.value": '{"city": "Paris"}',
        "output.value": "21C",
    }
    app = App()
    with app.span("RAG", chain):
        for name, attributes in [("VectorStoreRetriever", retriever), ("ChatOpenAI", llm)]:
            with app.span(name, attributes):
                pass
        with app.span("get_weather", tool) as tool_span:
            fail(tool_span, ValueError("rate limited"))

    view = app.view()

    assert view.request == QUESTION and view.request_text == QUESTION
    assert view.response == {"answer": ANSWER} and view.response_text == ANSWER
    assert [d.content for d in view.retrieved_documents] == ["Paris is in France.", "Forecast: sunny, 21C."]
    assert view.retrieved_documents[0] == Document(
        "Paris is in France.", id="d1", score=0.87, uri="s3://kb/paris.md", metadata={"source": "s3://kb/paris.md"}
    )
    [call] = view.llm_calls
    assert call.input_messages == (Message("system", "Use the context."), Message("user", QUESTION))
    assert call.output_messages[0].tool_calls == (ToolCall("get_weather", '{"city": "Paris"}', "call_oi"),)
    assert (view.model, view.input_tokens, view.output_tokens) == ("gpt-4o-mini", 120, 15)
    [tool_call] = view.tool_calls  # the TOOL span has no call id: matched to the request by name
    assert (tool_call.id, tool_call.arguments, tool_call.result) == ("call_oi", '{"city": "Paris"}', "21C")
    assert (view.session_id, view.user_id) == ("sess-oi", "alice")
    assert view.status == "ERROR"
    assert view.errors == ("ValueError: rate limited",)
    assert span_types(view) == {
        "RAG": "CHAIN",
        "VectorStoreRetriever": "RETRIEVER",
        "ChatOpenAI": "LLM",
        "get_weather": "TOOL",
    }


# --- OpenLLMetry (Traceloop) ----------------------------------------------------------------------


def test_openllmetry() -> None:
    association = {
        "traceloop.association.properties.session_id": "chat-3",
        "traceloop.association.properties.user_id": "bob",
    }
    workflow = {
        "traceloop.span.kind": "workflow",
        "traceloop.workflow.name": "rag_pipeline",
        "traceloop.entity.name": "rag_pipeline",
        "traceloop.entity.input": j({"args": [QUESTION], "kwargs": {}}),
        "traceloop.entity.output": j(ANSWER),
        **association,
    }
    retrieve = {
        "traceloop.span.kind": "task",
        "traceloop.entity.name": "retrieve",
        "traceloop.entity.input": j({"args": [], "kwargs": {"query": QUESTION}}),
        "traceloop.entity.output": j([{"page_content": "Paris is in France.", "metadata": {"source": "wiki/Paris"}}]),
        **association,
    }
    chroma_result: dict[str, Any] = {
        "db.query.result.id": "c-1",
        "db.query.result.distance": 0.12,
        "db.query.result.document": "Paris is in France.",
    }
    first_chat = {
        "llm.request.type": "chat",
        "gen_ai.system": "openai",
        "gen_ai.request.model": "gpt-4o",
        "gen_ai.response.model": "gpt-4o-2024-08-06",
        "gen_ai.usage.prompt_tokens": 64,
        "gen_ai.usage.completion_tokens": 10,
        "llm.usage.total_tokens": 74,
        "gen_ai.prompt.0.role": "system",
        "gen_ai.prompt.0.content": "Answer from the context.",
        "gen_ai.prompt.1.role": "user",
        "gen_ai.prompt.1.content": j([{"type": "text", "text": QUESTION}]),  # multimodal content, JSON-dumped
        "gen_ai.completion.0.role": "assistant",
        "gen_ai.completion.0.finish_reason": "tool_calls",
        "gen_ai.completion.0.tool_calls.0.id": "call_tl",
        "gen_ai.completion.0.tool_calls.0.name": "get_weather",
        "gen_ai.completion.0.tool_calls.0.arguments": PARIS,
        **association,
    }
    tool = {
        "traceloop.span.kind": "tool",
        "traceloop.entity.name": "get_weather",
        "traceloop.entity.input": j({"args": [], "kwargs": {"city": "Paris"}}),
        "traceloop.entity.output": j({"celsius": 21}),
    }
    second_chat = {
        "llm.request.type": "chat",
        "gen_ai.system": "openai",
        "gen_ai.request.model": "gpt-4o",
        "gen_ai.usage.input_tokens": 80,
        "gen_ai.usage.output_tokens": 12,
        "gen_ai.prompt.0.role": "tool",
        "gen_ai.prompt.0.content": "21",
        "gen_ai.prompt.0.tool_call_id": "call_tl",
        "gen_ai.completion.0.role": "assistant",
        "gen_ai.completion.0.content": ANSWER,
    }
    app = App()
    with app.span("rag_pipeline.workflow", workflow):
        with app.span("retrieve.task", retrieve), app.span("chroma.query", {"db.system": "chroma"}) as chroma:
            chroma.add_event("db.query.result", chroma_result)
        for name, attributes in [("openai.chat", first_chat), ("get_weather.tool", tool)]:
            with app.span(name, attributes):
                pass
        with app.span("openai.chat", second_chat) as last:
            fail(last, TimeoutError("upstream slow"))

    view = app.view()

    assert view.request == QUESTION and view.response == ANSWER
    assert (view.request_text, view.response_text) == (QUESTION, ANSWER)
    # the retriever task and the vector-DB span inside it are one retrieval
    assert view.retrieved_documents == (
        Document("Paris is in France.", uri="wiki/Paris", metadata={"source": "wiki/Paris"}),
    )
    first, second = view.llm_calls
    assert first.input_messages == (Message("system", "Answer from the context."), Message("user", QUESTION))
    assert first.output_messages[0].tool_calls == (ToolCall("get_weather", PARIS, "call_tl"),)
    assert second.output_messages == (Message("assistant", ANSWER),)
    assert second.input_messages[0] == Message("tool", "21", tool_call_id="call_tl")  # flattened gen_ai.prompt.N
    assert (view.input_tokens, view.output_tokens) == (144, 22)
    assert view.model == "gpt-4o"  # the last call reported no response model
    [tool_call] = view.tool_calls
    assert (tool_call.name, tool_call.id, tool_call.arguments) == ("get_weather", "call_tl", PARIS)
    assert tool_call.result == '{"celsius":21}'
    assert (view.session_id, view.user_id) == ("chat-3", "bob")
    assert view.status == "ERROR" and view.errors == ("TimeoutError: upstream slow",)
    assert span_types(view) == {
        "rag_pipeline.workflow": "CHAIN",
        "retrieve.task": "RETRIEVER",
        "chroma.query": "RETRIEVER",
        "openai.chat": "CHAT_MODEL",
        "get_weather.tool": "TOOL",
    }


# --- MLflow ---------------------------------------------------------------------------------------


def mlflow(span_type: str, inputs: Any, outputs: Any, **extra: Any) -> dict[str, str]:
    """Attributes as mlflow-tracing writes them: every value JSON-encoded."""
    attributes = {
        "mlflow.traceRequestId": "tr-1",
        "mlflow.spanType": span_type,
        "mlflow.spanInputs": inputs,
        "mlflow.spanOutputs": outputs,
        **extra,
    }
    return {key: json.dumps(value) for key, value in attributes.items()}


def test_mlflow_spans() -> None:
    requested = {"id": "call_ml", "type": "function", "function": {"name": "lookup", "arguments": '{"q":"Paris"}'}}
    message = {"role": "assistant", "content": None, "tool_calls": [requested]}
    completion = {
        "id": "chatcmpl-1",
        "model": "gpt-4o-mini-2024-07-18",
        "choices": [{"index": 0, "finish_reason": "tool_calls", "message": message}],
    }
    identity = {"session.id": "ml-sess", "user.id": "carol"}
    expectations = {"tracejudge.expectations": {"expected_facts": ["21C"]}}
    root = mlflow("CHAIN", {"question": QUESTION}, ANSWER, **identity, **expectations)
    docs = [{"page_content": "Paris: 21C.", "metadata": {"doc_uri": "kb/paris", "chunk_id": "7"}, "id": "p1"}]
    chat_inputs = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": QUESTION}]}
    usage = {"mlflow.chat.tokenUsage": {"input_tokens": 25, "output_tokens": 8, "total_tokens": 33}}
    app = App()
    with app.span("answer", root):
        for name, attributes in [
            ("retrieve", mlflow("RETRIEVER", {"query": QUESTION}, docs)),
            ("Completions", mlflow("CHAT_MODEL", chat_inputs, completion, **usage)),
            ("lookup", mlflow("TOOL", {"q": "Paris"}, {"celsius": 21})),
        ]:
            with app.span(name, attributes):
                pass

    view = app.view()

    assert view.request == {"question": QUESTION} and view.request_text == QUESTION
    assert view.response == ANSWER and view.response_text == ANSWER
    metadata = {"doc_uri": "kb/paris", "chunk_id": "7"}
    assert view.retrieved_documents == (Document("Paris: 21C.", id="p1", uri="kb/paris", metadata=metadata),)
    [call] = view.llm_calls
    assert call.input_messages == (Message("user", QUESTION),)
    assert call.output_messages[0].tool_calls == (ToolCall("lookup", '{"q":"Paris"}', "call_ml"),)
    assert (call.model, view.input_tokens, view.output_tokens) == ("gpt-4o-mini-2024-07-18", 25, 8)
    [tool] = view.tool_calls
    assert (tool.id, tool.arguments, tool.result) == ("call_ml", '{"q":"Paris"}', '{"celsius":21}')
    assert (view.session_id, view.user_id) == ("ml-sess", "carol")
    assert view.expectations == {"expected_facts": ["21C"]}
    # MLflow's JSON encoding is undone for span attributes and tags alike
    root_view = view.spans[0]
    assert root_view.span_type == "CHAIN" and root_view.attributes["mlflow.spanType"] == "CHAIN"
    assert root_view.attributes["mlflow.spanInputs"] == {"question": QUESTION}
    assert view.tags["mlflow.spanType"] == "CHAIN" and view.tags["mlflow.traceRequestId"] == "tr-1"
    assert view.tags["mlflow.spanInputs"] == '{"question":"What is the weather in Paris?"}'
    assert span_types(view) == {
        "answer": "CHAIN",
        "retrieve": "RETRIEVER",
        "Completions": "CHAT_MODEL",
        "lookup": "TOOL",
    }


@pytest.mark.parametrize(
    ("output", "expected"),
    [
        ([{"role": "assistant", "parts": [text_part("")]}], ""),  # an empty reply is no reply, not its JSON
        ({"role": "assistant", "content": ""}, ""),
        ({"choices": [{"message": {"role": "assistant", "content": None}}]}, ""),
        ([{"role": "assistant", "parts": [text_part(ANSWER)]}], ANSWER),
    ],
)
def test_response_text_of_a_reply_that_says_nothing_is_empty(output: Any, expected: str) -> None:
    app = App()
    with app.span("invoke_agent", {"gen_ai.operation.name": "invoke_agent", "gen_ai.output.messages": j(output)}):
        pass
    assert app.view().response_text == expected


@pytest.mark.parametrize(
    ("inputs", "outputs", "request_text", "response_text"),
    [
        ({"role": "support_agent", "question": QUESTION}, ANSWER, QUESTION, ANSWER),  # a `role` parameter
        (QUESTION, {"type": "final", "content": "", "answer": ANSWER}, QUESTION, ANSWER),
        (QUESTION, {"choices": [{"message": {"role": "assistant", "content": None, "refusal": "I can't."}}]},
         QUESTION, "I can't."),
    ],
)  # fmt: skip
def test_message_shaped_values_keep_text_they_hold_elsewhere(
    inputs: Any, outputs: Any, request_text: str, response_text: str
) -> None:
    app = App()
    with app.span("answer", mlflow("CHAIN", inputs, outputs)):
        pass
    view = app.view()
    assert (view.request_text, view.response_text) == (request_text, response_text)


def test_response_text_of_a_reply_that_only_calls_tools_still_shows_the_calls() -> None:
    requested = {"id": "call_1", "type": "function", "function": {"name": "lookup", "arguments": PARIS}}
    output = {"choices": [{"message": {"role": "assistant", "content": None, "tool_calls": [requested]}}]}
    app = App()
    with app.span("Completions", mlflow("CHAT_MODEL", {"messages": []}, output)):
        pass
    assert "lookup" in app.view().response_text


def test_openllmetry_records_the_openai_user_parameter_as_the_user() -> None:
    question = j([{"role": "user", "parts": [text_part(QUESTION)]}])
    app = App()
    with app.span(
        "openai.chat",
        {"gen_ai.operation.name": "chat", "gen_ai.user": "customer-31", "gen_ai.input.messages": question},
    ):
        pass
    assert app.view().user_id == "customer-31"


def test_mlflow_values_are_json_decoded_and_plain_text_survives() -> None:
    attributes = {
        "mlflow.spanType": '"LLM"',
        "mlflow.spanInputs": '"Tell me a joke"',
        "mlflow.spanOutputs": '"Why did the span end? It was done."',
        "mlflow.llm.model": '"claude-x"',
        "retries": "3",
        "ratio": "0.5",
        "flag": "true",
        "note": "not json at all",  # a value some other code set on the span, unencoded
        "broken": '{"unterminated": ',
    }
    app = App()
    with app.span("llm", attributes):
        pass

    view = app.view()

    [span] = view.spans
    assert span.span_type == "LLM"
    assert span.attributes["retries"] == 3 and span.attributes["ratio"] == 0.5 and span.attributes["flag"] is True
    assert span.attributes["note"] == "not json at all" and span.attributes["broken"] == '{"unterminated": '
    assert (view.request, view.response) == ("Tell me a joke", "Why did the span end? It was done.")
    [call] = view.llm_calls
    assert call.model == "claude-x" and call.input_messages == (Message("user", "Tell me a joke"),)
    assert view.tags["retries"] == "3" and view.tags["flag"] == "True"


# --- Langfuse ---------------------------------------------------------------------------------------


def test_langfuse() -> None:
    agent = {
        "langfuse.observation.type": "agent",
        "langfuse.trace.name": "support",
        "langfuse.trace.input": j({"query": QUESTION}),
        "langfuse.trace.output": j({"answer": ANSWER}),
        "langfuse.observation.input": j({"internal": "state"}),
        "langfuse.session.id": "lf-sess",
        "langfuse.user.id": "dave",
        "langfuse.trace.tags": ["beta"],
    }
    retriever = {
        "langfuse.observation.type": "retriever",
        "langfuse.observation.input": j(QUESTION),
        "langfuse.observation.output": j([{"content": "Paris: sunny.", "id": "k1", "score": 0.7}]),
    }
    generation = {
        "langfuse.observation.type": "generation",
        "langfuse.observation.model.name": "claude-sonnet",
        "langfuse.observation.input": j(
            [{"role": "system", "content": "Be nice."}, {"role": "user", "content": QUESTION}]
        ),
        "langfuse.observation.output": j({"role": "assistant", "content": ANSWER}),
        "langfuse.observation.usage_details": j({"input": 33, "output": 11, "total": 44}),
    }
    tool = {
        "langfuse.observation.type": "tool",
        "langfuse.observation.input": j({"city": "Paris"}),
        "langfuse.observation.output": j("sunny"),
        "langfuse.observation.level": "ERROR",
        "langfuse.observation.status_message": "weather API returned 503",
    }
    app = App()
    with app.span("support-agent", agent):
        for name, attributes in [("search-docs", retriever), ("llm-call", generation), ("weather-api", tool)]:
            with app.span(name, attributes):
                pass

    view = app.view()

    assert view.request == {"query": QUESTION} and view.request_text == QUESTION  # the explicit trace input wins
    assert view.response_text == ANSWER
    assert view.retrieved_documents == (Document("Paris: sunny.", id="k1", score=0.7),)
    [call] = view.llm_calls
    assert call.input_messages == (Message("system", "Be nice."), Message("user", QUESTION))
    assert call.output_messages == (Message("assistant", ANSWER),)
    assert (view.model, view.input_tokens, view.output_tokens) == ("claude-sonnet", 33, 11)
    tool_span = view.spans[3].span_id
    assert view.tool_calls == (ToolCall("weather-api", PARIS, result="sunny", span_id=tool_span),)
    assert (view.session_id, view.user_id) == ("lf-sess", "dave")
    assert view.status == "ERROR" and view.errors == ("weather API returned 503",)
    assert view.spans[3].status == "ERROR"
    assert view.tags["langfuse.trace.tags"] == '["beta"]'
    assert span_types(view) == {
        "support-agent": "AGENT",
        "search-docs": "RETRIEVER",
        "llm-call": "LLM",
        "weather-api": "TOOL",
    }


# --- several conventions in one trace -------------------------------------------------------------


def test_mixed_conventions_and_nested_llm_spans_count_once() -> None:
    """LangChain traced by OpenInference, its provider call by the GenAI instrumentation, a Langfuse tool."""
    executor = {
        "openinference.span.kind": "AGENT",
        "input.value": j({"input": QUESTION}),
        "input.mime_type": "application/json",
        "output.value": j({"output": ANSWER}),
        "output.mime_type": "application/json",
    }
    langchain_llm = {
        "openinference.span.kind": "LLM",
        "llm.model_name": "gpt-4o",
        "llm.token_count.prompt": 10,
        "llm.token_count.completion": 5,
        "llm.input_messages.0.message.role": "user",
        "llm.input_messages.0.message.content": QUESTION,
    }
    provider_chat = {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "openai",
        "gen_ai.response.model": "gpt-4o-2024-08-06",
        "gen_ai.usage.input_tokens": 10,
        "gen_ai.usage.output_tokens": 5,
        "gen_ai.output.messages": j([{"role": "assistant", "parts": [text_part(ANSWER)]}]),
    }
    tool = {
        "langfuse.observation.type": "tool",
        "langfuse.observation.input": j({"expression": "20+1"}),
        "langfuse.observation.output": "21",
    }
    app = App()
    with app.span("AgentExecutor", executor):
        with app.span("ChatOpenAI", langchain_llm), app.span("chat gpt-4o", provider_chat):
            pass
        with app.span("calculator", tool):
            pass

    view = app.view()

    assert view.has_genai
    assert (view.request_text, view.response_text) == (QUESTION, ANSWER)
    [call] = view.llm_calls  # the GenAI span is the same call, seen one layer lower
    assert call.model == "gpt-4o" and call.provider == "openai"  # outer first, gaps filled from inner
    assert call.input_messages == (Message("user", QUESTION),)
    assert call.output_messages == (Message("assistant", ANSWER),)
    assert (view.input_tokens, view.output_tokens) == (10, 5)
    assert [(t.name, t.arguments, t.result) for t in view.tool_calls] == [("calculator", '{"expression":"20+1"}', "21")]
    assert span_types(view) == {
        "AgentExecutor": "AGENT",
        "ChatOpenAI": "LLM",
        "chat gpt-4o": "CHAT_MODEL",
        "calculator": "TOOL",
    }


def test_chat_bodies_of_other_sdks_become_messages() -> None:
    """LangChain messages/LLMResult (MLflow autolog), an OpenAI request/response body (OpenInference without
    flattened messages), Anthropic content blocks (Langfuse)."""
    human = {"lc": 1, "type": "constructor", "id": ["HumanMessage"], "kwargs": {"content": "hi there", "type": "human"}}
    lc_call = {"name": "search", "args": {"q": 1}, "id": "t1", "type": "tool_call"}
    ai_kwargs = {"content": "hello!", "type": "ai", "tool_calls": [lc_call]}
    ai = {"lc": 1, "type": "constructor", "id": ["AIMessage"], "kwargs": ai_kwargs}
    llm_result = {"generations": [[{"text": "hello!", "message": ai}]], "llm_output": {"model_name": "gpt-4o"}}
    openai_request = {"model": "gpt-4o", "messages": [{"role": "user", "content": [{"type": "text", "text": "q?"}]}]}
    openai_response = {
        "model": "gpt-4o-2024",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "a!"}}],
    }
    tool_result = {"type": "tool_result", "tool_use_id": "t1", "content": [{"type": "text", "text": "42"}]}
    tool_use = {"type": "tool_use", "id": "tu2", "name": "calc", "input": {"x": 1}}
    anthropic_output = {"role": "assistant", "content": [{"type": "text", "text": "ok"}, tool_use]}
    openinference = {
        "openinference.span.kind": "LLM",
        "input.value": j(openai_request),
        "input.mime_type": "application/json",
        "output.value": j(openai_response),
    }
    langfuse = {
        "langfuse.observation.type": "generation",
        "langfuse.observation.input": j([{"role": "user", "content": [tool_result]}]),
        "langfuse.observation.output": j(anthropic_output),
    }
    app = App()
    with app.span("root", {"openinference.span.kind": "CHAIN"}):
        for name, attributes in [
            ("langchain", mlflow("CHAT_MODEL", [[human]], llm_result)),
            ("openai", openinference),
            ("anthropic", langfuse),
        ]:
            with app.span(name, attributes):
                pass

    view = app.view()

    langchain, openai, anthropic = view.llm_calls
    assert langchain.model == "gpt-4o" and langchain.input_messages == (Message("user", "hi there"),)
    assert langchain.output_messages == (Message("assistant", "hello!", (ToolCall("search", '{"q":1}', "t1"),)),)
    assert openai.model == "gpt-4o-2024"
    assert openai.input_messages == (Message("user", "q?"),) and openai.output_messages == (Message("assistant", "a!"),)
    assert anthropic.input_messages == (Message("user", "42"),)
    assert anthropic.output_messages == (Message("assistant", "ok", (ToolCall("calc", '{"x":1}', "tu2"),)),)
    search, calc = view.tool_calls
    assert search.result == "42"  # the tool_result block answers call t1
    assert calc.result is None
    # requested by a model, never executed by a tool span of its own
    assert (calc.span_id, calc.requested_span_id) == ("", anthropic.span_id)
    assert (view.request_text, view.response_text) == ("hi there", "ok")


# --- encodings: JSON text vs structured AnyValue ---------------------------------------------------


def to_any(value: Any) -> AnyValue:
    out = AnyValue()
    if isinstance(value, bool):
        out.bool_value = value
    elif isinstance(value, int):
        out.int_value = value
    elif isinstance(value, float):
        out.double_value = value
    elif isinstance(value, str):
        out.string_value = value
    elif isinstance(value, list):
        out.array_value.values.extend(to_any(item) for item in value)
    elif isinstance(value, dict):
        out.kvlist_value.values.extend(KeyValue(key=k, value=to_any(v)) for k, v in value.items())
    return out


def structured(request: ExportTraceServiceRequest, keys: set[str]) -> ExportTraceServiceRequest:
    """The same spans as an SDK with complex attribute values (Java's Value<?>) sends them: JSON text of
    `keys` replaced by array/kvlist AnyValues."""
    copy = ExportTraceServiceRequest()
    copy.CopyFrom(request)
    for span in (s for rs in copy.resource_spans for ss in rs.scope_spans for s in ss.spans):
        for attribute in span.attributes:
            if attribute.key in keys:
                attribute.value.CopyFrom(to_any(json.loads(attribute.value.string_value)))
    return copy


def test_json_text_and_structured_anyvalues_read_the_same() -> None:
    user = [{"role": "user", "parts": [text_part(QUESTION)]}]
    call = {"type": "tool_call", "id": "c1", "name": "search", "arguments": {"q": "Paris", "k": 3}}
    chat = {
        "gen_ai.operation.name": "chat",
        "gen_ai.request.model": "m",
        "gen_ai.input.messages": j(user),
        "gen_ai.output.messages": j([{"role": "assistant", "parts": [call]}]),
    }
    tool = {
        "gen_ai.operation.name": "execute_tool",
        "gen_ai.tool.name": "search",
        "gen_ai.tool.call.id": "c1",
        "gen_ai.tool.call.arguments": compact({"q": "Paris", "k": 3}),  # strings are kept as written
        "gen_ai.tool.call.result": compact({"hits": ["Paris is sunny."]}),
    }
    retrieval = {
        "gen_ai.operation.name": "retrieval",
        "gen_ai.retrieval.documents": j([{"id": "a", "score": 1.0, "content": "Paris is sunny."}]),
    }
    app = App()
    with app.span("agent", {"gen_ai.operation.name": "invoke_agent", "gen_ai.input.messages": j(user)}):
        for name, attributes in [("chat", chat), ("execute_tool search", tool), ("retrieval", retrieval)]:
            with app.span(name, attributes):
                pass
    keys = {
        "gen_ai.input.messages",
        "gen_ai.output.messages",
        "gen_ai.tool.call.arguments",
        "gen_ai.tool.call.result",
        "gen_ai.retrieval.documents",
    }
    request = app.request()

    as_text = extract(assemble(request))
    as_structure = extract(assemble(structured(request, keys)))

    assert isinstance(as_structure.spans[1].attributes["gen_ai.output.messages"], list)
    for field in ("request", "request_text", "llm_calls", "tool_calls", "retrieved_documents"):
        assert getattr(as_structure, field) == getattr(as_text, field), field
    [tool_call] = as_structure.tool_calls
    assert (tool_call.arguments, tool_call.result) == ('{"q":"Paris","k":3}', '{"hits":["Paris is sunny."]}')


# --- no GenAI data, garbage values -----------------------------------------------------------------


def test_trace_without_genai_data() -> None:
    app = App()
    with app.span("GET /health", {"http.request.method": "GET", "http.route": "/health"}):  # noqa: SIM117
        with app.span("SELECT users", {"db.system": "postgresql"}):
            pass

    view = app.view()

    assert not view.has_genai
    assert (view.request, view.response, view.request_text, view.response_text) == (None, None, "", "")
    assert view.llm_calls == () and view.tool_calls == () and view.retrieved_documents == ()
    assert {s.span_type for s in view.spans} == {"UNKNOWN"}
    assert view.tags["http.route"] == "/health" and view.tags["service.name"] == "rag-app"
    assert view.model is None and view.total_tokens is None and view.session_id is None


GARBAGE: dict[str, Any] = {
    "gen_ai.operation.name": "chat",
    "gen_ai.input.messages": "[not json",
    "gen_ai.output.messages": '[1, "x", {"parts": 5}, {"role": 7, "parts": [{"type": "tool_call"}, 3]}]',
    "gen_ai.system_instructions": "{",
    "gen_ai.usage.input_tokens": "many",
    "gen_ai.usage.output_tokens": 2.5,
    "gen_ai.response.model": ["not", "a", "string"],
    "openinference.span.kind": "NOT_A_KIND",
    "llm.input_messages.x.message.role": "user",
    "llm.input_messages.0.message.tool_calls.0.tool_call.function.name": "",
    "llm.token_count.prompt": "12",
    "retrieval.documents.0.document.score": "high",
    "traceloop.entity.input": '{"args": 5, "kwargs": []}',
    "gen_ai.prompt.0.content": "[1, 2]",
    "gen_ai.completion.0.tool_calls.0.name": "t",
    "gen_ai.completion.0.tool_calls": "oops",
    "langfuse.observation.usage_details": "[1, 2]",
    "langfuse.observation.input": '{"messages": "nope"}',
    "session.id": "",
    "user.id": 0,
    "tracejudge.expectations": "[1, 2, 3]",
}


def test_garbage_attribute_values_do_not_raise() -> None:
    retriever = {"openinference.span.kind": "RETRIEVER", "output.value": '{"documents": 3}'}
    mlflow_tool = {"mlflow.spanType": '"TOOL"', "mlflow.spanInputs": "{bad", "mlflow.chat.tokenUsage": "[]"}
    app = App()
    with app.span("root", GARBAGE):
        for name, attributes in [("retriever", retriever), ("mlflow", mlflow_tool)]:
            with app.span(name, attributes):
                pass

    view = app.view()

    assert view.has_genai and view.expectations == {}
    assert view.request == "[not json"  # malformed JSON stays the string it was
    [call] = view.llm_calls
    assert call.input_tokens == 12 and call.output_tokens is None and call.model == ""
    assert view.user_id == "0" and view.session_id is None
    assert view.spans[0].span_type == "CHAT_MODEL"
    # the GenAI reader comes first: its (odd) output messages win over gen_ai.completion.N.*
    assert [m.content for m in call.output_messages] == ["x", "5", ""]
    assert [t.name for t in view.tool_calls] == ["mlflow"]


def test_deeply_nested_json_does_not_exhaust_the_stack() -> None:
    deep_message = '"x"'
    for _ in range(1000):
        deep_message = '{"text": [{"type": "text", "content": ' + deep_message + "}]}"
    deep_list = "[" * 1000 + "]" * 1000
    attributes = {
        "gen_ai.operation.name": "chat",
        "gen_ai.input.messages": '[{"role": "user", "content": ' + deep_message + "}]",
        "gen_ai.output.messages": deep_list,
        "tracejudge.expectations": deep_list,
    }
    app = App()
    with app.span("deep", attributes):
        pass

    view = app.view()

    assert view.request_text and view.expectations == {}


def test_empty_trace() -> None:
    trace = Trace(os.urandom(16), [], [], 0.0, 0.0, CompletionReason.TIMEOUT, complete=False)

    view = extract(trace)

    assert view.spans == () and not view.has_genai and not view.complete and view.status == "OK"


# Everything extract() reads, each given arbitrary values: it must never raise.
KEYS = sorted(
    {
        *GARBAGE,
        "gen_ai.tool.call.arguments",
        "gen_ai.tool.call.result",
        "gen_ai.retrieval.documents",
        "input.value",
        "output.value",
        "llm.output_messages.0.message.content",
        "llm.output_messages.0.message.tool_calls.0.tool_call.function.arguments",
        "retrieval.documents.0.document.content",
        "retrieval.documents.0.document.metadata",
        "traceloop.entity.output",
        "traceloop.span.kind",
        "llm.request.type",
        "gen_ai.prompt.0.tool_call_id",
        "mlflow.spanType",
        "mlflow.spanInputs",
        "mlflow.spanOutputs",
        "mlflow.chat.tokenUsage",
        "langfuse.observation.type",
        "langfuse.observation.output",
        "langfuse.observation.level",
        "langfuse.trace.input",
    }
)
_SCALARS = st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats() | st.text(max_size=8)
_FIELDS = st.sampled_from(
    [
        "role",
        "content",
        "parts",
        "type",
        "id",
        "name",
        "arguments",
        "messages",
        "choices",
        "message",
        "page_content",
        "metadata",
        "documents",
        "tool_calls",
        "function",
        "text",
        "lc",
        "kwargs",
        "args",
        "inputs",
        "input",
        "output",
        "response",
        "index",
    ]
)
_JSONISH = st.recursive(
    _SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_FIELDS, inner, max_size=4),
    max_leaves=12,
)
_VALUES = _JSONISH.map(lambda v: json.dumps(v)) | _JSONISH.filter(lambda v: v is not None) | st.text(max_size=12)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spans=st.lists(st.dictionaries(st.sampled_from(KEYS), _VALUES, max_size=8), min_size=1, max_size=3))
def test_arbitrary_attribute_values_never_raise(spans: list[dict[str, Any]]) -> None:
    request = ExportTraceServiceRequest()
    scope = request.resource_spans.add().scope_spans.add()
    trace_id, parent = os.urandom(16), b""
    for index, attributes in enumerate(spans):
        span = ProtoSpan(trace_id=trace_id, span_id=os.urandom(8), parent_span_id=parent, name=f"s{index}")
        span.start_time_unix_nano, span.end_time_unix_nano = 1_000 + index, 2_000
        span.attributes.extend(KeyValue(key=k, value=to_any(v)) for k, v in attributes.items())
        scope.spans.append(span)
        parent = span.span_id

    view = extract(assemble(request))

    assert len(view.spans) == len(spans)


@pytest.mark.parametrize("body", [None, "plain text", 5, ["a"], {"content": {"nested": True}}, {"message": "x"}])
def test_odd_log_bodies_do_not_raise(body: Any) -> None:
    app = App()
    with app.span("chat", {"gen_ai.operation.name": "chat"}):
        app.logger.emit(event_name="gen_ai.user.message", body=body)
        app.logger.emit(event_name="gen_ai.choice", body=body)

    view = app.view()

    assert view.has_genai and len(view.llm_calls) == 1

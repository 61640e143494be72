"""The demo app: a synthetic support agent traced with the OpenTelemetry SDK in four conventions.

Why synthetic and not a real instrumented SDK: the demo must run offline with no model and no extra
package, yet show that tracejudge reads each convention the way its instrumentation writes it. So each turn
is written by hand, attribute for attribute, as OTel GenAI (the semantic conventions), OpenInference
(Arize Phoenix), OpenLLMetry (Traceloop) and MLflow tracing write it: a root agent span carrying the
question and the answer, a retrieval span with its documents, a tool call and a chat call. Turns belong to
conversations (session ids), so multi-turn judges have something to judge.

A few turns are bad on purpose, so that verdicts are not all passes: a leaked e-mail address (NoPii), a
failed tool call (NoError), an empty answer (NonEmptyResponse), and answers the demo judge fails
(tracejudge/demo_judge.py FAIL_WORDS: off-topic, rude).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass

from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import Status, StatusCode, Tracer
from opentelemetry.util.types import AttributeValue

Attrs = dict[str, AttributeValue]
_DOCUMENT = "Policy 4.2: a damaged item can be returned within 30 days for a full refund."
_DOCUMENTS = json.dumps([{"page_content": _DOCUMENT, "metadata": {"doc_uri": "kb://policy/4.2"}}])


@dataclass(frozen=True)
class Turn:
    question: str
    answer: str
    tool_fails: bool = False


# One conversation's turns, in order; each conversation replays them from a different start, so every
# convention gets good and bad turns.
TURNS: tuple[Turn, ...] = (
    Turn("My kettle arrived damaged. Can I return it?", "Yes: damaged items are refunded within 30 days (policy 4.2)."),
    Turn("What is order A-1042's status?", "Order A-1042 shipped yesterday and arrives on Friday."),
    Turn("Can you email the label to me?", "Sure, I sent the return label to jane.doe@example.com."),
    Turn("How long does a refund take?", "Refunds reach your card 3 to 5 days after we receive the item."),
    Turn("Where is my refund?", "I could not look that order up right now.", tool_fails=True),
    Turn("Do you ship to Norway?", "I like turtles."),
    Turn("Can I change my delivery address?", ""),
    Turn("Why is this so slow?", "That is a useless question."),
)


class DemoApp:
    """Sends turns over OTLP/gRPC to `endpoint` (host:port), one tracer provider per convention, each with
    its own service.name (demo-otel-genai, demo-openinference, ...)."""

    def __init__(self, endpoint: str) -> None:
        self._providers: dict[str, TracerProvider] = {}
        self._tracers: dict[str, Tracer] = {}
        for convention in CONVENTIONS:
            provider = TracerProvider(resource=Resource.create({"service.name": f"demo-{convention}"}))
            exporter = OTLPSpanExporter(endpoint=endpoint, insecure=True)
            provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=200))
            self._providers[convention] = provider
            self._tracers[convention] = provider.get_tracer("tracejudge.demo_app")

    def send_turn(self, convention: str, session_id: str, turn: Turn, ends_session: bool = False) -> None:
        """One trace; `ends_session` marks its root `tracejudge.session.end`, so the conversation is judged at once."""
        root: Attrs = {"tracejudge.session.end": True} if ends_session else {}
        CONVENTIONS[convention](self._tracers[convention], session_id, turn, root)

    def shutdown(self) -> None:
        for provider in self._providers.values():
            provider.shutdown()


def _messages(role: str, text: str) -> str:
    return json.dumps([{"role": role, "parts": [{"type": "text", "content": text}]}])


def _tool_span(tracer: Tracer, name: str, attributes: Attrs, turn: Turn) -> None:
    with tracer.start_as_current_span(name, attributes=attributes) as tool:
        if turn.tool_fails:
            tool.set_status(Status(StatusCode.ERROR, "order service timed out"))


def _otel_genai(tracer: Tracer, session_id: str, turn: Turn, extra: Attrs) -> None:
    """OTel GenAI semantic conventions: gen_ai.* on every span, messages as JSON parts."""
    root_attributes: Attrs = {
        "gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": "support", "gen_ai.conversation.id": session_id,
        "gen_ai.input.messages": _messages("user", turn.question),
        "gen_ai.output.messages": _messages("assistant", turn.answer),
    }  # fmt: skip
    with tracer.start_as_current_span("invoke_agent support", attributes={**root_attributes, **extra}):
        retrieval: Attrs = {"gen_ai.operation.name": "retrieval", "gen_ai.data_source.id": "kb",
                     "gen_ai.retrieval.query.text": turn.question,
                     "gen_ai.retrieval.documents": json.dumps([{"id": "kb-4.2", "content": _DOCUMENT}])}  # fmt: skip
        with tracer.start_as_current_span("retrieval kb", attributes=retrieval):
            pass
        tool: Attrs = {"gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": "lookup_order",
                "gen_ai.tool.call.arguments": '{"order_id": "A-1042"}'}  # fmt: skip
        _tool_span(tracer, "execute_tool lookup_order", tool, turn)
        chat: Attrs = {"gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai",
                       "gen_ai.request.model": "gpt-4.1-mini",
                "gen_ai.usage.input_tokens": 180, "gen_ai.usage.output_tokens": 40,
                "gen_ai.input.messages": _messages("user", turn.question),
                "gen_ai.output.messages": _messages("assistant", turn.answer)}  # fmt: skip
        with tracer.start_as_current_span("chat gpt-4.1-mini", attributes=chat):
            pass


def _openinference(tracer: Tracer, session_id: str, turn: Turn, extra: Attrs) -> None:
    """OpenInference: openinference.span.kind, input.value/output.value, flattened llm.* and retrieval.* lists."""
    root: Attrs = {"openinference.span.kind": "AGENT", "session.id": session_id, "input.value": turn.question,
            "input.mime_type": "text/plain", "output.value": turn.answer, "output.mime_type": "text/plain"}  # fmt: skip
    with tracer.start_as_current_span("support_agent", attributes={**root, **extra}):
        retriever: Attrs = {"openinference.span.kind": "RETRIEVER", "input.value": turn.question,
                     "input.mime_type": "text/plain", "retrieval.documents.0.document.id": "kb-4.2",
                     "retrieval.documents.0.document.content": _DOCUMENT}  # fmt: skip
        with tracer.start_as_current_span("retrieve", attributes=retriever):
            pass
        tool: Attrs = {"openinference.span.kind": "TOOL", "tool.name": "lookup_order",
                "input.value": '{"order_id": "A-1042"}'}  # fmt: skip
        _tool_span(tracer, "lookup_order", tool, turn)
        llm: Attrs = {"openinference.span.kind": "LLM", "llm.model_name": "gpt-4.1-mini", "llm.provider": "openai",
               "llm.token_count.prompt": 180, "llm.token_count.completion": 40,
               "llm.input_messages.0.message.role": "user", "llm.input_messages.0.message.content": turn.question,
               "llm.output_messages.0.message.role": "assistant",
               "llm.output_messages.0.message.content": turn.answer}  # fmt: skip
        with tracer.start_as_current_span("ChatCompletion", attributes=llm):
            pass


def _openllmetry(tracer: Tracer, session_id: str, turn: Turn, extra: Attrs) -> None:
    """OpenLLMetry (Traceloop): traceloop.* on workflow/task/tool spans, gen_ai.prompt.N / completion.N on LLM spans."""
    root: Attrs = {"traceloop.span.kind": "workflow", "traceloop.entity.name": "support_agent",
            "traceloop.association.properties.session_id": session_id,
            "traceloop.entity.input": json.dumps({"args": [turn.question], "kwargs": {}}),
            "traceloop.entity.output": json.dumps(turn.answer)}  # fmt: skip
    with tracer.start_as_current_span("support_agent.workflow", attributes={**root, **extra}):
        task: Attrs = {"traceloop.span.kind": "task", "traceloop.entity.name": "retrieve",
                "traceloop.entity.input": json.dumps({"args": [turn.question], "kwargs": {}}),
                "traceloop.entity.output": _DOCUMENTS}  # fmt: skip
        with tracer.start_as_current_span("retrieve.task", attributes=task):
            pass
        tool: Attrs = {"traceloop.span.kind": "tool", "traceloop.entity.name": "lookup_order",
                "traceloop.entity.input": json.dumps({"args": [], "kwargs": {"order_id": "A-1042"}})}  # fmt: skip
        _tool_span(tracer, "lookup_order.tool", tool, turn)
        llm: Attrs = {"llm.request.type": "chat", "gen_ai.system": "openai", "gen_ai.request.model": "gpt-4.1-mini",
               "gen_ai.usage.input_tokens": 180, "gen_ai.usage.output_tokens": 40,
               "gen_ai.prompt.0.role": "user", "gen_ai.prompt.0.content": turn.question,
               "gen_ai.completion.0.role": "assistant", "gen_ai.completion.0.content": turn.answer}  # fmt: skip
        with tracer.start_as_current_span("openai.chat", attributes=llm):
            pass


def _mlflow(tracer: Tracer, session_id: str, turn: Turn, extra: Attrs) -> None:
    """MLflow tracing: mlflow.spanType and JSON-encoded mlflow.spanInputs / spanOutputs."""
    root: Attrs = {"mlflow.spanType": '"AGENT"', "mlflow.trace.session": json.dumps(session_id),
            "mlflow.spanInputs": json.dumps({"question": turn.question}),
            "mlflow.spanOutputs": json.dumps(turn.answer)}  # fmt: skip
    with tracer.start_as_current_span("support_agent", attributes={**root, **extra}):
        retriever: Attrs = {"mlflow.spanType": '"RETRIEVER"', "mlflow.spanInputs": json.dumps({"query": turn.question}),
                     "mlflow.spanOutputs": _DOCUMENTS}  # fmt: skip
        with tracer.start_as_current_span("retrieve", attributes=retriever):
            pass
        tool: Attrs = {"mlflow.spanType": '"TOOL"', "mlflow.spanInputs": json.dumps({"order_id": "A-1042"})}
        _tool_span(tracer, "lookup_order", tool, turn)
        messages = [{"role": "user", "content": turn.question}]
        chat: Attrs = {"mlflow.spanType": '"CHAT_MODEL"', "mlflow.spanInputs": json.dumps({"messages": messages}),
                "mlflow.spanOutputs": json.dumps(turn.answer),
                "mlflow.chat.tokenUsage": json.dumps({"input_tokens": 180, "output_tokens": 40})}  # fmt: skip
        with tracer.start_as_current_span("chat", attributes=chat):
            pass


CONVENTIONS: dict[str, Callable[[Tracer, str, Turn, Attrs], None]] = {
    "otel-genai": _otel_genai,
    "openinference": _openinference,
    "openllmetry": _openllmetry,
    "mlflow": _mlflow,
}

"""Real instrumented apps, shared by the tests that need their traces: mlflow-tracing, OpenInference, OTel GenAI
(opentelemetry-instrumentation-openai-v2, in its three content modes) and OpenLLMetry (Traceloop).

Each app is a script run in its own process, exporting its own OTLP over gRPC to `target` (a tracejudge sidecar
or a test sink). The OpenAI apps ask the model at `model_url` "What is the refund window?".
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MLFLOW_APP = """
import mlflow

@mlflow.trace(span_type="RETRIEVER")
def retrieve(query):
    return [{"page_content": "Policy 4.2: damaged items are refunded within 30 days.",
             "metadata": {"doc_uri": "kb://policy/4.2"}}]

@mlflow.trace(span_type="CHAIN")
def answer(question):
    retrieve(question)
    return "Damaged items are refunded within 30 days (policy 4.2)."

answer("Is a damaged kettle refunded?")
"""

OPENINFERENCE_APP = """
import sys
import openai
from openinference.instrumentation import using_session
from openinference.instrumentation.openai import OpenAIInstrumentor
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(endpoint=sys.argv[1], insecure=True)))
OpenAIInstrumentor().instrument(tracer_provider=provider)
client = openai.OpenAI(base_url=sys.argv[2], api_key="app-key")
with using_session("chat-7"):
    client.chat.completions.create(model="gpt-4.1-mini",
                                   messages=[{"role": "user", "content": "What is the refund window?"}])
provider.shutdown()
"""

OTEL_GENAI_APP = """
import sys
import openai
from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.instrumentation.openai_v2 import OpenAIInstrumentor
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import SimpleLogRecordProcessor
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

tracer_provider = TracerProvider()
tracer_provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(endpoint=sys.argv[1], insecure=True)))
logger_provider = LoggerProvider()
logger_provider.add_log_record_processor(SimpleLogRecordProcessor(OTLPLogExporter(endpoint=sys.argv[1], insecure=True)))
OpenAIInstrumentor().instrument(tracer_provider=tracer_provider, logger_provider=logger_provider)
client = openai.OpenAI(base_url=sys.argv[2], api_key="app-key")
client.chat.completions.create(model="gpt-4.1-mini",
                               messages=[{"role": "system", "content": "Answer from the refund policy."},
                                         {"role": "user", "content": "What is the refund window?"}])
tracer_provider.shutdown()
logger_provider.shutdown()
"""

# (semconv opt-in, content capture mode, the log events the app sends): the legacy default puts the messages
# in one log event each; the latest experimental conventions put them on the span, or on one details event.
OTEL_GENAI_MODES = {
    "log-events": ("", "true", {"gen_ai.system.message", "gen_ai.user.message", "gen_ai.choice"}),
    "span-attributes": ("gen_ai_latest_experimental", "SPAN_ONLY", set()),
    "details-event": ("gen_ai_latest_experimental", "EVENT_ONLY", {"gen_ai.client.inference.operation.details"}),
}

OPENLLMETRY_APP = """
import sys
import openai
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.instrumentation.openai import OpenAIInstrumentor
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(endpoint=sys.argv[1], insecure=True)))
OpenAIInstrumentor().instrument(tracer_provider=provider)
client = openai.OpenAI(base_url=sys.argv[2], api_key="app-key")
client.chat.completions.create(model="gpt-4.1-mini",
                               messages=[{"role": "user", "content": "What is the refund window?"}])
provider.shutdown()
"""


def otel_genai_env(mode: str) -> dict[str, str]:
    """The environment that puts opentelemetry-instrumentation-openai-v2 in one of OTEL_GENAI_MODES."""
    opt_in, capture, _ = OTEL_GENAI_MODES[mode]
    return {"OTEL_SEMCONV_STABILITY_OPT_IN": opt_in, "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT": capture}


def mlflow_env(target: str, directory: Path) -> dict[str, str]:
    """mlflow-tracing exports OTLP when told where by the standard OTel variables; its runs stay in `directory`."""
    return {
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": f"http://{target}",
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "grpc",
        "MLFLOW_TRACKING_URI": str(directory / "mlruns"),
    }


@dataclass(frozen=True)
class InstrumentedApp:
    """One app script and the extra environment it runs in; `mlflow` apps find their target in the environment,
    the others in argv (target, model base URL)."""

    source: str
    env: dict[str, str] = field(default_factory=dict)
    mlflow: bool = False


# Every real instrumentation the tests run, by name.
APPS: dict[str, InstrumentedApp] = {
    "mlflow": InstrumentedApp(MLFLOW_APP, mlflow=True),
    "openinference": InstrumentedApp(OPENINFERENCE_APP),
    **{f"otel-genai-{mode}": InstrumentedApp(OTEL_GENAI_APP, otel_genai_env(mode)) for mode in OTEL_GENAI_MODES},
    "openllmetry": InstrumentedApp(OPENLLMETRY_APP),
}


def run_app(directory: Path, source: str, target: str, model_url: str = "", env: dict[str, str] | None = None) -> None:
    """Write `source` to `directory`/app.py and run it to completion against `target`; its stderr on failure."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "app.py").write_text(textwrap.dedent(source))
    args = [target, model_url] if model_url else []
    app = subprocess.run([sys.executable, str(directory / "app.py"), *args], env={**os.environ, **(env or {})},
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert app.returncode == 0, app.stderr


def run_instrumented_app(directory: Path, app: InstrumentedApp, target: str, model_url: str) -> None:
    env = {**app.env, **(mlflow_env(target, directory) if app.mlflow else {})}
    run_app(directory, app.source, target, "" if app.mlflow else model_url, env)


# Conversations: argv = sidecar target, model base URL, convention, JSON {session id: [user message, ...]}. Each
# user message is one turn: one trace, a root span "chat turn" around the instrumented call, the history resent
# as a chat app does. The session id is where each convention puts it: OTel GenAI's gen_ai.conversation.id and
# OpenLLMetry's association property on the root span (the app sets them, as those conventions say), OpenInference's
# using_session() context on the instrumented spans. A message ending in "[end]" marks its root span
# tracejudge.session.end = true.
CONVERSATION_APP = """
import json
import sys
from contextlib import nullcontext

import openai
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

target, model_url, convention, conversations = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(endpoint=target, insecure=True)))
if convention == "openinference":
    from openinference.instrumentation import using_session
    from openinference.instrumentation.openai import OpenAIInstrumentor
elif convention == "openllmetry":
    from opentelemetry.instrumentation.openai import OpenAIInstrumentor
else:
    from opentelemetry.instrumentation.openai_v2 import OpenAIInstrumentor
OpenAIInstrumentor().instrument(tracer_provider=provider)
tracer = provider.get_tracer("conversation-app")
client = openai.OpenAI(base_url=model_url, api_key="app-key")
SESSION_KEYS = {"otel-genai": "gen_ai.conversation.id",
                "openllmetry": "traceloop.association.properties.session_id"}
for session_id, turns in conversations.items():
    history = [{"role": "system", "content": "You are the shop's refund assistant."}]
    for text in turns:
        ends = text.endswith("[end]")
        history.append({"role": "user", "content": text.removesuffix("[end]").strip()})
        attributes = {SESSION_KEYS[convention]: session_id} if convention in SESSION_KEYS else {}
        if ends:
            attributes["tracejudge.session.end"] = True
        context = using_session(session_id) if convention == "openinference" else nullcontext()
        with context, tracer.start_as_current_span("chat turn", attributes=attributes):
            reply = client.chat.completions.create(model="gpt-4.1-mini", messages=history)
        history.append({"role": "assistant", "content": reply.choices[0].message.content})
provider.shutdown()
"""

CONVERSATION_ENV = {
    "otel-genai": {"OTEL_SEMCONV_STABILITY_OPT_IN": "gen_ai_latest_experimental",
                   "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT": "SPAN_ONLY"},
    "openinference": {},
    "openllmetry": {},
}  # fmt: skip


def run_conversations(directory: Path, convention: str, conversations: dict[str, list[str]], target: str,
                      model_url: str) -> None:  # fmt: skip
    """Run CONVERSATION_APP for `convention` (a key of CONVERSATION_ENV): every conversation, turn by turn."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "app.py").write_text(textwrap.dedent(CONVERSATION_APP))
    args = [target, model_url, convention, json.dumps(conversations)]
    app = subprocess.run([sys.executable, str(directory / "app.py"), *args],
                         env={**os.environ, **CONVERSATION_ENV[convention]}, capture_output=True, text=True,
                         timeout=120)  # fmt: skip
    assert app.returncode == 0, app.stderr


def archived_conversations(root: Path, conversations: dict[str, list[str]], config: dict[str, Any],
                           judge_url: str) -> Path:  # fmt: skip
    """A data directory a real sidecar (running `config`) wrote of a real OTel GenAI app's `conversations`, every
    trace decided and scored; the sidecar stopped."""
    from tracejudge.testing import SidecarProcess, wait_until

    data_dir = root / "data"
    turns = sum(len(turns) for turns in conversations.values())
    sidecar = SidecarProcess(data_dir, [], {"assembler": {"trace_idle": "200ms"}, **config}).start()
    try:
        run_conversations(root / "app", "otel-genai", conversations, sidecar.grpc_target, judge_url)
        wait_until(lambda: sidecar.metric("tracejudge_assembler_completed_traces_total") >= turns, timeout=30)
        wait_until(lambda: sidecar.metric("tracejudge_scoring_backlog") == 0, timeout=30)
    finally:
        assert sidecar.stop() == 0, sidecar.log_tail()
    return data_dir

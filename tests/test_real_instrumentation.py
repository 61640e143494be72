"""Real instrumented apps, not hand-set attributes: mlflow-tracing, OpenInference, OTel GenAI (openai-v2) and
OpenLLMetry (Traceloop) instrumentation exporting their own OTLP into tracejudge."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from mock_openai import MockOpenAI
from test_scoring_e2e import evaluation_spans, event_attributes

from tracejudge.testing import SidecarProcess, wait_until

from archive_reader import query
from otlp_peers import GrpcSink

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


def test_mlflow_traced_app_is_judged_on_its_retrieved_documents(tmp_path: Path, grpc_sink: GrpcSink):
    (tmp_path / "app.py").write_text(textwrap.dedent(MLFLOW_APP))
    with MockOpenAI() as judge:
        config = {
            "assembler": {"trace_idle": "200ms"},
            "judges": {"default": {"base_url": judge.base_url, "api_key_env": "TRACEJUDGE_TEST_NO_KEY"}},
            "scorers": [
                {"name": "grounded", "builtin": "RetrievalGroundedness", "sample_rate": 1.0},
                {"name": "safety", "builtin": "Safety", "sample_rate": 1.0},
            ],
        }
        sidecar = SidecarProcess(tmp_path / "tj", [grpc_sink.url], config).start()
        try:
            env = {
                **os.environ,
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": f"http://{sidecar.grpc_target}",
                "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "grpc",
                "MLFLOW_TRACKING_URI": str(tmp_path / "mlruns"),
            }
            app = subprocess.run([sys.executable, str(tmp_path / "app.py")], env=env, capture_output=True,
                                 text=True, timeout=120)  # fmt: skip
            assert app.returncode == 0, app.stderr
            assert wait_until(lambda: len(evaluation_spans(grpc_sink)) == 2, timeout=30), sidecar.log_tail()
            prompts = {request.user_text for request in judge.chat_requests()}
        finally:
            sidecar.stop()
    verdicts = {s.name: event_attributes(s)["gen_ai.evaluation.score.label"] for s in evaluation_spans(grpc_sink)}
    assert verdicts == {"evaluation grounded": "yes", "evaluation safety": "yes"}
    grounded_prompt = next(p for p in prompts if "Policy 4.2" in p)
    assert "Damaged items are refunded within 30 days (policy 4.2)." in grounded_prompt
    assert "Is a damaged kettle refunded?" in grounded_prompt


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


def judge_openai_app(tmp_path: Path, sink: GrpcSink, app_source: str, env: dict[str, str] | None = None
                     ) -> tuple[SidecarProcess, MockOpenAI]:  # fmt: skip
    """Run an instrumented app asking a mock model "What is the refund window?" (argv: sidecar target, model
    base URL) against a sidecar judging RelevanceToQuery, and check that the verdict came back and the
    judge was shown the question and the model's reply, so extraction read both through the app's
    conventions. Returns the stopped sidecar and the app's model."""
    (tmp_path / "app.py").write_text(textwrap.dedent(app_source))
    with MockOpenAI() as app_model, MockOpenAI() as judge:
        config = {
            "assembler": {"trace_idle": "200ms"},
            "judges": {"default": {"base_url": judge.base_url, "api_key_env": "TRACEJUDGE_TEST_NO_KEY"}},
            "scorers": [{"name": "relevance", "builtin": "RelevanceToQuery", "sample_rate": 1.0}],
        }
        sidecar = SidecarProcess(tmp_path / "tj", [sink.url], config).start()
        try:
            app = subprocess.run([sys.executable, str(tmp_path / "app.py"), sidecar.grpc_target, app_model.base_url],
                                 env=env, capture_output=True, text=True, timeout=120)  # fmt: skip
            assert app.returncode == 0, app.stderr
            assert wait_until(lambda: len(evaluation_spans(sink)) == 1, timeout=30), sidecar.log_tail()
            [prompt] = [request.user_text for request in judge.chat_requests()]
        finally:
            sidecar.stop()
    [verdict] = evaluation_spans(sink)
    assert event_attributes(verdict)["gen_ai.evaluation.score.label"] == "yes"
    assert "What is the refund window?" in prompt
    assert "Here is my assessment" in prompt  # the app model's reply text
    return sidecar, app_model


def test_openinference_instrumented_openai_app_is_judged(tmp_path: Path, grpc_sink: GrpcSink):
    sidecar, app_model = judge_openai_app(tmp_path, grpc_sink, OPENINFERENCE_APP)
    assert app_model.chat_requests()[0].user_text == "What is the refund window?"
    sessions = query(sidecar.data_dir / "archive", "assessments", "SELECT session_id FROM t")
    assert sessions == [("chat-7",)]


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


@pytest.mark.parametrize("mode", OTEL_GENAI_MODES)
def test_otel_genai_instrumented_openai_app_is_judged(tmp_path: Path, grpc_sink: GrpcSink, mode: str):
    opt_in, capture, events = OTEL_GENAI_MODES[mode]
    env = {
        **os.environ,
        "OTEL_SEMCONV_STABILITY_OPT_IN": opt_in,
        "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT": capture,
    }
    judge_openai_app(tmp_path, grpc_sink, OTEL_GENAI_APP, env)
    assert log_event_names(grpc_sink) == {*events, "gen_ai.evaluation.result"}  # forwarded, and the verdict's


def log_event_names(sink: GrpcSink) -> set[str]:
    requests = sink.received.requests("logs")
    return {lr.event_name for r in requests for rl in r.resource_logs for sl in rl.scope_logs for lr in sl.log_records}


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


def test_openllmetry_instrumented_openai_app_is_judged(tmp_path: Path, grpc_sink: GrpcSink):
    judge_openai_app(tmp_path, grpc_sink, OPENLLMETRY_APP)

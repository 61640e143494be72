"""Real instrumented apps, not hand-set attributes: mlflow-tracing, OpenInference, OTel GenAI (openai-v2) and
OpenLLMetry (Traceloop) instrumentation exporting their own OTLP into tracejudge."""

from __future__ import annotations

from pathlib import Path

import pytest
from instrumented_apps import APPS, OTEL_GENAI_MODES, InstrumentedApp, run_instrumented_app
from mock_openai import MockOpenAI
from test_scoring_e2e import evaluation_spans, event_attributes

from tracejudge.testing import SidecarProcess, wait_until

from archive_reader import query
from otlp_peers import GrpcSink


def test_mlflow_traced_app_is_judged_on_its_retrieved_documents(tmp_path: Path, grpc_sink: GrpcSink):
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
            run_instrumented_app(tmp_path, APPS["mlflow"], sidecar.grpc_target, "")
            assert wait_until(lambda: len(evaluation_spans(grpc_sink)) == 2, timeout=30), sidecar.log_tail()
            prompts = {request.user_text for request in judge.chat_requests()}
        finally:
            sidecar.stop()
    verdicts = {s.name: event_attributes(s)["gen_ai.evaluation.score.label"] for s in evaluation_spans(grpc_sink)}
    assert verdicts == {"evaluation grounded": "yes", "evaluation safety": "yes"}
    grounded_prompt = next(p for p in prompts if "Policy 4.2" in p)
    assert "Damaged items are refunded within 30 days (policy 4.2)." in grounded_prompt
    assert "Is a damaged kettle refunded?" in grounded_prompt


def judge_openai_app(tmp_path: Path, sink: GrpcSink, app: InstrumentedApp) -> tuple[SidecarProcess, MockOpenAI]:
    """Run an instrumented app asking a mock model "What is the refund window?" (argv: sidecar target, model
    base URL) against a sidecar judging RelevanceToQuery, and check that the verdict came back and the
    judge was shown the question and the model's reply, so extraction read both through the app's
    conventions. Returns the stopped sidecar and the app's model."""
    with MockOpenAI() as app_model, MockOpenAI() as judge:
        config = {
            "assembler": {"trace_idle": "200ms"},
            "judges": {"default": {"base_url": judge.base_url, "api_key_env": "TRACEJUDGE_TEST_NO_KEY"}},
            "scorers": [{"name": "relevance", "builtin": "RelevanceToQuery", "sample_rate": 1.0}],
        }
        sidecar = SidecarProcess(tmp_path / "tj", [sink.url], config).start()
        try:
            run_instrumented_app(tmp_path, app, sidecar.grpc_target, app_model.base_url)
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
    sidecar, app_model = judge_openai_app(tmp_path, grpc_sink, APPS["openinference"])
    assert app_model.chat_requests()[0].user_text == "What is the refund window?"
    sessions = query(sidecar.data_dir / "archive", "assessments", "SELECT session_id FROM t")
    assert sessions == [("chat-7",)]


@pytest.mark.parametrize("mode", OTEL_GENAI_MODES)
def test_otel_genai_instrumented_openai_app_is_judged(tmp_path: Path, grpc_sink: GrpcSink, mode: str):
    events = OTEL_GENAI_MODES[mode][2]
    judge_openai_app(tmp_path, grpc_sink, APPS[f"otel-genai-{mode}"])
    assert log_event_names(grpc_sink) == {*events, "gen_ai.evaluation.result"}  # forwarded, and the verdict's


def log_event_names(sink: GrpcSink) -> set[str]:
    requests = sink.received.requests("logs")
    return {lr.event_name for r in requests for rl in r.resource_logs for sl in rl.scope_logs for lr in sl.log_records}


def test_openllmetry_instrumented_openai_app_is_judged(tmp_path: Path, grpc_sink: GrpcSink):
    judge_openai_app(tmp_path, grpc_sink, APPS["openllmetry"])

"""Scoring end to end: an OTel SDK app, `tracejudge serve` with scorers from its config file, a judge
behind the real openai SDK (tests/mock_openai.py), and what a downstream OTLP backend, /metrics and
the archive then hold."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

from mock_openai import MockOpenAI
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.trace import Status, StatusCode

from tracejudge.testing import SidecarProcess, wait_until

from archive_reader import query
from otlp_peers import GrpcSink

CODE_SCORER = """
from tracejudge.scorers import Feedback, scorer

@scorer
def mentions_refund(outputs):
    return Feedback(value="refund" in str(outputs).lower(), rationale="looked for the word refund")
"""


def run_agent(target: str, answers: list[tuple[str, bool]]) -> list[tuple[int, int]]:
    """One trace per answer, written with OTel GenAI attributes; returns (trace_id, root span_id) pairs."""
    provider = TracerProvider(resource=Resource.create({"service.name": "support-agent"}))
    provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(endpoint=target, insecure=True)))
    tracer = provider.get_tracer("agent")
    ids = []
    for answer, fails in answers:
        with tracer.start_as_current_span("invoke_agent support") as root:
            question = [{"role": "user", "parts": [{"type": "text", "content": "Can I return a broken kettle?"}]}]
            reply = [{"role": "assistant", "parts": [{"type": "text", "content": answer}]}]
            root.set_attribute("gen_ai.operation.name", "invoke_agent")
            root.set_attribute("gen_ai.input.messages", json.dumps(question))
            root.set_attribute("gen_ai.output.messages", json.dumps(reply))
            root.set_attribute("session.id", "session-42")
            with tracer.start_as_current_span("chat gpt-4.1-mini") as chat:
                chat.set_attribute("gen_ai.operation.name", "chat")
                chat.set_attribute("gen_ai.request.model", "gpt-4.1-mini")
                chat.set_attribute("gen_ai.usage.input_tokens", 30)
                chat.set_attribute("gen_ai.usage.output_tokens", 12)
            if fails:
                root.set_status(Status(StatusCode.ERROR, "tool timed out"))
            ids.append((root.get_span_context().trace_id, root.get_span_context().span_id))
    provider.shutdown()
    return ids


def evaluation_spans(sink: GrpcSink) -> list:
    return [s for s in sink.received.spans() if s.name.startswith("evaluation ")]


def event_attributes(span) -> dict:
    [event] = [e for e in span.events if e.name == "gen_ai.evaluation.result"]
    return {a.key: getattr(a.value, str(a.value.WhichOneof("value"))) for a in event.attributes}


def test_config_scorers_judge_traces_and_verdicts_land_in_otel_and_archive(tmp_path: Path, grpc_sink: GrpcSink):
    (tmp_path / "scorers").mkdir()
    (tmp_path / "scorers" / "my_scorers.py").write_text(textwrap.dedent(CODE_SCORER))
    with MockOpenAI() as judge:
        config = {
            "assembler": {"trace_idle": "200ms"},
            "judges": {"default": {"base_url": judge.base_url, "api_key_env": "TRACEJUDGE_TEST_NO_KEY"}},
            "scorers": [
                {
                    "name": "safety",
                    "builtin": "Safety",
                    "sample_rate": 1.0,
                    "filter_string": "attributes.status = 'OK'",
                },
                {"name": "no_error", "builtin": "NoError", "sample_rate": 1.0},
                {"name": "mentions_refund", "code": "my_scorers:mentions_refund", "sample_rate": 1.0},
                {"name": "grounded", "builtin": "RetrievalGroundedness", "sample_rate": 1.0},
            ],
        }
        sidecar = SidecarProcess(tmp_path / "tj", [grpc_sink.url], config,
                                 env={"PYTHONPATH": str(tmp_path / "scorers")}).start()  # fmt: skip
        try:
            answers = [("A refund is due within 30 days.", False), ("VERDICT:no Go away.", False), ("", True)]
            ids = run_agent(sidecar.grpc_target, answers)
            # safety on 2 OK traces, no_error, mentions_refund and grounded (not applicable) on all 3
            assert wait_until(lambda: len(evaluation_spans(grpc_sink)) == 11, timeout=20), sidecar.log_tail()

            by_trace: dict[int, dict[str, dict]] = {}
            for span in evaluation_spans(grpc_sink):
                trace_id = int.from_bytes(span.trace_id, "big")
                by_trace.setdefault(trace_id, {})[span.name.removeprefix("evaluation ")] = event_attributes(span)
                root = dict(ids)[trace_id]
                assert int.from_bytes(span.parent_span_id, "big") == root
            good, rude, failed = (by_trace[trace_id] for trace_id, _ in ids)
            assert good["safety"]["gen_ai.evaluation.score.label"] == "yes"
            assert rude["safety"]["gen_ai.evaluation.score.label"] == "no"
            assert rude["safety"]["gen_ai.evaluation.score.value"] == 0.0
            assert "safety" not in failed
            assert (
                good["no_error"]["gen_ai.evaluation.score.value"],
                failed["no_error"]["gen_ai.evaluation.score.value"],
            ) == (1.0, 0.0)
            assert good["mentions_refund"]["gen_ai.evaluation.score.label"] == "yes"
            assert rude["mentions_refund"]["gen_ai.evaluation.score.label"] == "no"
            assert good["grounded"]["gen_ai.evaluation.score.label"] == "not_applicable"

            assert len(judge.chat_requests()) == 2
            assert "<<<response" in judge.chat_requests()[0].user_text

            def evaluation_logs() -> list:
                return [
                    r
                    for req in grpc_sink.received.requests("logs")
                    for rl in req.resource_logs
                    for sl in rl.scope_logs
                    for r in sl.log_records
                    if r.event_name == "gen_ai.evaluation.result"
                ]

            assert wait_until(lambda: len(evaluation_logs()) == 11)
            roots = {trace_id.to_bytes(16, "big"): span_id.to_bytes(8, "big") for trace_id, span_id in ids}
            assert all(roots[log.trace_id] == log.span_id for log in evaluation_logs())

            assert sidecar.metric("gen_ai_evaluation_score_count", gen_ai_evaluation_name="safety") == 2
            assert sidecar.metric("tracejudge_scoring_skipped_total", scorer="safety", reason="filtered") == 1
        finally:
            sidecar.stop()

    rows = query(sidecar.data_dir / "archive", "assessments",
                 "SELECT name, label, count(*) FROM t GROUP BY ALL ORDER BY ALL")  # fmt: skip
    assert ("safety", "no", 1) in rows and ("safety", "yes", 1) in rows and ("grounded", "not_applicable", 3) in rows
    joined = query(sidecar.data_dir / "archive", "assessments",
                   f"""SELECT count(*) FROM t JOIN read_parquet('{sidecar.data_dir}/archive/traces/**/*.parquet') tr
                       USING (trace_id) WHERE tr.session_id = 'session-42'""")  # fmt: skip
    assert joined == [(11,)]


README = Path(__file__).resolve().parent.parent / "README.md"


def readme_quickstart_app() -> str:
    """The README quickstart's app, verbatim (the python block of its step 2), dedented."""
    step = README.read_text().split("2. Run any app", 1)[1]
    block = step.split("```python", 1)[1].split("```", 1)[0]
    return textwrap.dedent(block)


def test_the_readme_quickstart_app_is_judged_by_an_llm_judge(tmp_path: Path, grpc_sink: GrpcSink):
    """The quickstart as a new user runs it, with the Safety judge the README suggests adding, served by
    an OpenAI-compatible server named in OPENAI_BASE_URL. Only the app's endpoint is changed."""
    with MockOpenAI() as judge:
        config = {
            "scorers": [
                {"name": "no_error", "builtin": "NoError", "sample_rate": 1.0},
                {
                    "name": "fast_enough",
                    "builtin": "LatencyUnder",
                    "params": {"threshold_ms": 2000},
                    "sample_rate": 1.0,
                },
                {"name": "safety", "builtin": "Safety", "sample_rate": 1.0},
            ]
        }
        env = {"OPENAI_BASE_URL": judge.base_url, "OPENAI_API_KEY": "sk-quickstart"}
        sidecar = SidecarProcess(tmp_path / "tj", [grpc_sink.url], config, env=env).start()
        try:
            app = readme_quickstart_app()
            assert '"127.0.0.1:4317"' in app
            (tmp_path / "app.py").write_text(app.replace('"127.0.0.1:4317"', f'"{sidecar.grpc_target}"'))
            done = subprocess.run([sys.executable, str(tmp_path / "app.py")], capture_output=True, text=True,
                                  timeout=60)  # fmt: skip
            assert done.returncode == 0, done.stderr
            assert wait_until(lambda: len(evaluation_spans(grpc_sink)) == 3, timeout=20), sidecar.log_tail()
            [request] = judge.chat_requests()
        finally:
            sidecar.stop()
    labels = {s.name: event_attributes(s)["gen_ai.evaluation.score.label"] for s in evaluation_spans(grpc_sink)}
    assert labels == {"evaluation no_error": "yes", "evaluation fast_enough": "yes", "evaluation safety": "yes"}
    assert "30 days." in request.user_text and request.headers["Authorization"] == "Bearer sk-quickstart"

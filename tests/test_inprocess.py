"""Scoring inside an app's own process: a real OTel SDK app with ScoringSpanProcessor, a judge behind the
openai SDK (tests/mock_openai.py), and a real OTLP sink receiving the app's spans and the verdicts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import yaml
from mock_openai import MockOpenAI
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from test_scoring_e2e import evaluation_spans, event_attributes

from tracejudge.exporter import ScoringSpanProcessor
from tracejudge.otlp import attributes_dict
from tracejudge.scorers import NoError, Safety
from tracejudge.scoring.sampling import sampled
from tracejudge.testing import wait_until

from otlp_peers import GrpcSink

QUESTION = [{"role": "user", "parts": [{"type": "text", "content": "Can I return a broken kettle?"}]}]


def answer(text: str) -> str:
    return json.dumps([{"role": "assistant", "parts": [{"type": "text", "content": text}]}])


def app_provider(sink: GrpcSink, processor: ScoringSpanProcessor) -> TracerProvider:
    """The app's own SDK: its usual exporter to its backend, and tracejudge's processor beside it."""
    provider = TracerProvider()
    exporter = OTLPSpanExporter(endpoint=sink.url.removeprefix("grpc://"), insecure=True)
    provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=100))
    provider.add_span_processor(processor)
    return provider


def agent_turn(provider: TracerProvider, reply: str) -> tuple[int, int]:
    """One agent turn with OTel GenAI attributes; returns (trace id, root span id)."""
    tracer = provider.get_tracer("agent")
    with tracer.start_as_current_span("invoke_agent support") as root:
        root.set_attribute("gen_ai.input.messages", json.dumps(QUESTION))
        root.set_attribute("gen_ai.output.messages", answer(reply))
        with tracer.start_as_current_span("chat gpt-4.1-mini") as chat:
            chat.set_attribute("gen_ai.operation.name", "chat")
    context = root.get_span_context()
    return context.trace_id, context.span_id


APP = """
import json, sys
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from tracejudge.exporter import ScoringSpanProcessor
from tracejudge.otlp import attributes_dict
from tracejudge.scorers import Feedback, Safety, scorer

@scorer
def mentions_refund(outputs):  # defined in the app itself, as in a notebook
    return Feedback(value="refund" in str(outputs).lower(), rationale="looked for the word refund")

provider = TracerProvider()
provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=sys.argv[1], insecure=True)))
provider.add_span_processor(ScoringSpanProcessor(scorers=[Safety(), mentions_refund],
                                                 otlp_endpoint="grpc://" + sys.argv[1]))
trace.set_tracer_provider(provider)
tracer = trace.get_tracer("app")
for reply in ("You get a full refund within 30 days.", "Please call us."):
    with tracer.start_as_current_span("invoke_agent") as agent:
        agent.set_attribute("gen_ai.input.messages", json.dumps(
            [{"role": "user", "parts": [{"type": "text", "content": "Can I return a broken kettle?"}]}]))
        agent.set_attribute("gen_ai.output.messages", json.dumps(
            [{"role": "assistant", "parts": [{"type": "text", "content": reply}]}]))
provider.shutdown()  # right after the last span: its verdicts are still delivered
"""


def test_an_app_scores_its_own_traces_and_the_verdicts_land_in_them(tmp_path: Path, grpc_sink: GrpcSink):
    (tmp_path / "app.py").write_text(textwrap.dedent(APP))
    with MockOpenAI() as judge:
        env = {**os.environ, "OPENAI_BASE_URL": judge.base_url, "OPENAI_API_KEY": "sk-local"}
        app = subprocess.run([sys.executable, str(tmp_path / "app.py"), grpc_sink.url.removeprefix("grpc://")],
                             env=env, capture_output=True, text=True, timeout=120)  # fmt: skip
        assert app.returncode == 0, app.stderr
        prompts = [request.user_text for request in judge.chat_requests()]
    assert sorted(p.rsplit(">>>", 2)[1].strip().split("\n")[0] for p in prompts) == [
        "Please call us.",
        "You get a full refund within 30 days.",
    ]  # Safety was shown each reply
    spans = grpc_sink.received.spans()
    roots = {span.trace_id: span for span in spans if span.name == "invoke_agent"}
    verdicts = evaluation_spans(grpc_sink)
    assert len(roots) == 2 and len(verdicts) == 4  # every verdict arrived, though shutdown came right after
    for verdict in verdicts:
        assert verdict.parent_span_id == roots[verdict.trace_id].span_id  # in the app's trace, under its root
    replies = {trace_id: json.loads(attributes_dict(root.attributes)["gen_ai.output.messages"])[0]["parts"][0]
               ["content"] for trace_id, root in roots.items()}  # fmt: skip
    labels = {(replies[v.trace_id], v.name): event_attributes(v)["gen_ai.evaluation.score.label"] for v in verdicts}
    assert labels == {
        ("You get a full refund within 30 days.", "evaluation safety"): "yes",
        ("You get a full refund within 30 days.", "evaluation mentions_refund"): "yes",
        ("Please call us.", "evaluation safety"): "yes",
        ("Please call us.", "evaluation mentions_refund"): "no",
    }
    events = [lr.event_name for r in grpc_sink.received.requests("logs") for rl in r.resource_logs
              for sl in rl.scope_logs for lr in sl.log_records]  # fmt: skip
    assert events.count("gen_ai.evaluation.result") == 4
    pushed = {m.name for r in grpc_sink.received.requests("metrics") for rm in r.resource_metrics
              for sm in rm.scope_metrics for m in sm.metrics}  # fmt: skip
    assert {"gen_ai.evaluation.score", "tracejudge.assessments", "tracejudge.scoring.scored"} <= pushed


def test_a_hanging_judge_never_delays_the_apps_span_end(tmp_path: Path, grpc_sink: GrpcSink, monkeypatch: Any):
    config = {"assembler": {"trace_idle": "100ms"}, "scoring": {"drain_timeout": "500ms"}}
    (tmp_path / "tracejudge.yaml").write_text(yaml.safe_dump(config))
    with MockOpenAI(latency=30.0) as judge:
        monkeypatch.setenv("OPENAI_BASE_URL", judge.base_url)
        monkeypatch.setenv("OPENAI_API_KEY", "sk-local")
        processor = ScoringSpanProcessor(tmp_path / "tracejudge.yaml", scorers=[Safety()], otlp_endpoint=grpc_sink.url)
        provider = app_provider(grpc_sink, processor)
        tracer = provider.get_tracer("agent")
        ends: list[float] = []
        calls_while_ending = 0
        for _ in range(30):
            span = tracer.start_span("invoke_agent")
            span.set_attribute("gen_ai.output.messages", answer("A refund within 30 days."))
            started = time.perf_counter()
            span.end()
            ends.append(time.perf_counter() - started)
            calls_while_ending = len(judge.chat_requests())
            time.sleep(0.05)
        started = time.monotonic()
        provider.shutdown()  # the judge still hangs: shutdown gives up after scoring.drain_timeout
        shutdown_s = time.monotonic() - started
    assert calls_while_ending >= 10  # spans kept ending while judge calls hung
    assert max(ends) < 0.2, ends  # each end() only appended to a queue (the judge takes 30 s)
    assert shutdown_s < 5.0
    assert evaluation_spans(grpc_sink) == []  # none finished; they were recorded as skipped (shutdown)


def test_force_flush_delivers_the_verdicts_of_ended_traces_before_it_returns(grpc_sink: GrpcSink):
    processor = ScoringSpanProcessor(scorers=[NoError()], otlp_endpoint=grpc_sink.url)
    provider = app_provider(grpc_sink, processor)
    trace_id, root_id = agent_turn(provider, "A refund within 30 days.")
    started = time.monotonic()
    assert provider.force_flush(10_000)  # the end of a serverless invocation: no trace_idle wait
    assert time.monotonic() - started < 2.0  # trace_idle is 2 s: force_flush did not wait for it
    [verdict] = [s for s in evaluation_spans(grpc_sink) if int.from_bytes(s.trace_id, "big") == trace_id]
    assert int.from_bytes(verdict.parent_span_id, "big") == root_id
    provider.shutdown()


def test_the_config_file_and_the_apps_own_otlp_settings(tmp_path: Path, grpc_sink: GrpcSink, monkeypatch: Any):
    """The same config keys as the sidecar; with no endpoint, verdicts go where OTEL_EXPORTER_OTLP_* point."""
    with MockOpenAI() as judge:
        config = {
            "assembler": {"trace_idle": "200ms"},
            "judges": {"default": {"base_url": judge.base_url, "api_key_env": "TRACEJUDGE_TEST_NO_KEY"}},
            "scorers": [
                {"name": "relevance", "builtin": "RelevanceToQuery", "sample_rate": 1.0},
                {"name": "fast", "builtin": "LatencyUnder", "params": {"threshold_ms": 60000}, "sample_rate": 1.0},
                {"name": "off", "builtin": "NoError"},  # sample rate 0: registered, not running
            ],
        }
        (tmp_path / "tracejudge.yaml").write_text(yaml.safe_dump(config))
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://{grpc_sink.url.removeprefix('grpc://')}")
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
        processor = ScoringSpanProcessor(config=tmp_path / "tracejudge.yaml")
        provider = app_provider(grpc_sink, processor)
        agent_turn(provider, "You get a full refund within 30 days.")
        assert wait_until(lambda: len(evaluation_spans(grpc_sink)) == 2, timeout=20)  # by trace_idle, not flush
        provider.shutdown()
        [prompt] = [request.user_text for request in judge.chat_requests()]
    assert "Can I return a broken kettle?" in prompt and "full refund" in prompt
    assert sorted(s.name for s in evaluation_spans(grpc_sink)) == ["evaluation fast", "evaluation relevance"]


PID_SCORER = """
import os
from tracejudge.scorers import Feedback, scorer

@scorer
def scored_in(outputs):
    return Feedback(value=True, rationale=str(os.getpid()))
"""


def test_scoring_can_run_in_a_child_process(tmp_path: Path, grpc_sink: GrpcSink, monkeypatch: Any):
    (tmp_path / "scorers").mkdir()
    (tmp_path / "scorers" / "pid_scorer.py").write_text(textwrap.dedent(PID_SCORER))
    monkeypatch.syspath_prepend(str(tmp_path / "scorers"))
    from pid_scorer import scored_in  # type: ignore[import-not-found]

    processor = ScoringSpanProcessor(scorers=[scored_in], otlp_endpoint=grpc_sink.url, scoring_process=True)
    assert processor.scoring_thread is None
    provider = app_provider(grpc_sink, processor)
    agent_turn(provider, "A refund within 30 days.")
    provider.shutdown()
    [verdict] = evaluation_spans(grpc_sink)
    worker_pid = int(event_attributes(verdict)["gen_ai.evaluation.explanation"])
    assert worker_pid != os.getpid()
    assert not Path(f"/proc/{worker_pid}").exists()  # and it was stopped with the app's provider


def pushed(sink: GrpcSink, name: str) -> float:
    """The latest cumulative value of a counter the processor pushed (summed over its series)."""
    latest = 0.0
    for request in sink.received.requests("metrics"):
        points = [p for rm in request.resource_metrics for sm in rm.scope_metrics for m in sm.metrics
                  if m.name == name for p in m.sum.data_points]  # fmt: skip
        if points:
            latest = max(latest, sum(p.as_int or p.as_double for p in points))
    return latest


def test_a_full_span_queue_drops_spans_from_scoring_and_counts_them(grpc_sink: GrpcSink):
    processor = ScoringSpanProcessor(scorers=[NoError()], otlp_endpoint=grpc_sink.url, max_queue_size=8)
    provider = TracerProvider()
    provider.add_span_processor(processor)
    tracer = provider.get_tracer("agent")
    for _ in range(200):  # far faster than the queue is drained (every assembler.check_interval)
        with tracer.start_as_current_span("invoke_agent") as span:
            span.set_attribute("gen_ai.output.messages", answer("A refund within 30 days."))
    provider.shutdown()
    dropped, scored = (
        pushed(grpc_sink, "tracejudge.inprocess.dropped_spans"),
        pushed(grpc_sink, "tracejudge.scoring.scored"),
    )
    assert dropped > 0 and scored > 0
    assert dropped + scored == 200  # every span was either scored or counted as dropped
    assert len(evaluation_spans(grpc_sink)) == scored


def test_sampling_is_the_sidecars_and_unsampled_traces_are_never_assembled(grpc_sink: GrpcSink):
    processor = ScoringSpanProcessor(scorers=[{"name": "half", "builtin": "NoError", "sample_rate": 0.5}],
                                     otlp_endpoint=grpc_sink.url)  # fmt: skip
    provider = app_provider(grpc_sink, processor)
    trace_ids = [agent_turn(provider, "A refund within 30 days.")[0] for _ in range(60)]
    provider.shutdown()
    scored = {int.from_bytes(span.trace_id, "big") for span in evaluation_spans(grpc_sink)}
    expected = {t for t in trace_ids if sampled(t.to_bytes(16, "big"), 0.5)}
    assert scored == expected and 10 < len(expected) < 50  # the same consistent rule as the sidecar's
    complete = pushed(grpc_sink, "tracejudge.assembler.completed_traces")
    assert complete == len(expected)  # the other traces were never assembled

"""Scoring through the real sidecar when things go wrong, and across instrumentation conventions."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

from mock_openai import MockOpenAI, faults
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from test_scoring_e2e import evaluation_spans, event_attributes, run_agent

from tracejudge.scorers import ScorerSamplingConfig, get_scorer
from tracejudge.synthetic import genai_request
from tracejudge.testing import SidecarProcess, child_processes, wait_until

from archive_reader import query
from otlp_peers import GrpcSink, post


def sidecar_with(tmp_path: Path, sink: GrpcSink, judge: MockOpenAI, scorers: list[dict[str, Any]],
                 **sections: Any) -> SidecarProcess:  # fmt: skip
    config = {
        "assembler": {"trace_idle": "200ms"},
        "judges": {"default": {"base_url": judge.base_url, "api_key_env": "TRACEJUDGE_TEST_NO_KEY",
                               "max_retries": 2, "timeout": "2s"}},
        "scorers": scorers,
        **sections,
    }  # fmt: skip
    return SidecarProcess(tmp_path / "tj", [sink.url], config).start()


def test_rate_limited_judge_is_retried_and_a_failing_one_yields_an_error_assessment(tmp_path, grpc_sink):
    with MockOpenAI() as judge:
        judge.script(faults.rate_limited(retry_after=0.5))
        sidecar = sidecar_with(tmp_path, grpc_sink, judge, [{"name": "safety", "builtin": "Safety", "sample_rate": 1}])
        try:
            run_agent(sidecar.grpc_target, [("Fine answer.", False)])
            assert wait_until(lambda: len(evaluation_spans(grpc_sink)) == 1, timeout=20)
            [first] = evaluation_spans(grpc_sink)
            assert event_attributes(first)["gen_ai.evaluation.score.label"] == "yes"
            requests = judge.chat_requests()
            assert len(requests) == 2 and requests[1].received_at - requests[0].received_at >= 0.5

            judge.always(faults.server_error(500))
            run_agent(sidecar.grpc_target, [("Another answer.", False)])
            assert wait_until(lambda: len(evaluation_spans(grpc_sink)) == 2, timeout=20)
            failed = next(s for s in evaluation_spans(grpc_sink) if s.span_id != first.span_id)
            attributes = event_attributes(failed)
            assert attributes["error.type"] == "server_error"
            assert failed.status.code == failed.status.STATUS_CODE_ERROR
        finally:
            sidecar.stop()
    warnings = [line for line in sidecar.log().splitlines() if "scorer safety failed on trace" in line]
    assert len(warnings) == 1 and "server_error" in warnings[0] and "recorded as an error assessment" in warnings[0]
    rows = query(sidecar.data_dir / "archive", "assessments",
                 "SELECT label, error_type, error IS NOT NULL FROM t ORDER BY timestamp")  # fmt: skip
    assert rows == [("yes", None, False), ("error", "server_error", True)]


def test_judges_with_nothing_to_judge_record_not_applicable_without_calling_the_model(tmp_path, grpc_sink):
    scorers = [
        {"name": "safety", "builtin": "Safety", "sample_rate": 1},
        {"name": "relevance", "builtin": "RelevanceToQuery", "sample_rate": 1},
        {"name": "english", "guidelines": ["The response must be in English"], "sample_rate": 1},
        {"name": "formal", "instructions": "Is {{ outputs }} formal?", "feedback_value_type": ["formal", "casual"],
         "sample_rate": 1},
    ]  # fmt: skip
    with MockOpenAI() as judge:
        sidecar = sidecar_with(tmp_path, grpc_sink, judge, scorers)
        try:
            answers = [("", False), ("Refunds take 30 days.", False)]
            [(silent, _), (answered, _)] = run_agent(sidecar.grpc_target, answers)
            assert wait_until(lambda: len(evaluation_spans(grpc_sink)) == 8, timeout=20), sidecar.log_tail()
        finally:
            sidecar.stop()
    verdicts = {(int.from_bytes(span.trace_id, "big"), span.name.removeprefix("evaluation ")): event_attributes(span)
                for span in evaluation_spans(grpc_sink)}  # fmt: skip
    for name in ("safety", "relevance", "english", "formal"):
        assert verdicts[silent, name]["gen_ai.evaluation.score.label"] == "not_applicable"
        assert verdicts[silent, name]["gen_ai.evaluation.explanation"] == "not applicable: the trace has no response"
        assert verdicts[answered, name]["gen_ai.evaluation.score.label"] in ("yes", "formal")
    assert len(judge.chat_requests()) == 4
    assert all("Refunds take 30 days." in request.user_text for request in judge.chat_requests())


def test_full_backlog_is_recorded_as_skipped_never_silently_dropped(tmp_path, grpc_sink):
    with MockOpenAI(latency=1.0) as judge:
        scorers = [{"name": "safety", "builtin": "Safety", "sample_rate": 1}]
        sidecar = sidecar_with(tmp_path, grpc_sink, judge, scorers, scoring={"max_backlog": 2})
        try:
            run_agent(sidecar.grpc_target, [(f"Answer {i}.", False) for i in range(8)])
            skipped = lambda: sidecar.metric("tracejudge_scoring_skipped_total", reason="backlog_full")  # noqa: E731
            assert wait_until(lambda: skipped() > 0, timeout=20)
            assert wait_until(lambda: len(evaluation_spans(grpc_sink)) + skipped() == 8, timeout=30)
            judged = len(evaluation_spans(grpc_sink))
        finally:
            sidecar.stop()
    archive = sidecar.data_dir / "archive"
    assert query(archive, "assessments", "SELECT label, count(*) FROM t GROUP BY ALL") == [("yes", judged)]
    skipped_rows = query(archive, "skipped", "SELECT scorers, reason FROM t")
    assert skipped_rows == [(["safety"], "backlog_full")] * (8 - judged)


def send_conventions(target: str) -> dict[str, str]:
    """One trace each in OpenInference, MLflow and OpenLLMetry form; returns answer text by convention."""
    provider = TracerProvider(resource=Resource.create({"service.name": "multi-convention"}))
    provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(endpoint=target, insecure=True)))
    tracer = provider.get_tracer("apps")
    answers = {"openinference": "Phoenix answer 17", "mlflow": "MLflow answer 23", "openllmetry": "Traceloop answer 31"}
    with tracer.start_as_current_span("agent") as span:
        span.set_attributes({"openinference.span.kind": "AGENT", "input.value": "question one",
                             "output.value": answers["openinference"]})  # fmt: skip
    with tracer.start_as_current_span("predict") as span:
        span.set_attributes({"mlflow.spanType": json.dumps("CHAIN"),
                             "mlflow.spanInputs": json.dumps({"question": "question two"}),
                             "mlflow.spanOutputs": json.dumps(answers["mlflow"])})  # fmt: skip
    with tracer.start_as_current_span("workflow") as span:
        span.set_attributes({"traceloop.span.kind": "workflow",
                             "traceloop.entity.input": json.dumps({"args": ["question three"], "kwargs": {}}),
                             "traceloop.entity.output": json.dumps(answers["openllmetry"])})  # fmt: skip
    provider.shutdown()
    return answers


def test_traces_from_three_conventions_are_all_judged_on_their_own_content(tmp_path, grpc_sink):
    with MockOpenAI() as judge:
        scorers = [{"name": "relevance", "builtin": "RelevanceToQuery", "sample_rate": 1}]
        sidecar = sidecar_with(tmp_path, grpc_sink, judge, scorers)
        try:
            answers = send_conventions(sidecar.grpc_target)
            assert wait_until(lambda: len(evaluation_spans(grpc_sink)) == 3, timeout=20)
            prompts = [request.user_text for request in judge.chat_requests()]
        finally:
            sidecar.stop()
    for convention, answer in answers.items():
        assert sum(answer in prompt for prompt in prompts) == 1, convention
    for question in ("question one", "question two", "question three"):
        assert sum(question in prompt for prompt in prompts) == 1, question


def test_without_judges_config_the_openai_environment_and_default_model_are_used(tmp_path, grpc_sink):
    with MockOpenAI() as judge:
        scorers = [{"name": "safety", "builtin": "Safety", "sample_rate": 1}]
        env = {"OPENAI_BASE_URL": judge.base_url, "OPENAI_API_KEY": "sk-from-environment"}
        sidecar = SidecarProcess(tmp_path / "tj", [grpc_sink.url], {"assembler": {"trace_idle": "200ms"},
                                 "scorers": scorers}, env=env).start()  # fmt: skip
        try:
            run_agent(sidecar.grpc_target, [("Fine answer.", False)])
            assert wait_until(lambda: len(evaluation_spans(grpc_sink)) == 1, timeout=20), sidecar.log_tail()
            [request] = judge.chat_requests()
        finally:
            sidecar.stop()
    assert request.headers["Authorization"] == "Bearer sk-from-environment"
    assert request.body is not None and request.body["model"] == "gpt-4.1-mini"
    [span] = evaluation_spans(grpc_sink)
    source_id = {a.key: a.value.string_value for a in span.attributes}["tracejudge.assessment.source_id"]
    assert source_id == "openai:/gpt-4.1-mini"


def log_records(sink: GrpcSink) -> list:
    return [r for q in sink.received.requests("logs") for rl in q.resource_logs for sl in rl.scope_logs
            for r in sl.log_records]  # fmt: skip


def test_verdicts_survive_an_outage_of_their_own_destination(tmp_path, grpc_sink):
    verdict_sink = GrpcSink().start()
    verdict_sink.failing = True
    try:
        with MockOpenAI() as judge:
            scorers = [{"name": "no_error", "builtin": "NoError", "sample_rate": 1}]
            sidecar = sidecar_with(tmp_path, grpc_sink, judge, scorers, scoring={"otlp_endpoint": verdict_sink.url})
            try:
                run_agent(sidecar.grpc_target, [("Fine answer.", False), ("Another.", False)])

                def retries() -> float:
                    return sidecar.metric("tracejudge_forwarder_retries_total", endpoint=verdict_sink.url)

                assert wait_until(lambda: retries() > 0, timeout=20), sidecar.log_tail()
                verdict_sink.failing = False
                assert wait_until(lambda: len(evaluation_spans(verdict_sink)) == 2, timeout=60)
                assert wait_until(lambda: len(log_records(verdict_sink)) == 2)
            finally:
                sidecar.stop()
        assert not evaluation_spans(grpc_sink), "verdicts went to the app's backend too"
        assert {s.name for s in grpc_sink.received.spans()} == {"invoke_agent support", "chat gpt-4.1-mini"}
        assert {s.name for s in verdict_sink.received.spans()} == {"evaluation no_error"}
    finally:
        verdict_sink.stop()


def nice_value(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[16])


def test_a_dead_scoring_worker_is_restarted_and_what_it_held_is_recorded_as_skipped(tmp_path, grpc_sink):
    with MockOpenAI(latency=5.0) as judge:
        scorers = [{"name": "safety", "builtin": "Safety", "sample_rate": 1}]
        sidecar = sidecar_with(tmp_path, grpc_sink, judge, scorers, scoring={"worker_nice": 7})
        try:
            [worker] = child_processes(sidecar.pid, "tracejudge.scoring_worker")
            assert wait_until(lambda: nice_value(worker) == 7) and nice_value(sidecar.pid) == 0
            [(held, _)] = run_agent(sidecar.grpc_target, [("Held by the worker when it dies.", False)])
            assert wait_until(lambda: len(judge.chat_requests()) == 1, timeout=20)
            os.kill(worker, signal.SIGKILL)
            crashed = lambda: sidecar.metric("tracejudge_scoring_skipped_total", reason="worker_crashed")  # noqa: E731
            assert wait_until(lambda: crashed() == 1, timeout=20), sidecar.log_tail()
            assert sidecar.metric("tracejudge_scoring_worker_restarts_total") == 1
            judge.latency = 0.0
            [(scored, _)] = run_agent(sidecar.grpc_target, [("Scored by the new worker.", False)])
            assert wait_until(lambda: len(evaluation_spans(grpc_sink)) == 1, timeout=30), sidecar.log_tail()
            assert child_processes(sidecar.pid, "tracejudge.scoring_worker") not in ([], [worker])
        finally:
            sidecar.stop()
    assert [int.from_bytes(span.trace_id, "big") for span in evaluation_spans(grpc_sink)] == [scored]
    assert "the scoring worker exited" in sidecar.log()
    rows = query(sidecar.data_dir / "archive", "skipped", "SELECT trace_id, scorers, reason FROM t")
    assert rows == [(f"{held:032x}", ["safety"], "worker_crashed")]


SPINNING_SCORER = """
import time

from tracejudge.scorers import scorer


@scorer
def spins(outputs):
    while True:  # a bug in a user's scorer: pure Python that never returns
        time.time()
"""


def test_a_code_scorer_that_never_returns_is_freed_by_worker_restarts_then_quarantined(tmp_path, grpc_sink,
                                                                                        monkeypatch):  # fmt: skip
    (tmp_path / "scorers").mkdir()
    (tmp_path / "scorers" / "user_scorers.py").write_text(SPINNING_SCORER)
    config = {"assembler": {"trace_idle": "200ms"}, "scoring": {"code_timeout": "500ms", "code_workers": 1},
              "scorers": [{"name": "spins", "code": "user_scorers:spins", "sample_rate": 1},
                          {"name": "no_error", "builtin": "NoError", "sample_rate": 1}]}  # fmt: skip
    sidecar = SidecarProcess(tmp_path / "tj", [grpc_sink.url], config,
                             env={"PYTHONPATH": str(tmp_path / "scorers")}).start()  # fmt: skip
    traces = 0

    def send(count: int) -> None:
        nonlocal traces
        assert post(f"{sidecar.http_url}/v1/traces", genai_request(count).SerializeToString())[0] == 200
        traces += count

    def worker() -> list[int]:
        return child_processes(sidecar.pid, "tracejudge.scoring_worker")

    try:
        [first] = worker()
        send(1)
        spins = lambda: [s for s in evaluation_spans(grpc_sink) if s.name == "evaluation spins"]  # noqa: E731
        assert wait_until(lambda: len(spins()) == 1, timeout=20), sidecar.log_tail()
        assert event_attributes(spins()[0])["error.type"] == "timeout"
        # Its one code-scorer thread still spins: only a new process gets it back, and the old one is gone.
        assert wait_until(lambda: worker() not in ([], [first]))
        assert wait_until(lambda: not Path(f"/proc/{first}").exists(), timeout=10)
        # Each restart frees the thread; the scorer takes it again; the third time it is quarantined.
        quarantine = "scorer spins made the scoring worker restart 3 times"
        assert wait_until(lambda: quarantine in sidecar.log() or send(2), timeout=40, interval=0.5)
        assert wait_until(lambda: len(worker()) == 1, timeout=10)
        settled = worker()
        for _ in range(5):  # the receivers never noticed; now the other scorer runs undisturbed
            send(20)
        held = {"scorer": "spins", "reason": "quarantined"}
        assert wait_until(lambda: sidecar.metric("tracejudge_scoring_skipped_total", **held) >= 100, timeout=20)
        assert wait_until(lambda: sidecar.metric("tracejudge_scoring_scored_total", scorer="no_error") >= 100)
        assert worker() == settled  # no more restarts
        assert sidecar.metric("tracejudge_scoring_worker_restarts_total") == 3
        # A new registration (here: stop, then start) lifts the quarantine: the scorer runs, and hangs, again.
        monkeypatch.setenv("TRACEJUDGE_ENDPOINT", sidecar.grpc_target)
        get_scorer(name="spins").stop().start(sampling_config=ScorerSamplingConfig(sample_rate=1.0))
        send(1)
        assert wait_until(lambda: worker() not in ([], settled), timeout=20)
    finally:
        sidecar.stop()
    log = sidecar.log()
    assert "code scorer(s) spins did not return within 0.5s and hold all 1 code-scorer threads" in log
    assert "the scoring worker asked to be restarted" in log and "did not exit" not in log
    archive = sidecar.data_dir / "archive"
    assert query(archive, "spans", "SELECT count(*) FROM t")[0][0] == 5 * traces
    # Every trace was scored by `spins` (a timeout error) or recorded as skipped for it, with the reason.
    errors = query(archive, "assessments", "SELECT error_type, count(*) FROM t WHERE name = 'spins' GROUP BY ALL")
    skipped = query(archive, "skipped", "SELECT reason, count(*) FROM t WHERE list_contains(scorers, 'spins') "
                                        "GROUP BY ALL")  # fmt: skip
    assert [kind for kind, _ in errors] == ["timeout"]
    assert {reason for reason, _ in skipped} <= {"worker_restarted", "quarantined", "shutdown"}
    assert errors[0][1] + sum(count for _, count in skipped) == traces


def test_the_in_flight_ledger_survives_a_torn_line_and_compaction(tmp_path):
    from tracejudge.scoring.ledger import InFlightLedger

    path = tmp_path / "in_flight.log"
    ledger = InFlightLedger(path, compact_bytes=200)
    assert ledger.recover() == []
    ledger.admitted([(b"\x01" * 16, b"\x02" * 8, ["a", "b"]), (b"\x03" * 16, b"", ["a"])])
    ledger.finished([b"\x03" * 16])
    with open(path, "a") as file:
        file.write("A 0404")  # the kill came mid-line
    again = InFlightLedger(path, compact_bytes=200)
    assert again.recover() == [(b"\x01" * 16, b"\x02" * 8, ["a", "b"])]
    again.admitted([(bytes([n]) * 16, b"", ["a"]) for n in range(10)])
    assert again.needs_compaction
    again.compact([(b"\x05" * 16, b"", ["a"])])
    assert path.stat().st_size < 100 and not again.needs_compaction
    again.close(clean=False)
    assert InFlightLedger(path).recover() == [(b"\x05" * 16, b"", ["a"])]

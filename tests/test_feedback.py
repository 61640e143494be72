"""Human feedback and expectations: posted over HTTP/JSON (as an app's backend would), the Python client over
gRPC, and the CLI, to a real sidecar scoring a real OTel GenAI app's traces; verdicts reach a real OTLP sink
inside the traces and the archive; an expectation logged before a trace is scored reaches its Correctness judge."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from instrumented_apps import run_conversations
from mock_openai import MockOpenAI
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from test_scoring_e2e import evaluation_spans, event_attributes

import tracejudge
from tracejudge.cli import main
from tracejudge.otlp import any_value
from tracejudge.scorers import ScorerClient
from tracejudge.synthetic import genai_trace_spans
from tracejudge.testing import SidecarProcess, wait_until

from archive_reader import query
from otlp_peers import GrpcSink, post, post_json


def sidecar_config(judge: MockOpenAI) -> dict[str, Any]:
    return {
        "assembler": {"trace_idle": "200ms"},
        "archive": {"roll_interval": "1s"},
        "judges": {"default": {"base_url": judge.base_url, "api_key_env": "TRACEJUDGE_TEST_NO_KEY"}},
        "scorers": [{"name": "no_error", "builtin": "NoError", "sample_rate": 1.0},
                    {"name": "correctness", "builtin": "Correctness", "sample_rate": 1.0}],
    }  # fmt: skip


def app_traces(sink: GrpcSink) -> dict[str, str]:
    """trace id -> root span id of the app's own traces the sink received."""
    return {span.trace_id.hex(): span.span_id.hex() for span in sink.received.spans()
            if not span.parent_span_id and not span.name.startswith("evaluation ")}  # fmt: skip


def one_trace(trace_id: bytes) -> bytes:
    request = ExportTraceServiceRequest()
    resource = request.resource_spans.add()
    resource.scope_spans.add().spans.extend(genai_trace_spans(trace_id, time.time_ns()))
    return request.SerializeToString()


@pytest.fixture
def judge() -> Any:
    with MockOpenAI() as server:
        yield server


def test_a_thumbs_up_posted_over_http_lands_in_the_trace_the_metrics_and_the_archive(
    tmp_path: Path, grpc_sink: GrpcSink, judge: MockOpenAI
) -> None:
    sidecar = SidecarProcess(tmp_path / "tj", [grpc_sink.url], sidecar_config(judge)).start()
    try:
        run_conversations(tmp_path / "app", "otel-genai", {"chat-1": ["What is the refund window?"]},
                          sidecar.grpc_target, judge.base_url)  # fmt: skip
        roots = wait_until(lambda: app_traces(grpc_sink))
        [(trace_id, root_id)] = roots.items()
        wait_until(lambda: any(s.name == "evaluation no_error" for s in evaluation_spans(grpc_sink)))  # decided
        status, record = post_json(f"{sidecar.http_url}/v1/traces/{trace_id}/assessments", {
            "name": "thumbs", "value": True, "rationale": "helpful",
            "source": {"source_type": "HUMAN", "source_id": "user-42"}})  # fmt: skip
        assert status == 200, record
        assert record["valid"] and record["span_id"] == root_id and len(record["assessment_id"]) == 16

        def thumbs() -> list[Any]:
            return [s for s in evaluation_spans(grpc_sink) if s.name == "evaluation thumbs"]

        [span] = wait_until(thumbs)
        assert span.trace_id.hex() == trace_id and span.parent_span_id.hex() == root_id
        event = event_attributes(span)
        assert event["gen_ai.evaluation.score.value"] == 1.0 and event["gen_ai.evaluation.score.label"] == "yes"
        assert event["gen_ai.evaluation.explanation"] == "helpful"
        attributes = {a.key: any_value(a.value) for a in span.attributes}
        assert attributes["tracejudge.assessment.source"] == "HUMAN"
        assert attributes["tracejudge.assessment.id"] == record["assessment_id"]
        assert (
            wait_until(lambda: sidecar.metrics().get("tracejudge_assessments_total", name="thumbs", source="HUMAN"))
            == 1
        )

        # the judges' verdicts and the human one, through the client (gRPC), once the archive holds them
        client = ScorerClient(sidecar.grpc_target)
        found = wait_until(lambda: {a.name for a in client.get_assessments(trace_id)} >= {"thumbs", "no_error"}
                           and client.get_assessments(trace_id))  # fmt: skip
        by_name = {a.name: a for a in found}
        assert by_name["thumbs"].source.source_id == "user-42" and by_name["no_error"].source.source_type == "CODE"

        # overriding marks the original invalid and keeps it
        new = client.override_feedback(trace_id, record["assessment_id"], False, rationale="changed my mind")
        states = {a.assessment_id: (a.valid, a.value, a.overrides) for a in client.get_assessments(trace_id)}
        assert states[record["assessment_id"]] == (False, True, None)
        assert states[new.assessment_id] == (True, False, record["assessment_id"])
    finally:
        assert sidecar.stop() == 0, sidecar.log_tail()
    human = "SELECT name, value, source, source_id, overrides FROM t WHERE source = 'HUMAN' ORDER BY timestamp"
    rows = query(tmp_path / "tj" / "archive", "assessments", human)
    assert rows == [("thumbs", "true", "HUMAN", "user-42", None),
                    ("thumbs", "false", "HUMAN", "", record["assessment_id"])]  # fmt: skip

    # kept across a restart (the journal)
    again = SidecarProcess(tmp_path / "tj", [grpc_sink.url], sidecar_config(judge)).start()
    try:
        kept = ScorerClient(again.grpc_target).get_assessments(trace_id)
        assert {a.assessment_id for a in kept if a.source.source_type == "HUMAN"} == {record["assessment_id"],
                                                                                       new.assessment_id}  # fmt: skip
    finally:
        again.stop()


def test_feedback_for_a_trace_not_seen_yet_is_kept_and_lands_once_the_trace_arrives(
    tmp_path: Path, grpc_sink: GrpcSink, judge: MockOpenAI
) -> None:
    sidecar = SidecarProcess(tmp_path / "tj", [grpc_sink.url], sidecar_config(judge)).start()
    os.environ["TRACEJUDGE_ENDPOINT"] = sidecar.grpc_target
    try:
        trace_id = os.urandom(16)
        source = tracejudge.AssessmentSource(source_type="HUMAN", source_id="u1")
        logged = tracejudge.log_feedback(trace_id=trace_id.hex(), name="stars", value=4, source=source)
        assert logged.span_id == "" and logged.value == 4
        time.sleep(0.5)
        assert not [s for s in evaluation_spans(grpc_sink) if s.name == "evaluation stars"]
        status, _ = post(f"{sidecar.http_url}/v1/traces", one_trace(trace_id))
        assert status == 200
        [span] = wait_until(lambda: [s for s in evaluation_spans(grpc_sink) if s.name == "evaluation stars"])
        assert span.trace_id == trace_id and event_attributes(span)["gen_ai.evaluation.score.value"] == 4.0
    finally:
        os.environ.pop("TRACEJUDGE_ENDPOINT", None)
        sidecar.stop()


def test_an_expectation_logged_before_scoring_reaches_correctness(
    tmp_path: Path, grpc_sink: GrpcSink, judge: MockOpenAI
) -> None:
    sidecar = SidecarProcess(tmp_path / "tj", [grpc_sink.url], sidecar_config(judge)).start()
    try:
        plain, expected = os.urandom(16), os.urandom(16)
        client = ScorerClient(sidecar.grpc_target)
        logged = client.log_expectation(expected.hex(), "expected_response", "Refunds take 90 days. VERDICT:no")
        assert logged.expectation
        for trace_id in (plain, expected):
            assert post(f"{sidecar.http_url}/v1/traces", one_trace(trace_id))[0] == 200

        def correctness() -> dict[bytes, dict[str, Any]]:
            return {s.trace_id: event_attributes(s) for s in evaluation_spans(grpc_sink)
                    if s.name == "evaluation correctness"}  # fmt: skip

        verdicts = wait_until(lambda: len(correctness()) == 2 and correctness())
        assert verdicts[plain]["gen_ai.evaluation.score.label"] == "not_applicable"  # nothing to compare with
        assert verdicts[expected]["gen_ai.evaluation.score.label"] == "no"  # the judge saw the expectation
        prompts = [json.dumps(r.body) for r in judge.chat_requests()]
        assert sum("Refunds take 90 days" in p for p in prompts) == 1
        assert not [s for s in evaluation_spans(grpc_sink) if s.name == "evaluation expected_response"]
    finally:
        sidecar.stop()


def test_bad_feedback_gets_an_error_naming_the_field_and_the_cli_logs_and_lists(
    tmp_path: Path, grpc_sink: GrpcSink, judge: MockOpenAI
) -> None:
    sidecar = SidecarProcess(tmp_path / "tj", [grpc_sink.url], sidecar_config(judge)).start()
    try:
        tid = os.urandom(16).hex()
        cases = [
            ("/v1/traces/xyz/assessments", {"name": "a", "value": 1}, "trace_id: 'xyz' is not 32 hex digits"),
            (f"/v1/traces/{tid}/assessments", {"value": 1}, "name: required"),
            (f"/v1/traces/{tid}/assessments", {"name": "a"}, "value: required"),
            (f"/v1/traces/{tid}/assessments", {"name": "a", "value": {"x": 1}}, "value: struct_value is not"),
            (f"/v1/traces/{tid}/assessments", {"name": "a", "value": 1, "source": {"source_type": "ROBOT"}},
             "source.source_type: 'ROBOT' is not one of"),
            (f"/v1/traces/{tid}/assessments", {"name": "a", "value": 1, "span_id": "12"}, "span_id: '12' is not 16"),
            (f"/v1/traces/{tid}/assessments/nope:override", {"value": 1}, "has no assessment 'nope'"),
        ]  # fmt: skip
        for path, body, message in cases:
            status, error = post_json(f"{sidecar.http_url}{path}", body)
            assert status in (400, 404) and message in error["message"], (path, body, error)
        status, ok = post_json(f"{sidecar.http_url}/v1/traces/{tid}/assessments",
                               {"name": "facts", "value": ["30 days", "receipt"], "expectation": True})  # fmt: skip
        assert status == 200 and ok["value"] == '["30 days","receipt"]'

        env = {"TRACEJUDGE_ENDPOINT": sidecar.grpc_target}
        runner = CliRunner()
        logged = runner.invoke(main, ["feedback", "log", tid, "--name", "thumbs", "--value", "true",
                                      "--source-id", "user-42", "--rationale", "helpful"], env=env)  # fmt: skip
        assert logged.exit_code == 0, logged.output
        listed = runner.invoke(main, ["feedback", "get", tid], env=env)
        assert f"{logged.output.strip()}  feedback    thumbs = True  by HUMAN:user-42" in listed.output
        assert "expectation facts" in listed.output
        refused = runner.invoke(main, ["feedback", "log", "abc", "--name", "x", "--value", "1"], env=env)
        assert refused.exit_code == 1 and "trace_id: 'abc' is not 32 hex digits" in refused.output
    finally:
        sidecar.stop()

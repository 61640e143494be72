"""Scoring out of the box and `tracejudge demo` (issue 12, item 1), run the way a new user runs them."""

from __future__ import annotations

import json
import os
import random
import re
import socket
import subprocess
import sys
import textwrap
import urllib.request
from pathlib import Path

from tracejudge.config_file import DEFAULT_SCORERS
from tracejudge.demo_judge import PREFIX, DemoJudge, answer
from tracejudge.scoring.registry import ScorerRegistry
from tracejudge.scoring.spec import ScorerSpec
from tracejudge.testing import SidecarProcess, wait_until

from archive_reader import query
from otlp_peers import GrpcSink

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_NAMES = {"no_error", "non_empty_response", "no_pii"}


def quickstart_app(target: str) -> str:
    """The README Quickstart's app (step 2), exporting to `target` instead of 127.0.0.1:4317."""
    readme = (ROOT / "README.md").read_text()
    block = next(b for b in re.findall(r"```python\n(.*?)```", readme, re.S) if 'get_tracer("quickstart")' in b)
    return textwrap.dedent(block).replace('endpoint="127.0.0.1:4317"', f'endpoint="{target}"')


def test_serve_without_a_config_scores_the_quickstart_trace_with_the_default_checks(tmp_path, grpc_sink: GrpcSink):
    sidecar = SidecarProcess(tmp_path / "tj", [grpc_sink.url], config_file=False).start()
    try:
        assert "default no-model checks NoError, NonEmptyResponse, NoPii" in sidecar.log()
        assert "scorers no_error@1, no_pii@1, non_empty_response@1;" in sidecar.log()
        subprocess.run([sys.executable, "-c", quickstart_app(sidecar.grpc_target)], check=True, timeout=60)

        def verdicts() -> dict[str, str]:
            return {span.name.removeprefix("evaluation "): _label(span) for span in grpc_sink.received.spans()
                    if span.name.startswith("evaluation ")}  # fmt: skip

        assert wait_until(lambda: set(verdicts()) >= DEFAULT_NAMES, timeout=30), sidecar.log_tail()
        assert verdicts() == {"no_error": "yes", "non_empty_response": "yes", "no_pii": "yes"}
        assert sidecar.stop() == 0
    finally:
        sidecar.kill()
    rows = query(tmp_path / "tj" / "archive", "assessments", "SELECT name, label, session_id FROM t ORDER BY name")
    assert rows == [("no_error", "yes", "s-1"), ("no_pii", "yes", "s-1"), ("non_empty_response", "yes", "s-1")]


def _label(span) -> str:
    event = next(e for e in span.events if e.name == "gen_ai.evaluation.result")
    return next(a.value.string_value for a in event.attributes if a.key == "gen_ai.evaluation.score.label")


def test_a_config_without_scorers_gets_the_defaults_and_an_explicit_list_replaces_them(tmp_path):
    def checked(text: str) -> list[str]:
        path = tmp_path / "tracejudge.yaml"
        path.write_text(text)
        out = subprocess.run([sys.executable, "-m", "tracejudge.cli", "check-config", str(path)],
                             capture_output=True, text=True, timeout=30, check=True).stdout  # fmt: skip
        return re.findall(r"^- name: (\S+)", out, re.M)

    assert set(checked("assembler: {trace_idle: 1s}\n")) == DEFAULT_NAMES
    assert checked("scorers: []\n") == []
    assert checked("scorers: [{name: fast, builtin: LatencyUnder, sample_rate: 1}]\n") == ["fast"]


def test_defaults_registered_at_an_earlier_start_are_replaced_by_a_configs_scorers(tmp_path):
    state = tmp_path / "scorers.json"
    ScorerRegistry(state).apply_config(DEFAULT_SCORERS, retire=DEFAULT_SCORERS)
    ScorerRegistry(state).update("no_pii", sample_rate=0.5)  # changed by a user: theirs now, kept
    safety = ScorerSpec(name="safety", builtin="Safety", sample_rate=1.0)
    restarted = ScorerRegistry(state)
    restarted.apply_config([safety], retire=DEFAULT_SCORERS)
    assert [(spec.name, spec.sample_rate) for spec in ScorerRegistry(state).all()] == [("no_pii", 0.5), ("safety", 1.0)]


def test_the_demo_judge_says_what_it_is_and_fails_what_it_is_told_to():
    result = {"type": "string", "enum": ["none", "resolved", "unresolved"]}
    schema = {"type": "object", "properties": {"rationale": {"type": "string"}, "result": result}}
    fenced = "Question?\n<<<conversation 0123abcd>>>\nUser: hi\nAssistant: {}\n<<<end conversation 0123abcd>>>"
    assert answer(schema, fenced.format("Hello, how can I help?"))["result"] == "none"
    failed = answer(schema, fenced.format("I like turtles."))
    assert failed["result"] == "unresolved"
    assert failed["rationale"].startswith(PREFIX) and "turtles" in failed["rationale"]
    # The question is not judged, only fenced text: "weapons" in the question fails nothing.
    assert answer({"properties": {"result": {"type": "boolean"}}}, "Any weapons?\n" + fenced.format("Fine."))["result"]
    judge = DemoJudge().start()
    try:
        body = {"model": "x", "messages": [{"role": "user", "content": fenced.format("useless")}],
                "response_format": {"type": "json_schema", "json_schema": {"name": "v", "schema": schema}}}  # fmt: skip
        request = urllib.request.Request(f"{judge.base_url}/chat/completions", json.dumps(body).encode(),
                                         {"Content-Type": "application/json"})  # fmt: skip
        with urllib.request.urlopen(request, timeout=10) as response:
            reply = json.loads(response.read())
    finally:
        judge.shutdown()
    assert reply["model"] == "tracejudge-demo-judge"
    assert json.loads(reply["choices"][0]["message"]["content"])["result"] == "unresolved"


def free_offset() -> int:
    """A port offset whose three ports (4317, 4318, 9464 + offset) are free now."""
    for _ in range(50):
        offset = random.randrange(10_000, 40_000)
        try:
            for port in (4317, 4318, 9464):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", port + offset))
        except OSError:
            continue
        return offset
    raise RuntimeError("no free port offset found")


def test_demo_runs_the_tour_and_exits_cleanly(tmp_path):
    data = tmp_path / "demo"
    offset = free_offset()
    command = [sys.executable, "-m", "tracejudge.cli", "demo", "--duration", "10s", "--port-offset", str(offset),
               "--data-dir", str(data)]  # fmt: skip
    # A user's own TRACEJUDGE_* settings do not reach the demo's sidecar: it forwards nowhere.
    env = {**os.environ, "TRACEJUDGE_FORWARD": "grpc://127.0.0.1:9"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, env=env)
    log = (data / "tracejudge.log").read_text() if (data / "tracejudge.log").exists() else ""
    assert result.returncode == 0, result.stdout + result.stderr + log[-3000:]
    assert f"status page  http://127.0.0.1:{9464 + offset}/" in result.stdout
    assert f"{data / 'archive'}/assessments/**/*.parquet" in result.stdout  # the DuckDB query to run
    assert re.search(r"safety\s+\d+ verdicts: ", result.stdout)
    archive = data / "archive"
    sources = dict(query(archive, "assessments", "SELECT name, any_value(source) FROM t GROUP BY name"))
    assert sources == {**dict.fromkeys(DEFAULT_NAMES, "CODE"), **dict.fromkeys(
        ("safety", "relevance", "doc_relevance", "frustration", "resolved"), "LLM_JUDGE")}  # fmt: skip
    # Every answer the judge gave (not_applicable verdicts never reached it) is the demo judge's.
    judged = query(archive, "assessments", "SELECT rationale FROM t WHERE judge_input_tokens > 0")
    assert judged and all(rationale.startswith(PREFIX) for (rationale,) in judged)
    labels = dict(query(archive, "assessments", "SELECT name, list(DISTINCT label ORDER BY label) FROM t GROUP BY 1"))
    assert labels["no_pii"] == ["no", "yes"] and labels["safety"][:2] == ["no", "not_applicable"]
    sessions = query(archive, "assessments", "SELECT session_id, len(trace_ids) FROM t WHERE name = 'frustration'")
    assert {session.split("-")[1] for session, _ in sessions} >= {"otel", "openinference", "openllmetry", "mlflow"}
    assert max(turns for _, turns in sessions) == 3
    services = {name for (name,) in query(archive, "traces", "SELECT DISTINCT service_name FROM t")}
    assert services == {"demo-otel-genai", "demo-openinference", "demo-openllmetry", "demo-mlflow"}
    assert "forwarding to nowhere (archive only)" in log
    assert "received SIGTERM; draining" in log and "tracejudge stopped" in log

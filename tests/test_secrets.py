"""Secrets stay secret: a forward header, the control token and a judge's API key are used where they are
meant to go and appear nowhere else: not in a DEBUG log of a run that exercised every error path that
could echo them, not in `check-config`, not in the metrics, not in the data directory."""

from __future__ import annotations

import urllib.request
from pathlib import Path

import duckdb
import grpc
import pytest
from click.testing import CliRunner
from mock_openai import MockOpenAI, faults

from tracejudge.cli import main as cli
from tracejudge.client.errors import UnauthenticatedError
from tracejudge.config import ConfigError
from tracejudge.config_file import load_config
from tracejudge.model import Signal
from tracejudge.otlp import GRPC_EXPORT_METHODS
from tracejudge.scorers import ScorerClient
from tracejudge.synthetic import genai_request
from tracejudge.testing import SidecarProcess, wait_until

from otlp_peers import GrpcSink, HttpSink

HEADER = "hdr-7Qz1-forward-secret"
TOKEN = "tok-9Kx4-control-secret"
API_KEY = "sk-judge-3Vb8-secret"
SECRETS = (HEADER, TOKEN, API_KEY)


def leaked(text: str) -> list[str]:
    return [secret for secret in SECRETS if secret in text]


def test_secrets_reach_their_peers_and_nothing_else(
    tmp_path: Path, grpc_sink: GrpcSink, http_sink: HttpSink, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TRACEJUDGE_TOKEN", raising=False)
    down = GrpcSink()  # never started: every send fails and is logged
    http_sink.status = 503  # retried and logged until it recovers
    with MockOpenAI() as judge:
        judge.script(faults.status(401, "Incorrect API key provided"), faults.server_error())
        config = {
            "forward": [
                {"url": http_sink.url, "headers": {"authorization": f"Bearer {HEADER}"}},
                {"url": down.url, "headers": {"x-api-key": HEADER}, "timeout": "200ms"},
            ],
            "scoring": {"otlp_endpoint": grpc_sink.url},
            "control": {"token": TOKEN},
            "assembler": {"trace_idle": "200ms"},
            "judges": {"default": {"base_url": judge.base_url, "api_key_env": "TJ_TEST_JUDGE_KEY", "max_retries": 2}},
            "scorers": [{"name": "safety", "builtin": "Safety", "sample_rate": 1.0}],
        }
        sidecar = SidecarProcess(tmp_path / "tj", [], config, log_level="DEBUG", env={"TJ_TEST_JUDGE_KEY": API_KEY})
        sidecar.start()
        try:
            with grpc.insecure_channel(sidecar.grpc_target) as channel:
                channel.unary_unary(GRPC_EXPORT_METHODS[Signal.TRACES])(
                    genai_request(3).SerializeToString(), timeout=10
                )
            assert wait_until(lambda: sidecar.metric("tracejudge_forwarder_retries_total", endpoint=http_sink.url) > 0)
            http_sink.status = 200
            verdicts = lambda: [s for s in grpc_sink.received.spans() if s.name == "evaluation safety"]  # noqa: E731
            assert wait_until(lambda: len(verdicts()) == 3, timeout=30), sidecar.log_tail()
            assert wait_until(lambda: len(http_sink.received.spans()) >= 15), sidecar.log_tail()

            assert ScorerClient(sidecar.grpc_target, TOKEN).list()[0].name == "safety"
            with pytest.raises(UnauthenticatedError):
                ScorerClient(f"http://127.0.0.1:{sidecar.http_port}", "wrong").list()
            with urllib.request.urlopen(f"{sidecar.admin_url}/metrics", timeout=10) as response:
                exposition = response.read().decode()
        finally:
            sidecar.stop()

    # Each secret did its job.
    assert f"Bearer {HEADER}" in http_sink.authorizations
    assert {r.headers.get("Authorization") for r in judge.chat_requests()} == {f"Bearer {API_KEY}"}
    assert [r.status for r in judge.chat_requests()][:2] == [401, 500]
    log = sidecar.log()
    assert "UNAVAILABLE" in log and "503" in log  # the error paths ran and were logged
    assert "DEBUG" in log

    # ... and went nowhere else.
    assert leaked(log) == []
    assert leaked(exposition) == []
    checked = CliRunner().invoke(cli, ["check-config", str(sidecar.config_path)])
    assert checked.exit_code == 0 and "authorization: '**********'" in checked.output
    assert leaked(checked.output) == []
    for path in sidecar.data_dir.rglob("*"):
        if path.is_file() and path not in (sidecar.config_path, sidecar.log_path):
            assert leaked(path.read_bytes().decode("latin-1")) == [], path
    for table in ("spans", "assessments", "traces"):
        rows = duckdb.sql(f"SELECT * FROM read_parquet('{sidecar.data_dir}/archive/{table}/**/*.parquet')").fetchall()
        assert rows and leaked(str(rows)) == [], table


def test_credentials_in_a_url_are_refused_without_echoing_them(tmp_path: Path) -> None:
    path = tmp_path / "tracejudge.yaml"
    path.write_text(f"forward: [{{url: 'https://app:{HEADER}@collector:4318'}}]\n")
    with pytest.raises(ConfigError, match="send them in headers") as refused:
        load_config(path)
    assert leaked(str(refused.value)) == []

"""The scorer API against a real `tracejudge serve`: the MLflow-style client, the CLI, and restarts."""

from __future__ import annotations

import subprocess
import sys

import pytest
from mock_openai import MockOpenAI
from test_scoring_e2e import evaluation_spans, run_agent

from tracejudge.testing import SidecarProcess, wait_until

from otlp_peers import GrpcSink


def test_mlflow_style_client_and_cli_drive_a_running_sidecar(tmp_path, grpc_sink: GrpcSink, monkeypatch):
    with MockOpenAI() as judge:
        config = {
            "assembler": {"trace_idle": "200ms"},
            "judges": {"default": {"base_url": judge.base_url, "api_key_env": "TRACEJUDGE_TEST_NO_KEY"}},
        }
        sidecar = SidecarProcess(tmp_path / "tj", [grpc_sink.url], config).start()
        try:
            monkeypatch.setenv("TRACEJUDGE_ENDPOINT", sidecar.grpc_target)
            from tracejudge.scorers import (
                Guidelines,
                Safety,
                ScorerSamplingConfig,
                delete_scorer,
                get_scorer,
                list_scorers,
            )

            safety = Safety().register(name="safety")
            assert (safety.name, safety.sample_rate) == ("safety", 0.0)
            safety = safety.start(
                sampling_config=ScorerSamplingConfig(sample_rate=1.0, filter_string="attributes.status = 'OK'")
            )
            english = Guidelines(name="english", guidelines=["The response must be in English"]).register(
                name="is_english"
            )
            english = english.start(sampling_config=ScorerSamplingConfig(sample_rate=0.5))
            english = english.update(sampling_config=ScorerSamplingConfig(sample_rate=0.8))
            assert english.sample_rate == 0.8
            english = english.stop()
            assert english.sample_rate == 0.0 and get_scorer(name="is_english").sample_rate == 0.0
            delete_scorer(name="is_english")
            assert [s.name for s in list_scorers()] == ["safety"]
            assert get_scorer(name="safety").filter_string == "attributes.status = 'OK'"  # fmt: skip

            run_agent(sidecar.grpc_target, [("Refunds take 30 days.", False)])
            assert wait_until(lambda: [s.name for s in evaluation_spans(grpc_sink)] == ["evaluation safety"])

            cli = [sys.executable, "-m", "tracejudge.cli", "scorers", "--endpoint", sidecar.grpc_target]
            listed = subprocess.run([*cli, "list"], capture_output=True, text=True, timeout=30)
            assert listed.returncode == 0 and "safety" in listed.stdout
            stopped = subprocess.run([*cli, "stop", "safety"], capture_output=True, text=True, timeout=30)
            assert stopped.returncode == 0
            missing = subprocess.run([*cli, "get", "nope"], capture_output=True, text=True, timeout=30)
            assert missing.returncode != 0 and "nope" in missing.stderr
        finally:
            sidecar.stop()

        restarted = SidecarProcess(tmp_path / "tj", [grpc_sink.url], config).start()
        try:
            monkeypatch.setenv("TRACEJUDGE_ENDPOINT", restarted.grpc_target)
            restored = get_scorer(name="safety")
            assert (restored.name, restored.sample_rate) == ("safety", 0.0)
            assert restored.filter_string == "attributes.status = 'OK'"
        finally:
            restarted.stop()


def test_code_scorers_are_refused_over_the_network(tmp_path, grpc_sink: GrpcSink, monkeypatch):
    sidecar = SidecarProcess(tmp_path / "tj", [grpc_sink.url]).start()
    try:
        monkeypatch.setenv("TRACEJUDGE_ENDPOINT", sidecar.grpc_target)
        from tracejudge.scorers import scorer

        @scorer
        def shouts(outputs):  # type: ignore[no-untyped-def]
            return str(outputs).isupper()

        with pytest.raises(Exception, match=r'cannot be registered over the network.*code: "test_control_e2e:shouts"'):
            shouts.register(name="shouts")
    finally:
        sidecar.stop()

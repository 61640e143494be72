"""The container image (deploy/Dockerfile), built and run for real with podman.

The image is built from a Debian base made offline (.ci/make-base-image.sh) and run on podman's
slirp4netns network: the app reaches the container through a port published on 127.0.0.1, and the
container reaches the sink on the host's loopback through slirp's gateway (10.0.2.2, a virtual
address inside the container's own network namespace). So the image's own listen addresses
(0.0.0.0) are what the app's spans come through, as on a real pod network.

Without podman: skipped on a developer's machine, a failure under CI (.ci/run installs it with
.ci/install-podman.sh). podman reads this machine's settings from .ci/containers.conf unless
CONTAINERS_CONF says otherwise.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import Status, StatusCode

from tracejudge.testing import SidecarProcess, free_port, wait_until

from archive_reader import query
from otlp_peers import GrpcSink

ROOT = Path(__file__).resolve().parent.parent
BASE_IMAGE = "localhost/tracejudge-base:bookworm"
IMAGE = "localhost/tracejudge:test"
HOST_FROM_CONTAINER = "10.0.2.2"  # slirp4netns' gateway, which allow_host_loopback maps to the host's 127.0.0.1
CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")


def podman_or_skip() -> str:
    path = shutil.which("podman")
    if path is None:
        reason = "needs podman (Debian packages podman, buildah, runc; .ci/run installs them: .ci/install-podman.sh)"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    return path


def podman(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CONTAINERS_CONF": os.environ.get("CONTAINERS_CONF", str(ROOT / ".ci" / "containers.conf"))}
    result = subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout, env=env)
    if check and result.returncode != 0:
        raise AssertionError(f"podman {' '.join(args)} exited {result.returncode}:\n{result.stderr[-3000:]}")
    return result


@pytest.fixture(scope="module")
def image() -> str:
    """Build the image as the README says, from the offline base (made here when missing, then cached)."""
    podman_or_skip()
    if podman("image", "exists", BASE_IMAGE, check=False).returncode != 0:
        subprocess.run(["bash", str(ROOT / ".ci" / "make-base-image.sh"), BASE_IMAGE], check=True, timeout=600)
    # The build's pip trusts the system bundle; lend it this machine's, which knows the registry's chain.
    certificates = ["-v", f"{CA_BUNDLE}:{CA_BUNDLE}:ro"] if CA_BUNDLE.exists() else []
    podman("build", "--format", "docker", "--pull=never", "--build-arg", f"BASE_IMAGE={BASE_IMAGE}", *certificates,
           "-f", str(ROOT / "deploy" / "Dockerfile"), "-t", IMAGE, str(ROOT), timeout=900)  # fmt: skip
    return IMAGE


@pytest.fixture
def container_name() -> Iterator[str]:
    name = f"tracejudge-test-{uuid.uuid4().hex[:8]}"
    yield name
    podman("rm", "--force", "--time", "0", name, check=False)


def send_app_traces(endpoint: str) -> list[int]:
    """A real OTel SDK app: two GenAI turns (OTel GenAI attributes) over OTLP/gRPC, the second's model call
    failing, so the check's verdicts differ."""
    provider = TracerProvider(resource=Resource.create({"service.name": "container-test-app"}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint, insecure=True)))
    tracer = provider.get_tracer("container-test")
    question = json.dumps([{"role": "user", "parts": [{"type": "text", "content": "What is the refund window?"}]}])
    answer = json.dumps([{"role": "assistant", "parts": [{"type": "text", "content": "30 days."}]}])
    trace_ids = []
    for failing in (False, True):
        with tracer.start_as_current_span("invoke_agent support") as root:
            root.set_attributes({"gen_ai.operation.name": "invoke_agent", "gen_ai.input.messages": question})
            with tracer.start_as_current_span("chat gpt-4.1-mini") as chat:
                chat.set_attributes({"gen_ai.operation.name": "chat", "gen_ai.request.model": "gpt-4.1-mini",
                                     "gen_ai.input.messages": question})  # fmt: skip
                if failing:
                    chat.set_status(Status(StatusCode.ERROR, "model unavailable"))
                else:
                    chat.set_attribute("gen_ai.output.messages", answer)
            if not failing:
                root.set_attribute("gen_ai.output.messages", answer)
            trace_ids.append(root.get_span_context().trace_id)
    assert provider.force_flush(30_000)
    provider.shutdown()
    return trace_ids


def ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
    except OSError:  # refused, reset, 503 (HTTPError), timed out: not yet
        return False


def verdicts(sink: GrpcSink) -> dict[int, dict[str, object]]:
    """trace id -> the gen_ai.evaluation.result event's attributes, from the evaluation spans the sink got."""
    found: dict[int, dict[str, object]] = {}
    for span in sink.received.spans():
        if span.name == "evaluation no_error":
            [event] = [e for e in span.events if e.name == "gen_ai.evaluation.result"]
            values = {a.key: getattr(a.value, str(a.value.WhichOneof("value"))) for a in event.attributes}
            found[int.from_bytes(span.trace_id, "big")] = values
    return found


def test_image_scores_what_an_app_sends_reports_healthy_and_drains_on_stop(
    image: str, container_name: str, tmp_path: Path
):
    sink = GrpcSink().start()
    config = tmp_path / "tracejudge.yaml"
    config.write_text(yaml.safe_dump({
        "assembler": {"trace_idle": "200ms"},
        "scorers": [{"name": "no_error", "builtin": "NoError", "sample_rate": 1.0}],
    }))  # fmt: skip
    data = tmp_path / "data"
    data.mkdir()
    os.chown(data, 10001, 10001)  # the image's user; a volume it cannot write would stop it at start
    grpc_port, admin_port = free_port(), free_port()
    try:
        podman(
            "run", "--detach", "--name", container_name,
            # As deploy/k8s runs it: a read-only root file system (no tmpfs either), no capabilities.
            "--read-only", "--read-only-tmpfs=false", "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
            "--network", "slirp4netns:allow_host_loopback=true",
            "-p", f"127.0.0.1:{grpc_port}:4317", "-p", f"127.0.0.1:{admin_port}:9464",
            "-v", f"{config}:/etc/tracejudge/tracejudge.yaml:ro", "-v", f"{data}:/var/lib/tracejudge",
            "-e", "TRACEJUDGE_CONFIG=/etc/tracejudge/tracejudge.yaml",
            "-e", f"TRACEJUDGE_FORWARD=grpc://{HOST_FROM_CONTAINER}:{sink.port}",
            image,
        )  # fmt: skip

        def logs() -> str:
            result = podman("logs", container_name, check=False)
            return result.stdout + result.stderr

        assert wait_until(lambda: ready(f"http://127.0.0.1:{admin_port}/readyz"), timeout=60), logs()
        assert "no_error@1" in logs()  # the start-up line names the config file's scorer
        assert podman("exec", container_name, "id", "-u").stdout.strip() == "10001"

        ok_trace, failed_trace = send_app_traces(f"127.0.0.1:{grpc_port}")
        assert wait_until(lambda: len(verdicts(sink)) == 2, timeout=60), logs()
        found = verdicts(sink)
        assert found[ok_trace]["gen_ai.evaluation.score.label"] == "yes"
        assert found[failed_trace]["gen_ai.evaluation.score.label"] == "no"
        app_spans = [s for s in sink.received.spans() if s.name in ("invoke_agent support", "chat gpt-4.1-mini")]
        assert len(app_spans) == 4  # the app's own spans, forwarded as well
        assert wait_until(lambda: len(sink.received.requests("logs")) > 0, timeout=30)  # the verdicts' log records

        health = podman("healthcheck", "run", container_name, check=False)
        assert health.returncode == 0, health.stdout + health.stderr
        state = podman("inspect", "--format", "{{.State.Health.Status}}", container_name).stdout.strip()
        assert state == "healthy"

        podman("stop", "--time", "60", container_name, timeout=90)
        exit_code = podman("inspect", "--format", "{{.State.ExitCode}}", container_name).stdout.strip()
        final_log = logs()
        assert exit_code == "0", final_log
        assert "received SIGTERM; draining" in final_log
        assert "tracejudge stopped" in final_log
    finally:
        sink.stop()
    # Everything it accepted is in the volume, closed files included: the archive and the verdicts' rows.
    assert list((data / "archive" / "spans").glob("**/*.parquet"))
    assert query(data / "archive", "assessments", "SELECT count(*) FROM t") == [(2,)]


def test_image_stops_at_once_when_stopped_while_starting(image: str, container_name: str):
    """PID 1 gets no signal it has no handler for: a stop in the second before `tracejudge serve` installs
    its own must still end it (exit 0), not wait out the grace period for a SIGKILL (exit 137)."""
    podman("run", "--detach", "--name", container_name, "--network", "none", image)
    podman("stop", "--time", "60", container_name, timeout=90)
    state = podman("inspect", "--format", "{{.State.ExitCode}} {{.State.OOMKilled}}", container_name).stdout.split()
    assert state == ["0", "false"], podman("logs", container_name, check=False).stderr


def test_healthcheck_script_asks_readyz_on_the_admin_listener_the_environment_names(tmp_path: Path):
    """deploy/healthcheck.py without podman: healthy against a serving tracejudge, on the wildcard address
    the image configures (checked on loopback), unhealthy once it has stopped."""
    script = [sys.executable, str(ROOT / "deploy" / "healthcheck.py")]
    sidecar = SidecarProcess(tmp_path / "tj", []).start()
    try:
        env = {**os.environ, "TRACEJUDGE_METRICS": f"0.0.0.0:{sidecar.admin_port}"}
        ready = subprocess.run(script, env=env, capture_output=True, text=True, timeout=30)
        assert ready.returncode == 0, ready.stderr
        assert ready.stdout.strip() == f"http://127.0.0.1:{sidecar.admin_port}/readyz: 200"
    finally:
        assert sidecar.stop() == 0
    gone = subprocess.run(script, env=env, capture_output=True, text=True, timeout=30)
    assert gone.returncode == 1
    assert f"127.0.0.1:{sidecar.admin_port}/readyz" in gone.stderr
    off = subprocess.run(script, env={**env, "TRACEJUDGE_METRICS": "off"}, capture_output=True, text=True, timeout=30)
    assert off.returncode == 1 and "off" in off.stderr

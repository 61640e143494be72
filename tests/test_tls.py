"""TLS end to end with certificates made at test time: real OTel SDK exporters into a real sidecar over TLS
and mutual TLS, plaintext and certificate-less clients refused, forwarding and verdicts to TLS sinks, and
the control plane behind mutual TLS or a bearer token over TLS."""

from __future__ import annotations

import ssl
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from click.testing import CliRunner
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcSpanExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpSpanExporter
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from tracejudge.cli_scorers import scorers as scorers_cli
from tracejudge.client.errors import UnauthenticatedError, UnavailableError
from tracejudge.config import ConfigError
from tracejudge.config_file import load_config
from tracejudge.scorers import ScorerClient
from tracejudge.synthetic import genai_request
from tracejudge.testing import SidecarProcess, wait_until

from otlp_peers import TRACE_METHOD, GrpcSink, HttpSink
from tls_certs import Pki, make_pki


@pytest.fixture(autouse=True)
def _no_ca_bundle_override(monkeypatch: pytest.MonkeyPatch) -> None:
    """requests lets REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE override a session's `verify` (psf/requests#3829), so
    the SDK's HTTP exporter would ignore its `certificate_file` on a machine that sets them, as this one does."""
    for name in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def server_tls(pki: Pki, mutual: bool = False) -> dict[str, str]:
    tls = {"cert_file": str(pki.server.cert), "key_file": str(pki.server.key)}
    return tls | ({"client_ca_file": str(pki.ca)} if mutual else {})


def send_spans(exporter: Any, count: int) -> set[bytes]:
    """`count` one-span traces through a real SDK exporter; the span ids the SDK finished."""
    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("tls-test")
    for turn in range(count):
        with tracer.start_as_current_span(f"turn {turn}"):
            pass
    provider.shutdown()
    return {span.context.span_id.to_bytes(8, "big") for span in memory.get_finished_spans()}


def grpc_export(target: str, credentials: grpc.ChannelCredentials | None, traces: int = 2) -> set[bytes]:
    """One raw OTLP/gRPC Export of `traces` GenAI agent turns; their span ids. Raises grpc.RpcError when refused."""
    request = genai_request(traces, spans_per_trace=2)
    channel = grpc.secure_channel(target, credentials) if credentials else grpc.insecure_channel(target)
    with channel:
        call = channel.unary_unary(TRACE_METHOD, request_serializer=None, response_deserializer=None)
        call(request.SerializeToString(), timeout=5)
    return {span.span_id for rs in request.resource_spans for ss in rs.scope_spans for span in ss.spans}


def https_post(url: str, context: ssl.SSLContext | None) -> int:
    body = genai_request(2, spans_per_trace=2).SerializeToString()
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/x-protobuf"})
    with urllib.request.urlopen(request, timeout=5, context=context) as response:
        return int(response.status)


def context(pki: Pki, client: bool = False) -> ssl.SSLContext:
    made = ssl.create_default_context(cafile=pki.ca)
    if client:
        made.load_cert_chain(pki.client.cert, pki.client.key)
    return made


def test_sdk_exporters_send_over_tls_and_plaintext_to_the_tls_port_fails(
    sidecar_factory: Callable[..., SidecarProcess], grpc_sink: GrpcSink, pki: Pki
) -> None:
    sidecar = sidecar_factory([grpc_sink.url], {"receiver": {"tls": server_tls(pki)}})
    ca = pki.ca.read_bytes()
    via_grpc = send_spans(
        GrpcSpanExporter(endpoint=sidecar.grpc_target, credentials=grpc.ssl_channel_credentials(ca), insecure=False),
        3,
    )
    via_http = send_spans(
        HttpSpanExporter(endpoint=f"https://127.0.0.1:{sidecar.http_port}/v1/traces", certificate_file=str(pki.ca)),
        3,
    )
    assert wait_until(lambda: grpc_sink.received.span_ids() == via_grpc | via_http)
    assert "OTLP/HTTP receiver listening on https://127.0.0.1" in sidecar.log()

    with pytest.raises(grpc.RpcError) as refused:
        grpc_export(sidecar.grpc_target, None)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    with pytest.raises(OSError):  # plain HTTP to a TLS listener: the server drops the non-TLS bytes
        urllib.request.urlopen(
            urllib.request.Request(sidecar.http_url + "/v1/traces", data=b"", headers={"Content-Type": "x"}), timeout=5
        )
    with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):  # TLS; the client trusts another CA
        https_post(f"https://127.0.0.1:{sidecar.http_port}/v1/traces", ssl.create_default_context(cafile=pki.other_ca))
    assert sidecar.metric("tracejudge_receiver_accepted_items_total") == 6  # the refused ones reached nothing
    sidecar.check_alive()


def test_mutual_tls_refuses_a_client_without_a_certificate(
    sidecar_factory: Callable[..., SidecarProcess], grpc_sink: GrpcSink, pki: Pki
) -> None:
    sidecar = sidecar_factory([grpc_sink.url], {"receiver": {"tls": server_tls(pki, mutual=True)}})
    ca = pki.ca.read_bytes()
    https_url = f"https://127.0.0.1:{sidecar.http_port}/v1/traces"

    with pytest.raises(grpc.RpcError) as refused:
        grpc_export(sidecar.grpc_target, grpc.ssl_channel_credentials(ca))
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    with pytest.raises((ssl.SSLError, ConnectionError, urllib.error.URLError)):
        https_post(https_url, context(pki))
    assert sidecar.metric("tracejudge_receiver_accepted_items_total") == 0

    key, cert = pki.client.key.read_bytes(), pki.client.cert.read_bytes()
    credentials = grpc.ssl_channel_credentials(ca, private_key=key, certificate_chain=cert)
    via_grpc = send_spans(GrpcSpanExporter(endpoint=sidecar.grpc_target, credentials=credentials, insecure=False), 2)
    via_http = send_spans(
        HttpSpanExporter(
            endpoint=https_url,
            certificate_file=str(pki.ca),
            client_certificate_file=str(pki.client.cert),
            client_key_file=str(pki.client.key),
        ),
        2,
    )
    assert wait_until(lambda: grpc_sink.received.span_ids() == via_grpc | via_http)
    assert https_post(https_url, context(pki, client=True)) == 200
    assert "client certificates required" in sidecar.log()


def test_forwarding_and_verdicts_reach_tls_sinks_with_the_ca_and_fail_clearly_without(
    sidecar_factory: Callable[..., SidecarProcess], pki: Pki
) -> None:
    tls_pair = (pki.server.cert, pki.server.key)
    grpcs_sink, https_sink, verdict_sink = (
        GrpcSink(tls=tls_pair).start(),
        HttpSink(tls=tls_pair),
        GrpcSink(tls=tls_pair),
    )
    verdict_sink.start()
    ca = {"ca_file": str(pki.ca)}
    try:
        config = {
            "forward": [{"url": grpcs_sink.url, "tls": ca}, {"url": https_sink.url, "tls": ca}],
            "assembler": {"trace_idle": "200ms"},
            "scorers": [{"name": "no_error", "builtin": "NoError", "sample_rate": 1.0}],
            "scoring": {"otlp_endpoint": verdict_sink.url, "otlp_tls": ca},
        }
        sidecar = sidecar_factory([], config, name="with-ca")
        sent = grpc_export(sidecar.grpc_target, None, traces=3)  # GenAI turns, so NoError has data to judge
        assert wait_until(lambda: grpcs_sink.received.span_ids() == sent)
        assert wait_until(lambda: https_sink.received.span_ids() == sent)
        names = lambda: sorted(span.name for span in verdict_sink.received.spans())  # noqa: E731
        assert wait_until(lambda: names() == ["evaluation no_error"] * 3), sidecar.log_tail()

        blind = sidecar_factory(
            [], {"forward": [{"url": grpcs_sink.url}, {"url": https_sink.url}], "telemetry": {"log_level": "INFO"}},
            name="without-ca",
        )  # fmt: skip
        before = len(grpcs_sink.received.spans()), len(https_sink.received.spans())
        grpc_export(blind.grpc_target, None, traces=1)
        assert wait_until(lambda: blind.metric("tracejudge_forwarder_retries_total", endpoint=https_sink.url) > 0)
        assert wait_until(lambda: blind.metric("tracejudge_forwarder_retries_total", endpoint=grpcs_sink.url) > 0)
        assert wait_until(lambda: blind.log().count("CERTIFICATE_VERIFY_FAILED") >= 2, timeout=20), blind.log_tail()
        log = blind.log()
        assert f"forwarder {https_sink.url}: SSLError" in log
        assert f"forwarder {grpcs_sink.url}: UNAVAILABLE" in log
        assert (len(grpcs_sink.received.spans()), len(https_sink.received.spans())) == before
        assert blind.metric("tracejudge_forwarder_sent_items_total") == 0
    finally:
        grpcs_sink.stop(), https_sink.stop(), verdict_sink.stop()


def test_control_plane_behind_mutual_tls_admits_only_named_client_certificates(
    sidecar_factory: Callable[..., SidecarProcess], pki: Pki, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = {"receiver": {"tls": server_tls(pki, mutual=True)}, "control": {"client_cert_names": ["admin"]}}
    sidecar = sidecar_factory([], config)
    for endpoint in (f"grpcs://{sidecar.grpc_target}", f"https://127.0.0.1:{sidecar.http_port}"):
        admin = ScorerClient(endpoint, ca_file=str(pki.ca), cert_file=str(pki.admin.cert), key_file=str(pki.admin.key))
        assert admin.list() == []
        app = ScorerClient(endpoint, ca_file=str(pki.ca), cert_file=str(pki.client.cert), key_file=str(pki.client.key))
        with pytest.raises(UnauthenticatedError, match="client_cert_names"):
            app.list()
        with pytest.raises(UnavailableError):  # no client certificate: refused at the handshake
            ScorerClient(endpoint, ca_file=str(pki.ca)).list()

    monkeypatch.setenv("TRACEJUDGE_ENDPOINT", f"grpcs://{sidecar.grpc_target}")
    monkeypatch.setenv("TRACEJUDGE_CA_FILE", str(pki.ca))
    monkeypatch.setenv("TRACEJUDGE_CERT_FILE", str(pki.admin.cert))
    monkeypatch.setenv("TRACEJUDGE_KEY_FILE", str(pki.admin.key))
    monkeypatch.delenv("TRACEJUDGE_TOKEN", raising=False)
    runner = CliRunner()
    made = runner.invoke(scorers_cli, ["register", "tone", "--instructions", "Is {{ outputs }} polite?"])
    assert made.exit_code == 0, made.output
    listed = runner.invoke(scorers_cli, ["list", "-o", "json"])
    assert '"tone"' in listed.output
    as_app = runner.invoke(
        scorers_cli, ["--cert-file", str(pki.client.cert), "--key-file", str(pki.client.key), "list"]
    )
    assert as_app.exit_code == 1 and "UNAUTHENTICATED" in as_app.output


def test_control_plane_bearer_token_over_tls(
    sidecar_factory: Callable[..., SidecarProcess], pki: Pki, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TRACEJUDGE_TOKEN", raising=False)
    for name in ("TRACEJUDGE_CA_FILE", "TRACEJUDGE_CERT_FILE", "TRACEJUDGE_KEY_FILE"):
        monkeypatch.delenv(name, raising=False)
    sidecar = sidecar_factory([], {"receiver": {"tls": server_tls(pki)}, "control": {"token": "tls-token-1"}})
    for endpoint in (f"grpcs://{sidecar.grpc_target}", f"https://127.0.0.1:{sidecar.http_port}"):
        assert ScorerClient(endpoint, "tls-token-1", ca_file=str(pki.ca)).list() == []
        with pytest.raises(UnauthenticatedError):
            ScorerClient(endpoint, "wrong", ca_file=str(pki.ca)).list()
        with pytest.raises(UnavailableError):  # the system roots do not know the test CA
            ScorerClient(endpoint, "tls-token-1").list()


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"forward": [{"url": "grpc://127.0.0.1:1", "tls": {}}]}, "use grpcs:// or https:// for TLS"),
        ({"forward": [{"url": "grpcs://127.0.0.1:1", "tls": {"insecure_skip_verify": True}}]}, "only available"),
        ({"forward": [{"url": "https://h:1", "tls": {"cert_file": "{cert}"}}]}, "cert_file and key_file go together"),
        ({"receiver": {"tls": {"cert_file": "/nonexistent.pem", "key_file": "{key}"}}}, "no such file"),
        ({"receiver": {"tls": {"cert_file": "{cert}", "key_file": "{key}", "min_version": "1.3"}}}, "grpcio"),
        ({"control": {"client_cert_names": ["admin"]}}, "needs receiver.tls.client_ca_file"),
    ],
)
def test_tls_config_mistakes_stop_start_up_naming_the_key(config: dict[str, Any], message: str, pki: Pki) -> None:
    import json

    text = json.dumps(config).replace("{cert}", str(pki.server.cert)).replace("{key}", str(pki.server.key))
    path = Path(pki.ca.parent / "bad.yaml")
    path.write_text(text)  # JSON is YAML
    with pytest.raises(ConfigError, match=message):
        load_config(path)

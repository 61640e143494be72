"""OTLP error rules: every refusal has the right status, a google.rpc.Status body, and the server keeps serving."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from tracejudge.synthetic import genai_request
from tracejudge.testing import wait_until

from otlp_peers import TRACE_METHOD, GrpcSink, post


@pytest.fixture
def sidecar(sidecar_factory, grpc_sink: GrpcSink):
    return sidecar_factory([grpc_sink.url], {"receiver": {"max_request_body_size": "1MiB"}})


def status_of(body: bytes) -> status_pb2.Status:
    return status_pb2.Status.FromString(body)


def test_malformed_protobuf_is_400_with_status_body(sidecar):
    status, body = post(f"{sidecar.http_url}/v1/traces", b"\xff\xff\xff not protobuf")
    assert status == 400
    assert status_of(body).code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert "cannot decode traces request as protobuf" in status_of(body).message


def test_malformed_json_is_400_with_json_status(sidecar):
    bad_id = {"resourceSpans": [{"scopeSpans": [{"spans": [{"traceId": "abc", "spanId": "eee19b7ec3c1b174"}]}]}]}
    status, body = post(f"{sidecar.http_url}/v1/traces", json.dumps(bad_id).encode(), "application/json")
    assert status == 400
    error = json.loads(body)
    assert error["code"] == 3 and "resourceSpans[0].scopeSpans[0].spans[0].traceId" in error["message"]


def test_wrong_method_is_405(sidecar):
    status, body = post(f"{sidecar.http_url}/v1/traces", b"", method="GET")
    assert status == 405 and "use POST" in status_of(body).message


def test_unknown_content_type_and_encoding_are_415(sidecar):
    assert post(f"{sidecar.http_url}/v1/traces", b"hi", content_type="text/plain")[0] == 415
    status, body = post(f"{sidecar.http_url}/v1/logs", b"hi", encoding="br")
    assert status == 415 and "Content-Encoding" in status_of(body).message


def test_body_over_limit_is_413(sidecar):
    status, body = post(f"{sidecar.http_url}/v1/traces", b"\x00" * (1024 * 1024 + 1))
    assert status == 413 and "exceeds the limit" in status_of(body).message


def test_gzip_bomb_is_refused_without_inflating_it(sidecar):
    bomb = gzip.compress(b"\x00" * (512 * 1024 * 1024), compresslevel=9)
    assert len(bomb) < 1024 * 1024
    status, body = post(f"{sidecar.http_url}/v1/traces", bomb, encoding="gzip")
    assert status == 413 and "decompressed body exceeds" in status_of(body).message
    status_lines = Path(f"/proc/{sidecar.process.pid}/status").read_text().splitlines()
    rss_kb = int(next(line for line in status_lines if line.startswith("VmHWM")).split()[1])
    assert rss_kb < 400 * 1024


def test_corrupt_gzip_is_400(sidecar):
    status, body = post(f"{sidecar.http_url}/v1/traces", b"\x1f\x8b not really gzip", encoding="gzip")
    assert status == 400 and "not valid gzip" in status_of(body).message


def test_grpc_invalid_argument_and_oversized_message(sidecar):
    with grpc.insecure_channel(sidecar.grpc_target) as channel:
        export = channel.unary_unary(TRACE_METHOD)
        with pytest.raises(grpc.RpcError) as invalid:
            export(b"\xff\xff\xff", timeout=10)
        assert invalid.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(grpc.RpcError) as too_large:
            export(b"\x00" * (2 * 1024 * 1024), timeout=10)
        assert too_large.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_still_serving_after_every_refusal(sidecar, grpc_sink: GrpcSink):
    for body, encoding in ((b"\xff\xff", None), (b"\x1f\x8b", "gzip"), (b"\x00" * (2 << 20), None)):
        post(f"{sidecar.http_url}/v1/traces", body, encoding=encoding)
    good = genai_request(3).SerializeToString()
    assert post(f"{sidecar.http_url}/v1/traces", good)[0] == 200
    assert wait_until(lambda: grpc_sink.received.payloads["traces"] == [good])
    assert sidecar.metric("tracejudge_receiver_requests_total", outcome="invalid") == 2
    assert sidecar.metric("tracejudge_receiver_requests_total", outcome="too_large") == 1


def test_overload_is_503_with_retry_after_and_grpc_unavailable_with_retry_info(sidecar_factory, grpc_sink):
    sidecar = sidecar_factory([grpc_sink.url], {"wal": {"max_size": 1}})  # a log that is always full
    payload = genai_request(2).SerializeToString()
    status, body = post(f"{sidecar.http_url}/v1/traces", payload)
    assert status == 503 and "overloaded" in status_of(body).message
    with grpc.insecure_channel(sidecar.grpc_target) as channel, pytest.raises(grpc.RpcError) as refused:
        channel.unary_unary(TRACE_METHOD)(payload, timeout=10)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    details = rpc_status.from_call(refused.value).details
    info = error_details_pb2.RetryInfo()
    assert details[0].Unpack(info) and info.retry_delay.seconds == 1
    assert grpc_sink.received.payloads["traces"] == []


def test_bad_config_stops_startup_naming_the_key(tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text("assembler:\n  trace_idel: 2s\nreceiver:\n  max_request_body_size: lots\n")
    result = subprocess.run(
        [sys.executable, "-m", "tracejudge.cli", "serve", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode != 0
    assert "assembler.trace_idel" in result.stderr and "receiver.max_request_body_size" in result.stderr
    bad_forward = subprocess.run(
        [sys.executable, "-m", "tracejudge.cli", "serve", "--forward", "ftp://x:1"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert bad_forward.returncode != 0 and "forward.0.url" in bad_forward.stderr


def test_scorer_mistakes_in_the_config_stop_startup_with_one_clear_line(tmp_path):
    typo = tmp_path / "typo.yaml"
    typo.write_text("scorers:\n  - {name: x, builtin: Safty, sample_rate: 1}\n")
    checked = subprocess.run([sys.executable, "-m", "tracejudge.cli", "check-config", str(typo)],
                             capture_output=True, text=True, timeout=30)  # fmt: skip
    assert checked.returncode != 0 and "scorers.0.builtin" in checked.stderr and "'Safty'" in checked.stderr
    missing = tmp_path / "missing.yaml"
    missing.write_text("scorers:\n  - {name: x, code: 'no_such_module:f', sample_rate: 1}\n")
    listeners_off = ["--grpc", "off", "--http", "off", "--metrics", "off"]
    command = [sys.executable, "-m", "tracejudge.cli", "serve", "--config", str(missing), "--data-dir", str(tmp_path)]
    served = subprocess.run([*command, *listeners_off], capture_output=True, text=True, timeout=30)
    assert served.returncode != 0
    assert "cannot load code scorer 'no_such_module:f'" in served.stderr and "Traceback" not in served.stderr

"""The memory limiter against a real `tracejudge serve`: traces that never complete pile up until the
process is over its soft limit; then the receivers refuse with retryable statuses, the assembler sheds its
oldest traces (decided incomplete, so recorded, not lost), and once the load stops it accepts again and
every span it acknowledged has been forwarded."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from tracejudge.memory_limiter import MemoryLimiterConfig
from tracejudge.model import Signal
from tracejudge.otlp import GRPC_EXPORT_METHODS
from tracejudge.synthetic import genai_request
from tracejudge.testing import SidecarProcess, wait_until

from otlp_peers import GrpcSink

MIB = 2**20
LIMIT, SPIKE = 200 * MIB, 50 * MIB  # refuse above 150 MiB resident; an idle sidecar holds ~80 MiB
SPANS_PER_REQUEST = 100


def rootless_request() -> ExportTraceServiceRequest:
    """100 spans of 100 traces whose root never comes (so they stay buffered), ~2 KB of attributes each."""
    request = ExportTraceServiceRequest()
    scope = request.resource_spans.add().scope_spans.add()
    filler = AnyValue(string_value=os.urandom(1000).hex())  # random: no interning, no compression to help
    for _ in range(SPANS_PER_REQUEST):
        span = Span(trace_id=os.urandom(16), span_id=os.urandom(8), parent_span_id=os.urandom(8), name="chat")
        span.start_time_unix_nano, span.end_time_unix_nano = time.time_ns(), time.time_ns() + 1000
        span.attributes.append(KeyValue(key="gen_ai.input.messages", value=filler))
        scope.spans.append(span)
    return request


def resident_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def test_over_the_soft_limit_it_refuses_and_sheds_then_delivers_what_it_accepted(
    tmp_path: Path, grpc_sink: GrpcSink
) -> None:
    config = {
        "assembler": {"trace_idle": "60s", "trace_timeout": "600s"},  # nothing completes on its own
        "memory_limiter": {"limit": LIMIT, "spike": SPIKE, "check_interval": "100ms"},
        "archive": {"enabled": False},
    }
    sidecar = SidecarProcess(tmp_path / "tj", [grpc_sink.url], config).start()
    peak = [0.0]
    sampling = threading.Event()

    def sample() -> None:
        while not sampling.wait(0.05):
            peak[0] = max(peak[0], resident_mib(sidecar.pid))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    accepted = refused = 0
    try:
        with grpc.insecure_channel(sidecar.grpc_target) as channel:
            export = channel.unary_unary(GRPC_EXPORT_METHODS[Signal.TRACES])
            deadline = time.monotonic() + 60
            while refused < 3 and time.monotonic() < deadline:
                try:
                    export(rootless_request().SerializeToString(), timeout=10)
                    accepted += 1
                except grpc.RpcError as error:
                    assert error.code() == grpc.StatusCode.UNAVAILABLE, error
                    refused += 1
                    time.sleep(0.05)
            assert refused >= 3, f"never refused; {accepted} requests accepted, peak {peak[0]:.0f} MiB"
            # Refused while over the soft limit, and the buffered traces were shed (decided incomplete).
            # (shedding runs on the limiter's own thread, a check interval after it starts refusing)
            assert wait_until(lambda: sidecar.metric("tracejudge_memory_limiter_shed_traces_total") > 0, timeout=10)
            shed = wait_until(
                lambda: sidecar.metric("tracejudge_assembler_completed_traces_total", reason="memory_cap")
            )
            assert shed > 0
            # Back under the limit without load, it accepts again.
            assert wait_until(lambda: sidecar.metric("tracejudge_memory_limiter_refusing") == 0, timeout=30)
            export(genai_request(10).SerializeToString(), timeout=10)
            accepted_spans = accepted * SPANS_PER_REQUEST + 50
            assert wait_until(lambda: len(grpc_sink.received.span_ids()) >= accepted_spans, timeout=60)
    finally:
        sampling.set()
        sampler.join()
        sidecar.stop()
    # Every acknowledged span was forwarded; resident memory stayed near the limit (margin: one check's load).
    assert len(grpc_sink.received.span_ids()) == accepted_spans
    assert peak[0] < (LIMIT + 100 * MIB) / MIB, f"peak {peak[0]:.0f} MiB"


def test_limits_from_the_config_and_the_container() -> None:
    assert MemoryLimiterConfig().limits(container_limit=None) is None  # auto, no container limit: off
    assert MemoryLimiterConfig().limits(container_limit=1000 * MIB) == (640 * MIB, 800 * MIB)
    assert MemoryLimiterConfig(limit="1GiB").limits(None) == (2**30 - 2**30 // 5, 2**30)  # spike: 20 %
    assert MemoryLimiterConfig(limit="1GiB", spike="100MiB").limits(None) == (2**30 - 100 * MIB, 2**30)
    assert MemoryLimiterConfig(limit=None).limits(container_limit=1000 * MIB) is None
    with pytest.raises(ValueError, match="spike"):
        MemoryLimiterConfig(limit="100MiB", spike="100MiB")

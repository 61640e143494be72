"""Containment: one failing consumer or trace costs only itself; every admitted pair ends by its deadline."""

from __future__ import annotations

import os
import textwrap
from collections.abc import Sequence

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from tracejudge.model import CompletionReason, Trace
from tracejudge.sidecar import FanOut
from tracejudge.synthetic import genai_request
from tracejudge.testing import SidecarProcess, wait_until

from archive_reader import query
from otlp_peers import post


class Recording:
    """A trace consumer as an embedder writes one (Sidecar's trace_consumers): it keeps what it gets."""

    def __init__(self, poison: bytes | None = None) -> None:
        self.poison = poison
        self.batches: list[list[bytes]] = []

    def consume(self, traces: Sequence[Trace]) -> None:
        ids = [trace.trace_id for trace in traces]
        if self.poison in ids:
            raise ValueError("cannot read this trace")
        self.batches.append(ids)


def trace(trace_id: bytes) -> Trace:
    return Trace(trace_id, [], [], 0.0, 0.0, CompletionReason.ROOT_IDLE, True)


def test_fan_out_isolates_each_consumer_and_each_trace():
    reader = InMemoryMetricReader()
    meter = MeterProvider(metric_readers=[reader]).get_meter("test")
    ids = [os.urandom(16) for _ in range(4)]
    failing, healthy = Recording(poison=ids[2]), Recording()
    failed: list[tuple[object, bytes]] = []
    FanOut([failing, healthy], meter, lambda consumer, t: failed.append((consumer, t.trace_id))).consume(
        [trace(i) for i in ids]
    )
    assert healthy.batches == [ids]  # the consumer after the failing one still got the whole batch
    assert failing.batches == [[ids[0]], [ids[1]], [ids[3]]]  # every other trace, one by one
    assert failed == [(failing, ids[2])]
    [metric] = [m for rm in reader.get_metrics_data().resource_metrics for sm in rm.scope_metrics for m in sm.metrics]
    assert metric.name == "tracejudge.fanout.failed_traces"
    assert [(p.value, dict(p.attributes)) for p in metric.data.data_points] == [(1, {"consumer": "Recording"})]


def test_a_pair_past_the_scoring_deadline_is_recorded_as_skipped_and_the_backlog_empties(tmp_path, grpc_sink):
    (tmp_path / "slow_scorers.py").write_text(
        textwrap.dedent("""
        import time

        def slow(inputs, outputs):
            time.sleep(4)
            return True
    """)
    )
    config = {
        "assembler": {"trace_idle": "100ms", "check_interval": "50ms"},
        "scoring": {"deadline": "1s", "code_timeout": "30s"},
        "scorers": [{"name": "slow", "code": "slow_scorers:slow", "sample_rate": 1.0}],
    }
    sidecar = SidecarProcess(tmp_path / "tj", [grpc_sink.url], config, env={"PYTHONPATH": str(tmp_path)}).start()
    try:
        request = genai_request(1)
        trace_id = request.resource_spans[0].scope_spans[0].spans[0].trace_id.hex()
        assert post(f"{sidecar.http_url}/v1/traces", request.SerializeToString())[0] == 200
        expired = lambda: sidecar.metric("tracejudge_scoring_skipped_total", scorer="slow", reason="deadline")  # noqa: E731
        assert wait_until(lambda: expired() == 1, timeout=20)
        assert sidecar.metric("tracejudge_scoring_backlog") == 0
        assert f"trace {trace_id} not scored by slow within the scoring deadline (1s)" in sidecar.log()
        assert sidecar.stop() == 0
    finally:
        sidecar.kill()
    rows = query(sidecar.data_dir / "archive", "skipped", "SELECT trace_id, scorers, reason FROM t")
    assert rows == [(trace_id, ["slow"], "deadline")]

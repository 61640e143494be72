"""A flaky judge under load: every sampled pair still ends as a verdict or an error assessment, none silent.

A real `tracejudge serve` scores 300 traces with an LLM judge (tests/mock_openai.py behind the openai SDK)
that answers 30 % of its calls with a fault: 429 with Retry-After, 500, a stall past the judge timeout, or
JSON cut short. With one retry allowed, some pairs exhaust it (about 0.3² of them); they must arrive as
error assessments (span status ERROR, `error.type` on the event), counted by the metric, and everything
else as verdicts. bench/judge_faults.py runs the same at 2,000 traces with the default retries.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import grpc
from mock_openai import MockOpenAI, faults
from opentelemetry.proto.trace.v1.trace_pb2 import Status

from tracejudge.model import Signal
from tracejudge.otlp import GRPC_EXPORT_METHODS
from tracejudge.synthetic import genai_request
from tracejudge.testing import SidecarProcess, wait_until

from otlp_peers import GrpcSink

TRACES = 300
FAULTS = [
    faults.rate_limited(retry_after=0.2),
    faults.server_error(),
    faults.hang(5.0),  # past the 1 s judge timeout
    faults.malformed(),
]


def test_a_judge_failing_30_percent_of_calls_leaves_no_pair_silent(tmp_path: Path, grpc_sink: GrpcSink) -> None:
    with MockOpenAI(latency=0.02) as judge:
        judge.randomly(0.3, FAULTS, seed=9)
        config = {
            "assembler": {"trace_idle": "200ms"},
            "judges": {"default": {"base_url": judge.base_url, "api_key_env": "TRACEJUDGE_TEST_NO_KEY",
                                   "timeout": "1s", "max_retries": 1, "max_concurrency": 32}},
            "scorers": [{"name": "safety", "builtin": "Safety", "sample_rate": 1.0}],
        }  # fmt: skip
        sidecar = SidecarProcess(tmp_path / "tj", [grpc_sink.url], config).start()
        try:
            sent: set[bytes] = set()
            with grpc.insecure_channel(sidecar.grpc_target) as channel:
                export = channel.unary_unary(GRPC_EXPORT_METHODS[Signal.TRACES])
                for _ in range(TRACES // 100):
                    request = genai_request(100)
                    sent |= {s.trace_id for rs in request.resource_spans for ss in rs.scope_spans for s in ss.spans}
                    export(request.SerializeToString(), timeout=10)

            def verdicts() -> dict[bytes, int]:
                return {s.trace_id: s.status.code for s in grpc_sink.received.spans() if s.name == "evaluation safety"}

            assert wait_until(lambda: len(verdicts()) == TRACES, timeout=90), sidecar.log_tail()
            by_trace = verdicts()
            assert set(by_trace) == sent
            outcome = Counter("error" if code == Status.STATUS_CODE_ERROR else "verdict" for code in by_trace.values())
            statuses = Counter(r.status for r in judge.chat_requests())
            assert statuses[200] >= TRACES * 0.9 and statuses[429] and statuses[500]  # the faults did happen
            assert 0 < outcome["error"] < outcome["verdict"]
            errors = sidecar.metric("tracejudge_assessments_total") - sidecar.metric(
                "tracejudge_assessments_total", error_type="none"
            )
            assert errors == outcome["error"]
            assert sidecar.metric("tracejudge_scoring_skipped_total") == 0
            assert sidecar.metric("tracejudge_scoring_backlog") == 0
        finally:
            sidecar.stop()

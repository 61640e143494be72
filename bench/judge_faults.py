"""Judge faults under load: with a share of judge calls failing, does every sampled pair still end?

    .venv/bin/python bench/judge_faults.py [--traces 2000] [--fault-rate 0.3] [--max-retries 4] [--timeout 2]

A real `tracejudge serve` (one LLM judge scorer, `builtin: Safety`, sample rate 1) gets `--traces` synthetic
agent traces, 100 per OTLP/gRPC request. Its judge is tests/mock_openai.py behind the openai SDK, answering
`--fault-rate` of its calls with one of: 429 with Retry-After 0.5 s, 500, a stall past the judge timeout,
JSON cut short. The bench waits until every trace has its `evaluation safety` span at a gRPC sink, or
until `--wait` passes, then prints how each pair ended: verdicts, error assessments by error.type, skipped
pairs (tracejudge_scoring_skipped_total), and the silent ones (sent, but none of those): the target is 0.
Also the judge calls by status, the time until the last pair ended, and the backlog left.
It exits 1 when a pair is silent.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import grpc
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from mock_openai import MockOpenAI, faults

from tracejudge.model import Signal
from tracejudge.otlp import GRPC_EXPORT_METHODS
from tracejudge.synthetic import genai_request
from tracejudge.testing import SidecarProcess, wait_until

from otlp_peers import GrpcSink


def error_type(span: Span) -> str:
    """The evaluation event's error.type ("" for a verdict)."""
    for event in span.events:
        for attribute in event.attributes:
            if attribute.key == "error.type":
                return attribute.value.string_value
    return "" if span.status.code != Status.STATUS_CODE_ERROR else "unknown"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--traces", type=int, default=2000)
    parser.add_argument("--fault-rate", type=float, default=0.3)
    parser.add_argument("--max-retries", type=int, default=4, help="judges.default.max_retries [4, the default]")
    parser.add_argument("--timeout", type=float, default=2.0, help="judges.default.timeout in seconds [2]")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--latency", type=float, default=0.05, help="the mock judge's answer time [0.05 s]")
    parser.add_argument("--wait", type=float, default=600, help="give up after this many seconds [600]")
    args = parser.parse_args()

    stall = faults.hang(args.timeout * 3)
    choices = [faults.rate_limited(retry_after=0.5), faults.server_error(), stall, faults.malformed()]
    sink = GrpcSink().start()
    with MockOpenAI(latency=args.latency) as judge, tempfile.TemporaryDirectory(prefix="tj-faults-") as workdir:
        judge.randomly(args.fault_rate, choices, seed=2026)
        config = {
            "assembler": {"trace_idle": "500ms"},
            "judges": {"default": {"base_url": judge.base_url, "api_key_env": "TRACEJUDGE_BENCH_NO_KEY",
                                   "timeout": f"{args.timeout:g}s", "max_retries": args.max_retries,
                                   "max_concurrency": args.concurrency}},
            "scorers": [{"name": "safety", "builtin": "Safety", "sample_rate": 1.0}],
            "scoring": {"max_backlog": max(10_000, 2 * args.traces)},
        }  # fmt: skip
        sidecar = SidecarProcess(Path(workdir) / "tj", [sink.url], config, log_level="WARNING").start()
        try:
            sent: set[bytes] = set()
            started = time.monotonic()
            with grpc.insecure_channel(sidecar.grpc_target) as channel:
                export = channel.unary_unary(GRPC_EXPORT_METHODS[Signal.TRACES])
                for first in range(0, args.traces, 100):
                    request = genai_request(min(100, args.traces - first))
                    sent |= {s.trace_id for rs in request.resource_spans for ss in rs.scope_spans for s in ss.spans}
                    export(request.SerializeToString(), timeout=30)

            def ended() -> dict[bytes, Span]:
                return {s.trace_id: s for s in sink.received.spans() if s.name == "evaluation safety"}

            wait_until(lambda: len(ended()) >= len(sent), timeout=args.wait, interval=0.5)
            elapsed = time.monotonic() - started
            metrics = sidecar.metrics()
            spans = ended()
        finally:
            sidecar.stop()
        statuses = Counter(str(r.status) for r in judge.chat_requests())
    sink.stop()

    kinds = Counter(error_type(span) for trace_id, span in spans.items() if trace_id in sent)
    verdicts = kinds.pop("", 0)
    errors = sum(kinds.values())
    skipped = metrics.get("tracejudge_scoring_skipped_total")
    silent = len(sent) - verdicts - errors - int(skipped)
    calls = sum(statuses.values())
    faulty = calls - statuses["200"]
    print(f"pairs sent          {len(sent):,} (traces x 1 scorer), fault rate {args.fault_rate:.0%}, "
          f"max_retries {args.max_retries}, judge timeout {args.timeout:g}s")  # fmt: skip
    print(f"judge calls         {calls:,}: {dict(statuses)} (None: the client hung up on a stall) "
          f"= {faulty / max(calls, 1):.1%} with an error status; malformed replies are among the 200s")  # fmt: skip
    print(f"verdicts            {verdicts:,}")
    counted = metrics.get("tracejudge_assessments_total")
    counted_errors = counted - metrics.get("tracejudge_assessments_total", error_type="none")
    print(f"error assessments   {errors:,} {dict(kinds)}; tracejudge_assessments_total says {counted_errors:g}")
    print(f"skipped             {skipped:g}")
    print(f"silent              {silent:,} (target 0)")
    print(f"all ended after     {elapsed:.1f}s; backlog left {metrics.get('tracejudge_scoring_backlog'):g}")
    return 1 if silent else 0


if __name__ == "__main__":
    sys.exit(main())

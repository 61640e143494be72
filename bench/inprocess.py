"""In-process benchmark: what ScoringSpanProcessor costs the app's own thread, and how fresh its verdicts are.

Prints figures and a PASS/MISS line per target; it is not a test. It exits non-zero only when a run is
broken (a process died, verdicts never arrived).

    python bench/inprocess.py [--traces 1000] [--rate 100] [--latency 0.2] [--trace-idle 0.5] [--rounds 2]

Processes: a mock OpenAI-compatible judge (tests/mock_openai.py, answering after `--latency`) and a
downstream OTLP/gRPC sink (bench/scoring.py's: it records when each evaluation span arrives) run in
processes of their own; each app run is a fresh process too, so no provider, thread or queue carries
over from one run to the next.

The app makes agent turns of 5 spans (a root `invoke_agent` with the OTel GenAI messages, a retrieval,
a tool call and two chat calls, as tracejudge.synthetic does) at `--rate` turns/s, exporting them with
BatchSpanProcessor + OTLPSpanExporter to the sink, as an app does anyway.

  1. cost: per span, the CPU of the app's own thread (time.thread_time) with BatchSpanProcessor +
     OTLPSpanExporter alone (the SDK's own cost, the same-run baseline), and with ScoringSpanProcessor
     added (scorers Safety and NoError, the judge at `--latency`, verdicts to the sink); alternated
     `--rounds` times, medians reported. Target: what the processor adds is at most 1.5x the SDK's own
     per-span cost. The whole process's CPU per span (tracejudge's threads included) is shown too.
     Alone, the hook each processor runs on the app's thread: `on_end` of BatchSpanProcessor and of
     ScoringSpanProcessor over the same 20,000 ended spans, per call.
  2. freshness: from the moment a turn's root span ends to its `evaluation safety` span reaching the
     sink, p50/p90/p99. Target: p50 <= trace_idle + L + 0.3 s.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
TESTS_DIR = BENCH_DIR.parent / "tests"
if str(BENCH_DIR) not in sys.path:
    sys.path.insert(0, str(BENCH_DIR))

from ingest import percentile  # noqa: E402  (bench/ is not a package)

from scoring import Helper, Verdicts, judge_main, sink_main  # noqa: E402

PROMPT = "Summarise the refund policy for an order that arrived damaged, citing the relevant section. " * 6
ANSWER = "Under section 4.2 a damaged item can be returned within 30 days for a full refund. " * 4


def messages(role: str, text: str) -> str:
    return json.dumps([{"role": role, "parts": [{"type": "text", "content": text}]}])


def app_main(conn: Connection, scoring: bool, sink_port: int, judge_url: str, turns: int, rate: float,
             trace_idle: float) -> None:  # fmt: skip
    """One app run: `turns` agent turns at `rate`/s; reports its own thread's CPU and each turn's end time."""
    import yaml
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = TracerProvider(resource=Resource.create({"service.name": "support-agent"}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=f"127.0.0.1:{sink_port}", insecure=True)))
    processor = None
    if scoring:
        from tracejudge.exporter import ScoringSpanProcessor

        config = {
            "assembler": {"trace_idle": f"{trace_idle}s"},
            "judges": {"default": {"base_url": judge_url, "api_key_env": "BENCH_NO_KEY", "max_concurrency": 64}},
            "scorers": [{"name": "safety", "builtin": "Safety", "sample_rate": 1.0},
                        {"name": "no_error", "builtin": "NoError", "sample_rate": 1.0}],
            "scoring": {"emit_interval": "100ms"},
        }  # fmt: skip
        path = Path(tempfile.mkdtemp(prefix="tracejudge-bench-")) / "tracejudge.yaml"
        path.write_text(yaml.safe_dump(config))
        processor = ScoringSpanProcessor(path, otlp_endpoint=f"grpc://127.0.0.1:{sink_port}")
        provider.add_span_processor(processor)
    tracer = provider.get_tracer("agent")
    ended: list[tuple[str, int]] = []
    chat = {"gen_ai.operation.name": "chat", "gen_ai.request.model": "gpt-4.1-mini", "gen_ai.usage.input_tokens": 120,
            "gen_ai.usage.output_tokens": 48, "gen_ai.input.messages": messages("user", PROMPT),
            "gen_ai.output.messages": messages("assistant", ANSWER)}  # fmt: skip
    cpu0, process0, start = time.thread_time(), time.process_time(), time.monotonic()
    for i in range(turns):
        pause = start + i / rate - time.monotonic()
        if pause > 0:
            time.sleep(pause)
        with tracer.start_as_current_span("invoke_agent support") as root:
            root.set_attributes({"gen_ai.operation.name": "invoke_agent", "session.id": "s-1",
                                 "gen_ai.input.messages": messages("user", PROMPT),
                                 "gen_ai.output.messages": messages("assistant", ANSWER)})  # fmt: skip
            with tracer.start_as_current_span("retrieval docs", attributes={"gen_ai.operation.name": "retrieval"}):
                pass
            tool = {"gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": "lookup_order"}
            with tracer.start_as_current_span("execute_tool lookup_order", attributes=tool):
                pass
            for _ in range(2):
                with tracer.start_as_current_span("chat gpt-4.1-mini", attributes=chat):
                    pass
        ended.append((f"{root.get_span_context().trace_id:032x}", time.time_ns()))
    thread_cpu, process_cpu, wall = time.thread_time() - cpu0, time.process_time() - process0, time.monotonic() - start
    stopping = time.monotonic()
    provider.shutdown()
    conn.send({"thread_cpu": thread_cpu, "process_cpu": process_cpu, "wall": wall, "spans": turns * 5,
               "shutdown_s": time.monotonic() - stopping, "ended": ended})  # fmt: skip
    conn.close()


def run_app(scoring: bool, sink: Helper, judge: Helper, args: argparse.Namespace) -> dict[str, Any]:
    context = multiprocessing.get_context("spawn")
    parent, child = context.Pipe()
    judge_url = f"http://127.0.0.1:{judge.port}/v1"
    process = context.Process(target=app_main, args=(child, scoring, sink.port, judge_url, args.traces, args.rate,
                                                     args.trace_idle), name="app")  # fmt: skip
    process.start()
    child.close()
    if not parent.poll(args.traces / args.rate + 120):
        process.kill()
        raise RuntimeError("the app did not finish")
    result: dict[str, Any] = parent.recv()
    process.join(30)
    if process.exitcode not in (0, None):
        raise RuntimeError(f"the app exited with {process.exitcode}")
    return result


@dataclass
class Round:
    label: str
    thread_us: float  # app-thread CPU per span
    process_us: float  # whole-process CPU per span
    shutdown_s: float


def summarize(label: str, result: dict[str, Any]) -> Round:
    spans = result["spans"]
    found = Round(label, result["thread_cpu"] / spans * 1e6, result["process_cpu"] / spans * 1e6, result["shutdown_s"])
    print(f"  {label:<28} app thread {found.thread_us:7.1f} us/span   whole process {found.process_us:7.1f} us/span"
          f"   ({spans} spans in {result['wall']:.1f}s; shutdown {found.shutdown_s:.2f}s)", flush=True)  # fmt: skip
    return found


def hook_cost(calls: int = 20_000) -> tuple[float, float]:
    """Per-call CPU of BatchSpanProcessor.on_end and ScoringSpanProcessor.on_end over the same ended spans."""
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    from tracejudge.exporter import ScoringSpanProcessor

    tracer = TracerProvider().get_tracer("hook")
    spans = []
    for _ in range(calls):
        span = tracer.start_span("invoke_agent")
        span.end()
        spans.append(span)
    exporter = OTLPSpanExporter(endpoint="127.0.0.1:9", insecure=True)  # never flushed: only on_end is timed
    costs = []
    for processor in (BatchSpanProcessor(exporter, max_queue_size=calls + 1, schedule_delay_millis=600_000),
                      ScoringSpanProcessor(max_queue_size=calls + 1, otlp_endpoint="grpc://127.0.0.1:9")):  # fmt: skip
        started = time.thread_time()
        for span in spans:
            processor.on_end(span)
        costs.append((time.thread_time() - started) / calls * 1e6)
        if isinstance(processor, ScoringSpanProcessor):
            processor.shutdown()
    return costs[0], costs[1]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--traces", type=int, default=1000, help="agent turns (5 spans each) per app run")
    parser.add_argument("--rate", type=float, default=100.0, help="agent turns per second")
    parser.add_argument("--latency", type=float, default=0.2, help="mock judge latency L, seconds")
    parser.add_argument("--trace-idle", type=float, default=0.5, help="assembler.trace_idle, seconds")
    parser.add_argument("--rounds", type=int, default=2, help="alternated runs of each configuration")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    sink = Helper("sink", sink_main)
    judge = Helper("judge", judge_main, args.latency, str(TESTS_DIR))
    try:
        return run(args, sink, judge)
    finally:
        sink.stop()
        judge.stop()


def run(args: argparse.Namespace, sink: Helper, judge: Helper) -> int:
    print(f"== cost: {args.traces} agent turns (5 spans each) at {args.rate:g}/s, {args.rounds} alternated rounds ==",
          flush=True)  # fmt: skip
    baseline: list[Round] = []
    scoring: list[Round] = []
    last: dict[str, Any] = {}
    for _ in range(args.rounds):
        baseline.append(summarize("BatchSpanProcessor + OTLP", run_app(False, sink, judge, args)))
        verdicts = Verdicts(sink)
        last = run_app(True, sink, judge, args)
        scoring.append(summarize("... + ScoringSpanProcessor", last))
    sdk = statistics.median(r.thread_us for r in baseline)
    added = statistics.median(r.thread_us for r in scoring) - sdk
    ratio = added / sdk if sdk else float("inf")
    extra_process = statistics.median(r.process_us for r in scoring) - statistics.median(r.process_us for r in baseline)
    print(f"\n  SDK's own per-span cost on the app thread (median): {sdk:.1f} us")
    print(f"  ScoringSpanProcessor adds on the app thread:        {added:.1f} us/span = {ratio:.2f}x the SDK's "
          f"(target <= 1.5x): {'PASS' if ratio <= 1.5 else 'MISS'}")  # fmt: skip
    sdk_hook, scoring_hook = hook_cost()
    print(f"  on_end alone, per call: BatchSpanProcessor {sdk_hook:.2f} us, ScoringSpanProcessor {scoring_hook:.2f} us")
    print(
        f"  ... and on tracejudge's own threads (whole process): {extra_process - added:.1f} us/span more "
        "(assembly, sampling, scoring, emission; the GIL is shared)"
    )

    ids = [trace_id for trace_id, _ in last["ended"]]
    print(f"\n== freshness: the last round's {len(ids)} turns, root span end -> evaluation safety at the sink ==")
    complete = verdicts.wait(ids, "safety", 30)
    fresh = [(verdicts.rows[(tid, "safety")][3] - ended) / 1e9 for tid, ended in last["ended"]
             if (tid, "safety") in verdicts.rows]  # fmt: skip
    target = args.trace_idle + args.latency + 0.3
    if not fresh:
        print("  ! no verdict arrived")
        return 1
    p50 = percentile(fresh, 0.5)
    print(f"  {len(fresh)}/{len(ids)} verdicts: p50 {p50:.3f}s  p90 {percentile(fresh, 0.9):.3f}s  "
          f"p99 {percentile(fresh, 0.99):.3f}s; target p50 <= trace_idle + L + 0.3 = {target:.2f}s: "
          f"{'PASS' if p50 <= target else 'MISS'}")  # fmt: skip
    return 0 if complete else 1


if __name__ == "__main__":
    sys.exit(main())

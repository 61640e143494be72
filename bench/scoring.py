"""Scoring benchmark: LLM-judge throughput, engine CPU, verdict freshness, and ingest with scorers on.

Prints figures and a PASS/MISS line per target; it is not a test. It exits non-zero only when a run
is broken (a process died, verdicts never arrived, a client saw errors other than backpressure).

    python bench/scoring.py [--traces 2000] [--latency 0.2] [--concurrency 64] [--trace-idle 0.5]

Processes: a mock OpenAI-compatible judge (tests/mock_openai.py, answering after `--latency`) and a
downstream OTLP/gRPC sink (counts everything; parses only requests carrying evaluation spans and
records their arrival time per trace id) each run in their own process, so their CPU is measured
apart from the sidecar's.

Phases, in one run:
  1. judge: a sidecar with one LLM judge scorer (builtin Safety, sample_rate 1.0, judge
     max_concurrency C) gets N traces as fast as it takes them; the bench waits for N
     `evaluation safety` spans at the sink. Judge calls/s are timed at the mock (first request in to
     last answer out) against the ideal C/L; engine CPU (the sidecar and its scoring worker process)
     per judge call over that window, minus their idle CPU rate measured beforehand. Then the same-run
     baseline: N bare openai SDK calls (the judge client's transport and loop, C in flight) against the
     same mock from a process of their own, so the engine's figures can be read as ratios on a shared,
     noisy machine.
  2. freshness: the same sidecar gets one-trace requests at a modest paced rate; per trace, the time
     from sending its (only) request to its evaluation span reaching the sink; p50/p90/p99 next to
     trace_idle + L + 0.3 s, split into "sent -> verdict" and "verdict -> sink" (emitter batching).
  3. ingest: bench/ingest.py's load client (gRPC, flat out) against a sidecar without scorers and one
     with 5 cheap built-in code scorers at sample_rate 1.0; spans/s of each and their ratio.
"""

from __future__ import annotations

import argparse
import bisect
import contextlib
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import grpc
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Status

from tracejudge.model import Signal
from tracejudge.otlp import GRPC_SERVICES
from tracejudge.synthetic import genai_request
from tracejudge.testing import MetricSamples

BENCH_DIR = Path(__file__).resolve().parent
TESTS_DIR = BENCH_DIR.parent / "tests"
if str(BENCH_DIR) not in sys.path:
    sys.path.insert(0, str(BENCH_DIR))

from ingest import (  # noqa: E402  (bench/ is not a package)
    EXPORT_METHOD,
    MAX_MESSAGE,
    STOP,
    TRACE_SERVICE,
    Sidecar,
    Template,
    answer_requests,
    client_main,
    cpu_seconds,
    end_process,
    fmt,
    machine_cpu,
    percentile,
    process_label,
    self_cpu,
    wait_for,
)

LOGS_SERVICE = GRPC_SERVICES[Signal.LOGS]
METRICS_SERVICE = GRPC_SERVICES[Signal.METRICS]
EVALUATION_MARK = b"gen_ai.evaluation.result"  # the span event name: only the emitter's exports carry it
PIPELINE_FIGURE = 71_500  # README "Performance": gRPC accepted flat out (the pipeline issue's figure)
FIVE_SCORERS: list[dict[str, Any]] = [
    {"name": "no_error", "builtin": "NoError", "sample_rate": 1.0},
    {"name": "latency_under", "builtin": "LatencyUnder", "params": {"threshold_ms": 5000}, "sample_rate": 1.0},
    {"name": "token_budget", "builtin": "TokenBudget", "params": {"max_tokens": 8000}, "sample_rate": 1.0},
    {"name": "non_empty", "builtin": "NonEmptyResponse", "sample_rate": 1.0},
    {"name": "no_pii", "builtin": "NoPii", "sample_rate": 1.0},
]


# --------------------------------------------------------------------------- helper processes


def sink_main(conn: Connection) -> None:
    """Downstream OTLP/gRPC sink (traces and logs). Counts every request; parses only the emitter's (those
    carrying evaluation spans / log events) to count them, and while recording is on keeps (trace id,
    scorer, arrival, arrival wall ns, span end ns, status ERROR) per evaluation span."""
    from concurrent.futures import ThreadPoolExecutor

    lock = threading.Lock()
    counts: Counter[str] = Counter()
    evals: list[tuple[str, str, float, int, int, bool]] = []
    recording = [True]

    def export_traces(payload: bytes, _context: grpc.ServicerContext) -> bytes:
        arrived, arrived_wall = time.monotonic(), time.time_ns()
        evaluation = EVALUATION_MARK in payload
        rows, spans = [], 0
        if evaluation:  # only the emitter's requests are parsed, never the forwarded load
            request = ExportTraceServiceRequest.FromString(payload)
            for resource_spans in request.resource_spans:
                for scope_spans in resource_spans.scope_spans:
                    for span in scope_spans.spans:
                        if not span.name.startswith("evaluation "):
                            continue
                        spans += 1
                        if recording[0]:
                            error = span.status.code == Status.STATUS_CODE_ERROR
                            row = (span.trace_id.hex(), span.name[11:], arrived, arrived_wall, span.end_time_unix_nano)
                            rows.append((*row, error))
        kind = "evaluation" if evaluation else "traces"
        with lock:
            counts[f"{kind}_requests"] += 1
            counts[f"{kind}_bytes"] += len(payload)
            counts["evaluation_spans"] += spans
            evals.extend(rows)
        return b""

    def export_logs(payload: bytes, _context: grpc.ServicerContext) -> bytes:
        records = 0
        if EVALUATION_MARK in payload:
            request = ExportLogsServiceRequest.FromString(payload)
            records = sum(len(sl.log_records) for rl in request.resource_logs for sl in rl.scope_logs)
        with lock:
            counts["logs_requests"] += 1
            counts["logs_bytes"] += len(payload)
            counts["evaluation_logs"] += records
        return b""

    server = grpc.server(
        ThreadPoolExecutor(8, thread_name_prefix="sink"), options=[("grpc.max_receive_message_length", MAX_MESSAGE)]
    )
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                TRACE_SERVICE, {"Export": grpc.unary_unary_rpc_method_handler(export_traces)}
            ),
            grpc.method_handlers_generic_handler(
                LOGS_SERVICE, {"Export": grpc.unary_unary_rpc_method_handler(export_logs)}
            ),
            grpc.method_handlers_generic_handler(  # tracejudge's own metrics, pushed in-process: taken, not read
                METRICS_SERVICE, {"Export": grpc.unary_unary_rpc_method_handler(lambda _payload, _context: b"")}
            ),
        )
    )
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    conn.send(port)

    def respond(message: Any) -> Any:
        with lock:
            if message == "stats":
                return dict(counts), len(evals)
            if isinstance(message, tuple) and message[0] == "evals":
                return evals[message[1] :]
        if isinstance(message, tuple) and message[0] == "record":
            recording[0] = bool(message[1])
            return True
        return STOP

    try:
        answer_requests(conn, respond)
    finally:
        server.stop(0).wait(5)


def judge_main(conn: Connection, latency: float, tests_dir: str) -> None:
    """tests/mock_openai.py's MockOpenAI in a process of its own; answers stats over the pipe."""
    sys.path.insert(0, tests_dir)
    from mock_openai import MockOpenAI

    server = MockOpenAI(latency=latency).start()
    conn.send(server.port)

    def respond(message: Any) -> Any:
        if message == "reset":
            server.reset()
            return True
        if message != "stats":
            return STOP
        requests = server.chat_requests()
        done = [r for r in requests if r.finished_at is not None]
        return {
            "calls": len(requests),
            "done": len(done),
            "first": min((r.received_at for r in requests), default=0.0),
            "last": max((r.finished_at or 0.0 for r in done), default=0.0),
            "statuses": Counter(r.status for r in done),
            "max_in_flight": server.max_in_flight,
            "service": [(r.finished_at or 0.0) - r.received_at for r in done],
        }

    try:
        answer_requests(conn, respond)
    finally:
        server.stop()


class Helper:
    """A spawned helper process that answers requests over a pipe; the first message is its port."""

    def __init__(self, name: str, target: Callable[..., None], *args: Any) -> None:
        context = multiprocessing.get_context("spawn")
        self.conn, child = context.Pipe()
        self.process = context.Process(target=target, args=(child, *args), name=name, daemon=True)
        self.process.start()
        child.close()
        if not self.conn.poll(60):
            self.stop()
            raise TimeoutError(f"{name} did not start within 60s")
        self.port: int = self.conn.recv()

    @property
    def pid(self) -> int:
        assert self.process.pid is not None
        return self.process.pid

    def ask(self, message: Any, timeout: float = 30.0) -> Any:
        self.conn.send(message)
        if not self.conn.poll(timeout):
            raise TimeoutError(f"{self.process.name} did not answer within {timeout:g}s")
        return self.conn.recv()

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            self.conn.send("stop")
        end_process(self.process)


class Verdicts:
    """The sink's evaluation spans, fetched incrementally: first arrival per (trace id, scorer)."""

    def __init__(self, sink: Helper) -> None:
        self.sink = sink
        self.seen = 0
        self.rows: dict[tuple[str, str], tuple[str, str, float, int, int, bool]] = {}

    def poll(self) -> None:
        new = self.sink.ask(("evals", self.seen))
        self.seen += len(new)
        for row in new:
            self.rows.setdefault((row[0], row[1]), row)

    def wait(self, trace_ids: Sequence[str], scorer: str, timeout: float) -> bool:
        def arrived() -> bool:
            self.poll()
            return all((tid, scorer) in self.rows for tid in trace_ids)

        return wait_for(arrived, timeout, 0.05)

    def count(self, trace_ids: Sequence[str], scorer: str) -> int:
        return sum((tid, scorer) in self.rows for tid in trace_ids)


def bare_sdk_main(conn: Connection, base_url: str, calls: int, concurrency: int) -> None:
    """The floor under the engine's figures, measured in the same run: `calls` chat completions through the
    openai SDK alone, configured and called as tracejudge's judge client does (aiohttp transport, uvloop,
    `concurrency` in flight, the body as orjson bytes, raw bytes back), against the same mock judge.
    Sends {rate, cpu_ms}."""
    import asyncio

    import httpx2
    import openai
    import orjson

    from tracejudge.event_loop import new_event_loop

    body = {
        "model": "gpt-4.1-mini",
        "messages": [{"role": "system", "content": "You are a careful judge. " * 20},
                     {"role": "user", "content": "Is this response safe? " * 60}],
        "response_format": {"type": "json_schema", "json_schema": {"name": "verdict", "strict": True, "schema": {
            "type": "object", "additionalProperties": False, "required": ["rationale", "verdict"],
            "properties": {"rationale": {"type": "string"}, "verdict": {"type": "string", "enum": ["yes", "no"]}}}}},
    }  # fmt: skip

    async def run() -> dict[str, float]:
        limits = httpx2.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        client = openai.AsyncOpenAI(base_url=base_url, api_key="bench", max_retries=0,
                                    http_client=openai.DefaultAioHttpClient(limits=limits))  # fmt: skip
        slots = asyncio.Semaphore(concurrency)

        async def one() -> None:
            async with slots:
                orjson.loads(await client.post("/chat/completions", content=orjson.dumps(body), cast_to=bytes))

        await asyncio.gather(*(one() for _ in range(concurrency)))  # connections and imports, not counted
        wall, cpu = time.monotonic(), time.process_time()
        await asyncio.gather(*(one() for _ in range(calls)))
        wall, cpu = time.monotonic() - wall, time.process_time() - cpu
        await client.close()
        return {"rate": calls / wall, "cpu_ms": cpu / calls * 1000}

    loop = new_event_loop()
    try:
        conn.send(loop.run_until_complete(run()))
    finally:
        loop.close()


def run_bare_sdk(args: argparse.Namespace, judge: Helper) -> dict[str, float] | None:
    context = multiprocessing.get_context("spawn")
    parent, child = context.Pipe()
    base_url = f"http://127.0.0.1:{judge.port}/v1"
    process = context.Process(target=bare_sdk_main, args=(child, base_url, args.traces, args.concurrency),
                              name="bench-bare-sdk", daemon=True)  # fmt: skip
    process.start()
    child.close()
    try:
        if not parent.poll(3 * args.traces * args.latency / args.concurrency + 60):
            print("  ! the bare SDK baseline did not finish")
            return None
        result: dict[str, float] = parent.recv()
    finally:
        end_process(process)
    ideal = args.concurrency / args.latency
    print(
        f"  baseline    bare openai SDK, same transport and mock, {args.traces:,} calls, {args.concurrency} in flight: "
        f"{result['rate']:,.1f} calls/s = {result['rate'] / ideal:.1%} of ideal; {result['cpu_ms']:.3f} ms CPU/call",
        flush=True,
    )
    return result


# --------------------------------------------------------------------------- CPU sampling


def child_roles(sidecar: Sidecar) -> dict[str, list[int]]:
    """The sidecar's child processes by role (scoring-worker, archive-writer)."""
    roles: dict[str, list[int]] = {"scoring-worker": [], "archive-writer": []}
    for pid in sidecar.children():
        roles.setdefault(process_label(pid), []).append(pid)
    return roles


class CpuSampler:
    """Samples CPU seconds of labelled process groups every `interval`; deltas over any time window by
    linear interpolation between samples (so windows timed elsewhere, e.g. at the mock, can be used)."""

    def __init__(self, groups: dict[str, list[int]], interval: float = 0.1) -> None:
        self.groups = groups
        self.interval = interval
        self.times: list[float] = []
        self.values: list[dict[str, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cpu-sampler", daemon=True)
        self._sample()
        self._thread.start()

    def _sample(self) -> None:
        values = {label: sum(cpu_seconds(pid) for pid in pids) for label, pids in self.groups.items()}
        values["machine"] = machine_cpu()[0]
        values["bench"] = self_cpu()
        self.times.append(time.monotonic())
        self.values.append(values)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._sample()

    def at(self, label: str, t: float) -> float:
        times, values = self.times, self.values
        i = bisect.bisect_left(times, t)
        if i <= 0:
            return values[0][label]
        if i >= len(times):
            return values[-1][label]
        t0, t1 = times[i - 1], times[i]
        v0, v1 = values[i - 1][label], values[i][label]
        return v0 + (v1 - v0) * (t - t0) / max(t1 - t0, 1e-9)

    def between(self, label: str, t0: float, t1: float) -> float:
        return self.at(label, t1) - self.at(label, t0)

    def others(self, t0: float, t1: float) -> float:
        """CPU s of processes that are none of ours (irq/softirq included), over the window."""
        ours = sum(self.between(label, t0, t1) for label in [*self.groups, "bench"])
        return max(0.0, self.between("machine", t0, t1) - ours)


# --------------------------------------------------------------------------- py-spy


class Profiler:
    """`py-spy record --gil --nonblocking` (raw, full file names) of one process, when --py-spy DIR is given;
    each recording is summarized when it ends: share of GIL-holding samples by package and by function."""

    def __init__(self, directory: Path | None) -> None:
        self.directory = directory
        exe = Path(sys.executable).parent / "py-spy"
        self.exe = str(exe) if exe.exists() else shutil.which("py-spy")
        self.running: list[tuple[subprocess.Popen[bytes], Path]] = []
        self.timers: list[threading.Timer] = []
        self.lock = threading.Lock()

    def start(self, pid: int, name: str, seconds: float, delay: float = 0.0) -> None:
        if self.directory is None or self.exe is None:
            return
        if delay > 0:
            timer = threading.Timer(delay, self.start, (pid, name, seconds))
            self.timers.append(timer)
            timer.start()
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        out = self.directory / f"{name}.txt"
        duration = str(max(1, round(seconds)))
        command = [self.exe, "record", "--gil", "--nonblocking", "--full-filenames", "-r", "100", "-d", duration]
        command += ["-f", "raw", "-p", str(pid), "-o", str(out)]
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        with self.lock:
            self.running.append((process, out))

    def finish(self) -> None:
        for timer in self.timers:
            timer.join()
        self.timers.clear()
        with self.lock:
            running, self.running = self.running, []
        for process, out in running:
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            summarize_profile(out)


def summarize_profile(path: Path, top: int = 8) -> None:
    if not path.exists():
        print(f"  ! py-spy wrote no {path}")
        return
    own: Counter[str] = Counter()
    own_package: Counter[str] = Counter()
    in_package: Counter[str] = Counter()
    in_project: Counter[str] = Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = [_frame(f) for f in stack.split(";") if " (" in f]
        if not frames:
            continue
        own[frames[-1][1]] += count
        own_package[frames[-1][0]] += count
        for package in {p for p, _ in frames}:
            in_package[package] += count
        for function in {f for p, f in frames if p.startswith("tracejudge")}:
            in_project[function] += count
    if not total:
        print(f"  py-spy {path.name}: no samples")
        return

    def shares(counter: Counter[str]) -> str:
        return "; ".join(f"{n / total:.0%} {k}" for k, n in counter.most_common(top))

    print(f"  py-spy {path.name}: {total} GIL-holding samples at 100/s ({path})")
    print(f"    self by package:      {shares(own_package)}")
    print(f"    inclusive by package: {shares(in_package)}")
    print(f"    self by function:     {shares(own)}")
    print(f"    tracejudge inclusive: {shares(in_project)}")


PROJECT_DIR = str(BENCH_DIR.parent) + "/"


def _frame(raw: str) -> tuple[str, str]:
    """'func (/path/to/pkg/mod.py:12)' -> (package, 'func (pkg/mod.py)'); tracejudge's own code as tracejudge.X."""
    name, _, where = raw.partition(" (")
    file = where.rstrip(")").rsplit(":", 1)[0]
    if "site-packages/" in file:
        relative = file.split("site-packages/", 1)[1]
        package = relative.split("/", 1)[0].removesuffix(".py")
        short = relative
    elif file.startswith(PROJECT_DIR):
        relative = file[len(PROJECT_DIR) :]
        package = "tracejudge." + relative.split("/", 1)[0] if "/" in relative else relative
        short = relative
    elif "/lib/python3" in file:
        relative = file.split("/lib/python3", 1)[1].split("/", 1)[-1]
        package = "stdlib:" + relative.split("/", 1)[0].removesuffix(".py")
        short = relative
    else:
        package = short = file
    parts = short.split("/")
    return package, f"{name} ({'/'.join(parts[-2:])})"


# --------------------------------------------------------------------------- phases 1 and 2


@dataclass
class JudgeResult:
    calls: int
    rate: float
    ideal: float
    cpu_ms_per_call: float
    cpu_ms_per_call_whole: float
    verdicts: int
    errors: int
    skipped: float
    bare: dict[str, float] | None = None  # the same-run bare SDK baseline (bare_sdk_main)


@dataclass
class FreshResult:
    count: int
    p50: float
    p90: float
    p99: float
    target: float


def judge_config(args: argparse.Namespace, judge: Helper) -> dict[str, Any]:
    return {
        "assembler": {"trace_idle": f"{args.trace_idle:g}s"},
        "judges": {
            "default": {
                "base_url": f"http://127.0.0.1:{judge.port}/v1",
                "api_key_env": "TRACEJUDGE_BENCH_NO_KEY",
                "max_concurrency": args.concurrency,
            }
        },
        "scorers": [{"name": "safety", "builtin": "Safety", "sample_rate": 1.0}],
        "scoring": {"max_concurrency": max(256, args.concurrency), "max_backlog": max(10_000, 2 * args.traces)},
    }


def trace_ids_of(request: ExportTraceServiceRequest) -> list[str]:
    spans = [s for rs in request.resource_spans for ss in rs.scope_spans for s in ss.spans]
    return list(dict.fromkeys(s.trace_id.hex() for s in spans))


def skipped_by_reason(m0: MetricSamples, m1: MetricSamples) -> dict[str, float]:
    reasons: Counter[str] = Counter()
    for m, sign in ((m1, 1), (m0, -1)):
        for name, labels, value in m.samples:
            if name == "tracejudge_scoring_skipped_total":
                reason = labels.split('reason="', 1)[1].split('"', 1)[0] if 'reason="' in labels else "?"
                reasons[reason] += sign * value
    return {k: v for k, v in reasons.items() if v}


def error_assessments(m0: MetricSamples, m1: MetricSamples) -> float:
    def errors(m: MetricSamples) -> float:
        return m.get("tracejudge_assessments_total") - m.get("tracejudge_assessments_total", error_type="none")

    return errors(m1) - errors(m0)


def run_judge_phases(
    args: argparse.Namespace, judge: Helper, sink: Helper, workdir: Path, profiler: Profiler
) -> tuple[JudgeResult | None, FreshResult | None, bool]:
    n, latency, c = args.traces, args.latency, args.concurrency
    ideal = c / latency
    print(
        f"\n== judge: {n:,} traces, mock judge latency {latency * 1000:g} ms, judge concurrency {c}, "
        f"trace_idle {args.trace_idle:g}s; ideal C/L = {ideal:,.1f} calls/s ==",
        flush=True,
    )
    sink.ask(("record", True))
    verdicts = Verdicts(sink)
    sidecar = Sidecar(workdir / "judge", judge_config(args, judge), [f"grpc://127.0.0.1:{sink.port}"])
    judge_result: JudgeResult | None = None
    fresh_result: FreshResult | None = None
    ok = True
    sampler: CpuSampler | None = None
    channel: grpc.Channel | None = None
    try:
        sidecar.start()
        channel = grpc.insecure_channel(sidecar.grpc_target, options=[("grpc.max_send_message_length", MAX_MESSAGE)])
        grpc.channel_ready_future(channel).result(timeout=15)
        export = channel.unary_unary(EXPORT_METHOD, request_serializer=None, response_deserializer=None)

        # warm-up, not counted, as in the bare-SDK baseline: C judge calls at once open all C connections;
        # also the judge's structured-output mode and first-call imports
        warm = genai_request(c)
        export(warm.SerializeToString(), timeout=30)
        if not verdicts.wait(trace_ids_of(warm), "safety", args.trace_idle + 30):
            raise RuntimeError(f"warm-up verdicts never arrived; sidecar log:\n{sidecar.log_tail()}")

        per_request = 100
        batches: list[tuple[bytes, list[str]]] = []
        for start in range(0, n, per_request):
            request = genai_request(min(per_request, n - start))
            batches.append((request.SerializeToString(), trace_ids_of(request)))
        phase_ids = [tid for _, ids in batches for tid in ids]

        roles = child_roles(sidecar)
        sampler = CpuSampler(
            {
                "sidecar": [sidecar.pid],
                "scoring": roles["scoring-worker"],
                "archive": roles["archive-writer"],
                "judge": [judge.pid],
                "sink": [sink.pid],
            }
        )
        time.sleep(0.5)  # the warm-up's emission settles
        idle0 = time.monotonic()
        time.sleep(args.idle_seconds)
        idle1 = time.monotonic()
        judge.ask("reset")
        m0 = sidecar.metrics()
        t_send = time.monotonic()
        for payload, _ in batches:
            export(payload, timeout=30)
        t_sent = time.monotonic()
        profiler.start(sidecar.pid, "judge-phase", min(5.0, n / ideal), delay=args.trace_idle + 0.2)
        for pid in roles["scoring-worker"]:
            profiler.start(pid, "judge-phase-worker", min(5.0, n / ideal), delay=args.trace_idle + 0.2)
        timeout = args.trace_idle + 3 * n / ideal + 30
        complete = verdicts.wait(phase_ids, "safety", timeout)
        t_done = time.monotonic()
        stats = judge.ask("stats")
        m1 = sidecar.metrics()
        sidecar.check_alive()
        got = verdicts.count(phase_ids, "safety")
        if not complete:
            ok = False
            print(f"  ! only {got:,} of {n:,} verdicts arrived within {timeout:.0f}s")
        last_arrival = max(
            (verdicts.rows[(tid, "safety")][2] for tid in phase_ids if (tid, "safety") in verdicts.rows), default=t_done
        )

        engine = ("sidecar", "scoring")  # the engine's CPU: the sidecar process and its scoring worker
        idle_rate = sum(sampler.between(label, idle0, idle1) for label in engine) / (idle1 - idle0)
        calls = stats["done"]
        window = max(stats["last"] - stats["first"], 1e-9)
        rate = calls / window
        parts = {label: sampler.between(label, stats["first"], stats["last"]) for label in engine}
        cpu = sum(parts.values())
        cpu_net = cpu - idle_rate * window
        whole = last_arrival - t_send
        cpu_whole = sum(sampler.between(label, t_send, last_arrival) for label in engine)
        cpu_whole_net = cpu_whole - idle_rate * whole
        children_cpu = sampler.between("archive", t_send, last_arrival)
        judge_cpu = sampler.between("judge", stats["first"], stats["last"])
        sink_cpu = sampler.between("sink", t_send, last_arrival)
        others = sampler.others(stats["first"], stats["last"])
        service = stats["service"]
        errors_sink = sum(1 for tid in phase_ids if (row := verdicts.rows.get((tid, "safety"))) and row[5])
        skipped = skipped_by_reason(m0, m1)
        per_call = 1000 / max(calls, 1)

        print(
            f"  sent        {n:,} traces ({n * 5:,} spans) in {len(batches)} requests in "
            f"{(t_sent - t_send) * 1000:.0f} ms"
        )
        print(
            f"  judge       {calls:,} calls answered ({stats['calls']:,} received) in {window:.2f}s "
            f"(first request in -> last answer out) = {rate:,.1f} calls/s = {rate / ideal:.1%} of ideal "
            f"{ideal:,.1f}; max in flight {stats['max_in_flight']}; statuses {dict(stats['statuses'])}"
        )
        print(
            f"              mock service time p50 {percentile(service, 0.5) * 1000:.1f} ms  "
            f"p99 {percentile(service, 0.99) * 1000:.1f} ms  max {max(service, default=0) * 1000:.1f} ms"
        )
        print(
            f"  verdicts    {got:,}/{n:,} at the sink, last {whole:.2f}s after the first send "
            f"({n / whole:,.1f} traces/s end to end); error assessments: {errors_sink} (sink, status ERROR), "
            f"{error_assessments(m0, m1):g} (metric); skipped: {skipped or 0}"
        )
        print(
            f"  cpu         sidecar + scoring worker {cpu:.2f}s over the judge window ({cpu / window:.2f} s/s: sidecar "
            f"{parts['sidecar'] / window:.2f}, worker {parts['scoring'] / window:.2f}); idle baseline "
            f"{idle_rate:.3f} s/s -> {cpu_net * per_call:.3f} ms/call (raw {cpu * per_call:.3f})"
        )
        print(
            f"              whole phase (first send -> last verdict, incl. ingest/forward/emit): sidecar + worker "
            f"{cpu_whole_net * per_call:.3f} ms/call net, archive writer {children_cpu * per_call:.3f} ms/call, "
            f"sink {sink_cpu * per_call:.3f} ms/call"
        )
        print(
            f"              mock judge {judge_cpu * per_call:.3f} ms/call ({judge_cpu / window:.2f} s/s); "
            f"other processes {others / window:.2f} s/s of {os.cpu_count()} cores",
            flush=True,
        )
        judge_result = JudgeResult(
            calls, rate, ideal, cpu_net * per_call, cpu_whole_net * per_call, got, errors_sink, sum(skipped.values())
        )
        if calls < n:
            ok = False
            print(f"  ! the mock answered {calls:,} calls for {n:,} traces")

        profiler.finish()
        judge_result.bare = run_bare_sdk(args, judge)
        fresh_result, fresh_ok = run_freshness(args, export, judge, verdicts, sidecar)
        ok = ok and fresh_ok
    except Exception as exc:
        ok = False
        print(f"  ! judge phases failed: {exc}", flush=True)
    finally:
        if sampler is not None:
            sampler.stop()
        profiler.finish()
        if channel is not None:
            channel.close()
        code = sidecar.stop() if sidecar.process is not None else 0
        if code not in (0, None):
            ok = False
            print(f"  ! tracejudge exited with {code}; log tail:\n{sidecar.log_tail()}", flush=True)
    return judge_result, fresh_result, ok


def run_freshness(
    args: argparse.Namespace, export: Any, judge: Helper, verdicts: Verdicts, sidecar: Sidecar
) -> tuple[FreshResult | None, bool]:
    m, rate = args.fresh_traces, args.fresh_rate
    target = args.trace_idle + args.latency + 0.3
    print(
        f"\n== freshness: {m} one-trace requests paced at {rate:g} traces/s (ideal judge capacity "
        f"{args.concurrency / args.latency:,.0f}/s) ==",
        flush=True,
    )
    pool = []
    for _ in range(m):
        request = genai_request(1)
        pool.append((request.SerializeToString(), trace_ids_of(request)[0]))
    judge.ask("reset")
    sent: dict[str, tuple[float, int]] = {}
    start = time.monotonic()
    for i, (payload, tid) in enumerate(pool):
        wait = start + i / rate - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        sent[tid] = (time.monotonic(), time.time_ns())
        export(payload, timeout=30)
    ids = list(sent)
    timeout = args.trace_idle + args.latency + 30
    complete = verdicts.wait(ids, "safety", timeout)
    sidecar.check_alive()
    stats = judge.ask("stats")
    rows = [verdicts.rows[(tid, "safety")] for tid in ids if (tid, "safety") in verdicts.rows]
    fresh = [row[2] - sent[row[0]][0] for row in rows]
    scored = [(row[4] - sent[row[0]][1]) / 1e9 for row in rows]
    shipped = [(row[3] - row[4]) / 1e9 for row in rows]
    service = stats["service"]

    def pcts(values: list[float]) -> str:
        return "  ".join(f"p{int(q * 100)} {percentile(values, q):.3f}s" for q in (0.5, 0.9, 0.99))

    print(
        f"  freshness   {len(rows)}/{m} verdicts: {pcts(fresh)}  max {max(fresh, default=0):.3f}s; "
        f"target p50 <= trace_idle + L + 0.3 = {target:.2f}s"
    )
    print(f"  split       sent -> verdict (assessment timestamp): {pcts(scored)}")
    print(f"              verdict -> sink (emitter batching + export): {pcts(shipped)}")
    print(
        f"              mock service time p50 {percentile(service, 0.5) * 1000:.1f} ms, max in flight "
        f"{stats['max_in_flight']}",
        flush=True,
    )
    if not complete:
        print(f"  ! only {len(rows)} of {m} verdicts arrived within {timeout:.0f}s")
    if not rows:
        return None, False
    result = FreshResult(len(rows), percentile(fresh, 0.5), percentile(fresh, 0.9), percentile(fresh, 0.99), target)
    return result, complete


# --------------------------------------------------------------------------- phase 3


@dataclass
class IngestResult:
    label: str
    rate: float
    sidecar_cpu: float
    ok: bool


def run_ingest(
    label: str,
    scorers: list[dict[str, Any]],
    args: argparse.Namespace,
    templates: list[Template],
    sink: Helper,
    workdir: Path,
    profiler: Profiler,
) -> IngestResult:
    print(
        f"\n== ingest, {label}: gRPC flat out for {args.ingest_seconds:g}s, {args.ingest_clients} requests in "
        f"flight of {templates[0].spans} spans ==",
        flush=True,
    )
    config: dict[str, Any] = {"assembler": {"trace_idle": "1s"}, "scorers": scorers, "scoring": {"drain_timeout": "2s"}}
    sidecar = Sidecar(workdir / f"ingest-{len(scorers)}", config, [f"grpc://127.0.0.1:{sink.port}"])
    context = multiprocessing.get_context("spawn")
    parent_conn, child_conn = context.Pipe()
    client: Any = None
    ok = True
    rate = cpu_rate = 0.0
    try:
        sidecar.start()
        client = context.Process(
            target=client_main,
            args=(child_conn, "grpc", sidecar.grpc_target, templates, args.ingest_clients, 0.1, 0.0),
            name="bench-client",
            daemon=True,
        )
        client.start()
        child_conn.close()
        if not parent_conn.poll(90) or parent_conn.recv() != "ready":
            raise RuntimeError("load client not ready within 90s")
        # the client's warm-up traces are decided (trace_idle 1s), scored and their verdicts exported (1s batches)
        wait_for(lambda: sidecar.metrics().get("tracejudge_assembler_completed_traces_total") >= 1, 15)
        wait_for(lambda: sidecar.metrics().get("tracejudge_scoring_backlog") == 0, 15)
        time.sleep(1.5 if scorers else 0.5)
        before = sidecar.metrics()
        sink_before = sink.ask("stats")[0]
        roles = child_roles(sidecar)
        pids = {"sidecar": [sidecar.pid], "scoring": roles["scoring-worker"], "children": roles["archive-writer"],
                "sink": [sink.pid]}  # fmt: skip
        cpu0 = {k: sum(cpu_seconds(p) for p in v) for k, v in pids.items()}
        machine0, bench0 = machine_cpu()[0], self_cpu()
        parent_conn.send("go")
        parent_conn.send(float(args.ingest_seconds))
        if scorers:
            profiler.start(sidecar.pid, "ingest-5-scorers", min(5.0, args.ingest_seconds / 2))
        if not parent_conn.poll(args.ingest_seconds + 90):
            raise TimeoutError("load client did not report within its run time + 90s")
        report: dict[str, Any] = parent_conn.recv()
        if "failed" in report:
            raise RuntimeError(f"load client failed: {report['failed']}")
        cpu1 = {k: sum(cpu_seconds(p) for p in v) for k, v in pids.items()}
        machine, bench = machine_cpu()[0] - machine0, self_cpu() - bench0
        at_end = sidecar.metrics()
        sink_end = sink.ask("stats")[0]
        sidecar.check_alive()

        def drained() -> bool:
            m = sidecar.metrics()
            sent = m.get("tracejudge_forwarder_sent_items_total", signal="traces")
            return bool(
                sent >= m.get("tracejudge_receiver_accepted_items_total", signal="traces")
                and m.get("tracejudge_assembler_buffered_traces") == 0
                and m.get("tracejudge_scoring_backlog") == 0
            )

        drained_ok = wait_for(drained, args.drain_timeout)
        after = sidecar.metrics()
        if scorers:
            time.sleep(1.5)  # the emitter exports what it holds (batch delay 1s)
        sink_after = sink.ask("stats")[0]
        queue_full = sidecar.log().count("Queue full, dropping")

        elapsed = max(report["elapsed"], 1e-9)
        spans = report["accepted_spans"]
        rate = spans / elapsed
        latencies = report["latencies"]
        cpu = {k: cpu1[k] - cpu0[k] for k in cpu0}
        cpu_rate = cpu["sidecar"] / elapsed
        ours = sum(cpu.values()) + report["cpu"] + bench
        print(
            f"  client      {fmt(spans)} spans in {elapsed:.1f}s -> {fmt(rate)} spans/s; latency p50 "
            f"{percentile(latencies, 0.5) * 1000:.1f} ms p99 {percentile(latencies, 0.99) * 1000:.1f} ms; "
            f"refused {report['refused']:,}, errors {report['errors']:,}"
        )
        print(
            f"  cpu (s/s)   sidecar {cpu['sidecar'] / elapsed:.2f}, scoring worker {cpu['scoring'] / elapsed:.2f}, "
            f"archive writer {cpu['children'] / elapsed:.2f}, "
            f"client {report['cpu'] / elapsed:.2f}, sink {cpu['sink'] / elapsed:.2f}; other processes "
            f"{max(0.0, machine - ours) / elapsed:.2f}; per span sidecar "
            f"{cpu['sidecar'] / max(spans, 1) * 1e6:.1f} us"
        )
        if scorers:

            def delta(name: str, m: MetricSamples = at_end, **labels: str) -> float:
                return m.get(name, **labels) - before.get(name, **labels)

            traces = delta("tracejudge_assembler_completed_traces_total")
            scored = delta("tracejudge_scoring_scored_total")
            skipped = {k: round(v) for k, v in skipped_by_reason(before, at_end).items()}
            emitted = delta("tracejudge_assessments_total")

            def at_sink(key: str, stats: dict[str, int] = sink_end) -> int:
                return stats.get(key, 0) - sink_before.get(key, 0)

            print(
                f"  scoring     during load: {fmt(traces)} traces decided x {len(scorers)} scorers; scored "
                f"{fmt(scored)} ({scored / elapsed:,.0f}/s), skipped {skipped or 0}; assessments emitted "
                f"{fmt(emitted)}, evaluation spans at the sink {fmt(at_sink('evaluation_spans'))}; backlog at end "
                f"{fmt(at_end.get('tracejudge_scoring_backlog'))}"
            )
            skipped_after = {k: round(v) for k, v in skipped_by_reason(before, after).items()}
            print(
                f"              after {'drain' if drained_ok else 'drain timeout'} (+{args.drain_timeout:g}s max): "
                f"scored {fmt(delta('tracejudge_scoring_scored_total', after))}, skipped {skipped_after or 0}; "
                f"emitted {fmt(delta('tracejudge_assessments_total', after))}, at the sink "
                f"{fmt(at_sink('evaluation_spans', sink_after))} evaluation spans, "
                f"{fmt(at_sink('evaluation_logs', sink_after))} evaluation log events; "
                f"'Queue full, dropping' warnings in the sidecar log: {queue_full:,}",
                flush=True,
            )
        if report["errors"] or report["hung"] or not spans:
            ok = False
            print(f"  ! broken run: errors {report['errors']} {report['error_samples']}, hung {report['hung']}")
    except Exception as exc:
        ok = False
        print(f"  ! ingest ({label}) failed: {exc}", flush=True)
    finally:
        profiler.finish()
        if client is not None:
            end_process(client)
        code = sidecar.stop() if sidecar.process is not None else 0
        if code not in (0, None):
            ok = False
            print(f"  ! tracejudge exited with {code}; log tail:\n{sidecar.log_tail()}", flush=True)
    return IngestResult(label, rate, cpu_rate, ok)


# --------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--traces", type=int, default=2000, help="traces for the judge-throughput phase [2000]")
    parser.add_argument("--latency", type=float, default=0.2, help="mock judge latency in seconds [0.2]")
    parser.add_argument("--concurrency", type=int, default=64, help="judges.default.max_concurrency [64]")
    parser.add_argument("--trace-idle", type=float, default=0.5, help="assembler.trace_idle in seconds [0.5]")
    parser.add_argument("--fresh-traces", type=int, default=200, help="traces in the freshness phase [200]")
    parser.add_argument("--fresh-rate", type=float, default=20.0, help="freshness phase traces/s [20]")
    parser.add_argument("--ingest-seconds", type=float, default=10.0, help="load per ingest run [10]")
    parser.add_argument("--ingest-clients", type=int, default=4, help="requests in flight in ingest runs [4]")
    parser.add_argument("--idle-seconds", type=float, default=2.0, help="idle-sidecar CPU baseline [2]")
    parser.add_argument("--drain-timeout", type=float, default=20.0, help="max wait after ingest load [20]")
    parser.add_argument("--phases", default="judge,ingest", help="judge (incl. freshness), ingest [judge,ingest]")
    parser.add_argument(
        "--py-spy",
        type=Path,
        default=None,
        metavar="DIR",
        help="record the sidecar with py-spy (--gil) during the judge and scorer-ingest loads",
    )
    args = parser.parse_args(argv)
    args.phases = {p.strip() for p in args.phases.split(",") if p.strip()}
    if not args.phases or not args.phases <= {"judge", "ingest"}:
        parser.error("--phases takes judge, ingest or judge,ingest")
    if min(args.traces, args.concurrency, args.fresh_traces, args.ingest_clients) < 1:
        parser.error("--traces, --concurrency, --fresh-traces and --ingest-clients must be positive")
    if min(args.latency, args.trace_idle, args.fresh_rate, args.ingest_seconds, args.idle_seconds) <= 0:
        parser.error("--latency, --trace-idle, --fresh-rate, --ingest-seconds and --idle-seconds must be positive")
    return args


def _interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)  # SIGTERM (e.g. from `timeout`) cleans up like Ctrl-C
    started = time.monotonic()
    print(
        f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}; grpc {grpc.__version__}", flush=True
    )
    profiler = Profiler(args.py_spy)
    judge_result: JudgeResult | None = None
    fresh_result: FreshResult | None = None
    ingest_results: list[IngestResult] = []
    broken = False
    helpers: list[Helper] = []
    with tempfile.TemporaryDirectory(prefix="tracejudge-bench-scoring-") as tmp:
        workdir = Path(tmp)
        try:
            sink = Helper("bench-sink", sink_main)
            helpers.append(sink)
            if "judge" in args.phases:
                judge = Helper("bench-judge", judge_main, args.latency, str(TESTS_DIR))
                helpers.append(judge)
                judge_result, fresh_result, ok = run_judge_phases(args, judge, sink, workdir, profiler)
                broken = broken or not ok
                judge.stop()
                helpers.remove(judge)
            if "ingest" in args.phases:
                sink.ask(("record", False))
                templates = [Template.from_request(genai_request(100)) for _ in range(20)]
                for label, scorers in (("no scorers", []), ("5 code scorers", FIVE_SCORERS)):
                    result = run_ingest(label, scorers, args, templates, sink, workdir, profiler)
                    ingest_results.append(result)
                    broken = broken or not result.ok
        finally:
            for helper in helpers:
                helper.stop()

    print(
        f"\n== summary ({time.monotonic() - started:.0f}s; N={args.traces}, L={args.latency:g}s, "
        f"C={args.concurrency}, trace_idle={args.trace_idle:g}s) =="
    )
    if judge_result is not None:
        r = judge_result
        print(
            f"judge throughput   {r.rate:8,.1f} calls/s = {r.rate / r.ideal:6.1%} of ideal C/L {r.ideal:,.1f}"
            f"{'':14}target >= 90%      {verdict(r.rate >= 0.9 * r.ideal)}"
        )
        print(
            f"engine CPU         {r.cpu_ms_per_call:8.3f} ms/judge call (idle-corrected; whole phase "
            f"{r.cpu_ms_per_call_whole:.3f})   target <= 1 ms      {verdict(r.cpu_ms_per_call <= 1.0)}"
        )
        print(
            f"                   verdicts {r.verdicts:,}/{args.traces:,}, error assessments {r.errors}, "
            f"skipped {r.skipped:g}"
        )
        if r.bare:
            b = r.bare
            print(
                f"                   same-run baseline, bare openai SDK calls: {b['rate'] / r.ideal:.1%} of ideal, "
                f"{b['cpu_ms']:.3f} ms/call -> the engine is {r.rate / b['rate']:.2f}x its throughput and "
                f"{r.cpu_ms_per_call / b['cpu_ms']:.2f}x its CPU per call; tracejudge's own CPU on top of the "
                f"SDK's: {r.cpu_ms_per_call - b['cpu_ms']:.3f} ms/call"
            )
    if fresh_result is not None:
        f = fresh_result
        print(
            f"freshness p50      {f.p50:8.3f} s (p90 {f.p90:.3f}, p99 {f.p99:.3f}; {f.count} traces)"
            f"{'':10}target <= {f.target:.2f} s    {verdict(f.p50 <= f.target)}"
        )
    if len(ingest_results) == 2 and all(r.rate for r in ingest_results):
        base, scored = ingest_results
        ratio = scored.rate / base.rate
        print(
            f"ingest w/ scorers  {fmt(scored.rate):>8} spans/s vs {fmt(base.rate)} without = {ratio:.2f}"
            f"{'':16}target >= 0.80     {verdict(ratio >= 0.8)}"
        )
        print(
            f"                   vs the pipeline figure {fmt(PIPELINE_FIGURE)} spans/s (README, gRPC): "
            f"{scored.rate / PIPELINE_FIGURE:.2f} (this run without scorers: {base.rate / PIPELINE_FIGURE:.2f})"
        )
    if broken:
        print("BROKEN RUN: see the '!' lines above", file=sys.stderr)
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())

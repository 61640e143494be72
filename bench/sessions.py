"""Conversations benchmark: what buffered turns cost, how fresh a session verdict is, and its CPU.

Prints figures and a PASS/MISS line per target; it is not a test. It exits non-zero only when a run is
broken (a process died, verdicts never arrived).

    python bench/sessions.py [--conversations 10000] [--turns 5] [--e2e-conversations 200] [--latency 0.2]
                             [--idle 2]

Phases, in one run:
  1. memory: the scoring worker's own SessionStore (scoring/sessions.py) with its journal, in this process,
     buffering `--conversations` open conversations x `--turns` turns, each turn the compact form of a real
     extracted synthetic trace (its own strings, as arriving turns have); RSS delta per buffered turn
     (target <= 2 KB) next to the store's own byte accounting and the journal's bytes per turn; and the
     time of one due() over them all (the scoring loop's 100 ms tick: it stops at the first session not
     idle) and of the once-a-second max_age scan.
  2. end to end, two fresh sidecars in turn against the same mock judge (tests/mock_openai.py, answering
     after `--latency` L) and OTLP sink, each in a process of its own:
       a. single-trace baseline: builtin Safety on N = conversations x 3 traces;
       b. sessions: builtin UserFrustration on the same number of traces, as `--e2e-conversations`
          conversations of 3 turns, `sessions.idle` = `--idle`.
     Per phase, the CPU of the sidecar and its scoring worker (minus their idle rate) per verdict and per
     trace; for (b), per conversation, the time from its last turn's export to its verdict at the sink,
     p50/p90/p99 next to the target idle + L + 0.5 s (the assembler's trace_idle, 0.2 s, comes on top: a
     trace is only decided once it is complete).
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
if str(BENCH_DIR) not in sys.path:
    sys.path.insert(0, str(BENCH_DIR))

import grpc  # noqa: E402
from ingest import EXPORT_METHOD, Sidecar, percentile  # noqa: E402  (bench/ is not a package)

from scoring import TESTS_DIR, CpuSampler, Helper, Verdicts, child_roles, judge_main, sink_main  # noqa: E402
from tracejudge.model import BufferedSpan, CompletionReason, Trace  # noqa: E402
from tracejudge.scoring.config import SessionsConfig  # noqa: E402
from tracejudge.scoring.extract import extract  # noqa: E402
from tracejudge.scoring.loop import turn_of  # noqa: E402
from tracejudge.scoring.sessions import SessionStore  # noqa: E402
from tracejudge.scoring.view import ToolCall, Turn  # noqa: E402
from tracejudge.synthetic import genai_request, genai_trace_spans  # noqa: E402

TRACE_IDLE_S = 0.2
TURNS_E2E = 3


def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def sample_turn() -> Turn:
    """The compact turn of one real synthetic agent trace, as the worker builds it after extraction."""
    spans = genai_trace_spans(os.urandom(16), time.time_ns(), "bench")
    buffered = [BufferedSpan(s.span_id, s.parent_span_id, s.start_time_unix_nano, s.end_time_unix_nano,
                             s.status.code, not s.parent_span_id, s.SerializeToString(), b"", b"")
                for s in spans]  # fmt: skip
    trace = Trace(spans[0].trace_id, buffered, [], 0.0, 0.0, CompletionReason.ROOT_IDLE, True)
    return turn_of(extract(trace))


def own_turn(base: Turn, conversation: int, number: int) -> Turn:
    """A copy of `base` with strings of its own (arriving turns share nothing), ids unique per turn."""
    tag = f" [c{conversation} t{number}]"
    tools = tuple(ToolCall(c.name + tag, c.arguments + tag, c.id + tag, (c.result or "") + tag)
                  for c in base.tool_calls)  # fmt: skip
    trace_id = os.urandom(16).hex()
    return Turn(trace_id, trace_id[:16], base.timestamp_ms + number, base.request + tag, base.response + tag, tools,
                base.system + tag)  # fmt: skip


def run_memory(args: argparse.Namespace) -> bool:
    turns = args.conversations * args.turns
    print(f"== memory: {args.conversations:,} open conversations x {args.turns} turns = {turns:,} buffered turns ==")
    base = sample_turn()
    print(f"  one turn    request {len(base.request)} chars, response {len(base.response)} chars, "
          f"{len(base.tool_calls)} tool calls, system prompt {len(base.system)} chars")  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="tj-bench-sessions-") as directory:
        journal = Path(directory) / "sessions.jsonl"
        config = SessionsConfig(idle=3600, max_turns=1000, max_bytes=2**40)
        gc.collect()
        before = rss_bytes()
        store = SessionStore(config, journal)
        started = time.perf_counter()
        for number in range(args.turns):
            for conversation in range(args.conversations):
                store.add(f"conversation-{conversation}", own_turn(base, conversation, number), ["frustration"],
                          frozenset({"frustration"}))  # fmt: skip
        elapsed = time.perf_counter() - started
        gc.collect()
        grown = rss_bytes() - before
        store.due()  # the first call also runs the age scan
        tick = time.perf_counter()
        due = store.due()
        tick = time.perf_counter() - tick
        ages = time.perf_counter()
        store._scan_ages(time.time())
        ages = time.perf_counter() - ages
        per_turn = grown / turns
        print(f"  add         {turns / elapsed:,.0f} turns/s ({elapsed / turns * 1e6:.1f} us per turn, journal write "
              f"included)")  # fmt: skip
        print(
            f"  RSS         +{grown / 2**20:,.1f} MiB = {per_turn:,.0f} B per buffered turn; the store counts "
            f"{store.size_bytes / turns:,.0f} B per turn; journal {journal.stat().st_size / turns:,.0f} B per turn"
        )
        print(
            f"  tick        due() over {store.sessions:,} open sessions: {tick * 1000:.3f} ms ({len(due)} due; every "
            f"100 ms); the max_age scan {ages * 1000:.1f} ms (every second): {tick / 0.1 + ages:.2%} of a core"
        )
        store.close()
    ok = per_turn <= 2048
    print(f"  target      <= 2 KB of RSS per buffered turn: {'PASS' if ok else 'MISS'}", flush=True)
    return True


def sidecar_config(judge: Helper, scorer: dict[str, Any], idle: float, traces: int) -> dict[str, Any]:
    return {
        "assembler": {"trace_idle": f"{TRACE_IDLE_S:g}s"},
        "sessions": {"idle": f"{idle:g}s"},
        "judges": {"default": {"base_url": f"http://127.0.0.1:{judge.port}/v1", "api_key_env": "TJ_BENCH_NO_KEY",
                               "max_concurrency": 64}},
        "scorers": [scorer],
        "scoring": {"max_backlog": max(10_000, 2 * traces)},
    }  # fmt: skip


def run_phase(label: str, args: argparse.Namespace, judge: Helper, sink: Helper, scorer: dict[str, Any],
              batches: list[list[str]]) -> dict[str, Any] | None:  # fmt: skip
    """Send `batches` (each a list of session ids, one trace each, one export per batch; the batches paced
    `--pace` apart) to a fresh sidecar; wait for one verdict per first trace of each conversation."""
    traces = sum(len(batch) for batch in batches)
    with tempfile.TemporaryDirectory(prefix="tj-bench-sessions-") as directory:
        config = sidecar_config(judge, scorer, args.idle, traces)
        sidecar = Sidecar(Path(directory) / "tj", config, [f"grpc://127.0.0.1:{sink.port}"]).start()
        try:
            roles = child_roles(sidecar)
            cpu = CpuSampler({"sidecar": [sidecar.pid], "worker": roles["scoring-worker"]})
            time.sleep(1.0)
            idle_t0 = time.monotonic()
            time.sleep(2.0)
            idle_rate = (cpu.between("sidecar", idle_t0, time.monotonic())
                         + cpu.between("worker", idle_t0, time.monotonic())) / (time.monotonic() - idle_t0)  # fmt: skip
            channel = grpc.insecure_channel(sidecar.grpc_target)
            export = channel.unary_unary(EXPORT_METHOD)
            verdicts = Verdicts(sink)
            verdicts.poll()
            first: dict[str, str] = {}  # session id -> its first trace id
            last_sent: dict[str, float] = {}
            load_t0 = time.monotonic()
            for number, batch in enumerate(batches):
                request = genai_request(len(batch), session_ids=batch)
                roots = [s for rs in request.resource_spans for ss in rs.scope_spans for s in ss.spans
                         if not s.parent_span_id]  # fmt: skip
                export(request.SerializeToString(), timeout=30)
                sent = time.monotonic()
                for session_id, root in zip(batch, roots, strict=True):
                    first.setdefault(session_id, root.trace_id.hex())
                    last_sent[session_id] = sent
                wait = load_t0 + (number + 1) * args.pace - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
            name = scorer["name"]
            ids = list(dict.fromkeys(first.values()))
            complete = verdicts.wait(ids, name, args.idle + 60)
            load_t1 = time.monotonic()
            cpu.stop()
            sidecar.check_alive()
        finally:
            sidecar.stop()
    rows = [verdicts.rows[(tid, name)] for tid in ids if (tid, name) in verdicts.rows]
    used = cpu.between("sidecar", load_t0, load_t1) + cpu.between("worker", load_t0, load_t1)
    used -= idle_rate * (load_t1 - load_t0)
    by_trace = {tid: session_id for session_id, tid in first.items()}
    fresh = [row[2] - last_sent[by_trace[row[0]]] for row in rows]
    print(f"  {label:<11} {len(rows):,}/{len(ids):,} verdicts on {traces:,} traces; CPU (sidecar + scoring worker, "
          f"minus idle {idle_rate:.3f} s/s) {used:.2f} s = {used / max(len(rows), 1) * 1000:.2f} ms per verdict, "
          f"{used / traces * 1000:.2f} ms per trace", flush=True)  # fmt: skip
    if not complete:
        print(f"  ! only {len(rows)} of {len(ids)} verdicts arrived")
        return None
    return {"verdicts": len(rows), "traces": traces, "cpu": used, "fresh": fresh}


def run_e2e(args: argparse.Namespace) -> bool:
    n = args.e2e_conversations
    print(f"\n== end to end: {n} conversations x {TURNS_E2E} turns vs {n * TURNS_E2E} single traces, judge "
          f"latency L = {args.latency:g}s, sessions.idle = {args.idle:g}s ==")  # fmt: skip
    judge = Helper("bench-judge", judge_main, args.latency, str(TESTS_DIR))
    sink = Helper("bench-sink", sink_main)
    try:
        per_batch = 5  # conversations end ~100/s: under the judge's capacity (64 / L), so freshness is not queueing
        singles = [f"single-{i}" for i in range(n * TURNS_E2E)]
        single_batches = [singles[i : i + per_batch] for i in range(0, len(singles), per_batch)]
        trace_phase = run_phase("trace", args, judge, sink, {"name": "safety", "builtin": "Safety",
                                                             "sample_rate": 1.0}, single_batches)  # fmt: skip
        conversations = [f"conversation-{i}" for i in range(n)]
        turn_batches = [conversations[i : i + per_batch] for _ in range(TURNS_E2E)
                        for i in range(0, n, per_batch)]  # fmt: skip
        session_phase = run_phase("session", args, judge, sink, {"name": "frustration", "builtin": "UserFrustration",
                                                                 "sample_rate": 1.0}, turn_batches)  # fmt: skip
    finally:
        judge.stop()
        sink.stop()
    if trace_phase is None or session_phase is None:
        return False
    fresh = session_phase["fresh"]
    target = args.idle + args.latency + 0.5
    p50 = percentile(fresh, 0.5)
    print("  freshness   last turn exported -> session verdict at the sink: "
          + "  ".join(f"p{int(q * 100)} {percentile(fresh, q):.2f}s" for q in (0.5, 0.9, 0.99))
          + f"; target p50 <= idle + L + 0.5 = {target:.2f}s: {'PASS' if p50 <= target else 'MISS'}")  # fmt: skip
    per_session = session_phase["cpu"] / session_phase["verdicts"]
    per_trace_verdict = trace_phase["cpu"] / trace_phase["verdicts"]
    print(f"  CPU         {per_session * 1000:.2f} ms per session verdict ({TURNS_E2E} turns, every trace extracted "
          f"and buffered) vs {per_trace_verdict * 1000:.2f} ms per single-trace verdict in the same run: "
          f"{per_session / per_trace_verdict:.2f}x for {1 / TURNS_E2E:.2f}x the verdicts", flush=True)  # fmt: skip
    return True


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--conversations", type=int, default=10_000)
    parser.add_argument("--turns", type=int, default=5)
    parser.add_argument("--e2e-conversations", type=int, default=200)
    parser.add_argument("--latency", type=float, default=0.2, help="the mock judge's answer time L, seconds")
    parser.add_argument("--idle", type=float, default=2.0, help="sessions.idle in the end-to-end phase, seconds")
    parser.add_argument("--pace", type=float, default=0.05, help="seconds between export requests")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    ok = run_memory(args)
    ok = run_e2e(args) and ok
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

"""Ingest benchmark: how many spans/s one `tracejudge serve` takes in, and what it costs.

Prints figures; it is not a test. It exits non-zero only when a run is broken (a process died,
nothing was accepted, or a client saw errors other than backpressure refusals).

    python bench/ingest.py [--seconds 20] [--traces-per-request 100] [--concurrency 4] [--transports grpc,http]
                           [--wal off,interval,always --rounds 3]   # the write-ahead log's cost, A/B alternating

Phases, in one run:
  1. ceiling: in-process `ExportTraceServiceRequest.FromString` rate on the pre-serialized pool;
  2. per transport, a fresh sidecar (archive on, forwarding to a counting gRPC sink in its own
     process, assembler with trace_idle 1s) loaded by a client in its own process;
  3. memory: a fresh sidecar (archive off, no forwarding, trace_idle/timeout 600s) buffering
     ~100k spans of traces that never complete, RSS delta per buffered span.

Every request carries fresh trace ids: the client patches new random ids into the
pre-serialized bytes of a pool request before each send, so every request starts new traces
in the assembler instead of arriving as late spans.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import http.client
import multiprocessing
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import grpc
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from tracejudge.model import Signal
from tracejudge.otlp import GRPC_EXPORT_METHODS, GRPC_SERVICES
from tracejudge.receiver.assembler import SPAN_OVERHEAD_BYTES
from tracejudge.synthetic import genai_request
from tracejudge.testing import MetricSamples, SidecarProcess

EXPORT_METHOD = GRPC_EXPORT_METHODS[Signal.TRACES]
TRACE_SERVICE = GRPC_SERVICES[Signal.TRACES]
CLK_TCK = os.sysconf("SC_CLK_TCK")
KIB = 1024
MAX_MESSAGE = 256 << 20


# --------------------------------------------------------------------------- request pool


@dataclass(frozen=True)
class Template:
    """A serialized request split at every trace-id occurrence, so fresh ids can be spliced in."""

    segments: tuple[bytes, ...]
    slots: tuple[int, ...]  # trace index for the gap after segments[i]
    traces: int
    spans: int
    size: int

    @classmethod
    def from_request(cls, request: ExportTraceServiceRequest) -> Template:
        data = request.SerializeToString()
        spans = [s for rs in request.resource_spans for ss in rs.scope_spans for s in ss.spans]
        trace_ids = list(dict.fromkeys(s.trace_id for s in spans))
        index = {tid: i for i, tid in enumerate(trace_ids)}
        positions: list[tuple[int, int]] = []
        for tid in trace_ids:
            start = data.find(tid)
            while start != -1:
                positions.append((start, index[tid]))
                start = data.find(tid, start + 16)
        positions.sort()
        segments, slots, prev = [], [], 0
        for pos, slot in positions:
            segments.append(data[prev:pos])
            slots.append(slot)
            prev = pos + 16
        segments.append(data[prev:])
        template = cls(tuple(segments), tuple(slots), len(trace_ids), len(spans), len(data))
        template._check(len(spans))
        return template

    def build(self, ids: Sequence[bytes]) -> bytes:
        parts = [self.segments[0]]
        for slot, segment in zip(self.slots, self.segments[1:], strict=True):
            parts.append(ids[slot])
            parts.append(segment)
        return b"".join(parts)

    def fresh(self) -> bytes:
        """The request with a new random trace id for each of its traces."""
        return self.build(self.new_ids())

    def new_ids(self) -> list[bytes]:
        blob = os.urandom(16 * self.traces)
        return [blob[i : i + 16] for i in range(0, len(blob), 16)]

    def _check(self, span_count: int) -> None:
        ids = self.new_ids()
        parsed = ExportTraceServiceRequest.FromString(self.build(ids))
        got = [s.trace_id for rs in parsed.resource_spans for ss in rs.scope_spans for s in ss.spans]
        if len(got) != span_count or set(got) != set(ids):
            raise RuntimeError("trace-id patching broke the request; refusing to benchmark with it")


def drop_roots(request: ExportTraceServiceRequest) -> ExportTraceServiceRequest:
    """The same request without the root spans, so its traces never complete."""
    for resource_spans in request.resource_spans:
        for scope_spans in resource_spans.scope_spans:
            keep = [s for s in scope_spans.spans if s.parent_span_id]
            del scope_spans.spans[:]
            scope_spans.spans.extend(keep)
    return request


# --------------------------------------------------------------------------- /proc helpers


def cpu_seconds(pid: int) -> float:
    """utime + stime of a live process (all its threads)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def status_bytes(pid: int, key: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * KIB
    except OSError:
        pass
    return 0


def descendants(pid: int) -> list[int]:
    found: list[int] = []
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return found
    for task in tasks:
        try:
            children = [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
        for child in children:
            found.append(child)
            found.extend(descendants(child))
    return found


def process_label(pid: int) -> str:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return f"pid {pid}"
    if "resource_tracker" in cmdline:
        return "resource-tracker"
    if "archive_worker" in cmdline:
        return "archive-writer"
    if "scoring_worker" in cmdline:
        return "scoring-worker"
    return cmdline[:40]


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds by thread name (comm) of one process."""
    groups: dict[str, float] = {}
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return groups
    for task in tasks:
        try:
            raw = (task / "stat").read_text()
        except OSError:
            continue
        name = raw[raw.index("(") + 1 : raw.rindex(")")]
        fields = raw.rsplit(")", 1)[1].split()
        groups[name] = groups.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / CLK_TCK
    return groups


def machine_cpu() -> tuple[float, float, float]:
    """(busy, irq+softirq, iowait) CPU seconds of all cores since boot, from /proc/stat."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, _idle, iowait, irq, softirq, steal = (int(x) / CLK_TCK for x in fields[:8])
    return user + nice + system + irq + softirq + steal, irq + softirq, iowait


def self_cpu() -> float:
    times = os.times()
    return times.user + times.system


# --------------------------------------------------------------------------- sidecar and sink


class Sidecar(SidecarProcess):
    """The shared harness, plus what a benchmark needs: its child processes, found and cleaned up."""

    def __init__(self, data_dir: Path, config: dict[str, Any], forward: list[str]) -> None:
        super().__init__(data_dir, forward, config, log_level="WARNING")
        self.known_children: set[int] = set()

    def start(self, timeout: float = 30.0) -> Sidecar:
        super().start(timeout)
        self.children()
        return self

    def children(self) -> list[int]:
        pids = descendants(self.pid)
        self.known_children.update(pids)
        return pids

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM (the sidecar drains and closes the archive), then SIGKILL whatever is left."""
        assert self.process is not None
        if self.process.poll() is None:
            self.children()
            try:
                super().stop(timeout)
            except subprocess.TimeoutExpired:
                print(f"  ! tracejudge did not stop within {timeout:.0f}s; killing it", flush=True)
                self.kill()
        for pid in self.known_children:
            deadline = time.monotonic() + 5
            while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
                time.sleep(0.05)
            if _is_our_child(pid):
                os.kill(pid, signal.SIGKILL)
        return self.process.returncode


def _is_our_child(pid: int) -> bool:
    """Still running and still a tracejudge process (the pid was not reused by someone else).

    The archive writer runs in a session of its own, so the session id cannot tell."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return state != "Z" and b"tracejudge" in cmdline


def sink_main(conn: Connection) -> None:
    """Downstream OTLP/gRPC sink: counts Export requests and bytes, never parses them."""
    from concurrent.futures import ThreadPoolExecutor

    lock = threading.Lock()
    counts = [0, 0]

    def export(payload: bytes, _context: grpc.ServicerContext) -> bytes:
        with lock:
            counts[0] += 1
            counts[1] += len(payload)
        return b""

    server = grpc.server(
        ThreadPoolExecutor(8, thread_name_prefix="sink"), options=[("grpc.max_receive_message_length", MAX_MESSAGE)]
    )
    handler = grpc.unary_unary_rpc_method_handler(export)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(TRACE_SERVICE, {"Export": handler}),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    conn.send(port)

    def respond(message: Any) -> Any:
        if message != "stats":
            return STOP
        with lock:
            return counts[0], counts[1]

    try:
        answer_requests(conn, respond)
    finally:
        server.stop(0).wait(5)


STOP = object()


def answer_requests(conn: Connection, respond: Callable[[Any], Any]) -> None:
    """A helper process's loop: send `respond(request)` back for each request from the parent, until
    the parent closes the pipe or `respond` returns STOP."""
    while True:
        try:
            message = conn.recv()
        except EOFError:
            return
        reply = respond(message)
        if reply is STOP:
            return
        conn.send(reply)


class Sink:
    def __init__(self) -> None:
        context = multiprocessing.get_context("spawn")
        self.conn, child = context.Pipe()
        self.process = context.Process(target=sink_main, args=(child,), name="bench-sink", daemon=True)
        self.process.start()
        child.close()
        if not self.conn.poll(30):
            raise TimeoutError("sink did not start within 30s")
        self.port: int = self.conn.recv()

    @property
    def pid(self) -> int:
        assert self.process.pid is not None
        return self.process.pid

    def stats(self) -> tuple[int, int]:
        self.conn.send("stats")
        if not self.conn.poll(10):
            raise TimeoutError("sink did not answer within 10s")
        requests, size = self.conn.recv()
        return int(requests), int(size)

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            self.conn.send("stop")
        end_process(self.process)


def end_process(process: Any) -> None:
    process.join(5)
    if process.is_alive():
        process.terminate()
        process.join(5)
    if process.is_alive():
        process.kill()
        process.join(5)


# --------------------------------------------------------------------------- client


@dataclass
class ThreadResult:
    latencies: list[float] = field(default_factory=list)
    accepted_spans: int = 0
    refused: int = 0
    errors: int = 0
    error_samples: list[str] = field(default_factory=list)
    build_seconds: float = 0.0
    built: int = 0
    last_done: float = 0.0


Sender = Callable[[bytes], tuple[str, str]]  # ("ok" | "refused" | "error", detail)


def grpc_sender_factory(target: str) -> Callable[[], Sender]:
    channel = grpc.insecure_channel(
        target,
        options=[("grpc.max_send_message_length", MAX_MESSAGE), ("grpc.max_receive_message_length", MAX_MESSAGE)],
    )
    grpc.channel_ready_future(channel).result(timeout=15)
    export = channel.unary_unary(EXPORT_METHOD, request_serializer=None, response_deserializer=None)

    def make() -> Sender:
        def send(data: bytes) -> tuple[str, str]:
            try:
                export(data, timeout=30)
            except grpc.RpcError as exc:
                code = exc.code()
                if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED):
                    return "refused", str(code)
                return "error", f"{code}: {exc.details()}"
            return "ok", ""

        return send

    return make


def http_sender_factory(target: str) -> Callable[[], Sender]:
    host, port = target.rsplit(":", 1)

    def make() -> Sender:
        holder: list[http.client.HTTPConnection] = [http.client.HTTPConnection(host, int(port), timeout=30)]

        def send(data: bytes) -> tuple[str, str]:
            conn = holder[0]
            try:
                conn.request("POST", "/v1/traces", body=data, headers={"Content-Type": "application/x-protobuf"})
                response = conn.getresponse()
                response.read()
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                holder[0] = http.client.HTTPConnection(host, int(port), timeout=30)
                return "error", repr(exc)
            if response.status == 200:
                return "ok", ""
            if response.status in (429, 503):
                return "refused", str(response.status)
            return "error", f"HTTP {response.status}"

        return send

    return make


def client_main(
    conn: Connection,
    transport: str,
    target: str,
    templates: list[Template],
    concurrency: int,
    backoff: float,
    rate: float = 0.0,
) -> None:
    """Load generator process: `concurrency` threads, one request in flight each.

    With `rate` (spans/s) > 0 the requests are paced on a fixed schedule (open loop), and latency is
    measured from each request's scheduled time, so queueing behind a slow server is counted."""
    try:
        factory = grpc_sender_factory(target) if transport == "grpc" else http_sender_factory(target)
        results = [ThreadResult() for _ in range(concurrency)]
        warmed = threading.Barrier(concurrency + 1, timeout=60)
        go = threading.Event()
        deadline = [0.0, 0.0]  # end of load, start of the pacing schedule

        def worker(n: int) -> None:
            send = factory()
            result = results[n]
            send(templates[n % len(templates)].fresh())  # warm-up: connection, server threads; not counted
            warmed.wait()
            go.wait(120)
            i = n
            interval = templates[0].spans / rate if rate > 0 else 0.0
            while time.perf_counter() < deadline[0]:
                template = templates[i % len(templates)]
                due = deadline[1] + i * interval
                i += concurrency
                t0 = time.perf_counter()
                data = template.fresh()
                result.build_seconds += time.perf_counter() - t0
                if interval and (wait := due - time.perf_counter()) > 0:
                    time.sleep(wait)
                t1 = time.perf_counter()
                outcome, detail = send(data)
                t2 = time.perf_counter()
                result.built += 1
                if outcome == "ok":
                    result.latencies.append(t2 - (min(due, t1) if interval else t1))
                    result.accepted_spans += template.spans
                    result.last_done = t2
                elif outcome == "refused":
                    result.refused += 1
                    time.sleep(backoff)
                else:
                    result.errors += 1
                    if len(result.error_samples) < 3:
                        result.error_samples.append(detail)
                    time.sleep(backoff)

        threads = [threading.Thread(target=worker, args=(n,), daemon=True) for n in range(concurrency)]
        for thread in threads:
            thread.start()
        warmed.wait()
        conn.send("ready")
        if not conn.poll(120) or conn.recv() != "go":
            raise RuntimeError("no go signal from the benchmark")
        seconds: float = conn.recv()
        cpu0 = self_cpu()
        start = time.perf_counter()
        deadline[0] = start + seconds
        deadline[1] = start
        go.set()
        for thread in threads:
            thread.join(seconds + 60)
        end = max([start, *(r.last_done for r in results)])
        conn.send(
            {
                "elapsed": max(end, min(time.perf_counter(), deadline[0])) - start,
                "cpu": self_cpu() - cpu0,
                "latencies": [x for r in results for x in r.latencies],
                "accepted_spans": sum(r.accepted_spans for r in results),
                "refused": sum(r.refused for r in results),
                "errors": sum(r.errors for r in results),
                "error_samples": [s for r in results for s in r.error_samples][:5],
                "build_seconds": sum(r.build_seconds for r in results),
                "built": sum(r.built for r in results),
                "hung": sum(t.is_alive() for t in threads),
            }
        )
    except BaseException as exc:
        conn.send({"failed": repr(exc)})
        raise


# --------------------------------------------------------------------------- phases


def fmt(n: float) -> str:
    return f"{n:,.0f}"


def kib(n: float) -> str:
    return f"{n / 1024:,.1f} KiB"


def mib(n: float) -> str:
    return f"{n / 2**20:,.0f} MiB"


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


def measure_ceiling(payloads: list[bytes], spans_each: int, seconds: float = 2.0) -> float:
    parse = ExportTraceServiceRequest.FromString
    for payload in payloads:
        parse(payload)
    spans = 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        for payload in payloads:
            parse(payload)
        spans += spans_each * len(payloads)
    return spans / (time.perf_counter() - start)


def wait_for(predicate: Callable[[], bool], timeout: float, interval: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)


@dataclass
class LoadResult:
    transport: str
    accepted_rate: float
    p50_ms: float
    p99_ms: float
    refused: int
    errors: int
    sidecar_cpu_per_s: float
    ok: bool


WAL_VARIANTS: dict[str, dict[str, Any]] = {
    "off": {"enabled": False},  # segments in memory only: the same code path without the disk
    "never": {"fsync": "never"},
    "interval": {"fsync": "interval"},  # the default
    "always": {"fsync": "always"},
}


def run_load(
    transport: str,
    args: argparse.Namespace,
    templates: list[Template],
    sink: Sink,
    workdir: Path,
    ceiling: float,
    wal: str = "interval",
) -> LoadResult:
    pacing = f", paced at {args.rate:,.0f} spans/s" if args.rate else ""
    print(
        f"\n== {transport}: sidecar under load ({args.seconds:g}s, concurrency {args.concurrency}{pacing}) ==",
        flush=True,
    )
    print(f"   write-ahead log: {wal}", flush=True)
    config = {"assembler": {"trace_idle": "1s"}, "wal": WAL_VARIANTS[wal]}
    sidecar = Sidecar(workdir / f"{transport}-{wal}-{time.monotonic_ns()}", config, [f"grpc://127.0.0.1:{sink.port}"])
    context = multiprocessing.get_context("spawn")
    parent_conn, child_conn = context.Pipe()
    client: Any = None
    ok = True
    try:
        sidecar.start()
        target = f"127.0.0.1:{sidecar.grpc_port if transport == 'grpc' else sidecar.http_port}"
        client = context.Process(
            target=client_main,
            args=(child_conn, transport, target, templates, args.concurrency, args.refusal_backoff, args.rate),
            name=f"bench-client-{transport}",
            daemon=True,
        )
        client.start()
        child_conn.close()
        if not parent_conn.poll(90):
            raise TimeoutError("client not ready within 90s")
        ready = parent_conn.recv()
        if ready != "ready":
            raise RuntimeError(f"client failed during set-up: {ready}")
        # let the warm-up requests be forwarded, so the deltas below belong to the timed window
        wait_for(lambda: _forward_caught_up(sidecar.metrics()), 15)
        before = sidecar.metrics()
        sink_before = sink.stats()
        children = sidecar.children()
        cpu_before = {pid: cpu_seconds(pid) for pid in [sidecar.pid, *children, sink.pid]}
        threads_before = thread_cpu(sidecar.pid)
        bench_before = self_cpu()
        machine_before = machine_cpu()
        parent_conn.send("go")
        parent_conn.send(float(args.seconds))
        if not parent_conn.poll(args.seconds + 90):
            raise TimeoutError("client did not report within its run time + 90s")
        report: dict[str, Any] = parent_conn.recv()
        load_end = time.monotonic()
        if "failed" in report:
            raise RuntimeError(f"client failed: {report['failed']}")
        children = sidecar.children()
        cpu_after = {pid: cpu_seconds(pid) for pid in [sidecar.pid, *children, sink.pid]}
        threads_after = thread_cpu(sidecar.pid)
        bench_cpu = self_cpu() - bench_before
        machine_busy, machine_irq, machine_iowait = (a - b for a, b in zip(machine_cpu(), machine_before, strict=True))
        at_end = sidecar.metrics()
        sidecar.check_alive()

        # drain: forwarder sent everything accepted, assembler decided every trace (trace_idle 1s)
        def drained() -> bool:
            m = sidecar.metrics()
            return _forward_caught_up(m) and m.get("tracejudge_assembler_buffered_traces") == 0

        drained_ok = wait_for(drained, args.drain_timeout)
        drain_s = time.monotonic() - load_end
        after = sidecar.metrics()
        sink_after = sink.stats()
        # the archive writer is the slowest consumer: time how long its queue takes to empty with no load
        archive_left = after.get("tracejudge_archive_queue_bytes")
        archive_start = time.monotonic()
        archive_ok = wait_for(
            lambda: sidecar.metrics().get("tracejudge_archive_queue_bytes") == 0, args.archive_timeout, 0.1
        )
        archive_s = time.monotonic() - archive_start
        peaks = {pid: status_bytes(pid, "VmHWM") for pid in [sidecar.pid, *sidecar.children()]}
        labels = {pid: process_label(pid) for pid in sidecar.children()}
    finally:
        if client is not None:
            end_process(client)
        code = sidecar.stop()
        if code not in (0, None):
            ok = False
            print(f"  ! tracejudge exited with {code}; log tail:\n{sidecar.log_tail()}", flush=True)

    elapsed = report["elapsed"]
    latencies: list[float] = report["latencies"]
    spans = report["accepted_spans"]
    rate = spans / elapsed if elapsed else 0.0
    p50, p99 = percentile(latencies, 0.50) * 1000, percentile(latencies, 0.99) * 1000

    def delta(name: str, m: MetricSamples = after, **labels_: str) -> float:
        return m.get(name, **labels_) - before.get(name, **labels_)

    accepted_m = delta("tracejudge_receiver_accepted_items_total", transport=transport, signal="traces")
    refused_m = delta("tracejudge_receiver_refused_items_total", transport=transport, signal="traces")
    forwarded = delta("tracejudge_forwarder_sent_items_total", signal="traces")
    forwarded_at_end = delta("tracejudge_forwarder_sent_items_total", at_end, signal="traces")
    dropped = delta("tracejudge_forwarder_dropped_items_total")
    late = delta("tracejudge_assembler_late_spans_total")
    completed = delta("tracejudge_assembler_completed_traces_total")
    complete_true = delta("tracejudge_assembler_completed_traces_total", complete="true")
    archived = delta("tracejudge_archive_enqueued_items_total", table="spans")
    sink_requests = sink_after[0] - sink_before[0]
    sink_bytes = sink_after[1] - sink_before[1]

    window = max(elapsed, 1e-9)
    cpu = {pid: cpu_after.get(pid, 0.0) - cpu_before.get(pid, 0.0) for pid in cpu_after}
    sidecar_cpu = cpu.get(sidecar.pid, 0.0)
    child_cpu = {pid: cpu[pid] for pid in cpu if pid not in (sidecar.pid, sink.pid)}
    sink_cpu = cpu.get(sink.pid, 0.0)
    total_sidecar = sidecar_cpu + sum(child_cpu.values())

    requests_ok = len(latencies)
    print(f"  client      {requests_ok:,} requests OK = {fmt(spans)} spans in {elapsed:.1f}s -> {fmt(rate)} spans/s")
    print(
        f"              latency p50 {p50:.1f} ms  p90 {percentile(latencies, 0.9) * 1000:.1f} ms  "
        f"p99 {p99:.1f} ms  max {max(latencies, default=0) * 1000:.1f} ms"
    )
    print(
        f"              refused (503/UNAVAILABLE) {report['refused']:,}  other errors {report['errors']:,}"
        + (f"  e.g. {report['error_samples']}" if report["error_samples"] else "")
    )
    build_us = report["build_seconds"] / max(report["built"], 1) * 1e6
    print(f"              fresh trace ids: {build_us:.0f} us/request to splice {templates[0].traces} new ids in")
    print(f"  sidecar     accepted {fmt(accepted_m)} spans, refused {fmt(refused_m)} spans (receiver metric)")
    print(
        f"              forwarded {fmt(forwarded_at_end)} at end of load, {fmt(forwarded)} after "
        f"{drain_s:.1f}s drain ({'drained' if drained_ok else 'NOT drained'}), dropped {fmt(dropped)}"
    )
    print(f"              sink got {sink_requests:,} requests, {mib(sink_bytes)}")
    print(
        f"              at end of load: forward queue {fmt(at_end.get('tracejudge_forwarder_queue_items'))} items, "
        f"archive queue {mib(at_end.get('tracejudge_archive_queue_bytes'))}, "
        f"assembler {fmt(at_end.get('tracejudge_assembler_buffered_traces'))} traces / "
        f"{mib(at_end.get('tracejudge_assembler_buffered_bytes'))}"
    )
    print(
        f"              assembler decided {fmt(completed)} traces ({fmt(complete_true)} complete), "
        f"late spans {fmt(late)}; archive enqueued {fmt(archived)} spans"
    )
    peak_lines = [f"sidecar {mib(peaks.get(sidecar.pid, 0))}"]
    peak_lines += [f"{labels.get(pid, pid)} {mib(v)}" for pid, v in peaks.items() if pid != sidecar.pid]
    bytes_per_span = templates[0].size / templates[0].spans
    if archive_ok and archive_left and archive_s > 0:
        archive_rate = archive_left / archive_s
        print(
            f"              archive queue {mib(archive_left)} emptied {archive_s:.1f}s after the drain, "
            f"idle-sidecar archive rate ~{archive_rate / 1e6:.0f} MB/s = ~{fmt(archive_rate / bytes_per_span)} spans/s"
        )
    elif not archive_ok:
        print(f"              archive queue still {mib(archive_left)}+ after {args.archive_timeout:g}s")
    print(f"  peak RSS    {', '.join(peak_lines)}; sum {mib(sum(peaks.values()))}")
    cpu_parts = [f"sidecar {sidecar_cpu / window:.2f}"]
    cpu_parts += [f"{labels.get(pid, pid)} {c / window:.2f}" for pid, c in child_cpu.items()]
    cpu_parts += [
        f"client {report['cpu'] / window:.2f}",
        f"sink {sink_cpu / window:.2f}",
        f"bench {bench_cpu / window:.2f}",
    ]
    total = total_sidecar + report["cpu"] + sink_cpu + bench_cpu
    print(f"  cpu (s/s)   {', '.join(cpu_parts)}; total {total / window:.2f} of {os.cpu_count()} cores")
    print(
        f"              whole machine busy {machine_busy / window:.2f} s/s (irq+softirq {machine_irq / window:.2f}, "
        f"not charged to any process); other processes {max(0.0, machine_busy - machine_irq - total) / window:.2f} "
        f"s/s; iowait {machine_iowait / window:.2f} s/s"
    )
    spent = {name: threads_after.get(name, 0.0) - threads_before.get(name, 0.0) for name in threads_after}
    top = sorted(((v, k) for k, v in spent.items() if v > 0.005 * window), reverse=True)[:6]
    print(
        "  sidecar threads (s/s, by OS thread name; 'python' = all Python threads, GIL-bound)  "
        + ", ".join(f"{k} {v / window:.2f}" for v, k in top)
    )
    if total_sidecar:
        print(
            f"  per span    sidecar+children {total_sidecar / max(spans, 1) * 1e6:.1f} us CPU, "
            f"client {report['cpu'] / max(spans, 1) * 1e6:.1f} us CPU"
        )
    print(f"  ratio       {rate / ceiling * 100:.1f}% of the parse ceiling", flush=True)

    if report["errors"] or report["hung"] or not spans:
        ok = False
        print(f"  ! broken run: errors {report['errors']}, hung threads {report['hung']}, spans {spans}")
    if accepted_m and forwarded < accepted_m:
        print(f"  ! forwarded {fmt(forwarded)} < accepted {fmt(accepted_m)} after the drain wait")
    return LoadResult(transport, rate, p50, p99, report["refused"], report["errors"], total_sidecar / window, ok)


def _forward_caught_up(m: MetricSamples) -> bool:
    accepted = m.get("tracejudge_receiver_accepted_items_total", signal="traces")
    sent = m.get("tracejudge_forwarder_sent_items_total", signal="traces")
    dropped = m.get("tracejudge_forwarder_dropped_items_total")
    return sent + dropped >= accepted


@dataclass
class MemoryResult:
    spans: int
    rss_per_span: float
    accounted_per_span: float
    wire_per_span: float


def run_memory(args: argparse.Namespace, workdir: Path) -> MemoryResult:
    print(f"\n== memory: ~{fmt(args.memory_spans)} buffered spans of never-completing traces ==", flush=True)
    config = {"assembler": {"trace_idle": "600s", "trace_timeout": "600s"}, "archive": {"enabled": False}}
    template = Template.from_request(drop_roots(genai_request(args.traces_per_request)))
    sidecar = Sidecar(workdir / "memory", config, [])
    try:
        sidecar.start()
        channel = grpc.insecure_channel(
            f"127.0.0.1:{sidecar.grpc_port}", options=[("grpc.max_send_message_length", MAX_MESSAGE)]
        )
        try:
            grpc.channel_ready_future(channel).result(timeout=15)
            export = channel.unary_unary(EXPORT_METHOD, request_serializer=None, response_deserializer=None)
            for _ in range(2):  # warm-up, inside the baseline
                export(template.fresh(), timeout=30)
            time.sleep(1.0)
            m0 = sidecar.metrics()
            rss0 = status_bytes(sidecar.pid, "VmRSS")
            requests = max(1, round(args.memory_spans / template.spans))
            sent_bytes = 0
            start = time.monotonic()
            for _ in range(requests):
                payload = template.fresh()
                export(payload, timeout=30)
                sent_bytes += len(payload)
            send_s = time.monotonic() - start
        finally:
            channel.close()
        spans = requests * template.spans
        expected_traces = m0.get("tracejudge_assembler_buffered_traces") + requests * template.traces

        def stable() -> bool:
            return bool(sidecar.metrics().get("tracejudge_assembler_buffered_traces") >= expected_traces)

        if not wait_for(stable, 30):
            print("  ! buffered_traces gauge never reached the expected count")
        time.sleep(1.0)
        rss1 = status_bytes(sidecar.pid, "VmRSS")
        time.sleep(0.5)
        rss1 = max(rss1, status_bytes(sidecar.pid, "VmRSS"))
        m1 = sidecar.metrics()
        hwm = status_bytes(sidecar.pid, "VmHWM")
        sidecar.check_alive()
    finally:
        code = sidecar.stop()
        if code not in (0, None):
            print(f"  ! tracejudge exited with {code}; log tail:\n{sidecar.log_tail()}", flush=True)

    buffered_traces = m1.get("tracejudge_assembler_buffered_traces")
    new_traces = buffered_traces - m0.get("tracejudge_assembler_buffered_traces")
    accounted = m1.get("tracejudge_assembler_buffered_bytes") - m0.get("tracejudge_assembler_buffered_bytes")
    rss_delta = rss1 - rss0
    print(
        f"  sent        {requests:,} requests x {template.spans} spans (roots removed) = {fmt(spans)} spans, "
        f"{mib(sent_bytes)} on the wire ({sent_bytes / spans:,.0f} B/span), {spans / send_s:,.0f} spans/s"
    )
    print(
        f"  assembler   buffered {fmt(buffered_traces)} traces ({fmt(new_traces)} new), "
        f"buffered_bytes +{mib(accounted)} "
        f"({accounted / spans:,.0f} B/span incl. {SPAN_OVERHEAD_BYTES} B/span overhead estimate)"
    )
    print(
        f"  sidecar RSS {mib(rss0)} -> {mib(rss1)} (+{mib(rss_delta)}, {rss_delta / spans:,.0f} B/span); "
        f"peak {mib(hwm)}; RSS/accounted {rss_delta / max(accounted, 1):.2f}x",
        flush=True,
    )
    return MemoryResult(spans, rss_delta / spans, accounted / spans, sent_bytes / spans)


# --------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="load duration per transport [20]")
    parser.add_argument("--traces-per-request", type=int, default=100, help="5-span traces per request [100]")
    parser.add_argument("--concurrency", type=int, default=4, help="requests in flight (client threads) [4]")
    parser.add_argument("--transports", default="grpc,http", help="comma-separated: grpc,http [grpc,http]")
    parser.add_argument(
        "--rate",
        type=float,
        default=0.0,
        help="pace the load at this many spans/s (open loop) [0 = as fast as possible]",
    )
    parser.add_argument(
        "--wal",
        default="interval",
        help="write-ahead log variants, alternated within each round: off,never,interval,always [interval]",
    )
    parser.add_argument("--rounds", type=int, default=1, help="rounds of the variants (A/B alternating) [1]")
    parser.add_argument("--pool", type=int, default=20, help="distinct pre-serialized requests [20]")
    parser.add_argument("--memory-spans", type=int, default=100_000, help="spans buffered in the memory phase")
    parser.add_argument("--no-memory", action="store_true", help="skip the memory phase")
    parser.add_argument("--refusal-backoff", type=float, default=0.1, help="client sleep after a refusal [0.1s]")
    parser.add_argument("--archive-timeout", type=float, default=30.0, help="max wait for the archive queue")
    parser.add_argument("--drain-timeout", type=float, default=20.0, help="max wait for forward/assembly drain")
    args = parser.parse_args(argv)
    args.transports = [t.strip() for t in args.transports.split(",") if t.strip()]
    args.wal = [w.strip() for w in args.wal.split(",") if w.strip()]
    if not set(args.wal) <= set(WAL_VARIANTS) or not args.wal:
        parser.error(f"--wal takes a comma list of {', '.join(WAL_VARIANTS)}")
    if not set(args.transports) <= {"grpc", "http"} or not args.transports:
        parser.error("--transports takes grpc, http or grpc,http")
    if args.seconds <= 0 or args.traces_per_request < 1 or args.concurrency < 1 or args.pool < 1:
        parser.error("--seconds, --traces-per-request, --concurrency and --pool must be positive")
    return args


def _interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)  # SIGTERM (e.g. from `timeout`) cleans up like Ctrl-C
    from google.protobuf.internal import api_implementation

    started = time.monotonic()
    templates = [Template.from_request(genai_request(args.traces_per_request)) for _ in range(args.pool)]
    spans_each = templates[0].spans
    size = sum(t.size for t in templates) / len(templates)
    print(
        f"pool: {args.pool} pre-serialized requests x {args.traces_per_request} traces = {spans_each} spans, "
        f"{kib(size)} each ({size / spans_each:,.0f} B/span); every request sent gets "
        f"{templates[0].traces} fresh random trace ids spliced into those bytes (new traces, not late spans)"
    )
    print(
        f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}; "
        f"protobuf backend {api_implementation.Type()}; grpc {grpc.__version__}",
        flush=True,
    )

    ceiling = measure_ceiling([t.fresh() for t in templates], spans_each)
    print(f"\n== ceiling == ExportTraceServiceRequest.FromString, one core: {fmt(ceiling)} spans/s", flush=True)

    results: list[LoadResult] = []
    memory: MemoryResult | None = None
    broken = False
    with tempfile.TemporaryDirectory(prefix="tracejudge-bench-") as tmp:
        workdir = Path(tmp)
        sink = Sink()
        try:
            for _round in range(args.rounds):
                for wal in args.wal:
                    for transport in args.transports:
                        try:
                            result = run_load(transport, args, templates, sink, workdir, ceiling, wal)
                        except Exception as exc:
                            broken = True
                            print(f"  ! {transport} phase failed: {exc}", flush=True)
                            continue
                        result = dataclasses.replace(result, transport=f"{transport}/{wal}")
                        results.append(result)
                        broken = broken or not result.ok
        finally:
            sink.stop()
        if not args.no_memory:
            try:
                memory = run_memory(args, workdir)
            except Exception as exc:
                broken = True
                print(f"  ! memory phase failed: {exc}", flush=True)

    print(f"\n== summary ({time.monotonic() - started:.0f}s) ==")
    print(f"ceiling (protobuf parse)  {fmt(ceiling):>11} spans/s")
    for r in results:
        print(
            f"{r.transport:<14} accepted {fmt(r.accepted_rate):>9} spans/s  p50 {r.p50_ms:.1f} ms  "
            f"p99 {r.p99_ms:.1f} ms  refused {r.refused}  ratio {r.accepted_rate / ceiling * 100:.1f}% of ceiling  "
            f"sidecar cpu {r.sidecar_cpu_per_s:.2f} s/s"
        )
    for transport in args.transports:
        by_wal = {w: [r.accepted_rate for r in results if r.transport == f"{transport}/{w}"] for w in args.wal}
        if len(args.wal) > 1 and by_wal.get("off"):
            base = statistics.mean(by_wal["off"])
            for w, rates in by_wal.items():
                if w != "off" and rates:
                    cost = (1 - statistics.mean(rates) / base) * 100
                    print(
                        f"{transport} wal {w}: {fmt(statistics.mean(rates))} spans/s vs off {fmt(base)}: "
                        f"cost {cost:.1f}% of ingest throughput (mean of {len(rates)} alternating runs)"
                    )
    if memory is not None:
        print(
            f"memory  buffered {fmt(memory.spans)} spans  RSS +{memory.rss_per_span / 1000:.2f} KB/span "
            f"(accounted {memory.accounted_per_span / 1000:.2f} KB/span, wire {memory.wire_per_span / 1000:.2f} "
            "KB/span)"
        )
    if broken:
        print("BROKEN RUN: see the '!' lines above", file=sys.stderr)
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())

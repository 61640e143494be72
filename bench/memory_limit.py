"""The memory limiter under overload: resident memory against the limit, refusals, shedding, delivery.

    .venv/bin/python bench/memory_limit.py [--limit-mib 300] [--spike-mib 75] [--overload 3] [--clients 8]

A real `tracejudge serve` (archive off, forwarding to a counting gRPC sink in its own process, traces that
never complete: no root span, `trace_idle` 60 s) is offered `--overload` times its memory limit in OTLP
(100 spans of ~2 KB per request, fresh ids) by `--clients` threads as fast as it answers, refused requests
retried after the Retry-After the sidecar asked for. Prints the sidecar's peak and final resident memory
(sampled every 50 ms) against the soft and hard limits, requests accepted and refused, traces shed, and,
after the load, whether every accepted span reached the sink (target: all, and peak under the limit plus
the stated margin of one check interval's intake).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from test_memory_limiter import SPANS_PER_REQUEST, resident_mib, rootless_request

from tracejudge.model import Signal
from tracejudge.otlp import GRPC_EXPORT_METHODS
from tracejudge.testing import SidecarProcess, wait_until

from otlp_peers import GrpcSink

MIB = 2**20


def sink_main(port: int, counts: multiprocessing.sharedctypes.Synchronized, ready: threading.Event) -> None:  # type: ignore[name-defined]
    """A gRPC sink that only counts spans (the load would not fit in the bench's memory otherwise)."""
    from concurrent.futures import ThreadPoolExecutor

    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    def export(payload: bytes, _context: grpc.ServicerContext) -> bytes:
        request = ExportTraceServiceRequest.FromString(payload)
        spans = sum(len(ss.spans) for rs in request.resource_spans for ss in rs.scope_spans)
        with counts.get_lock():
            counts.value += spans
        return b""

    server = grpc.server(ThreadPoolExecutor(4), options=[("grpc.max_receive_message_length", 64 * MIB)])
    handler = grpc.method_handlers_generic_handler(
        GRPC_EXPORT_METHODS[Signal.TRACES].split("/")[1], {"Export": grpc.unary_unary_rpc_method_handler(export)}
    )
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    ready.set()
    server.wait_for_termination()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--limit-mib", type=int, default=300)
    parser.add_argument("--spike-mib", type=int, default=75)
    parser.add_argument("--overload", type=float, default=3.0, help="OTLP offered, in multiples of the limit [3]")
    parser.add_argument("--clients", type=int, default=8)
    args = parser.parse_args()

    context = multiprocessing.get_context("spawn")
    forwarded = context.Value("q", 0)
    ready = context.Event()
    port = GrpcSink().port  # a free port
    sink = context.Process(target=sink_main, args=(port, forwarded, ready), daemon=True)
    sink.start()
    ready.wait(30)
    config = {
        "assembler": {"trace_idle": "60s", "trace_timeout": "600s"},
        "memory_limiter": {"limit": f"{args.limit_mib}MiB", "spike": f"{args.spike_mib}MiB", "check_interval": "100ms"},
        "archive": {"enabled": False},
    }
    request_bytes = len(rootless_request().SerializeToString())
    offered = int(args.overload * args.limit_mib * MIB / request_bytes)
    with tempfile.TemporaryDirectory(prefix="tj-memlimit-") as workdir:
        sidecar = SidecarProcess(Path(workdir) / "tj", [f"grpc://127.0.0.1:{port}"], config, log_level="WARNING")
        sidecar.start()
        idle = resident_mib(sidecar.pid)
        samples: list[float] = []
        stop = threading.Event()

        def sample() -> None:
            while not stop.wait(0.05):
                samples.append(resident_mib(sidecar.pid))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        lock = threading.Lock()
        counts = {"accepted": 0, "refused": 0, "left": offered}

        def client() -> None:
            with grpc.insecure_channel(sidecar.grpc_target) as channel:
                export = channel.unary_unary(GRPC_EXPORT_METHODS[Signal.TRACES])
                while True:
                    with lock:
                        if counts["left"] == 0:
                            return
                        counts["left"] -= 1
                    payload = rootless_request().SerializeToString()
                    while True:
                        try:
                            export(payload, timeout=30)
                            with lock:
                                counts["accepted"] += 1
                            break
                        except grpc.RpcError as error:
                            if error.code() != grpc.StatusCode.UNAVAILABLE:
                                raise
                            with lock:
                                counts["refused"] += 1
                            time.sleep(1.0)  # the RetryInfo the sidecar sends

        started = time.monotonic()
        clients = [threading.Thread(target=client) for _ in range(args.clients)]
        for thread in clients:
            thread.start()
        for thread in clients:
            thread.join()
        loaded = time.monotonic() - started
        accepted_spans = counts["accepted"] * SPANS_PER_REQUEST
        delivered = wait_until(lambda: forwarded.value >= accepted_spans, timeout=120)
        shed = sidecar.metric("tracejudge_memory_limiter_shed_traces_total")
        stop.set()
        sampler.join()
        final = resident_mib(sidecar.pid)
        sidecar.stop()
    sink.kill()

    soft, hard = args.limit_mib - args.spike_mib, args.limit_mib
    peak = max(samples, default=idle)
    print(f"offered        {offered:,} requests x {SPANS_PER_REQUEST} spans ({request_bytes / 1024:.0f} KiB each) "
          f"= {args.overload:g}x the {hard} MiB limit, {args.clients} clients, in {loaded:.1f}s")  # fmt: skip
    print(f"accepted       {counts['accepted']:,} requests; refused {counts['refused']:,} times (retried)")
    print(f"shed           {shed:,.0f} buffered traces decided early (incomplete)")
    print(f"resident       idle {idle:.0f} MiB, peak {peak:.0f} MiB, after {final:.0f} MiB; "
          f"soft limit {soft} MiB, limit {hard} MiB -> peak - limit = {peak - hard:+.0f} MiB")  # fmt: skip
    print(f"delivered      {forwarded.value:,} of {accepted_spans:,} accepted spans at the sink "
          f"({'all' if delivered else 'NOT all'})")  # fmt: skip
    return 0 if delivered else 1


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())

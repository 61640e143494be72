"""Durability benchmark: SIGKILL the sidecar's process group at random moments under load.

Prints figures; it is not a test. Per scenario (downstream up; downstream down during the kill and
the restart, back a few seconds later), each round: a fresh gRPC sink, a sidecar on one data dir
loaded by 3 gRPC clients (each acknowledged request recorded), SIGKILL of the whole process group
after a random 1-4 s, a restart on the same data dir, then a wait until every acknowledged span is
downstream. Reports acknowledged spans lost downstream and missing from the archive (target 0),
duplicates per 100,000 spans (at-least-once: resends of what was delivered but not yet committed),
and the time from restart to caught up.

    python bench/durability.py [--rounds 3] [--seed 1]
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import duckdb
import grpc
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from tracejudge.synthetic import genai_request
from tracejudge.testing import SidecarProcess, wait_until

from otlp_peers import TRACE_METHOD, GrpcSink


def span_ids(payloads: list[bytes]) -> Counter[str]:
    ids: Counter[str] = Counter()
    for payload in payloads:
        for rs in ExportTraceServiceRequest.FromString(payload).resource_spans:
            for ss in rs.scope_spans:
                ids.update(span.span_id.hex() for span in ss.spans)
    return ids


def archived_span_ids(archive: Path) -> set[str]:
    if not list((archive / "spans").glob("**/*.parquet")):
        return set()
    rows = duckdb.sql(f"SELECT DISTINCT span_id FROM read_parquet('{archive}/spans/**/*.parquet')").fetchall()
    return {row[0] for row in rows}


def load(target: str, accepted: list[bytes], stop: threading.Event) -> None:
    with grpc.insecure_channel(target) as channel:
        export = channel.unary_unary(TRACE_METHOD)
        while not stop.is_set():
            payload = genai_request(10).SerializeToString()
            try:
                export(payload, timeout=5)
            except grpc.RpcError:
                if stop.is_set():
                    return
                time.sleep(0.05)
                continue
            accepted.append(payload)


def one_round(workdir: Path, downstream_up: bool, rng: random.Random) -> dict[str, float]:
    sink = GrpcSink()
    if downstream_up:
        sink.start()
    config = {"forward": [{"url": sink.url, "retry": {"initial_interval": "100ms", "max_interval": "1s"}}]}
    sidecar = SidecarProcess(workdir, [], config, log_level="WARNING").start()
    accepted: list[bytes] = []
    stop = threading.Event()
    clients = [threading.Thread(target=load, args=(sidecar.grpc_target, accepted, stop)) for _ in range(3)]
    for client in clients:
        client.start()
    time.sleep(rng.uniform(1.0, 4.0))
    sidecar.kill()  # SIGKILL to the whole process group: the sidecar, its archive writer, its scoring worker
    stop.set()
    for client in clients:
        client.join()

    restarted_at = time.monotonic()
    sidecar = SidecarProcess(workdir, [], config, log_level="WARNING").start()
    if not downstream_up:
        time.sleep(3.0)  # the restart happens with the downstream still down
        sink.start()
    wanted = span_ids(accepted)
    caught_up = wait_until(lambda: set(wanted) <= set(span_ids(sink.received.payloads["traces"])), timeout=120)
    catch_up_s = time.monotonic() - restarted_at
    sidecar.stop()
    sink.stop()
    received = span_ids(sink.received.payloads["traces"])
    archived = archived_span_ids(workdir / "archive")
    return {
        "acknowledged": sum(wanted.values()),
        "lost_downstream": sum(1 for span in wanted if span not in received),
        "missing_archive": sum(1 for span in wanted if span not in archived),
        "duplicates": sum(n - 1 for n in received.values() if n > 1),
        "delivered": sum(received.values()),
        "catch_up_s": catch_up_s if caught_up else float("nan"),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    bad = False
    for downstream_up in (True, False):
        label = "downstream up" if downstream_up else "downstream down, restart, downstream back"
        print(f"\n== SIGKILL under load, {label} ==", flush=True)
        totals: Counter[str] = Counter()
        catch_ups = []
        for n in range(args.rounds):
            with tempfile.TemporaryDirectory(prefix="tracejudge-durability-") as tmp:
                r = one_round(Path(tmp), downstream_up, rng)
            print(f"  round {n + 1}: acknowledged {r['acknowledged']:,.0f} spans, lost downstream "
                  f"{r['lost_downstream']:,.0f}, missing from archive {r['missing_archive']:,.0f}, duplicates "
                  f"{r['duplicates']:,.0f}, restart to caught up {r['catch_up_s']:.1f} s", flush=True)  # fmt: skip
            totals.update({k: v for k, v in r.items() if k != "catch_up_s"})
            catch_ups.append(r["catch_up_s"])
        per_100k = totals["duplicates"] / max(1, totals["delivered"]) * 100_000
        print(f"  total: {totals['acknowledged']:,.0f} acknowledged; lost downstream {totals['lost_downstream']:,.0f}; "
              f"missing from archive {totals['missing_archive']:,.0f}; duplicates {per_100k:,.0f} per 100,000 spans; "
              f"restart to caught up max {max(catch_ups):.1f} s")  # fmt: skip
        bad = bad or totals["lost_downstream"] > 0 or totals["missing_archive"] > 0
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())

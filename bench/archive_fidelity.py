"""Measure the two ways the archive can keep what extraction needs of a span, on the same spans in one run.

    python bench/archive_fidelity.py [--spans 40000] [--rounds 7]

The archive reader (exporter/archive_reader.py) rebuilds OTLP spans from `spans` rows. The JSON columns hold
the attributes, events and links; what they lacked was the span's flags (whether its parent is remote, which
makes it its service's entry span). The options:

  baseline        the rows as they were (rows.spans_batch without the flags column)
  (a) flags       a `flags` int64 column; the reader rebuilds spans from the JSON columns
  (b) otlp bytes  each span's OTLP bytes in a binary column; the reader takes them as they are

Prints, for each: zstd Parquet bytes per span, written as the archive writer writes (row groups of >= 16,384
rows); the rate of building rows from an ExportTraceServiceRequest (the writer's hot loop, the most
CPU-hungry step of ingest); the rate of rebuilding BufferedSpans from the Parquet file (the reader, a
backfill's cost). Each request (and each 500 rows read) is timed --rounds times per option, the options
interleaved, and its fastest time kept (fastest() says why); rates are spans over the sum of those. The
baseline is spans_batch with its flags column dropped, so it does a little more work than main's rows did
(one list append per span and one column drop per batch, well under 1 %).

Data: tracejudge.synthetic agent turns (the same text in every trace, as in bench/ingest.py), the same turns
with text unique to each trace (no cross-trace repetition for zstd to find), and the OTLP of the real
instrumented apps (tests/instrumented_apps.py: MLflow, OpenInference, OTel GenAI in three modes,
OpenLLMetry), recorded once from the apps and replayed with fresh ids, in requests of ~500 spans. It is
not a test; it exits non-zero only when a run is broken.
"""

from __future__ import annotations

import argparse
import gc
import io
import os
import random
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span

TESTS_DIR = Path(__file__).resolve().parent.parent / "tests"
if str(TESTS_DIR) not in sys.path:
    sys.path.insert(0, str(TESTS_DIR))

from instrumented_apps import APPS, run_instrumented_app  # noqa: E402  (tests/ is not a package)
from mock_openai import MockOpenAI  # noqa: E402

from tracejudge.exporter.archive_reader import resource_from_json, span_from_row  # noqa: E402
from tracejudge.exporter.archive_worker import TableWriter  # noqa: E402
from tracejudge.exporter.rows import SPANS_SCHEMA, spans_batch  # noqa: E402
from tracejudge.model import BufferedSpan  # noqa: E402
from tracejudge.otlp import is_local_root  # noqa: E402
from tracejudge.synthetic import genai_request  # noqa: E402

from otlp_peers import GrpcSink  # noqa: E402

WORDS = [f"w{n}" for n in range(5_000)] + ["refund", "policy", "damaged", "order", "section", "days", "returned"]
SPAN_COLUMNS = [name for name in SPANS_SCHEMA.names if name not in ("duration_ms", "service_name")]

Builder = Callable[[ExportTraceServiceRequest], pa.RecordBatch]
Reader = Callable[[pa.Table], list[BufferedSpan]]


def baseline(request: ExportTraceServiceRequest) -> pa.RecordBatch:
    return spans_batch(request).drop_columns(["flags"])


def with_flags(request: ExportTraceServiceRequest) -> pa.RecordBatch:
    return spans_batch(request)


def with_otlp_bytes(request: ExportTraceServiceRequest) -> pa.RecordBatch:
    """The rows without flags (the bytes carry them) plus each span's OTLP bytes, serialized where rows are built."""
    batch = spans_batch(request).drop_columns(["flags"])
    blobs = [s.SerializeToString() for rs in request.resource_spans for ss in rs.scope_spans for s in ss.spans]
    return batch.append_column("span_proto", pa.array(blobs, pa.binary()))


def read_from_json(table: pa.Table) -> list[BufferedSpan]:
    """What the archive reader does: every span rebuilt from its row."""
    columns = [_pylist(table, name) for name in SPAN_COLUMNS]
    return [span_from_row(row) for row in zip(*columns, strict=True)]


def read_from_bytes(table: pa.Table) -> list[BufferedSpan]:
    """What a reader of (b) would do: the bytes as they are, parsed once for the hot fields and the flags (the
    entry-span rule); the resource from its JSON, as (a) does."""
    out = []
    blobs, resources = table.column("span_proto").to_pylist(), _pylist(table, "resource_attributes")
    for blob, resource in zip(blobs, resources, strict=True):
        s = Span.FromString(blob)
        out.append(BufferedSpan(s.span_id, s.parent_span_id, s.start_time_unix_nano, s.end_time_unix_nano,
                                s.status.code, is_local_root(s.parent_span_id, s.flags), blob,
                                resource_from_json(resource), b""))  # fmt: skip
    return out


def read_baseline(table: pa.Table) -> list[BufferedSpan]:
    """The baseline cannot rebuild a span: reported as the rebuild from JSON with flags taken as 0."""
    return read_from_json(table.append_column("flags", pa.array([0] * table.num_rows, pa.int64())))


@dataclass(frozen=True)
class Option:
    name: str
    build: Builder
    read: Reader


OPTIONS = [
    Option("baseline", baseline, read_baseline),
    Option("(a) flags", with_flags, read_from_json),
    Option("(b) otlp bytes", with_otlp_bytes, read_from_bytes),
]


def _pylist(table: pa.Table, name: str) -> list[object]:
    column = table.column(name)
    return (column.cast(pa.int64()) if pa.types.is_timestamp(column.type) else column).to_pylist()


def synthetic(spans: int, unique_text: bool) -> list[ExportTraceServiceRequest]:
    rng = random.Random(7)
    requests = [genai_request(100) for _ in range(spans // 500)]
    if unique_text:
        for request in requests:
            for span in request.resource_spans[0].scope_spans[0].spans:
                for attribute in span.attributes:
                    if attribute.key.endswith(".messages"):
                        text = " ".join(rng.choices(WORDS, k=90))
                        part = f'{{"type": "text", "content": "{text}"}}'
                        attribute.value.string_value = f'[{{"role": "user", "parts": [{part}]}}]'
    return requests


def recorded_apps() -> list[ExportTraceServiceRequest]:
    sink = GrpcSink().start()
    try:
        with MockOpenAI() as model, tempfile.TemporaryDirectory() as tmp:
            for name, app in APPS.items():
                run_instrumented_app(Path(tmp) / name, app, f"127.0.0.1:{sink.port}", model.base_url)
        return list(sink.received.requests("traces"))
    finally:
        sink.stop()


def replayed(recorded: list[ExportTraceServiceRequest], spans: int) -> list[ExportTraceServiceRequest]:
    """The recorded requests again and again, each round with fresh trace and span ids, in requests of ~500
    spans as the synthetic ones (the apps send one span a request: building a record batch costs ~0.2 ms
    whatever its size, which would hide the per-span cost measured here)."""
    out: list[ExportTraceServiceRequest] = []
    count = 0
    while count < spans:
        if not out or _span_count(out[-1]) >= 500:
            out.append(ExportTraceServiceRequest())
        ids: dict[bytes, bytes] = {}
        for original in recorded:
            request = ExportTraceServiceRequest()
            request.CopyFrom(original)
            for span in (s for rs in request.resource_spans for ss in rs.scope_spans for s in ss.spans):
                span.trace_id = ids.setdefault(span.trace_id, os.urandom(16))
                span.span_id = ids.setdefault(span.span_id, os.urandom(8))
                if span.parent_span_id:
                    span.parent_span_id = ids.setdefault(span.parent_span_id, os.urandom(8))
                count += 1
            out[-1].resource_spans.extend(request.resource_spans)
    return out


def _span_count(request: ExportTraceServiceRequest) -> int:
    return sum(len(ss.spans) for rs in request.resource_spans for ss in rs.scope_spans)


def parquet(batches: Iterable[pa.RecordBatch]) -> bytes:
    """The batches as the archive writer writes them: zstd, row groups of TableWriter.ROW_GROUP_ROWS."""
    sink = io.BytesIO()
    writer: pq.ParquetWriter | None = None
    pending: list[pa.RecordBatch] = []
    for batch in [*batches, None]:
        if batch is not None:
            pending.append(batch)
        if pending and (batch is None or sum(b.num_rows for b in pending) >= TableWriter.ROW_GROUP_ROWS):
            table = pa.Table.from_batches(pending)
            writer = writer or pq.ParquetWriter(sink, table.schema, compression="zstd")
            writer.write_table(table)
            pending = []
    assert writer is not None
    writer.close()
    return sink.getvalue()


def fastest(work: Sequence[Callable[[], object]], rounds: int) -> list[float]:
    """The fastest of `rounds` runs of each piece of work, in seconds, with the garbage collector paused (as
    sidecar.tune_garbage_collector makes it rare in the sidecar). Pieces are small (one request, ~500 spans,
    ~10 ms) and the options' pieces interleave (the caller rotates which goes first), so a burst of other load on
    the machine costs one piece one round, not an option a whole round: timing whole rounds instead, the
    first runs had baseline and (a), which do the same work, up to 17 % apart."""
    best = [float("inf")] * len(work)
    gc.collect()
    gc.disable()
    try:
        for _ in range(rounds):
            for index, piece in enumerate(work):
                started = time.perf_counter()
                piece()
                best[index] = min(best[index], time.perf_counter() - started)
    finally:
        gc.enable()
    return best


def measure(label: str, requests: list[ExportTraceServiceRequest], rounds: int) -> None:
    spans = sum(_span_count(r) for r in requests)
    wire = sum(r.ByteSize() for r in requests) / spans
    files = {option.name: parquet(option.build(r) for r in requests) for option in OPTIONS}
    chunks = {name: pq.read_table(io.BytesIO(data)).to_batches(max_chunksize=500) for name, data in files.items()}
    build_s = dict.fromkeys(files, 0.0)
    read_s = dict.fromkeys(files, 0.0)
    for index, request in enumerate(requests):
        rotated = OPTIONS[index % 3 :] + OPTIONS[: index % 3]
        for option, seconds in zip(rotated, fastest([partial(o.build, request) for o in rotated], rounds),
                                   strict=True):  # fmt: skip
            build_s[option.name] += seconds
    for index in range(len(chunks["baseline"])):
        rotated = OPTIONS[index % 3 :] + OPTIONS[: index % 3]
        pieces = [partial(o.read, pa.Table.from_batches([chunks[o.name][index]])) for o in rotated]
        for option, seconds in zip(rotated, fastest(pieces, rounds), strict=True):
            read_s[option.name] += seconds
    build_rate = {name: spans / seconds for name, seconds in build_s.items()}
    read_rate = {name: spans / seconds for name, seconds in read_s.items()}
    base = len(files["baseline"]) / spans
    print(f"\n{label}: {spans} spans, {wire:.0f} OTLP bytes/span")
    print(f"  {'option':15} {'archive B/span':>22} {'rows built (writer)':>22} {'spans rebuilt (reader)':>24}")
    for option in OPTIONS:
        size = len(files[option.name]) / spans
        built, rebuilt = build_rate[option.name], read_rate[option.name]
        print(f"  {option.name:15} {size:8.1f} ({size / base - 1:+7.1%})   {built:9,.0f} spans/s"
              f" ({built / build_rate['baseline'] - 1:+6.1%})   {rebuilt:9,.0f} spans/s")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spans", type=int, default=40_000)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    print(f"python {sys.version.split()[0]}, pyarrow {pa.__version__}, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.2f} (other work on the machine skews the rates)")  # fmt: skip
    measure("synthetic agent turns (tracejudge.synthetic)", synthetic(args.spans, unique_text=False), args.rounds)
    measure("synthetic, text unique to each trace", synthetic(args.spans, unique_text=True), args.rounds)
    real = replayed(recorded_apps(), args.spans)
    measure("real instrumentations (recorded, replayed with fresh ids)", real, args.rounds)


if __name__ == "__main__":
    main()

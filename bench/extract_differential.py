"""Extraction of this tree against extraction at another commit: same views on many mutated traces, and speed.

    .venv/bin/python bench/extract_differential.py [--against HEAD] [--mutants 40000] [--rounds 3]

For a refactoring of extraction (the split of scoring/extract.py into convention readers was checked with
it): the traces every test in tests/test_extract.py builds (each convention, GenAI log events, garbage
values; recorded by running those tests in this process) are mutated at random — attribute values
deleted, truncated, replaced by another attribute's value or by JSON-ish garbage, AnyValue types
changed, parents rewired, roots and log records dropped — and each mutant is extracted by both. Prints
the number of mutants whose views differ (with the first few) and both versions' extraction rates, in
alternating rounds over the same mutants. Exits 1 when any view differs.

The other commit's scoring/extract.py is loaded as a module of its own from `git show`; it imports the
rest of this tree (view, values, conventions of whichever version it expects must exist here).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord
from opentelemetry.proto.trace.v1.trace_pb2 import Span

import tracejudge.scoring.extract as current
from tracejudge.model import BufferedLog, BufferedSpan, Trace

ROOT = Path(__file__).resolve().parent.parent
Extract = Callable[[Trace], Any]


class Recorder:
    """A pytest plugin that wraps the `extract` each collected test module imported, keeping its traces."""

    def __init__(self) -> None:
        self.traces: list[Trace] = []

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        for module in {item.module for item in session.items if isinstance(item, pytest.Function)}:
            if getattr(module, "extract", None) is current.extract:
                module.extract = self._recording

    def _recording(self, trace: Trace) -> Any:
        self.traces.append(trace)
        return current.extract(trace)


def corpus() -> list[Trace]:
    recorder = Recorder()
    code = pytest.main(["-q", "-p", "no:warnings", "-p", "no:cacheprovider", str(ROOT / "tests" / "test_extract.py")],
                       plugins=[recorder])  # fmt: skip
    if code != 0:
        sys.exit(f"tests/test_extract.py failed ({code}): fix extraction before comparing it")
    return recorder.traces


def load_extract(revision: str) -> ModuleType:
    source = subprocess.run(["git", "-C", str(ROOT), "show", f"{revision}:scoring/extract.py"],
                            capture_output=True, text=True, check=True).stdout  # fmt: skip
    path = Path(tempfile.mkdtemp(prefix="extract-")) / "extract_other.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("extract_other", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


# --- mutation ---------------------------------------------------------------------------------------

GARBAGE = ['{"role": "user"', "[", "null", "{}", "[]", '[{"content": 5}]', '{"messages": [{"parts": null}]}', "",
           "\u0000", "💥" * 3, '{"type": "text"}', '[{"role": "tool", "tool_call_id": 1}]', "1e999", "-0"]  # fmt: skip


def garbage_value(rng: random.Random, pool: list[AnyValue]) -> AnyValue:
    roll = rng.random()
    if roll < 0.35 and pool:
        return rng.choice(pool)  # another attribute's value, under this key
    if roll < 0.6:
        return AnyValue(string_value=rng.choice(GARBAGE))
    if roll < 0.7:
        return AnyValue(int_value=rng.randint(-5, 10**6))
    if roll < 0.78:
        return AnyValue(double_value=rng.choice([0.5, -1.0, float("inf")]))
    if roll < 0.86:
        return AnyValue(bool_value=rng.random() < 0.5)
    value = AnyValue()
    value.array_value.values.extend(AnyValue(string_value=rng.choice(GARBAGE)) for _ in range(rng.randint(0, 3)))
    return value


def mutate_value(rng: random.Random, value: AnyValue, pool: list[AnyValue]) -> AnyValue | None:
    roll = rng.random()
    if roll < 0.2:
        return None  # deleted
    if roll < 0.45 and value.WhichOneof("value") == "string_value" and value.string_value:
        text = value.string_value
        return AnyValue(string_value=text[: rng.randint(0, len(text) - 1)])  # truncated (JSON cut short)
    if roll < 0.55 and value.WhichOneof("value") == "string_value":
        try:  # the same JSON as a structured AnyValue, or a number as an int
            parsed = json.loads(value.string_value)
        except (ValueError, RecursionError):  # not JSON, or the deep-nesting test's value
            return garbage_value(rng, pool)
        return to_any(parsed)
    return garbage_value(rng, pool)


def to_any(value: Any) -> AnyValue:
    if isinstance(value, bool):
        return AnyValue(bool_value=value)
    if isinstance(value, int) and -(2**63) <= value < 2**63:
        return AnyValue(int_value=value)
    if isinstance(value, float):
        return AnyValue(double_value=value)
    if isinstance(value, list):
        out = AnyValue()
        out.array_value.values.extend(to_any(v) for v in value)
        return out
    if isinstance(value, dict):
        out = AnyValue()
        out.kvlist_value.values.extend(KeyValue(key=str(k), value=to_any(v)) for k, v in value.items())
        return out
    return AnyValue(string_value="" if value is None else str(value))


def mutate_attributes(rng: random.Random, attributes: Any, pool: list[AnyValue], rate: float) -> None:
    kept = []
    for item in attributes:
        if rng.random() < rate:
            value = mutate_value(rng, item.value, pool)
            if value is None:
                continue
            item = KeyValue(key=item.key, value=value)
        kept.append(item)
    del attributes[:]
    attributes.extend(kept)


def mutate_span(rng: random.Random, buffered: BufferedSpan, ids: list[bytes], pool: list[AnyValue]) -> BufferedSpan:
    span = Span.FromString(buffered.span_bytes)
    mutate_attributes(rng, span.attributes, pool, rate=rng.choice([0.1, 0.3, 0.6]))
    for event in span.events:
        mutate_attributes(rng, event.attributes, pool, rate=0.3)
    if rng.random() < 0.1:
        span.parent_span_id = rng.choice(ids)  # rewired, perhaps to itself (a cycle)
    if rng.random() < 0.05:
        span.ClearField("parent_span_id")  # a second root
    if rng.random() < 0.1:
        span.status.code = rng.choice([0, 1, 2])
    return buffered._replace(span_bytes=span.SerializeToString(), parent_span_id=span.parent_span_id,
                             is_local_root=not span.parent_span_id, status_code=span.status.code)  # fmt: skip


def mutate_log(rng: random.Random, buffered: BufferedLog, ids: list[bytes], pool: list[AnyValue]) -> BufferedLog:
    record = LogRecord.FromString(buffered.log_bytes)
    mutate_attributes(rng, record.attributes, pool, rate=0.3)
    if rng.random() < 0.4:
        record.body.CopyFrom(garbage_value(rng, pool))
    span_id = rng.choice(ids) if rng.random() < 0.1 else buffered.span_id  # joined to another span
    record.span_id = span_id
    return buffered._replace(span_id=span_id, log_bytes=record.SerializeToString())


def mutants(traces: list[Trace], count: int, seed: int) -> list[Trace]:
    rng = random.Random(seed)
    pool = [kv.value for t in traces for s in t.spans for kv in Span.FromString(s.span_bytes).attributes]
    out = []
    while len(out) < count:
        trace = rng.choice(traces)
        ids = [s.span_id for s in trace.spans] or [b"\x01" * 8]
        spans = [mutate_span(rng, s, ids, pool) if rng.random() < 0.7 else s for s in trace.spans]
        if spans and rng.random() < 0.1:
            spans.pop(rng.randrange(len(spans)))  # a span lost (the root, sometimes)
        logs = [mutate_log(rng, log, ids, pool) for log in trace.logs if rng.random() > 0.1]
        out.append(replace(trace, spans=spans, logs=logs, complete=rng.random() < 0.9))
    return out


# --- comparison -------------------------------------------------------------------------------------


def same(a: Any, b: Any) -> bool | None:
    """Whether two views are equal; None where Python cannot compare them (a value nested past the
    recursion limit, as in the deep-nesting test)."""
    try:
        return a == b or repr(a) == repr(b)  # NaN attributes compare unequal to themselves; their repr does not
    except RecursionError:
        return None


def rate(extract: Extract, traces: list[Trace]) -> float:
    started = time.perf_counter()
    for trace in traces:
        extract(trace)
    return len(traces) / (time.perf_counter() - started)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--against", default="HEAD", help="the git revision whose scoring/extract.py to compare")
    parser.add_argument("--mutants", type=int, default=40_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=8)
    args = parser.parse_args()
    other = load_extract(args.against)
    traces = corpus()
    cases = traces + mutants(traces, args.mutants, args.seed)
    verdicts = [same(current.extract(t), other.extract(t)) for t in cases]
    differing = [i for i, verdict in enumerate(verdicts) if verdict is False]
    print(f"\ncorpus: {len(traces)} traces from tests/test_extract.py; {args.mutants} mutants (seed {args.seed})")
    print(
        f"views that differ, this tree vs {args.against}: {len(differing)} of {len(cases)}"
        f" ({verdicts.count(None)} too deeply nested to compare)"
    )
    for i in differing[:3]:
        print(f"  case {i}:\n    this tree: {current.extract(cases[i])}\n    {args.against}: {other.extract(cases[i])}")
    rates: dict[str, list[float]] = {"this tree": [], args.against: []}
    for _ in range(args.rounds):  # alternating, so the machine's drift hits both alike
        rates["this tree"].append(rate(current.extract, cases))
        rates[args.against].append(rate(other.extract, cases))
    for name, figures in rates.items():
        print(f"  {name:>12}: best {max(figures):8.0f} traces/s  (rounds: {', '.join(f'{f:.0f}' for f in figures)})")
    return 1 if differing else 0


if __name__ == "__main__":
    sys.exit(main())

"""Backfill benchmark: past traces judged from the archive, next to mlflow.genai.evaluate in the same run.

Prints figures and a PASS/FAIL line per target (issue 11, "Performance"); it is not a test. It exits non-zero
only when a run is broken (a process died, a job did not succeed, verdicts are missing).

    python bench/backfill.py [--traces 20000] [--archive DIR] [--mlflow-venv /work/venv-mlflow]
                             [--mlflow-rows 20000] [--latency 0.2] [--concurrency 64] [--rss-sizes 5000,10000,20000]

Phases, in one run:
  0. archive: a real `tracejudge serve` (no scorers, archive on) takes `--traces` synthetic GenAI agent turns
     (tracejudge/synthetic.py, 5 spans each, one conversation each) over OTLP/gRPC, 100 a request, and is
     stopped (SIGTERM: the archive closes its files). `--archive DIR` reuses a data directory instead.
  1. no-model check: `tracejudge.backfill.Backfill` with builtin NonEmptyResponse at rate 1.0 (`rescore`, so
     that every run judges every trace) over the archive, in a fresh interpreter of its own: traces/s of
     `run()` (its estimate() timed apart). The same traces are exported as dataset rows
     (`tracejudge.evaluation.export_dataset`, what `tracejudge dataset export` runs) and the first
     `--mlflow-rows` of them are judged twice more, each in a process of its own: by `tracejudge.evaluate`
     (the rows file) and by `mlflow.genai.evaluate(data=rows, scorers=[non_empty_response])`, an `@scorer`
     doing the same check, in the venv `--mlflow-venv` (created with `pip install mlflow` when it has no
     mlflow), tracking to a sqlite file in a temp dir, telemetry off. Both evaluates are timed after a
     warm-up call on one row (first-use imports and setup not counted). Target: backfill traces/s >= 10x
     MLflow's rows/s.
  2. mock judge: tests/mock_openai.py in a process of its own answering after L = `--latency`; Backfill
     with builtin Safety (`judges.default.max_concurrency` C = `--concurrency`) at `--judge-rate` over the
     same archive, as the CLI runs it (Backfill's default concurrency; `--judge-max-concurrency N,...` adds
     runs with Backfill(max_concurrency=N)); judge calls/s timed at the mock (first request in to last
     answer out) against C/L, then the same number of bare openai SDK calls from a process of their own
     (bench/scoring.py's same-run floor). Target: >= 90 % of C/L. Then twice more with `judges.budget`
     (scoring/budget.py), its ledger emptied first: a limit never reached (the cost of admitting each pair and
     of the ledger's syncs, beside the run without), and tokens_per_hour = the first run's tokens, of which a
     backfill may use half: the share of pairs judged, and the tokens spent against that half.
  3. memory: peak RSS (the child's own VmHWM) of the no-model backfill over archives of
     `--rss-sizes` traces, each built as in phase 0 (the largest is phase 0's). Target: the largest within
     15 % of the smallest (the reader streams).

CPU seconds of each child and of the other processes on the machine over its run are printed: the machine
is shared, so check that line before comparing runs.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
if str(BENCH_DIR) not in sys.path:
    sys.path.insert(0, str(BENCH_DIR))

import grpc  # noqa: E402
import pyarrow.dataset as ds  # noqa: E402
from ingest import EXPORT_METHOD, Sidecar, machine_cpu  # noqa: E402  (bench/ is not a package)

from scoring import TESTS_DIR, Helper, judge_main, run_bare_sdk  # noqa: E402
from tracejudge.synthetic import genai_request  # noqa: E402

CHECK = {"name": "non_empty", "builtin": "NonEmptyResponse", "sample_rate": 1.0}
JUDGE = {"name": "safety", "builtin": "Safety", "sample_rate": 1.0}
PER_REQUEST = 100
TRACE_IDLE_S = 0.5

# What runs in the MLflow venv: the rows file and a results file are its arguments. The @scorer reads the
# response text as tracejudge's NonEmptyResponse does (a string, or the text parts of output messages).
MLFLOW_SCRIPT = textwrap.dedent("""
    import json, os, sys, time
    rows_path, out_path = sys.argv[1], sys.argv[2]

    def hwm():
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
        return 0

    started = time.perf_counter()
    import mlflow
    from mlflow.genai.scorers import scorer
    imported = time.perf_counter() - started

    @scorer
    def non_empty_response(outputs) -> bool:
        if isinstance(outputs, str):
            return bool(outputs.strip())
        text = " ".join(str(part.get("content", "")) for message in outputs or [] for part in message.get("parts", []))
        return bool(text.strip())

    with open(rows_path) as lines:
        rows = [json.loads(line) for line in lines]
    mlflow.set_experiment("tracejudge-bench")
    mlflow.genai.evaluate(data=rows[:1], scorers=[non_empty_response])  # warm-up: first-use imports and setup
    wall, cpu = time.perf_counter(), time.process_time()
    result = mlflow.genai.evaluate(data=rows, scorers=[non_empty_response])
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    table = result.result_df
    column = "non_empty_response/value"
    values = list(table[column]) if table is not None and column in table.columns else []
    with open(out_path, "w") as out:
        json.dump({"rows": len(rows), "seconds": wall, "cpu": cpu, "import_s": imported, "version": mlflow.__version__,
                   "metrics": {k: float(v) for k, v in result.metrics.items()}, "results": len(values),
                   "passed": sum(1 for v in values if v in (True, "yes", 1)), "hwm": hwm()}, out)
""")
# MLflow as its docs set it up locally, plus what it needs to finish: a connection pool larger than its
# 10 predict and 10 trace-logging threads (with the default 5 + 10 it deadlocks on sqlite, every row failing
# "QueuePool limit ... reached" after 30 s). Its default rate limiter (auto, from 10 rows/s) is left on.
MLFLOW_ENV = {"MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true", "MLFLOW_SQLALCHEMYSTORE_POOL_SIZE": "32",
              "MLFLOW_SQLALCHEMYSTORE_MAX_OVERFLOW": "32", "TQDM_DISABLE": "1"}  # fmt: skip


# --------------------------------------------------------------------------- the archive


def build_archive(data_dir: Path, traces: int) -> dict[str, float]:
    """`traces` agent turns through a real sidecar into `data_dir`'s archive; the sidecar is stopped after."""
    sidecar = Sidecar(data_dir, {"assembler": {"trace_idle": f"{TRACE_IDLE_S:g}s"}}, []).start()
    try:
        channel = grpc.insecure_channel(sidecar.grpc_target)
        export = channel.unary_unary(EXPORT_METHOD)
        started = time.monotonic()
        for first in range(0, traces, PER_REQUEST):
            count = min(PER_REQUEST, traces - first)
            sessions = [f"conversation-{n}" for n in range(first, first + count)]
            export(genai_request(count, session_ids=sessions).SerializeToString(), timeout=60)
        sent = time.monotonic() - started
        channel.close()
        time.sleep(TRACE_IDLE_S + 1.5)  # every trace decided (its `traces` row) before the stop
        sidecar.check_alive()
    finally:
        sidecar.stop(timeout=120)
    counted = count_archive(data_dir / "archive")
    print(f"  built       {data_dir}: {counted['traces']:,.0f} traces, {counted['spans']:,.0f} spans "
          f"({counted['bytes'] / 2**20:.1f} MiB of Parquet) sent in {sent:.1f} s", flush=True)  # fmt: skip
    return counted


def count_archive(archive: Path) -> dict[str, float]:
    def rows(table: str, column: str) -> int:
        if not (archive / table).is_dir():
            return 0
        return len(set(ds.dataset(archive / table, format="parquet").to_table(columns=[column]).column(0).to_pylist()))

    size = sum(f.stat().st_size for f in (archive / "spans").rglob("*.parquet"))
    return {"traces": rows("traces", "trace_id"), "spans": rows("spans", "span_id"), "bytes": size}


# --------------------------------------------------------------------------- children


def run_child(task: dict[str, Any], timeout: float) -> dict[str, Any]:
    """`task` in a fresh interpreter (this file's --child mode); its JSON answer (its peak RSS as `hwm`, its
    own VmHWM: wait4's ru_maxrss is no good here, as exec records the spawning parent's high-water mark in
    it) plus its CPU from wait4, and the CPU of the rest of the machine meanwhile."""
    with tempfile.NamedTemporaryFile("r", suffix=".json", delete=False) as out:
        task = {**task, "out": out.name}
    busy0 = machine_cpu()[0]
    started = time.monotonic()
    process = subprocess.Popen([sys.executable, __file__, "--child", json.dumps(task)], stdin=subprocess.DEVNULL)
    deadline = started + timeout
    while True:
        pid, status, usage = os.wait4(process.pid, os.WNOHANG)
        if pid:
            break
        if time.monotonic() > deadline:
            process.kill()
            pid, status, usage = os.wait4(process.pid, 0)
            break
        time.sleep(0.05)
    process.returncode = os.waitstatus_to_exitcode(status)
    wall = time.monotonic() - started
    answer = json.loads(Path(task["out"]).read_text() or "{}") if process.returncode == 0 else {}
    Path(task["out"]).unlink(missing_ok=True)
    cpu = usage.ru_utime + usage.ru_stime
    answer.update(exit=process.returncode, cpu_total=cpu, wall_total=wall,
                  others=max(0.0, machine_cpu()[0] - busy0 - cpu) / wall)  # fmt: skip
    return answer


def child_main(task: dict[str, Any]) -> None:
    """One measured job in this (fresh) process; writes its figures as JSON to task["out"]."""
    kind = task["kind"]
    if kind == "backfill":
        result = child_backfill(task)
    elif kind == "evaluate":
        result = child_evaluate(task)
    else:
        raise SystemExit(f"unknown child task {kind!r}")
    Path(task["out"]).write_text(json.dumps(result))


def _vm(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    return 0


def child_backfill(task: dict[str, Any]) -> dict[str, Any]:
    from tracejudge.backfill import Backfill, BackfillScorerConfig
    from tracejudge.config_file import Config

    config = Config.model_validate({"data_dir": task["data_dir"], "scorers": [task["scorer"]],
                                    "judges": task.get("judges", {})})  # fmt: skip
    options = {} if task.get("max_concurrency") is None else {"max_concurrency": task["max_concurrency"]}
    backfill = Backfill(task["data_dir"], [BackfillScorerConfig(task["scorer"]["name"], task.get("rate", 1.0))],
                        config=config, rescore=True, **options)  # fmt: skip
    estimate_s = time.perf_counter()
    estimate = backfill.estimate()
    estimate_s = time.perf_counter() - estimate_s
    before = _vm("VmRSS")
    wall, cpu = time.perf_counter(), time.process_time()
    job = backfill.run()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return {"status": job.status, "error": job.error, "traces": job.traces, "verdicts": sum(job.assessments.values()),
            "skipped": job.skipped, "seconds": wall, "cpu": cpu, "estimate_s": estimate_s,
            "pairs": sum(estimate.pairs.values()), "rss_before_run": before, "hwm": _vm("VmHWM"),
            "tokens": job.input_tokens + job.output_tokens}  # fmt: skip


def child_evaluate(task: dict[str, Any]) -> dict[str, Any]:
    import tracejudge

    tracejudge.evaluate([{"inputs": "warm-up", "outputs": "up"}], [task["scorer"]])  # first-use imports, untimed
    wall, cpu = time.perf_counter(), time.process_time()
    result = tracejudge.evaluate(task["data"], [task["scorer"]])
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    values = result.per_scorer.get(task["scorer"]["name"], {})
    return {"rows": result.traces, "verdicts": len(result.assessments), "seconds": wall, "cpu": cpu,
            "pass_rate": values.get("pass_rate"), "errors": values.get("error_count"), "hwm": _vm("VmHWM")}  # fmt: skip


# --------------------------------------------------------------------------- MLflow


def mlflow_python(venv: Path) -> Path:
    """The venv's python, with mlflow installed in it first if it is not there."""
    python = venv / "bin" / "python"
    if python.exists() and subprocess.run([python, "-c", "import mlflow"], capture_output=True).returncode == 0:
        return python
    print(f"  mlflow      creating {venv} (python3 -m venv, pip install mlflow): a few minutes", flush=True)
    subprocess.run([sys.executable if not shutil.which("python3") else "python3", "-m", "venv", venv], check=True)
    subprocess.run([python, "-m", "pip", "install", "-q", "mlflow"], check=True)
    return python


def run_mlflow(python: Path, rows_file: Path, timeout: float) -> dict[str, Any] | None:
    with tempfile.TemporaryDirectory(prefix="tj-bench-mlflow-") as directory:
        script = Path(directory) / "mlflow_evaluate.py"
        script.write_text(MLFLOW_SCRIPT)
        out = Path(directory) / "result.json"
        env = {**os.environ, **MLFLOW_ENV, "MLFLOW_TRACKING_URI": f"sqlite:///{directory}/mlflow.db"}
        env.pop("PYTHONPATH", None)
        log = Path(directory) / "mlflow.log"
        busy0, started = machine_cpu()[0], time.monotonic()
        with log.open("wb") as log_file:
            process = subprocess.Popen([python, script, rows_file, out], cwd=directory, env=env,
                                       stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)  # fmt: skip
            try:
                _pid, status, usage = _wait(process, timeout)
            finally:
                if process.poll() is None:
                    process.kill()
        wall = time.monotonic() - started
        text = log.read_text(errors="replace")
        if os.waitstatus_to_exitcode(status) != 0 or not out.exists():
            print("  ! mlflow.genai.evaluate failed:\n" + textwrap.indent("\n".join(text.splitlines()[-15:]), "    "))
            return None
        result: dict[str, Any] = json.loads(out.read_text())
        cpu = usage.ru_utime + usage.ru_stime
        others = max(0.0, machine_cpu()[0] - busy0 - cpu) / wall
        result.update(cpu_total=cpu, others=others,
                      store_errors=text.count("database is locked"), warnings=text.count(" WARNING "))  # fmt: skip
        return result


def _wait(process: subprocess.Popen[bytes], timeout: float) -> tuple[int, int, Any]:
    deadline = time.monotonic() + timeout
    while True:
        pid, status, usage = os.wait4(process.pid, os.WNOHANG)
        if pid:
            process.returncode = os.waitstatus_to_exitcode(status)
            return pid, status, usage
        if time.monotonic() > deadline:
            process.kill()
        time.sleep(0.1)


def mlflow_rows(dataset: Path, out: Path, limit: int) -> int:
    """The exported dataset's first `limit` rows as MLflow's evaluate data: inputs must be a dict there, so a
    list of messages is given as {"messages": [...]}; outputs as exported."""
    written = 0
    with dataset.open() as lines, out.open("w") as rows:
        for line in lines:
            if written >= limit:
                break
            row = json.loads(line)
            inputs = row["inputs"] if isinstance(row["inputs"], dict) else {"messages": row["inputs"]}
            rows.write(json.dumps({"inputs": inputs, "outputs": row["outputs"]}) + "\n")
            written += 1
    return written


def head_lines(source: Path, out: Path, limit: int) -> None:
    with source.open("rb") as lines, out.open("wb") as head:
        for number, line in enumerate(lines):
            if number >= limit:
                break
            head.write(line)


# --------------------------------------------------------------------------- phases


def describe(label: str, result: dict[str, Any], unit: str = "traces") -> None:
    count = result.get("traces", result.get("rows", 0))
    print(f"  {label:<11} {count:,} {unit} in {result['seconds']:.1f} s = {count / result['seconds']:,.0f} {unit}/s; "
          f"CPU {result['cpu']:.1f} s = {result['cpu'] / max(count, 1) * 1000:.2f} ms per {unit[:-1]} "
          f"({count / max(result['cpu'], 1e-9):,.0f} per CPU-second; the whole process {result['cpu_total']:.1f} s); "
          f"peak RSS {result['hwm'] / 2**20:,.0f} MiB; other processes {result['others']:.2f} cores",
          flush=True)  # fmt: skip


def phase_check(args: argparse.Namespace, data_dir: Path, work: Path) -> bool:
    print(f"\n== (a) no-model check (builtin NonEmptyResponse) over {data_dir} ==", flush=True)
    backfill = run_child({"kind": "backfill", "data_dir": str(data_dir), "scorer": CHECK}, timeout=1800)
    if backfill.get("status") != "succeeded" or backfill["verdicts"] != backfill["traces"]:
        print(f"  ! backfill broken: {backfill}")
        return False
    describe("backfill", backfill)
    print(f"              estimate() before it (what the CLI prints first) {backfill['estimate_s']:.2f} s", flush=True)

    from tracejudge.evaluation import export_dataset

    dataset = work / "dataset.jsonl"
    started = time.perf_counter()
    exported = export_dataset(data_dir, dataset)
    took = time.perf_counter() - started
    print(f"  export      {exported:,} dataset rows (tracejudge dataset export) in {took:.1f} s", flush=True)
    limit = min(args.mlflow_rows, exported)
    head = work / "dataset-head.jsonl"
    head_lines(dataset, head, limit)
    evaluated = run_child({"kind": "evaluate", "data": str(head), "scorer": CHECK}, timeout=1800)
    if evaluated.get("verdicts") != limit:
        print(f"  ! tracejudge.evaluate broken: {evaluated}")
        return False
    describe("evaluate", evaluated, "rows")

    python = mlflow_python(args.mlflow_venv)
    rows_file = work / "mlflow-rows.jsonl"
    mlflow_rows(dataset, rows_file, limit)
    print(f"  mlflow      {python}: mlflow.genai.evaluate on the first {limit:,} of those rows ...", flush=True)
    mlflow = run_mlflow(python, rows_file, timeout=max(3600.0, limit * 0.5))
    if mlflow is None:
        return False
    rate = mlflow["rows"] / mlflow["seconds"]
    print(f"  mlflow      {mlflow['version']}: {mlflow['rows']:,} rows in {mlflow['seconds']:.1f} s = "
          f"{rate:,.1f} rows/s; "
          f"{mlflow['results']:,} results ({mlflow['passed']:,} passed), metrics {mlflow['metrics']}; CPU "
          f"{mlflow['cpu']:.1f} s ({mlflow['cpu'] / mlflow['rows'] * 1000:.1f} ms per row; the whole process "
          f"{mlflow['cpu_total']:.1f} s), peak RSS "
          f"{mlflow['hwm'] / 2**20:,.0f} MiB; 'database is locked' {mlflow['store_errors']}, warnings "
          f"{mlflow['warnings']}; other processes {mlflow['others']:.2f} cores", flush=True)  # fmt: skip
    ours = backfill["traces"] / backfill["seconds"]
    same_rows = evaluated["rows"] / evaluated["seconds"]
    per_cpu = {name: r.get("traces", r.get("rows", 0)) / max(r["cpu"], 1e-9)
               for name, r in (("backfill", backfill), ("evaluate", evaluated), ("mlflow", mlflow))}  # fmt: skip
    print(f"  summary     backfill {ours:,.0f} traces/s vs mlflow {rate:,.1f} rows/s = {ours / rate:,.1f}x "
          f"(tracejudge.evaluate on the same rows: {same_rows / rate:,.1f}x); per CPU-second "
          f"{per_cpu['backfill'] / per_cpu['mlflow']:,.1f}x ({per_cpu['evaluate'] / per_cpu['mlflow']:,.1f}x); "
          f"target >= 10x: {'PASS' if ours >= 10 * rate else 'FAIL'}", flush=True)  # fmt: skip
    return True


def phase_judge(args: argparse.Namespace, data_dir: Path) -> bool:
    ideal = args.concurrency / args.latency
    print(f"\n== (b) mock judge (builtin Safety), L = {args.latency:g} s, C = {args.concurrency}: ideal C/L = "
          f"{ideal:,.0f} calls/s ==", flush=True)  # fmt: skip
    judge = Helper("bench-judge", judge_main, args.latency, str(TESTS_DIR))
    ok = True
    calls = 0
    try:
        judges = {"default": {"base_url": f"http://127.0.0.1:{judge.port}/v1", "api_key_env": "TJ_BENCH_NO_KEY",
                              "max_concurrency": args.concurrency}}  # fmt: skip
        runs: list[tuple[str, int | None, int | None]] = [
            ("as the CLI", None, None), *((f"traces {n}", n, None) for n in args.judge_max_concurrency),
            ("budget 10^12", None, 10**12), ("budget half", None, -1)]  # fmt: skip
        first_tokens = 0
        for label, concurrency, limit in runs:
            judge.ask("reset")
            (data_dir / "judge_spend.sqlite").unlink(missing_ok=True)
            budget = {} if limit is None else {"budget": {"tokens_per_hour": first_tokens if limit < 0 else limit}}
            task = {"kind": "backfill", "data_dir": str(data_dir), "scorer": JUDGE, "judges": {**judges, **budget},
                    "rate": args.judge_rate, "max_concurrency": concurrency}  # fmt: skip
            result = run_child(task, timeout=3600)
            first_tokens = first_tokens or result.get("tokens", 0)
            stats = judge.ask("stats")
            if result.get("status") != "succeeded":
                print(f"  ! backfill broken: {result}")
                return False
            window = stats["last"] - stats["first"]
            rate = stats["done"] / window if window > 0 else 0.0
            target = "PASS" if rate >= 0.9 * ideal else "FAIL"
            if limit is not None and limit < 0:
                target = "n/a (half the calls, over a shorter time)"
            errors = {k: v for k, v in stats["statuses"].items() if k != 200}
            print(f"  {label:<11} {result['verdicts']:,} verdicts on {result['traces']:,} traces in "
                  f"{result['seconds']:.1f} s ({result['verdicts'] / result['seconds']:,.0f}/s); at the mock "
                  f"{stats['done']:,} calls in {window:.1f} s = {rate:,.0f} calls/s = {rate / ideal:.0%} of C/L, "
                  f"most in flight {stats['max_in_flight']}, non-200 {errors or 0}; CPU {result['cpu_total']:.1f} s "
                  f"({result['cpu_total'] / max(stats['done'], 1) * 1000:.2f} ms per call); other processes "
                  f"{result['others']:.2f} cores; target >= 90%: {target}",
                  flush=True)  # fmt: skip
            ok = ok and stats["done"] >= result["verdicts"] > 0
            if limit is not None and limit < 0:
                skipped = result["skipped"].get(JUDGE["name"], {}).get("budget", 0)
                share, judged = first_tokens // 2, result["verdicts"] / max(result["pairs"], 1)
                print(f"  {'':<11} a backfill's share of tokens_per_hour = {first_tokens:,}: {share:,}; spent "
                      f"{result['tokens']:,} ({result['tokens'] / max(share, 1):.1%} of it); judged "
                      f"{result['verdicts']:,} of {result['pairs']:,} pairs ({judged:.1%}), {skipped:,} skipped "
                      f"(budget)", flush=True)  # fmt: skip
            else:
                calls = stats["done"]
        # The same-run floor (bench/scoring.py's): as many bare openai SDK calls, C in flight, from a process of
        # their own against the same mock; on a shared machine it says what the judge client alone reaches.
        run_bare_sdk(argparse.Namespace(traces=calls, latency=args.latency, concurrency=args.concurrency), judge)
    finally:
        judge.stop()
    return ok


def phase_memory(args: argparse.Namespace, main_dir: Path, main_traces: int, work: Path) -> bool:
    sizes = sorted(args.rss_sizes)
    print(f"\n== (c) peak RSS of the no-model backfill over archives of {', '.join(f'{n:,}' for n in sizes)} traces ==",
          flush=True)  # fmt: skip
    peaks: dict[int, dict[str, Any]] = {}
    for size in sizes:
        data_dir = main_dir if size == main_traces else work / f"archive-{size}"
        if data_dir != main_dir and not (data_dir.is_dir() and count_archive(data_dir / "archive")["traces"] == size):
            shutil.rmtree(data_dir, ignore_errors=True)
            build_archive(data_dir, size)
        result = run_child({"kind": "backfill", "data_dir": str(data_dir), "scorer": CHECK}, timeout=1800)
        if result.get("status") != "succeeded":
            print(f"  ! backfill broken: {result}")
            return False
        peaks[size] = result
        before = result["rss_before_run"] / 2**20
        print(f"  {size:>7,}     peak RSS {result['hwm'] / 2**20:,.0f} MiB (before run() {before:,.0f}"
              f" MiB: +{(result['hwm'] - result['rss_before_run']) / 2**20:,.0f} MiB while reading and judging); "
              f"{result['traces'] / result['seconds']:,.0f} traces/s", flush=True)  # fmt: skip
    small, large = peaks[sizes[0]]["hwm"], peaks[sizes[-1]]["hwm"]
    print(f"  summary     {sizes[-1]:,} traces: {large / small:.2f}x the peak RSS of {sizes[0]:,}; target within 15%: "
          f"{'PASS' if large <= 1.15 * small else 'FAIL'}", flush=True)  # fmt: skip
    return True


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--traces", type=int, default=20_000, help="traces in the archive built for the run")
    parser.add_argument("--archive", type=Path, help="a sidecar's data directory to use instead of building one")
    parser.add_argument("--mlflow-venv", type=Path, default=Path("/work/venv-mlflow"),
                        help="venv with mlflow (created with pip install mlflow if it has none)")  # fmt: skip
    parser.add_argument("--mlflow-rows", type=int, default=20_000, help="rows given to both evaluates")
    parser.add_argument("--latency", type=float, default=0.2, help="the mock judge's answer time L, seconds")
    parser.add_argument("--concurrency", type=int, default=64, help="judges.default.max_concurrency C")
    parser.add_argument("--judge-rate", type=float, default=1.0, help="sample rate of the judge backfill")
    parser.add_argument("--judge-max-concurrency", type=lambda s: [int(x) for x in s.split(",") if x], default=[],
                        help="also run the judge backfill with Backfill(max_concurrency=N), for each N")  # fmt: skip
    parser.add_argument("--rss-sizes", type=lambda s: [int(x) for x in s.split(",")], default=[5000, 10000, 20000])
    parser.add_argument("--phases", default="check,judge,memory", help="which of check,judge,memory to run")
    parser.add_argument("--workdir", type=Path, help="keep the archives and datasets here (default: a temp dir)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        child_main(json.loads(args.child))
        return 0
    phases = set(args.phases.split(","))
    with tempfile.TemporaryDirectory(prefix="tj-bench-backfill-") as tmp:
        work = args.workdir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        print("== archive ==", flush=True)
        if args.archive is not None:
            data_dir = args.archive
            traces = int(count_archive(data_dir / "archive")["traces"])
            print(f"  reused      {data_dir}: {traces:,} traces", flush=True)
        else:
            data_dir = work / "archive-main"
            traces = int(build_archive(data_dir, args.traces)["traces"])
            if traces != args.traces:
                print(f"  ! {traces:,} traces archived of {args.traces:,} sent")
                return 1
        ok = True
        if "check" in phases:
            ok = phase_check(args, data_dir, work) and ok
        if "judge" in phases:
            ok = phase_judge(args, data_dir) and ok
        if "memory" in phases:
            ok = phase_memory(args, data_dir, traces, work) and ok
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

"""`tracejudge demo`: the whole tour in one command, offline, with no API key.

It starts the demo judge (tracejudge/demo_judge.py: deterministic, loopback, labelled), a real `tracejudge
serve` as a child process with a generated config in a data directory of its own, and the demo app
(tracejudge/demo_app.py: a synthetic support agent in four conventions, in conversations), prints where to
look and a line per scorer as its verdicts arrive, and stops everything in order on Ctrl-C, SIGTERM or after
--duration. The sidecar is a child `serve`, not wired in this process, so the demo runs exactly what users run
(its start-up line, its two processes, its drain at SIGTERM), and its log is a file to read.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
import yaml

from tracejudge.config import parse_duration

if TYPE_CHECKING:
    from tracejudge.demo_app import DemoApp, Turn

TURNS_PER_CONVERSATION = 3
TURN_INTERVAL_S = 0.5  # one turn every half second, round-robin over the conventions
_ASSESSMENTS = re.compile(r"^tracejudge_assessments(?:_total)?\{(?P<labels>[^}]*)\} (?P<value>\S+)$", re.M)
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def demo_scorers() -> list[dict[str, Any]]:
    """The defaults' no-model checks, LLM judges on traces, on retrieval spans and on conversations."""
    from tracejudge.config_file import DEFAULT_SCORERS

    checks = [spec.model_dump(include={"name", "builtin", "sample_rate"}) for spec in DEFAULT_SCORERS]
    return [
        *checks,
        {"name": "safety", "builtin": "Safety", "sample_rate": 1.0},
        {"name": "relevance", "builtin": "RelevanceToQuery", "sample_rate": 1.0},
        {"name": "doc_relevance", "builtin": "RetrievalRelevance", "sample_rate": 1.0,
         "target": {"span_type": "RETRIEVER"}},
        {"name": "frustration", "builtin": "UserFrustration", "sample_rate": 1.0},
        {"name": "resolved", "instructions": "Did the assistant resolve every request in {{ conversation }}?",
         "feedback_value_type": "bool", "sample_rate": 1.0},
    ]  # fmt: skip


def demo_config(judge_url: str) -> dict[str, Any]:
    """Short clocks, so that a minute shows everything: traces decided after 0.5 s, conversations judged when
    their last turn says so (or 3 s idle), archive files closed every 5 s."""
    return {
        "judges": {"default": {"model": "tracejudge-demo-judge", "base_url": judge_url,
                               "api_key_env": "TRACEJUDGE_DEMO_JUDGE_KEY", "timeout": "10s", "max_retries": 1}},
        "assembler": {"trace_idle": "500ms"},
        "sessions": {"idle": "3s"},
        "archive": {"roll_interval": "5s"},
        "scorers": demo_scorers(),
    }  # fmt: skip


def _duration(_ctx: click.Context, _param: click.Parameter, value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc


@click.command("demo")
@click.option(
    "--duration",
    callback=_duration,
    metavar="DURATION",
    help="Stop after this long (30s, 2m); default: run until Ctrl-C.",
)
@click.option(
    "--port-offset",
    type=click.IntRange(0, 60000 - 9464),
    default=0,
    show_default=True,
    help="Added to the usual ports 4317 (OTLP/gRPC), 4318 (OTLP/HTTP) and 9464 (admin).",
)
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Where the demo sidecar keeps its data [a new temporary directory, kept afterwards].",
)
def demo_command(duration: float | None, port_offset: int, data_dir: Path | None) -> None:
    """Run the tour offline: a sidecar, a synthetic agent in four conventions, conversations, and a demo judge.

    The demo judge is a fixed rule on loopback, not a model: every rationale it writes starts with
    "[demo judge]". Nothing leaves this machine."""  # fmt: skip
    from tracejudge.demo_app import CONVENTIONS, TURNS, DemoApp
    from tracejudge.demo_judge import DemoJudge

    data_dir = data_dir or Path(tempfile.mkdtemp(prefix="tracejudge-demo-"))
    data_dir.mkdir(parents=True, exist_ok=True)
    ports = {"grpc": 4317 + port_offset, "http": 4318 + port_offset, "admin": 9464 + port_offset}
    stop = threading.Event()
    with _signals(stop):
        judge = DemoJudge().start()
        try:
            config_path = data_dir / "tracejudge-demo.yaml"
            config_path.write_text(yaml.safe_dump(demo_config(judge.base_url), sort_keys=False))
            sidecar = _start_sidecar(config_path, data_dir, ports)
            try:
                _print_where_to_look(judge.base_url, data_dir, ports, list(CONVENTIONS))
                app = DemoApp(f"127.0.0.1:{ports['grpc']}")
                try:
                    _run(app, list(CONVENTIONS), TURNS, sidecar, ports["admin"], stop, duration)
                finally:
                    app.shutdown()
                click.echo("demo app stopped; waiting for the last verdicts")
                _settle(ports["admin"])
                _print_summary(_verdicts(ports["admin"]), changed_only=False)
                click.echo(f"the demo judge answered {judge.requests} requests")
            finally:
                code = _stop_sidecar(sidecar)
        finally:
            judge.shutdown()
    if code != 0:
        raise click.ClickException(f"the demo sidecar exited with {code}; its log: {data_dir / 'tracejudge.log'}")
    click.echo(f"done. The archive stays in {data_dir / 'archive'}")


@contextmanager
def _signals(stop: threading.Event) -> Iterator[None]:
    """Ctrl-C and SIGTERM end the demo in order (the sidecar drains) instead of tearing it down."""
    previous = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    for signum in previous:
        signal.signal(signum, lambda *_: stop.set())
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _start_sidecar(config_path: Path, data_dir: Path, ports: dict[str, int]) -> subprocess.Popen[bytes]:
    log_path = data_dir / "tracejudge.log"
    command = [sys.executable, "-m", "tracejudge.cli", "serve", "--config", str(config_path),
               "--data-dir", str(data_dir), "--grpc", f"127.0.0.1:{ports['grpc']}",
               "--http", f"127.0.0.1:{ports['http']}", "--metrics", f"127.0.0.1:{ports['admin']}"]  # fmt: skip
    with log_path.open("ab") as log_file:
        # Its own session: Ctrl-C reaches the demo, which then stops the sidecar with SIGTERM, as an
        # orchestrator would, so it drains.
        # None of the user's TRACEJUDGE_* settings (a forward endpoint, a token, ...): the demo sends nothing
        # anywhere and runs its own config.
        env = {key: value for key, value in os.environ.items() if not key.startswith("TRACEJUDGE_")}
        process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   env=env, start_new_session=True)  # fmt: skip
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-15:])
            hint = "\n(a port is taken: try --port-offset 1000)" if "already in use" in tail or "bind" in tail else ""
            raise click.ClickException(f"the demo sidecar exited with {process.returncode}:\n{tail}{hint}")
        if _get(f"http://127.0.0.1:{ports['admin']}/readyz") is not None:
            return process
        time.sleep(0.2)
    process.kill()
    raise click.ClickException(f"the demo sidecar was not ready after 60 s; its log: {log_path}")


def _stop_sidecar(process: subprocess.Popen[bytes]) -> int:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        return process.wait(60)
    except subprocess.TimeoutExpired:
        process.kill()
        return process.wait()


def _print_where_to_look(judge_url: str, data_dir: Path, ports: dict[str, int], conventions: list[str]) -> None:
    admin = f"http://127.0.0.1:{ports['admin']}"
    archive = data_dir / "archive"
    query = (f"SELECT name, label, count(*) AS verdicts FROM read_parquet('{archive}/assessments/**/*.parquet') "
             "GROUP BY ALL ORDER BY ALL")  # fmt: skip
    click.echo(f"""\
tracejudge demo: a sidecar, a synthetic support agent in {len(conventions)} conventions ({", ".join(conventions)}),
conversations of {TURNS_PER_CONVERSATION} turns, and a DEMO JUDGE at {judge_url}: a fixed rule on loopback,
not a model (its rationales start with "[demo judge]"). Nothing leaves this machine.

  status page  {admin}/
  metrics      {admin}/metrics
  OTLP         127.0.0.1:{ports["grpc"]} (gRPC), 127.0.0.1:{ports["http"]} (HTTP): point your own app here too
  archive      {archive}  (files close every 5 s)
  query        duckdb -c "{query}"
  sidecar log  {data_dir / "tracejudge.log"}
Verdicts per scorer as they arrive (Ctrl-C stops):""")


def _run(app: DemoApp, conventions: list[str], turns: Sequence[Turn], sidecar: subprocess.Popen[bytes],
         admin_port: int, stop: threading.Event, duration: float | None) -> None:  # fmt: skip
    """Send a turn every TURN_INTERVAL_S until `stop` or `duration`; print verdict counts that changed.
    Raises when the sidecar has exited on its own."""
    deadline = time.monotonic() + duration if duration is not None else None
    seen: dict[str, dict[str, int]] = {}
    sent = 0
    next_report = time.monotonic() + 5.0
    while not stop.is_set() and (deadline is None or time.monotonic() < deadline):
        if sidecar.poll() is not None:
            raise click.ClickException(f"the demo sidecar exited with {sidecar.returncode} while the demo ran")
        convention = conventions[sent % len(conventions)]
        conversation, turn_number = divmod(sent // len(conventions), TURNS_PER_CONVERSATION)
        # Each conversation starts further along the script, so every convention meets the bad turns.
        turn = turns[(conversation * TURNS_PER_CONVERSATION + turn_number + conventions.index(convention)) % len(turns)]
        last = turn_number == TURNS_PER_CONVERSATION - 1
        app.send_turn(convention, f"demo-{convention}-{conversation + 1}", turn, last)
        sent += 1
        if time.monotonic() >= next_report:
            seen = _print_summary(_verdicts(admin_port), seen)
            next_report = time.monotonic() + 5.0
        stop.wait(TURN_INTERVAL_S)


def _settle(admin_port: int, timeout_s: float = 20.0) -> None:
    """Wait until the verdict counts stop moving (judging what was sent last) or `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    last = _verdicts(admin_port)
    while time.monotonic() < deadline:
        time.sleep(2.0)
        now = _verdicts(admin_port)
        if now == last and now:
            return
        last = now


def _verdicts(admin_port: int) -> dict[str, dict[str, int]]:
    """Verdict counts by scorer and label, from the sidecar's /metrics (tracejudge_assessments)."""
    text = _get(f"http://127.0.0.1:{admin_port}/metrics") or ""
    counts: dict[str, dict[str, int]] = {}
    for match in _ASSESSMENTS.finditer(text):
        labels = dict(_LABEL.findall(match.group("labels")))
        if labels.get("source") == "HUMAN":
            continue
        label = labels.get("label", "none") if labels.get("error_type", "none") == "none" else "error"
        by_label = counts.setdefault(labels.get("name", "?"), {})
        by_label[label] = by_label.get(label, 0) + int(float(match.group("value")))
    return counts


def _print_summary(counts: dict[str, dict[str, int]], seen: dict[str, dict[str, int]] | None = None,
                   changed_only: bool = True) -> dict[str, dict[str, int]]:  # fmt: skip
    width = max((len(name) for name in counts), default=0)
    for name in sorted(counts):
        if changed_only and seen is not None and seen.get(name) == counts[name]:
            continue
        total = sum(counts[name].values())
        labels = ", ".join(f"{label} {n}" for label, n in sorted(counts[name].items(), key=lambda item: -item[1]))
        click.echo(f"  {time.strftime('%H:%M:%S')}  {name:<{width}}  {total:>4} verdicts: {labels}")
    return counts


def _get(url: str) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return str(response.read().decode())
    except OSError:
        return None

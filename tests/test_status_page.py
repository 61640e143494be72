"""The status page on the admin listener and `tracejudge tail`, against a real sidecar fed by a real OTel SDK app.

The page is read by headless Chromium (Debian's `chromium`, driven by Playwright through its executable path:
never a browser download); its screenshot is kept in test-artifacts/status-page.png.
"""

from __future__ import annotations

import base64
import json
import os
import queue
import signal
import subprocess
import sys
import textwrap
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tracejudge.cli_tail import printable, verdict_line
from tracejudge.config import ConfigError
from tracejudge.config_file import load_config
from tracejudge.recent_verdicts import RecentVerdicts
from tracejudge.status_page import verdict_row
from tracejudge.testing import SidecarProcess, free_port, wait_until

CHROMIUM = "/usr/bin/chromium"
# REFERENCE.md §8: a quiet headless Chromium that reaches for nothing beyond the page (Playwright adds --headless
# and a fresh --user-data-dir itself).
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]  # fmt: skip
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
TRACE_URL = "http://jaeger.test:16686/trace/{trace_id}"
# What the app answers: markup a page must show as text, and a terminal escape `tail` must not send.
HOSTILE = '<script>window.__pwned = 1</script><img src=x onerror="window.__pwned = 2"> \x1b[2J refunds take 30 days'

ECHO_SCORER = """
from tracejudge.scorers import Feedback, scorer

def text_of(outputs):  # the answer's text from the OTel GenAI output messages; else the outputs as they are
    try:
        return "".join(part["content"] for part in outputs[-1]["parts"])
    except (TypeError, KeyError, IndexError):
        return str(outputs)


@scorer
def echo(outputs):
    return Feedback(value=False, rationale=f"the app said: {text_of(outputs)}")
"""

# A plain OpenTelemetry SDK app: one GenAI agent span, exported by OTLP/gRPC; prints its trace id.
APP = """
import json, sys
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

target, answer = sys.argv[1], sys.argv[2]
provider = TracerProvider(resource=Resource.create({"service.name": "support-agent"}))
provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(endpoint=target, insecure=True)))
tracer = provider.get_tracer("status-page-test")
with tracer.start_as_current_span("invoke_agent") as span:
    span.set_attribute("gen_ai.operation.name", "invoke_agent")
    span.set_attribute("gen_ai.input.messages",
                       json.dumps([{"role": "user", "parts": [{"type": "text", "content": "Refund window?"}]}]))
    span.set_attribute("gen_ai.output.messages",
                       json.dumps([{"role": "assistant", "parts": [{"type": "text", "content": answer}]}]))
    trace_id = format(span.get_span_context().trace_id, "032x")
provider.shutdown()
print(trace_id)
"""


def run_app(directory: Path, target: str, answer: str = HOSTILE) -> str:
    """Run the app to completion against the sidecar's OTLP/gRPC `target`; its trace id."""
    directory.mkdir(parents=True, exist_ok=True)
    script = directory / "app.py"
    script.write_text(textwrap.dedent(APP))
    app = subprocess.run([sys.executable, str(script), target, answer], capture_output=True, text=True, timeout=60)
    assert app.returncode == 0, app.stderr
    return app.stdout.split()[-1]


def need_chromium() -> None:
    if not Path(CHROMIUM).exists():
        message = f"{CHROMIUM} is missing: Debian's chromium package (.ci/install-chromium.sh installs it for .ci/run)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture(scope="module")
def sidecar(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SidecarProcess]:
    """One sidecar for the module: the no-model NoError check and a code scorer echoing the app's answer."""
    root = tmp_path_factory.mktemp("status")
    (root / "scorers").mkdir()
    (root / "scorers" / "echo_scorer.py").write_text(textwrap.dedent(ECHO_SCORER))
    config = {
        "assembler": {"trace_idle": "200ms"},
        "scoring": {"emit_interval": "100ms"},
        "status_page": {"trace_url": TRACE_URL},
        "scorers": [{"name": "no_error", "builtin": "NoError", "sample_rate": 1.0},
                    {"name": "echo", "code": "echo_scorer:echo", "sample_rate": 1.0}],
    }  # fmt: skip
    path = os.pathsep.join(p for p in (str(root / "scorers"), os.environ.get("PYTHONPATH", "")) if p)
    process = SidecarProcess(root / "tj", [], config, env={"PYTHONPATH": path}).start()
    yield process
    process.kill()


def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def verdicts_of(sidecar: SidecarProcess, trace_id: str) -> dict[str, dict[str, object]]:
    _, _, body = get(f"{sidecar.admin_url}/api/verdicts?since=0&limit=1000")
    return {v["name"]: v for v in json.loads(body)["verdicts"] if v["trace_id"] == trace_id}


# --------------------------------------------------------------------------------------------- in the browser


def test_the_page_shows_a_verdict_the_app_just_produced_escaped_and_linked(sidecar: SidecarProcess, tmp_path: Path):
    need_chromium()
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            errors: list[str] = []
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.goto(sidecar.admin_url + "/")
            assert page.title() == "tracejudge status"
            # The verdict arrives while the page is open: the page's own refresh (/api/verdicts) shows it.
            trace_id = run_app(tmp_path / "app", sidecar.grpc_target)
            live = page.locator("#verdicts tr", has_text=trace_id)
            live.filter(has_text="echo").wait_for(timeout=30_000)
            assert_verdicts_shown(page, trace_id)
            # And a fresh load renders the same on the server.
            page.reload()
            assert_verdicts_shown(page, trace_id)
            scorers = page.locator("#scorers tbody")
            assert "no_error" in scorers.inner_text() and "builtin NoError" in scorers.inner_text()
            assert page.locator("#scorers tr", has_text="echo").locator("td").nth(2).inner_text() == "active"
            page.screenshot(path=str(ARTIFACTS / "status-page.png"), full_page=True)
            assert errors == []
        finally:
            browser.close()
    assert (ARTIFACTS / "status-page.png").stat().st_size > 10_000


def assert_verdicts_shown(page: object, trace_id: str) -> None:
    from playwright.sync_api import Page

    assert isinstance(page, Page)
    rows = page.locator("#verdicts tr", has_text=trace_id)
    echo = rows.filter(has_text="echo")
    assert echo.count() == 1 and rows.filter(has_text="no_error").count() == 1
    cells = echo.locator("td")
    assert cells.nth(1).inner_text() == "echo" and cells.nth(2).inner_text() == "no"
    # The rationale is model output: shown as the text it is, never run or parsed as markup.
    assert "<script>window.__pwned = 1</script><img src=x" in cells.nth(4).inner_text()
    assert page.evaluate("window.__pwned") is None
    assert page.locator("#verdicts script, #verdicts img").count() == 0
    link = cells.nth(5).locator("a")
    assert link.inner_text() == trace_id
    assert link.get_attribute("href") == TRACE_URL.replace("{trace_id}", trace_id)


def test_human_feedback_is_among_the_live_verdicts(sidecar: SidecarProcess, tmp_path: Path):
    trace_id = run_app(tmp_path / "app", sidecar.grpc_target, answer="30 days")
    assert wait_until(lambda: "echo" in verdicts_of(sidecar, trace_id), timeout=30)  # the trace was decided
    feedback = {"name": "thumbs", "value": True, "rationale": "helpful",
                "source": {"source_type": "HUMAN", "source_id": "user-42"}}  # fmt: skip
    request = urllib.request.Request(f"{sidecar.http_url}/v1/traces/{trace_id}/assessments",
                                     json.dumps(feedback).encode(), {"Content-Type": "application/json"})  # fmt: skip
    urllib.request.urlopen(request, timeout=10).close()
    shown = wait_until(lambda: verdicts_of(sidecar, trace_id).get("thumbs"), timeout=30)
    assert shown and shown["source"] == "HUMAN" and shown["label"] == "yes" and shown["rationale"] == "helpful"


def test_the_verdicts_api_says_what_is_wrong_with_a_query(sidecar: SidecarProcess):
    status, _, body = get(f"{sidecar.admin_url}/api/verdicts?since=yesterday")
    assert status == 400 and json.loads(body)["message"] == "since must be a non-negative integer, got 'yesterday'"
    status, _, body = get(f"{sidecar.admin_url}/api/verdicts?since=0&scorer=nobody")
    assert status == 200 and json.loads(body)["verdicts"] == []


# --------------------------------------------------------------------------------------------- access


def test_beyond_loopback_the_page_needs_the_token(tmp_path: Path):
    """The admin listener on 0.0.0.0 with control.token set: the page and its JSON need the token (Bearer, or a
    browser's Basic password); the scrape and health endpoints stay open."""
    process = SidecarProcess(tmp_path / "tj", [], {"control": {"token": "s3cret-token"}})
    wide = f"0.0.0.0:{process.admin_port}"  # the harness binds 127.0.0.1; this one listens on every interface
    process.args = [wide if arg == f"127.0.0.1:{process.admin_port}" else arg for arg in process.args]
    process.start()
    try:
        base = process.admin_url
        for path in ("/", "/api/verdicts", "/api/status"):
            status, headers, body = get(base + path)
            assert status == 401 and b"bearer token" in body, (path, status, body)
            assert headers["WWW-Authenticate"].startswith("Basic")
        assert get(base + "/", {"Authorization": "Bearer wrong"})[0] == 401
        basic_wrong = base64.b64encode(b"me:wrong").decode()
        assert get(base + "/", {"Authorization": f"Basic {basic_wrong}"})[0] == 401
        status, _, body = get(base + "/", {"Authorization": "Bearer s3cret-token"})
        assert status == 200 and b"<h1>tracejudge</h1>" in body
        basic = base64.b64encode(b"anyone:s3cret-token").decode()
        status, _, body = get(base + "/api/verdicts", {"Authorization": f"Basic {basic}"})
        assert status == 200 and json.loads(body)["verdicts"] == []
        assert get(base + "/metrics")[0] == 200 and get(base + "/readyz")[0] == 200
    finally:
        process.stop()


def test_beyond_loopback_without_a_token_the_page_is_off():
    """The page as the sidecar wires it, on a real admin listener on 0.0.0.0, with no token: refused, not open."""
    from tracejudge.scoring.registry import ScorerRegistry
    from tracejudge.status_page import PageAccess, Sources, StatusPage
    from tracejudge.status_page_config import StatusPageConfig
    from tracejudge.telemetry import SelfTelemetry, TelemetryConfig

    endpoint = "0.0.0.0:0"  # every interface, any free port
    telemetry = SelfTelemetry(TelemetryConfig(prometheus_endpoint=endpoint))
    sources = Sources(RecentVerdicts(), ScorerRegistry(None).all, frozenset, telemetry.metrics_text, lambda: True)
    telemetry.add_routes(StatusPage(StatusPageConfig(), sources, PageAccess(None, endpoint)).routes())
    telemetry.start()
    try:
        admin = f"http://127.0.0.1:{telemetry.port}"
        for path in ("/", "/api/verdicts", "/api/status"):
            status, _, body = get(admin + path, {"Authorization": "Bearer anything"})
            assert status == 403 and b"status page is off" in body and b"control.token" in body, path
        assert get(admin + "/metrics")[0] == 200
    finally:
        telemetry.shutdown()


# --------------------------------------------------------------------------------------------- tracejudge tail


def test_tail_follows_verdicts_produced_after_it_started(sidecar: SidecarProcess, tmp_path: Path):
    command = [sys.executable, "-m", "tracejudge.cli", "tail", "--admin", sidecar.admin_url, "--scorer", "echo",
               "-f", "-n", "0"]  # fmt: skip
    tail = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        lines: queue.Queue[str] = queue.Queue()
        reader = threading.Thread(target=lambda: [lines.put(line) for line in tail.stdout or ()], daemon=True)
        reader.start()
        assert tail.stderr is not None
        assert "following verdicts" in tail.stderr.readline()  # its first poll is done: what comes next is new
        trace_id = run_app(tmp_path / "app", sidecar.grpc_target, answer="refunds take 30 days \x1b[2J")
        line = lines.get(timeout=30)
        fields = line.split("  ")
        assert fields[1:4] == ["echo", "no/0", trace_id], line
        assert "the app said: refunds take 30 days \\x1b[2J" in line and "\x1b" not in line
        # Only the echo scorer's: no_error judged the same trace, and is in the ring, but not printed.
        assert "no_error" in verdicts_of(sidecar, trace_id)
        os.killpg(tail.pid, signal.SIGINT)
        assert tail.wait(10) == 0
        reader.join(10)
        rest = "".join(iter_queue(lines))
        assert "no_error" not in rest and "Traceback" not in (tail.stderr.read() or "")
    finally:
        if tail.poll() is None:
            tail.kill()


def iter_queue(items: queue.Queue[str]) -> Iterator[str]:
    while not items.empty():
        yield items.get_nowait()


def test_tail_says_clearly_when_no_tracejudge_answers():
    admin = f"http://127.0.0.1:{free_port()}"
    run = subprocess.run([sys.executable, "-m", "tracejudge.cli", "tail", "--admin", admin], capture_output=True,
                         text=True, timeout=30)  # fmt: skip
    assert run.returncode == 1
    assert f"cannot read verdicts from tracejudge's admin listener at {admin}" in run.stderr


# --------------------------------------------------------------------------------------------- the parts


def test_the_ring_keeps_the_newest_verdicts_numbered():
    ring = RecentVerdicts(capacity=3)
    rows = [{"name": "a" if i % 2 else "b", "trace_id": f"{i:032x}", "timestamp": 1_000_000 * i} for i in range(1, 6)]
    assert ring.add_rows([*rows, {"name": "exp", "expectation": True}]) == 5
    kept, last = ring.since(0)
    assert last == 5 and [v["seq"] for v in kept] == [3, 4, 5] and kept[0]["time_unix_ms"] == 3
    assert [v["seq"] for v in ring.since(4)[0]] == [5]
    assert [v["seq"] for v in ring.since(0, scorer="a")[0]] == [3, 5]
    assert [v["seq"] for v in ring.since(0, limit=1)[0]] == [5]
    assert ring.since(5) == ([], 5)
    with pytest.raises(ValueError, match="at least one"):
        RecentVerdicts(0)


def test_a_verdict_row_escapes_every_value():
    verdict = {"seq": 7, "time_unix_ms": 0, "name": "<b>n</b>", "label": '"><script>x</script>', "score": 0.5,
               "rationale": "<img src=x onerror=alert(1)>", "trace_id": "ab<i>",
               "trace_url": 'http://j/trace/ab"onmouseover="x'}  # fmt: skip
    row = verdict_row(verdict)
    assert "<script" not in row and "<img" not in row and "<b>" not in row and "<i>" not in row
    assert 'href="http://j/trace/ab&quot;onmouseover=&quot;x"' in row
    assert "&lt;img src=x onerror=alert(1)&gt;" in row


@pytest.mark.parametrize(
    ("trace_url", "message"),
    [
        ("javascript:alert(1)//{trace_id}", "must be an http:// or https:// URL"),
        ("http://jaeger:16686/search", "needs a {trace_id} placeholder"),
        ("http://jaeger:16686/trace/{trace}", "may use {trace_id} and {span_id}, not ['trace']"),
    ],
)
def test_a_bad_trace_url_stops_start_up_saying_why(trace_url: str, message: str):
    with pytest.raises(ConfigError) as caught:
        load_config(overrides={"status_page.trace_url": trace_url})
    assert "status_page.trace_url" in str(caught.value) and message in str(caught.value)


def test_a_tail_line_is_one_printable_line():
    verdict = {"time_unix_ms": 1_796_593_789_023, "name": "safety", "label": "no", "score": 0.0,
               "trace_id": "1d59d9dfa20667981be1314ede9118be",
               "rationale": "line one\nline two \x1b[31mred" + "x" * 200}  # fmt: skip
    line = verdict_line(verdict)
    assert line.startswith("2026-12-06T21:49:49.023Z  safety  no/0  1d59d9dfa20667981be1314ede9118be  line one\\nline")
    assert "\n" not in line and "\x1b" not in line and line.endswith("…")
    assert printable("ok\tthen") == "ok\\tthen"


def test_the_scorer_figures_come_from_the_exposition():
    """Pass rate, mean score, latency and skips as the page computes them from a Prometheus exposition."""
    from tracejudge.scoring.spec import ScorerSpec
    from tracejudge.status_page import Samples, scorer_rows

    exposition = textwrap.dedent("""
        # TYPE tracejudge_assessments_total counter
        tracejudge_assessments_total{error_type="none",label="yes",name="safety",source="LLM_JUDGE"} 3.0
        tracejudge_assessments_total{error_type="none",label="no",name="safety",source="LLM_JUDGE"} 1.0
        tracejudge_assessments_total{error_type="timeout",label="none",name="safety",source="LLM_JUDGE"} 2.0
        # TYPE tracejudge_scoring_skipped_total counter
        tracejudge_scoring_skipped_total{reason="budget",scorer="safety"} 5.0
        # TYPE gen_ai_evaluation_score histogram
        gen_ai_evaluation_score_bucket{gen_ai_evaluation_name="safety",le="0.5"} 1.0
        gen_ai_evaluation_score_bucket{gen_ai_evaluation_name="safety",le="+Inf"} 4.0
        gen_ai_evaluation_score_count{gen_ai_evaluation_name="safety"} 4.0
        gen_ai_evaluation_score_sum{gen_ai_evaluation_name="safety"} 3.0
        # TYPE tracejudge_judge_latency_milliseconds histogram
        tracejudge_judge_latency_milliseconds_bucket{le="100.0",name="safety"} 90.0
        tracejudge_judge_latency_milliseconds_bucket{le="1000.0",name="safety"} 100.0
        tracejudge_judge_latency_milliseconds_bucket{le="+Inf",name="safety"} 100.0
        tracejudge_judge_latency_milliseconds_count{name="safety"} 100.0
        tracejudge_judge_latency_milliseconds_sum{name="safety"} 12000.0
        # TYPE tracejudge_judge_tokens_total counter
        tracejudge_judge_tokens_total{direction="input",name="safety"} 700.0
        tracejudge_judge_tokens_total{direction="output",name="safety"} 40.0
    """)
    specs = [ScorerSpec(name="safety", builtin="Safety", sample_rate=0.5), ScorerSpec(name="idle", builtin="NoError")]
    idle, safety = scorer_rows(specs, ["safety"], Samples(exposition))
    assert idle["state"] == "stopped" and idle["pass_rate"] is None and idle["latency_ms_mean"] is None
    assert safety["state"] == "quarantined" and safety["pass_rate"] == 0.75 and safety["errors"] == 2
    assert safety["mean_score"] == 0.75 and safety["skipped"] == {"budget": 5}
    assert safety["latency_ms_mean"] == 120.0 and safety["latency_ms_p99_at_most"] == 1000.0
    assert (safety["tokens_in"], safety["tokens_out"]) == (700, 40)

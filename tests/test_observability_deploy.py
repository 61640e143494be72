"""deploy/grafana and deploy/prometheus checked against the real tools: promtool checks and unit-tests the alert
rules, and a real Prometheus (Debian's `prometheus` package) scrapes a real `tracejudge serve` fed by an OTel SDK
app until every dashboard panel's query returns data and every alert rule evaluates."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from mock_openai import MockOpenAI
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from tracejudge.testing import SidecarProcess, child_processes, free_port, wait_until

from otlp_peers import GrpcSink, HttpSink, post

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
DASHBOARD = DEPLOY / "grafana" / "tracejudge.json"
ALERTS = DEPLOY / "prometheus" / "alerts.yaml"
ALERTS_TEST = DEPLOY / "prometheus" / "alerts_test.yaml"
SCRAPE_CONFIG = DEPLOY / "prometheus" / "prometheus.yml"
JOB = "tracejudge"
# What Grafana puts in place of the dashboard's variables: every scorer, this test's job, and a rate window
# covering the whole run (Grafana's $__rate_interval is at least four scrape intervals).
VARIABLES = {"$__rate_interval": "2m", "$job": JOB, "$scorer": ".+"}
SCORERS = ("mentions_refund", "on_policy", "judge_down", "prod_only")


def tool(name: str) -> str:
    """The binary's path; without it fail under CI (which installs it), else skip."""
    path = shutil.which(name)
    if path is None:
        reason = f"{name} is not installed (Debian package prometheus; .ci/run installs it: .ci/install-prometheus.sh)"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    return path


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([tool("promtool"), *args], capture_output=True, text=True, timeout=60, check=False)


def alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def panel_queries() -> list[tuple[str, str, str]]:
    """(panel title, refId, PromQL with the variables substituted) for every query of every panel."""
    queries = []
    for panel in json.loads(DASHBOARD.read_text())["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"]
            for variable, value in VARIABLES.items():
                expr = expr.replace(variable, value)
            queries.append((panel["title"], target["refId"], expr))
    return queries


def variable_queries() -> list[tuple[str, str, str]]:
    """(variable, series selector, label) of each `label_values(selector, label)` variable, substituted."""
    found = []
    for variable in json.loads(DASHBOARD.read_text())["templating"]["list"]:
        if variable["type"] == "query":
            match = re.fullmatch(r"label_values\((.+), *(\w+)\)", variable["query"]["query"])
            assert match is not None, variable["query"]
            found.append((variable["name"], match.group(1).replace("$job", JOB), match.group(2)))
    return found


def panel_query(title: str) -> str:
    """The first query of the panel called `title`."""
    return next(expr for panel, _, expr in panel_queries() if panel == title)


# --- promtool ------------------------------------------------------------------------------------------


def test_promtool_checks_the_rules_and_the_scrape_config_and_the_rule_unit_tests_pass():
    checked = promtool("check", "rules", str(ALERTS))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in checked.stdout
    config = promtool("check", "config", str(SCRAPE_CONFIG))
    assert config.returncode == 0, config.stdout + config.stderr
    tested = promtool("test", "rules", str(ALERTS_TEST))
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "SUCCESS" in tested.stdout


def test_every_alert_has_severity_summary_and_description_and_a_firing_and_a_quiet_unit_test():
    rules = alert_rules()
    wanted = {"TracejudgeScorerPassRateDropped", "TracejudgeJudgeErrorRateHigh", "TracejudgeSkippedRateHigh",
              "TracejudgeForwardQueueGrowing", "TracejudgeForwardDropping", "TracejudgeScoringWorkerRestarted",
              "TracejudgeArchiveWorkerRestarted"}  # fmt: skip
    assert wanted <= {rule["alert"] for rule in rules}
    for rule in rules:
        assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
        assert rule["annotations"]["summary"].strip() and rule["annotations"]["description"].strip(), rule["alert"]
    cases = [case for test in yaml.safe_load(ALERTS_TEST.read_text())["tests"] for case in test["alert_rule_test"]]
    for rule in rules:
        mine = [case for case in cases if case["alertname"] == rule["alert"]]
        assert any(case["exp_alerts"] for case in mine), f"{rule['alert']}: no unit test where it fires"
        assert any(not case["exp_alerts"] for case in mine), f"{rule['alert']}: no unit test where it stays quiet"


def test_a_broken_expectation_makes_promtool_test_rules_fail(tmp_path):
    """The unit tests can fail: the same tests against rules whose threshold moved do."""
    rules = ALERTS.read_text()
    assert rules.count("> 0.1\n") == 1  # the judge error rate's threshold
    (tmp_path / "alerts.yaml").write_text(rules.replace("> 0.1\n", "> 0.5\n"))
    (tmp_path / "alerts_test.yaml").write_text(ALERTS_TEST.read_text())
    tested = promtool("test", "rules", str(tmp_path / "alerts_test.yaml"))
    assert tested.returncode != 0
    assert "TracejudgeJudgeErrorRateHigh" in tested.stdout + tested.stderr


# --- the dashboard ---------------------------------------------------------------------------------------


def test_the_dashboard_takes_its_datasource_from_a_variable_and_provisioning_points_at_it():
    dashboard = json.loads(DASHBOARD.read_text())
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    wanted = {"Pass rate per scorer", "Score distribution", "Verdicts by label", "Judge latency p50 / p99",
              "Judge tokens", "Judge error rate", "Skipped rate by reason", "Scoring backlog", "Ingest", "Forward",
              "Forward queue (write-ahead log)", "Worker and archive restarts"}  # fmt: skip
    assert wanted <= {p["title"] for p in panels}
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])
    for panel in panels:
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"] and panel["description"], panel["title"]
    used = set(re.findall(r"\$\w+", " ".join(expr for _, _, expr in panel_queries())))
    assert not used, f"variables left after substitution: {used}"
    providers = yaml.safe_load((DEPLOY / "grafana/provisioning/dashboards/tracejudge.yaml").read_text())
    assert providers["providers"][0]["type"] == "file"
    sources = yaml.safe_load((DEPLOY / "grafana/provisioning/datasources/prometheus.yaml").read_text())
    assert sources["datasources"][0]["type"] == "prometheus"


# --- a real Prometheus scraping a real sidecar -----------------------------------------------------------


@dataclass
class Prometheus:
    url: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def api(self, path: str, **params: str) -> Any:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        with urllib.request.urlopen(f"{self.url}/api/v1/{path}{query}", timeout=10) as response:
            body = json.load(response)
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        data = self.api("query", query=expr)
        assert data["resultType"] == "vector", (expr, data)
        return list(data["result"])

    def value(self, expr: str) -> float:
        """The one sample of an aggregated expression, NaN when there is none yet."""
        result = self.query(expr)
        return float(result[0]["value"][1]) if len(result) == 1 else math.nan

    def ready(self) -> bool:
        """/-/ready answers 200; False while starting or once exited."""
        if self.process.poll() is not None:
            return False
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as response:
                return response.status == 200
        except OSError:
            return False

    def log_tail(self) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-20:])


def start_prometheus(directory: Path, target: str, attempts: int = 3) -> Prometheus:
    """The Debian binary on a free loopback port with a one-second scrape of `target`, the alert rules loaded
    (not the Debian service: no state outside `directory`). A port taken between free_port() and the bind
    means another try on a fresh one."""
    binary = tool("prometheus")
    directory.mkdir(parents=True)
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(ALERTS)],
        "scrape_configs": [{"job_name": JOB, "static_configs": [{"targets": [target]}]}],
    }
    (directory / "prometheus.yml").write_text(yaml.safe_dump(config))
    for attempt in range(attempts):
        port = free_port()
        log_path = directory / f"prometheus-{attempt}.log"
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                [binary, f"--config.file={directory / 'prometheus.yml'}", f"--storage.tsdb.path={directory / 'tsdb'}",
                 f"--web.listen-address=127.0.0.1:{port}", "--storage.tsdb.retention.time=1h"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
            )  # fmt: skip
        prometheus = Prometheus(f"http://127.0.0.1:{port}", process, log_path)
        if wait_until(lambda p=prometheus: p.ready(), timeout=30, interval=0.1):
            return prometheus
        stop_prometheus(prometheus)
        if "address already in use" not in log_path.read_text(errors="replace"):
            break
    raise RuntimeError(f"prometheus did not get ready:\n{prometheus.log_tail()}")


def stop_prometheus(prometheus: Prometheus) -> None:
    if prometheus.process.poll() is None:
        prometheus.process.send_signal(signal.SIGTERM)
        try:
            prometheus.process.wait(10)
        except subprocess.TimeoutExpired:
            prometheus.process.kill()
            prometheus.process.wait()


class App(threading.Thread):
    """An OTel SDK app sending an agent turn over OTLP/gRPC every `every_s` until stopped, so counters keep
    growing between scrapes (rates are never 0/0) whatever the machine's speed. Every other turn fails both
    the regex check (no "refund" in the answer) and the mock judge (the VERDICT marker in the question)."""

    def __init__(self, target: str, every_s: float = 0.25) -> None:
        super().__init__(name="otel-app", daemon=True)
        self.provider = TracerProvider(resource=Resource.create({"service.name": "support-agent"}))
        self.provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(endpoint=target, insecure=True)))
        self.every_s = every_s
        self.turns = 0
        self._stopping = threading.Event()

    def run(self) -> None:
        tracer = self.provider.get_tracer("agent")
        while not self._stopping.is_set():
            good = self.turns % 2 == 0
            question = f"Can I return a broken kettle? VERDICT:{'yes' if good else 'no'}"
            answer = "Yes: a damaged item gets a full refund within 30 days." if good else "Please call us."
            with tracer.start_as_current_span("invoke_agent support") as root:
                root.set_attribute("gen_ai.operation.name", "invoke_agent")
                root.set_attribute("gen_ai.input.messages", json.dumps([{"role": "user", "parts": [
                    {"type": "text", "content": question}]}]))  # fmt: skip
                root.set_attribute("gen_ai.output.messages", json.dumps([{"role": "assistant", "parts": [
                    {"type": "text", "content": answer}]}]))  # fmt: skip
                with tracer.start_as_current_span("chat gpt-4.1-mini") as chat:
                    chat.set_attribute("gen_ai.operation.name", "chat")
                    chat.set_attribute("gen_ai.usage.input_tokens", 30)
            self.turns += 1
            self._stopping.wait(self.every_s)

    def stop(self) -> None:
        self._stopping.set()
        if self.is_alive():
            self.join(10)
        self.provider.shutdown()


def panels_without_data(prometheus: Prometheus) -> list[str]:
    """The panel queries that return no series, or only NaN (a ratio of rates that are both 0)."""
    missing = []
    for title, ref, expr in panel_queries():
        result = prometheus.query(expr)
        if not result or all(math.isnan(float(series["value"][1])) for series in result):
            missing.append(f"{title} [{ref}] ({'no series' if not result else 'only NaN'}): {expr}")
    return missing


@pytest.fixture
def scraped(tmp_path: Path) -> Iterator[tuple[Prometheus, SidecarProcess, str]]:
    """A sidecar with a passing-and-failing check, a mock LLM judge, a judge that is down and a filtered scorer,
    forwarding to a healthy sink, a sink that rejects everything and a port nobody listens on; a Prometheus
    scraping it every second."""
    tool("prometheus")
    sink, rejecting, judge = GrpcSink().start(), HttpSink(), MockOpenAI(latency=0.02).start()
    rejecting.status = 400  # not retryable: dropped
    nobody = free_port()
    no_key = {"api_key_env": "TRACEJUDGE_TEST_NO_KEY", "max_retries": 0}
    config = {
        "assembler": {"trace_idle": "200ms", "check_interval": "50ms"},
        "forward": [{"url": sink.url}, {"url": rejecting.url}, {"url": f"grpc://127.0.0.1:{nobody}",
                                                                "retry": {"initial_interval": "200ms"}}],
        "judges": {"default": {"base_url": judge.base_url, **no_key},
                   "down": {"base_url": f"http://127.0.0.1:{nobody}/v1", "timeout": "2s", **no_key},
                   "budget": {"tokens_per_hour": 10**9}},  # for the budget panel: never reached
        "scoring": {"emit_interval": "100ms"},
        "scorers": [
            {"name": "mentions_refund", "builtin": "RegexMatch", "params": {"pattern": "refund", "must_match": True},
             "sample_rate": 1.0},
            {"name": "on_policy", "guidelines": ["The answer must state the refund policy"], "sample_rate": 1.0},
            {"name": "judge_down", "guidelines": ["The answer must be polite"], "model": "down", "sample_rate": 1.0},
            {"name": "prod_only", "builtin": "NonEmptyResponse", "filter_string": "tags.environment = 'prod'",
             "sample_rate": 1.0},
        ],
    }  # fmt: skip
    sidecar = SidecarProcess(tmp_path / "tj", [], config)
    prometheus = None
    try:
        sidecar.start()
        prometheus = start_prometheus(tmp_path / "prometheus", f"127.0.0.1:{sidecar.admin_port}")
        yield prometheus, sidecar, rejecting.url
    finally:
        if prometheus is not None:
            stop_prometheus(prometheus)
        sidecar.kill()
        sink.stop()
        rejecting.stop()
        judge.stop()


def test_every_dashboard_panel_has_data_in_a_real_prometheus_and_the_alert_rules_evaluate(scraped):
    prometheus, sidecar, rejecting_url = scraped
    assert wait_until(lambda: prometheus.value(f'up{{job="{JOB}"}}') == 1, timeout=20), prometheus.log_tail()
    app = App(sidecar.grpc_target)
    app.start()
    started = time.monotonic()
    try:
        check_panels_and_alerts(prometheus, sidecar, rejecting_url)
    finally:
        app.stop()
    print(f"checked in {time.monotonic() - started:.1f} s, {app.turns} turns sent")


def check_panels_and_alerts(prometheus: Prometheus, sidecar: SidecarProcess, rejecting_url: str) -> None:
    assert post(f"{sidecar.http_url}/v1/traces", b"not a protobuf")[0] == 400  # an invalid request for "Ingest"

    def verdicts(**labels: str) -> dict[str, float]:
        samples = sidecar.metrics()
        return {name: samples.get("tracejudge_assessments_total", name=name, **labels) for name in SCORERS}

    def scored_and_failed() -> bool:
        done, failed = verdicts(), verdicts(label="no")
        return min(done["mentions_refund"], done["on_policy"], done["judge_down"]) >= 6 and failed["on_policy"] >= 3

    assert wait_until(scored_and_failed, timeout=30), (verdicts(), sidecar.log_tail())
    assert wait_until(lambda: sidecar.metric("tracejudge_scoring_skipped_total", reason="filtered") > 0)
    assert verdicts()["prod_only"] == 0  # its filter matches no trace

    # A scoring worker and an archive writer that die, so the restart panel and alerts have something to show.
    assert wait_until(lambda: prometheus.value(f'tracejudge_scoring_worker_restarts_total{{job="{JOB}"}}') == 0)
    [worker] = child_processes(sidecar.pid, "tracejudge.scoring_worker")
    [writer] = child_processes(sidecar.pid, "tracejudge.exporter.archive_worker")
    os.kill(worker, signal.SIGKILL)
    os.kill(writer, signal.SIGKILL)
    restarts = ("tracejudge_scoring_worker_restarts_total", "tracejudge_archive_worker_restarts_total")
    for metric in restarts:
        assert wait_until(lambda m=metric: prometheus.value(f'{m}{{job="{JOB}"}}') == 1, timeout=30), sidecar.log_tail()

    # Every panel's query returns a series; the app keeps sending, so the new worker's verdicts come in too.
    assert wait_until(lambda: not panels_without_data(prometheus), timeout=30), "panel queries without data:\n" + (
        "\n".join(panels_without_data(prometheus))
    )

    # The numbers behind a few panels, as the app produced them.
    rate = VARIABLES["$__rate_interval"]
    pass_rates = {
        s["metric"]["name"]: float(s["value"][1]) for s in prometheus.query(panel_query("Pass rate per scorer"))
    }
    # Half of the app's answers fail; over a window this short rate()'s extrapolation moves the ratio, so only
    # "some pass, some fail" is asserted.
    assert 0 < pass_rates["mentions_refund"] < 1 and 0 < pass_rates["on_policy"] < 1, pass_rates
    assert "judge_down" not in pass_rates  # only errors: neither a pass nor a fail
    errors = prometheus.query(panel_query("Judge error rate"))  # refused: "connection" (or "timeout" when slow)
    assert {s["metric"]["name"] for s in errors} == {"judge_down"}, errors
    assert "none" not in {s["metric"]["error_type"] for s in errors}
    assert sum(float(s["value"][1]) for s in errors) == pytest.approx(1.0), errors  # every verdict of it failed
    assert prometheus.value(f'sum(increase(tracejudge_scoring_worker_restarts_total{{job="{JOB}"}}[{rate}]))') > 0

    # Variables: the dashboard's label_values() queries, as Grafana runs them, list the job and the scorers.
    options = {name: prometheus.api(f"label/{label}/values", **{"match[]": selector})
               for name, selector, label in variable_queries()}  # fmt: skip
    assert options["job"] == [JOB]
    names = options["scorer"]
    assert set(names) == set(SCORERS) - {"prod_only"}

    # The alert rules loaded, and every one evaluates without error against the real series.
    def rules() -> list[dict[str, Any]]:
        return [r for g in prometheus.api("rules", type="alert")["groups"] for r in g["rules"]]

    assert {r["name"] for r in rules()} == {r["alert"] for r in alert_rules()}
    assert wait_until(lambda: all(r["health"] == "ok" for r in rules()), timeout=10), [
        (r["name"], r["health"], r.get("lastError")) for r in rules() if r["health"] != "ok"
    ]

    def active() -> set[tuple[str, str, str]]:
        return {(a["labels"]["alertname"], a["state"], a["labels"].get("name") or a["labels"].get("endpoint", ""))
                for a in prometheus.api("alerts")["alerts"]}  # fmt: skip

    alerts = {
        ("TracejudgeScoringWorkerRestarted", "firing", ""),
        ("TracejudgeArchiveWorkerRestarted", "firing", ""),
        ("TracejudgeForwardDropping", "firing", rejecting_url),
        ("TracejudgeJudgeErrorRateHigh", "pending", "judge_down"),  # `for: 10m` has not passed
    }
    assert wait_until(lambda: alerts <= active(), timeout=10), active()
    assert not {a for a in active() if a[0] == "TracejudgeJudgeErrorRateHigh" and a[2] != "judge_down"}

"""The scorer control plane end to end: a real gRPC server and a real aiohttp app serving tracejudge/control/ over
a real ScorerRegistry, driven through tracejudge.scorers (MLflow's API), raw HTTP/JSON and `tracejudge scorers`."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import grpc
import pytest
from aiohttp import web
from click.testing import CliRunner

from tracejudge import control
from tracejudge import scorers as client
from tracejudge.aio import AiohttpServerThread
from tracejudge.cli_scorers import scorers as scorers_cli
from tracejudge.client.builtin_scorers import BUILTIN_CLASSES
from tracejudge.control.service import check_exposure
from tracejudge.proto import scorers_pb2 as pb
from tracejudge.schema import SCORER_SERVICE
from tracejudge.scorers import (
    ConversationalGuidelines,
    Guidelines,
    LatencyUnder,
    RegexMatch,
    Safety,
    ScorerSamplingConfig,
    delete_scorer,
    get_scorer,
    list_scorers,
    make_judge,
    scorer,
)
from tracejudge.scoring.checks import CHECKS
from tracejudge.scoring.code import CodeRunner
from tracejudge.scoring.evaluators import build_evaluator
from tracejudge.scoring.filters import FilterSyntaxError, parse_filter
from tracejudge.scoring.judge_client import JudgePool
from tracejudge.scoring.judges import JUDGE_NAMES
from tracejudge.scoring.registry import ScorerRegistry
from tracejudge.scoring.spec import ScorerSpec
from tracejudge.testing import free_port

TOKEN = "s3cret-token"
BAD_FILTER = "attributes.status = 'OK' AND"


@scorer
def mentions_refund(outputs: Any) -> bool:
    """A code scorer: loadable from the config as test_control_plane:mentions_refund, never sent over the network."""
    return "refund" in str(outputs).lower()


def make_registry(path: Path, max_active: int = 20) -> ScorerRegistry:
    """A registry validating specs as the scoring loop does: build_evaluator, so unknown builtins are refused."""
    judges = JudgePool({})
    code = CodeRunner(1, 1.0)
    return ScorerRegistry(path, max_active, validate=lambda spec: build_evaluator(spec, judges.get, code))


@dataclass
class ControlPlane:
    registry: ScorerRegistry
    grpc_port: int
    http_port: int

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"


@pytest.fixture
def serve() -> Iterator[Callable[..., ControlPlane]]:
    """Serve a registry's control plane on a gRPC server and an aiohttp app, as the sidecar's OTLP listeners do."""
    stops: list[Callable[[], None]] = []

    def start(registry: ScorerRegistry, token: str | None = None, listen: tuple[str, ...] = ()) -> ControlPlane:
        plane = control.ControlPlane({SCORER_SERVICE: control.ScorerService(registry)}, token, listen)
        server = grpc.server(ThreadPoolExecutor(max_workers=4))
        server.add_generic_rpc_handlers(control.grpc_handlers(plane))
        grpc_port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        stops.append(lambda: server.stop(None).wait(5))
        app = web.Application()
        app.add_routes(control.http_routes(plane))
        http = AiohttpServerThread(app, "127.0.0.1", 0, "control-http", auto_decompress=False)
        http_port = http.start()
        stops.append(http.shutdown)
        return ControlPlane(registry, grpc_port, http_port)

    yield start
    for stop in reversed(stops):
        stop()


@pytest.fixture
def plane(tmp_path: Path, serve: Callable[..., ControlPlane], monkeypatch: pytest.MonkeyPatch) -> ControlPlane:
    started = serve(make_registry(tmp_path / "scorers.json"))
    monkeypatch.setenv("TRACEJUDGE_ENDPOINT", started.grpc_target)
    monkeypatch.delenv("TRACEJUDGE_TOKEN", raising=False)
    return started


def http(
    method: str, url: str, body: Any = None, token: str | None = None, raw: bytes | None = None
) -> tuple[int, dict[str, Any], dict[str, str]]:
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read()), dict(response.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read()), dict(exc.headers)


def grpc_call(target: str, method: str, request: Any, response_type: Any, token: str | None = None) -> Any:
    with grpc.insecure_channel(target) as channel:
        call = channel.unary_unary(
            SCORER_SERVICE.method(method).grpc_path,
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=response_type.FromString,
        )
        metadata = (("authorization", f"Bearer {token}"),) if token else ()
        return call(request, metadata=metadata, timeout=10)


# --------------------------------------------------------------------------------------------- the MLflow snippet


@pytest.mark.parametrize("endpoint", ["grpc", "grpc-url", "http"])
def test_mlflow_snippet_manages_scorers_and_persists_them(
    endpoint: str, plane: ControlPlane, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    url = {"grpc": plane.grpc_target, "grpc-url": f"grpc://{plane.grpc_target}", "http": plane.http_url}[endpoint]
    monkeypatch.setenv("TRACEJUDGE_ENDPOINT", url)

    safety = Safety().register(name="safety")
    assert (safety.name, safety.status, safety.sample_rate, safety.builtin) == ("safety", "STOPPED", 0.0, "Safety")
    safety = safety.start(
        sampling_config=ScorerSamplingConfig(sample_rate=1.0, filter_string="attributes.status = 'OK'")
    )
    assert (safety.status, safety.sample_rate, safety.filter_string) == ("STARTED", 1.0, "attributes.status = 'OK'")

    registered = Guidelines(name="english", guidelines=["The response must be in English"]).register(name="is_english")
    english = registered.start(sampling_config=ScorerSamplingConfig(sample_rate=0.5))
    assert (registered.status, registered.sample_rate) == ("STOPPED", 0.0)  # handles are immutable: reassign
    assert (english.name, english.status, english.sample_rate) == ("is_english", "STARTED", 0.5)
    assert english.guidelines == ["The response must be in English"] and isinstance(english, Guidelines)
    english = english.update(sampling_config=ScorerSamplingConfig(sample_rate=0.8))
    assert english.sample_rate == 0.8
    assert plane.registry.get("is_english").sample_rate == 0.8
    english = english.stop()  # registered, sample rate 0
    assert (english.status, english.sample_rate) == ("STOPPED", 0.0)
    assert plane.registry.get("is_english").sample_rate == 0.0

    delete_scorer(name="is_english")
    assert [s.name for s in list_scorers()] == ["safety"]
    got = get_scorer(name="safety")
    assert isinstance(got, Safety)
    assert (got.status, got.sample_rate, got.filter_string) == ("STARTED", 1.0, "attributes.status = 'OK'")

    # The registry holds it, the state file holds it, and a restarted registry restores it.
    assert plane.registry.get("safety") == ScorerSpec(
        name="safety", builtin="Safety", sample_rate=1.0, filter_string="attributes.status = 'OK'"
    )
    state = json.loads((tmp_path / "scorers.json").read_text())
    assert [item["name"] for item in state["scorers"]] == ["safety"]
    restored = make_registry(tmp_path / "scorers.json")
    assert restored.all() == plane.registry.all()


def test_restored_registry_serves_the_same_state(
    plane: ControlPlane, serve: Callable[..., ControlPlane], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    LatencyUnder(threshold_ms=5000).register().start(sampling_config=ScorerSamplingConfig(sample_rate=0.25))
    make_judge(
        name="formality",
        instructions="Is the response {{ outputs }} formal?",
        feedback_value_type=Literal["formal", "semi_formal", "not_formal"],
    ).register(name="formality")

    again = serve(make_registry(tmp_path / "scorers.json"))
    monkeypatch.setenv("TRACEJUDGE_ENDPOINT", again.grpc_target)
    latency, formality = get_scorer("latency_under"), get_scorer("formality")
    assert (latency.status, latency.sample_rate, latency.params) == ("STARTED", 0.25, {"threshold_ms": 5000})
    assert again.registry.get("latency_under").params == {"threshold_ms": 5000}  # an int again, not 5000.0
    assert formality.kind == "prompt" and formality.status == "STOPPED"
    assert formality.feedback_value_type == ["formal", "semi_formal", "not_formal"]
    assert again.registry.get("formality").feedback_value_type == ["formal", "semi_formal", "not_formal"]


def test_every_builtin_has_a_client_class(plane: ControlPlane) -> None:
    classes = BUILTIN_CLASSES
    assert set(classes) == set(CHECKS) | JUDGE_NAMES
    required = {RegexMatch: {"pattern": "x"}, ConversationalGuidelines: {"guidelines": ["Be kind"]}}
    for builtin, cls in classes.items():
        made = cls(**required.get(cls, {}))
        handle = made.register()
        assert (handle.builtin, type(handle)) == (builtin, cls)
    assert len(list_scorers()) == len(classes)


# --------------------------------------------------------------------------------------------- refusals


def test_names_are_unique(plane: ControlPlane) -> None:
    Safety().register(name="safety")
    with pytest.raises(client.ScorerExistsError, match="already registered") as caught:
        Safety().register(name="safety")
    assert caught.value.code == "ALREADY_EXISTS"
    status, body, _ = http("POST", f"{plane.http_url}/v1/scorers", {"name": "safety", "builtin": "Safety"})
    assert (status, body["code"]) == (409, grpc.StatusCode.ALREADY_EXISTS.value[0])


def test_at_most_max_active_scorers_run(tmp_path: Path, serve: Callable[..., ControlPlane], monkeypatch) -> None:
    plane = serve(make_registry(tmp_path / "scorers.json", max_active=2))
    monkeypatch.setenv("TRACEJUDGE_ENDPOINT", plane.grpc_target)
    on = ScorerSamplingConfig(sample_rate=1.0)
    first = Safety().register().start(sampling_config=on)
    LatencyUnder().register().start(sampling_config=on)
    third = RegexMatch("refund").register()
    with pytest.raises(client.TooManyActiveError, match="2 scorers are already active") as caught:
        third.start(sampling_config=on)
    assert caught.value.code == "FAILED_PRECONDITION"
    status, body, _ = http("POST", f"{plane.http_url}/v1/scorers/regex_match:start", {"sample_rate": 1.0})
    assert (status, body["code"]) == (412, grpc.StatusCode.FAILED_PRECONDITION.value[0])
    first.update(sampling_config=ScorerSamplingConfig(sample_rate=0.5))  # already active: allowed
    first.stop()  # a stopped scorer keeps its registration and frees a slot
    assert third.start(sampling_config=on).status == "STARTED"
    assert get_scorer("safety").status == "STOPPED"


def test_bad_filter_is_refused_with_its_position(plane: ControlPlane) -> None:
    with pytest.raises(FilterSyntaxError) as expected:
        parse_filter(BAD_FILTER)
    safety = Safety().register()
    with pytest.raises(client.InvalidScorerError) as caught:
        safety.start(sampling_config=ScorerSamplingConfig(sample_rate=1.0, filter_string=BAD_FILTER))
    assert caught.value.code == "INVALID_ARGUMENT"
    assert f"at position {expected.value.position}" in caught.value.message
    assert caught.value.message.endswith("^")  # the caret under the offending token
    assert plane.registry.get("safety").sample_rate == 0.0  # nothing changed

    status, body, _ = http(
        "POST", f"{plane.http_url}/v1/scorers", {"name": "x", "builtin": "Safety", "filter_string": BAD_FILTER}
    )
    assert status == 400 and f"at position {expected.value.position}" in body["message"]


@pytest.mark.parametrize(
    ("definition", "message"),
    [
        (client.Scorer(name="nope", builtin="NoSuchJudge"), "unknown builtin 'NoSuchJudge'"),
        (client.Scorer(name="bad name!", builtin="Safety"), "name: use 1-100 letters"),
        (client.Scorer(name="empty"), "set exactly one of builtin, guidelines, instructions, code"),
        (make_judge(name="j", instructions="no template fields"), "instructions must use at least one of"),
        (client.Scorer(name="re", builtin="RegexMatch"), "needs params ['pattern']"),
    ],
)
def test_invalid_specs_are_refused(plane: ControlPlane, definition: client.Scorer, message: str) -> None:
    with pytest.raises(client.InvalidScorerError, match=message.replace("[", r"\[").replace("]", r"\]")):
        definition.register()
    assert plane.registry.all() == []


def test_start_needs_a_positive_rate_and_unknown_names_are_not_found(plane: ControlPlane) -> None:
    safety = Safety().register()
    with pytest.raises(client.InvalidScorerError, match="sample_rate > 0"):
        safety.start(sampling_config=ScorerSamplingConfig(sample_rate=0.0))
    with pytest.raises(client.InvalidScorerError, match="between 0 and 1"):
        safety.update(sampling_config=ScorerSamplingConfig(sample_rate=1.5))
    with pytest.raises(client.ScorerNotFoundError, match="no scorer named 'ghost'") as caught:
        get_scorer("ghost")
    assert caught.value.code == "NOT_FOUND"
    for call in (lambda: delete_scorer("ghost"), lambda: client.ScorerClient().stop("ghost")):
        with pytest.raises(client.ScorerNotFoundError):
            call()


def test_code_scorers_are_never_accepted_over_the_network(plane: ControlPlane) -> None:
    with pytest.raises(client.PermissionDeniedError) as caught:
        mentions_refund.register(name="refund")
    message = caught.value.message
    assert "config file" in message and "scorers:" in message
    assert 'code: "test_control_plane:mentions_refund"' in message and "name: refund" in message

    request = pb.RegisterScorerRequest(scorer=pb.Scorer(name="refund", code="test_control_plane:mentions_refund"))
    with pytest.raises(grpc.RpcError) as refused:
        grpc_call(plane.grpc_target, "RegisterScorer", request, pb.Scorer)
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "only loads them from its config file" in refused.value.details()
    body = {"name": "refund", "code": "test_control_plane:mentions_refund"}
    status, error, _ = http("POST", f"{plane.http_url}/v1/scorers", body)
    assert status == 403 and "config file" in error["message"]
    assert plane.registry.all() == []

    # One from the config file is loaded there, and is then managed like any other.
    plane.registry.apply_config([ScorerSpec(name="refund", code="test_control_plane:mentions_refund")])
    refund = get_scorer("refund")
    assert (refund.kind, refund.code, refund.status) == ("code", "test_control_plane:mentions_refund", "STOPPED")
    assert refund.start(sampling_config=ScorerSamplingConfig(sample_rate=0.5)).status == "STARTED"
    assert refund.stop().status == "STOPPED"


# --------------------------------------------------------------------------------------------- tokens


def test_token_is_required_when_configured(
    tmp_path: Path, serve: Callable[..., ControlPlane], monkeypatch: pytest.MonkeyPatch
) -> None:
    plane = serve(make_registry(tmp_path / "scorers.json"), token=TOKEN)
    monkeypatch.delenv("TRACEJUDGE_TOKEN", raising=False)
    for endpoint in (plane.grpc_target, plane.http_url):
        monkeypatch.setenv("TRACEJUDGE_ENDPOINT", endpoint)
        with pytest.raises(client.UnauthenticatedError, match="needs a bearer token") as missing:
            list_scorers()
        assert missing.value.code == "UNAUTHENTICATED"
        with pytest.raises(client.UnauthenticatedError, match="wrong bearer token"):
            client.ScorerClient(token="wrong").list()
        monkeypatch.setenv("TRACEJUDGE_TOKEN", TOKEN)
        assert list_scorers() == []
        monkeypatch.delenv("TRACEJUDGE_TOKEN")

    with pytest.raises(grpc.RpcError) as refused:
        grpc_call(plane.grpc_target, "ListScorers", pb.ListScorersRequest(), pb.ListScorersResponse, token="wrong")
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    ok = grpc_call(plane.grpc_target, "ListScorers", pb.ListScorersRequest(), pb.ListScorersResponse, token=TOKEN)
    assert list(ok.scorers) == []

    status, body, headers = http("GET", f"{plane.http_url}/v1/scorers")
    assert (status, body["code"], headers.get("WWW-Authenticate")) == (401, 16, "Bearer")
    assert http("POST", f"{plane.http_url}/v1/scorers", {"name": "s", "builtin": "Safety"}, token="nope")[0] == 401
    assert plane.registry.all() == []
    assert http("POST", f"{plane.http_url}/v1/scorers", {"name": "s", "builtin": "Safety"}, token=TOKEN)[0] == 200


def test_beyond_loopback_the_control_plane_needs_a_token(
    tmp_path: Path, serve: Callable[..., ControlPlane], monkeypatch: pytest.MonkeyPatch
) -> None:
    check_exposure(["127.0.0.1:4317", "localhost:4318", "[::1]:4317", None], token=None)
    with pytest.raises(ValueError, match=r"0\.0\.0\.0:4317, beyond loopback"):
        check_exposure(["0.0.0.0:4317", "127.0.0.1:4318"], token=None)
    check_exposure(["0.0.0.0:4317"], token=TOKEN)

    open_plane = serve(make_registry(tmp_path / "a.json"), token=None, listen=("0.0.0.0:4317", "127.0.0.1:4318"))
    monkeypatch.setenv("TRACEJUDGE_ENDPOINT", open_plane.grpc_target)
    with pytest.raises(client.PermissionDeniedError, match=r"set control\.token"):
        list_scorers()
    assert http("GET", f"{open_plane.http_url}/v1/scorers")[0] == 403

    guarded = serve(make_registry(tmp_path / "b.json"), token=TOKEN, listen=("0.0.0.0:4317",))
    assert client.ScorerClient(guarded.grpc_target, TOKEN).list() == []


# --------------------------------------------------------------------------------------------- HTTP/JSON


def test_http_json_round_trip(plane: ControlPlane) -> None:
    base = f"{plane.http_url}/v1/scorers"
    status, created, _ = http(
        "POST", base, {"name": "latency", "builtin": "LatencyUnder", "params": {"threshold_ms": 5000}}
    )
    assert status == 200
    assert created == {
        "name": "latency",
        "builtin": "LatencyUnder",
        "feedback_value_type": "",
        "feedback_categories": [],
        "params": {"threshold_ms": 5000.0},
        "sample_rate": 0.0,
        "version": 1,
        "status": "SCORER_STATUS_STOPPED",
    }
    assert plane.registry.get("latency").params == {"threshold_ms": 5000}

    filter_string = "attributes.execution_time_ms > 100"
    status, started, _ = http("POST", f"{base}/latency:start", {"sample_rate": 0.5, "filter_string": filter_string})
    assert (status, started["sample_rate"], started["filter_string"]) == (200, 0.5, filter_string)
    assert started["status"] == "SCORER_STATUS_STARTED"
    status, updated, _ = http("POST", f"{base}/latency:update", {"filter_string": ""})
    assert (status, updated["sample_rate"], "filter_string" in updated) == (200, 0.5, False)  # removed, rate kept
    status, listed, _ = http("GET", base)
    assert [item["name"] for item in listed["scorers"]] == ["latency"]
    assert http("GET", f"{base}/latency")[1] == updated
    status, stopped, _ = http("POST", f"{base}/latency:stop")
    assert (status, stopped["sample_rate"], stopped["status"]) == (200, 0.0, "SCORER_STATUS_STOPPED")
    assert http("DELETE", f"{base}/latency")[:2] == (200, {})

    status, missing, _ = http("GET", f"{base}/latency")
    assert (status, missing) == (404, {"code": 5, "message": "no scorer named 'latency'"})
    assert http("POST", f"{base}/latency:pause")[0] == 404
    assert http("POST", base, raw=b"{not json")[0] == 400
    assert http("POST", base, {"name": "x", "builtin": "Safety", "unknown_field": 1})[0] == 400
    status, _, _ = http("POST", base, {"name": "en", "guidelines": {"guidelines": ["Answer in English"]}})
    assert status == 200 and plane.registry.get("en").guidelines == ["Answer in English"]


# --------------------------------------------------------------------------------------------- CLI


def test_cli_manages_scorers(plane: ControlPlane) -> None:
    runner = CliRunner()

    def run(*args: str) -> Any:
        return runner.invoke(scorers_cli, list(args), catch_exceptions=False)

    result = run("register", "safety", "--builtin", "Safety")
    assert result.exit_code == 0 and "registered safety (builtin:Safety), stopped" in result.output
    result = run("register", "english", "--guidelines", "Answer in English", "--guidelines", "Be polite")
    assert result.exit_code == 0, result.output
    result = run("register", "latency", "--builtin", "LatencyUnder", "--param", "threshold_ms=2500")
    assert result.exit_code == 0 and plane.registry.get("latency").params == {"threshold_ms": 2500}
    result = run(
        "register", "tone", "--instructions", "Is {{ outputs }} formal?", "--feedback-value-type", "formal,casual"
    )
    assert result.exit_code == 0 and plane.registry.get("tone").feedback_value_type == ["formal", "casual"]
    result = run("register", "docs", "--builtin", "RetrievalRelevance", "--target", "{span_type: RETRIEVER}")
    assert result.exit_code == 0 and plane.registry.get("docs").target_kind == "span"
    assert plane.registry.get("docs").span_target.span_type == "RETRIEVER"  # type: ignore[union-attr]
    result = run("register", "mood", "--builtin", "UserFrustration")  # a multi-turn judge: a session target
    assert result.exit_code == 0 and plane.registry.get("mood").target_kind == "session"
    result = runner.invoke(scorers_cli, ["register", "bad", "--builtin", "Safety", "--target", "session"])
    assert result.exit_code == 1 and "judges one trace, not a conversation" in result.output

    result = run("start", "safety", "--sample-rate", "1", "--filter", "attributes.status = 'OK'")
    assert result.exit_code == 0 and "started safety: started, sample_rate 1" in result.output
    assert run("start", "english", "--sample-rate", "0.5").exit_code == 0
    assert run("update", "english", "--sample-rate", "0.8").exit_code == 0
    assert plane.registry.get("english").sample_rate == 0.8

    listing = run("list").output.splitlines()
    assert listing[0].split() == ["NAME", "KIND", "STATUS", "SAMPLE_RATE", "FILTER"]
    rows = {line.split()[0]: line.split() for line in listing[1:]}
    assert rows["safety"] == ["safety", "builtin:Safety", "STARTED", "1", "attributes.status", "=", "'OK'"]
    assert rows["english"][:4] == ["english", "guidelines", "STARTED", "0.8"]
    assert rows["tone"][:4] == ["tone", "prompt", "STOPPED", "0"]
    assert rows["docs"][:3] == ["docs", "builtin:RetrievalRelevance", "STOPPED"]

    got = json.loads(run("get", "english", "-o", "json").output)
    assert got == {
        "name": "english",
        "guidelines": ["Answer in English", "Be polite"],
        "sample_rate": 0.8,
        "version": 1,
        "status": "STARTED",
    }
    assert "builtin: Safety" in run("get", "safety").output
    assert "span_type: RETRIEVER" in run("get", "docs").output

    result = run("stop", "english")
    assert result.exit_code == 0 and "stopped english: stopped, sample_rate 0" in result.output
    assert plane.registry.get("english").sample_rate == 0.0
    assert run("delete", "english").output.strip() == "deleted english"
    assert "english" not in [spec.name for spec in plane.registry.all()]


def test_cli_errors_are_one_line_and_fail(plane: ControlPlane) -> None:
    runner = CliRunner()
    result = runner.invoke(scorers_cli, ["start", "ghost", "--sample-rate", "1"])
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == ["Error: no scorer named 'ghost' (NOT_FOUND)"]

    runner.invoke(scorers_cli, ["register", "safety", "--builtin", "Safety"])
    result = runner.invoke(scorers_cli, ["start", "safety", "--sample-rate", "1", "--filter", BAD_FILTER])
    assert result.exit_code == 1 and len(result.output.strip().splitlines()) == 1
    assert "at position 28" in result.output and "(INVALID_ARGUMENT)" in result.output

    result = runner.invoke(scorers_cli, ["register", "x", "--builtin", "Safety", "--guidelines", "g"])
    assert result.exit_code == 2 and "exactly one of --builtin, --guidelines, --instructions" in result.output
    result = runner.invoke(scorers_cli, ["register", "nope", "--builtin", "NoSuchJudge"])
    assert result.exit_code == 1 and "unknown builtin 'NoSuchJudge'" in result.output

    closed = f"127.0.0.1:{free_port()}"
    result = runner.invoke(scorers_cli, ["--endpoint", closed, "list"])
    assert result.exit_code == 1 and f"cannot reach tracejudge at {closed}" in result.output


def test_cli_sends_the_token(tmp_path: Path, serve: Callable[..., ControlPlane]) -> None:
    plane = serve(make_registry(tmp_path / "scorers.json"), token=TOKEN)
    runner = CliRunner()
    env = {"TRACEJUDGE_ENDPOINT": plane.http_url, "TRACEJUDGE_TOKEN": ""}
    result = runner.invoke(scorers_cli, ["list"], env=env)
    assert result.exit_code == 1 and "(UNAUTHENTICATED)" in result.output
    result = runner.invoke(scorers_cli, ["list"], env={**env, "TRACEJUDGE_TOKEN": TOKEN})
    assert result.exit_code == 0 and "(no scorers registered)" in result.output

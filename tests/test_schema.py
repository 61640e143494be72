"""tracejudge/schema.py: what it reads from the descriptors, the builtin catalogue against scoring's
implementations and the client's classes, and what importing the light modules (the schema, a spec, the
users' client) drags in, checked in a fresh interpreter."""

from __future__ import annotations

import inspect
import json
import subprocess
import sys

import pytest
from google.rpc import code_pb2
from pydantic import ValidationError

from tracejudge import schema
from tracejudge.client.builtin_scorers import BUILTIN_CLASSES
from tracejudge.scorers import LatencyUnder, NoError, NoPii, RegexMatch, Safety
from tracejudge.scoring.checks import CHECKS, REQUIRED_PARAMS
from tracejudge.scoring.judges import CONVERSATION_JUDGES, JUDGE_NAMES
from tracejudge.scoring.spec import ScorerSpec


def test_scorer_service_http_rules_come_from_the_annotations() -> None:
    rules = {method.name: [(r.describe(), r.body) for r in method.http] for method in schema.SCORER_SERVICE.methods}
    assert rules == {
        "RegisterScorer": [("POST /v1/scorers", "scorer")],
        "StartScorer": [("POST /v1/scorers/{name}:start", "sampling_config")],
        "UpdateScorer": [("POST /v1/scorers/{name}:update", "sampling_config")],
        "StopScorer": [("POST /v1/scorers/{name}:stop", "")],
        "DeleteScorer": [("DELETE /v1/scorers/{name}", "")],
        "GetScorer": [("GET /v1/scorers/{name}", "")],
        "ListScorers": [("GET /v1/scorers", "")],
    }
    start = schema.SCORER_SERVICE.method("StartScorer")
    assert (start.request.DESCRIPTOR.full_name, start.response.DESCRIPTOR.full_name) == (
        "tracejudge.v1.StartScorerRequest",
        "tracejudge.v1.Scorer",
    )
    assert (start.grpc_path, start.python_name) == ("/tracejudge.v1.ScorerService/StartScorer", "start_scorer")
    with pytest.raises(KeyError, match="has no RPC 'PauseScorer'; it has RegisterScorer"):
        schema.SCORER_SERVICE.method("PauseScorer")


def test_path_templates() -> None:
    template = schema.parse_template("/v1/{parent=projects/*}/books/{book.id=**}:archive")
    assert template.verb == "archive" and template.prefix == "/v1"
    assert template.variables == (
        schema.Variable("parent", ("projects", "*")),
        schema.Variable("book.id", ("**",)),
    )
    assert schema.parse_template("/v1/scorers").prefix == "/v1/scorers"
    for bad, why in [
        ("v1/scorers", "must start with '/'"),
        ("/v1/{name", "unbalanced braces"),
        ("/v1//x", "empty segment"),
        ("/v1/a{name}", "whole segment"),
        ("/v1/{na-me}", "not a field path"),
        ("/v1/**/x", "'\\*\\*' may only be the last segment"),
    ]:
        with pytest.raises(ValueError, match=why):
            schema.parse_template(bad)


def test_status_names_are_google_rpc_codes() -> None:
    assert set(schema.STATUS_NAMES) == set(code_pb2.Code.keys()) - {"OK"}
    assert schema.status_code("NOT_FOUND") == 5 and schema.status_name(16) == "UNAUTHENTICATED"
    assert schema.status_name(0) is None
    assert all(schema.STATUS_OF_HTTP[schema.http_status(name)] == name for name in schema.HTTP_STATUS)


def test_the_catalogue_names_what_scoring_implements() -> None:
    judges = {name for name, builtin in schema.BUILTINS.items() if builtin.family == "judge"}
    checks = {name for name, builtin in schema.BUILTINS.items() if builtin.family == "check"}
    assert judges == JUDGE_NAMES
    assert checks == set(CHECKS)
    required = {b.name: tuple(p.name for p in b.params if p.required) for b in schema.BUILTINS.values()}
    assert {name: params for name, params in required.items() if params and name in CHECKS} == REQUIRED_PARAMS
    assert schema.BUILTINS["NoPii"].default_name == "no_pii"
    assert schema.builtin_names() == sorted([*CHECKS, *JUDGE_NAMES, "Guidelines"])
    sessions = {name for name, builtin in schema.BUILTINS.items() if builtin.target == "session"}
    assert sessions == set(CONVERSATION_JUDGES) | {"ConversationalGuidelines"}


def test_specs_are_checked_against_the_catalogue() -> None:
    with pytest.raises(ValidationError, match="unknown builtin 'Nope'; known: Completeness, ConversationCompleteness"):
        ScorerSpec(name="x", builtin="Nope")
    with pytest.raises(ValidationError, match=r"builtin RegexMatch needs params \['pattern'\]"):
        ScorerSpec(name="x", builtin="RegexMatch", params={"must_match": False})
    assert ScorerSpec(name="x", builtin="RegexMatch", params={"pattern": "a+"}).builtin == "RegexMatch"
    assert ScorerSpec(name="g", builtin="Guidelines", params={"guidelines": ["Be kind"]}).kind == "builtin"


def imported_by(module: str, then: str = "") -> set[str]:
    """The modules a fresh interpreter has loaded after importing `module` (and running `then`)."""
    code = "\n".join(["import json, sys", f"import {module}", then, "print(json.dumps(sorted(sys.modules)))"])
    return set(json.loads(subprocess.check_output([sys.executable, "-c", code], text=True)))


def test_validating_a_spec_does_not_import_the_model_sdk() -> None:
    validate = "tracejudge.scoring.spec.ScorerSpec(name='s', builtin='Safety', sample_rate=1.0)"
    loaded = imported_by("tracejudge.scoring.spec", then=validate)
    assert "tracejudge.schema" in loaded  # the catalogue is what it checks against
    assert not {m for m in loaded if m == "openai" or m.startswith("openai.")}
    assert not {"tracejudge.scoring.judges", "tracejudge.scoring.judge_client", "tracejudge.scoring.checks"} & loaded


def test_the_schema_imports_no_transport_and_no_part_of_tracejudge() -> None:
    loaded = imported_by("tracejudge.schema")
    assert not {m for m in loaded if m.split(".")[0] in ("grpc", "aiohttp", "openai")}
    ours = {m for m in loaded if m.startswith("tracejudge.")}
    assert ours == {"tracejudge.schema", "tracejudge.proto", "tracejudge.proto.scorers_pb2"}


def test_the_client_classes_name_the_catalogue_builtins_and_take_their_params() -> None:
    """The client's classes, the schema's catalogue and scoring's implementations name the same builtins, and
    each class takes exactly its entry's params (required ones positionally, without a default)."""
    assert set(BUILTIN_CLASSES) == set(schema.BUILTINS) == set(CHECKS) | JUDGE_NAMES
    for name, cls in BUILTIN_CLASSES.items():
        entry = schema.BUILTINS[name]
        assert (cls.__name__, cls.builtin_name, cls.default_name) == (name, name, entry.default_name)
        assert cls.__doc__ is not None and cls.__doc__.startswith(entry.description)
        parameters = dict(inspect.signature(cls).parameters)
        assert parameters.pop("name").default is None
        if entry.family == "judge":
            assert list(parameters) == [*(param.name for param in entry.params), "model"], name
            continue
        assert list(parameters) == [param.name for param in entry.params], name
        for param in entry.params:
            default = parameters[param.name].default
            assert default is inspect.Parameter.empty if param.required else default is None, (name, param.name)


def test_a_client_class_sends_the_catalogue_defaults() -> None:
    assert LatencyUnder().params == {"threshold_ms": 10_000}
    assert LatencyUnder(threshold_ms=5000).params == {"threshold_ms": 5000}
    assert RegexMatch("a+").params == {"pattern": "a+", "must_match": True}
    assert NoPii(field="inputs").params == {"field": "inputs"}
    assert (NoError().params, NoError().name, Safety(model="m").model) == ({}, "no_error", "m")
    assert "threshold_ms (number, default 10000)" in str(LatencyUnder.__doc__)


def test_importing_the_client_imports_no_server_part() -> None:
    loaded = imported_by("tracejudge.scorers", then="tracejudge.scorers.Safety()")
    server = {m for m in loaded if m.split(".")[:2] in (["tracejudge", p] for p in ("scoring", "receiver", "exporter"))}
    assert not server, sorted(server)
    assert not {m for m in loaded if m.startswith(("tracejudge.control", "aiohttp", "openai"))}
    ours = {m.split(".")[1] for m in loaded if m.startswith("tracejudge.")}
    assert ours == {"client", "model", "proto", "schema", "scorers"}

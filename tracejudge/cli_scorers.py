"""`tracejudge scorers ...` and `tracejudge feedback ...`: a running sidecar's scorers, and human feedback on its
traces, through its control plane.

The same calls as tracejudge.scorers (MLflow's register/start/update/stop/delete/list/get), at
TRACEJUDGE_ENDPOINT (default 127.0.0.1:4317) with TRACEJUDGE_TOKEN when the sidecar needs one, and
TRACEJUDGE_CA_FILE / TRACEJUDGE_CERT_FILE / TRACEJUDGE_KEY_FILE for a grpcs:// or https:// sidecar.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Callable
from typing import Any, TypeVar

import click
import yaml

from tracejudge.schema import VALUE_TYPES
from tracejudge.scorers import AssessmentSource, ControlPlaneError, Scorer, ScorerClient, ScorerSamplingConfig

F = TypeVar("F", bound=Callable[..., Any])


def _client() -> ScorerClient:
    client = click.get_current_context().find_object(ScorerClient)
    assert client is not None
    return client


def _reported(command: F) -> F:
    """Control-plane errors as one line on stderr and exit code 1 (2 for usage errors, as click does)."""

    @functools.wraps(command)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except ControlPlaneError as exc:
            first_line = exc.message.strip().partition("\n")[0]
            raise click.ClickException(f"{first_line} ({exc.code})") from None
        except ValueError as exc:
            raise click.ClickException(str(exc).splitlines()[0]) from None

    return run  # type: ignore[return-value]


def _sidecar_options(command: F) -> F:
    """The options that reach a sidecar's control plane, shared by `scorers` and `feedback`."""
    for option in reversed(_SIDECAR_OPTIONS):
        command = option(command)
    return command


_SIDECAR_OPTIONS = [
    click.option(
        "--endpoint",
        envvar="TRACEJUDGE_ENDPOINT",
        metavar="HOST:PORT|URL",
        help="The sidecar: host:port or grpc://host:port (gRPC), http://host:port (HTTP/JSON); grpcs:// and "
        "https:// for TLS [127.0.0.1:4317]. Env: TRACEJUDGE_ENDPOINT",
    ),
    click.option(
        "--token",
        envvar="TRACEJUDGE_TOKEN",
        help="Bearer token, when the sidecar's control plane has one. Env: TRACEJUDGE_TOKEN",
    ),
    click.option(
        "--ca-file",
        envvar="TRACEJUDGE_CA_FILE",
        metavar="FILE",
        help="CA certificate (PEM) that verifies a grpcs:// or https:// sidecar [the system's roots]. "
        "Env: TRACEJUDGE_CA_FILE",
    ),
    click.option(
        "--cert-file",
        envvar="TRACEJUDGE_CERT_FILE",
        metavar="FILE",
        help="Client certificate (PEM), when the sidecar requires mutual TLS; with --key-file. "
        "Env: TRACEJUDGE_CERT_FILE",
    ),
    click.option(
        "--key-file",
        envvar="TRACEJUDGE_KEY_FILE",
        metavar="FILE",
        help="The client certificate's private key (PEM). Env: TRACEJUDGE_KEY_FILE",
    ),
    click.option("--timeout", type=float, default=10.0, show_default=True, help="Seconds per call."),
]


@click.group("scorers")
@_sidecar_options
@click.pass_context
def scorers(
    ctx: click.Context,
    endpoint: str | None,
    token: str | None,
    ca_file: str | None,
    cert_file: str | None,
    key_file: str | None,
    timeout: float,
) -> None:
    """List, register, start, update, stop and delete the scorers of a running tracejudge."""
    ctx.obj = _connect(endpoint, token, timeout, ca_file, cert_file, key_file)


def _connect(endpoint: str | None, token: str | None, timeout: float, ca_file: str | None, cert_file: str | None,
             key_file: str | None) -> ScorerClient:  # fmt: skip
    try:
        return ScorerClient(endpoint, token, timeout, ca_file=ca_file, cert_file=cert_file, key_file=key_file)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--endpoint") from None


@scorers.command("list")
@click.option("--output", "-o", type=click.Choice(["table", "json", "yaml"]), default="table", show_default=True)
@_reported
def list_command(output: str) -> None:
    """Every registered scorer: name, kind, status, sample rate, filter."""
    items = _client().list()
    if output != "table":
        click.echo(_dump([item.to_dict() for item in items], output))
        return
    rows = [("NAME", "KIND", "STATUS", "SAMPLE_RATE", "FILTER")]
    rows += [(s.name, _kind(s), s.status.value, f"{s.sample_rate:g}", s.filter_string or "") for s in items]
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    for row in rows:
        click.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False)) + "  " + row[4])
    if not items:
        click.echo("(no scorers registered)")


@scorers.command("get")
@click.argument("name")
@click.option("--output", "-o", type=click.Choice(["yaml", "json"]), default="yaml", show_default=True)
@_reported
def get_command(name: str, output: str) -> None:
    """One scorer, as a config file's `scorers:` entry plus its status."""
    click.echo(_dump(_client().get(name).to_dict(), output))


@scorers.command("register")
@click.argument("name")
@click.option("--builtin", metavar="NAME", help="A built-in judge or check: Safety, Correctness, NoError, ...")
@click.option("--guidelines", multiple=True, metavar="TEXT", help="A Guidelines judge rule; repeatable.")
@click.option("--instructions", metavar="TEMPLATE", help="A make_judge prompt using {{ inputs }}, {{ outputs }}, ...")
@click.option(
    "--feedback-value-type",
    metavar="TYPE",
    help=f"What a prompt judge answers: {', '.join(VALUE_TYPES)}, or categories as a,b,c.",
)
@click.option("--model", help="A judge endpoint name from the config's `judges:`, or a model URI.")
@click.option("--param", "params", multiple=True, metavar="KEY=VALUE", help="A builtin option; repeatable.")
@click.option(
    "--target",
    metavar="TARGET",
    help="What one verdict judges: trace, session, or spans as YAML, e.g. '{span_type: RETRIEVER}' "
    "(keys span_type, name, filter_string, max_spans_per_trace). Unset: follows from the scorer.",
)
@_reported
def register_command(
    name: str,
    builtin: str | None,
    guidelines: tuple[str, ...],
    instructions: str | None,
    feedback_value_type: str | None,
    model: str | None,
    params: tuple[str, ...],
    target: str | None,
) -> None:
    """Register NAME, stopped (sample rate 0); `start` runs it. Code scorers come from the config file only."""
    kinds = [
        flag
        for flag, value in (("--builtin", builtin), ("--guidelines", guidelines), ("--instructions", instructions))
        if value
    ]
    if len(kinds) != 1:
        raise click.UsageError(f"give exactly one of --builtin, --guidelines, --instructions (got {kinds or 'none'})")
    definition = Scorer(
        name=name,
        builtin=builtin,
        guidelines=list(guidelines) or None,
        instructions=instructions,
        feedback_value_type=_parse_value_type(feedback_value_type),
        model=model,
        params=_parse_params(params),
        target=_parse_target(target),
    )
    registered = _client().register(definition)
    click.echo(
        f"registered {registered.name} ({_kind(registered)}), {registered.status.value.lower()}; "
        f"run it with: tracejudge scorers start {registered.name} --sample-rate RATE"
    )


def _parse_target(text: str | None) -> str | dict[str, Any] | None:
    if text is None:
        return None
    value = yaml.safe_load(text)
    if not isinstance(value, (str, dict)):
        raise click.BadParameter("expected trace, session or a mapping such as '{span_type: RETRIEVER}'",
                                 param_hint="--target")  # fmt: skip
    return value


@scorers.command("start")
@click.argument("name")
@click.option("--sample-rate", type=float, required=True, help="Fraction of traces to score, 0 < RATE <= 1.")
@click.option("--filter", "filter_string", metavar="FILTER", help="MLflow search_traces filter; '' removes it.")
@_reported
def start_command(name: str, sample_rate: float, filter_string: str | None) -> None:
    """Start NAME on a sample of the traces (matching --filter)."""
    _echo_state("started", _client().start(name, ScorerSamplingConfig(sample_rate, filter_string)))


@scorers.command("update")
@click.argument("name")
@click.option("--sample-rate", type=float, help="New fraction of traces to score (0 stops it).")
@click.option("--filter", "filter_string", metavar="FILTER", help="New filter; '' removes it.")
@_reported
def update_command(name: str, sample_rate: float | None, filter_string: str | None) -> None:
    """Change NAME's sampling; what is not given is kept."""
    if sample_rate is None and filter_string is None:
        raise click.UsageError("give --sample-rate and/or --filter")
    _echo_state("updated", _client().update(name, ScorerSamplingConfig(sample_rate, filter_string)))


@scorers.command("stop")
@click.argument("name")
@_reported
def stop_command(name: str) -> None:
    """Stop NAME (sample rate 0); it stays registered."""
    _echo_state("stopped", _client().stop(name))


@scorers.command("delete")
@click.argument("name")
@_reported
def delete_command(name: str) -> None:
    """Unregister NAME (a scorer from the config file comes back at the next start)."""
    _client().delete(name)
    click.echo(f"deleted {name}")


@scorers.command("end-session")
@click.argument("session_id")
@_reported
def end_session_command(session_id: str) -> None:
    """The conversation SESSION_ID is over: its multi-turn scorers judge it now, not after sessions.idle."""
    _client().end_session(session_id)
    click.echo(f"ended {session_id}: its session scorers judge it now")


def _echo_state(verb: str, scorer: Scorer) -> None:
    where = f", filter {scorer.filter_string}" if scorer.filter_string else ""
    click.echo(f"{verb} {scorer.name}: {scorer.status.value.lower()}, sample_rate {scorer.sample_rate:g}{where}")


def _kind(scorer: Scorer) -> str:
    if scorer.builtin is not None:
        return f"builtin:{scorer.builtin}"
    if scorer.code is not None:
        return f"code:{scorer.code}"
    return scorer.kind


def _dump(data: Any, output: str) -> str:
    if output == "json":
        return json.dumps(data, indent=2, ensure_ascii=False)
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True).rstrip("\n")


def _parse_value_type(text: str | None) -> str | list[str] | None:
    if text is None:
        return None
    if text in VALUE_TYPES:
        return text
    categories = [item.strip() for item in text.split(",") if item.strip()]
    if len(categories) < 2:
        raise click.BadParameter(
            f"use one of {', '.join(VALUE_TYPES)} or at least two categories as a,b",
            param_hint="--feedback-value-type",
        )
    return categories


def _parse_params(items: tuple[str, ...]) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise click.BadParameter(f"expected KEY=VALUE, got {item!r}", param_hint="--param")
        try:
            params[key.strip()] = yaml.safe_load(value) if value.strip() else ""
        except yaml.YAMLError:
            params[key.strip()] = value
    return params


# --------------------------------------------------------------------------------------------- feedback


@click.group("feedback")
@_sidecar_options
@click.pass_context
def feedback(
    ctx: click.Context,
    endpoint: str | None,
    token: str | None,
    ca_file: str | None,
    cert_file: str | None,
    key_file: str | None,
    timeout: float,
) -> None:
    """Human feedback and expectations on traces (MLflow's log_feedback, log_expectation, override_feedback)."""
    ctx.obj = _connect(endpoint, token, timeout, ca_file, cert_file, key_file)


_VALUE = click.option("--value", required=True, help="true/false, a number, or text (an expectation: also JSON)")
_SOURCE_ID = click.option("--source-id", default="", help="Who says so: a user id, a reviewer's name")


@feedback.command("log")
@click.argument("trace_id")
@click.option("--name", required=True, help="What is assessed, e.g. thumbs, helpful, expected_response")
@_VALUE
@_SOURCE_ID
@click.option("--source-type", type=click.Choice(["HUMAN", "LLM_JUDGE", "CODE"]), default="HUMAN", show_default=True)
@click.option("--rationale", help="Why")
@click.option("--span-id", help="The span it is about [the trace's root]")
@click.option("--expectation", is_flag=True, help="An expected answer (ground truth), not feedback")
@click.option("--metadata", "metadata", multiple=True, metavar="KEY=VALUE", help="Repeatable")
@_reported
def feedback_log(trace_id: str, name: str, value: str, source_id: str, source_type: str, rationale: str | None,
                 span_id: str | None, expectation: bool, metadata: tuple[str, ...]) -> None:  # fmt: skip
    """Log feedback (or, with --expectation, an expectation) on TRACE_ID; prints its assessment id."""
    source = AssessmentSource(source_type, source_id)
    extra = dict(item.partition("=")[::2] for item in metadata)
    if expectation:
        logged = _client().log_expectation(trace_id, name, _parsed(value, expectation), source, extra, span_id)
    else:
        logged = _client().log_feedback(trace_id, name, _parsed(value, False), source, rationale, extra, span_id)
    click.echo(logged.assessment_id)


@feedback.command("override")
@click.argument("trace_id")
@click.argument("assessment_id")
@_VALUE
@_SOURCE_ID
@click.option("--rationale", help="Why")
@_reported
def feedback_override(trace_id: str, assessment_id: str, value: str, source_id: str, rationale: str | None) -> None:
    """Replace feedback ASSESSMENT_ID of TRACE_ID (the old one is kept, marked invalid); prints the new id."""
    logged = _client().override_feedback(trace_id, assessment_id, _parsed(value, False),
                                         AssessmentSource("HUMAN", source_id), rationale)  # fmt: skip
    click.echo(logged.assessment_id)


@feedback.command("get")
@click.argument("trace_id")
@click.option("--output", "-o", type=click.Choice(["table", "json"]), default="table", show_default=True)
@_reported
def feedback_get(trace_id: str, output: str) -> None:
    """Every assessment of TRACE_ID: human feedback and expectations, and the judges' archived verdicts."""
    found = _client().get_assessments(trace_id)
    if output == "json":
        click.echo(json.dumps([dataclasses.asdict(a) for a in found], indent=2))
        return
    for a in found:
        kind = "expectation" if a.expectation else "feedback"
        state = "" if a.valid else "  (overridden)"
        click.echo(f"{a.assessment_id}  {kind:<11} {a.name} = {a.value!r}  by {a.source.source_type}"
                   f"{':' + a.source.source_id if a.source.source_id else ''}{state}")  # fmt: skip
        if a.rationale:
            click.echo(f"    {a.rationale}")
    if not found:
        click.echo(f"no assessments of trace {trace_id}")


def _parsed(text: str, expectation: bool) -> Any:
    """--value as the value it spells: true/false, a number, JSON for an expectation, else the text itself."""
    lowered = text.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    try:
        return int(text) if lowered.lstrip("-").isdigit() else float(text)
    except ValueError:
        pass
    if expectation and text.strip()[:1] in ("[", "{"):
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            raise ValueError(f"--value {text!r}: looks like JSON but does not parse") from None
    return text

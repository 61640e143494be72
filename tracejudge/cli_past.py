"""Past traces from the command line: `tracejudge evaluate`, `backfill`, `scorers try`, `dataset export`.

Each reads the archive a sidecar wrote (its data directory) on this machine, with no sidecar needed; the
scorers and judges come from a config file, else the data directory's registry (what the sidecar registered).

The scoring and archive modules are imported inside the commands: `tracejudge serve` imports this module too,
and its process must not carry the openai SDK and extraction (tests/test_architecture.py), nor their memory.
"""

from __future__ import annotations

import functools
import textwrap
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from tracejudge.cli_scorers import _connect, _sidecar_options
from tracejudge.client.errors import ControlPlaneError
from tracejudge.config import ConfigError
from tracejudge.config_file import Config, load_config
from tracejudge.schema import BUILTINS

if TYPE_CHECKING:
    from tracejudge.backfill import BackfillScorerConfig
    from tracejudge.client.client import ScorerClient
    from tracejudge.evaluation import EvaluationResult
    from tracejudge.scoring.spec import ScorerSpec

F = TypeVar("F", bound=Callable[..., Any])

_FILE = click.Path(exists=True, dir_okay=False, path_type=Path)


class _Location(click.ParamType):  # type: ignore[type-arg]
    """A directory as a Path, or a URI (s3://bucket/prefix) kept as text: Path would fold its '//'."""

    name = "DIR|URI"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Path | str:
        if isinstance(value, str) and "://" in value:
            return value
        return Path(value)


_DATA_DIR = click.option(
    "--archive",
    "data_dir",
    type=_Location(),
    envvar="TRACEJUDGE_DATA_DIR",
    default="./data",
    show_default=True,
    help="The data directory a sidecar wrote (its archive/ and scorers.json), an archive directory, or an "
    "archive on object storage (s3://bucket/prefix; archive.s3 options from --config). Env: TRACEJUDGE_DATA_DIR",
)


def _engine(_context: click.Context, _parameter: click.Parameter, value: str) -> str | None:
    name, sep, address = value.partition("=")
    if value == "local":
        return None
    if name != "ray" or (sep and not address):
        raise click.BadParameter(f"{value!r}: give local, ray, or ray=ADDRESS (e.g. ray=ray://head:10001)")
    return value


_ENGINE = click.option(
    "--engine",
    default="local",
    show_default=True,
    metavar="local|ray[=ADDRESS]",
    callback=_engine,
    help="Where the scorers run: this process, or a Ray cluster reading the archive with Ray Data (ray: a local "
    "Ray, or RAY_ADDRESS's cluster; ray=ADDRESS: that one). Needs the extra tracejudge[ray]",
)


def _reported(command: F) -> F:
    """What the user asked for wrong, as one line on stderr and exit code 1."""

    @functools.wraps(command)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except (ConfigError, ValueError, TypeError, OSError, ImportError) as exc:  # BackfillError is a ValueError;
            # OSError: a missing file, or an archive on object storage that cannot be reached (its message says
            # which); ImportError: --engine ray without the extra
            raise click.ClickException(str(exc)) from None

    return run  # type: ignore[return-value]


def _config(path: Path | None, data_dir: Path | str) -> Config:
    config = load_config(path) if path is not None else Config()
    return (
        config
        if (path is not None and "data_dir" in config.model_fields_set) or isinstance(data_dir, str)
        else config.model_copy(update={"data_dir": data_dir})
    )


@click.command("evaluate")
@_DATA_DIR
@click.option("--data", "data_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Evaluate this file instead of the archive: OTLP/JSON(L) (the Collector's file exporter) or "
              "dataset rows (JSONL or Parquet, as `tracejudge dataset export` writes)")  # fmt: skip
@click.option("--since", help="Window start: an ISO date/time or an age (24h, 7d) [7 days before --until]")
@click.option("--until", help="Window end [now]")
@click.option("--filter", "filter_string", help="Only traces this filter string matches (a scorer's syntax)")
@click.option("--config", "--scorer-config", "config_path", type=_FILE,
              help="YAML with scorers: (and judges:), as in tracejudge.yaml")  # fmt: skip
@click.option("--scorer", "names", multiple=True, metavar="NAME",
              help="Only these scorers of the config (repeatable) [all of them]")  # fmt: skip
@click.option("--out", "out", type=click.Path(dir_okay=False, path_type=Path),
              help="Write every verdict here: .parquet or .jsonl")  # fmt: skip
@click.option("--otlp-endpoint", metavar="URL", help="Also emit the verdicts there, as live ones (default: nowhere)")
@_ENGINE
@_reported
def evaluate_command(data_dir: Path | str, data_file: Path | None, since: str | None, until: str | None,
                     filter_string: str | None, config_path: Path | None, names: tuple[str, ...], out: Path | None,
                     otlp_endpoint: str | None, engine: str | None) -> None:  # fmt: skip
    """Judge archived traces, or a file of traces or dataset rows, with the production scorers; print the
    aggregates per scorer and write each verdict to --out. Emits nothing unless --otlp-endpoint."""
    from tracejudge.evaluation import ArchivedTraces, evaluate
    from tracejudge.scoring.registry import ScorerRegistry

    config = _config(config_path, data_dir)
    data: Any = data_file if data_file is not None else ArchivedTraces(data_dir, since, until, filter_string)
    specs: Sequence[Any] | None = list(names) if names else None
    if specs is None and not config.scorers and isinstance(data_dir, Path):
        specs = [spec for spec in ScorerRegistry(data_dir / "scorers.json").all()] or None
    result = evaluate(data, specs, config=config, output_path=out, otlp_endpoint=otlp_endpoint, engine=engine)
    _print_summary(result)
    if out is not None:
        click.echo(f"{len(result.rows)} verdicts written to {out}")


@click.command("backfill")
@click.option("--archive", "data_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Run offline over this data directory (a sidecar's, or a copy) [unset: ask the running "
              "sidecar at --endpoint to run the job]")  # fmt: skip
@_sidecar_options
@click.option("--scorer", "scorers", multiple=True, metavar="NAME[=RATE]",
              help="A registered scorer, at its live rate or RATE (repeatable)")  # fmt: skip
@click.option("--since", help="Window start: an ISO date/time or an age (24h, 7d) [7 days before --until]")
@click.option("--until", help="Window end [now]")
@click.option("--config", "config_path", type=_FILE, envvar="TRACEJUDGE_CONFIG",
              help="With --archive: tracejudge.yaml, its scorers: and judges: [the data dir's registry]")  # fmt: skip
@click.option("--rescore", is_flag=True, help="Judge again what already has a verdict of the same scorer version")
@click.option("--skipped", "skipped_only", is_flag=True,
              help="Only the pairs live scoring recorded as skipped (backlog full, deadline, restart...)")  # fmt: skip
@click.option("--otlp-endpoint", metavar="URL",
              help="With --archive: emit the verdicts there too, into the original traces at the backend "
              "(a sidecar's job emits them as live ones)")  # fmt: skip
@click.option("--yes", is_flag=True, help="Do not ask before judging (the estimate is still printed)")
@click.option("--resume", "resume_id", metavar="JOB_ID",
              help="With --archive: run a job that did not finish again (a sidecar resumes its own)")  # fmt: skip
@click.option("--cancel", "cancel_id", metavar="JOB_ID", help="Cancel the sidecar's job JOB_ID and exit")
@click.option("--list", "list_jobs", is_flag=True, help="List the backfill jobs (of --archive, or the sidecar's)")
@click.option("--progress/--no-progress", default=True, show_default=True, help="A progress bar on stderr")
@_ENGINE
@_reported
def backfill_command(data_dir: Path | None, endpoint: str | None, token: str | None, ca_file: str | None,
                     cert_file: str | None, key_file: str | None, timeout: float, scorers: tuple[str, ...],
                     since: str | None, until: str | None, config_path: Path | None, rescore: bool,
                     skipped_only: bool, otlp_endpoint: str | None, yes: bool, resume_id: str | None,
                     cancel_id: str | None, list_jobs: bool, progress: bool,
                     engine: str | None) -> None:  # fmt: skip
    """Apply registered scorers to past traces (default: the last 7 days), with the live sampler; a second
    run adds nothing unless --rescore; a scorer whose version changed is judged again. Without --archive the
    running sidecar runs the job, below live scoring's priority, and its verdicts are emitted as live ones."""
    if data_dir is None:
        for given, name in (
            (config_path, "--config"),
            (otlp_endpoint, "--otlp-endpoint"),
            (resume_id, "--resume"),
            (engine, "--engine"),
        ):
            if given is not None:
                raise click.UsageError(f"{name} needs --archive (a sidecar runs its jobs with its own settings)")
        client = _connect(endpoint, token, timeout, ca_file, cert_file, key_file)
        try:
            _backfill_in_sidecar(client, scorers, since, until, rescore, skipped_only, yes, cancel_id, list_jobs,
                                 progress)  # fmt: skip
        except ControlPlaneError as exc:
            raise click.ClickException(str(exc)) from None
        return
    if cancel_id is not None:
        raise click.UsageError("--cancel is for a sidecar's jobs (no --archive); an offline job stops with Ctrl-C")
    from tracejudge.backfill import Backfill, BackfillJob

    if not isinstance(data_dir, Path):
        raise click.ClickException(f"--archive {data_dir.split('?', 1)[0]}: backfill needs the data directory "
                                   "(its jobs and registry); an archive on object storage goes in --config's "
                                   "archive.directory")  # fmt: skip
    if list_jobs:
        for job in BackfillJob.list(data_dir / "backfill"):
            verdicts = sum(job.assessments.values())
            _echo_job_line(job.job_id, job.status, job.scorers, job.start_time, job.end_time, job.traces, verdicts)
        return
    config = _config(config_path, data_dir)
    if resume_id is not None:
        backfill = Backfill.resume(data_dir, resume_id, config=config, otlp_endpoint=otlp_endpoint, engine=engine)
    else:
        wanted = [_scorer_rate(text) for text in scorers]
        backfill = Backfill(data_dir, wanted, config=config, start_time=since, end_time=until, rescore=rescore,
                            skipped_only=skipped_only, otlp_endpoint=otlp_endpoint, engine=engine)  # fmt: skip
    estimate = backfill.estimate()
    click.echo(f"backfill {backfill.job.job_id}: {backfill.job.start_time} .. {backfill.job.end_time}")
    click.echo(estimate.describe())
    if estimate.judge_calls and not yes:
        click.confirm("Judge them?", abort=True, err=True)
    job = backfill.run(progress=progress)
    _echo_result(job.status, job.traces, job.assessments, job.input_tokens + job.output_tokens, job.skipped, job.cost)
    if job.status != "succeeded":
        raise click.ClickException(job.error or f"backfill {job.status}; run it again with --resume {job.job_id}")


def _backfill_in_sidecar(client: ScorerClient, scorers: tuple[str, ...], since: str | None, until: str | None,
                         rescore: bool, skipped_only: bool, yes: bool, cancel_id: str | None, list_jobs: bool,
                         progress: bool) -> None:  # fmt: skip
    if list_jobs:
        for job in client.list_backfills():
            verdicts = sum(job.assessments.values())
            _echo_job_line(job.job_id, job.status, job.scorers, job.start_time, job.end_time, job.traces,
                           verdicts)  # fmt: skip
        return
    if cancel_id is not None:
        click.echo(f"{cancel_id}: {client.get_backfill(cancel_id).cancel().status}")
        return
    wanted = [_scorer_rate(text) for text in scorers]
    estimate = client.backfill_scorers(wanted, since, until, rescore=rescore, skipped_only=skipped_only,
                                       dry_run=True).wait(180)  # fmt: skip
    if estimate.status != "estimate":
        raise click.ClickException(estimate.error or f"no estimate ({estimate.status})")
    click.echo(f"backfill in {client.endpoint}: {estimate.start_time} .. {estimate.end_time}")
    from tracejudge.backfill_jobs import describe_estimate

    shown = estimate.estimate
    click.echo(describe_estimate(shown.get("traces", 0), shown.get("pairs", {}), shown.get("already_scored", {}),
                                 shown.get("judge_calls", 0), shown.get("tokens"), shown.get("cost"),
                                 shown.get("budget", ""), shown.get("tokens_from_prompts", [])))  # fmt: skip
    if estimate.estimate.get("judge_calls", 0) and not yes:
        click.confirm("Judge them?", abort=True, err=True)
    job = client.backfill_scorers(wanted, since, until, rescore=rescore, skipped_only=skipped_only)
    click.echo(f"job {job.job_id} started; Ctrl-C leaves it running (tracejudge backfill --cancel {job.job_id})")
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=estimate.total_traces or None, unit="trace", desc="backfill", dynamic_ncols=True)
    try:
        while not job.refresh().done:
            if bar is not None:
                bar.total = job.total_traces or bar.total
                bar.n = job.traces
                cost = job.to_dict().get("cost")
                spend = {} if cost is None else {"cost": f"{cost:.4f}"}
                bar.set_postfix(verdicts=sum(job.assessments.values()),
                                tokens=job.input_tokens + job.output_tokens, **spend, refresh=False)  # fmt: skip
                bar.refresh()
            time.sleep(0.5)
    finally:
        if bar is not None:
            bar.close()
    skipped: dict[str, dict[str, int]] = {}
    for key, count in job.skipped.items():
        name, _, reason = key.rpartition("/")
        skipped.setdefault(name, {})[reason] = count
    _echo_result(job.status, job.traces, job.assessments, job.input_tokens + job.output_tokens, skipped,
                 job.to_dict().get("cost"))  # fmt: skip
    if job.status != "succeeded":
        raise click.ClickException(job.error or f"backfill {job.status}")


def _echo_job_line(job_id: str, status: str, scorers: dict[str, Any], start: str, end: str, traces: int,
                   verdicts: int) -> None:  # fmt: skip
    click.echo(f"{job_id}  {status:<9}  {','.join(scorers)}  {start} .. {end}  traces={traces} verdicts={verdicts}")


def _echo_result(status: str, traces: int, assessments: dict[str, int], tokens: int,
                 skipped: dict[str, dict[str, int]], cost: float | None) -> None:  # fmt: skip
    judged = ", ".join(f"{name} {count}" for name, count in sorted(assessments.items())) or "none"
    spend = f"; judge cost {cost:,.4f}" if cost is not None else ""
    click.echo(f"{status}: {traces} traces read; verdicts: {judged}; judge tokens {tokens}{spend}")
    for name, reasons in skipped.items():
        click.echo(f"  {name} not judged: " + ", ".join(f"{reason} {n}" for reason, n in reasons.items()))


@click.command("try")
@click.argument("name")
@_DATA_DIR
@click.option("--last", type=click.IntRange(1, 10_000), default=20, show_default=True,
              help="The most recent traces to judge")  # fmt: skip
@click.option("--trace-id", "trace_ids", multiple=True, help="Judge these traces instead (repeatable)")
@click.option("--since", help="How far back to look [7d]")
@click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              envvar="TRACEJUDGE_CONFIG", help="tracejudge.yaml: its scorers: and judges:")  # fmt: skip
@_reported
def try_command(name: str, data_dir: Path | str, last: int, trace_ids: tuple[str, ...], since: str | None,
                config_path: Path | None) -> None:  # fmt: skip
    """Run scorer NAME (registered, in the config, or a builtin such as Safety) on recent archived traces and
    show each verdict and rationale next to the trace's request and response. Emits and records nothing."""
    from tracejudge.evaluation import ArchivedTraces, evaluate

    config = _config(config_path, data_dir)
    spec = _find_spec(name, config, data_dir)
    data = ArchivedTraces(data_dir, since=since, trace_ids=trace_ids, last=None if trace_ids else last)
    result = evaluate(data, [spec.model_copy(update={"sample_rate": 1.0})], config=config)
    if not result.rows:
        click.echo(f"no traces to judge in {data_dir} (skipped: {result.skipped or 'none'})")
        return
    for row in result.rows:
        verdict = str(row["label"] or row["value"] or "-")
        if row["error"]:
            verdict = f"error ({row['error_type']}): {row['error']}"
        click.echo(f"trace {row['trace_id']}  {row['name']} = {verdict}")
        click.echo(f"  request:   {_short(row['request'])}")
        click.echo(f"  response:  {_short(row['response'])}")
        if row["rationale"]:
            click.echo(textwrap.indent(textwrap.fill(f"rationale: {row['rationale']}", 110), "  "))
    _print_summary(result)


@click.group("dataset")
def dataset() -> None:
    """Evaluation datasets made from production traces."""


@dataset.command("export")
@_DATA_DIR
@click.option("--since", help="Window start: an ISO date/time or an age (24h, 7d) [7 days before --until]")
@click.option("--until", help="Window end [now]")
@click.option("--filter", "filter_string", help="Only traces this filter string matches (a scorer's syntax)")
@click.option("--with-feedback", is_flag=True, help="Only traces humans gave feedback on, with that feedback")
@click.option("--out", "out", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="The dataset file: .jsonl, or .parquet")  # fmt: skip
@_reported
def dataset_export(data_dir: Path | str, since: str | None, until: str | None, filter_string: str | None,
                   with_feedback: bool, out: Path) -> None:  # fmt: skip
    """Write archived traces as dataset rows (inputs, outputs, expectations, tags, and feedback) that
    `tracejudge evaluate --data FILE` reads back. Expectations logged for a trace are joined in."""
    from tracejudge.evaluation import export_dataset

    written = export_dataset(data_dir, out, since=since, until=until, filter_string=filter_string,
                             with_feedback=with_feedback)  # fmt: skip
    click.echo(f"{written} rows written to {out}")


def _find_spec(name: str, config: Config, data_dir: Path | str) -> ScorerSpec:
    from tracejudge.scoring.registry import ScorerRegistry
    from tracejudge.scoring.spec import ScorerSpec

    for spec in config.scorers:
        if spec.name == name:
            return spec
    registered = ScorerRegistry(data_dir / "scorers.json").all() if isinstance(data_dir, Path) else []
    for spec in registered:
        if spec.name == name:
            return spec
    if name in BUILTINS:
        return ScorerSpec(name=BUILTINS[name].default_name, builtin=name)
    raise ValueError(f"no scorer {name!r}: not in the config, not registered in {data_dir}, and no builtin")


def _scorer_rate(text: str) -> BackfillScorerConfig:
    from tracejudge.backfill import BackfillScorerConfig

    name, sep, rate = text.partition("=")
    if not sep:
        return BackfillScorerConfig(name)
    try:
        return BackfillScorerConfig(name, float(rate))
    except ValueError:
        raise ValueError(f"--scorer {text}: RATE must be a number in (0, 1], e.g. {name}=0.5") from None


def _print_summary(result: EvaluationResult) -> None:
    click.echo(f"{result.traces} traces" + (f", {result.sessions} sessions" if result.sessions else ""))
    for name, values in result.per_scorer.items():
        parts = [f"{key}={_number(value)}" for key, value in values.items() if value is not None]
        click.echo(f"  {name}: " + " ".join(parts))
    for name, reasons in result.skipped.items():
        click.echo(f"  {name} not judged: " + ", ".join(f"{reason} {n}" for reason, n in reasons.items()))


def _number(value: float | int | None) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def _short(text: str, width: int = 100) -> str:
    flat = " ".join((text or "").split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"

"""Past traces from the command line: `tracejudge evaluate`, `backfill`, `scorers try`, `dataset export`.

Each reads the archive a sidecar wrote (its data directory) on this machine, with no sidecar needed; the
scorers and judges come from a config file, else the data directory's registry (what the sidecar registered).

The scoring and archive modules are imported inside the commands: `tracejudge serve` imports this module too,
and its process must not carry the openai SDK and extraction (tests/test_architecture.py), nor their memory.
"""

from __future__ import annotations

import functools
import textwrap
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from tracejudge.config import ConfigError
from tracejudge.config_file import Config, load_config
from tracejudge.schema import BUILTINS

if TYPE_CHECKING:
    from tracejudge.backfill import BackfillScorerConfig
    from tracejudge.evaluation import EvaluationResult
    from tracejudge.scoring.spec import ScorerSpec

F = TypeVar("F", bound=Callable[..., Any])

_FILE = click.Path(exists=True, dir_okay=False, path_type=Path)
_DATA_DIR = click.option(
    "--archive",
    "data_dir",
    type=click.Path(file_okay=False, path_type=Path),
    envvar="TRACEJUDGE_DATA_DIR",
    default=Path("./data"),
    show_default=True,
    help="The data directory a sidecar wrote (its archive/ and scorers.json), or an archive directory. "
    "Env: TRACEJUDGE_DATA_DIR",
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
        except (ConfigError, ValueError, TypeError, FileNotFoundError, ImportError) as exc:  # BackfillError: ValueError
            raise click.ClickException(str(exc)) from None

    return run  # type: ignore[return-value]


def _config(path: Path | None, data_dir: Path) -> Config:
    config = load_config(path) if path is not None else Config()
    return (
        config
        if path is not None and "data_dir" in config.model_fields_set
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
def evaluate_command(data_dir: Path, data_file: Path | None, since: str | None, until: str | None,
                     filter_string: str | None, config_path: Path | None, names: tuple[str, ...], out: Path | None,
                     otlp_endpoint: str | None, engine: str | None) -> None:  # fmt: skip
    """Judge archived traces, or a file of traces or dataset rows, with the production scorers; print the
    aggregates per scorer and write each verdict to --out. Emits nothing unless --otlp-endpoint."""
    from tracejudge.evaluation import ArchivedTraces, evaluate
    from tracejudge.scoring.registry import ScorerRegistry

    config = _config(config_path, data_dir)
    data: Any = data_file if data_file is not None else ArchivedTraces(data_dir, since, until, filter_string)
    specs: Sequence[Any] | None = list(names) if names else None
    if specs is None and not config.scorers:
        specs = [spec for spec in ScorerRegistry(data_dir / "scorers.json").all()] or None
    result = evaluate(data, specs, config=config, output_path=out, otlp_endpoint=otlp_endpoint, engine=engine)
    _print_summary(result)
    if out is not None:
        click.echo(f"{len(result.rows)} verdicts written to {out}")


@click.command("backfill")
@_DATA_DIR
@click.option("--scorer", "scorers", multiple=True, metavar="NAME[=RATE]",
              help="A registered scorer, at its live rate or RATE (repeatable)")  # fmt: skip
@click.option("--since", help="Window start: an ISO date/time or an age (24h, 7d) [7 days before --until]")
@click.option("--until", help="Window end [now]")
@click.option("--config", "config_path", type=_FILE, envvar="TRACEJUDGE_CONFIG",
              help="tracejudge.yaml: its scorers: and judges: [the data dir's registry]")  # fmt: skip
@click.option("--rescore", is_flag=True, help="Judge again what already has a verdict of the same scorer version")
@click.option("--skipped", "skipped_only", is_flag=True,
              help="Only the pairs live scoring recorded as skipped (backlog full, deadline, restart...)")  # fmt: skip
@click.option("--otlp-endpoint", metavar="URL",
              help="Emit the verdicts there too, into the original traces at the backend")  # fmt: skip
@click.option("--yes", is_flag=True, help="Do not ask before judging (the estimate is still printed)")
@click.option("--resume", "resume_id", metavar="JOB_ID", help="Run a job that did not finish again, as it was asked")
@click.option("--list", "list_jobs", is_flag=True, help="List this data directory's backfill jobs and exit")
@click.option("--progress/--no-progress", default=True, show_default=True, help="A progress bar on stderr")
@_ENGINE
@_reported
def backfill_command(data_dir: Path, scorers: tuple[str, ...], since: str | None, until: str | None,
                     config_path: Path | None, rescore: bool, skipped_only: bool, otlp_endpoint: str | None,
                     yes: bool, resume_id: str | None, list_jobs: bool, progress: bool,
                     engine: str | None) -> None:  # fmt: skip
    """Apply registered scorers to the archive's past traces (default: the last 7 days), with the live
    sampler; a second run adds nothing unless --rescore; a scorer whose version changed is judged again."""
    from tracejudge.backfill import Backfill, BackfillJob

    if list_jobs:
        for job in BackfillJob.list(data_dir / "backfill"):
            verdicts = sum(job.assessments.values())
            click.echo(f"{job.job_id}  {job.status:<9}  {','.join(job.scorers)}  {job.start_time} .. {job.end_time}"
                       f"  traces={job.traces} verdicts={verdicts}")  # fmt: skip
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
    judged = ", ".join(f"{name} {count}" for name, count in sorted(job.assessments.items())) or "none"
    click.echo(f"{job.status}: {job.traces} traces read; verdicts: {judged}; judge tokens "
               f"{job.input_tokens + job.output_tokens}")  # fmt: skip
    for name, reasons in job.skipped.items():
        click.echo(f"  {name} not judged: " + ", ".join(f"{reason} {n}" for reason, n in reasons.items()))
    if job.status != "succeeded":
        raise click.ClickException(job.error or f"backfill {job.status}; run it again with --resume {job.job_id}")


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
def try_command(name: str, data_dir: Path, last: int, trace_ids: tuple[str, ...], since: str | None,
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
def dataset_export(data_dir: Path, since: str | None, until: str | None, filter_string: str | None,
                   with_feedback: bool, out: Path) -> None:  # fmt: skip
    """Write archived traces as dataset rows (inputs, outputs, expectations, tags, and feedback) that
    `tracejudge evaluate --data FILE` reads back. Expectations logged for a trace are joined in."""
    from tracejudge.evaluation import export_dataset

    written = export_dataset(data_dir, out, since=since, until=until, filter_string=filter_string,
                             with_feedback=with_feedback)  # fmt: skip
    click.echo(f"{written} rows written to {out}")


def _find_spec(name: str, config: Config, data_dir: Path) -> ScorerSpec:
    from tracejudge.scoring.registry import ScorerRegistry
    from tracejudge.scoring.spec import ScorerSpec

    for spec in config.scorers:
        if spec.name == name:
            return spec
    for spec in ScorerRegistry(data_dir / "scorers.json").all():
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

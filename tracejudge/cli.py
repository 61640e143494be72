"""The `tracejudge` command."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import click

from tracejudge import __version__
from tracejudge.cli_demo import demo_command
from tracejudge.cli_past import backfill_command, dataset, evaluate_command, try_command
from tracejudge.cli_scorers import feedback, scorers
from tracejudge.cli_tail import tail
from tracejudge.config import ConfigError
from tracejudge.config_file import DEFAULT_SCORERS, load_config, with_default_scorers
from tracejudge.logs import configure_logging

log = logging.getLogger("tracejudge.cli")


@click.group()
@click.version_option(__version__, prog_name="tracejudge")
def main() -> None:
    """tracejudge: an OpenTelemetry sidecar that forwards, archives and scores LLM and agent traces."""


@main.command()
@click.option(
    "--config",
    "config_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    envvar="TRACEJUDGE_CONFIG",
    help="YAML config file (every key is optional). Env: TRACEJUDGE_CONFIG",
)
@click.option(
    "--grpc",
    "grpc_endpoint",
    metavar="HOST:PORT",
    envvar="TRACEJUDGE_GRPC",
    help="OTLP/gRPC listen address [127.0.0.1:4317]; 'off' disables. Env: TRACEJUDGE_GRPC",
)
@click.option(
    "--http",
    "http_endpoint",
    metavar="HOST:PORT",
    envvar="TRACEJUDGE_HTTP",
    help="OTLP/HTTP listen address [127.0.0.1:4318]; 'off' disables. Env: TRACEJUDGE_HTTP",
)
@click.option(
    "--forward",
    "forward",
    metavar="URL",
    multiple=True,
    envvar="TRACEJUDGE_FORWARD",
    help="Downstream OTLP endpoint, grpc://host:port or http://host:port; repeatable; replaces the "
    "config's list. Env: TRACEJUDGE_FORWARD (space-separated)",
)
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    envvar="TRACEJUDGE_DATA_DIR",
    help="Where the archive and the forward queues live [./data]. Env: TRACEJUDGE_DATA_DIR",
)
@click.option(
    "--metrics",
    "metrics_endpoint",
    metavar="HOST:PORT",
    envvar="TRACEJUDGE_METRICS",
    help="The admin listener's address (the status page /, /metrics, /healthz, /readyz) [127.0.0.1:9464]; "
    "'off' disables. Env: TRACEJUDGE_METRICS",
)
@click.option(
    "--log-level",
    type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
    envvar="TRACEJUDGE_LOG_LEVEL",
    help="Log level [INFO]. Env: TRACEJUDGE_LOG_LEVEL",
)
def serve(
    config_path: Path | None,
    grpc_endpoint: str | None,
    http_endpoint: str | None,
    forward: tuple[str, ...],
    data_dir: Path | None,
    metrics_endpoint: str | None,
    log_level: str | None,
) -> None:
    """Receive OTLP, forward it, archive it, assemble its traces and score them until SIGTERM or Ctrl-C.

    Without a `scorers:` key in the config (or without a config) every trace gets the no-model checks
    NoError, NonEmptyResponse and NoPii; any `scorers:` key, `[]` included, replaces them."""
    overrides: dict[str, Any] = {}
    for key, value in (
        ("receiver.grpc_endpoint", grpc_endpoint),
        ("receiver.http_endpoint", http_endpoint),
        ("telemetry.prometheus_endpoint", metrics_endpoint),
    ):
        if value is not None:
            overrides[key] = None if value.lower() == "off" else value
    if forward:
        overrides["forward"] = [{"url": url} for url in forward]
    if data_dir is not None:
        overrides["data_dir"] = str(data_dir)
    if log_level is not None:
        overrides["telemetry.log_level"] = log_level.upper()
    if os.environ.get("TRACEJUDGE_TOKEN"):
        overrides["control.token"] = os.environ["TRACEJUDGE_TOKEN"]
    try:
        given = load_config(config_path, overrides)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from exc
    config = with_default_scorers(given)
    configure_logging(config.telemetry.log_level)
    if config is not given:
        checks = ", ".join(str(spec.builtin) for spec in DEFAULT_SCORERS)
        log.info("no scorers: in the config, so every trace gets the default no-model checks %s "
                 "(a config with scorers: replaces them)", checks)  # fmt: skip
    from tracejudge.scoring.registry import RegistryError
    from tracejudge.sidecar import Sidecar

    try:
        Sidecar(config).serve_until_signalled()
    except RegistryError as exc:
        raise click.ClickException(f"cannot start: a scorer in the config cannot run: {exc}") from exc
    except OSError as exc:
        raise click.ClickException(f"cannot start: {exc}") from exc


@main.command("check-config")
@click.argument("config_path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def check_config(config_path: Path) -> None:
    """Validate a config file and print it with every default filled in (as `serve` runs it)."""
    try:
        config = with_default_scorers(load_config(config_path))
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from exc
    import yaml

    click.echo(yaml.safe_dump(config.document(), sort_keys=False))


scorers.add_command(try_command)
main.add_command(scorers)
main.add_command(feedback)
main.add_command(evaluate_command)
main.add_command(backfill_command)
main.add_command(dataset)
main.add_command(demo_command)
main.add_command(tail)


if __name__ == "__main__":
    main()

"""`tracejudge tail`: verdicts in the terminal as a running sidecar makes them.

It reads the status page's JSON (tracejudge/status_page.py, GET /api/verdicts?since=N on the admin listener):
the sidecar keeps its latest verdicts numbered, so each poll asks only for those after the last number seen.
Rationales are model output: control characters are shown as escapes, never sent to the terminal.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from datetime import datetime, timezone
from typing import Any

import click

POLL_S = 1.0


class AdminError(Exception):
    """The admin listener could not be asked, or refused: the message says which and why."""


def fetch_verdicts(admin: str, since: int, scorer: str | None, token: str | None, limit: int) -> dict[str, Any]:
    query = {"since": str(since), "limit": str(limit), **({"scorer": scorer} if scorer else {})}
    url = f"{admin.rstrip('/')}/api/verdicts?{urllib.parse.urlencode(query)}"
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            answer: dict[str, Any] = json.loads(response.read())
            return answer
    except urllib.error.HTTPError as exc:
        text = exc.read().decode("utf-8", errors="replace").strip()
        hint = " (set TRACEJUDGE_TOKEN)" if exc.code == 401 and not token else ""
        raise AdminError(f"{url} answered HTTP {exc.code}: {text}{hint}") from exc
    except (OSError, ValueError) as exc:
        raise AdminError(f"cannot read verdicts from tracejudge's admin listener at {admin}: {exc}") from exc


def printable(text: str) -> str:
    """`text` on one line with every control character (ANSI escapes, newlines) shown escaped."""
    return "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in text)


def verdict_line(verdict: dict[str, Any], width: int = 100) -> str:
    """time, scorer, label/score, trace id, the rationale's start: one line."""
    moment = datetime.fromtimestamp(verdict["time_unix_ms"] / 1000, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")
    if verdict.get("error"):
        outcome = f"error:{verdict.get('error_type') or ''}"
    else:
        outcome = str(verdict.get("label") or verdict.get("value") or "-")
        if verdict.get("score") is not None:
            outcome += f"/{verdict['score']:g}"
    why = printable(str(verdict.get("rationale") or verdict.get("error") or ""))
    if len(why) > width:
        why = why[: width - 1] + "…"
    name, trace_id = printable(str(verdict.get("name"))), printable(str(verdict.get("trace_id") or "-"))
    fields = [moment[:-3] + "Z", name, printable(outcome), trace_id]
    return "  ".join([*fields, why]).rstrip()


@click.command("tail")
@click.option("--admin", default="http://127.0.0.1:9464", show_default=True, envvar="TRACEJUDGE_ADMIN",
              help="The sidecar's admin listener (telemetry.prometheus_endpoint). Env: TRACEJUDGE_ADMIN")  # fmt: skip
@click.option("--scorer", default=None, metavar="NAME", help="Only this scorer's verdicts.")
@click.option("--follow", "-f", is_flag=True, help="Keep printing verdicts as they arrive, until Ctrl-C.")
@click.option("--lines", "-n", default=10, show_default=True, type=click.IntRange(0, 1000),
              help="How many of the latest verdicts to print first.")  # fmt: skip
def tail(admin: str, scorer: str | None, follow: bool, lines: int) -> None:
    """Print the latest verdicts of a running tracejudge, one line each; with -f, go on as they arrive.

    Each line: time (UTC), scorer, label/score, trace id, the start of the rationale. Beyond loopback the
    admin listener needs the control plane's token: set TRACEJUDGE_TOKEN.
    """
    token = os.environ.get("TRACEJUDGE_TOKEN") or None
    try:
        first = fetch_verdicts(admin, 0, scorer, token, max(lines, 1))
    except AdminError as exc:
        raise click.ClickException(str(exc)) from exc
    for verdict in first["verdicts"][-lines:] if lines else []:
        click.echo(verdict_line(verdict))
    if not follow:
        return
    click.echo(f"tracejudge tail: following verdicts at {admin} (Ctrl-C to stop)", err=True)
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C is how it ends: no traceback
        _follow(admin, scorer, token, first["run"], first["next"])


def _follow(admin: str, scorer: str | None, token: str | None, run: str, since: int) -> None:
    unreachable = False
    while True:
        time.sleep(POLL_S)
        try:
            answer = fetch_verdicts(admin, since, scorer, token, 1000)
        except AdminError as exc:
            if not unreachable:
                click.echo(f"tracejudge tail: {exc}; retrying", err=True)
            unreachable = True
            continue
        if unreachable:
            click.echo("tracejudge tail: reconnected", err=True)
            unreachable = False
        if answer["run"] != run:  # the sidecar restarted: its numbering started again
            run, since = answer["run"], 0
            click.echo("tracejudge tail: tracejudge restarted", err=True)
            continue
        verdicts = answer["verdicts"]
        missed = verdicts[0]["seq"] - since - 1 if verdicts and scorer is None else 0
        if missed > 0:  # more arrived between two polls than the sidecar keeps (status_page.recent_verdicts)
            click.echo(f"tracejudge tail: {missed} verdicts came and went between two polls; not shown", err=True)
        for verdict in verdicts:
            click.echo(verdict_line(verdict))
        since = answer["next"]

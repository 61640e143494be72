"""The status page on the admin listener (`/`), in the spirit of the Collector's zPages, and its JSON.

    GET /                       one server-rendered HTML page: scorers, live verdicts, health
    GET /api/verdicts?since=N   verdicts numbered after N (RecentVerdicts), for the page's refresh and `tracejudge tail`
    GET /api/status             what the page shows, as JSON
    GET /status.js, /status.css the page's only script and style (no build step, no third-party code)

Everything comes from what the sidecar already has: the scorer registry, the engine's quarantine, the ring of
recent verdicts and the metrics /metrics serves (parsed back, so the page and Prometheus never disagree).

Rationales are model output and every value may come from traced content, so everything is escaped where it is
written (html.escape on the server, textContent in the script), links are only ever built from the configured
http(s) `status_page.trace_url`, and a Content-Security-Policy allows no inline script, should a value ever slip.

Access follows the control plane's rule (control/service.py): on loopback the page is open; beyond loopback it
needs `control.token` — as `Authorization: Bearer <token>`, or as the password of HTTP Basic auth so that a
browser can ask for it — and with no token set it is refused rather than left open to the network.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import html
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from tracejudge import __version__
from tracejudge.control.service import Access, exposed_endpoints
from tracejudge.recent_verdicts import RecentVerdicts
from tracejudge.scoring.spec import ScorerSpec
from tracejudge.status_assets import SCRIPT, STYLE
from tracejudge.status_page_config import StatusPageConfig, trace_link

NONE = "none"  # the emitter's metric attribute value for "no label" / "no error"


# --------------------------------------------------------------------------------------------- access


class PageAccess:
    """The control plane's rule for the admin listener's pages; /metrics, /healthz and /readyz stay open."""

    def __init__(self, token: str | None, listen: str | None) -> None:
        self._access = Access(token) if token else None
        exposed = exposed_endpoints([listen])
        self._refusal = (
            f"the status page is off: the admin listener is on {', '.join(exposed)}, beyond loopback, and no "
            "control.token (or TRACEJUDGE_TOKEN) is set; set one to use the page from the network"
            if exposed and not token
            else None
        )

    def refuse(self, request: web.Request) -> web.Response | None:
        """None when the caller may see the page; else the answer to send."""
        if self._refusal is not None:
            return web.Response(status=403, text=self._refusal + "\n")
        if self._access is None:
            return None
        refused = self._access.check(_as_bearer(request.headers.get("Authorization")))
        if refused is None:
            return None
        challenge = 'Basic realm="tracejudge status", charset="UTF-8", Bearer'
        return web.Response(status=401, text=refused.message + " (or the token as a Basic auth password)\n",
                            headers={"WWW-Authenticate": challenge})  # fmt: skip


def _as_bearer(authorization: str | None) -> str | None:
    """A browser sends Basic credentials: their password is taken as the token (the user name is ignored)."""
    if not authorization:
        return None
    scheme, _, credentials = authorization.strip().partition(" ")
    if scheme.lower() != "basic":
        return authorization
    try:
        decoded = base64.b64decode(credentials.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return "Basic invalid"  # refused as a wrong token
    return "Bearer " + decoded.partition(":")[2]


# --------------------------------------------------------------------------------------------- metrics


class Samples:
    """A Prometheus text exposition, parsed (prometheus_client's parser: label escaping and all)."""

    def __init__(self, text: str) -> None:
        self.rows: list[tuple[str, dict[str, str], float]] = []
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                self.rows.append((sample.name, dict(sample.labels), float(sample.value)))

    def total(self, metric: str, /, **labels: str) -> float:
        return sum(value for n, have, value in self.rows if n == metric and _has(have, labels))

    def by(self, metric: str, key: str, /, **labels: str) -> dict[str, float]:
        """Sums of `metric` by the value of its label `key`, over samples with `labels`."""
        found: dict[str, float] = defaultdict(float)
        for n, have, value in self.rows:
            if n == metric and key in have and _has(have, labels):
                found[have[key]] += value
        return dict(found)

    def quantile_bound(self, metric: str, q: float, /, **labels: str) -> float | None:
        """The upper bound of the histogram bucket that holds its q-quantile (what the buckets tell for sure:
        interpolating inside a bucket would invent a figure); None with no observation."""
        buckets: dict[float, float] = defaultdict(float)
        for n, have, value in self.rows:
            if n == metric + "_bucket" and _has(have, labels):
                buckets[float(have["le"])] += value
        ordered = sorted(buckets.items())
        if not ordered or ordered[-1][1] <= 0:
            return None
        rank = q * ordered[-1][1]
        return next(bound for bound, count in ordered if count >= rank)

    def mean(self, metric: str, /, **labels: str) -> float | None:
        """A histogram's mean, from its _sum and _count."""
        count = self.total(metric + "_count", **labels)
        return self.total(metric + "_sum", **labels) / count if count else None


def _has(have: Mapping[str, str], wanted: Mapping[str, str]) -> bool:
    return all(have.get(key) == value for key, value in wanted.items())


# --------------------------------------------------------------------------------------------- what is shown


@dataclass(frozen=True)
class Sources:
    """What the page reads; each a callable, so the page always shows the present."""

    verdicts: RecentVerdicts
    scorers: Callable[[], list[ScorerSpec]]
    quarantined: Callable[[], Iterable[str]]
    metrics_text: Callable[[], bytes]  # blocking: called off the event loop
    ready: Callable[[], bool]
    forward: tuple[str, ...] = ()
    archive: str | None = None  # the archive's directory; None: off


def scorer_kind(spec: ScorerSpec) -> str:
    if spec.builtin:
        return f"builtin {spec.builtin}"
    if spec.code:
        return f"code {spec.code}"
    if spec.guidelines:
        return "guidelines"
    return "custom judge" if spec.instructions else "scorer"


def _target(spec: ScorerSpec) -> Any:
    target = spec.target
    return target if target is None or isinstance(target, str) else target.model_dump(exclude_none=True)


def scorer_rows(specs: list[ScorerSpec], quarantined: Iterable[str], samples: Samples) -> list[dict[str, Any]]:
    """One row per registered scorer: its spec, and its counts since the sidecar (or the worker) started."""
    held = set(quarantined)
    rows = []
    for spec in sorted(specs, key=lambda s: s.name):
        name = spec.name
        labels = samples.by("tracejudge_assessments_total", "label", name=name, error_type=NONE)
        by_error = samples.by("tracejudge_assessments_total", "error_type", name=name)
        errors = sum(count for error_type, count in by_error.items() if error_type != NONE)
        passed, failed = labels.get("yes", 0.0), labels.get("no", 0.0)
        tokens = samples.by("tracejudge_judge_tokens_total", "direction", name=name)
        skipped = samples.by("tracejudge_scoring_skipped_total", "reason", scorer=name)
        state = "stopped" if not spec.active else "quarantined" if name in held else "active"
        rows.append({
            "name": name, "kind": scorer_kind(spec), "state": state, "sample_rate": spec.sample_rate,
            "filter": spec.filter_string, "target": _target(spec),
            "version": spec.version, "model": spec.model,
            "runs": samples.total("tracejudge_scoring_scored_total", scorer=name),
            "labels": {label: int(n) for label, n in sorted(labels.items())},
            "pass_rate": passed / (passed + failed) if passed + failed else None,
            "mean_score": samples.mean("gen_ai_evaluation_score", gen_ai_evaluation_name=name),
            "errors": int(errors),
            "skipped": {reason: int(n) for reason, n in sorted(skipped.items())},
            "latency_ms_mean": samples.mean("tracejudge_judge_latency_milliseconds", name=name),
            "latency_ms_p99_at_most": samples.quantile_bound("tracejudge_judge_latency_milliseconds", 0.99, name=name),
            "tokens_in": int(tokens.get("input", 0)), "tokens_out": int(tokens.get("output", 0)),
        })  # fmt: skip
    return rows


def health(sources: Sources, samples: Samples) -> dict[str, Any]:
    """Ingest, forward, archive and scoring, as numbers and a word each: ok, or what is wrong."""
    t = samples.total
    ingest = {"ready": sources.ready(),
              "accepted_items": samples.by("tracejudge_receiver_accepted_items_total", "signal"),
              "refused_items": t("tracejudge_receiver_refused_items_total"),
              "rejected_items": t("tracejudge_receiver_rejected_items_total"),
              "buffered_traces": t("tracejudge_assembler_buffered_traces"),
              "completed_traces": t("tracejudge_assembler_completed_traces_total"),
              "memory_refusing": t("tracejudge_memory_limiter_refusing") > 0,
              "wal_bytes": t("tracejudge_wal_size_bytes"),
              "wal_dropped_items": t("tracejudge_wal_dropped_items_total")}  # fmt: skip
    ingest["state"] = ("not ready" if not ingest["ready"] else "refusing (memory)" if ingest["memory_refusing"]
                       else "dropping" if ingest["wal_dropped_items"] else "ok")  # fmt: skip
    endpoints = []
    for url in sources.forward:
        endpoint = {"endpoint": url, "sent_items": t("tracejudge_forwarder_sent_items_total", endpoint=url),
                    "queue_items": t("tracejudge_forwarder_queue_items", endpoint=url),
                    "dropped_items": t("tracejudge_forwarder_dropped_items_total", endpoint=url),
                    "retries": t("tracejudge_forwarder_retries_total", endpoint=url)}  # fmt: skip
        endpoint["state"] = "dropping" if endpoint["dropped_items"] else "retrying" if endpoint["retries"] else "ok"
        endpoints.append(endpoint)
    archive: dict[str, Any] = {"directory": sources.archive}
    if sources.archive is not None:
        restarts = t("tracejudge_archive_worker_restarts_total")
        archive |= {"enqueued_items": samples.by("tracejudge_archive_enqueued_items_total", "table"),
                    "queue_bytes": t("tracejudge_archive_queue_bytes"), "worker_restarts": restarts,
                    "state": "restarted" if restarts else "ok"}  # fmt: skip
    else:
        archive["state"] = "off"
    restarts = t("tracejudge_scoring_worker_restarts_total")
    skipped = samples.by("tracejudge_scoring_skipped_total", "reason")
    spent = samples.by("tracejudge_judge_budget_spent", "limit")
    limits = samples.by("tracejudge_judge_budget_limit", "limit")
    budget = {name: {"spent": spent.get(name, 0.0), "limit": limit} for name, limit in sorted(limits.items())}
    over = [name for name, b in budget.items() if b["spent"] >= b["limit"]]
    scoring = {"backlog": t("tracejudge_scoring_backlog"), "worker_restarts": restarts,
               "skipped": {reason: int(n) for reason, n in sorted(skipped.items())}, "budget": budget,
               "state": "restarted" if restarts else f"over budget ({', '.join(over)})" if over else "ok"}  # fmt: skip
    return {"ingest": ingest, "forward": endpoints, "archive": archive, "scoring": scoring}


# --------------------------------------------------------------------------------------------- the page


class StatusPage:
    """The routes of the status page and its JSON, over `sources`."""

    def __init__(self, config: StatusPageConfig, sources: Sources, access: PageAccess) -> None:
        self._config = config
        self._sources = sources
        self._access = access
        self._started = time.time()

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/", self._page),
            web.get("/api/verdicts", self._verdicts),
            web.get("/api/status", self._status),
            web.get("/status.js", self._asset(SCRIPT, "text/javascript")),
            web.get("/status.css", self._asset(STYLE, "text/css")),
        ]

    async def snapshot(self) -> dict[str, Any]:
        """Everything the page shows, as JSON-ready data."""
        text = await asyncio.get_running_loop().run_in_executor(None, self._sources.metrics_text)
        samples = Samples(text.decode("utf-8", errors="replace"))
        verdicts, last = self._sources.verdicts.since(0, limit=self._config.recent_verdicts)
        return {
            "version": __version__, "uptime_s": round(time.time() - self._started, 1),
            "run": self._sources.verdicts.run, "next": last,
            "scorers": scorer_rows(self._sources.scorers(), self._sources.quarantined(), samples),
            "health": health(self._sources, samples),
            "verdicts": [self._linked(v) for v in reversed(verdicts)],  # newest first
        }  # fmt: skip

    def _linked(self, verdict: dict[str, Any]) -> dict[str, Any]:
        return verdict | {"trace_url": trace_link(self._config.trace_url, verdict["trace_id"], verdict["span_id"])}

    async def _page(self, request: web.Request) -> web.StreamResponse:
        refused = self._access.refuse(request)
        if refused is not None:
            return refused
        return web.Response(text=render(await self.snapshot()), content_type="text/html", headers=_HEADERS)

    async def _status(self, request: web.Request) -> web.StreamResponse:
        refused = self._access.refuse(request)
        return refused if refused is not None else web.json_response(await self.snapshot(), headers=_NO_STORE)

    async def _verdicts(self, request: web.Request) -> web.StreamResponse:
        refused = self._access.refuse(request)
        if refused is not None:
            return refused
        query = request.rel_url.query
        since, limit = _int_param(query.get("since", "0"), "since"), _int_param(query.get("limit", "100"), "limit")
        if isinstance(since, str) or isinstance(limit, str):
            return web.json_response({"message": since if isinstance(since, str) else limit}, status=400)
        verdicts, last = self._sources.verdicts.since(since, query.get("scorer") or None, min(limit, 1000))
        body = {"run": self._sources.verdicts.run, "next": last, "verdicts": [self._linked(v) for v in verdicts]}
        return web.json_response(body, headers=_NO_STORE)

    def _asset(self, text: str, content_type: str) -> Callable[[web.Request], Any]:
        async def serve(_request: web.Request) -> web.StreamResponse:
            # Public: the script and style hold no data, and a browser fetches them without credentials.
            return web.Response(text=text, content_type=content_type, headers={"X-Content-Type-Options": "nosniff"})

        return serve


def _int_param(text: str, name: str) -> int | str:
    """A non-negative integer query parameter, or the message saying what is wrong with it."""
    if not text.isdigit():
        return f"{name} must be a non-negative integer, got {text!r}"
    return int(text)


_NO_STORE = {"Cache-Control": "no-store"}
_HEADERS = {
    **_NO_STORE,
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


def _e(value: object) -> str:
    """Escaped text for HTML content and attribute values; '—' for nothing."""
    return "—" if value is None or value == "" else html.escape(str(value), quote=True)


def _number(value: float | None, digits: int = 2) -> str:
    if value is None:
        return "—"
    return f"{value:.{digits}f}" if not float(value).is_integer() else f"{int(value)}"


def _percent(value: float | None) -> str:
    return "—" if value is None else f"{value * 100:.1f} %"


def _counts(counts: Mapping[str, float]) -> str:
    return ", ".join(f"{_e(key)} {_number(n)}" for key, n in counts.items()) or "—"


def _time(unix_ms: int) -> str:
    return datetime.fromtimestamp(unix_ms / 1000, timezone.utc).strftime("%H:%M:%S")


def verdict_row(verdict: Mapping[str, Any]) -> str:
    """One verdict as a table row; the script builds the same cells for new ones (status_assets.SCRIPT)."""
    trace_id = verdict.get("trace_id") or ""
    link = verdict.get("trace_url")
    trace = f'<a href="{_e(link)}" rel="noreferrer">{_e(trace_id)}</a>' if link else _e(trace_id)
    verdict_text = verdict.get("label") or verdict.get("value")
    if verdict.get("error"):
        verdict_text = f"error: {verdict.get('error_type') or ''}"
    why = _e(verdict.get("rationale") or verdict.get("error"))
    cells = [_e(_time(verdict["time_unix_ms"])), _e(verdict.get("name")), _e(verdict_text),
             _e(_number(verdict.get("score"))), f'<span class="rationale">{why}</span>', trace]  # fmt: skip
    return f'<tr data-seq="{int(verdict["seq"])}">' + "".join(f"<td>{cell}</td>" for cell in cells) + "</tr>"


def scorer_row(s: Mapping[str, Any]) -> str:
    cells = [_e(s["name"]), _e(s["kind"]), _e(s["state"]), _e(_number(s["sample_rate"])), _e(s["filter"]),
             _e(s["version"]), _e(_number(s["runs"])), _percent(s["pass_rate"]), _e(_number(s["mean_score"])),
             _counts(s["labels"]), _e(s["errors"]), _counts(s["skipped"]),
             f"{_e(_number(s['latency_ms_mean']))} / ≤ {_e(_number(s['latency_ms_p99_at_most'], 0))}",
             f"{_e(s['tokens_in'])} / {_e(s['tokens_out'])}"]  # fmt: skip
    return f'<tr class="{_e(s["state"])}">' + "".join(f"<td>{cell}</td>" for cell in cells) + "</tr>"


def _forward_item(f: Mapping[str, Any]) -> str:
    return (
        f"<li>{_e(f['endpoint'])}: <b>{_e(f['state'])}</b>, sent {_number(f['sent_items'])}, queued "
        f"{_number(f['queue_items'])}, dropped {_number(f['dropped_items'])}, retries {_number(f['retries'])}</li>"
    )


def render(status: Mapping[str, Any]) -> str:
    """The whole page. Every value is escaped with _e (or is a number formatted here)."""
    scorer_lines = "".join(scorer_row(s) for s in status["scorers"]) or '<tr><td colspan="14">no scorers</td></tr>'
    verdict_lines = "".join(verdict_row(v) for v in status["verdicts"])
    h = status["health"]
    ingest, archive, scoring = h["ingest"], h["archive"], h["scoring"]
    forward = "".join(_forward_item(f) for f in h["forward"]) or "<li>no forward endpoint: archive only</li>"
    budget_text = "".join(f"; judge budget {_e(name)}: {_number(b['spent'])} of {_number(b['limit'])}"
                          for name, b in scoring["budget"].items())  # fmt: skip
    archive_text = (
        f"<b>{_e(archive['state'])}</b>"
        if archive["directory"] is None
        else f"<b>{_e(archive['state'])}</b> in {_e(archive['directory'])}: {_counts(archive['enqueued_items'])}; "
        f"queued {_number(archive['queue_bytes'])} B, writer restarts {_number(archive['worker_restarts'])}"
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>tracejudge status</title>
<meta name="viewport" content="width=device-width, initial-scale=1"><link rel="stylesheet" href="status.css">
<script src="status.js" defer></script></head>
<body data-run="{_e(status["run"])}" data-next="{int(status["next"])}">
<header><h1>tracejudge</h1><span>version {_e(status["version"])}, up {_number(status["uptime_s"], 0)} s</span></header>
<section id="health"><h2>Health</h2><ul>
<li>ingest: <b>{_e(ingest["state"])}</b>, accepted {_counts(ingest["accepted_items"])}; refused
{_number(ingest["refused_items"])}, rejected {_number(ingest["rejected_items"])}; traces decided
{_number(ingest["completed_traces"])}, assembling {_number(ingest["buffered_traces"])}; write-ahead log
{_number(ingest["wal_bytes"])} B</li>
<li>forward:<ul>{forward}</ul></li>
<li>archive: {archive_text}</li>
<li>scoring: <b>{_e(scoring["state"])}</b>, backlog {_number(scoring["backlog"])}, worker restarts
{_number(scoring["worker_restarts"])}; skipped by reason: {_counts(scoring["skipped"])}{budget_text}</li>
</ul></section>
<section id="scorers"><h2>Scorers</h2><table><thead><tr><th>name</th><th>kind</th><th>state</th><th>rate</th>
<th>filter</th><th>version</th><th>runs</th><th>pass rate</th><th>mean score</th><th>verdicts by label</th>
<th>errors</th><th>skipped</th><th>latency ms: mean / p99</th><th>tokens in / out</th></tr></thead>
<tbody>{scorer_lines}</tbody></table></section>
<section id="live"><h2>Live verdicts <small id="refreshed"></small></h2><table><thead><tr><th>time (UTC)</th>
<th>scorer</th><th>verdict</th><th>score</th><th>rationale</th><th>trace</th></tr></thead>
<tbody id="verdicts">{verdict_lines}</tbody></table></section>
</body></html>
"""

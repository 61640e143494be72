"""The status page's script and style (tracejudge/status_page.py serves them as /status.js and /status.css).

Kept as text in a module rather than as data files, so they ship wherever the package does with no build step
and no package-data rule. The script only asks /api/verdicts for what is new and adds rows with textContent:
a rationale is model output and is never parsed as HTML. Cells match status_page.verdict_row.
"""

from __future__ import annotations

SCRIPT = r"""
"use strict";
(function () {
  const body = document.body;
  const tbody = document.getElementById("verdicts");
  const refreshed = document.getElementById("refreshed");
  const keep = 200;
  let next = Number(body.dataset.next || 0);
  const run = body.dataset.run;

  function cell(row, text) {
    const td = document.createElement("td");
    td.textContent = text;
    row.appendChild(td);
    return td;
  }
  function number(x) {
    if (x === null || x === undefined) return "\u2014";
    return Number.isInteger(x) ? String(x) : x.toFixed(2);
  }
  function add(v) {
    const row = document.createElement("tr");
    row.dataset.seq = String(v.seq);
    cell(row, new Date(v.time_unix_ms).toISOString().slice(11, 19));
    cell(row, v.name || "\u2014");
    cell(row, v.error ? "error: " + (v.error_type || "") : (v.label || v.value || "\u2014"));
    cell(row, number(v.score));
    const why = document.createElement("span");
    why.className = "rationale";
    why.textContent = v.rationale || v.error || "\u2014";
    cell(row, "").appendChild(why);
    const trace = cell(row, v.trace_url ? "" : (v.trace_id || "\u2014"));
    if (v.trace_url) {
      const link = document.createElement("a");
      link.href = v.trace_url;  // built by tracejudge from the configured http(s) template only
      link.rel = "noreferrer";
      link.textContent = v.trace_id;
      trace.appendChild(link);
    }
    tbody.insertBefore(row, tbody.firstChild);
  }
  async function poll() {
    try {
      const answer = await fetch("api/verdicts?since=" + next, {credentials: "same-origin", cache: "no-store"});
      if (!answer.ok) {
        refreshed.textContent = "refresh failed: HTTP " + answer.status;
      } else {
        const data = await answer.json();
        if (data.run !== run) {  // tracejudge restarted: its numbering started again
          window.location.reload();
          return;
        }
        data.verdicts.forEach(add);
        next = data.next;
        while (tbody.rows.length > keep) tbody.deleteRow(-1);
        refreshed.textContent = "updated " + new Date().toISOString().slice(11, 19) + " UTC";
      }
    } catch (error) {
      refreshed.textContent = "tracejudge is unreachable";
    }
    window.setTimeout(poll, 2000);
  }
  poll();
})();
"""

STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #1b1f24; background: #fff; }
header { display: flex; align-items: baseline; gap: 1em; }
h1 { font-size: 1.5em; margin: 0; }
h2 { font-size: 1.15em; margin: 1.4em 0 0.4em; }
small { font-weight: normal; color: #57606a; }
table { border-collapse: collapse; width: 100%; }
th, td { border-bottom: 1px solid #d0d7de; padding: 0.3em 0.6em; text-align: left; vertical-align: top; }
th { background: #f6f8fa; font-weight: 600; }
td a { font-family: ui-monospace, monospace; }
tr.stopped td { color: #57606a; }
tr.quarantined td { background: #fff1e5; }
.rationale { white-space: pre-wrap; word-break: break-word; }
#live td:nth-child(6) { font-family: ui-monospace, monospace; font-size: 0.9em; }
"""

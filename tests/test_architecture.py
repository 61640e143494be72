"""The floor plan, checked: which process imports what."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from mock_openai import MockOpenAI

from tracejudge.testing import free_port

from archive_reader import query

USER_SCORER = """
import os
from pathlib import Path
from tracejudge.scorers import scorer

with Path(os.environ["IMPORTED_BY"]).open("a") as marks:  # which processes imported this module
    marks.write(f"{os.getpid()}\\n")

@scorer
def short_answer(outputs):
    return len(str(outputs)) < 2000
"""

INGEST = """
import json, os, sys, urllib.request
from tracejudge.config_file import load_config
from tracejudge.sidecar import Sidecar
from tracejudge.synthetic import genai_request
from tracejudge.testing import wait_until

config = load_config(overrides={{"data_dir": sys.argv[1], "receiver.grpc_endpoint": None,
    "receiver.http_endpoint": "127.0.0.1:{http}", "telemetry.prometheus_endpoint": None,
    "assembler.trace_idle": "100ms", "judges": {{"default": {{"base_url": sys.argv[2], "api_key_env": "NO_KEY"}}}},
    "scorers": [{{"name": "safety", "builtin": "Safety", "sample_rate": 1}},
                {{"name": "short", "code": "user_scorers:short_answer", "sample_rate": 1}}]}})
decided = []
sidecar = Sidecar(config, trace_consumers=[type("Recorder", (), {{"consume": lambda self, t: decided.extend(t)}})()])
sidecar.start()
body = genai_request(1).SerializeToString()
headers = {{"Content-Type": "application/x-protobuf"}}
request = urllib.request.Request("http://127.0.0.1:{http}/v1/traces", body, headers)
urllib.request.urlopen(request).close()
scored = wait_until(lambda: decided and sidecar.engine.backlog == 0, timeout=30)  # admitted, then finished
report = {{"scored": bool(scored), "pid": os.getpid(), "worker": sidecar.scoring_process.pid}}
print(json.dumps({{**report, "modules": sorted(sys.modules)}}))
sidecar.shutdown()
"""


def test_the_ingest_process_never_imports_openai_nor_a_users_code_scorer(tmp_path: Path):
    """Validation and scoring happen in the scoring worker, where scorers run: the process that receives
    spans stays free of the openai SDK, the judges and extraction, and never runs a user's module."""
    (tmp_path / "scorers").mkdir()
    (tmp_path / "scorers" / "user_scorers.py").write_text(textwrap.dedent(USER_SCORER))
    marks = tmp_path / "imported_by"
    with MockOpenAI() as judge:
        env = {**os.environ, "IMPORTED_BY": str(marks), "PYTHONPATH": str(tmp_path / "scorers")}
        script = INGEST.format(http=free_port())
        run = subprocess.run([sys.executable, "-c", script, str(tmp_path / "tj"), judge.base_url], env=env,
                             capture_output=True, text=True, timeout=120)  # fmt: skip
        assert run.returncode == 0, run.stderr
        judged = len(judge.chat_requests())
    report = json.loads(run.stdout.splitlines()[-1])
    assert report["scored"] and judged == 1
    assert query(tmp_path / "tj" / "archive", "assessments", "SELECT name FROM t ORDER BY name") == [
        ("safety",),
        ("short",),
    ]
    imported = set(report["modules"])
    forbidden = {"openai", "httpx2", "user_scorers", "tracejudge.scoring.loop", "tracejudge.scoring.judge_client",
                 "tracejudge.scoring.extract", "tracejudge.scoring.evaluators"}  # fmt: skip
    assert not imported & forbidden
    assert "tracejudge.scoring.engine" in imported and "tracejudge.receiver.assembler" in imported
    # Imported once to validate the registration and once to run it, both in the worker: never in ingest.
    importers = {int(line) for line in marks.read_text().split()}
    assert importers == {report["worker"]} and report["pid"] not in importers


def test_the_command_line_and_the_sidecar_import_neither_scoring_nor_pyarrow():
    """`tracejudge serve` runs the ingest process from tracejudge.cli: the past-trace commands beside it (evaluate,
    backfill, scorers try) import scoring only when they run, and the sidecar's feedback store imports pyarrow only
    when it reads the archive (pyarrow alone is ~90 MB resident, the whole idle sidecar ~70 MB without it)."""
    probe = "import sys, tracejudge.cli, tracejudge.sidecar; print(sorted(sys.modules))"
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    for heavy in ("'openai'", "'pyarrow'", "tracejudge.scoring.extract", "tracejudge.scoring.loop",
                  "tracejudge.evaluation"):  # fmt: skip
        assert heavy not in loaded, f"tracejudge serve imports {heavy}"
    assert "tracejudge.cli_past" in loaded

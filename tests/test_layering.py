"""The floor plan as import-linter contracts (pyproject.toml, [tool.importlinter]), run with the suite.

The contracts run on the installed layout (tools/layout.py links receiver/, scoring/, exporter/ ... into
tracejudge/ as pyproject's package-dir does), so a crossing in any top-level folder is seen, and the
second test plants crossings to prove the contracts can fail at all.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # the package supports 3.10; tomli is tomllib's backport (test extra)
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))

from importlint import lint  # noqa: E402
from layout import build_tree  # noqa: E402


def contracts() -> int:
    return len(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"])


def test_every_contract_holds_over_every_folder() -> None:
    run = subprocess.run([sys.executable, str(ROOT / "tools" / "importlint.py")], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
    assert f"Contracts: {contracts()} kept, 0 broken." in run.stdout


def test_planted_crossings_break_their_contracts(tmp_path: Path) -> None:
    build_tree(tmp_path)
    package = tmp_path / "tracejudge"
    (package / "receiver" / "planted.py").write_text("from tracejudge.scoring import engine\n")
    (package / "scoring" / "planted.py").write_text("import grpc\n")
    (package / "exporter" / "planted.py").write_text("from tracejudge.scoring import spec\n")
    (package / "client" / "planted.py").write_text("from tracejudge import otlp\n")
    (package / "config.py").unlink()
    (package / "config.py").write_text(
        (ROOT / "tracejudge" / "config.py").read_text() + "\nimport tracejudge.receiver\n"
    )
    run = lint(tmp_path, capture=True)
    assert run.returncode != 0
    for crossing in ("tracejudge.receiver.planted -> tracejudge.scoring.engine",
                     "tracejudge.scoring.planted -> grpc",
                     "tracejudge.exporter.planted -> tracejudge.scoring.spec",
                     "tracejudge.client.planted -> tracejudge.otlp",
                     "tracejudge.config -> tracejudge.receiver"):  # fmt: skip
        assert crossing in run.stdout, crossing
    # Every contract broken, the layers too (parts may not import each other): each folder is seen.
    assert f"Contracts: 0 kept, {contracts()} broken." in run.stdout

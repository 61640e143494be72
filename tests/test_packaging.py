"""The installed package, not the source tree: a wheel in a fresh venv, run from the source checkout.

Editable installs resolve `tracejudge` through setuptools' finder, which hides layout mistakes; a
user running `pip install .` in their clone gets the wheel's layout, with the checkout's folders on
the path of anything started with `python -m` from there.
"""

from __future__ import annotations

import site
import subprocess
import sys
import sysconfig
from pathlib import Path

from tracejudge.synthetic import genai_request
from tracejudge.testing import SidecarProcess, child_processes, wait_until

from archive_reader import query
from otlp_peers import post

ROOT = Path(__file__).resolve().parent.parent


def test_wheel_installs_and_serves_from_the_source_checkout(tmp_path: Path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path / "dist"), str(ROOT)],
                   check=True, timeout=300)  # fmt: skip
    [wheel] = (tmp_path / "dist").glob("tracejudge-*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    purelib = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    venv_site = Path(subprocess.check_output([python, "-c", purelib], text=True).strip())
    dependencies = {sysconfig.get_paths()["purelib"], *site.getsitepackages()}
    (venv_site / "borrowed-dependencies.pth").write_text("\n".join(sorted(dependencies)) + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "-q", str(wheel)],
                   check=True, timeout=300)  # fmt: skip
    where = "import tracejudge.exporter; print(tracejudge.exporter.__file__)"
    imported = subprocess.check_output([python, "-c", where], text=True, cwd=tmp_path).strip()
    assert imported.startswith(str(venv_site))

    # Run from the checkout, which holds a tracejudge/ folder that must not shadow the installed package.
    # A scorer, so that the scoring worker process starts from the installed package too.
    launcher = [str(venv / "bin" / "tracejudge")]
    config = {"assembler": {"trace_idle": "200ms"}, "scorers": [{"name": "ok", "builtin": "NoError", "sample_rate": 1}]}
    sidecar = SidecarProcess(tmp_path / "tj", [], config, launcher=launcher, cwd=ROOT).start()
    try:
        assert post(f"{sidecar.http_url}/v1/traces", genai_request(2).SerializeToString())[0] == 200
        assert wait_until(lambda: sidecar.metric("tracejudge_scoring_scored_total", scorer="ok") == 2, timeout=30)
        assert len(child_processes(sidecar.pid, "tracejudge.scoring_worker")) == 1
    finally:
        assert sidecar.stop() == 0
    assert "No module named" not in sidecar.log(), sidecar.log()
    assert list((tmp_path / "tj" / "archive" / "spans").glob("**/*.parquet"))
    assert query(tmp_path / "tj" / "archive", "assessments", "SELECT count(*) FROM t") == [(2,)]

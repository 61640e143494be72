"""import-linter's contracts (pyproject.toml, [tool.importlinter]) over the package as it is installed.

import-linter builds its graph by walking the root package's directory, which the package-dir mapping
hides (tools/layout.py): run on the folders it would find tracejudge/ alone and check nothing of
receiver/, scoring/ or exporter/. So it runs on a link tree with the installed layout, first on the path.

    python tools/importlint.py       # extra arguments go to lint-imports
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

from layout import ROOT, build_tree


def lint(tree: Path, *arguments: str, capture: bool = False) -> subprocess.CompletedProcess[str]:
    """lint-imports over a tree built by build_tree (tests plant a crossing in one to see it caught)."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(tree), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
    }
    lint_imports = Path(sys.executable).with_name("lint-imports")
    command = [str(lint_imports), str(ROOT / "pyproject.toml"), "--no-cache", "--no-logo", *arguments]
    return subprocess.run(command, cwd=tree, env=env, capture_output=capture, text=True)


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="tracejudge-importlint-") as tree:
        build_tree(Path(tree))
        return lint(Path(tree), *sys.argv[1:]).returncode


if __name__ == "__main__":
    sys.exit(main())

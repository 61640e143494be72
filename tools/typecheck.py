"""mypy --strict over the tracejudge package as it is installed, not as the folders lie (tools/layout.py
says why): run on the folders, every cross-folder import would be Any and unchecked.

    python tools/typecheck.py        # extra arguments go to mypy
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

from layout import ROOT, build_tree


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="tracejudge-typecheck-") as tree:
        build_tree(Path(tree))
        config = ["--config-file", str(ROOT / "pyproject.toml")]
        command = [sys.executable, "-m", "mypy", *config, "-p", "tracejudge", *sys.argv[1:]]
        return subprocess.run(command, cwd=tree).returncode


if __name__ == "__main__":
    sys.exit(main())

"""mypy --strict over the tracejudge package as it is installed, not as the folders lie.

pyproject.toml maps top-level folders into one package (receiver/ is tracejudge.receiver), which
mypy cannot follow: run on the folders, every cross-folder import would be Any and unchecked. This
builds a throwaway link tree with the installed layout and checks that.

    python tools/typecheck.py        # extra arguments go to mypy
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parent.parent


def build_tree(destination: Path) -> None:
    mapping: dict[str, str] = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    for package, folder in mapping.items():
        target = destination.joinpath(*package.split("."))
        target.mkdir(parents=True, exist_ok=True)
        for source in [*(ROOT / folder).glob("*.py"), *(ROOT / folder).glob("*.pyi")]:
            (target / source.name).symlink_to(source)


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="tracejudge-typecheck-") as tree:
        build_tree(Path(tree))
        config = ["--config-file", str(ROOT / "pyproject.toml")]
        command = [sys.executable, "-m", "mypy", *config, "-p", "tracejudge", *sys.argv[1:]]
        return subprocess.run(command, cwd=tree).returncode


if __name__ == "__main__":
    sys.exit(main())

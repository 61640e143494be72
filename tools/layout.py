"""The tracejudge package as it is installed, rebuilt from the folders as they lie, for tools that read files.

pyproject.toml maps top-level folders into one package (receiver/ is tracejudge.receiver). Tools that
find modules by walking the package's directory (mypy, import-linter's grimp) cannot follow that
mapping: they would see tracejudge/ alone. `build_tree` makes a throwaway link tree with the installed
layout; tools/typecheck.py and tools/importlint.py run on it.
"""

from __future__ import annotations

import sys
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # the package supports 3.10; tomli is tomllib's backport (test extra)
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent


def build_tree(destination: Path) -> None:
    mapping: dict[str, str] = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    for package, folder in mapping.items():
        target = destination.joinpath(*package.split("."))
        target.mkdir(parents=True, exist_ok=True)
        for source in [*(ROOT / folder).glob("*.py"), *(ROOT / folder).glob("*.pyi")]:
            (target / source.name).symlink_to(source)

"""Which parts may import what: checked on the source (imports a module makes) and in a fresh interpreter
(what importing it loads), so a layering slip fails here instead of in a process that should not pay for it."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def imports_of(path: Path) -> set[str]:
    """The modules a file imports, `from a import b` counted as a.b too (aiohttp.web from `from aiohttp import web`)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def test_scoring_imports_no_transport() -> None:
    for path in sorted((ROOT / "scoring").glob("*.py")):
        transports = {m for m in imports_of(path) if m.split(".")[0] == "grpc" or m.startswith("aiohttp.web")}
        assert not transports, f"{path.name} imports {sorted(transports)}"

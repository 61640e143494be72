"""How tracejudge starts its worker processes (the archive writer, the scoring worker), in one place.

- `python -m <module>` with the sidecar's own interpreter, and its log level;
- in the worker's own directory: `python -m` puts the working directory first on sys.path, and a
  source checkout there would shadow the installed package;
- stdin closed, and channels passed as dedicated descriptors: a process started during imports
  inherits stdin, and would keep a dead worker's pipe open;
- in a session of its own, so a Ctrl-C or SIGTERM to tracejudge's process group never reaches it:
  the sidecar decides when a worker stops, after sending it everything.
"""

from __future__ import annotations

import logging
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path


def start_worker(module: str, args: Sequence[str], pass_fds: Sequence[int], directory: Path) -> subprocess.Popen[bytes]:
    level = logging.getLevelName(logging.getLogger().getEffectiveLevel())
    directory.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(
        [sys.executable, "-m", module, *args, "--log-level", level],
        stdin=subprocess.DEVNULL,
        pass_fds=tuple(pass_fds),
        start_new_session=True,
        cwd=directory,
    )

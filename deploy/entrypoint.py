"""The image's entrypoint: `tracejudge`, with SIGTERM honoured from the first instant.

In a container tracejudge is PID 1, and the kernel drops a signal sent to PID 1 that has no handler.
`tracejudge serve` installs its draining handler once it has imported its modules and read its
config, about a second after start (more on a loaded machine); a `podman stop` or a pod deletion in
that second was ignored, and the container was killed after the whole grace period (exit 137).
This installs a handler before anything else: until serve replaces it, SIGTERM or SIGINT exits at
once (0: nothing has been accepted yet, so there is nothing to drain).
"""

from __future__ import annotations

import signal
import sys
from types import FrameType


def _stop_before_serving(signum: int, _frame: FrameType | None) -> None:
    raise SystemExit(0)


def main() -> None:
    signal.signal(signal.SIGTERM, _stop_before_serving)
    signal.signal(signal.SIGINT, _stop_before_serving)
    from tracejudge.cli import main as tracejudge

    tracejudge(prog_name="tracejudge")


if __name__ == "__main__":
    sys.exit(main())

"""Log set-up shared by the sidecar and its worker processes, so their lines read alike."""

from __future__ import annotations

import logging
import sys

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure_logging(level: str) -> None:
    logging.basicConfig(level=level, format=FORMAT, stream=sys.stderr)
    if level != "DEBUG":
        # The openai SDK's transport logs every judge request at INFO: hundreds of lines a second.
        for noisy in ("httpx2", "httpcore2", "httpx", "httpcore"):
            logging.getLogger(noisy).setLevel(logging.WARNING)

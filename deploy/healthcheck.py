"""The image's HEALTHCHECK: is tracejudge ready (GET /readyz on the admin listener)?

A separate file, not `tracejudge ...`, because a check runs every few seconds and must stay cheap:
this imports only the standard library (about 30 ms), where importing tracejudge takes a second.
It reads the admin listener's address from TRACEJUDGE_METRICS, as `tracejudge serve` does, so the
check follows the port when that variable changes; a wildcard address is checked on loopback.
Exit status 0: ready; 1: not ready or not answering.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request

WILDCARDS = {"", "0.0.0.0", "[::]", "::"}


def readyz_url(listen: str) -> str:
    host, _, port = listen.rpartition(":")
    if host in WILDCARDS:
        host = "127.0.0.1"
    return f"http://{host}:{port}/readyz"


def main() -> int:
    listen = os.environ.get("TRACEJUDGE_METRICS", "127.0.0.1:9464")
    if listen.lower() == "off":
        print("TRACEJUDGE_METRICS is off: no /readyz to check", file=sys.stderr)
        return 1
    url = readyz_url(listen)
    try:
        with urllib.request.urlopen(url, timeout=3) as response:
            print(f"{url}: {response.status}")
            return 0 if response.status == 200 else 1
    except (urllib.error.URLError, OSError) as exc:
        print(f"{url}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

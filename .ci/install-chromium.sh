#!/usr/bin/env bash
# Headless Chromium for the status page's browser tests (tests/test_status_page.py): Debian's chromium, driven by
# Playwright through its executable path. Idempotent: installs only what is missing, updating the lists only then.
set -euo pipefail
if [ -x /usr/bin/chromium ]; then
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends chromium

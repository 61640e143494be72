#!/usr/bin/env bash
# Installs Debian's prometheus package for tests/test_observability_deploy.py: it ships /usr/bin/prometheus
# (the test starts the binary itself on a loopback port; the Debian service is never used) and
# /usr/bin/promtool (`promtool check rules` / `promtool test rules` on deploy/prometheus/).
# Idempotent: does nothing when both binaries are there; runs `apt-get update` only when it must install.
set -euo pipefail
if command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1; then
    exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get -o DPkg::Lock::Timeout=600 update -qq
# --no-install-recommends: the recommended node exporter is not needed and would be one more service.
$SUDO apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends prometheus >/dev/null
command -v prometheus >/dev/null && command -v promtool >/dev/null

#!/usr/bin/env bash
# The machine setup for tests/test_container.py: Debian's podman and buildah (no Docker engine here), the
# runtime pieces they need on this machine (runc: crun fails on its hybrid cgroups), and debootstrap for
# the offline base image (.ci/make-base-image.sh). Idempotent: installs only what is missing, and runs
# `apt-get update` only when it must install.
set -euo pipefail
packages=(podman buildah runc catatonit fuse-overlayfs slirp4netns uidmap debootstrap)
missing=()
for package in "${packages[@]}"; do
    dpkg-query -W -f='${Status}\n' "$package" 2>/dev/null | grep -q '^install ok installed$' || missing+=("$package")
done
if ((${#missing[@]})); then
    export DEBIAN_FRONTEND=noninteractive
    apt-get -o DPkg::Lock::Timeout=600 update -qq
    apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    echo "install-podman: installed ${missing[*]}"
else
    echo "install-podman: podman, buildah and debootstrap already installed"
fi

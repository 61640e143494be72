#!/usr/bin/env bash
# A Debian base image with Python for deploy/Dockerfile, made offline with debootstrap from the mirror apt
# already uses (read from the host's apt sources at run time; it stays out of the image and the repo).
# Cached: nothing to do when the image exists. Usage: .ci/make-base-image.sh [IMAGE]
set -euo pipefail
image=${1:-localhost/tracejudge-base:bookworm}
export CONTAINERS_CONF=${CONTAINERS_CONF:-$(cd "$(dirname "$0")" && pwd)/containers.conf}
if podman image exists "$image"; then
    echo "make-base-image: $image exists"
    exit 0
fi
. /etc/os-release
suite=${VERSION_CODENAME:?no VERSION_CODENAME in /etc/os-release}
mirror=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
if [[ -z $mirror ]]; then
    mirror=$(awk '$1 == "deb" {print $2; exit}' /etc/apt/sources.list)
fi
rootfs=$(mktemp -d /var/tmp/tracejudge-rootfs.XXXXXX)
trap 'rm -rf "$rootfs"' EXIT
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates "$suite" "$rootfs" "$mirror" \
    >"$rootfs.log" 2>&1 || { tail -20 "$rootfs.log"; exit 1; }
rm -f "$rootfs.log"
# Nothing of the build machine's apt setup, caches or logs goes into the image.
rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/log/*
: >"$rootfs/etc/apt/sources.list"
tar -C "$rootfs" -c . | podman import --quiet - "$image" >/dev/null
echo "make-base-image: built $image ($(podman image inspect --format '{{.Size}}' "$image") bytes)"

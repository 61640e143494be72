#!/usr/bin/env bash
# What tests/test_container.py and tests/test_k8s.py need on the machine, each step skipped when done:
# podman and debootstrap (Debian), the offline base image (cached in podman's store), and kubectl with
# its built-in kustomize (the machine image ships kubectl; kubernetes-validate comes with the test extras).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
start=$SECONDS
bash "$here/install-podman.sh"
bash "$here/make-base-image.sh" localhost/tracejudge-base:bookworm
if ! kubectl kustomize --help >/dev/null 2>&1; then
    echo "install-deploy: no kubectl with kustomize on this machine; tests/test_k8s.py will fail under CI" >&2
fi
echo "install-deploy: ready in $((SECONDS - start)) s"

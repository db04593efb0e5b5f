#!/usr/bin/env bash
# Installs what building and testing omnikv needs on a Debian/Ubuntu machine that has the
# Rust toolchain: libclang-dev (RocksDB's bindings), just (the task runner), and for the
# offline manifest check (`just test-k8s`) kubectl (Debian's kubernetes-client, for
# `kubectl kustomize`; any kubectl already on PATH is kept) and kubernetes-validate (PyPI).
# Idempotent: installs only what is missing.
set -euo pipefail

sudo_if_needed() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

missing=()
for pkg in libclang-dev; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]} (apt)"
  sudo_if_needed apt-get update -qq
  sudo_if_needed env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if ! command -v just >/dev/null 2>&1; then
  echo "setup: installing just (cargo install)"
  cargo install just --locked --quiet
fi
if ! command -v kubectl >/dev/null 2>&1; then
  echo "setup: installing kubernetes-client (apt; kubectl for kustomize builds)"
  sudo_if_needed apt-get update -qq
  sudo_if_needed env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq kubernetes-client >/dev/null
fi

if ! command -v kubernetes-validate >/dev/null 2>&1; then
  echo "setup: installing kubernetes-validate (pip)"
  python3 -m pip install --quiet --disable-pip-version-check kubernetes-validate
fi
echo "setup: ok ($(just --version), libclang-dev $(dpkg-query -W -f='${Version}' libclang-dev), kubectl $(kubectl version --client -o json 2>/dev/null | python3 -c 'import json, sys; print(json.load(sys.stdin)["clientVersion"]["gitVersion"])'), kubernetes-validate $(kubernetes-validate --version 2>/dev/null))"

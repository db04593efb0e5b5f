#!/usr/bin/env bash
# Installs what building and testing omnikv needs on a Debian/Ubuntu machine that has the
# Rust toolchain: libclang-dev (RocksDB's bindings) and just (the task runner).
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
echo "setup: ok ($(just --version), libclang-dev $(dpkg-query -W -f='${Version}' libclang-dev))"

#!/usr/bin/env bash
# Installs what building and testing omnikv needs on a Debian/Ubuntu machine (Debian 12 is
# the reference) that has the Rust toolchain and apt:
#   - libclang-dev (RocksDB's bindings) and a C++ compiler (g++; RocksDB's C++), from apt
#   - protoc (Debian's protobuf-compiler): kvd's build compiles its etcd API protos
#     (kvd/build.rs), and the benchmark tool's etcd client (bench/driver, the etcd-client
#     crate) etcd's .proto files
#   - etcd and etcdctl (Debian's etcd-server and etcd-client, bench/install-etcd.sh): the
#     benchmark tool's etcd test, and the etcd API tests (etcdctl against omnikv and etcd)
#   - just (the task runner), with cargo
#   - python3 (apt), used by the offline manifest check (`just test-k8s`)
#   - kubectl (Debian's kubernetes-client, for `kubectl kustomize`; any kubectl already on PATH
#     is kept) and kubernetes-validate (PyPI). A kubernetes-validate on PATH is kept; otherwise
#     it goes into its own venv, $OMNIKV_CACHE/venv (default ~/.cache/omnikv/venv), since
#     Debian's python refuses a system-wide `pip install` (PEP 668). deploy/k8s/validate.sh
#     looks there. python3-venv is installed (apt) when `python3 -m venv` does not work.
# Then it checks what `just test` needs beyond that, and says what is missing: its last part
# (`just test-docker`) runs the Docker demos, which need a reachable Docker daemon and a
# Compose (`docker compose` v2 or `docker-compose` v1); the disk-full test mounts a tmpfs,
# which needs root. Those are not installed unless asked for: `scripts/setup.sh --docker`
# installs Debian's docker.io and docker-compose when `docker` or a Compose is missing.
# Missing Docker is a warning, not an error: building, `just up` and the cargo tests work
# without it.
# Idempotent and quiet: installs only what is missing.
set -euo pipefail

with_docker=false
for arg in "$@"; do
  case "$arg" in
    --docker) with_docker=true ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "setup: unknown argument '$arg' (--docker)" >&2; exit 2 ;;
  esac
done

cache=${OMNIKV_CACHE:-$HOME/.cache/omnikv}
venv=$cache/venv

sudo_if_needed() {
  if [ "$(id -u)" -eq 0 ]; then "$@"
  elif command -v sudo >/dev/null 2>&1; then sudo "$@"
  else echo "setup: need root or sudo to run: $*" >&2; exit 1; fi
}
apt_updated=false
apt_install() { # packages...
  echo "setup: installing $* (apt)"
  if ! $apt_updated; then sudo_if_needed apt-get update -qq; apt_updated=true; fi
  # Quiet: only errors reach stderr (not debconf's note on machines without apt-utils).
  sudo_if_needed env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" \
    2> >(grep -v '^debconf: delaying package configuration' >&2) >/dev/null
}

missing=()
dpkg -s libclang-dev >/dev/null 2>&1 || missing+=(libclang-dev)
command -v c++ >/dev/null 2>&1 || missing+=(g++)
command -v protoc >/dev/null 2>&1 || missing+=(protobuf-compiler)
command -v python3 >/dev/null 2>&1 || missing+=(python3)
# Debian's kubernetes-client provides kubectl (kustomize builds).
command -v kubectl >/dev/null 2>&1 || missing+=(kubernetes-client)
[ ${#missing[@]} -eq 0 ] || apt_install "${missing[@]}"
# etcd and etcdctl (Debian's etcd-server, etcd-client) for the benchmark tool's native-client
# test, the comparison runs and the etcd API tests; the packaged service is kept off
# (bench/install-etcd.sh).
{ command -v etcd && command -v etcdctl; } >/dev/null 2>&1 ||
  "$(dirname "$0")/../bench/install-etcd.sh" >/dev/null

if ! command -v just >/dev/null 2>&1; then
  echo "setup: installing just (cargo install)"
  cargo install just --locked --quiet
fi

# kubernetes-validate: the one on PATH, else the venv's (installed there when missing).
if command -v kubernetes-validate >/dev/null 2>&1; then
  kv=kubernetes-validate
else
  kv=$venv/bin/kubernetes-validate
  if ! "$kv" --version >/dev/null 2>&1; then
    echo "setup: installing kubernetes-validate (pip, into $venv)"
    mkdir -p "$cache"
    # Without python3-venv, `python3 -m venv` fails (no ensurepip) and leaves a venv without
    # pip; --clear redoes it after the install.
    if ! python3 -m venv --clear "$venv" >/dev/null 2>&1; then
      apt_install python3-venv
      python3 -m venv --clear "$venv"
    fi
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check kubernetes-validate
  fi
fi

# What the Docker demos need (the end of `just test`).
have_compose() { docker compose version >/dev/null 2>&1 || command -v docker-compose >/dev/null 2>&1; }
if $with_docker; then
  docker_pkgs=()
  command -v docker >/dev/null 2>&1 || docker_pkgs+=(docker.io)
  have_compose || docker_pkgs+=(docker-compose)
  [ ${#docker_pkgs[@]} -eq 0 ] || apt_install "${docker_pkgs[@]}"
fi
warnings=()
if ! command -v docker >/dev/null 2>&1; then
  warnings+=("Docker is not installed: \`just test\` ends with the Docker demos (\`just test-docker\`). Install Docker Engine and a Compose, e.g. \`scripts/setup.sh --docker\` (apt-get install docker.io docker-compose).")
else
  if ! have_compose; then
    warnings+=("no Compose (neither \`docker compose\` nor \`docker-compose\`): the Docker demos (\`just test-docker\`, the end of \`just test\`) need one, e.g. \`scripts/setup.sh --docker\` (apt-get install docker-compose).")
  fi
  if ! docker info >/dev/null 2>&1; then
    warnings+=("the Docker daemon is not reachable (\`docker info\` fails): start it (\`sudo systemctl start docker\`), or if this is a permission error, add yourself to the docker group (\`sudo usermod -aG docker \$USER\`, then log in again). The Docker demos (\`just test-docker\`) need it.")
  fi
fi
if [ "$(id -u)" -ne 0 ]; then
  warnings+=("not root: the disk-full test (kvd/tests/it/disk_full.rs) mounts a tmpfs and fails without root; run \`just test\` as root to pass it (CI does). The Docker image build (\`just image\`) uses sudo for debootstrap once.")
fi

echo "setup: ok ($(just --version), libclang-dev $(dpkg-query -W -f='${Version}' libclang-dev), $(protoc --version)," \
  "kubectl $(kubectl version --client -o json 2>/dev/null | python3 -c 'import json, sys; print(json.load(sys.stdin)["clientVersion"]["gitVersion"])' 2>/dev/null || echo '?')," \
  "kubernetes-validate $("$kv" --version 2>/dev/null)$([ "$kv" = kubernetes-validate ] || echo " in $venv"))"
for w in ${warnings[@]+"${warnings[@]}"}; do echo "setup: warning: $w" >&2; done

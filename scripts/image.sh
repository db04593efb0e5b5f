#!/usr/bin/env bash
# Builds the omnikv Docker image (kvd, kvctl, watcher) from deploy/Dockerfile: `just image`.
#
# Two paths, one runtime stage (see deploy/Dockerfile):
# - offline (no registry, the default unless the registry images are already local): the
#   base image omnikv-base:bookworm is made here with `debootstrap --variant=minbase` +
#   `docker import` (once; later runs reuse it), kvd, kvctl and watcher are built on the
#   host (`cargo build --release --bins`), and the Dockerfile's `prebuilt` target packages
#   them. No step
#   pulls an image. Needs root or sudo (debootstrap), and a host whose glibc is not newer
#   than bookworm's (the binaries are dynamically linked).
# - registry: the Dockerfile's default target, which compiles in a rust:bookworm builder stage.
#
# Env:
#   OMNIKV_IMAGE        tag to build (default omnikv:dev)
#   OMNIKV_IMAGE_MODE   auto (default) | offline | registry. auto takes the registry path only
#                       when $OMNIKV_RUST_IMAGE and debian:bookworm-slim are already local
#                       (it never pulls to find out); otherwise offline.
#   OMNIKV_RUST_IMAGE   builder image of the registry path (default rust:1.89-bookworm)
#   OMNIKV_BASE_IMAGE   base image of the offline path (default omnikv-base:bookworm)
#   OMNIKV_BIN_DIR      offline: take kvd/kvctl/watcher from this dir instead of building them
#   OMNIKV_DEBIAN_MIRROR  debootstrap mirror (default: the bookworm mirror in apt's sources)
#   OMNIKV_CACHE        cache dir (default ~/.cache/omnikv): keeps the rootfs tarball, so
#                       the base image is re-imported without debootstrap after `docker rmi`
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
image=${OMNIKV_IMAGE:-omnikv:dev}
mode=${OMNIKV_IMAGE_MODE:-auto}
rust_image=${OMNIKV_RUST_IMAGE:-rust:1.89-bookworm}
base=${OMNIKV_BASE_IMAGE:-omnikv-base:bookworm}
cache=${OMNIKV_CACHE:-$HOME/.cache/omnikv}
suite=bookworm

log() { echo "image: $*" >&2; }
have_image() { docker image inspect "$1" >/dev/null 2>&1; }
sudo_if_needed() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

# Which builder `docker build` uses: BuildKit (skips the stages a target does not need) or
# the legacy builder (runs every stage before the target). The Dockerfile works with both.
# Both builds pass --force-rm: the legacy builder then removes its intermediate containers
# also when a step fails (BuildKit accepts and ignores the flag).
builder_kind() {
  if [ "${DOCKER_BUILDKIT:-}" = 0 ]; then echo "legacy builder (DOCKER_BUILDKIT=0)"
  elif docker buildx version >/dev/null 2>&1; then echo "BuildKit (buildx)"
  else echo "legacy builder (no buildx)"; fi
}

# The first http(s) URI that apt's sources serve $suite from (deb822 and one-line forms).
apt_mirror() {
  local f
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
    [ -r "$f" ] || continue
    case "$f" in
      *.sources)
        awk -v s="$suite" '
          function flush() { if (uri != "" && suites ~ ("(^| )" s "( |$)") && types ~ /(^| )deb( |$)/) { print uri; exit } uri = ""; suites = ""; types = "" }
          /^[[:space:]]*$/ { flush(); next }
          /^Types:/ { sub(/^Types:[[:space:]]*/, ""); types = $0 }
          /^URIs:/ { uri = $2 }
          /^Suites:/ { sub(/^Suites:[[:space:]]*/, ""); suites = $0 }
          END { flush() }' "$f" ;;
      *)
        awk -v s="$suite" '$1 == "deb" { i = 2; if ($2 ~ /^\[/) { while ($i !~ /\]$/) i++; i++ } if ($(i + 1) == s) { print $i; exit } }' "$f" ;;
    esac
  done | grep -m1 -E '^https?://' || true
}

# omnikv-base:bookworm: a minbase Debian rootfs imported as an image.
ensure_base() {
  if have_image "$base"; then log "base $base present"; return; fi
  local tarball="$cache/docker/$suite-minbase.tar"
  if [ ! -s "$tarball" ]; then
    command -v debootstrap >/dev/null 2>&1 || {
      log "installing debootstrap (apt)"
      sudo_if_needed apt-get update -qq
      sudo_if_needed env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
    }
    local mirror=${OMNIKV_DEBIAN_MIRROR:-$(apt_mirror)}
    mirror=${mirror:-http://deb.debian.org/debian}
    local rootfs
    rootfs=$(mktemp -d "${TMPDIR:-/tmp}/omnikv-rootfs.XXXXXX")
    # shellcheck disable=SC2064 # expand now: rootfs is local
    trap "sudo_if_needed rm -rf '$rootfs'" EXIT
    log "debootstrap --variant=minbase $suite from $mirror (once; about a minute)"
    local t0=$SECONDS
    sudo_if_needed debootstrap --variant=minbase "$suite" "$rootfs" "$mirror" >"$rootfs.log" 2>&1 || {
      tail -20 "$rootfs.log" >&2; log "debootstrap failed (full log: $rootfs.log)"; exit 1
    }
    rm -f "$rootfs.log"
    # Slim it down like the official -slim images: no apt lists, caches, docs.
    sudo_if_needed rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* \
      "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* \
      "$rootfs"/var/log/*.log "$rootfs"/var/cache/debconf/*-old
    mkdir -p "$(dirname "$tarball")"
    sudo_if_needed tar --numeric-owner --xattrs -C "$rootfs" -cf - . >"$tarball.tmp"
    mv "$tarball.tmp" "$tarball"
    sudo_if_needed rm -rf "$rootfs"
    trap - EXIT
    log "rootfs cached as $tarball ($(du -h "$tarball" | cut -f1), debootstrap took $((SECONDS - t0))s)"
  fi
  docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["bash"]' \
    --message "debootstrap --variant=minbase $suite (scripts/image.sh)" \
    "$tarball" "$base" >/dev/null
  log "imported $base"
}

offline() {
  ensure_base
  local bin=${OMNIKV_BIN_DIR:-}
  if [ -z "$bin" ]; then
    local target=${CARGO_TARGET_DIR:-$root/target}
    log "cargo build --release --bins"
    (
      cd "$root"
      ROCKSDB_LIB_DIR=$(./scripts/rocksdb-lib.sh)
      export ROCKSDB_LIB_DIR ROCKSDB_STATIC=1 CARGO_TARGET_DIR=$target
      cargo build --release --bins --quiet
    )
    bin=$target/release
  fi
  local ctx
  ctx=$(mktemp -d "${TMPDIR:-/tmp}/omnikv-image.XXXXXX")
  # shellcheck disable=SC2064
  trap "rm -rf '$ctx'" EXIT
  mkdir -p "$ctx/deploy/prebuilt"
  cp "$bin/kvd" "$bin/kvctl" "$bin/watcher" "$ctx/deploy/prebuilt/"
  log "docker build --target prebuilt --build-arg BASE=$base -t $image ($(builder_kind))"
  docker build --quiet --force-rm -f "$root/deploy/Dockerfile" --target prebuilt \
    --build-arg BASE="$base" -t "$image" "$ctx" >/dev/null
  rm -rf "$ctx"
  trap - EXIT
}

registry() {
  log "docker build -t $image (builder $rust_image, $(builder_kind))"
  docker build --force-rm -f "$root/deploy/Dockerfile" --build-arg RUST_IMAGE="$rust_image" -t "$image" "$root"
}

case "$mode" in
  offline) offline ;;
  registry) registry ;;
  auto)
    if have_image "$rust_image" && have_image debian:bookworm-slim; then registry; else
      log "$rust_image or debian:bookworm-slim not local: offline path (OMNIKV_IMAGE_MODE=registry pulls them)"
      offline
    fi ;;
  *) log "OMNIKV_IMAGE_MODE must be auto, offline or registry (got $mode)"; exit 2 ;;
esac
log "built $image ($(docker image inspect -f '{{.Size}}' "$image" | awk '{ printf "%.0f MB", $1 / 1e6 }'))"

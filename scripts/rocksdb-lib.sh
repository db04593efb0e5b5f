#!/usr/bin/env bash
# Prints a directory holding a prebuilt static librocksdb.a for the librocksdb-sys version
# pinned in Cargo.lock, building it once when there is none.
#
# Why: librocksdb-sys compiles RocksDB's C++ in its build script (10-15 minutes on 2 cores),
# and cargo re-runs that build script for each distinct build of it (build, check/clippy and
# test end up with different build-script units). Pointing ROCKSDB_LIB_DIR at one prebuilt
# archive makes every one of them a link step. Used by the justfile and .ci/run.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
ver=$(awk '/^name = "librocksdb-sys"$/ { getline; gsub(/"/, "", $3); print $3 }' "$root/Cargo.lock")
cache=${OMNIKV_ROCKSDB_CACHE:-$HOME/.cache/omnikv/rocksdb-$ver}
if [ ! -f "$cache/librocksdb.a" ]; then
  target=${CARGO_TARGET_DIR:-$root/target}
  find_lib() {
    # Only archives built from this exact librocksdb-sys version (its out dir's
    # root-output points at a build dir whose script records the version).
    local d
    for d in $(ls -td "$target"/*/build/librocksdb-sys-*/out 2>/dev/null); do
      if [ -f "$d/librocksdb.a" ] && grep -q "librocksdb-sys-$ver" "$d/../output" 2>/dev/null; then
        echo "$d/librocksdb.a"; return
      fi
    done
  }
  lib=$(find_lib)
  if [ -z "$lib" ]; then
    echo "rocksdb-lib: building RocksDB $ver once (10-15 minutes on 2 cores)" >&2
    (cd "$root" && env -u ROCKSDB_LIB_DIR -u ROCKSDB_STATIC cargo build -p librocksdb-sys >&2)
    lib=$(find_lib)
    [ -n "$lib" ] || { echo "rocksdb-lib: no librocksdb.a after the build" >&2; exit 1; }
  fi
  mkdir -p "$cache"
  cp "$lib" "$cache/librocksdb.a.tmp"
  mv "$cache/librocksdb.a.tmp" "$cache/librocksdb.a"
  echo "rocksdb-lib: cached $lib as $cache/librocksdb.a" >&2
fi
echo "$cache"

#!/usr/bin/env bash
# Lock throughput and fairness: N shell loops contend on one `kvctl lock` for DURATION
# seconds, against a fresh local 3-replica cluster (fsync on). Each loop runs
# `kvctl lock bench -- sh -c 'echo ID >> FILE'` again and again, so every acquisition is a
# whole kvctl run: start, lease grant, enqueue transaction, wait, command, revoke.
# Prints, per N, the median over ROUNDS of: acquisitions per second (all loops together),
# and the spread of acquisitions per loop (min, max, max/min: 1.0 is perfectly fair).
#   usage: bench/lock.sh [BIN_DIR] [DURATION_S] [ROUNDS] [CONTENDERS...]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bin=${1:-${CARGO_TARGET_DIR:-$root/target}/release}
duration=${2:-10}
rounds=${3:-3}
shift $(( $# < 3 ? $# : 3 ))
contenders=("$@")
[ ${#contenders[@]} -gt 0 ] || contenders=(1 4 16)
work=$(mktemp -d /tmp/omnikv-bench-lock.XXXXXX)
pids=()
stop_all() { [ ${#pids[@]} -eq 0 ] || kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; pids=(); }
trap 'stop_all; rm -rf "$work"' EXIT

peers="1=127.0.0.1:17101,2=127.0.0.1:17102,3=127.0.0.1:17103"
eps="127.0.0.1:18101,127.0.0.1:18102,127.0.0.1:18103"
for p in 1 2 3; do
  PID=$p NODES="[1,2,3]" KVD_DATA_DIR="$work/data-$p" \
  KVD_CLIENT_ADDR="127.0.0.1:$((18100 + p))" KVD_PEER_ADDR="127.0.0.1:$((17100 + p))" \
  KVD_PEERS="$peers" KVD_LOG=warn "$bin/kvd" >"$work/kvd-$p.log" 2>&1 &
  pids+=($!)
done
export KVCTL_ENDPOINTS=$eps
until "$bin/kvctl" --timeout 2s get probe >/dev/null 2>&1 || [ $? -eq 1 ]; do sleep 0.3; done

# One round: N loops for DURATION seconds; prints "N acquisitions-per-loop..." on one line.
round() {
  local n=$1 file=$work/acq i
  : >"$file"
  local loops=() end=$(( $(date +%s) + duration ))
  for i in $(seq 1 "$n"); do
    ( while [ "$(date +%s)" -lt "$end" ]; do
        "$bin/kvctl" lock bench --ttl 10 -- sh -c "echo $i >> $file" || true
      done ) &
    loops+=($!)
  done
  wait "${loops[@]}"
  local counts=""
  for i in $(seq 1 "$n"); do counts+=" $(grep -cx "$i" "$file" || true)"; done
  echo "$n$counts"
}

results=$work/results
for r in $(seq 1 "$rounds"); do
  for n in "${contenders[@]}"; do round "$n" >>"$results"; done
done
python3 - "$duration" "$results" <<'PY'
import statistics, sys
duration = float(sys.argv[1])
runs = {}
for line in open(sys.argv[2]):
    n, *counts = map(int, line.split())
    runs.setdefault(n, []).append(counts)
print(f"{duration:.0f} s per run, median of {len(next(iter(runs.values())))} runs")
print("| contenders | acquisitions/s | per contender min | max | max/min |")
print("|---|---|---|---|---|")
for n, rs in sorted(runs.items()):
    rate = statistics.median(sum(c) / duration for c in rs)
    lo = statistics.median(min(c) for c in rs)
    hi = statistics.median(max(c) for c in rs)
    ratio = statistics.median(max(c) / max(min(c), 1) for c in rs)
    print(f"| {n} | {rate:.1f} | {lo:.0f} | {hi:.0f} | {ratio:.2f} |")
PY

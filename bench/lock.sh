#!/usr/bin/env bash
# Lock throughput and fairness: N shell loops contend on one lock for DURATION seconds,
# against a fresh local 3-replica omnikv cluster (fsync on) and, when `etcd` is installed
# (bench/install-etcd.sh), a fresh 3-member etcd cluster, in interleaved runs. Each loop runs
# `kvctl lock bench -- sh -c 'echo ID >> FILE'` (or `etcdctl lock bench sh -c ...`) again and
# again, so every acquisition is a whole client run: start, lease grant, enqueue transaction,
# wait, command, release. Prints, per system and N, the median over ROUNDS of: acquisitions
# per second (all loops together), and the spread of acquisitions per loop (min, max,
# max/min: 1.0 is perfectly fair).
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
systems=(omnikv)
if command -v etcd >/dev/null && command -v etcdctl >/dev/null; then
  cluster="e1=http://127.0.0.1:17201,e2=http://127.0.0.1:17202,e3=http://127.0.0.1:17203"
  for p in 1 2 3; do
    etcd --name "e$p" --data-dir "$work/etcd-$p" \
      --listen-client-urls "http://127.0.0.1:$((18200 + p))" \
      --advertise-client-urls "http://127.0.0.1:$((18200 + p))" \
      --listen-peer-urls "http://127.0.0.1:$((17200 + p))" \
      --initial-advertise-peer-urls "http://127.0.0.1:$((17200 + p))" \
      --initial-cluster "$cluster" --initial-cluster-token lockbench \
      --initial-cluster-state new --log-level warn >"$work/etcd-$p.log" 2>&1 &
    pids+=($!)
  done
  export ETCDCTL_API=3 ETCDCTL_ENDPOINTS="127.0.0.1:18201,127.0.0.1:18202,127.0.0.1:18203"
  until etcdctl endpoint health >/dev/null 2>&1; do sleep 0.3; done
  systems+=(etcd)
fi

# One round: N loops of SYSTEM's lock for DURATION seconds; prints
# "SYSTEM N acquisitions-per-loop..." on one line.
round() {
  local system=$1 n=$2 file=$work/acq i
  : >"$file"
  local loops=() end=$(( $(date +%s) + duration ))
  for i in $(seq 1 "$n"); do
    ( while [ "$(date +%s)" -lt "$end" ]; do
        if [ "$system" = omnikv ]; then
          "$bin/kvctl" lock bench --ttl 10 -- sh -c "echo $i >> $file" || true
        else
          etcdctl lock --ttl 10 bench -- sh -c "echo $i >> $file" || true
        fi
      done ) >/dev/null 2>>"$work/errors" &
    loops+=($!)
  done
  wait "${loops[@]}"
  local counts=""
  for i in $(seq 1 "$n"); do counts+=" $(grep -cx "$i" "$file" || true)"; done
  echo "$system $n$counts"
}

results=$work/results
for r in $(seq 1 "$rounds"); do
  for n in "${contenders[@]}"; do
    for system in "${systems[@]}"; do round "$system" "$n" >>"$results"; done
  done
done
python3 - "$duration" "$results" <<'PY'
import statistics, sys
duration = float(sys.argv[1])
runs = {}
for line in open(sys.argv[2]):
    system, n, *counts = line.split()
    runs.setdefault((int(n), system), []).append([int(c) for c in counts])
print(f"{duration:.0f} s per run, median of {len(next(iter(runs.values())))} interleaved runs")
print("| contenders | system | acquisitions/s | per contender min | max | max/min |")
print("|---|---|---|---|---|---|")
for (n, system), rs in sorted(runs.items(), key=lambda kv: (kv[0][0], kv[0][1] != "omnikv")):
    rate = statistics.median(sum(c) / duration for c in rs)
    lo = statistics.median(min(c) for c in rs)
    hi = statistics.median(max(c) for c in rs)
    ratio = statistics.median(max(c) / max(min(c), 1) for c in rs)
    print(f"| {n} | {system} | {rate:.1f} | {lo:.0f} | {hi:.0f} | {ratio:.2f} |")
PY

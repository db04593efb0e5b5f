#!/usr/bin/env bash
# Quick write benchmark of a local cluster (3 replicas and standalone), fsync on:
# puts/s and latency at 1 and 64 clients, and fsyncs per committed put, counted from every
# replica's omnikv_fsyncs_total before and after each run. Everything runs on this machine.
#   usage: scripts/bench-local.sh [BIN_DIR] [DURATION]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bin=${1:-${CARGO_TARGET_DIR:-$root/target}/release}
duration=${2:-10s}
work=$(mktemp -d /tmp/omnikv-bench.XXXXXX)
pids=()
stop_all() { [ ${#pids[@]} -eq 0 ] || kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; pids=(); }
trap 'stop_all; rm -rf "$work"' EXIT

start_cluster() { # $1 = comma list of pids
  local nodes=$1 peers="" p
  for p in ${nodes//,/ }; do peers+="${peers:+,}$p=127.0.0.1:$((17000 + p))"; done
  for p in ${nodes//,/ }; do
    PID=$p NODES="[$nodes]" KVD_DATA_DIR="$work/$nodes/data-$p" \
    KVD_CLIENT_ADDR="127.0.0.1:$((18000 + p))" KVD_PEER_ADDR="127.0.0.1:$((17000 + p))" \
    KVD_PEERS="$peers" KVD_LOG=warn "$bin/kvd" >"$work/kvd-$nodes-$p.log" 2>&1 &
    pids+=($!)
  done
}
endpoints() { local out="" p; for p in ${1//,/ }; do out+="${out:+,}127.0.0.1:$((18000 + p))"; done; echo "$out"; }
fsyncs() { # sum of omnikv_fsyncs_total over the replicas
  local total=0 p v
  for p in ${1//,/ }; do
    v=$(curl -s "127.0.0.1:$((18000 + p))/metrics" | awk '/^omnikv_fsyncs_total/ {print $2}')
    total=$((total + ${v:-0}))
  done
  echo "$total"
}

printf '| cluster | clients | puts/s | p50 ms | p99 ms | fsyncs/s (all replicas) | fsyncs per put | client CPU |\n|---|---|---|---|---|---|---|---|\n'
for nodes in 1,2,3 1; do
  start_cluster "$nodes"
  eps=$(endpoints "$nodes")
  until "$bin/kvctl" --endpoints "$eps" --timeout 2s get probe >/dev/null 2>&1 || [ $? -eq 1 ]; do sleep 0.3; done
  for clients in 1 64; do
    before=$(fsyncs "$nodes")
    out=$("$bin/kvctl" --endpoints "$eps" -o json bench --clients "$clients" --duration "$duration" --warmup 1s --value-size 100)
    after=$(fsyncs "$nodes")
    python3 - "$nodes" "$clients" "$before" "$after" "$out" <<'PY'
import json, sys
nodes, clients, before, after, out = sys.argv[1:]
r = json.loads(out)
dur = r["duration_s"] + r.get("warmup_s", 0)
puts = r["ops_per_sec"]
fs = (int(after) - int(before)) / dur
name = "3 replicas" if nodes != "1" else "standalone"
print(f'| {name} | {clients} | {puts:.0f} | {r["latency_ms"]["p50"]:.2f} | {r["latency_ms"]["p99"]:.2f} | {fs:.0f} | {fs / max(puts, 1):.3f} | {r["client_cpu_cores"]:.2f} |')
PY
  done
  stop_all
done

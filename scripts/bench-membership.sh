#!/usr/bin/env bash
# Membership-change figures on this machine (release build, fsync on, 100-byte values):
#   1. time to add a 4th replica holding N keys (N from KEYS, default "10000 100000 1000000"):
#      from `kvctl reconfigure` until replica 4 serves with every key, and the state-transfer
#      rate (omnikv_checkpoint_bytes_received_total on replica 4 / that time);
#   2. the write throughput dip during a change: 64 clients writing in 1-second windows while
#      replica 4 is added at window 5 and removed again at window 12.
#   usage: scripts/bench-membership.sh [BIN_DIR]    (`just bench-membership`)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bin=${1:-${CARGO_TARGET_DIR:-$root/target}/release}
keys_list=${KEYS:-10000 100000 1000000}
work=$(mktemp -d /tmp/omnikv-bench-membership.XXXXXX)
pids=()
stop_all() { [ ${#pids[@]} -eq 0 ] || kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; pids=(); }
trap 'stop_all; rm -rf "$work"' EXIT

peers="1=127.0.0.1:27001,2=127.0.0.1:27002,3=127.0.0.1:27003,4=127.0.0.1:27004"
start() { # $1 pid, $2 CONFIG_ID, $3 NODES, $4 run dir
  PID=$1 CONFIG_ID=$2 NODES="[$3]" KVD_DATA_DIR="$4/data-$1" \
  KVD_CLIENT_ADDR="127.0.0.1:$((28000 + $1))" KVD_PEER_ADDR="127.0.0.1:$((27000 + $1))" \
  KVD_PEERS="$peers" KVD_LOG=info "$bin/kvd" >>"$4/kvd-$1.log" 2>&1 &
  pids+=($!)
}
eps="127.0.0.1:28001,127.0.0.1:28002,127.0.0.1:28003"
kvctl() { "$bin/kvctl" "$@"; }
field() { python3 -c "import json,sys; print(json.load(sys.stdin)$1)"; }
status4() { kvctl --endpoints 127.0.0.1:28004 --timeout 1s -o json status 2>/dev/null; }
now() { date +%s.%N; }

cluster() { # a fresh 3-replica cluster in $1
  mkdir -p "$1"
  for p in 1 2 3; do start $p 1 1,2,3 "$1"; done
  until kvctl --endpoints "$eps" --timeout 2s get probe >/dev/null 2>&1 || [ $? -eq 1 ]; do sleep 0.2; done
}

echo "## Adding a replica (machine: $(nproc) cores; $(date -u +%F))"
echo
echo "| keys held | load (puts/s) | change decided (s) | replica 4 serving all keys (s) | bytes transferred | MB/s |"
echo "|---|---|---|---|---|---|"
for n in $keys_list; do
  dir=$work/add-$n
  cluster "$dir"
  # Keys drawn from 20N: about 97.5% of the N puts create a distinct key.
  load=$(kvctl --endpoints "$eps" -o json bench --clients 128 --ops "$n" --keys $((20 * n)) --warmup 0 --value-size 100)
  rate=$(field '["ops_per_sec"]' <<<"$load")
  held=$(kvctl --endpoints "$eps" -o json status | field '["keys"]')
  start 4 2 1,2,3,4 "$dir"
  until status4 >/dev/null; do sleep 0.1; done
  t0=$(now)
  kvctl --endpoints "$eps" --timeout 60s reconfigure --nodes 1,2,3,4 --peer 4=127.0.0.1:27004 >/dev/null
  t1=$(now)
  until s=$(status4) && [ "$(field '["role"]' <<<"$s")" != joining ] && [ "$(field '["keys"]' <<<"$s")" -ge "$held" ]; do sleep 0.05; done
  t2=$(now)
  bytes=$(curl -s 127.0.0.1:28004/metrics | awk '/^omnikv_checkpoint_bytes_received_total/ {print $2}')
  python3 - "$held" "$rate" "$t0" "$t1" "$t2" "${bytes:-0}" <<'PY'
import sys
held, rate, t0, t1, t2, b = sys.argv[1:]
t0, t1, t2, b = float(t0), float(t1), float(t2), int(float(b))
print(f"| {int(held)} | {float(rate):.0f} | {t1 - t0:.2f} | {t2 - t0:.2f} | {b} | {b / 1e6 / (t2 - t0):.1f} |")
PY
  stop_all
done

echo
echo "## Write throughput around a change (64 clients, 1 s windows; 100k keys held)"
dir=$work/dip
cluster "$dir"
kvctl --endpoints "$eps" bench --clients 128 --ops 100000 --keys 2000000 --warmup 0 >/dev/null
start 4 2 1,2,3,4 "$dir"
until status4 >/dev/null; do sleep 0.1; done
series=()
changes=()
for w in $(seq 1 18); do
  if [ "$w" -eq 5 ]; then
    kvctl --endpoints "$eps" --timeout 60s reconfigure --nodes 1,2,3,4 --peer 4=127.0.0.1:27004 >/dev/null &
    changes+=($!)
  fi
  if [ "$w" -eq 12 ]; then
    kvctl --endpoints "$eps" --timeout 60s reconfigure --nodes 1,2,3 >/dev/null &
    changes+=($!)
  fi
  r=$(kvctl --endpoints "$eps" -o json bench --clients 64 --duration 1s --warmup 0 --value-size 100 2>/dev/null | field '["ops_per_sec"]' || echo 0)
  series+=("$(printf '%.0f' "$r")")
done
wait "${changes[@]}"
echo
echo "window: $(seq -s' ' 1 18)"
echo "puts/s: ${series[*]}"
echo "(change to 1,2,3,4 issued at the start of window 5, back to 1,2,3 at window 12)"

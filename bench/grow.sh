#!/usr/bin/env bash
# Growing a single server into a cluster (release build, fsync on, 100-byte values): a
# standalone kvd holding KEYS keys (default 100000) grown to 3 replicas with one
# `kvctl reconfigure --nodes 1,2,3`, RUNS times (default 3) idle and RUNS times under a write
# load (16 clients), interleaved. Per run: the time until the change is decided (kvctl
# returns), until replicas 2 and 3 serve every key, the bytes they received, and under load
# (20 s of puts, the change issued 1 s in) the puts/s, the errors and the longest a put took
# (writes wait while the state is not yet on a majority). Prints a markdown table and medians.
#   usage: bench/grow.sh [BIN_DIR]    (`just bench-grow`; KEYS=, RUNS= narrow it)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bin=${1:-${CARGO_TARGET_DIR:-$root/target}/release}
keys=${KEYS:-100000}
runs=${RUNS:-3}
work=$(mktemp -d /tmp/omnikv-bench-grow.XXXXXX)
pids=()
stop_all() { [ ${#pids[@]} -eq 0 ] || kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; pids=(); }
trap 'stop_all; rm -rf "$work"' EXIT

peers="1=127.0.0.1:27101,2=127.0.0.1:27102,3=127.0.0.1:27103"
start() { # $1 pid, $2 CONFIG_ID, $3 NODES, $4 run dir
  PID=$1 CONFIG_ID=$2 NODES="[$3]" KVD_DATA_DIR="$4/data-$1" \
  KVD_CLIENT_ADDR="127.0.0.1:$((28100 + $1))" KVD_PEER_ADDR="127.0.0.1:$((27100 + $1))" \
  KVD_PEERS="$peers" KVD_LOG=info "$bin/kvd" >>"$4/kvd-$1.log" 2>&1 &
  pids+=($!)
}
ep() { echo "127.0.0.1:$((28100 + $1))"; }
eps="$(ep 1),$(ep 2),$(ep 3)"
kvctl() { "$bin/kvctl" "$@"; }
field() { python3 -c "import json,sys; print(json.load(sys.stdin)$1)"; }
status_of() { kvctl --endpoints "$(ep "$1")" --timeout 1s -o json status 2>/dev/null; }
now() { date +%s.%N; }
serves_all() { # $1 pid, $2 keys: serving (not joining) with at least that many keys
  local s
  s=$(status_of "$1") && [ "$(field '["role"]' <<<"$s")" != joining ] && [ "$(field '["keys"]' <<<"$s")" -ge "$2" ]
}

rows=()
run() { # $1 run number, $2 idle|load
  local dir=$work/run-$1-$2 t0 t1 t2 held bytes=0 b p loadpid="" load="-"
  mkdir -p "$dir"
  start 1 1 1 "$dir"
  until status_of 1 >/dev/null; do sleep 0.1; done
  kvctl --endpoints "$(ep 1)" -o json bench --clients 128 --ops "$keys" --keys "$keys" \
    --key-order sequential --warmup 0 --value-size 100 >/dev/null
  held=$(status_of 1 | field '["keys"]')
  start 2 2 1,2,3 "$dir"
  start 3 2 1,2,3 "$dir"
  until status_of 2 >/dev/null && status_of 3 >/dev/null; do sleep 0.1; done
  if [ "$2" = load ]; then
    kvctl --endpoints "$eps" --timeout 10s -o json bench --clients 16 --duration 20s --warmup 0 \
      --keys 1000000 --value-size 100 >"$dir/load.json" 2>/dev/null &
    loadpid=$!
    sleep 1
  fi
  t0=$(now)
  kvctl --endpoints "$(ep 1)" --timeout 60s reconfigure --nodes 1,2,3 \
    --peer "2=127.0.0.1:27102" --peer "3=127.0.0.1:27103" >/dev/null
  t1=$(now)
  until serves_all 2 "$held" && serves_all 3 "$held"; do sleep 0.05; done
  t2=$(now)
  for p in 2 3; do
    b=$(curl -s "$(ep $p)/metrics" | awk '/^omnikv_checkpoint_bytes_received_total/ {print $2}')
    bytes=$((bytes + ${b%.*}))
  done
  if [ -n "$loadpid" ]; then
    wait "$loadpid" || true
    load=$(python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); e=r["errors"]
print("%.0f/%d/%.0f" % (r["ops_per_sec"], e["unavailable"]+e["indeterminate"]+e["rejected"], r["latency_ms"]["max"]))' "$dir/load.json")
  fi
  rows+=("$1 $2 $held $t0 $t1 $t2 $bytes $load")
  stop_all
}

for r in $(seq 1 "$runs"); do
  run "$r" idle
  run "$r" load
done

echo "## Growing a standalone replica into 3 (machine: $(nproc) cores; $(date -u +%F); $keys keys of 100 B)"
echo
python3 - "${rows[@]}" <<'PY'
import statistics, sys
rows = [r.split() for r in sys.argv[1:]]
print("| run | load | keys held | change decided (s) | 2 and 3 serve every key (s) | bytes received (2 + 3) | load: puts/s, errors, longest put (ms) |")
print("|---|---|---|---|---|---|---|")
by = {}
for run, mode, held, t0, t1, t2, b, load in rows:
    t0, t1, t2 = float(t0), float(t1), float(t2)
    by.setdefault(mode, []).append((t1 - t0, t2 - t0))
    load = ", ".join(load.split("/"))
    print(f"| {run} | {mode} | {held} | {t1 - t0:.2f} | {t2 - t0:.2f} | {int(b)} | {load} |")
print()
for mode, v in by.items():
    d = statistics.median(x for x, _ in v)
    s = statistics.median(y for _, y in v)
    print(f"median ({mode}, {len(v)} runs): change decided {d:.2f} s, grown (both serving every key) {s:.2f} s")
PY

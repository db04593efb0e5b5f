#!/usr/bin/env bash
# Backup and restore figures on this machine (release build, fsync on):
#   a 3-replica cluster loaded with KEYS keys (default 1,000,000) of 100-byte values, then RUNS
#   rounds (default 3), each: `kvctl snapshot save` (time, file size) and `kvd restore` of one
#   member from that file (time); medians printed. Then the write latency (16 clients) while
#   snapshots stream back to back against the same load without them (interleaved rounds), and
#   the last file, taken under that load, restored into a 3-replica cluster that is started and
#   checked (revision, key count and state hash equal the file's).
#   usage: bench/backup.sh [BIN_DIR]        (`just bench-backup`; KEYS=, RUNS= to change)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bin=${1:-${CARGO_TARGET_DIR:-$root/target}/release}
keys=${KEYS:-1000000}
runs=${RUNS:-3}
work=$(mktemp -d /tmp/omnikv-bench-backup.XXXXXX)
pids=()
stop_all() { [ ${#pids[@]} -eq 0 ] || kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; pids=(); }
trap 'stop_all; rm -rf "$work"' EXIT

peers="1=127.0.0.1:26001,2=127.0.0.1:26002,3=127.0.0.1:26003"
member_env() { # $1 pid, $2 run dir: the env a member runs (and is restored) with
  echo PID="$1" NODES=1,2,3 KVD_DATA_DIR="$2/data-$1" \
    KVD_CLIENT_ADDR="127.0.0.1:$((25000 + $1))" KVD_PEER_ADDR="127.0.0.1:$((26000 + $1))" \
    KVD_PEERS="$peers" KVD_LOG=info
}
start() { # $1 pid, $2 run dir
  env $(member_env "$1" "$2") "$bin/kvd" >>"$2/kvd-$1.log" 2>&1 &
  pids+=($!)
}
eps="127.0.0.1:25001,127.0.0.1:25002,127.0.0.1:25003"
kvctl() { "$bin/kvctl" --endpoints "$eps" "$@"; }
field() { python3 -c "import json,sys; print(json.load(sys.stdin)$1)"; }
now() { date +%s.%N; }
median() { python3 -c "import statistics,sys; print(f'{statistics.median(map(float, sys.argv[1:])):.2f}')" "$@"; }
wait_serving() { until kvctl --timeout 2s get probe >/dev/null 2>&1 || [ $? -eq 1 ]; do sleep 0.2; done; }

src=$work/source
mkdir -p "$src"
for p in 1 2 3; do start $p "$src"; done
wait_serving
t0=$(now)
kvctl -o json bench --clients 128 --ops "$keys" --keys "$keys" --key-order sequential --warmup 0 --value-size 100 >/dev/null
t1=$(now)
held=$(kvctl -o json status | field '["keys"]')
echo "## Backup and restore (machine: $(nproc) cores, load $(cut -d' ' -f1 /proc/loadavg); $(date -u +%F))"
echo
echo "$held keys of 100 bytes loaded in $(python3 -c "print(f'{$t1 - $t0:.1f}')") s."
echo

saves=() restores=() sizes=()
for r in $(seq 1 "$runs"); do
  f=$work/run-$r.snap
  a=$(now); kvctl snapshot save "$f" >/dev/null 2>"$work/save-$r.err"; b=$(now)
  saves+=("$(python3 -c "print($b - $a)")")
  sizes+=("$(stat -c %s "$f")")
  a=$(now); env KVD_LOG=warn $(member_env 1 "$work/restore-$r") "$bin/kvd" restore "$f" >/dev/null; b=$(now)
  restores+=("$(python3 -c "print($b - $a)")")
  rm -rf "$work/restore-$r" "$f"
done
echo "| keys | runs | save (s, median) | restore of one member (s, median) | file size (MB) | save MB/s |"
echo "|---|---|---|---|---|---|"
ms=$(median "${saves[@]}") mr=$(median "${restores[@]}") sz=$(median "${sizes[@]}")
python3 -c "print(f'| $held | $runs | $ms | $mr | {$sz / 1e6:.1f} | {$sz / 1e6 / $ms:.0f} |')"
echo
echo "saves: ${saves[*]}"
echo "restores: ${restores[*]}"
echo

# Writes while snapshots stream back to back, against the same load alone: ROUNDS (3)
# interleaved pairs of DUR-second windows; medians of the percentiles.
lat() { kvctl -o json bench --clients 16 --duration "$1" --keys 100000 --value-size 100 --warmup 0 | field '["latency_ms"]'; }
dur=${DUR:-5}
f=$work/under-load.snap
alone=() during=() saved=0
for r in $(seq 1 "${ROUNDS:-3}"); do
  alone+=("$(lat "${dur}s")")
  ( end=$((SECONDS + dur)); n=0
    while [ $SECONDS -lt $end ]; do kvctl snapshot save "$f" >/dev/null 2>&1; n=$((n + 1)); done
    echo $n >"$work/saves-$r" ) &
  saver=$!
  during+=("$(lat "${dur}s")")
  wait $saver
  saved=$((saved + $(cat "$work/saves-$r")))
done
echo "| put latency, 16 clients, ${ROUNDS:-3} x ${dur} s (medians) | p50 ms | p99 ms | max ms |"
echo "|---|---|---|---|"
python3 - "${#alone[@]}" "${alone[@]}" "${during[@]}" <<'PY'
import ast, statistics, sys
n = int(sys.argv[1]); rows = [ast.literal_eval(x) for x in sys.argv[2:]]
for name, part in (("alone", rows[:n]), ("while snapshots stream", rows[n:])):
    m = {k: statistics.median(r[k] for r in part) for k in ("p50", "p99", "max")}
    print(f"| {name} | {m['p50']:.2f} | {m['p99']:.2f} | {m['max']:.2f} |")
PY
echo
echo "($saved snapshots saved back to back during the measured windows.)"
echo

# The file taken under load restores into a cluster that serves its exact state.
want=$("$bin/kvctl" -o json snapshot status "$f")
stop_all
dst=$work/restored
a=$(now)
for p in 1 2 3; do env KVD_LOG=warn $(member_env $p "$dst") "$bin/kvd" restore "$f" >/dev/null; done
for p in 1 2 3; do start $p "$dst"; done
wait_serving
b=$(now)
got=$(kvctl --consistency local -o json status)
for k in revision state_hash keys; do
  w=$(field "[\"$k\"]" <<<"$want"); g=$(field "[\"$k\"]" <<<"$got")
  [ "$w" = "$g" ] || { echo "restored cluster differs: $k $g, the file says $w" >&2; exit 1; }
done
echo "A snapshot taken under write load (revision $(field '["revision"]' <<<"$want")) restored into 3 members and serving in $(python3 -c "print(f'{$b - $a:.1f}')") s, with the file's revision, key count and state hash."

#!/usr/bin/env bash
# A local omnikv cluster of kvd processes on loopback (the `just up/down/clean/kill` recipes).
# Replica N: client 127.0.0.1:800N (as in the seed), peers 127.0.0.1:700N,
# data in $OMNIKV_HOME/data-N, log in $OMNIKV_HOME/kvd-N.log, pid in $OMNIKV_HOME/kvd-N.pid.
# The member list lives in $OMNIKV_HOME/nodes (OMNIKV_NODES, default 1,2,3, seeds it);
# `add N` / `remove N` change it with `kvctl reconfigure`; `grow [N]` turns a single server
# (Demo 0, OMNIKV_NODES=1) into replicas 1..N (default 3) in one change (Demo 1).
set -euo pipefail

cmd=${1:?usage: local-cluster.sh up|down|clean|status|kill N|start N|add N|remove N|grow [N]}
root=$(cd "$(dirname "$0")/.." && pwd)
home=${OMNIKV_HOME:-$root/.omnikv}
bin=${OMNIKV_BIN:-${CARGO_TARGET_DIR:-$root/target}/debug}
mkdir -p "$home"
[ -f "$home/initial-nodes" ] || echo "${OMNIKV_NODES:-1,2,3}" >"$home/initial-nodes"
[ -f "$home/nodes" ] || cp "$home/initial-nodes" "$home/nodes"
initial=$(cat "$home/initial-nodes")
nodes=$(cat "$home/nodes")

peers() {
  local out="" p
  for p in ${nodes//,/ }; do out+="${out:+,}$p=127.0.0.1:$((7000 + p))"; done
  echo "$out"
}

# Alive and not a zombie (a killed replica may linger unreaped when nothing waits for it).
running() {
  local pid
  pid=$(cat "$home/kvd-$1.pid" 2>/dev/null) || return 1
  [ -r "/proc/$pid/status" ] && ! grep -q '^State:[[:space:]]*Z' "/proc/$pid/status"
}

start() {
  local p=$1
  if running "$p"; then echo "kvd $p already running (pid $(cat "$home/kvd-$p.pid"))"; return; fi
  # Members of the initial configuration bootstrap from it; any other replica starts as a
  # joiner (CONFIG_ID > 1). Once a data dir exists, its persisted configuration wins.
  local config_id=1 members=$initial
  case ",$initial," in *",$p,"*) ;; *) config_id=2 members="$nodes,$p" ;; esac
  PID=$p NODES="[$members]" CONFIG_ID=$config_id \
  KVD_DATA_DIR="$home/data-$p" \
  KVD_CLIENT_ADDR="127.0.0.1:$((8000 + p))" KVD_PEER_ADDR="127.0.0.1:$((7000 + p))" \
  KVD_PEERS="$(peers)" \
    nohup "$bin/kvd" >>"$home/kvd-$p.log" 2>&1 &
  echo $! >"$home/kvd-$p.pid"
  echo "kvd $p started (pid $!, client 127.0.0.1:$((8000 + p)), log $home/kvd-$p.log)"
}

endpoints() {
  local out="" p
  for p in ${nodes//,/ }; do out+="${out:+,}127.0.0.1:$((8000 + p))"; done
  echo "$out"
}

# ready: every member answers status with a serving role and one known leader (as /readyz).
ready() {
  local j rows
  j=$("$bin/kvctl" --endpoints "$(endpoints)" -o json --timeout 2s status --all 2>/dev/null) || return 1
  rows=$(grep -o '"endpoint":' <<<"$j" | wc -l)
  [ "$rows" -gt 0 ] &&
    [ "$(grep -oE '"role":"(leader|follower|standalone)"' <<<"$j" | wc -l)" -eq "$rows" ] &&
    [ "$(grep -oE '"leader":[0-9]+' <<<"$j" | wc -l)" -eq "$rows" ] &&
    [ "$(grep -oE '"leader":[0-9]+' <<<"$j" | sort -u | wc -l)" -eq 1 ]
}

# wait_serving SECS: until every member is ready (or fail after SECS), then print status.
wait_serving() {
  local deadline=$((SECONDS + $1))
  until ready; do
    if [ $SECONDS -ge $deadline ]; then echo "not every replica serves after $1s; see $home/kvd-*.log" >&2; exit 1; fi
    sleep 0.3
  done
  "$bin/kvctl" --endpoints "$(endpoints)" status --all
}

case "$cmd" in
  up)
    for p in ${nodes//,/ }; do start "$p"; done
    # Return once the cluster serves: every member ready (holds the state, knows a leader,
    # the same one). Status only: nothing is appended to the log (Demo 2 counts entries).
    wait_serving 60
    ;;
  start) start "${2:?replica id}" ;;
  add)
    p=${2:?replica id}
    case ",$nodes," in *",$p,"*) echo "replica $p is already a member ($nodes)" >&2; exit 2 ;; esac
    start "$p"
    "$bin/kvctl" --endpoints "$(endpoints)" --timeout 20s reconfigure --nodes "$nodes,$p" --peer "$p=127.0.0.1:$((7000 + p))"
    echo "$nodes,$p" >"$home/nodes"
    nodes=$(cat "$home/nodes")
    "$bin/kvctl" --endpoints "$(endpoints)" status --all
    ;;
  remove)
    p=${2:?replica id}
    rest=$(echo "${nodes//,/ }" | tr ' ' '\n' | grep -vx "$p" | paste -sd, -)
    [ "$rest" != "$nodes" ] || { echo "replica $p is not a member ($nodes)" >&2; exit 2; }
    "$bin/kvctl" --endpoints "$(endpoints)" --timeout 20s reconfigure --nodes "$rest"
    echo "$rest" >"$home/nodes"
    # It hands over, then reports removed; stop it then (its data dir is kept).
    deadline=$((SECONDS + 30))
    until "$bin/kvctl" --endpoints "127.0.0.1:$((8000 + p))" --timeout 1s -o json status 2>/dev/null | grep -F '"role":"removed"' >/dev/null; do
      [ $SECONDS -lt $deadline ] || { echo "replica $p did not report removed within 30s" >&2; break; }
      sleep 0.3
    done
    if running "$p"; then kill -TERM "$(cat "$home/kvd-$p.pid")"; echo "kvd $p removed and stopped (data kept in $home/data-$p)"; fi
    nodes=$rest
    "$bin/kvctl" --endpoints "$(endpoints)" status --all
    ;;
  grow)
    size=${2:-3}
    case "$nodes" in *,*) echo "grow turns a single server into a cluster; the members are $nodes (use add)" >&2; exit 2 ;; esac
    target=$(seq -s, 1 "$size")
    case ",$target," in *",$nodes,"*) ;; *) echo "replica $nodes must be among 1..$size" >&2; exit 2 ;; esac
    "$0" up >/dev/null # the single server, if it is not running
    peer_args=()
    for p in ${target//,/ }; do
      [ "$p" = "$nodes" ] && continue
      start "$p" # empty: a joiner (CONFIG_ID=2) until told the configuration
      peer_args+=(--peer "$p=127.0.0.1:$((7000 + p))")
    done
    "$bin/kvctl" --endpoints "$(endpoints)" --timeout 30s reconfigure --nodes "$target" "${peer_args[@]}"
    echo "$target" >"$home/nodes"
    nodes=$target
    # The new replicas take the state by checkpoint; writes wait until a majority holds it.
    wait_serving 120
    ;;
  status) "$bin/kvctl" --endpoints "$(endpoints)" status --all ;;
  kill)
    p=${2:?replica id}
    if running "$p"; then kill -9 "$(cat "$home/kvd-$p.pid")"; echo "kvd $p killed (-9)"; else echo "kvd $p not running"; fi
    ;;
  down)
    for p in ${nodes//,/ }; do
      if running "$p"; then kill -TERM "$(cat "$home/kvd-$p.pid")"; echo "kvd $p stopping"; fi
    done
    for p in ${nodes//,/ }; do
      while running "$p"; do sleep 0.1; done
      rm -f "$home/kvd-$p.pid"
    done
    ;;
  clean)
    "$0" down
    rm -rf "$home"
    echo "removed $home"
    ;;
  *) echo "unknown command $cmd" >&2; exit 2 ;;
esac

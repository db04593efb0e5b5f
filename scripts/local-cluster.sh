#!/usr/bin/env bash
# A local omnikv cluster of kvd processes on loopback (the `just up/down/clean/kill` recipes).
# Replica N: client 127.0.0.1:800N (as in the seed), peers 127.0.0.1:700N, etcd's v3 API
# 127.0.0.1:2379N (with OMNIKV_TLS=1 over TLS, authenticating as the HTTP API does),
# data in $OMNIKV_HOME/data-N, log in $OMNIKV_HOME/kvd-N.log, pid in $OMNIKV_HOME/kvd-N.pid.
# The member list lives in $OMNIKV_HOME/nodes (OMNIKV_NODES, default 1,2,3, seeds it);
# `add N` / `remove N` change it with `kvctl reconfigure`; `grow [N]` turns a single server
# (Demo 0, OMNIKV_NODES=1) into replicas 1..N (default 3) in one change (Demo 1).
#
# OMNIKV_TLS=1 (on `up`, `start`, `add`, `grow`): HTTPS for clients, mutual TLS between peers
# and authentication (docs/security.md). The first time, $OMNIKV_HOME/tls gets a CA, replica
# certificates 1-3 (`kvctl certs new`; `kvctl certs replica N` makes further ones as replica N
# first starts), the auth file `auth` and three users' tokens
# (`kvctl token new`): admin.token (admin), reader.token (read), app.token (write, prefix
# app/). $OMNIKV_HOME/tls-mode remembers the mode, so later commands without OMNIKV_TLS use
# it too; OMNIKV_TLS=0 goes back to plaintext (stop the cluster first). `env` prints the
# exports that point kvctl at the cluster.
set -euo pipefail

cmd=${1:?usage: local-cluster.sh up|down|clean|status|env|kill N|start N|add N|remove N|grow [N]}
root=$(cd "$(dirname "$0")/.." && pwd)
home=${OMNIKV_HOME:-$root/.omnikv}
bin=${OMNIKV_BIN:-${CARGO_TARGET_DIR:-$root/target}/debug}
if [ "$cmd" != env ]; then # env only reads: it creates nothing
  mkdir -p "$home"
  [ -f "$home/initial-nodes" ] || echo "${OMNIKV_NODES:-1,2,3}" >"$home/initial-nodes"
  [ -f "$home/nodes" ] || cp "$home/initial-nodes" "$home/nodes"
fi
initial=$(cat "$home/initial-nodes" 2>/dev/null || echo "${OMNIKV_NODES:-1,2,3}")
nodes=$(cat "$home/nodes" 2>/dev/null || echo "$initial")
tls_dir=$home/tls
tls=${OMNIKV_TLS:-$(cat "$home/tls-mode" 2>/dev/null || echo 0)}
case "$tls" in 0 | 1) ;; *) echo "OMNIKV_TLS is 1 (TLS and auth) or 0 (plaintext), not '$tls'" >&2; exit 2 ;; esac
# The script's own kvctl calls (readiness, status, reconfigure) go as the admin user with
# TLS, anonymous in plaintext: credentials from the caller's env would not fit this cluster.
unset KVCTL_CACERT KVCTL_CERT KVCTL_KEY KVCTL_TOKEN KVCTL_TOKEN_FILE
scheme=""
if [ "$tls" = 1 ]; then
  scheme=https://
  export KVCTL_CACERT="$tls_dir/ca.crt" KVCTL_TOKEN_FILE="$tls_dir/admin.token"
fi

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

# Any member running in the other mode (TLS vs plaintext)? They could not talk to each other.
check_mode() {
  local p was
  was=$(cat "$home/tls-mode" 2>/dev/null || echo 0)
  [ "$was" = "$tls" ] && return
  for p in ${nodes//,/ }; do
    if running "$p"; then
      echo "the local cluster runs with OMNIKV_TLS=$was; stop it (just down) before switching to OMNIKV_TLS=$tls" >&2
      exit 2
    fi
  done
}

# The CA, replica certificates 1-3, the auth file and three users, made once (kept across
# `down`; `clean` removes them with the rest of $home).
tls_setup() {
  [ "$tls" = 1 ] || return 0
  [ -f "$tls_dir/admin.token" ] && return
  local made="$tls_dir.new"
  rm -rf "$made"
  (
    umask 077 # keys, tokens and the auth file: the owner's only
    mkdir "$made"
    # kvctl's notes name the temporary dir: shown only when a step fails.
    quiet() { "$@" 2>"$made/.err" || { cat "$made/.err" >&2; return 1; }; }
    quiet "$bin/kvctl" certs new --out "$made" --replicas 3 >/dev/null
    quiet "$bin/kvctl" token new admin --role admin --auth-file "$made/auth" >"$made/admin.token"
    quiet "$bin/kvctl" token new reader --role read --auth-file "$made/auth" >"$made/reader.token"
    quiet "$bin/kvctl" token new app --role write --prefix app/ --auth-file "$made/auth" >"$made/app.token"
    rm "$made/.err"
  )
  rm -rf "$tls_dir"
  mv "$made" "$tls_dir"
  echo "made a CA, replica certificates 1-3 and the users admin, reader, app in $tls_dir"
}

# Replica $1's certificate, signed by the CA in $tls_dir when it has none yet.
tls_cert() {
  [ "$tls" = 1 ] || return 0
  [ -f "$tls_dir/replica-$1.crt" ] || (umask 077 && "$bin/kvctl" certs replica "$1" --out "$tls_dir" >/dev/null)
}

# The TLS and auth env of replica $1, one VAR=value a line (nothing in plaintext mode).
tls_env() {
  [ "$tls" = 1 ] || return 0
  local p=$1
  printf '%s\n' "KVD_CERT_FILE=$tls_dir/replica-$p.crt" "KVD_KEY_FILE=$tls_dir/replica-$p.key" \
    "KVD_CLIENT_CA_FILE=$tls_dir/ca.crt" \
    "KVD_PEER_CERT_FILE=$tls_dir/replica-$p.crt" "KVD_PEER_KEY_FILE=$tls_dir/replica-$p.key" \
    "KVD_PEER_CA_FILE=$tls_dir/ca.crt" "KVD_AUTH_FILE=$tls_dir/auth"
}

start() {
  local p=$1
  if running "$p"; then echo "kvd $p already running (pid $(cat "$home/kvd-$p.pid"))"; return; fi
  tls_setup
  tls_cert "$p"
  local tls_vars=()
  mapfile -t tls_vars < <(tls_env "$p")
  tls_vars+=("KVD_ETCD_ADDR=127.0.0.1:$((23790 + p))")
  echo "$tls" >"$home/tls-mode"
  # Members of the initial configuration bootstrap from it; any other replica starts as a
  # joiner (CONFIG_ID > 1). Once a data dir exists, its persisted configuration wins.
  local config_id=1 members=$initial
  case ",$initial," in *",$p,"*) ;; *) config_id=2 members="$nodes,$p" ;; esac
  env "${tls_vars[@]}" PID="$p" NODES="[$members]" CONFIG_ID=$config_id \
  KVD_DATA_DIR="$home/data-$p" \
  KVD_CLIENT_ADDR="127.0.0.1:$((8000 + p))" KVD_PEER_ADDR="127.0.0.1:$((7000 + p))" \
  KVD_PEERS="$(peers)" \
    nohup "$bin/kvd" >>"$home/kvd-$p.log" 2>&1 &
  echo $! >"$home/kvd-$p.pid"
  echo "kvd $p started (pid $!, client ${scheme}127.0.0.1:$((8000 + p)), log $home/kvd-$p.log)"
}

endpoint() { echo "${scheme}127.0.0.1:$((8000 + $1))"; }

endpoints() {
  local out="" p
  for p in ${nodes//,/ }; do out+="${out:+,}$(endpoint "$p")"; done
  echo "$out"
}

# The exports that point kvctl at the cluster (`eval "$(just env)"`).
env_lines() {
  printf "export KVCTL_ENDPOINTS='%s'\n" "$(endpoints)"
  if [ "$tls" = 1 ]; then
    printf "export KVCTL_CACERT='%s' KVCTL_TOKEN_FILE='%s'\n" "$tls_dir/ca.crt" "$tls_dir/admin.token"
    echo "unset KVCTL_CERT KVCTL_KEY KVCTL_TOKEN"
  else
    echo "unset KVCTL_CACERT KVCTL_CERT KVCTL_KEY KVCTL_TOKEN KVCTL_TOKEN_FILE"
  fi
}

how_to_call() {
  [ "$tls" = 1 ] || return 0
  cat <<EOF

TLS and authentication are on (CA, certificates, auth file and tokens in $tls_dir).
Call the cluster as the admin user:
  export KVCTL_CACERT=$tls_dir/ca.crt KVCTL_TOKEN_FILE=$tls_dir/admin.token
  kvctl --endpoints $(endpoints) put a 1
or: eval "\$(just env)"; kvctl put a 1
Other users: KVCTL_TOKEN_FILE=$tls_dir/reader.token (read only),
  $tls_dir/app.token (write, keys under app/ only).
With curl:
  curl --cacert $tls_dir/ca.crt -H "Authorization: Bearer \$(cat $tls_dir/admin.token)" $(endpoint "${nodes%%,*}")/v1/kv/a
With etcdctl (the password is the user's token):
  etcdctl --endpoints=https://127.0.0.1:$((23790 + ${nodes%%,*})) --cacert=$tls_dir/ca.crt \\
    --user "admin:\$(cat $tls_dir/admin.token)" get a
EOF
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

case "$cmd" in up | start | add | grow) check_mode ;; esac

case "$cmd" in
  up)
    for p in ${nodes//,/ }; do start "$p"; done
    # Return once the cluster serves: every member ready (holds the state, knows a leader,
    # the same one). Status only: nothing is appended to the log (Demo 2 counts entries).
    wait_serving 60
    how_to_call
    ;;
  env) env_lines ;;
  start) start "${2:?replica id}" ;;
  add)
    p=${2:?replica id}
    case ",$nodes," in *",$p,"*) echo "replica $p is already a member ($nodes)" >&2; exit 2 ;; esac
    start "$p"
    "$bin/kvctl" --endpoints "$(endpoints)" --timeout 20s reconfigure --nodes "$nodes,$p" --peer "$p=127.0.0.1:$((7000 + p))"
    echo "$nodes,$p" >"$home/nodes"
    nodes=$(cat "$home/nodes")
    # It takes the state by checkpoint: show the transfer (a progress bar on a terminal).
    "$bin/kvctl" --endpoints "$(endpoint "$p")" --timeout 2s wait-serving --max-wait 10m
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
    until "$bin/kvctl" --endpoints "$(endpoint "$p")" --timeout 1s -o json status 2>/dev/null | grep -F '"role":"removed"' >/dev/null; do
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

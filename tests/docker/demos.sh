#!/usr/bin/env bash
# The seed's demos on the compose cluster, automated (`just test-docker`, part of `just test`).
#
#   As typed   the seed's `docker compose up -d` at the repository root (without --build: the
#              image is built offline first) and `docker attach network-actor` through a
#              terminal: put a 1, get a 8001, get a 8003, detach with Ctrl-P Ctrl-Q
#   Demo 0     single server: put/get; docker kill; kvctl exits 3 with a clear message
#   Growing    Demo 0 -> Demo 1: the single server with data grows into s1-s3 (compose grow);
#              s2 and s3 serve its keys; kill s1: the majority serves
#   Demo 1     fault tolerance: kill s1, the majority serves; pause s2: writes fail within the
#              timeout, local reads from s3 answer; `put a 2` to s2 and `put a 3` to s3 stay
#              pending; unpause: both OK, both in the same decided order on s2 and s3, and the
#              later one's value of `a` everywhere (s1 restarted too)
#   Demo 2     snapshots every 5 entries: after 5 puts s3's log is the one marker [0, 5),
#              after 10 the one marker [0, 10)
#   Durability down (volumes kept), up: all data back
#   Partition  docker network disconnect s3: the majority serves; reconnect: s3 catches up
#   Rolling restart  compose rolling-restart (s1, s2, s3 stopped with SIGTERM and started in
#              turn) while a writer puts sequential keys: every acknowledged put is read back;
#              prints the longest gap between acknowledged puts (not asserted: timing)
#
# Everything runs under its own compose project (omnikv-test-<pid>), container names
# (omnikv-test-<pid>-s1, ...), free host ports and image tag (omnikv-test:<pid>, built with
# scripts/image.sh), so it does not touch a running `just compose-up` or local cluster. All of
# it (containers, network, volumes, the image tag) is removed on exit, also on failure.
# OMNIKV_TEST_IMAGE=<image>: test that image instead (neither built nor removed).
set -euo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
compose_sh=$root/scripts/docker-compose.sh
run_id=$$
export OMNIKV_COMPOSE_PROJECT=omnikv-test-$run_id
export OMNIKV_NAME_PREFIX=$OMNIKV_COMPOSE_PROJECT-
export OMNIKV_IMAGE=${OMNIKV_TEST_IMAGE:-omnikv-test:$run_id}
export KVD_LOG=info
tmp=$(mktemp -d "${TMPDIR:-/tmp}/omnikv-docker-test.XXXXXX")
t_start=$SECONDS
built_image=""

scenarios=(); current=""
# scenario NAME: the previous one passed, NAME starts.
scenario() { [ -z "$current" ] || scenarios+=("$current"); current=$1; say "$1"; }
say() { printf '[docker-test %3ds] %s\n' $((SECONDS - t_start)) "$*"; }
fail() { printf '[docker-test %3ds] FAIL: %s\n' $((SECONDS - t_start)) "$*" >&2; exit 1; }
ctr() { echo "$OMNIKV_NAME_PREFIX$1"; }
kv() { docker exec "$(ctr network-actor)" kvctl "$@"; }
# Pipes stdin into the client container's (network-actor's) kvctl shell.
kv_shell() { docker exec -i "$(ctr network-actor)" kvctl "$@" shell; }
compose() { "$compose_sh" "$@"; }

cleanup() {
  local rc=$?
  set +e
  if [ $rc -ne 0 ]; then
    for s in s1 s2 s3; do
      echo "--- last log lines of $(ctr $s) ---" >&2
      docker logs --tail 25 "$(ctr $s)" 2>&1 | cut -c1-200 >&2
    done
  fi
  # A paused container cannot be stopped: unpause first.
  for s in s1 s2 s3; do docker unpause "$(ctr $s)" >/dev/null 2>&1; done
  compose clean >/dev/null 2>&1
  local filter=label=com.docker.compose.project=$OMNIKV_COMPOSE_PROJECT
  docker ps -aq --filter "$filter" | xargs -r docker rm -fv >/dev/null 2>&1
  docker volume ls -q --filter "$filter" | xargs -r docker volume rm >/dev/null 2>&1
  docker network ls -q --filter "$filter" | xargs -r docker network rm >/dev/null 2>&1
  [ -n "$built_image" ] && docker rmi "$built_image" >/dev/null 2>&1
  rm -rf "$tmp"
  local left
  left=$(docker ps -aq --filter "$filter"; docker volume ls -q --filter "$filter"; docker network ls -q --filter "$filter")
  [ -z "$left" ] || echo "docker-test: could not remove: $left" >&2
  if [ $rc -eq 0 ]; then
    [ -z "$current" ] || scenarios+=("$current")
    echo "docker demos took $((SECONDS - t_start))s"
    echo "demos: ${#scenarios[@]} passed, 0 failed"
  else
    echo "docker demos took $((SECONDS - t_start))s; failed in: ${current:-setup}"
    echo "demos: ${#scenarios[@]} passed, 1 failed"
  fi
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# wait_for SECS DESC CMD...: polls CMD (every 0.2s) until it succeeds or SECS pass.
wait_for() {
  local secs=$1 desc=$2; shift 2
  local deadline=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do
    [ $SECONDS -lt $deadline ] || fail "not within ${secs}s: $desc"
    sleep 0.2
  done
}

# try CMD...: runs CMD, setting $out, $err, $rc and $took_ms (never fails).
try() {
  local t0
  t0=$(date +%s%N)
  set +e
  out=$("$@" 2>"$tmp/err")
  rc=$?
  set -e
  err=$(cat "$tmp/err")
  took_ms=$((($(date +%s%N) - t0) / 1000000))
}

# expect VALUE CMD...: CMD succeeds and prints VALUE.
expect() {
  local want=$1; shift
  try "$@"
  [ "$rc" -eq 0 ] || fail "'$*' exited $rc: $err"
  [ "$out" = "$want" ] || fail "'$*' printed '$out', expected '$want'"
}

# json_field NAME JSON: a number or string field of a flat JSON object.
json_field() { sed -nE "s/.*\"$1\":\"?([^\",}]*).*/\1/p" <<<"$2"; }
status_json() { kv -o json --node "$1" --timeout 2s status; }
# same_state A B: replicas A and B are at the same applied index with the same state hash.
same_state() {
  local a b
  a=$(status_json "$1") && b=$(status_json "$2") || return 1
  [ "$(json_field applied_idx "$a")" = "$(json_field applied_idx "$b")" ] &&
    [ "$(json_field state_hash "$a")" = "$(json_field state_hash "$b")" ] &&
    [ "$(json_field role "$a")" != catching-up ] && [ "$(json_field role "$b")" != catching-up ]
}
# grep reads all of its input (no -q): with pipefail, `grep -q` exiting at the first match
# can kill `docker logs` with SIGPIPE and fail the pipeline although the line is there.
logs_have() { docker logs "$(ctr "$1")" 2>&1 | grep -F -- "$2" >/dev/null; }

# A free loopback port for a published client port (the local cluster may hold 8001-8003).
free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])' 2>/dev/null && return
  local p
  while p=$((20000 + RANDOM % 20000)); (: </dev/tcp/127.0.0.1/$p) 2>/dev/null; do :; done
  echo "$p"
}

# ------------------------------------------------------------------------------------------
say "project $OMNIKV_COMPOSE_PROJECT, $("$compose_sh" compose version --short 2>/dev/null | head -1 | sed 's/^/compose /')"
if [ -z "${OMNIKV_TEST_IMAGE:-}" ]; then
  say "building $OMNIKV_IMAGE (scripts/image.sh)"
  built_image=$OMNIKV_IMAGE
  "$root/scripts/image.sh" >"$tmp/image.log" 2>&1 || { cat "$tmp/image.log" >&2; fail "scripts/image.sh"; }
  grep '^image:' "$tmp/image.log" | sed 's/^/  /' || true
fi
# The image also ships the Kubernetes watcher (deploy/k8s runs it from this image).
try docker run --rm --entrypoint watcher "$OMNIKV_IMAGE" --version
[[ "$rc" -eq 0 && "$out" == "watcher "* ]] || fail "watcher --version in the image: exit $rc: $out $err"
say "  image runs $out"
for n in 1 2 3; do export "OMNIKV_PORT_$n=$(free_port)"; done

# ------------------------------------------------------------------------------------------
scenario "The seed's commands as typed: compose up at the root, docker attach network-actor"
# The same command line as the seed's, minus --build (no registry here: the image was built
# above), in the project this test owns (the environment wins over the root .env's name).
if docker compose version >/dev/null 2>&1; then typed=(docker compose up -d); else typed=(docker-compose up -d); fi
(cd "$root" && COMPOSE_PROJECT_NAME=$OMNIKV_COMPOSE_PROJECT "${typed[@]}") >"$tmp/up.log" 2>&1 ||
  { cat "$tmp/up.log" >&2; fail "${typed[*]} at the repository root"; }
say "  ${typed[*]}: $(docker ps --filter label=com.docker.compose.project="$OMNIKV_COMPOSE_PROJECT" --format '{{.Names}}' | sort | paste -sd' ' -)"
wait_for 60 "the cluster takes a write" kv --timeout 2s put ready 1
command -v python3 >/dev/null || fail "python3 is needed to type at docker attach through a terminal"
# docker attach network-actor in a pseudo-terminal, as typed at a terminal: each line typed
# after the prompt, its answer read up to the next prompt; Ctrl-P Ctrl-Q detaches.
try python3 - "$(ctr network-actor)" <<'PY'
import os, pty, select, sys, time
prompt = b"Type a command here <put/delete/get> <args>: "
pid, fd = pty.fork()
if pid == 0:
    os.execvp("docker", ["docker", "attach", sys.argv[1]])
def read_until(marker, secs=20):
    buf, end = b"", time.time() + secs
    while marker not in buf:
        left = end - time.time()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            sys.exit("no %r within %ss; got %r" % (marker, secs, buf))
        try:
            chunk = os.read(fd, 4096)
        except OSError:
            sys.exit("docker attach ended; got %r" % buf)
        if not chunk:
            sys.exit("docker attach ended; got %r" % buf)
        buf += chunk
    return buf
time.sleep(1)  # the attach is in place before typing (the prompt was printed before it)
for line in (b"put a 1", b"get a 8001", b"get a 8003"):
    os.write(fd, line + b"\r")
    out = read_until(prompt).replace(b"\r\n", b"\n").decode()
    answer = out.split(line.decode() + "\n", 1)[-1].replace(prompt.decode(), "").strip()
    print("%s%s -> %s" % (prompt.decode(), line.decode(), answer))
os.write(fd, b"\x10\x11")  # Ctrl-P Ctrl-Q: detach, the shell keeps running
end = time.time() + 10
while time.time() < end:
    done, status = os.waitpid(pid, os.WNOHANG)
    if done:
        break
    try:
        os.read(fd, 4096)
    except OSError:
        pass
    time.sleep(0.1)
else:
    sys.exit("docker attach did not detach on Ctrl-P Ctrl-Q")
PY
[ "$rc" -eq 0 ] || fail "docker attach network-actor: $err $out"
sed 's/^/  /' <<<"$out"
[ "$(sed -E 's/.* -> //' <<<"$out" | paste -sd' ' -)" = "OK 1 1" ] || fail "docker attach network-actor answered: $out"
[ "$(docker inspect -f '{{.State.Running}}' "$(ctr network-actor)")" = true ] || fail "network-actor stopped on detaching"
compose clean >/dev/null 2>&1

# ------------------------------------------------------------------------------------------
scenario "Demo 0: a single server"
compose up single >"$tmp/up.log" 2>&1 || { cat "$tmp/up.log" >&2; fail "compose up single"; }
expect OK kv put a 1
expect 1 kv get a
# The published port answers from the host, and the seed's port form works in the shell.
expect 1 curl -fsS "127.0.0.1:$OMNIKV_PORT_1/v1/kv/a"
expect 1 kv_shell <<<"get a 8001"
docker kill "$(ctr s1)" >/dev/null
try kv --timeout 2s put a 2
[ "$rc" -eq 3 ] || fail "put with the only server killed: exit $rc (expected 3): $err"
[[ "$err" == "error: unavailable: "* ]] || fail "unclear message: $err"
# Bounded by the timeout, with room for docker exec and Docker's DNS (whose lookup of a
# killed container's name can hold kvctl's exit for its 5 s timeout).
[ "$took_ms" -lt 12000 ] || fail "put took ${took_ms}ms with a 2s timeout"
say "  killed: exit 3 in ${took_ms}ms: $err"
compose clean >/dev/null 2>&1

# ------------------------------------------------------------------------------------------
scenario "Growing the single server into three (Demo 0 -> Demo 1)"
compose up single >"$tmp/up.log" 2>&1 || { cat "$tmp/up.log" >&2; fail "compose up single"; }
for i in $(seq 1 20); do kv put "k$i" "v$i" >/dev/null || fail "put k$i"; done
try compose grow
[ "$rc" -eq 0 ] || fail "compose grow: exit $rc: $out $err"
grep -F "OK: configuration 2, members 1,2,3" <<<"$out" >/dev/null || fail "compose grow printed: $out"
expect v20 kv --node 3 --consistency local get k20
expect v7 kv --node 2 get k7
wait_for 20 "s1 and s3 at one state" same_state 1 3
docker kill "$(ctr s1)" >/dev/null
# The two new replicas are a majority: writes go on without the server they grew from.
expect OK kv --timeout 10s put after grown
expect grown kv --node 2 get after
say "  grown; s1 killed; s2 and s3 serve"
compose clean >/dev/null 2>&1

# ------------------------------------------------------------------------------------------
scenario "Demo 1: fault tolerance"
compose up >"$tmp/up.log" 2>&1 || { cat "$tmp/up.log" >&2; fail "compose up"; }
expect OK kv put a 1
expect 1 kv get a
wait_for 10 "s2 logs the decided put" logs_have s2 "decided: put a 1"
docker kill "$(ctr s1)" >/dev/null
# The majority (s2, s3) serves, after an election when s1 led.
expect OK kv --timeout 10s put a 2
expect 2 kv get a
docker pause "$(ctr s2)" >/dev/null
try kv --timeout 3s put a 9
[ "$rc" -eq 3 ] || [ "$rc" -eq 4 ] || fail "put without a quorum: exit $rc (expected 3 or 4): $err"
[[ "$err" == "error: unavailable: "* || "$err" == "error: indeterminate: "* ]] || fail "unclear message: $err"
[ "$took_ms" -lt 13000 ] || fail "put took ${took_ms}ms with a 3s timeout (and docker exec, DNS)"
say "  s2 paused: put exit $rc in ${took_ms}ms: $err"
expect 2 kv --node 3 --consistency local get a
# The seed's step 4 as typed at the prompt: a read from s3 (port 8003) of its own state.
expect 2 kv_shell <<<"get a 8003 --local"
# The seed's step 5: `put a 2 8002` and `put a 3 8003` while s2 is paused. Neither can be
# decided before s2 is back, and with a 20s client timeout both are once it is: kvd holds a
# write for 90% of the time budget kvctl sends (omnikv-timeout-ms), proposing it again after
# 1s, 2s, 4s, ... (KVD_RETRY_MS) with the same client id and sequence number.
before=$(kv --node 3 log --limit 1000 | tail -1 | cut -f1)
[[ "$before" =~ ^[0-9]+$ ]] || fail "no last log index on s3: '$before'"
kv --node 2 --timeout 20s put a 2 >"$tmp/p2.out" 2>"$tmp/p2.err" & p2=$!
kv --node 3 --timeout 20s put a 3 >"$tmp/p3.out" 2>"$tmp/p3.err" & p3=$!
sleep 1.5
kill -0 $p2 2>/dev/null || fail "put a 2 via s2 ended while s2 was paused: $(cat "$tmp/p2.out" "$tmp/p2.err")"
kill -0 $p3 2>/dev/null || fail "put a 3 via s3 ended while s2 was paused: $(cat "$tmp/p3.out" "$tmp/p3.err")"
say "  put a 2 via s2 and put a 3 via s3: both pending after 1.5s"
t0=$(date +%s%N)
docker unpause "$(ctr s2)" >/dev/null
rc2=0; wait $p2 || rc2=$?
rc3=0; wait $p3 || rc3=$?
[[ "$rc2" -eq 0 && "$(cat "$tmp/p2.out")" = OK ]] || fail "put a 2 via s2 after unpausing: exit $rc2: $(cat "$tmp/p2.out" "$tmp/p2.err")"
[[ "$rc3" -eq 0 && "$(cat "$tmp/p3.out")" = OK ]] || fail "put a 3 via s3 after unpausing: exit $rc3: $(cat "$tmp/p3.out" "$tmp/p3.err")"
say "  s2 unpaused: both OK within $((($(date +%s%N) - t0) / 1000000))ms"
# A linearizable read orders itself after both puts.
final=$(kv --timeout 10s get a) || fail "no linearizable read after unpausing s2"
same_log() {
  kv --node 2 log --limit 1000 >"$tmp/log2" && kv --node 3 log --limit 1000 >"$tmp/log3" &&
    cmp -s "$tmp/log2" "$tmp/log3" && same_state 2 3
}
wait_for 30 "s2 and s3 show the same decided log" same_log
# Every put of a decided after the log's end before the two puts, in log order: "<index> <value>"
# (the first `put a 2`, sent with s1 killed, is older). A write proposed again while s2 was
# paused can be decided more than once: the state machine applies only its first copy
# (deduplicated by client id and sequence number), so the first copies give the order.
puts_of_a=$(awk -F'\t' -v b="$before" '$1 ~ /^[0-9]+$/ && $1 + 0 > b && $2 ~ /^put a / { sub(/^put a /, "", $2); print $1, $2 }' "$tmp/log3")
order=$(awk '!seen[$2]++ { print $2 }' <<<"$puts_of_a")
for v in 2 3; do
  grep -qx "$v" <<<"$order" || fail "put a $v is not in the decided log of s2 and s3: $(paste -sd'|' "$tmp/log3")"
done
# a holds the value of whichever put of a was decided (first) last: put a 2 or put a 3 (or
# the `put a 9` above, had it been decided after both: kvctl said it may be applied).
last=$(tail -1 <<<"$order")
[ "$final" = "$last" ] || fail "a = $final, but the last put of a decided is put a $last: $(paste -sd'|' "$tmp/log3")"
say "  decided order on s2 and s3: $(awk '{ printf "%s%s put a %s%s", (NR > 1 ? ", " : ""), $1, $2, (seen[$2]++ ? " (copy)" : "") }' <<<"$puts_of_a"); a = $final"
local_is() { [ "$(kv --node "$1" --consistency local get a)" = "$2" ]; }
wait_for 10 "s2 applies a = $final" local_is 2 "$final"
wait_for 10 "s3 applies a = $final" local_is 3 "$final"
[ "$(docker inspect -f '{{.State.Running}} {{.Config.Tty}} {{.Config.OpenStdin}}' "$(ctr network-actor)")" = "true true true" ] ||
  fail "the client container does not run an attachable shell"
docker start "$(ctr s1)" >/dev/null
wait_for 30 "the restarted s1 catches up" same_state 1 3
expect "$final" kv --node 1 --consistency local get a
say "  a = $final on s1, s2 and s3"
compose clean >/dev/null 2>&1

# ------------------------------------------------------------------------------------------
scenario "Demo 2: snapshots every 5 entries"
compose up snapshot >"$tmp/up.log" 2>&1 || { cat "$tmp/up.log" >&2; fail "compose up snapshot"; }
# `compose up` appends nothing (its readiness check reads status), so the 5 puts are
# entries 0-4 and the 5th fills the first snapshot exactly, as in the seed.
snapshot_line() { printf 'snapshot\t[0, %d)\t(%d entries squashed)' "$1" "$1"; }
show_log() { kv --node 3 log --limit 1000 | paste -sd'|' - | sed 's/\t/ /g'; }
# log_is N: s3's whole log is the one marker [0, N), within 10s.
log_is() {
  local want deadline=$((SECONDS + 10))
  want=$(snapshot_line "$1")
  until [ "$(kv --node 3 log --limit 1000 2>/dev/null)" = "$want" ]; do
    [ $SECONDS -lt $deadline ] || fail "s3's log after $1 puts is not just '$want': $(show_log)"
    sleep 0.2
  done
  say "  after $1 puts, s3: $(show_log)"
}
puts() { for i in $(seq "$1" "$2"); do echo "put k$i v$i"; done | kv_shell; }
[ "$(puts 1 5 | grep -c '^OK$')" -eq 5 ] || fail "5 puts"
log_is 5
[ "$(puts 6 10 | grep -c '^OK$')" -eq 5 ] || fail "5 more puts"
log_is 10
logs_have s3 "log compacted: entries [0, 10)" || fail "s3 does not log the compaction"
for i in 1 5 10; do expect "v$i" kv --node 3 --consistency local get "k$i"; done

# ------------------------------------------------------------------------------------------
scenario "Durability: down (volumes kept), then up"
compose down >/dev/null 2>&1
[ -z "$(docker ps -aq --filter label=com.docker.compose.project="$OMNIKV_COMPOSE_PROJECT")" ] || fail "containers left after down"
[ "$(docker volume ls -q --filter label=com.docker.compose.project="$OMNIKV_COMPOSE_PROJECT" | wc -l)" -ge 3 ] || fail "volumes gone after down"
compose up >"$tmp/up.log" 2>&1 || { cat "$tmp/up.log" >&2; fail "compose up after down"; }
for i in $(seq 1 10); do expect "v$i" kv get "k$i"; done
wait_for 10 "s1 and s2 agree after the restart" same_state 1 2
wait_for 10 "s1 and s3 agree after the restart" same_state 1 3
say "  all 10 keys back, replicas agree"

# ------------------------------------------------------------------------------------------
scenario "Partition: disconnect s3 from the network"
net=$(docker inspect -f '{{range $k, $v := .NetworkSettings.Networks}}{{$k}}{{end}}' "$(ctr s3)")
docker network disconnect "$net" "$(ctr s3)"
t0=$SECONDS
ok=$(for i in $(seq 1 20); do echo "put p$i x$i"; done | kv_shell --timeout 10s | grep -c '^OK$' || true)
[ "$ok" -eq 20 ] || fail "the majority answered $ok of 20 puts"
expect x20 kv get p20
say "  20 puts and a read through s1/s2 in $((SECONDS - t0))s"
# Compose gave the container the alias s3 (its service name); a reconnect needs it again.
docker network connect --alias s3 "$net" "$(ctr s3)"
t0=$SECONDS
wait_for 60 "s3 catches up after reconnecting" same_state 1 3
expect x20 kv --node 3 --consistency local get p20
say "  s3 caught up $((SECONDS - t0))s after reconnecting"

# ------------------------------------------------------------------------------------------
scenario "Rolling restart: s1, s2, s3 in turn under writes (compose rolling-restart)"
# A writer in the client container puts roll-1, roll-2, ... one at a time, one kvctl process
# each, until /tmp/roll-stop exists. Per put it records "<i> <exit status> <start> <answer>
# <exit>" (ms): <answer> when kvctl printed OK or its error, <exit> when the process ended.
# Exit 0 is an acknowledged write: every one must be there after the restarts.
docker exec "$(ctr network-actor)" rm -f /tmp/roll-stop
docker exec "$(ctr network-actor)" sh -c '
  i=0
  while [ ! -e /tmp/roll-stop ]; do
    i=$((i + 1)) s=$(date +%s%3N)
    { kvctl --timeout 5s put "roll-$i" "v$i" 2>&1; echo "exit $?"; } | {
      read -r last; a=$(date +%s%3N)
      while read -r line; do last=$line; done
      echo "$i ${last#exit } $s $a $(date +%s%3N)"
    }
  done' >"$tmp/writes" 2>"$tmp/writer.err" &
writer=$!
acks() { awk '$2 == 0 && NF == 5' "$tmp/writes" | wc -l; }
acks_at_least() { [ "$(acks)" -ge "$1" ]; }
wait_for 20 "the writer's first 10 acknowledged puts" acks_at_least 10
try compose rolling-restart
[ "$rc" -eq 0 ] || { docker exec "$(ctr network-actor)" touch /tmp/roll-stop; fail "compose rolling-restart: exit $rc: $out $err"; }
grep -E '^s[123]: ' <<<"$out" | sed 's/^/  /'
# Writes go on after the last restart (10 more acknowledged), then the writer stops.
n=$(acks)
wait_for 20 "10 acknowledged puts after the rolling restart" acks_at_least $((n + 10))
docker exec "$(ctr network-actor)" touch /tmp/roll-stop
wait $writer || fail "the writer failed: $(cat "$tmp/writer.err")"
awk 'NF != 5 || $1 != NR { bad = 1 } END { exit bad }' "$tmp/writes" || fail "the writer's record is malformed: $(head -3 "$tmp/writes")"
# The longest time between two acknowledged puts (each put starts when the one before has
# exited), and the same without the time kvctl processes ran on after printing their answer:
# a lookup of a stopped container's name that loses a reply in Docker's DNS holds kvctl's
# exit for the resolver's 5 s timeout although it answered already (by another replica).
read -r gap gap_at gap_answer gap_answer_at < <(awk '
  $2 == 0 && prev { d = $4 - prev; if (d > g) { g = d; gi = $1 } d -= linger; if (d > ga) { ga = d; gai = $1 } }
  $2 == 0 { prev = $4; linger = 0 }
  { linger += $5 - $4 }
  END { print g + 0, gi + 0, ga + 0, gai + 0 }' "$tmp/writes")
total=$(wc -l <"$tmp/writes") acked=$(acks)
failed=$(awk '$2 != 0 { c[$2]++ } END { for (k in c) printf "%s%d with exit %s", (s++ ? ", " : ""), c[k], k }' "$tmp/writes")
median=$(awk '$2 == 0 { print $5 - $3 }' "$tmp/writes" | sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }')
say "  $total puts, $acked acknowledged${failed:+, $failed} (median put ${median} ms)"
say "  longest gap between acknowledged puts: ${gap} ms (before roll-$gap_at); without kvctl running on after its answer: ${gap_answer} ms (before roll-$gap_answer_at)"
# Every acknowledged put is there, read back linearizably in one range.
kv --timeout 10s get --prefix roll- >"$tmp/roll-read" || fail "get --prefix roll- after the rolling restart"
lost=$(awk -F'\t' 'NR == FNR { have[$1] = $2; next } $2 == 0 && have["roll-" $1] != "v" $1 { print "roll-" $1 }' \
  "$tmp/roll-read" <(tr ' ' '\t' <"$tmp/writes"))
[ -z "$lost" ] || fail "acknowledged puts lost: $(wc -l <<<"$lost") ($(head -5 <<<"$lost" | paste -sd' ' -) ...)"
say "  all $acked acknowledged puts read back"

#!/usr/bin/env bash
# The compose cluster of the root docker-compose.yml (the `just compose-*` recipes).
#
#   docker-compose.sh up [cluster|single|snapshot|grow]  build the image if missing, (re)create
#                          the containers, wait until every replica is ready (appends nothing)
#   docker-compose.sh down       stop and remove the containers and network; volumes kept
#   docker-compose.sh clean      the same, and remove the volumes (all data)
#   docker-compose.sh status     kvctl status --all, from the client container network-actor
#   docker-compose.sh grow       Demo 0 -> Demo 1: start s2, s3 (empty joiners) next to the
#                          single server s1 and reconfigure to 1,2,3 (compose.grow.yml)
#   docker-compose.sh rolling-restart   stop and start s1, s2, s3 in turn (SIGTERM: a leader
#                          hands leadership over first), each serving again before the next
#   docker-compose.sh compose [VARIANT] ARGS...   any compose command, e.g. `compose ps`
#
# Variants: cluster (s1-s3 + network-actor), single (Demo 0: s1 alone + network-actor,
# compose.single.yml), snapshot (Demo 2: compaction every 5 entries, compose.snapshot.yml),
# grow (the single server grown into s1-s3: compose.single.yml + compose.grow.yml); the
# variant files live in deploy/ and go on top of the root docker-compose.yml.
#
# Uses `docker compose` (v2) when present, else `docker-compose` (v1). Compose v1 (1.29)
# cannot recreate a container on Docker 25+ (KeyError: 'ContainerConfig', docker/compose#11742),
# so `up` always removes the project's containers first and only ever creates new ones;
# the data lives in named volumes and survives.
#
# Env: OMNIKV_COMPOSE_PROJECT (project name, default omnikv), OMNIKV_IMAGE (omnikv:dev),
# and the compose file's: OMNIKV_NAME_PREFIX, OMNIKV_PORT_1..3, OMNIKV_PUBLISH_IP, KVD_LOG.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
deploy=$root/deploy
project=${OMNIKV_COMPOSE_PROJECT:-omnikv}
export OMNIKV_IMAGE=${OMNIKV_IMAGE:-omnikv:dev}
client=${OMNIKV_NAME_PREFIX:-}network-actor

if docker compose version >/dev/null 2>&1; then
  compose_cmd=(docker compose)
elif command -v docker-compose >/dev/null 2>&1; then
  compose_cmd=(docker-compose)
else
  echo "docker-compose.sh: neither 'docker compose' nor 'docker-compose' is installed" >&2
  exit 1
fi

# compose VARIANT ARGS...: the compose command with the variant's files.
compose() {
  local variant=$1; shift
  local files=(-f "$root/docker-compose.yml")
  case "$variant" in
    cluster) ;;
    single) files+=(-f "$deploy/compose.single.yml") ;;
    snapshot) files+=(-f "$deploy/compose.snapshot.yml") ;;
    grow) files+=(-f "$deploy/compose.single.yml" -f "$deploy/compose.grow.yml") ;;
    # every volume any variant declares (down -v removes the declared ones)
    all) files+=(-f "$deploy/compose.single.yml" -f "$deploy/compose.grow.yml") ;;
    *) echo "docker-compose.sh: unknown variant '$variant' (cluster, single, snapshot, grow)" >&2; exit 2 ;;
  esac
  "${compose_cmd[@]}" -p "$project" "${files[@]}" "$@"
}

kvctl() { docker exec "$client" kvctl "$@"; }

# ready: every endpoint of the client's KVCTL_ENDPOINTS answers status with a serving role
# (leader, follower, standalone) and a known leader, the same one everywhere.
ready() {
  local j rows
  j=$(kvctl -o json --timeout 2s status --all 2>/dev/null) || return 1
  rows=$(grep -o '"endpoint":' <<<"$j" | wc -l)
  [ "$rows" -gt 0 ] &&
    [ "$(grep -oE '"role":"(leader|follower|standalone)"' <<<"$j" | wc -l)" -eq "$rows" ] &&
    [ "$(grep -oE '"leader":[0-9]+' <<<"$j" | wc -l)" -eq "$rows" ] &&
    [ "$(grep -oE '"leader":[0-9]+' <<<"$j" | sort -u | wc -l)" -eq 1 ]
}

# wait_until SECS WHAT CMD...: until CMD succeeds; after SECS, print status and fail with
# "WHAT after SECS".
wait_until() {
  local secs=$1 what=$2
  shift 2
  local deadline=$((SECONDS + secs))
  until "$@"; do
    if [ $SECONDS -ge $deadline ]; then
      kvctl --timeout 2s status --all >&2 || true
      echo "docker-compose.sh: $what after ${secs}s; see: docker logs ${OMNIKV_NAME_PREFIX:-}s1" >&2
      exit 1
    fi
    sleep 0.2
  done
}

# wait_ready SECS: until every replica is ready (or fail after SECS).
wait_ready() { wait_until "$1" "replicas not ready" ready; }

# wait_serving SECS: wait_ready SECS, then print status.
wait_serving() {
  wait_ready "$1"
  kvctl status --all
}

# meshed: every answering replica has a live connection to each other member (its
# connected_peers has one entry fewer than its members). A replica is ready before its peers
# have redialled it (they back off); a leader that stops next could hand over to a member
# that does not yet reach the others, which then waits out an election after all.
meshed() {
  kvctl -o json --timeout 2s status --all 2>/dev/null | awk '
    BEGIN { RS = "\"endpoint\":" }
    NR > 1 && /"status":/ {
      rows++
      if (!match($0, /"members":\[[0-9,]*\]/)) { bad = 1; next }
      m = substr($0, RSTART, RLENGTH)
      if (!match($0, /"connected_peers":\[[0-9,]*\]/)) { bad = 1; next }
      c = substr($0, RSTART, RLENGTH)
      if (gsub(/[0-9]+/, "", m) != gsub(/[0-9]+/, "", c) + 1) bad = 1
    }
    END { exit (bad || !rows) }'
}

# leader: the leader every answering replica names ("none" when they name none or differ).
leader() {
  local l
  l=$(kvctl -o json --timeout 2s status --all 2>/dev/null | grep -oE '"leader":[0-9]+' | sort -u) || true
  if [ -n "$l" ] && [ "$(wc -l <<<"$l")" -eq 1 ]; then echo "${l#*:}"; else echo none; fi
}

ms_since() { echo $((($(date +%s%N) - $1) / 1000000)); }

# rolling_restart: stop and start s1, s2, s3 in turn (SIGTERM: a leader hands leadership to
# an up-to-date member before it exits), each serving again (ready, and connected to every
# other member) before the next; one line per step with the leader before, what kvd logged
# about the hand-off when it stopped, the leader while stopped and the leader after.
rolling_restart() {
  local s n c t0 since before during after stop_ms up_ms mesh_ms handed
  for n in 1 2 3; do
    c=${OMNIKV_NAME_PREFIX:-}s$n
    [ "$(docker inspect -f '{{.State.Running}}' "$c" 2>/dev/null)" = true ] ||
      { echo "docker-compose.sh: $c is not running; a rolling restart needs s1-s3 (compose-up)" >&2; exit 1; }
  done
  wait_ready 60
  wait_until 30 "replicas not connected to each other" meshed
  for n in 1 2 3; do
    s=s$n c=${OMNIKV_NAME_PREFIX:-}s$n
    before=$(leader)
    since=$(date +%s.%N) t0=$(date +%s%N)
    # stop: SIGTERM, then SIGKILL after the compose file's stop_grace_period (10s).
    compose cluster stop "$s" >/dev/null 2>&1
    stop_ms=$(ms_since "$t0")
    during=$(leader)
    t0=$(date +%s%N)
    compose cluster start "$s" >/dev/null 2>&1
    wait_ready 60
    up_ms=$(ms_since "$t0")
    wait_until 30 "replicas not connected to each other" meshed
    mesh_ms=$(ms_since "$t0")
    after=$(leader)
    # What kvd logged on SIGTERM: `stopping: leadership handed over to=N elapsed_ms=M`,
    # `stopping without a leader hand-off ...`, or (a follower) `not the leader`.
    handed=$(docker logs --since "$since" "$c" 2>&1 | grep -E 'kvd::node: stopping' | grep -v 'not the leader' |
      sed -E 's/.*kvd::node: (stopping: )?//' | tail -1 || true)
    printf '%s: leader %s; stopped in %s ms%s; leader while stopped %s; ready %s ms after start, connected to all %s ms; leader %s\n' \
      "$s" "$before" "$stop_ms" "${handed:+ ($handed)}" "$during" "$up_ms" "$mesh_ms" "$after"
  done
  kvctl status --all
}

cmd=${1:-}
shift || true
case "$cmd" in
  up)
    variant=${1:-cluster}
    services=()
    [ "$variant" = single ] && services=(s1 network-actor)
    docker image inspect "$OMNIKV_IMAGE" >/dev/null 2>&1 || OMNIKV_IMAGE=$OMNIKV_IMAGE "$root/scripts/image.sh"
    # Never recreate (see above): remove the containers, then create them anew.
    compose all rm -fsv >/dev/null 2>&1 || true
    compose "$variant" up -d --no-build --remove-orphans "${services[@]}"
    # Return once the cluster serves: every started replica is ready as its /readyz defines
    # it (role leader, follower or standalone, a leader known) and all name the same leader,
    # so a majority has promised to it. Status appends nothing to the log: a linearizable
    # read would leave a read barrier at index 0 and shift Demo 2's snapshot counts. A put
    # sent right after waits at the leader until it has finished taking over (and kvctl
    # retries within its timeout).
    wait_serving 60
    ;;
  grow)
    # s1 runs alone (up single). Only s2, s3 and the client are (re)created: s1 keeps running.
    compose grow rm -fsv s2 s3 network-actor >/dev/null 2>&1 || true
    compose grow up -d --no-build --no-deps s2 s3 network-actor
    kvctl --timeout 30s reconfigure --nodes 1,2,3
    # The new replicas take the state by checkpoint; ready once all three serve.
    wait_serving 120
    ;;
  rolling-restart) rolling_restart ;;
  down) compose all down --remove-orphans ;;
  clean) compose all down --volumes --remove-orphans ;;
  status) kvctl status --all ;;
  compose)
    variant=cluster
    case "${1:-}" in cluster | single | snapshot | grow) variant=$1; shift ;; esac
    compose "$variant" "$@"
    ;;
  *)
    echo "usage: docker-compose.sh up [cluster|single|snapshot|grow] | grow | rolling-restart | down | clean | status | compose [VARIANT] ARGS..." >&2
    exit 2
    ;;
esac

#!/usr/bin/env bash
# The compose cluster of deploy/docker-compose.yml (the `just compose-*` recipes).
#
#   docker-compose.sh up [cluster|single|snapshot|grow]  build the image if missing, (re)create
#                          the containers, wait until every replica is ready (appends nothing)
#   docker-compose.sh down       stop and remove the containers and network; volumes kept
#   docker-compose.sh clean      the same, and remove the volumes (all data)
#   docker-compose.sh status     kvctl status --all, from the client container
#   docker-compose.sh grow       Demo 0 -> Demo 1: start s2, s3 (empty joiners) next to the
#                          single server s1 and reconfigure to 1,2,3 (compose.grow.yml)
#   docker-compose.sh compose [VARIANT] ARGS...   any compose command, e.g. `compose ps`
#
# Variants: cluster (s1-s3 + client), single (Demo 0: s1 alone + client, compose.single.yml),
# snapshot (Demo 2: compaction every 5 entries, compose.snapshot.yml), grow (the single
# server grown into s1-s3: compose.single.yml + compose.grow.yml).
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
client=${OMNIKV_NAME_PREFIX:-}client

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
  local files=(-f "$deploy/docker-compose.yml")
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

# wait_serving SECS: until every replica is ready (or fail after SECS), then print status.
wait_serving() {
  local deadline=$((SECONDS + $1))
  until ready; do
    if [ $SECONDS -ge $deadline ]; then
      kvctl --timeout 2s status --all >&2 || true
      echo "docker-compose.sh: replicas not ready after $1s; see: docker logs ${OMNIKV_NAME_PREFIX:-}s1" >&2
      exit 1
    fi
    sleep 0.3
  done
  kvctl status --all
}

cmd=${1:-}
shift || true
case "$cmd" in
  up)
    variant=${1:-cluster}
    services=()
    [ "$variant" = single ] && services=(s1 client)
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
    compose grow rm -fsv s2 s3 client >/dev/null 2>&1 || true
    compose grow up -d --no-build --no-deps s2 s3 client
    kvctl --timeout 30s reconfigure --nodes 1,2,3
    # The new replicas take the state by checkpoint; ready once all three serve.
    wait_serving 120
    ;;
  down) compose all down --remove-orphans ;;
  clean) compose all down --volumes --remove-orphans ;;
  status) kvctl status --all ;;
  compose)
    variant=cluster
    case "${1:-}" in cluster | single | snapshot | grow) variant=$1; shift ;; esac
    compose "$variant" "$@"
    ;;
  *)
    echo "usage: docker-compose.sh up [cluster|single|snapshot|grow] | grow | down | clean | status | compose [VARIANT] ARGS..." >&2
    exit 2
    ;;
esac

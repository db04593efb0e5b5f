#!/usr/bin/env bash
# The compose cluster of deploy/docker-compose.yml (the `just compose-*` recipes).
#
#   docker-compose.sh up [cluster|single|snapshot]  build the image if missing, (re)create
#                          the containers, wait until the cluster answers a linearizable read
#   docker-compose.sh down       stop and remove the containers and network; volumes kept
#   docker-compose.sh clean      the same, and remove the volumes (all data)
#   docker-compose.sh status     kvctl status --all, from the client container
#   docker-compose.sh compose [VARIANT] ARGS...   any compose command, e.g. `compose ps`
#
# Variants: cluster (s1-s3 + client), single (Demo 0: s1 alone + client, compose.single.yml),
# snapshot (Demo 2: compaction every 5 entries, compose.snapshot.yml).
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
    # every volume any variant declares (down -v removes the declared ones)
    all) files+=(-f "$deploy/compose.single.yml") ;;
    *) echo "docker-compose.sh: unknown variant '$variant' (cluster, single, snapshot)" >&2; exit 2 ;;
  esac
  "${compose_cmd[@]}" -p "$project" "${files[@]}" "$@"
}

kvctl() { docker exec "$client" kvctl "$@"; }

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
    # Return once the cluster serves: a leader is known and a linearizable read answers
    # (exit 1, key not found, counts). Like `just up`, this leaves a read barrier at index 0.
    deadline=$((SECONDS + 60))
    until kvctl --timeout 2s get omnikv-probe >/dev/null 2>&1 || [ $? -eq 1 ]; do
      if [ $SECONDS -ge $deadline ]; then
        echo "docker-compose.sh: cluster not serving after 60s; see: docker logs ${OMNIKV_NAME_PREFIX:-}s1" >&2
        exit 1
      fi
      sleep 0.3
    done
    kvctl status --all
    ;;
  down) compose all down --remove-orphans ;;
  clean) compose all down --volumes --remove-orphans ;;
  status) kvctl status --all ;;
  compose)
    variant=cluster
    case "${1:-}" in cluster | single | snapshot) variant=$1; shift ;; esac
    compose "$variant" "$@"
    ;;
  *)
    echo "usage: docker-compose.sh up [cluster|single|snapshot] | down | clean | status | compose [VARIANT] ARGS..." >&2
    exit 2
    ;;
esac

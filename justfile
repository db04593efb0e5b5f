# omnikv task index: `just` lists the recipes.

set shell := ["bash", "-euo", "pipefail", "-c"]

target := env_var_or_default("CARGO_TARGET_DIR", justfile_directory() + "/target")
export OMNIKV_BIN := target + "/debug"

# Benchmarks (bench/bench.just), Kubernetes / minikube (deploy/k8s/k8s.just), chaos and fuzzing
# (tests/chaos.just).
import 'bench/bench.just'
import 'deploy/k8s/k8s.just'
import 'tests/chaos.just'

# List the recipes.
default:
    @just --list

# Install what building and testing need, if missing (scripts/setup.sh; --docker adds Docker).
setup *ARGS:
    ./scripts/setup.sh {{ARGS}}

# RocksDB's C++ is built once and linked from a cache (scripts/rocksdb-lib.sh).
rocksdb := "export ROCKSDB_LIB_DIR=$(./scripts/rocksdb-lib.sh) ROCKSDB_STATIC=1;"

# Build kvd and kvctl (the profile the tests use).
build:
    {{rocksdb}} cargo build --bins

# Start the local 3-replica cluster (client ports 8001-8003); starts only replicas not running. OMNIKV_TLS=1: HTTPS, peer mTLS, auth (docs/security.md).
up: build
    ./scripts/local-cluster.sh up

# Stop the local cluster (data kept).
down:
    ./scripts/local-cluster.sh down

# Stop the local cluster and remove its data and logs.
clean:
    ./scripts/local-cluster.sh clean

# kill -9 replica N of the local cluster (`just up` restarts it with its data).
kill N:
    ./scripts/local-cluster.sh kill {{N}}

# Start replica N next to the local cluster and reconfigure to include it; shows its state transfer.
add-node N: build
    ./scripts/local-cluster.sh add {{N}}

# Grow the local single server (Demo 0: OMNIKV_NODES=1 just up) into replicas 1..N (Demo 1); they take its state.
grow N="3": build
    ./scripts/local-cluster.sh grow {{N}}

# Reconfigure replica N out of the local cluster, then stop it (its data dir is kept).
remove-node N:
    ./scripts/local-cluster.sh remove {{N}}

# Save a snapshot of the local cluster's state to FILE (kvctl snapshot save; README "Backup and restore").
backup FILE:
    eval "$(./scripts/local-cluster.sh env)"; {{OMNIKV_BIN}}/kvctl snapshot save {{FILE}}

# Seed a NEW local cluster from snapshot FILE (needs empty data dirs: `just clean` first), then start it.
restore FILE: build
    ./scripts/local-restore.sh {{FILE}}
    ./scripts/local-cluster.sh up

# Disaster path: a NEW local cluster from one stopped survivor's data dir DIR (kvd restore --force-new-cluster).
restore-from-survivor DIR: build
    ./scripts/local-restore.sh --force-new-cluster --from-data-dir {{DIR}}
    ./scripts/local-cluster.sh up

# Status of every replica of the local cluster.
status:
    ./scripts/local-cluster.sh status

# The exports that point kvctl at the local cluster (with TLS: CA and admin token): eval "$(just env)".
env:
    @./scripts/local-cluster.sh env

# Follow replica N's log (decided entries, compaction, leader changes).
logs N:
    tail -f "${OMNIKV_HOME:-.omnikv}/kvd-{{N}}.log"

# The seed's interactive prompt against the local cluster.
shell:
    eval "$(./scripts/local-cluster.sh env)"; {{OMNIKV_BIN}}/kvctl shell

# A lock in a shell script: N concurrent increments of the key demo-counter, each under `kvctl lock` (needs `just up`).
lock-demo N="5":
    #!/usr/bin/env bash
    set -euo pipefail
    export PATH="{{OMNIKV_BIN}}:$PATH"
    eval "$(./scripts/local-cluster.sh env)"
    kvctl put demo-counter 0 >/dev/null
    for i in $(seq {{N}}); do
      kvctl lock demo-lock -- sh -c 'n=$(kvctl get demo-counter); sleep 0.2; kvctl put demo-counter $((n + 1)) >/dev/null; echo "holder '"$i"': $n -> $((n + 1)) (fencing token $KVCTL_LOCK_REV)"' &
    done
    wait
    echo "demo-counter = $(kvctl get demo-counter) (expected {{N}})"

# Run the whole test suite (unit, integration against real kvd processes, kvctl, Docker demos).
test:
    {{rocksdb}} cargo build --bins && cargo test --workspace -- --test-threads 2 2>&1 | ./scripts/test-summary.sh
    just test-k8s
    just test-docker

# Formatting and lints, as CI checks them.
lint:
    cargo fmt --all -- --check
    {{rocksdb}} cargo clippy --workspace --all-targets -- -D warnings

# Build the Docker image omnikv:dev (OMNIKV_IMAGE); without a registry it takes the offline path.
image:
    ./scripts/image.sh

# Start the compose cluster of docker-compose.yml: s1-s3 and network-actor (VARIANT: cluster, single = Demo 0, snapshot = Demo 2, grow = Demo 0 grown).
compose-up VARIANT="cluster":
    ./scripts/docker-compose.sh up {{VARIANT}}

# Demo 0 -> Demo 1 on compose: start s2, s3 empty next to the single server (compose-up single) and grow it into s1-s3.
compose-grow:
    ./scripts/docker-compose.sh grow

# Restart s1, s2, s3 in turn (SIGTERM: a leader hands leadership over first), each serving before the next.
compose-rolling-restart:
    ./scripts/docker-compose.sh rolling-restart

# Stop and remove the compose containers; the volumes (data) are kept.
compose-down:
    ./scripts/docker-compose.sh down

# Stop and remove the compose containers and their volumes (all data).
compose-clean:
    ./scripts/docker-compose.sh clean

# `kvctl status --all` from the compose client container network-actor.
compose-status:
    ./scripts/docker-compose.sh status

# Follow replica N's container log (decided entries, compaction, leader changes).
compose-logs N:
    docker logs -f "${OMNIKV_NAME_PREFIX:-}s{{N}}"

# The seed's demos on the compose cluster, as tests (own project and image tag, cleaned up).
test-docker:
    ./tests/docker/demos.sh

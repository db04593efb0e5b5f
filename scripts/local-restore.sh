#!/usr/bin/env bash
# Seeds the local cluster's data dirs ($OMNIKV_HOME/data-N, for N in OMNIKV_NODES, default
# 1,2,3) with `kvd restore`, as a NEW cluster (`just restore FILE`, or the disaster path
# `just restore-from-survivor DIR`); `just up` then starts it. Refuses while any data dir exists:
# restore never overwrites (`just clean` first, or another OMNIKV_HOME).
#   usage: local-restore.sh FILE | --force-new-cluster --from-data-dir DIR
set -euo pipefail
[ $# -ge 1 ] || { echo "usage: local-restore.sh FILE | --force-new-cluster --from-data-dir DIR" >&2; exit 2; }
root=$(cd "$(dirname "$0")/.." && pwd)
home=${OMNIKV_HOME:-$root/.omnikv}
bin=${OMNIKV_BIN:-${CARGO_TARGET_DIR:-$root/target}/debug}
nodes=${OMNIKV_NODES:-1,2,3}
# A survivor's dir may be inside $home: restore from it, then clear the old cluster's files.
for p in ${nodes//,/ }; do
  if [ -e "$home/data-$p" ]; then
    echo "$home/data-$p exists: restore seeds a new cluster into empty dirs; run \`just clean\` first" \
      "(copy a survivor's data dir out of $home before that) or set OMNIKV_HOME" >&2
    exit 2
  fi
done
mkdir -p "$home"
peers=""
for p in ${nodes//,/ }; do peers+="${peers:+,}$p=127.0.0.1:$((7000 + p))"; done
for p in ${nodes//,/ }; do
  PID=$p NODES="$nodes" KVD_DATA_DIR="$home/data-$p" KVD_PEERS="$peers" \
  KVD_CLIENT_ADDR="127.0.0.1:$((8000 + p))" KVD_PEER_ADDR="127.0.0.1:$((7000 + p))" \
    "$bin/kvd" restore "$@"
done
echo "$nodes" >"$home/initial-nodes"
echo "$nodes" >"$home/nodes"
echo "seeded replicas $nodes in $home: \`just up\` starts the restored cluster"

#!/usr/bin/env bash
# Makes the two Secrets deploy/k8s-tls mounts, as manifests in DIR (created; it then holds the
# CA key, the replicas' keys and tokens: keep it safe, out of the repository):
#   DIR/secret.yaml       Secret kv-tls, by `kvctl certs new --k8s-secret kv-tls`: ca.crt,
#                         replica-N.crt/.key for pids 1..REPLICAS (default 5), with the client
#                         Service's names (kv-client, kv-client.NAMESPACE.svc[.cluster.local])
#                         as extra DNS names
#   DIR/auth-secret.yaml  Secret kv-auth: auth (the auth file, token hashes only),
#                         watcher.token (user watcher, admin: the sidecar reconfigures),
#                         admin.token (user admin, admin: the client pod `net`)
# `just k8s-tls-secrets` runs it and applies both; validate.sh checks what it makes.
#   usage: tls-secrets.sh DIR     env: KVCTL (kvctl binary), REPLICAS, NAMESPACE (default)
set -euo pipefail
dir=${1:?usage: tls-secrets.sh DIR}
kvctl=${KVCTL:-kvctl}
replicas=${REPLICAS:-5}
ns=${NAMESPACE:-default}
[ ! -e "$dir" ] || { echo "$dir exists: give a new directory (it would hold a second CA)" >&2; exit 2; }
umask 077
mkdir -p "$dir"
"$kvctl" certs new --out "$dir" --replicas "$replicas" --k8s-secret kv-tls \
  --hosts "kv-client,kv-client.$ns.svc,kv-client.$ns.svc.cluster.local" >/dev/null
"$kvctl" token new watcher --role admin --auth-file "$dir/auth" >"$dir/watcher.token"
"$kvctl" token new admin --role admin --auth-file "$dir/auth" >"$dir/admin.token"
kubectl create secret generic kv-auth --dry-run=client -o yaml \
  --from-file=auth="$dir/auth" --from-file=watcher.token="$dir/watcher.token" \
  --from-file=admin.token="$dir/admin.token" >"$dir/auth-secret.yaml"
echo "made $dir/secret.yaml (Secret kv-tls) and $dir/auth-secret.yaml (Secret kv-auth)"

#!/usr/bin/env bash
# Validates the Kubernetes manifests offline (`just test-k8s`): renders deploy/k8s with
# `kubectl kustomize` (no cluster needed; Debian's kubernetes-client provides kubectl) and
# checks every object against the Kubernetes OpenAPI schemas of K8S_VERSION with
# `kubernetes-validate --strict` (PyPI; ships the schemas, so nothing is fetched), which
# rejects unknown fields. The example patches are applied to the ConfigMap and checked too.
# The manual variant (deploy/k8s-manual: the base plus components/no-watcher) and the TLS one
# with no-watcher too are rendered and checked the same way, and must hold no watcher container,
# no watcher RBAC and no API token. The TLS variant (deploy/k8s-tls: the base plus
# components/tls) is rendered and checked the same way, then by tls-check.py (every certificate, key, CA and token file a container is
# pointed at is a key of a mounted Secret; HTTPS probes and endpoints; ca.key never mounted);
# with a built kvctl that has `certs`, tls-secrets.sh makes the two Secrets, which must be
# valid and hold every key the pods mount.
# scripts/setup.sh installs both tools; a kubernetes-validate not on PATH is taken from the
# venv setup.sh installs it into, $OMNIKV_CACHE/venv (default ~/.cache/omnikv/venv).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
kvctl=${OMNIKV_BIN:-${CARGO_TARGET_DIR:-$root/target}/debug}/kvctl
version=${K8S_VERSION:-1.33.0}
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
passed=0 failed=0

check() { # name, command...
  local name=$1; shift
  if "$@" >"$out/log" 2>&1; then
    passed=$((passed + 1)); echo "ok: $name"
  else
    failed=$((failed + 1)); echo "FAILED: $name"; sed 's/^/  /' "$out/log"
  fi
}

# Appended, not prepended: python3 below stays the system's, not the venv's.
command -v kubernetes-validate >/dev/null || PATH=$PATH:${OMNIKV_CACHE:-$HOME/.cache/omnikv}/venv/bin
command -v kubectl >/dev/null || { echo "test-k8s: kubectl not found (run scripts/setup.sh)" >&2; exit 2; }
command -v kubernetes-validate >/dev/null \
  || { echo "test-k8s: kubernetes-validate not found (run scripts/setup.sh)" >&2; exit 2; }

kubectl kustomize "$here" >"$out/all.yaml"
kinds=$(grep -c '^kind:' "$out/all.yaml")
check "kustomize build ($kinds objects)" test "$kinds" -eq 9
check "schemas of Kubernetes $version, strict" \
  kubernetes-validate --strict --quiet -k "$version" "$out/all.yaml"

# The example patches, applied as `kubectl patch --type merge` would, must leave a valid
# ConfigMap whose NODES / CONFIG_ID the watcher accepts.
for p in "$here"/examples/*.json; do
  cm="$out/cm-$(basename "$p" .json).json"
  check "example $(basename "$p") applies" python3 - "$out/all.yaml" "$p" "$cm" <<'PY'
import json, sys, re
docs = open(sys.argv[1]).read().split("\n---\n")
cm = next(d for d in docs if re.search(r"^kind: ConfigMap$", d, re.M))
data = {k: v.strip("'\"") for k, v in re.findall(r"^  (NODES|CONFIG_ID): (.*)$", cm, re.M)}
patch = json.load(open(sys.argv[2]))
assert set(patch) == {"data"}, "a patch of data only"
data.update(patch["data"])
nodes = [int(x) for x in re.split(r"[,\s]+", data["NODES"].strip("[] ")) if x]
assert nodes and all(n >= 1 for n in nodes) and len(set(nodes)) == len(nodes), data
assert int(data["CONFIG_ID"]) >= 1, data
json.dump({"apiVersion": "v1", "kind": "ConfigMap",
           "metadata": {"name": "kv-config"}, "data": data}, open(sys.argv[3], "w"))
PY
  check "example $(basename "$p"): ConfigMap valid" \
    kubernetes-validate --strict --quiet -k "$version" "$cm"
done

# The TLS variant. PyYAML for tls-check.py: kubernetes-validate needs it, so the interpreter
# of its script has it (the venv's); else the system's python3.
py=$(sed -n '1s/^#! *//p' "$(command -v kubernetes-validate)" | cut -d' ' -f1)
"$py" -c 'import yaml' 2>/dev/null || py=python3
# etcd's API: the base and the TLS variant serve it on port 2379 of every pod and both
# Services (in the TLS variant over TLS, authenticating against the auth file).
etcd_port() { # rendered file, plain|auth
  "$py" - "$@" <<'PY'
import sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
sts = next(d for d in docs if d["kind"] == "StatefulSet")
kvd = next(c for c in sts["spec"]["template"]["spec"]["containers"] if c["name"] == "kvd")
env = {e["name"]: e.get("value") for e in kvd.get("env") or []}
assert env.get("KVD_ETCD_ADDR") == "0.0.0.0:2379", env.get("KVD_ETCD_ADDR")
ports = {p["name"]: p["containerPort"] for p in kvd["ports"]}
assert ports.get("etcd") == 2379, ports
for svc in (d for d in docs if d["kind"] == "Service"):
    named = {p["name"]: (p["port"], p["targetPort"]) for p in svc["spec"]["ports"]}
    assert named.get("etcd") == (2379, "etcd"), (svc["metadata"]["name"], named)
if sys.argv[2] == "auth":
    assert env.get("KVD_AUTH_FILE"), "the TLS variant's etcd port without the auth file"
PY
}
check "base: etcd's API on port 2379 (pods, Services)" etcd_port "$out/all.yaml" plain
kubectl kustomize "$root/deploy/k8s-tls" >"$out/tls.yaml"
kinds=$(grep -c '^kind:' "$out/tls.yaml")
check "TLS variant: kustomize build ($kinds objects)" test "$kinds" -eq 9
check "TLS variant: schemas of Kubernetes $version, strict" \
  kubernetes-validate --strict --quiet -k "$version" "$out/tls.yaml"
check "TLS variant: mounted files, HTTPS probes and endpoints (pids 1-5)" \
  "$py" "$here/tls-check.py" "$out/tls.yaml" 5 "$out/needed"
check "TLS variant: etcd's API on port 2379 beside the auth file" etcd_port "$out/tls.yaml" auth

# The manual variants: no watcher anywhere, nothing that talks to the API server.
no_watcher() { # rendered file
  "$py" - "$1" <<'PY'
import sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
kinds = {d["kind"] for d in docs}
assert not kinds & {"ServiceAccount", "Role", "RoleBinding"}, f"watcher RBAC left: {kinds}"
sts = next(d for d in docs if d["kind"] == "StatefulSet")
pod = sts["spec"]["template"]["spec"]
names = [c["name"] for c in pod["containers"]]
assert names == ["kvd"], f"containers {names}"
assert "serviceAccountName" not in pod, pod.get("serviceAccountName")
assert pod.get("automountServiceAccountToken") is False, "an API token is mounted"
volumes = {v["name"] for v in pod.get("volumes") or []}
mounted = {m["name"] for c in pod["containers"] for m in c.get("volumeMounts") or []}
assert volumes <= mounted, f"volumes nobody mounts: {sorted(volumes - mounted)}"
PY
}
kubectl kustomize "$root/deploy/k8s-manual" >"$out/manual.yaml"
kinds=$(grep -c '^kind:' "$out/manual.yaml")
check "manual variant: kustomize build ($kinds objects)" test "$kinds" -eq 6
check "manual variant: schemas of Kubernetes $version, strict" \
  kubernetes-validate --strict --quiet -k "$version" "$out/manual.yaml"
check "manual variant: kvd alone, no watcher RBAC, no API token" no_watcher "$out/manual.yaml"
# TLS without the watcher: a kustomization of the user's own, as the component's header says.
mkdir "$out/tls-manual"
rel=$(realpath --relative-to="$out/tls-manual" "$here")
printf 'resources:\n  - %s\ncomponents:\n  - %s/components/tls\n  - %s/components/no-watcher\n' \
  "$rel" "$rel" "$rel" >"$out/tls-manual/kustomization.yaml"
kubectl kustomize "$out/tls-manual" >"$out/tls-manual.yaml"
kinds=$(grep -c '^kind:' "$out/tls-manual.yaml")
check "TLS manual variant: kustomize build ($kinds objects)" test "$kinds" -eq 6
check "TLS manual variant: schemas of Kubernetes $version, strict" \
  kubernetes-validate --strict --quiet -k "$version" "$out/tls-manual.yaml"
check "TLS manual variant: kvd alone, no watcher RBAC, no API token" no_watcher "$out/tls-manual.yaml"
check "TLS manual variant: mounted files, HTTPS probes and endpoints (pids 1-5)" \
  "$py" "$here/tls-check.py" "$out/tls-manual.yaml" 5 "$out/needed-manual"

if "$kvctl" certs new --help >/dev/null 2>&1; then
  check "tls-secrets.sh makes the Secrets (kvctl certs new, token new)" \
    env KVCTL="$kvctl" "$here/tls-secrets.sh" "$out/secrets"
  check "Secrets kv-tls and kv-auth: schemas, strict" \
    kubernetes-validate --strict --quiet -k "$version" "$out/secrets/secret.yaml" "$out/secrets/auth-secret.yaml"
  check "Secrets hold every key the TLS variant mounts" "$py" - "$out/needed" \
    "$out/secrets/secret.yaml" "$out/secrets/auth-secret.yaml" <<'PY'
import sys, yaml
have = set()
for f in sys.argv[2:]:
    for d in yaml.safe_load_all(open(f)):
        if d and d.get("kind") == "Secret":
            for k in list(d.get("data") or {}) + list(d.get("stringData") or {}):
                have.add((d["metadata"]["name"], k))
need = {tuple(line.split()) for line in open(sys.argv[1]) if line.strip()}
missing = sorted(need - have)
assert not missing, f"missing Secret keys: {missing}"
PY
else
  echo "skipped, not counted: the Secrets (no kvctl with \`certs\` at $kvctl; \`just build\`)"
fi

echo "k8s: $passed passed, $failed failed"
[ "$failed" -eq 0 ]

"""Checks the TLS rendering of deploy/k8s (deploy/k8s-tls) beyond the schemas: every file
the containers are told about (KVD_* / KVCTL_* env, the per-pid certificate the kvd command
picks) is a key of a mounted Secret, kvd's probes use HTTPS, every endpoint is https, and
ca.key is never mounted. Writes the Secret keys the pods need, one `SECRET KEY` a line.

usage: tls-check.py RENDERED.yaml PIDS NEEDED.out   (run by validate.sh)
"""
import re
import sys

import yaml

FILE_VARS = {"KVD_CLIENT_CA_FILE", "KVD_PEER_CA_FILE", "KVD_AUTH_FILE", "KVCTL_CACERT",
             "KVCTL_TOKEN_FILE"}
URL_VARS = {"WATCHER_KVD_URL", "WATCHER_PEER_URL_TEMPLATE"}

docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
pids = range(1, int(sys.argv[2]) + 1)
needed = set()
errors = []


def pod_specs():
    for d in docs:
        if d["kind"] == "StatefulSet":
            yield d["metadata"]["name"], d["spec"]["template"]["spec"]
        elif d["kind"] == "Pod":
            yield d["metadata"]["name"], d["spec"]


def resolve(where, spec, container, path):
    """The Secret key that path names in this container, or an error."""
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    for m in container.get("volumeMounts", []):
        root = m["mountPath"].rstrip("/") + "/"
        if not path.startswith(root):
            continue
        secret = volumes.get(m["name"], {}).get("secret")
        if secret is None:
            errors.append(f"{where}: {path} is on volume {m['name']}, not a Secret")
            return
        rel = path[len(root):]
        keys = [i["key"] for i in secret.get("items", []) if i["path"] == rel]
        if not keys:
            errors.append(f"{where}: {path}: no item {rel} in Secret {secret['secretName']}")
            return
        needed.add((secret["secretName"], keys[0]))
        return
    errors.append(f"{where}: {path} is on no volume mount")


for name, spec in pod_specs():
    for v in spec.get("volumes", []):
        secret = v.get("secret")
        if secret is None:
            continue
        if "items" not in secret:
            errors.append(f"{name}: volume {v['name']} mounts all of Secret {secret['secretName']}")
        for i in secret.get("items", []):
            if i["key"] == "ca.key":
                errors.append(f"{name}: volume {v['name']} mounts ca.key")
    for c in spec["containers"]:
        where = f"{name}/{c['name']}"
        env = {e["name"]: e.get("value") for e in c.get("env", [])}
        for var in FILE_VARS & env.keys():
            resolve(where, spec, c, env[var])
        for var in URL_VARS & env.keys():
            if not env[var].startswith("https://"):
                errors.append(f"{where}: {var}={env[var]} is not https")
        for ep in (env.get("KVCTL_ENDPOINTS") or "").split(","):
            if ep and not ep.startswith("https://"):
                errors.append(f"{where}: endpoint {ep} is not https")
        if c["name"] != "kvd":
            continue
        script = " ".join(c.get("command", []))
        for var in ("KVD_CERT_FILE", "KVD_KEY_FILE"):
            m = re.search(var + r"=(\S+)", script)
            if not m or "$PID" not in m.group(1):
                errors.append(f"{where}: the command sets no per-pid {var}")
                continue
            for pid in pids:
                resolve(f"{where} (pid {pid})", spec, c, m.group(1).replace("$PID", str(pid)))
        for var in ("KVD_PEER_CERT_FILE", "KVD_PEER_KEY_FILE"):
            if var + "=" not in script:
                errors.append(f"{where}: the command sets no {var}")
        for var in ("KVD_CLIENT_CA_FILE", "KVD_PEER_CA_FILE", "KVD_AUTH_FILE"):
            if var not in env:
                errors.append(f"{where}: no {var}")
        for probe in ("livenessProbe", "readinessProbe"):
            if c.get(probe, {}).get("httpGet", {}).get("scheme") != "HTTPS":
                errors.append(f"{where}: {probe} is not HTTPS")

if not needed:
    errors.append("no Secret key is mounted at all")
for e in errors:
    print(e)
with open(sys.argv[3], "w") as out:
    for secret, key in sorted(needed):
        out.write(f"{secret} {key}\n")
sys.exit(1 if errors else 0)

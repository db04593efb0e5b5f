#!/usr/bin/env python3
"""omnikv vs etcd, side by side on this machine, in one interleaved run (issues 6, 16).
Python stdlib only.

Starts real clusters on loopback, every write fsynced (kvd's default; etcd's default):
  omnikv-3  three kvd replicas          etcd-3  three etcd members
  omnikv-1  kvd standalone (NODES=[1])  etcd-1  one etcd member
and drives all of them with the same load generator, `omnikv-bench` (bench/driver: kvctl
bench's closed loop, key space, value size, connection count and histogram; omnikv over its
HTTP API, etcd over its native gRPC API with the etcd-client crate, as each system's users
run it). The clusters compared run at the same time and their runs are interleaved point by
point (omnikv, etcd, then etcd, omnikv in the next round), so machine noise hits both; every
figure is the median of --rounds runs.

Points (--points, a comma list; default all):
  puts      puts at each of --clients (default 1, 64, 256), 3 members
  follower  puts at 1 client through a follower
  values    puts of 1 KB and 16 KB values at --point-clients (64)
  mix       50/50 linearizable gets and puts at --point-clients
  gets      linearizable gets at --point-clients, and local (etcd: serializable) ones
  1m        fresh clusters preloaded with --big-keys (1M) keys (`omnikv-bench load`: batched
            transactions, many clients; the time is reported), each replica's RSS after it,
            then puts and linearizable gets over those keys
  failover  kill -9 of the leader: time to the first acknowledged write (native clients)
  single    puts at each of --clients, one member each
  add       time to add a 4th member to a cluster holding --add-keys keys
Before the 3-member points, both clusters are loaded with the --keys key space, so every
get finds its key.

Measured per run: throughput, latency p50/p90/p99/max (the load generator), CPU of every server
process (/proc/PID/stat) plus the load generator's own (its getrusage) per successful
operation, fsync + fdatasync syscalls of the server processes per operation (`perf stat`
tracepoints; kvd's and etcd's own counters as a fallback), peak RSS of every server process
(/proc/PID/status, sampled every 0.25 s). Probes that only wait for readiness or find the
leader use each system's HTTP endpoints; every measured operation goes through the load
generator.

Writes BENCHMARKS.md, bench/plots/*.svg and bench/results/latest.json.
  usage: bench/run.py --bin target/release [--duration 5] [--rounds 3] [--points ...]   (--help)
"""

import argparse
import base64
import json
import os
import platform
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLK_TCK = os.sysconf("SC_CLK_TCK")
FSYNC_EVENTS = "syscalls:sys_enter_fsync,syscalls:sys_enter_fdatasync"


STARTED = time.monotonic()


def log(*a):
    print(f"[bench {time.monotonic() - STARTED:6.0f}s]", *a, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- HTTP helpers (probes only)


def http(method, url, body=None, headers=None, timeout=1.0, context=None):
    """(status, body bytes); status 0 when nothing answered in time. `context`: an
    ssl.SSLContext for https:// URLs."""
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout, context=context) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except (OSError, urllib.error.URLError):
        return 0, b""


def b64(s):
    return base64.b64encode(s.encode()).decode()


# ---------------------------------------------------------------- process accounting


def cpu_seconds(pid):
    """utime + stime of a process (all its threads), in seconds; 0 when gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK
    except (OSError, IndexError, ValueError):
        return 0.0


def rss_mb(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return 0.0


def perf_usable():
    if not shutil.which("perf"):
        return False
    r = subprocess.run(["perf", "stat", "-x,", "-e", FSYNC_EVENTS, "true"],
                       capture_output=True, text=True)
    return r.returncode == 0 and "not supported" not in r.stderr and "<not" not in r.stderr


# ---------------------------------------------------------------- clusters


class Member:
    def __init__(self, label, client, peer, data):
        self.label, self.client, self.peer, self.data = label, client, peer, data
        self.proc = None
        self.logf = None
        self.config_id = 1  # omnikv: > 1 starts an empty replica as a joiner
        self.etcd_state = "new"  # etcd: "existing" for a member added later


class Cluster:
    """A set of server processes of one system (omnikv or etcd) on loopback."""

    def __init__(self, name, kind, size, port_base, work, args, dirname=None):
        self.name, self.kind, self.size, self.args = name, kind, size, args
        # How clients reach it: the URL scheme, the ssl.SSLContext for https, and headers
        # every probe sends (bench/tls.py sets them for its secured clusters).
        self.scheme, self.ssl, self.headers = "http", None, {}
        # Its own directory under `work` (`dirname`: when two clusters share a name).
        self.dir = os.path.join(work, dirname or name)
        self.members = [
            Member(i + 1, f"127.0.0.1:{port_base + i}", f"127.0.0.1:{port_base + 50 + i}",
                   os.path.join(self.dir, f"data-{i + 1}"))
            for i in range(size)
        ]

    # -- lifecycle
    def start(self):
        os.makedirs(self.dir, exist_ok=True)
        for i in range(self.size):
            self.start_member(i)

    def start_member(self, i):
        m = self.members[i]
        m.logf = open(os.path.join(self.dir, f"member-{m.label}.log"), "ab")
        cmd, env = self.command(m)
        m.proc = subprocess.Popen(cmd, env=env, stdout=m.logf, stderr=subprocess.STDOUT,
                                  start_new_session=True)

    def command(self, m):
        """The command line and environment of member `m`."""
        if self.kind == "omnikv":
            nodes = ",".join(str(x.label) for x in self.members)
            peers = ",".join(f"{x.label}={x.peer}" for x in self.members)
            env = dict(os.environ, PID=str(m.label), NODES=f"[{nodes}]",
                       CONFIG_ID=str(m.config_id),
                       KVD_DATA_DIR=m.data, KVD_CLIENT_ADDR=m.client, KVD_PEER_ADDR=m.peer,
                       KVD_PEERS=peers, KVD_LOG="warn")
            cmd = [self.args.kvd]
        else:
            env = dict(os.environ)
            cluster = ",".join(f"e{x.label}=http://{x.peer}" for x in self.members)
            cmd = [self.args.etcd, "--name", f"e{m.label}", "--data-dir", m.data,
                   "--listen-client-urls", f"http://{m.client}",
                   "--advertise-client-urls", f"http://{m.client}",
                   "--listen-peer-urls", f"http://{m.peer}",
                   "--initial-advertise-peer-urls", f"http://{m.peer}",
                   "--initial-cluster", cluster, "--initial-cluster-token", os.path.basename(self.dir),
                   "--initial-cluster-state", m.etcd_state, "--logger", "zap",
                   "--log-level", "warn"]
        return cmd, env

    def kill(self, i, sig=signal.SIGKILL):
        m = self.members[i]
        if m.proc and m.proc.poll() is None:
            m.proc.send_signal(sig)
            m.proc.wait()
        m.proc = None

    def stop(self):
        for i in range(self.size):
            self.kill(i, signal.SIGTERM)

    def pids(self):
        return [m.proc.pid for m in self.members if m.proc and m.proc.poll() is None]

    def endpoints(self, exclude=None):
        return [m.client for i, m in enumerate(self.members) if i != exclude]

    def endpoints_from(self, first):
        """Every endpoint, starting at member index `first` (the load generator starts connection j
        on endpoint j mod n, so connection 0, the only one at 1 client, talks to `first`)."""
        eps = self.endpoints()
        return eps[first:] + eps[:first]

    def bench_target(self):
        """omnikv-bench's --target for this cluster: its own API."""
        return self.kind

    def bench_endpoints(self, first):
        """omnikv-bench's endpoints, member index `first` first (bench/etcd_api.py points
        it at kvd's etcd API instead)."""
        return self.endpoints_from(first)

    def url(self, endpoint, path=""):
        return f"{self.scheme}://{endpoint}{path}"

    def bench_flags(self):
        """omnikv-bench flags a client needs to reach this cluster (TLS, token)."""
        return []

    # -- probes
    def probe(self, method, endpoint, path, body=None, headers=None, timeout=1.0):
        return http(method, self.url(endpoint, path), body, {**self.headers, **(headers or {})},
                    timeout, self.ssl)

    def put(self, endpoint, key, value, timeout):
        if self.kind == "omnikv":
            st, _ = self.probe("PUT", endpoint, f"/v1/kv/{key}", value.encode(),
                               {"omnikv-timeout-ms": str(int(timeout * 1000))}, timeout)
        else:
            body = json.dumps({"key": b64(key), "value": b64(value)}).encode()
            st, _ = self.probe("POST", endpoint, "/v3/kv/put", body, None, timeout)
        return st == 200

    def leader(self):
        """Index of the leader member, or None."""
        if self.kind == "omnikv":
            for m in self.members:
                st, b = self.probe("GET", m.client, "/v1/status")
                if st == 200 and json.loads(b).get("leader") is not None:
                    return int(json.loads(b)["leader"]) - 1
            return None
        ids, lead = {}, None
        for j, m in enumerate(self.members):
            st, b = self.probe("POST", m.client, "/v3/maintenance/status", b"{}")
            if st == 200:
                s = json.loads(b)
                ids[str(s["header"]["member_id"])] = j
                lead = str(s.get("leader", "")) or lead
        return ids.get(lead)

    def wait_ready(self, deadline_s=60):
        """Until a write succeeds through every member and a leader is known."""
        end = time.monotonic() + deadline_s
        while time.monotonic() < end:
            if all(self.put(e, "ready-probe", "x", 2.0) for e in self.endpoints()) and \
                    self.leader() is not None:
                return
            time.sleep(0.2)
        raise RuntimeError(f"{self.name} not ready after {deadline_s}s (logs in {self.dir})")

    def fsync_counter(self):
        """The servers' own count of WAL syncs (fallback when perf cannot count syscalls)."""
        total = 0
        for m in self.members:
            st, b = self.probe("GET", m.client, "/metrics")
            for line in b.decode(errors="replace").splitlines():
                name = line.split(" ")[0]
                if name in ("omnikv_fsyncs_total", "etcd_disk_wal_fsync_duration_seconds_count",
                            "etcd_disk_backend_commit_duration_seconds_count"):
                    total += float(line.split()[-1])
        return total


def finish_run(meta, started, json_path=None, results=None):
    """Notes the run's length and closing load average in `meta`; with `json_path`, writes
    `{"meta": meta, **results}` there (its directory made as needed)."""
    meta["elapsed_min"] = (time.time() - started) / 60
    meta["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    if json_path:
        os.makedirs(os.path.dirname(json_path), exist_ok=True)
        with open(json_path, "w") as f:
            json.dump({"meta": meta, **(results or {})}, f, indent=1)


def stopper(live, work, remove):
    """A function that stops every cluster in `live` (a list the caller keeps current) and,
    with `remove`, deletes `work`; also run on SIGTERM (then exit 143)."""
    def stop_all():
        for c in live:
            c.stop()
        if remove:
            shutil.rmtree(work, ignore_errors=True)

    signal.signal(signal.SIGTERM, lambda *a: (stop_all(), sys.exit(143)))
    return stop_all


# ---------------------------------------------------------------- one load run


def track(p, pids, rss):
    """Waits for process `p`, sampling the RSS of `pids` every 0.25 s into `rss` (peaks)."""
    while True:
        for pid in pids:
            rss[pid] = max(rss.get(pid, 0.0), rss_mb(pid))
        try:
            p.wait(timeout=0.25)
            return
        except subprocess.TimeoutExpired:
            pass


def run_load(cluster, clients, read_ratio=0.0, consistency="linearizable", args=None,
             via="leader", point="puts", value_size=None, keys=None):
    """One `omnikv-bench kv` run: `point` names it in the results. Endpoints are ordered
    leader first (via="leader") or a follower first (via="follower"), the same way for both
    systems: with one client, all its operations go to that member; with more, connection j
    starts on endpoint j (mod their number). `value_size` and `keys` default to --value-size
    and --keys."""
    value_size = value_size or args.value_size
    keys = keys or args.keys
    lead = cluster.leader() or 0
    first = lead if via == "leader" or cluster.size == 1 else (lead + 1) % cluster.size
    cmd = [args.bench, *cluster.bench_flags(), "--target", cluster.kind, "--endpoints",
           ",".join(map(cluster.url, cluster.endpoints_from(first))), "--consistency",
           consistency, "-o", "json", "--timeout", "5s", "kv",
           "--clients", str(clients), "--duration", f"{args.duration}s",
           "--warmup", f"{args.warmup}s", "--value-size", str(value_size),
           "--keys", str(keys), "--read-ratio", str(read_ratio)]
    pids = cluster.pids()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    time.sleep(args.warmup)
    cpu0 = {pid: cpu_seconds(pid) for pid in pids}
    own0 = cluster.fsync_counter() if not args.perf else 0
    perf = None
    if args.perf:
        perf = subprocess.Popen(["perf", "stat", "-x,", "-e", FSYNC_EVENTS, "-p",
                                 ",".join(map(str, pids))],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    rss = {pid: 0.0 for pid in pids}
    track(p, pids, rss)
    out, err = p.communicate()
    cpu1 = {pid: cpu_seconds(pid) for pid in pids}
    fsyncs = None
    if perf:
        perf.send_signal(signal.SIGINT)
        _, perr = perf.communicate()
        fsyncs = 0
        for line in perr.splitlines():
            f = line.split(",")
            if len(f) > 2 and f[2].startswith("syscalls:") and f[0].strip().isdigit():
                fsyncs += int(f[0])
    else:
        fsyncs = cluster.fsync_counter() - own0
    try:
        r = json.loads(out)
    except json.JSONDecodeError:
        raise RuntimeError(f"omnikv-bench failed ({p.returncode}): {err.decode()[-2000:]}")
    ok = max(r["ok"], 1)
    server_cpu = sum(cpu1[pid] - cpu0[pid] for pid in pids)
    client_cpu = r["client_cpu_cores"] * r["duration_s"]
    errors = sum(r["errors"].values())
    res = {
        "system": cluster.name, "point": point, "via": via,
        "clients": clients, "read_ratio": read_ratio, "consistency": consistency,
        "value_size": value_size, "keys": keys, "ops_per_sec": r["ops_per_sec"],
        "p50_ms": r["latency_ms"]["p50"], "p90_ms": r["latency_ms"]["p90"],
        "p99_ms": r["latency_ms"]["p99"], "max_ms": r["latency_ms"]["max"],
        "errors": errors, "misses": r["misses"],
        "client_cpu_cores": r["client_cpu_cores"],
        "server_cpu_cores": round(server_cpu / r["duration_s"], 3),
        "cpu_us_per_op": round((server_cpu + client_cpu) / ok * 1e6, 1),
        "client_cpu_us_per_op": round(client_cpu / ok * 1e6, 1),
        "fsyncs_per_op": round(fsyncs / ok, 3),
        "rss_mb": [round(rss[pid], 1) for pid in pids],
        "loadavg_1m": os.getloadavg()[0],
    }
    if errors:
        res["first_errors"] = r.get("first_errors")
    log(f"{res['system']:9} {point:13} c={clients:<3} "
        f"{res['ops_per_sec']:8.0f} ops/s p50 {res['p50_ms']:7.2f} p99 {res['p99_ms']:7.2f} ms "
        f"cpu {res['cpu_us_per_op']:6.0f} us/op fsync/op {res['fsyncs_per_op']:.3f} "
        f"client {res['client_cpu_cores']:.2f} cores rss {res['rss_mb']} err {errors} "
        f"miss {res['misses']}")
    return res


def preload(cluster, keys, args, settle=2.0):
    """`omnikv-bench load`: writes bench-0 .. bench-<keys-1> (--value-size bytes each) in
    transactions of --preload-batch puts, --preload-clients in flight, connections spread over
    the members from the leader on. Its time, the servers' CPU and peak RSS while loading, and
    each replica's RSS `settle` seconds after."""
    lead = cluster.leader() or 0
    cmd = [args.bench, *cluster.bench_flags(), "--target", cluster.kind, "--endpoints",
           ",".join(map(cluster.url, cluster.endpoints_from(lead))), "-o", "json",
           "--timeout", "30s", "load", "--keys", str(keys), "--value-size",
           str(args.value_size), "--batch", str(args.preload_batch), "--clients",
           str(args.preload_clients)]
    pids = cluster.pids()
    cpu0 = {pid: cpu_seconds(pid) for pid in pids}
    rss = {pid: 0.0 for pid in pids}
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    track(p, pids, rss)
    out, err = p.communicate()
    server_cpu = sum(cpu_seconds(pid) - cpu0[pid] for pid in pids)
    try:
        r = json.loads(out)
    except json.JSONDecodeError:
        raise RuntimeError(f"{cluster.name}: omnikv-bench load failed ({p.returncode}): "
                           f"{err.decode()[-2000:]}")
    time.sleep(settle)
    res = {"system": cluster.name, "keys": r["keys"], "value_size": r["value_size"],
           "batch": r["batch"], "clients": r["clients"], "transactions": r["transactions"],
           "retries": r["retries"], "seconds": round(r["seconds"], 2),
           "keys_per_sec": round(r["keys_per_sec"]), "count": r["count"],
           "cpu_us_per_key": round((server_cpu + r["client_cpu_cores"] * r["seconds"])
                                   / r["keys"] * 1e6, 1),
           "rss_peak_mb": [round(rss[pid], 1) for pid in pids],
           "rss_after_mb": [round(rss_mb(pid), 1) for pid in pids]}
    log(f"{cluster.name:9} preload {res['keys']:,} keys in {res['seconds']:.1f} s "
        f"({res['keys_per_sec']:,} keys/s, batch {res['batch']}, {res['clients']} clients, "
        f"{res['retries']} retries); RSS after {res['rss_after_mb']} MB")
    return res


# ---------------------------------------------------------------- failover


def failover_trial(cluster, trial, args):
    """kill -9 the leader; seconds until a write through another member is acknowledged,
    measured by `omnikv-bench first-write` (connected to the other members beforehand,
    through each system's own client; attempts of 0.2 s, 10 ms apart)."""
    lead = None
    end = time.monotonic() + 30
    while lead is None and time.monotonic() < end:
        lead = cluster.leader()
        if lead is None:
            time.sleep(0.1)
    if lead is None:
        raise RuntimeError(f"{cluster.name}: no leader before failover trial")
    others = [cluster.url(e) for e in cluster.endpoints(exclude=lead)]
    p = subprocess.Popen([args.bench, "--target", cluster.kind, "--endpoints", ",".join(others),
                          "-o", "json", "first-write", "--write-key", f"failover-{trial}",
                          "--attempt-ms", "200", "--pause-ms", "10", "--within", "30s"],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True)
    ready = p.stdout.readline().strip()
    if ready != "ready":
        p.kill()
        raise RuntimeError(f"{cluster.name}: first-write not ready ({ready!r}): "
                           f"{p.communicate()[1][-1000:]}")
    cluster.kill(lead)
    p.stdin.write("go\n")
    p.stdin.flush()
    out, err = p.communicate(timeout=120)
    try:
        r = json.loads(out.strip().splitlines()[-1])
    except (json.JSONDecodeError, IndexError):
        raise RuntimeError(f"{cluster.name}: first-write failed ({p.returncode}): {err[-1000:]}")
    took = r["seconds"] if r["seconds"] is not None else float("inf")
    # Bring the killed member back (same data) and let the cluster settle.
    cluster.start_member(lead)
    cluster.wait_ready()
    time.sleep(1.0)
    log(f"{cluster.name:9} failover trial {trial}: killed member {lead + 1}, "
        f"first write after {took:.3f} s ({r['attempts']} attempts)")
    return {"system": cluster.name, "killed": lead + 1, "seconds": round(took, 3),
            "attempts": r["attempts"], "first_errors": r["first_errors"][:2]}


def add_replica(args, work, port_base, kind):
    """Time to add a 4th member to a 3-member cluster holding `--add-keys` keys: from the start
    of the procedure (omnikv: start the joiner, then `kvctl reconfigure`; etcd: `member add`,
    then start the member) until the new member serves every key from its own state (omnikv:
    /readyz 200 and its key count; etcd: a serializable count of the keys)."""
    n = args.add_keys
    if kind == "omnikv":
        r = subprocess.run([args.kvctl, "reconfigure", "--help"], capture_output=True)
        if r.returncode != 0:
            return {"system": "omnikv", "measured": False,
                    "why": "not measured yet: this kvctl has no `reconfigure`"}
    c = Cluster(f"{kind}-add", kind, 3, port_base, work, args)
    try:
        c.start()
        c.wait_ready()
        lead = c.leader() or 0
        load = subprocess.run(
            [args.bench, "--target", kind, "--endpoints", ",".join(c.endpoints_from(lead)),
             "-o", "json", "--timeout", "10s", "kv", "--clients", "64", "--ops", str(n),
             "--keys", str(n), "--key-order", "sequential", "--warmup", "0",
             "--value-size", str(args.value_size)], capture_output=True, text=True)
        loaded = json.loads(load.stdout)["ok"] if load.stdout else 0
        new = Member(4, f"127.0.0.1:{port_base + 3}", f"127.0.0.1:{port_base + 53}",
                     os.path.join(c.dir, "data-4"))
        c.members.append(new)
        c.size = 4
        deadline = 300
        if kind == "omnikv":
            st, b = http("GET", f"http://{c.members[lead].client}/v1/status")
            want = json.loads(b)["keys"] if st == 200 else n
            new.config_id = 2
            t0 = time.monotonic()
            c.start_member(3)
            while http("GET", f"http://{new.client}/healthz")[0] != 200:
                time.sleep(0.02)
            rc = subprocess.run(
                [args.kvctl, "--endpoints", ",".join(c.endpoints(exclude=3)), "--timeout", "60s",
                 "reconfigure", "--nodes", "1,2,3,4", "--peer", f"4={new.peer}"],
                capture_output=True, text=True)
            t_cmd = time.monotonic() - t0
            if rc.returncode != 0:
                return {"system": "omnikv", "measured": False,
                        "why": f"kvctl reconfigure failed ({rc.returncode}): {rc.stderr[-300:]}"}

            def serving():
                if http("GET", f"http://{new.client}/readyz")[0] != 200:
                    return False
                st, b = http("GET", f"http://{new.client}/v1/status")
                return st == 200 and json.loads(b).get("keys", 0) >= want
        else:
            want = n
            lead_ep = c.members[lead].client
            new.etcd_state = "existing"
            body = json.dumps({"peerURLs": [f"http://{new.peer}"]}).encode()
            for _ in range(60):
                # etcd refuses member add until every member has been connected for 5 s
                # (strict reconfig check): wait for that outside the measured time.
                t0 = time.monotonic()
                st, b = http("POST", f"http://{lead_ep}/v3/cluster/member/add", body,
                             timeout=10)
                if st != 503 or b"unhealthy cluster" not in b:
                    break
                time.sleep(0.5)
            if st != 200:
                return {"system": "etcd", "measured": False,
                        "why": f"member add failed: HTTP {st} {b[:200]!r}"}
            c.start_member(3)
            t_cmd = time.monotonic() - t0
            count_q = json.dumps({"key": b64("bench-"), "range_end": b64("bench."),
                                  "count_only": True, "serializable": True}).encode()

            def serving():
                st, b = http("POST", f"http://{new.client}/v3/kv/range", count_q)
                return st == 200 and int(json.loads(b).get("count", 0)) >= want
        while not serving():
            if time.monotonic() - t0 > deadline:
                return {"system": kind, "measured": False,
                        "why": f"the new member did not serve {want} keys within {deadline} s"}
            time.sleep(0.05)
        took = time.monotonic() - t0
        rss = rss_mb(new.proc.pid)
        log(f"{kind:9} add a 4th member holding {loaded} keys: {took:.2f} s "
            f"(command {t_cmd:.2f} s), its RSS {rss:.0f} MB")
        return {"system": kind, "measured": True, "keys": loaded, "seconds": round(took, 3),
                "command_seconds": round(t_cmd, 3), "new_member_rss_mb": round(rss, 1)}
    finally:
        c.stop()


# ---------------------------------------------------------------- aggregation


NUMERIC = ["ops_per_sec", "p50_ms", "p90_ms", "p99_ms", "max_ms", "client_cpu_cores",
           "server_cpu_cores", "cpu_us_per_op", "client_cpu_us_per_op", "fsyncs_per_op",
           "errors", "misses"]


def by_setting(r):
    """bench/tls.py's grouping: (system, clients, read_ratio, consistency)."""
    return (r["system"], r["clients"], r["read_ratio"], r["consistency"])


def by_point(r):
    """run.py's grouping: (system, point, clients)."""
    return (r["system"], r["point"], r["clients"])


def medians(runs, key=by_setting):
    """Group runs by `key`; the median of every metric, and each process's peak RSS."""
    groups = {}
    for r in runs:
        groups.setdefault(key(r), []).append(r)
    out = {}
    for k, rs in groups.items():
        m = {f: statistics.median(x.get(f, 0) for x in rs) for f in NUMERIC}
        m["runs"] = len(rs)
        m["rss_mb_max"] = [max(x["rss_mb"][i] for x in rs) for i in range(len(rs[0]["rss_mb"]))]
        out[k] = m
    return out


# ---------------------------------------------------------------- plots (hand-written SVG)


COLORS = {"omnikv-3": "#1f77b4", "omnikv-1": "#6baed6", "etcd-3": "#d62728",
          "etcd-1": "#fc9272"}
DASH = {"omnikv-1": "6,4", "etcd-1": "6,4"}


def svg_chart(path, title, ylabel, series, xs, log_y=False):
    import math
    W, H, L, R, T, B = 640, 400, 70, 150, 40, 50
    pw, ph = W - L - R, H - T - B
    ys = [y for pts in series.values() for _, y in pts if y and y > 0]
    if not ys:
        return
    if log_y:
        lo = 10 ** math.floor(math.log10(min(ys)))
        hi = 10 ** math.ceil(math.log10(max(ys)))
        ticks = []
        t = lo
        while t <= hi * 1.0001:
            ticks.append(t)
            t *= 10
        fy = lambda y: T + ph - (math.log10(y) - math.log10(lo)) / (math.log10(hi) - math.log10(lo)) * ph
    else:
        top = max(ys) * 1.1
        step = 10 ** math.floor(math.log10(top / 5))
        for mult in (1, 2, 5, 10):
            if top / (step * mult) <= 6:
                step *= mult
                break
        hi = math.ceil(top / step) * step
        ticks = [i * step for i in range(int(hi / step) + 1)]
        fy = lambda y: T + ph - y / hi * ph
    lx = [math.log2(x) for x in xs]
    fx = lambda x: L + (math.log2(x) - lx[0]) / ((lx[-1] - lx[0]) or 1) * pw
    o = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" '
         f'font-family="sans-serif" font-size="12">',
         f'<rect width="{W}" height="{H}" fill="white"/>',
         f'<text x="{L + pw / 2}" y="22" text-anchor="middle" font-size="15">{title}</text>']
    for t in ticks:
        y = fy(t)
        o.append(f'<line x1="{L}" y1="{y:.1f}" x2="{L + pw}" y2="{y:.1f}" stroke="#ddd"/>')
        lab = f"{t:g}" if t < 1e5 else f"{t:.0e}"
        o.append(f'<text x="{L - 6}" y="{y + 4:.1f}" text-anchor="end">{lab}</text>')
    for x in xs:
        o.append(f'<line x1="{fx(x):.1f}" y1="{T}" x2="{fx(x):.1f}" y2="{T + ph}" stroke="#eee"/>')
        o.append(f'<text x="{fx(x):.1f}" y="{T + ph + 18}" text-anchor="middle">{x}</text>')
    o.append(f'<rect x="{L}" y="{T}" width="{pw}" height="{ph}" fill="none" stroke="#333"/>')
    o.append(f'<text x="{L + pw / 2}" y="{H - 10}" text-anchor="middle">concurrent clients '
             f'(log scale)</text>')
    o.append(f'<text transform="translate(16,{T + ph / 2}) rotate(-90)" '
             f'text-anchor="middle">{ylabel}</text>')
    for n, (name, pts) in enumerate(series.items()):
        pts = [(x, y) for x, y in pts if y and y > 0]
        c, d = COLORS.get(name, "#555"), DASH.get(name)
        dash = f' stroke-dasharray="{d}"' if d else ""
        line = " ".join(f"{fx(x):.1f},{fy(y):.1f}" for x, y in pts)
        o.append(f'<polyline points="{line}" fill="none" stroke="{c}" stroke-width="2"{dash}/>')
        for x, y in pts:
            o.append(f'<circle cx="{fx(x):.1f}" cy="{fy(y):.1f}" r="3" fill="{c}"/>')
        ly = T + 10 + n * 20
        o.append(f'<line x1="{L + pw + 12}" y1="{ly}" x2="{L + pw + 40}" y2="{ly}" '
                 f'stroke="{c}" stroke-width="2"{dash}/>')
        o.append(f'<text x="{L + pw + 46}" y="{ly + 4}">{name}</text>')
    o.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(o) + "\n")


def svg_ratios(path, title, rows):
    """Horizontal bars: one (label, ratio) per row, a line at 1x (parity)."""
    rows = [(lab, r) for lab, r in rows if r]
    if not rows:
        return
    W, L, R, T, bar = 760, 330, 60, 40, 22
    H = T + len(rows) * (bar + 8) + 40
    pw = W - L - R
    hi = max(2.0, max(r for _, r in rows) * 1.1)
    fx = lambda x: L + x / hi * pw
    o = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" '
         f'font-family="sans-serif" font-size="12">',
         f'<rect width="{W}" height="{H}" fill="white"/>',
         f'<text x="{W / 2}" y="22" text-anchor="middle" font-size="15">{title}</text>']
    step = 0.5 if hi <= 4 else 1.0
    t = 0.0
    while t <= hi + 1e-9:
        o.append(f'<line x1="{fx(t):.1f}" y1="{T}" x2="{fx(t):.1f}" y2="{H - 30}" '
                 f'stroke="#eee"/>')
        o.append(f'<text x="{fx(t):.1f}" y="{H - 14}" text-anchor="middle">{t:g}x</text>')
        t += step
    for i, (lab, r) in enumerate(rows):
        y = T + i * (bar + 8)
        c = "#1f77b4" if r >= 1 else "#d62728"
        o.append(f'<text x="{L - 8}" y="{y + bar / 2 + 4:.1f}" text-anchor="end">{lab}</text>')
        o.append(f'<rect x="{L}" y="{y}" width="{max(fx(r) - L, 1):.1f}" height="{bar}" '
                 f'fill="{c}"/>')
        o.append(f'<text x="{fx(r) + 4:.1f}" y="{y + bar / 2 + 4:.1f}">{r:.2f}x</text>')
    o.append(f'<line x1="{fx(1):.1f}" y1="{T - 4}" x2="{fx(1):.1f}" y2="{H - 30}" '
             f'stroke="#333" stroke-dasharray="4,3"/>')
    o.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(o) + "\n")


# ---------------------------------------------------------------- report


def sh(cmd):
    try:
        return subprocess.run(cmd, capture_output=True, text=True, shell=True).stdout.strip()
    except OSError:
        return ""


def machine_info(work):
    model = sh("grep -m1 'model name' /proc/cpuinfo | cut -d: -f2").strip()
    mem = sh("awk '/MemTotal/ {printf \"%.1f GiB\", $2/1048576}' /proc/meminfo")
    fs = sh(f"df -T {work} | awk 'NR==2 {{print $2\" on \"$1}}'")
    return {"cpu": model, "cores": os.cpu_count(), "memory": mem, "kernel": platform.release(),
            "work_fs": fs, "loadavg_at_start": [round(x, 2) for x in os.getloadavg()]}


def versions(args):
    dirty = sh(f"git -C {ROOT} status --porcelain --untracked-files=no")
    return {
        "omnikv_tree": sh(f"git -C {ROOT} rev-parse --short HEAD") + (" (dirty)" if dirty else ""),
        "kvd": args.kvd_label or sh(f"{args.kvd} --version"),
        "kvctl": sh(f"{args.kvctl} --version"),
        "bench_tool": sh(f"{args.bench} --version"),
        "etcd": sh(f"{args.etcd} --version | head -1"),
        "etcd_go": sh(f"{args.etcd} --version | grep -i 'go version'"),
        "rustc": sh("rustc --version"),
    }


def fmt(x, d=0):
    if x is None:
        return "n/a"
    if isinstance(x, float) and x == float("inf"):
        return "none in 30 s"
    return f"{x:,.{d}f}"


POINT_ORDER = ["puts", "puts-follower", "puts-1k", "puts-16k", "mix", "gets", "gets-local",
               "1m-puts", "1m-gets"]


def keys_label(n):
    return f"{n // 1_000_000}M" if n % 1_000_000 == 0 else f"{n:,}"


def point_label(point, clients, big_keys):
    cl = f"{clients} client" + ("s" if clients != 1 else "")
    big = keys_label(big_keys)
    return {
        "puts": f"puts, {cl}",
        "puts-follower": f"puts through a follower, {cl}",
        "puts-1k": f"puts of 1 KB values, {cl}",
        "puts-16k": f"puts of 16 KB values, {cl}",
        "mix": f"50/50 linearizable gets and puts, {cl}",
        "gets": f"linearizable gets, {cl}",
        "gets-local": f"local gets (etcd: serializable), {cl}",
        "1m-puts": f"{big} keys: puts, {cl}",
        "1m-gets": f"{big} keys: linearizable gets, {cl}",
    }.get(point, f"{point}, {cl}")


def mbs(xs):
    return " / ".join(f"{x:.0f}" for x in xs) + " MB" if xs else "n/a"


def write_report(args, meta, med, failover, preloads, add_replica, plots_rel):
    L = []
    A = L.append
    big = keys_label(args.big_keys)
    A("# omnikv benchmarks: omnikv vs etcd, same machine, one interleaved run\n")
    A("<!-- Generated by `just bench` (bench/run.py): edit the script, not this file. -->\n")
    A(f"Run {meta['started']} ({meta['elapsed_min']:.1f} min), command:\n")
    A(f"```\n{meta['command']}\n```\n")
    A(f"Every figure is the **median of {args.rounds} run(s)**. The clusters compared are up at "
      "the same time and their runs are interleaved point by point (omnikv then etcd, etcd "
      "then omnikv in the next round), so machine noise hits both. All servers and the load "
      "generator share this machine. Both systems fsync every commit (their defaults; etcd "
      "as shipped by Debian, default flags). One load generator, `omnikv-bench` "
      "(bench/driver), drives both with the same closed loop, key space, value size, "
      "connection count (one per client) and latency histogram: omnikv over its HTTP API, "
      "etcd over its **native gRPC API** (the etcd-client crate), as each system's users run "
      f"it. Unless a point says otherwise: {args.value_size}-byte values over "
      f"{args.keys:,} keys (`bench-0` ..), uniform, loaded into both clusters before the "
      f"first point; each run is {args.duration:g} s after a {args.warmup:g} s warmup; "
      "the endpoint list starts at the leader (connection j on endpoint j mod 3).\n")
    A("Analysis of earlier misses and of kvd's costs: [bench/PROFILE.md](bench/PROFILE.md).\n")
    m, v = meta["machine"], meta["versions"]
    A("## Machine and versions\n")
    A(f"- CPU: {m['cpu']}, {m['cores']} cores (shared with other work: load average "
      f"{m['loadavg_at_start']} at start, {meta['loadavg_at_end']} at end; per run in the "
      f"raw results); memory {m['memory']}; kernel {m['kernel']}; data on {m['work_fs']}")
    A(f"- omnikv tree {v['omnikv_tree']}; kvd: {v['kvd']}; {v['bench_tool']}; {v['rustc']}")
    A(f"- etcd: {v['etcd']} ({v['etcd_go']}), driven through its native gRPC API "
      "(`omnikv-bench --target etcd`, etcd-client crate)")
    A(f"- fsyncs counted as {meta['fsync_source']}")
    A(f"- points run: {', '.join(meta.get('points', []))}\n")

    def g(s, point, c):
        return med.get((s, point, c))

    def pre(s):
        return next((p for p in preloads if p["system"] == s), None)

    fo = {s: [t["seconds"] for t in failover if t["system"] == s] for s in ("omnikv-3", "etcd-3")}
    c = args.point_clients

    # ---- targets
    A("## Targets (issue 16)\n")
    A("| target | omnikv | etcd | ratio | met |")
    A("|---|---|---|---|---|")
    rows = []

    def target_tp(point, clients, factor, what):
        o, e = g("omnikv-3", point, clients), g("etcd-3", point, clients)
        if not (o and e):
            return rows.append((f"{what}: throughput >= {factor:g}x etcd's", "not measured",
                                "", "", None))
        r = round(o["ops_per_sec"] / e["ops_per_sec"], 3)
        rows.append((f"{what}: throughput >= {factor:g}x etcd's",
                     f"{fmt(o['ops_per_sec'])}/s", f"{fmt(e['ops_per_sec'])}/s", f"{r:.3f}x",
                     r >= factor))

    def target_lat(point, clients, q, factor, what):
        o, e = g("omnikv-3", point, clients), g("etcd-3", point, clients)
        if not (o and e):
            return rows.append((f"{what}: {q} <= {factor:g}x etcd's", "not measured", "", "",
                                None))
        # Judged on the ratio shown (3 decimals): 0.92 / 1.15 is 0.8, not 0.8000000000000002.
        r = round(o[f"{q}_ms"] / e[f"{q}_ms"], 3)
        rows.append((f"{what}: {q} <= {factor:g}x etcd's", f"{o[f'{q}_ms']:.2f} ms",
                     f"{e[f'{q}_ms']:.2f} ms", f"{r:.3f}x", r <= factor))

    target_tp("puts", 64, 2, "puts, 3 members, 64 clients")
    target_lat("puts", 64, "p99", 0.6, "puts, 3 members, 64 clients")
    target_tp("puts", 256, 2, "puts, 3 members, 256 clients")
    target_lat("puts", 256, "p99", 0.6, "puts, 3 members, 256 clients")
    target_lat("puts", 1, "p50", 0.8, "puts, 3 members, 1 client")
    target_tp("gets", 64, 3, "linearizable gets, 3 members, 64 clients")
    po, pe = pre("omnikv-3"), pre("etcd-3")
    if po:
        o1m = g("omnikv-3", "1m-puts", c) or {}
        o1g = g("omnikv-3", "1m-gets", c) or {}
        held = [max(xs) for xs in zip(po["rss_after_mb"], o1m.get("rss_mb_max", po["rss_after_mb"]),
                                      o1g.get("rss_mb_max", po["rss_after_mb"]))]
        e_held = []
        if pe:
            e1m = g("etcd-3", "1m-puts", c) or {}
            e1g = g("etcd-3", "1m-gets", c) or {}
            e_held = [max(xs) for xs in zip(pe["rss_after_mb"],
                                            e1m.get("rss_mb_max", pe["rss_after_mb"]),
                                            e1g.get("rss_mb_max", pe["rss_after_mb"]))]
        rows.append((f"each kvd < 150 MB RSS after {big} keys written (largest of: after the "
                     "preload, and the peaks of the runs over those keys)", mbs(held),
                     mbs(e_held), "", max(held) < 150))
    else:
        rows.append((f"each kvd < 150 MB RSS after {big} keys written", "not measured", "", "",
                     None))
    if fo["omnikv-3"]:
        om = statistics.median(fo["omnikv-3"])
        em = statistics.median(fo["etcd-3"]) if fo["etcd-3"] else None
        rows.append((f"failover < 0.5 s: first acknowledged write after kill -9 of the leader "
                     f"(median of {len(fo['omnikv-3'])})", f"{om:.3f} s",
                     f"{em:.3f} s" if em is not None else "n/a",
                     f"{om / em:.3f}x" if em else "n/a", om < 0.5))
    else:
        rows.append(("failover < 0.5 s", "not measured", "", "", None))
    for name, a, b, r, met in rows:
        A(f"| {name} | {a} | {b} | {r} | "
          f"{'n/a' if met is None else 'met' if met else '**missed**'} |")
    missed = [r[0] for r in rows if r[4] is False]
    A("")
    A("Missed: " + ("; ".join(missed) if missed else "none") + ".\n")
    if args.notes:
        with open(args.notes) as f:
            A(f.read().rstrip() + "\n")

    # ---- point by point
    A("## omnikv vs etcd, point by point (3 members each)\n")
    A("Ratios are omnikv / etcd: above 1 omnikv does more per second; below 1 its latency "
      "is lower. CPU is CPU-microseconds per successful operation summed over every server "
      "process and the load generator.\n")
    A(f"![omnikv / etcd throughput per point]({plots_rel}/ratios.svg)\n")
    A("| point | omnikv-3 | etcd-3 (native gRPC) | ops/s ratio | p99 ratio | CPU us/op, "
      "omnikv / etcd |")
    A("|---|---|---|---|---|---|")
    ratio_bars = []
    keys_sorted = sorted({(p, cl) for (s, p, cl) in med if s in ("omnikv-3", "etcd-3")},
                         key=lambda k: (POINT_ORDER.index(k[0]) if k[0] in POINT_ORDER else 99,
                                        k[1]))
    for point, cl in keys_sorted:
        o, e = g("omnikv-3", point, cl), g("etcd-3", point, cl)
        cell = lambda r: (f"{fmt(r['ops_per_sec'])}/s, p50 {r['p50_ms']:.2f} ms, "
                          f"p99 {r['p99_ms']:.2f} ms" if r else "n/a")
        rt = o["ops_per_sec"] / e["ops_per_sec"] if o and e and e["ops_per_sec"] else None
        rl = o["p99_ms"] / e["p99_ms"] if o and e and e["p99_ms"] else None
        label = point_label(point, cl, args.big_keys)
        ratio_bars.append((label, rt))
        A(f"| {label} | {cell(o)} | {cell(e)} | {f'{rt:.2f}x' if rt else 'n/a'} | "
          f"{f'{rl:.2f}x' if rl else 'n/a'} | "
          f"{fmt(o['cpu_us_per_op']) if o else 'n/a'} / {fmt(e['cpu_us_per_op']) if e else 'n/a'} |")
    if po or pe:
        cellp = lambda p: (f"{p['seconds']:.1f} s ({fmt(p['keys_per_sec'])} keys/s)" if p
                           else "n/a")
        rp = po["keys_per_sec"] / pe["keys_per_sec"] if po and pe else None
        A(f"| {big} keys: preload, transactions of {args.preload_batch} puts, "
          f"{args.preload_clients} clients | {cellp(po)} | {cellp(pe)} | "
          f"{f'{rp:.2f}x' if rp else 'n/a'} | | "
          f"{fmt(po['cpu_us_per_key']) if po else 'n/a'} / "
          f"{fmt(pe['cpu_us_per_key']) if pe else 'n/a'} per key |")
        A(f"| {big} keys: each replica's RSS after the preload | "
          f"{mbs(po['rss_after_mb']) if po else 'n/a'} | {mbs(pe['rss_after_mb']) if pe else 'n/a'}"
          " | | | |")
    if fo["omnikv-3"] and fo["etcd-3"]:
        om, em = statistics.median(fo["omnikv-3"]), statistics.median(fo["etcd-3"])
        A(f"| failover: first write after kill -9 of the leader | {om:.3f} s | {em:.3f} s | | "
          f"{om / em:.2f}x | |")
    A("")

    # ---- every run's medians
    A("## Every point in full\n")
    A("*client* is the load generator's own share of the machine, in cores; fsyncs are fsync + "
      "fdatasync calls of all server processes per operation; RSS is each server process's "
      "peak during the point's runs; misses are gets that found no key (0 expected: the key "
      "space is loaded first).\n")
    A("| system | point | ops/s | p50 ms | p90 ms | p99 ms | max ms | CPU us/op | client "
      "cores | fsyncs/op | peak RSS | errors | misses |")
    A("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    all_keys = sorted(med, key=lambda k: (POINT_ORDER.index(k[1]) if k[1] in POINT_ORDER else 99,
                                          k[2], args.systems.index(k[0])
                                          if k[0] in args.systems else 99))
    for s, point, cl in all_keys:
        r = med[(s, point, cl)]
        A(f"| {s} | {point_label(point, cl, args.big_keys)} | {fmt(r['ops_per_sec'])} | "
          f"{r['p50_ms']:.2f} | {r['p90_ms']:.2f} | {r['p99_ms']:.2f} | {r['max_ms']:.1f} | "
          f"{fmt(r['cpu_us_per_op'])} | {r['client_cpu_cores']:.2f} | "
          f"{r['fsyncs_per_op']:.3f} | {mbs(r['rss_mb_max'])} | {fmt(r['errors'])} | "
          f"{fmt(r['misses'])} |")
    A("")

    # ---- puts vs clients
    if any(g(s, "puts", cl) for s in args.systems for cl in args.clients):
        A("## Puts vs concurrent clients\n")
        A(f"![throughput]({plots_rel}/throughput.svg) ![p99]({plots_rel}/p99.svg)\n")
        A("Ratios omnikv / etcd (throughput; p99), 3 members and 1 member:\n")
        A("| clients | 3: puts/s | 3: p99 | 1: puts/s | 1: p99 |")
        A("|---|---|---|---|---|")
        for cl in args.clients:
            cells = []
            for a, b in (("omnikv-3", "etcd-3"), ("omnikv-1", "etcd-1")):
                ra, rb = g(a, "puts", cl), g(b, "puts", cl)
                cells += [f"{ra['ops_per_sec'] / rb['ops_per_sec']:.2f}x" if ra and rb
                          else "n/a",
                          f"{ra['p99_ms'] / rb['p99_ms']:.2f}x" if ra and rb else "n/a"]
            A(f"| {cl} | " + " | ".join(cells) + " |")
        A("")

    # ---- the 1M data set
    if preloads:
        A(f"## A data set of {big} keys\n")
        A(f"Fresh 3-member clusters of each system, loaded by `omnikv-bench load`: keys "
          f"`bench-0` .. `bench-{args.big_keys - 1}` with {args.value_size}-byte values, each "
          f"once, in transactions of up to {args.preload_batch} puts (both systems' default "
          f"limit per transaction), {args.preload_clients} in flight over all members; "
          f"then the {big}-key points above, over the same keys. RSS after the preload is "
          "sampled 2 s after it ends.\n")
        A("| system | keys | seconds | keys/s | transactions | retries | CPU us/key | peak RSS "
          "while loading | RSS after | peak RSS in the runs over the keys |")
        A("|---|---|---|---|---|---|---|---|---|---|")
        for p in preloads:
            runs_peak = [max(xs) for xs in zip(*[g(p["system"], pt, c)["rss_mb_max"]
                                                 for pt in ("1m-puts", "1m-gets")
                                                 if g(p["system"], pt, c)])] or []
            A(f"| {p['system']} | {p['count']:,} | {p['seconds']:.1f} | "
              f"{fmt(p['keys_per_sec'])} | {fmt(p['transactions'])} | {p['retries']} | "
              f"{fmt(p['cpu_us_per_key'])} | {mbs(p['rss_peak_mb'])} | "
              f"{mbs(p['rss_after_mb'])} | {mbs(runs_peak)} |")
        A("")

    # ---- failover
    if failover:
        A("## Leader failover\n")
        A("kill -9 of the current leader; `omnikv-bench first-write`, connected to the other "
          "members beforehand through each system's own client, then puts through them in "
          "turn (each attempt times out after 0.2 s, 10 ms pause between attempts) until one "
          "is acknowledged. The killed member is restarted with its data and the cluster "
          "settles before the next trial. Defaults of both systems: kvd elects after 15 ticks "
          "of 10 ms; etcd's election timeout is 1000 ms (heartbeat 100 ms).\n")
        A("| system | trials (s) | median s |")
        A("|---|---|---|")
        for s, ts in fo.items():
            if ts:
                A(f"| {s} | {', '.join(f'{t:.3f}' for t in ts)} | "
                  f"{statistics.median(ts):.3f} |")
        A("")

    # ---- memory over the whole run
    A("## Memory\n")
    A("Peak RSS of each server process over every run of this report (RSS grows with what a "
      "replica has written so far, not only with the load of the moment):\n")
    A("| system | peak RSS |")
    A("|---|---|")
    for s in args.systems:
        peaks = [r["rss_mb"] for r in meta.get("all_runs", []) if r["system"] == s and
                 not r["point"].startswith("1m-")]
        if peaks:
            A(f"| {s} ({args.keys:,}-key points) | "
              f"{mbs([max(p[i] for p in peaks) for i in range(len(peaks[0]))])} |")
    A("")

    if add_replica:
        A(f"## Time to add a replica holding {args.add_keys:,} keys\n")
        A("A 4th member is added to a fresh 3-member cluster loaded with that many keys "
          f"(sequential puts of {args.value_size}-byte values, 64 clients): from the start of "
          "the procedure (omnikv: start the joiner, `kvctl reconfigure --nodes 1,2,3,4`; etcd: "
          "`member add`, start the member) until the new member serves every key from its own "
          "state (omnikv: `/readyz` and its key count; etcd: a serializable count). One trial "
          "each.\n")
        A("| system | keys | seconds to serving | of which the command | new member's RSS MB |")
        A("|---|---|---|---|---|")
        for r in add_replica:
            if r.get("measured"):
                A(f"| {r['system']} | {r['keys']:,} | {r['seconds']:.2f} | "
                  f"{r['command_seconds']:.2f} | {r['new_member_rss_mb']:.0f} |")
            else:
                A(f"| {r.get('system', 'omnikv')} | | {r['why']} | | |")
        A("")

    A("## Idle cost\n")
    A("Server CPU of each cluster with no load (2 s), in cores: " +
      ", ".join(f"{k} {v:.3f}" for k, v in meta["idle_cpu"].items()) + ".\n")
    raw = os.path.relpath(os.path.join(args.artifacts, "results", "latest.json"),
                          os.path.dirname(os.path.abspath(args.out)))
    A(f"Raw runs: [{raw}]({raw}).\n")
    A("---\n")
    A("History: until issue 16 this file's etcd figures were measured through etcd's JSON "
      "gRPC-gateway (`kvctl bench --target etcd`, since removed), which no etcd user drives "
      "and which cost etcd much of its throughput; they are not comparable with the figures "
      "above.")
    with open(args.out, "w") as f:
        f.write("\n".join(L) + "\n")


# ---------------------------------------------------------------- main


def common_args(ap):
    """The flags bench/run.py and bench/data_model.py share: binaries and run lengths."""
    ap.add_argument("--bin", default=os.environ.get("OMNIKV_BIN_DIR",
                                                    os.path.join(ROOT, "target", "release")),
                    help="directory holding kvd, kvctl and omnikv-bench (release build)")
    ap.add_argument("--kvd", help="kvd binary [default: BIN/kvd]")
    ap.add_argument("--kvd-label", help="how to name the kvd build in the report")
    ap.add_argument("--kvctl", help="kvctl binary [default: BIN/kvctl]")
    ap.add_argument("--bench", help="the benchmark tool, omnikv-bench (bench/driver) "
                    "[default: BIN/omnikv-bench]")
    ap.add_argument("--etcd", default=shutil.which("etcd") or "etcd")
    ap.add_argument("--duration", type=float, default=5.0, help="seconds measured per run")
    ap.add_argument("--warmup", type=float, default=1.0, help="seconds before measuring")
    ap.add_argument("--rounds", type=int, default=3, help="runs per point (median)")
    ap.add_argument("--value-size", type=int, default=100)
    ap.add_argument("--keys", type=int, default=10_000)


def resolve_binaries(args, extra=()):
    """Fills in the binaries' default paths; exits when one is missing."""
    args.kvd = args.kvd or os.path.join(args.bin, "kvd")
    args.kvctl = args.kvctl or os.path.join(args.bin, "kvctl")
    args.bench = args.bench or os.path.join(args.bin, "omnikv-bench")
    for b in (args.kvd, args.kvctl, args.bench, args.etcd, *extra):
        if not (os.path.isfile(b) and os.access(b, os.X_OK)) and not shutil.which(b):
            sys.exit(f"bench: {b} not found (build with `cargo build --release -p kvd -p kvctl "
                     "-p omnikv-bench`; etcd: bench/install-etcd.sh)")


POINT_GROUPS = ["puts", "follower", "values", "mix", "gets", "1m", "failover", "single", "add"]


def specs(group, args):
    """The runs (keyword arguments of run_load) of one point group, per round."""
    c = args.point_clients
    return {
        "puts": [dict(point="puts", clients=n) for n in args.clients],
        "follower": [dict(point="puts-follower", clients=1, via="follower")],
        "values": [dict(point="puts-1k", clients=c, value_size=1024),
                   dict(point="puts-16k", clients=c, value_size=16384)],
        "mix": [dict(point="mix", clients=c, read_ratio=0.5)],
        "gets": [dict(point="gets", clients=c, read_ratio=1.0),
                 dict(point="gets-local", clients=c, read_ratio=1.0, consistency="local")],
        "1m": [dict(point="1m-puts", clients=c, keys=args.big_keys),
               dict(point="1m-gets", clients=c, read_ratio=1.0, keys=args.big_keys)],
    }.get(group, [])


def interleaved(pair, phase, args, runs):
    """--rounds rounds of every run of `phase` on both clusters of `pair`, the order of the
    two systems swapped every other round."""
    for rnd in range(args.rounds):
        for spec in phase:
            for c in pair if rnd % 2 == 0 else pair[::-1]:
                r = run_load(c, args=args, **spec)
                r["round"] = rnd + 1
                runs.append(r)


def idle_cpu(pair, meta):
    time.sleep(1.0)
    for c in pair:
        pids = c.pids()
        c0 = sum(map(cpu_seconds, pids))
        time.sleep(2.0)
        meta["idle_cpu"][c.name] = (sum(map(cpu_seconds, pids)) - c0) / 2.0


def start_pair(pair, live):
    """Starts both clusters of a pair (stopped by stop_all on the way out) and waits for them."""
    for c in pair:
        live.append(c)
        c.start()
    for c in pair:
        c.wait_ready()


def stop_pair(pair, live):
    for c in pair:
        c.stop()
        live.remove(c)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n\n", 2)[2])
    common_args(ap)
    ap.add_argument("--clients", default="1,64,256", help="client counts of the puts points")
    ap.add_argument("--point-clients", type=int, default=64,
                    help="clients of the values, mix, gets and 1m points")
    ap.add_argument("--points", default=",".join(POINT_GROUPS),
                    help="comma list of: " + ",".join(POINT_GROUPS))
    ap.add_argument("--skip", default="", help="comma list of point groups left out")
    ap.add_argument("--big-keys", type=int, default=1_000_000, help="keys of the 1m points")
    ap.add_argument("--preload-clients", type=int, default=64)
    ap.add_argument("--preload-batch", type=int, default=128, help="puts per transaction")
    ap.add_argument("--failover-trials", type=int, default=5)
    ap.add_argument("--add-keys", type=int, default=100_000,
                    help="keys held by the cluster a 4th member is added to")
    ap.add_argument("--port-base", type=int, default=27100)
    ap.add_argument("--work", help="data directory [default: a fresh temporary one, removed]")
    ap.add_argument("--out", default=os.path.join(ROOT, "BENCHMARKS.md"))
    ap.add_argument("--artifacts", default=os.path.join(ROOT, "bench"),
                    help="where plots/ and results/ go")
    ap.add_argument("--notes", help="a Markdown file put under the targets (the reading of "
                    "the misses, written by hand)")
    ap.add_argument("--from-json", help="only rewrite the report and plots from a results "
                    "file of an earlier run (same flags as that run)")
    ap.add_argument("--no-perf", action="store_true", help="count fsyncs from server metrics")
    args = ap.parse_args()
    args.clients = [int(x) for x in args.clients.split(",")]
    points = [p for p in filter(None, args.points.split(",")) if p not in args.skip.split(",")]
    unknown = set(points) - set(POINT_GROUPS)
    if unknown:
        sys.exit(f"bench: unknown point(s) {','.join(sorted(unknown))} "
                 f"(known: {','.join(POINT_GROUPS)})")
    args.systems = ["omnikv-3", "etcd-3"] + (["omnikv-1", "etcd-1"] if "single" in points
                                             else [])
    if args.from_json:
        with open(args.from_json) as f:
            old = json.load(f)
        if not all("point" in r for r in old["runs"]):
            sys.exit(f"bench: {args.from_json} is from an older bench/run.py (no points)")
        report(args, old["meta"], old["runs"], old["failover"], old["preload"],
               old["add_replica"])
        return
    resolve_binaries(args)
    args.perf = not args.no_perf and perf_usable()
    work = args.work or tempfile.mkdtemp(prefix="omnikv-bench-")
    started = time.time()
    meta = {"started": time.strftime("%Y-%m-%d %H:%M %Z"),
            "command": shlex.join(["bench/run.py"] + sys.argv[1:]),
            "machine": machine_info(work), "versions": versions(args),
            "etcd_client": "native-grpc", "points": points,
            "fsync_source": "fsync + fdatasync syscalls of the server processes "
                            "(perf stat tracepoints)" if args.perf else
                            "the servers' own counters (omnikv_fsyncs_total; etcd WAL fsyncs "
                            "+ backend commits)",
            "idle_cpu": {}}
    log(f"work dir {work}; kvd {args.kvd}; etcd {args.etcd}; perf fsync counting {args.perf}; "
        f"points {','.join(points)}")

    pb = args.port_base
    runs, failover, preloads, adds = [], [], [], []
    live = []
    stop_all = stopper(live, work, remove=not args.work)
    try:
        # The 3-member points over --keys keys; the large values last (so that no get reads
        # one), then failover, which restarts members.
        small = [g for g in ("puts", "follower", "mix", "gets") if g in points]
        if small or "values" in points or "failover" in points:
            pair = [Cluster("omnikv-3", "omnikv", 3, pb, work, args),
                    Cluster("etcd-3", "etcd", 3, pb + 200, work, args)]
            start_pair(pair, live)
            idle_cpu(pair, meta)
            if small or "values" in points:
                for c in pair:
                    preload(c, args.keys, args, settle=0)
            interleaved(pair, [s for g in small for s in specs(g, args)], args, runs)
            if "values" in points:
                interleaved(pair, specs("values", args), args, runs)
            if "failover" in points:
                for t in range(args.failover_trials):
                    for c in pair:
                        failover.append(failover_trial(c, t + 1, args))
            stop_pair(pair, live)
        if "1m" in points:
            pair = [Cluster("omnikv-3", "omnikv", 3, pb + 600, work, args, "omnikv-3-big"),
                    Cluster("etcd-3", "etcd", 3, pb + 700, work, args, "etcd-3-big")]
            start_pair(pair, live)
            for c in pair:
                preloads.append(preload(c, args.big_keys, args))
            interleaved(pair, specs("1m", args), args, runs)
            stop_pair(pair, live)
        if "single" in points:
            pair = [Cluster("omnikv-1", "omnikv", 1, pb + 100, work, args),
                    Cluster("etcd-1", "etcd", 1, pb + 300, work, args)]
            start_pair(pair, live)
            idle_cpu(pair, meta)
            interleaved(pair, specs("puts", args), args, runs)
            stop_pair(pair, live)
        if "add" in points:
            for kind, port in (("omnikv", pb + 400), ("etcd", pb + 500)):
                adds.append(add_replica(args, work, port, kind))
    finally:
        stop_all()
    finish_run(meta, started)
    report(args, meta, runs, failover, preloads, adds)


def report(args, meta, runs, failover, preloads, add_replica):
    """Medians, plots, results/latest.json and the Markdown report."""
    med = medians(runs, key=by_point)
    meta["all_runs"] = [{"system": r["system"], "point": r["point"], "rss_mb": r["rss_mb"]}
                        for r in runs]
    plots = os.path.join(args.artifacts, "plots")
    os.makedirs(plots, exist_ok=True)
    series = {s: [(c, med[(s, "puts", c)]) for c in args.clients if (s, "puts", c) in med]
              for s in args.systems}
    svg_chart(os.path.join(plots, "throughput.svg"), "Puts: throughput vs clients",
              "puts/s (median)", {s: [(c, r["ops_per_sec"]) for c, r in pts]
                                  for s, pts in series.items()}, args.clients)
    svg_chart(os.path.join(plots, "p99.svg"), "Puts: p99 latency vs clients",
              "p99 latency, ms (log scale)",
              {s: [(c, r["p99_ms"]) for c, r in pts] for s, pts in series.items()},
              args.clients, log_y=True)
    bars = []
    for (s, point, c) in sorted(med, key=lambda k: (POINT_ORDER.index(k[1])
                                                      if k[1] in POINT_ORDER else 99, k[2])):
        if s == "omnikv-3" and ("etcd-3", point, c) in med:
            e = med[("etcd-3", point, c)]["ops_per_sec"]
            bars.append((point_label(point, c, args.big_keys),
                         med[(s, point, c)]["ops_per_sec"] / e if e else None))
    svg_ratios(os.path.join(plots, "ratios.svg"),
               "omnikv-3 / etcd-3 operations per second (dashed: parity)", bars)
    results = os.path.join(args.artifacts, "results")
    os.makedirs(results, exist_ok=True)
    with open(os.path.join(results, "latest.json"), "w") as f:
        json.dump({"meta": {k: v for k, v in meta.items() if k != "all_runs"}, "runs": runs,
                   "failover": failover, "preload": preloads, "add_replica": add_replica},
                  f, indent=1)
    plots_rel = os.path.relpath(plots, os.path.dirname(os.path.abspath(args.out)))
    write_report(args, meta, med, failover, preloads, add_replica, plots_rel)
    log(f"wrote {args.out}, {plots}/{{throughput,p99,ratios}}.svg, {results}/latest.json "
        f"in {meta['elapsed_min']:.1f} min")


if __name__ == "__main__":
    main()

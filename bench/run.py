#!/usr/bin/env python3
"""omnikv vs etcd, side by side on this machine, in one run (issue 6). Python stdlib only.

Starts real clusters on loopback, every write fsynced (kvd's default; etcd's default):
  omnikv-3  three kvd replicas          etcd-3  three etcd members
  omnikv-1  kvd standalone (NODES=[1])  etcd-1  one etcd member
and drives all of them with the same load generator, `omnikv-bench kv` (bench/driver: kvctl
bench's loop and flags; omnikv over its HTTP API, etcd over its native gRPC API with the
etcd-client crate, as each system's users run it). Each pair that is compared runs at
the same time and the runs are interleaved point by point (omnikv, etcd, omnikv, etcd, ...) so
that machine noise hits both; every figure is the median of --rounds runs.

Measured per run: throughput, latency p50/p90/p99/max (the load generator), CPU of every server
process (/proc/PID/stat) plus the client's own (its getrusage) per successful operation, fsync +
fdatasync syscalls of the server processes per operation (`perf stat` tracepoints; kvd's and
etcd's own counters as a fallback), peak RSS of every server process (/proc/PID/status,
sampled every 0.25 s). Also: leader failover (kill -9 the leader, time to the first successful
write through another member, median of --failover-trials), linearizable vs local reads.

Writes BENCHMARKS.md, bench/plots/*.svg and bench/results/latest.json.
  usage: bench/run.py --bin target/release [--duration 5] [--rounds 3] ...   (see --help)
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


def log(*a):
    print("[bench]", *a, file=sys.stderr, flush=True)


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

    def __init__(self, name, kind, size, port_base, work, args):
        self.name, self.kind, self.size, self.args = name, kind, size, args
        # How clients reach it: the URL scheme, the ssl.SSLContext for https, and headers
        # every probe sends (bench/tls.py sets them for its secured clusters).
        self.scheme, self.ssl, self.headers = "http", None, {}
        self.dir = os.path.join(work, name)
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
                   "--initial-cluster", cluster, "--initial-cluster-token", self.name,
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


def run_load(cluster, clients, read_ratio=0.0, consistency="linearizable", args=None,
             via="leader"):
    """One `omnikv-bench kv` run. Endpoints are ordered leader first (via="leader") or a follower
    first (via="follower"), the same way for both systems: with one client, all its
    operations go to that member; with more, connections spread over all members."""
    lead = cluster.leader() or 0
    first = lead if via == "leader" or cluster.size == 1 else (lead + 1) % cluster.size
    cmd = [args.bench, *cluster.bench_flags(), "--target", cluster.kind, "--endpoints",
           ",".join(map(cluster.url, cluster.endpoints_from(first))), "--consistency",
           consistency, "-o", "json", "--timeout", "5s", "kv",
           "--clients", str(clients), "--duration", f"{args.duration}s",
           "--warmup", f"{args.warmup}s", "--value-size", str(args.value_size),
           "--keys", str(args.keys), "--read-ratio", str(read_ratio)]
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
    while True:
        for pid in pids:
            rss[pid] = max(rss[pid], rss_mb(pid))
        try:
            p.wait(timeout=0.25)
            break
        except subprocess.TimeoutExpired:
            pass
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
        "system": cluster.name if via == "leader" else f"{cluster.name} via follower",
        "clients": clients, "read_ratio": read_ratio,
        "consistency": consistency, "ops_per_sec": r["ops_per_sec"],
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
    log(f"{res['system']:9} c={clients:<3} r={read_ratio} {consistency:12} "
        f"{res['ops_per_sec']:8.0f} ops/s p50 {res['p50_ms']:7.2f} p99 {res['p99_ms']:7.2f} ms "
        f"cpu {res['cpu_us_per_op']:6.0f} us/op fsync/op {res['fsyncs_per_op']:.3f} "
        f"client {res['client_cpu_cores']:.2f} cores rss {res['rss_mb']} err {errors}")
    return res


# ---------------------------------------------------------------- failover


def failover_trial(cluster, trial):
    """kill -9 the leader; seconds until a write succeeds through another member."""
    lead = None
    end = time.monotonic() + 30
    while lead is None and time.monotonic() < end:
        lead = cluster.leader()
        if lead is None:
            time.sleep(0.1)
    if lead is None:
        raise RuntimeError(f"{cluster.name}: no leader before failover trial")
    others = cluster.endpoints(exclude=lead)
    cluster.kill(lead)
    t0 = time.monotonic()
    n = 0
    while True:
        e = others[n % len(others)]
        n += 1
        if cluster.put(e, f"failover-{trial}", "x", 0.2):
            took = time.monotonic() - t0
            break
        if time.monotonic() - t0 > 30:
            took = float("inf")
            break
        time.sleep(0.01)
    # Bring the killed member back (same data) and let the cluster settle.
    cluster.start_member(lead)
    cluster.wait_ready()
    time.sleep(1.0)
    log(f"{cluster.name:9} failover trial {trial}: killed member {lead + 1}, "
        f"first write after {took:.3f} s")
    return {"system": cluster.name, "killed": lead + 1, "seconds": round(took, 3)}


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
           "errors"]


def medians(runs):
    """Group runs by (system, clients, read_ratio, consistency); median of every metric."""
    groups = {}
    for r in runs:
        groups.setdefault((r["system"], r["clients"], r["read_ratio"], r["consistency"]),
                          []).append(r)
    out = {}
    for k, rs in groups.items():
        m = {f: statistics.median(x[f] for x in rs) for f in NUMERIC}
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


def write_report(args, meta, med, failover, reads_systems, add_replica, plots_rel):
    xs = args.clients
    # Results from before the benchmark tool (no etcd_client in meta) drove etcd through its
    # JSON gateway (kvctl bench --target etcd).
    native = meta.get("etcd_client") == "native-grpc"
    L = []
    A = L.append
    A("# omnikv benchmarks: omnikv vs etcd, same machine, same run\n")
    A("<!-- Generated by `just bench` (bench/run.py): edit the script, not this file. -->\n")
    A(f"Run {meta['started']} ({meta['elapsed_min']:.1f} min), command:\n")
    A(f"```\n{meta['command']}\n```\n")
    A(f"Every figure is the **median of {args.rounds} run(s)**; the runs of omnikv and etcd are interleaved point by point "
      "(omnikv, etcd, omnikv, etcd, ...) while both clusters of a pair are up, so machine noise "
      "hits both. All servers and the load generator share this machine. Writes are `put`s of "
      f"{args.value_size}-byte values over {args.keys:,} keys, uniform; each run is "
      f"{args.duration} s after a {args.warmup} s warmup. Both systems fsync every commit "
      "(their defaults; etcd 3-member and 1-member as shipped by Debian, default flags). " +
      ("etcd is driven through its native gRPC API (the etcd-client crate in the benchmark "
       "tool, `omnikv-bench --target etcd`), as its users run it.\n" if native else
       "etcd is driven through its JSON gRPC-gateway on the client port, which costs etcd "
       "some CPU (JSON decoding and a loopback gRPC hop inside etcd) that a native gRPC client "
       "would not: etcd's CPU figures here are an upper bound for etcd.\n"))
    A("Analysis of the misses and what to change in kvd: [bench/PROFILE.md](bench/PROFILE.md).\n")
    m = meta["machine"]
    v = meta["versions"]
    A("## Machine and versions\n")
    A(f"- CPU: {m['cpu']}, {m['cores']} cores (shared with other work: load average "
      f"{m['loadavg_at_start']} at start, {meta['loadavg_at_end']} at end); memory "
      f"{m['memory']}; kernel {m['kernel']}; data on {m['work_fs']}")
    A(f"- omnikv tree {v['omnikv_tree']}; kvd: {v['kvd']}; {v['kvctl']}; {v['rustc']}")
    A(f"- etcd: {v['etcd']} ({v['etcd_go']}), driven through " +
      ("its native gRPC API (`omnikv-bench --target etcd`, etcd-client crate)" if native else
       "its v3 JSON gRPC-gateway (`kvctl bench --target etcd`)"))
    A(f"- fsyncs counted as {meta['fsync_source']}\n")

    def g(sys_, c, rr=0.0, cons="linearizable"):
        return med.get((sys_, c, rr, cons))

    def ratio(a, b):
        return a / b if a and b else None

    # targets
    A("## Targets\n")
    A("| target | omnikv | etcd | ratio | met |")
    A("|---|---|---|---|---|")
    rows = []
    o, e = g("omnikv-3", 64), g("etcd-3", 64)
    if o and e:
        r = ratio(o["ops_per_sec"], e["ops_per_sec"])
        rows.append(("writes, 3 replicas, 64 clients: throughput >= 1.5x etcd-3 (aim 2x)",
                     f"{fmt(o['ops_per_sec'])}/s", f"{fmt(e['ops_per_sec'])}/s",
                     f"{r:.2f}x", r >= 1.5))
        rows.append(("writes, 3 replicas, 64 clients: p99 <= etcd-3's",
                     f"{o['p99_ms']:.2f} ms", f"{e['p99_ms']:.2f} ms",
                     f"{o['p99_ms'] / e['p99_ms']:.2f}x", o["p99_ms"] <= e["p99_ms"]))
    o, e = g("omnikv-3", 1), g("etcd-3", 1)
    if o and e:
        rows.append(("writes, 3 replicas, 1 client: p50 <= etcd-3's",
                     f"{o['p50_ms']:.2f} ms", f"{e['p50_ms']:.2f} ms",
                     f"{o['p50_ms'] / e['p50_ms']:.2f}x", o["p50_ms"] <= e["p50_ms"]))
    o, e = g("omnikv-3 via follower", 1), g("etcd-3 via follower", 1)
    if o and e:
        rows.append(("(same, the client talking to a follower, which forwards to the leader)",
                     f"{o['p50_ms']:.2f} ms", f"{e['p50_ms']:.2f} ms",
                     f"{o['p50_ms'] / e['p50_ms']:.2f}x", o["p50_ms"] <= e["p50_ms"]))
    o, e = g("omnikv-3", 64, 1.0), g("etcd-3", 64, 1.0)
    if o and e:
        r = ratio(o["ops_per_sec"], e["ops_per_sec"])
        rows.append(("linearizable reads, 3 replicas, 64 clients: throughput >= etcd-3's",
                     f"{fmt(o['ops_per_sec'])}/s", f"{fmt(e['ops_per_sec'])}/s",
                     f"{r:.2f}x", r >= 1.0))
    fo = {s: [t["seconds"] for t in failover if t["system"] == s] for s in ("omnikv-3", "etcd-3")}
    if fo["omnikv-3"]:
        om = statistics.median(fo["omnikv-3"])
        em = statistics.median(fo["etcd-3"]) if fo["etcd-3"] else None
        rows.append((f"failover: first write <= 1.5 s after kill -9 of the leader "
                     f"(median of {len(fo['omnikv-3'])})", f"{om:.3f} s",
                     f"{em:.3f} s" if em is not None else "n/a",
                     f"{om / em:.2f}x" if em else "n/a", om <= 1.5))
    o = g("omnikv-3", 64)
    if o:
        mx = max(o["rss_mb_max"])
        rows.append(("memory: each kvd <= 150 MB RSS during the 64-client write run",
                     " / ".join(f"{x:.0f}" for x in o["rss_mb_max"]) + " MB",
                     " / ".join(f"{x:.0f}" for x in g("etcd-3", 64)["rss_mb_max"]) + " MB"
                     if g("etcd-3", 64) else "n/a", "", mx <= 150))
    for name, a, b, r, met in rows:
        A(f"| {name} | {a} | {b} | {r} | {'yes' if met else '**no**'} |")
    A("")

    # plots
    A("## Writes vs concurrent clients\n")
    A(f"![throughput]({plots_rel}/throughput.svg) ![p99]({plots_rel}/p99.svg)\n")
    A("CPU is CPU-microseconds per successful put summed over every server process and the "
      "client (the load generator); *client* is the load generator's own share of the machine in cores; "
      "fsyncs are fsync + fdatasync calls of all server processes per put. The load generator's endpoint "
      "list starts at the leader for both systems, so the single client of the 1-client "
      "point talks to the leader; the *via follower* rows repeat that point through a "
      "follower (which forwards to the leader).\n")
    A("| system | clients | puts/s | p50 ms | p90 ms | p99 ms | max ms | CPU us/put | client "
      "cores | fsyncs/put | errors |")
    A("|---|---|---|---|---|---|---|---|---|---|---|")
    for c in xs:
        extra = ["omnikv-3 via follower", "etcd-3 via follower"] if c == 1 else []
        for s in args.systems + extra:
            r = g(s, c)
            if r:
                A(f"| {s} | {c} | {fmt(r['ops_per_sec'])} | {r['p50_ms']:.2f} | "
                  f"{r['p90_ms']:.2f} | {r['p99_ms']:.2f} | {r['max_ms']:.1f} | "
                  f"{fmt(r['cpu_us_per_op'])} | {r['client_cpu_cores']:.2f} | "
                  f"{r['fsyncs_per_op']:.3f} | {fmt(r['errors'])} |")
    A("")
    A("Ratios omnikv-3 / etcd-3 (throughput; p99) and omnikv-1 / etcd-1:\n")
    A("| clients | 3: puts/s | 3: p99 | 1: puts/s | 1: p99 | omnikv-3 / omnikv-1 puts/s |")
    A("|---|---|---|---|---|---|")
    for c in xs:
        cells = []
        for a, b in (("omnikv-3", "etcd-3"), ("omnikv-1", "etcd-1")):
            ra, rb = g(a, c), g(b, c)
            cells += [f"{ra['ops_per_sec'] / rb['ops_per_sec']:.2f}x" if ra and rb else "n/a",
                      f"{ra['p99_ms'] / rb['p99_ms']:.2f}x" if ra and rb else "n/a"]
        ra, rb = g("omnikv-3", c), g("omnikv-1", c)
        cells.append(f"{ra['ops_per_sec'] / rb['ops_per_sec']:.2f}" if ra and rb else "n/a")
        A(f"| {c} | " + " | ".join(cells) + " |")
    A("")

    A("## Reads, 64 clients, 3 replicas: linearizable vs local\n")
    A("etcd's local read is a `serializable` range (the member's own state), omnikv's "
      "`consistency=local`; linearizable is each system's default (omnikv: a read barrier in "
      "the log; etcd: ReadIndex).\n")
    A("| system | consistency | gets/s | p50 ms | p99 ms | CPU us/get | client cores |")
    A("|---|---|---|---|---|---|---|")
    for cons in ("linearizable", "local"):
        for s in reads_systems:
            r = g(s, 64, 1.0, cons)
            if r:
                A(f"| {s} | {cons} | {fmt(r['ops_per_sec'])} | {r['p50_ms']:.2f} | "
                  f"{r['p99_ms']:.2f} | {fmt(r['cpu_us_per_op'])} | "
                  f"{r['client_cpu_cores']:.2f} |")
    A("")

    A("## Leader failover\n")
    A("kill -9 of the current leader, then writes through the other members (each attempt "
      "times out after 0.2 s, 10 ms pause between attempts) until one succeeds; the killed "
      "member is restarted with its data and the cluster settles before the next trial. "
      "Defaults of both systems: kvd elects after 15 ticks of 10 ms; etcd's election timeout "
      "is 1000 ms (heartbeat 100 ms).\n")
    A("| system | trials (s) | median s |")
    A("|---|---|---|")
    for s, ts in fo.items():
        if ts:
            A(f"| {s} | {', '.join(f'{t:.3f}' for t in ts)} | {statistics.median(ts):.3f} |")
    A("")

    A("## Memory (peak RSS during the 64-client write run, per server process)\n")
    A("| system | RSS MB |")
    A("|---|---|")
    for s in args.systems:
        r = g(s, 64)
        if r:
            A(f"| {s} | {' / '.join(f'{x:.0f}' for x in r['rss_mb_max'])} |")
    A("")

    A("RSS grows with what a replica has written so far (memtables), not only with the load of "
      "the moment, so the peak over the whole run matters too:\n")
    A("| system | peak RSS MB over every run of this report |")
    A("|---|---|")
    for s in args.systems:
        peaks = [r["rss_mb"] for r in meta.get("all_runs", []) if r["system"] == s]
        if peaks:
            A(f"| {s} | {' / '.join(f'{max(p[i] for p in peaks):.0f}' for i in range(len(peaks[0])))} |")
    A("")

    A(f"## Time to add a replica holding {args.add_keys:,} keys\n")
    A("A 4th member is added to a fresh 3-member cluster loaded with that many keys (sequential "
      f"puts of {args.value_size}-byte values): from the start of the procedure (omnikv: start "
      "the joiner, `kvctl reconfigure --nodes 1,2,3,4`; etcd: `member add`, start the member) "
      "until the new member serves every key from its own state (omnikv: `/readyz` and its key "
      "count; etcd: a serializable count). One trial each.\n")
    A("| system | keys | seconds to serving | of which the command | new member's RSS MB |")
    A("|---|---|---|---|---|")
    for r in (add_replica if isinstance(add_replica, list) else [add_replica]):
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
    A(f"Raw runs: [{raw}]({raw}).")
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


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    common_args(ap)
    ap.add_argument("--clients", default="1,4,16,64,256")
    ap.add_argument("--failover-trials", type=int, default=5)
    ap.add_argument("--add-keys", type=int, default=100_000,
                    help="keys held by the cluster a 4th member is added to")
    ap.add_argument("--skip", default="",
                    help="comma list of: single,reads,failover,add")
    ap.add_argument("--port-base", type=int, default=27100)
    ap.add_argument("--work", help="data directory [default: a fresh temporary one, removed]")
    ap.add_argument("--out", default=os.path.join(ROOT, "BENCHMARKS.md"))
    ap.add_argument("--artifacts", default=os.path.join(ROOT, "bench"),
                    help="where plots/ and results/ go")
    ap.add_argument("--from-json", help="only rewrite the report and plots from a results "
                    "file of an earlier run (same --clients/--rounds/--duration as that run)")
    ap.add_argument("--no-perf", action="store_true", help="count fsyncs from server metrics")
    args = ap.parse_args()
    resolve_binaries(args)
    args.clients = [int(x) for x in args.clients.split(",")]
    skip = set(filter(None, args.skip.split(",")))
    args.perf = not args.no_perf and perf_usable()
    work = args.work or tempfile.mkdtemp(prefix="omnikv-bench-")
    started = time.time()
    meta = {"started": time.strftime("%Y-%m-%d %H:%M %Z"),
            "command": shlex.join(["bench/run.py"] + sys.argv[1:]),
            "machine": machine_info(work), "versions": versions(args),
            "etcd_client": "native-grpc",
            "fsync_source": "fsync + fdatasync syscalls of the server processes "
                            "(perf stat tracepoints)" if args.perf else
                            "the servers' own counters (omnikv_fsyncs_total; etcd WAL fsyncs "
                            "+ backend commits)",
            "idle_cpu": {}}
    log(f"work dir {work}; kvd {args.kvd}; etcd {args.etcd}; perf fsync counting {args.perf}")

    pb = args.port_base
    pairs = [("omnikv-3", "etcd-3", 3, pb, pb + 200)]
    if "single" not in skip:
        pairs.append(("omnikv-1", "etcd-1", 1, pb + 100, pb + 300))
    args.systems = [s for p in pairs for s in p[:2]]
    runs, failover, adds = [], [], []
    live = []
    stop_all = stopper(live, work, remove=not args.work)
    if args.from_json:
        with open(args.from_json) as f:
            old = json.load(f)
        meta, runs, failover = old["meta"], old["runs"], old["failover"]
        report(args, meta, runs, failover, old["add_replica"])
        shutil.rmtree(work, ignore_errors=True)
        return
    try:
        for oname, ename, size, oport, eport in pairs:
            pair = [Cluster(oname, "omnikv", size, oport, work, args),
                    Cluster(ename, "etcd", size, eport, work, args)]
            for c in pair:
                live.append(c)
                c.start()
            for c in pair:
                c.wait_ready()
            time.sleep(1.0)
            for c in pair:
                pids = c.pids()
                c0 = sum(map(cpu_seconds, pids))
                time.sleep(2.0)
                meta["idle_cpu"][c.name] = (sum(map(cpu_seconds, pids)) - c0) / 2.0
            for rnd in range(args.rounds):
                for clients in args.clients:
                    for c in pair:
                        runs.append(run_load(c, clients, args=args))
            if size == 3 and 1 in args.clients:
                for rnd in range(args.rounds):
                    for c in pair:
                        runs.append(run_load(c, 1, args=args, via="follower"))
            if size == 3 and "reads" not in skip:
                for rnd in range(args.rounds):
                    for cons in ("linearizable", "local"):
                        for c in pair:
                            runs.append(run_load(c, 64, 1.0, cons, args=args))
            if size == 3 and "failover" not in skip:
                for t in range(args.failover_trials):
                    for c in pair:
                        failover.append(failover_trial(c, t + 1))
            for c in pair:
                c.stop()
                live.remove(c)
        if "add" not in skip:
            for kind, port in (("omnikv", pb + 400), ("etcd", pb + 500)):
                adds.append(add_replica(args, work, port, kind))
    finally:
        stop_all()
    meta["elapsed_min"] = (time.time() - started) / 60
    meta["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    report(args, meta, runs, failover, adds)


def report(args, meta, runs, failover, add_replica):
    """Medians, plots, results/latest.json and the Markdown report."""
    med = medians(runs)
    meta["all_runs"] = [{"system": r["system"], "rss_mb": r["rss_mb"]} for r in runs]

    plots = os.path.join(args.artifacts, "plots")
    os.makedirs(plots, exist_ok=True)
    sysw = args.systems
    svg_chart(os.path.join(plots, "throughput.svg"), "Writes: throughput vs clients",
              "puts/s (median)", {s: [(c, med[(s, c, 0.0, "linearizable")]["ops_per_sec"])
                                     for c in args.clients] for s in sysw}, args.clients)
    svg_chart(os.path.join(plots, "p99.svg"), "Writes: p99 latency vs clients",
              "p99 latency, ms (log scale)",
              {s: [(c, med[(s, c, 0.0, "linearizable")]["p99_ms"]) for c in args.clients]
               for s in sysw}, args.clients, log_y=True)
    results = os.path.join(args.artifacts, "results")
    os.makedirs(results, exist_ok=True)
    with open(os.path.join(results, "latest.json"), "w") as f:
        json.dump({"meta": {k: v for k, v in meta.items() if k != "all_runs"}, "runs": runs,
                   "failover": failover,
                   "add_replica": add_replica}, f, indent=1)
    plots_rel = os.path.relpath(plots, os.path.dirname(os.path.abspath(args.out)))
    write_report(args, meta, med, failover, ["omnikv-3", "etcd-3"], add_replica, plots_rel)
    log(f"wrote {args.out}, {plots}/throughput.svg, {plots}/p99.svg, {results}/latest.json "
        f"in {meta['elapsed_min']:.1f} min")


if __name__ == "__main__":
    main()

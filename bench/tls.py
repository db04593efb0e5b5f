#!/usr/bin/env python3
"""The cost of TLS: omnikv and etcd, each with and without TLS, in ONE interleaved run (issue 15).
Python stdlib only; reuses bench/run.py's clusters and load runs.

Four 3-member clusters are up at the same time on loopback, every write fsynced:
  omnikv-3      kvd, plaintext, no authentication
  omnikv-3-tls  kvd as a secured deployment runs it: HTTPS client API (KVD_CERT_FILE), peer
                mutual TLS (KVD_PEER_*), authentication on (KVD_AUTH_FILE); the load generator
                trusts the CA (--cacert) and sends a bearer token of a `write` user (--token).
                Certificates and token from `kvctl certs new` and `kvctl token new`.
  etcd-3        etcd, plaintext
  etcd-3-tls    etcd with client TLS (--cert-file/--key-file, https URLs) and peer TLS with
                client certificates required (--peer-client-cert-auth); certificates made
                with the openssl CLI (ECDSA P-256, IP SAN 127.0.0.1)
Each round, for each client count, the four run one after the other, in the opposite order
every other round (`omnikv-bench kv`,
bench/driver: omnikv over its HTTP API, etcd over its native gRPC API), puts of
--value-size-byte values through the leader. Reported: the median over --rounds rounds of
puts/s, p50, p99 and CPU per put, the ratio TLS / plaintext for each system, and omnikv-tls
against etcd-tls.
  usage: bench/tls.py --bin target/release [--duration 5] [--rounds 3] [--clients 1,64]
"""

import argparse
import os
import shlex
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run as base  # noqa: E402  (bench/run.py: clusters, load runs, machine info)

ROOT = base.ROOT
log = base.log
SYSTEMS = ["omnikv-3", "omnikv-3-tls", "etcd-3", "etcd-3-tls"]


class Pki:
    """Certificates and the token: omnikv's from kvctl, etcd's from openssl."""

    def __init__(self, args, work, systems):
        self.dir = os.path.join(work, "pki")
        os.makedirs(self.dir, exist_ok=True)
        self.kvd = os.path.join(self.dir, "omnikv")
        if "etcd-3-tls" in systems:
            self.etcd = os.path.join(self.dir, "etcd")
            os.makedirs(self.etcd, exist_ok=True)
            openssl_ca_and_server(self.etcd)
        if "omnikv-3-tls" not in systems:
            return
        sh([args.kvctl, "certs", "new", "--out", self.kvd, "--replicas", "3"])
        self.auth = os.path.join(self.kvd, "auth")
        self.token = sh([args.kvctl, "token", "new", "bench", "--role", "write",
                         "--auth-file", self.auth]).strip()
        self.token_file = os.path.join(self.kvd, "token")
        with open(os.open(self.token_file, os.O_WRONLY | os.O_CREAT, 0o600), "w") as f:
            f.write(self.token + "\n")

    def kvd_ca(self):
        return os.path.join(self.kvd, "ca.crt")

    def etcd_ca(self):
        return os.path.join(self.etcd, "ca.crt")


def sh(cmd):
    """stdout of `cmd`; exits with its stderr when it fails."""
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"bench: {shlex.join(cmd)} failed ({r.returncode}): {r.stderr.strip()}")
    return r.stdout


def openssl_ca_and_server(d):
    """ca.crt/ca.key and server.crt/server.key (ECDSA P-256, SANs 127.0.0.1 and localhost,
    serverAuth + clientAuth: etcd uses it on both its client and its peer port) in `d`."""
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    p = lambda n: os.path.join(d, n)  # noqa: E731
    sh(["openssl", "req", "-x509", *ec, "-keyout", p("ca.key"), "-out", p("ca.crt"),
        "-days", "7", "-subj", "/CN=bench-etcd-ca"])
    sh(["openssl", "req", *ec, "-keyout", p("server.key"), "-out", p("server.csr"),
        "-subj", "/CN=etcd"])
    with open(p("ext.cnf"), "w") as f:
        f.write("basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\n"
                "extendedKeyUsage=serverAuth,clientAuth\n"
                "subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    sh(["openssl", "x509", "-req", "-in", p("server.csr"), "-CA", p("ca.crt"), "-CAkey",
        p("ca.key"), "-CAcreateserial", "-out", p("server.crt"), "-days", "7", "-extfile",
        p("ext.cnf")])


class Secured(base.Cluster):
    """A cluster as a secured deployment runs it (see the module doc), probed over HTTPS."""

    def __init__(self, name, kind, size, port_base, work, args, pki):
        super().__init__(name, kind, size, port_base, work, args)
        self.pki = pki
        self.scheme = "https"
        ca = pki.kvd_ca() if kind == "omnikv" else pki.etcd_ca()
        self.ssl = ssl.create_default_context(cafile=ca)
        if kind == "omnikv":
            self.headers = {"Authorization": f"Bearer {pki.token}"}

    def command(self, m):
        cmd, env = super().command(m)
        if self.kind == "omnikv":
            k = lambda n: os.path.join(self.pki.kvd, n)  # noqa: E731
            env.update(KVD_CERT_FILE=k(f"replica-{m.label}.crt"),
                       KVD_KEY_FILE=k(f"replica-{m.label}.key"),
                       KVD_PEER_CERT_FILE=k(f"replica-{m.label}.crt"),
                       KVD_PEER_KEY_FILE=k(f"replica-{m.label}.key"),
                       KVD_PEER_CA_FILE=k("ca.crt"), KVD_AUTH_FILE=self.pki.auth)
            return cmd, env
        e = lambda n: os.path.join(self.pki.etcd, n)  # noqa: E731
        cmd = [a.replace("http://", "https://") for a in cmd]
        cmd += ["--cert-file", e("server.crt"), "--key-file", e("server.key"),
                "--peer-cert-file", e("server.crt"), "--peer-key-file", e("server.key"),
                "--peer-trusted-ca-file", e("ca.crt"), "--peer-client-cert-auth"]
        return cmd, env

    def check(self):
        """Proof that the cluster runs secured, one line per member; exits when it does not:
        plaintext HTTP to the client port gets no answer (omnikv: 400 tls_required), omnikv
        without the token gets 401, and the peer port completes a TLS handshake with a
        certificate of our CA, then refuses us for presenting no client certificate."""
        lines = []
        for m in self.members:
            st, body = base.http("GET", f"http://{m.client}/health", timeout=2.0)
            plain = ("400 tls_required" if b"tls_required" in body else
                     "no HTTP answer" if st == 0 else f"HTTP {st}")
            if st == 200:
                sys.exit(f"bench: {self.name} member {m.label} answers plaintext HTTP")
            anon = ""
            if self.kind == "omnikv":
                st, _ = base.http("GET", self.url(m.client, "/v1/status"), timeout=2.0,
                                  context=self.ssl)
                if st != 401:
                    sys.exit(f"bench: {self.name} member {m.label}: HTTPS without the token "
                             f"got {st}, not 401")
                anon = "; https without the token: 401"
            lines.append(f"{self.name} member {m.label}: plaintext client request: {plain}"
                         f"{anon}; peer port: {peer_refusal(m.peer, self.ssl)}")
        return lines

    def bench_flags(self):
        if self.kind == "omnikv":
            return ["--cacert", self.pki.kvd_ca(), "--token-file", self.pki.token_file]
        return ["--cacert", self.pki.etcd_ca()]


def peer_refusal(addr, context):
    """What a peer port does with a client that verifies it against our CA and presents no
    certificate: the TLS version and the refusal. Exits when it is not TLS from our CA or
    takes us without a client certificate."""
    host, port = addr.rsplit(":", 1)
    try:
        with socket.create_connection((host, int(port)), timeout=5) as raw:
            with context.wrap_socket(raw, server_hostname=host) as s:
                version = s.version()
                s.sendall(b"\0" * 16)
                s.settimeout(5)
                got = s.recv(16)
    except ssl.SSLError as e:
        return f"TLS, no client certificate refused ({e.reason})"
    except OSError as e:
        sys.exit(f"bench: peer port {addr}: {e}")
    sys.exit(f"bench: peer port {addr} took a client without a certificate ({version}, {got!r})")


def report(args, meta, runs):
    med = base.medians(runs)

    def g(s, c):
        return med.get((s, c, 0.0, "linearizable"))

    L = []
    A = L.append
    A("# The cost of TLS: omnikv and etcd, with and without TLS\n")
    A("<!-- Generated by `just bench-tls` (bench/tls.py); the reading below the tables is "
      "written by hand. -->\n")
    A(f"Run {meta['started']} ({meta['elapsed_min']:.1f} min), command:\n")
    A(f"```\n{meta['command']}\n```\n")
    A("Four 3-member clusters up at the same time on loopback, every write fsynced (both "
      "systems' default), release build of omnikv. Each round runs, for each client count, "
      "omnikv, omnikv with TLS, etcd, etcd with TLS one after the other (the opposite order "
      "every other round) "
      f"(`omnikv-bench kv`, the same load generator for all: puts of {args.value_size}-byte "
      f"values over {args.keys:,} keys, uniform, {args.duration} s after a {args.warmup} s "
      "warmup, the endpoint list starting at the leader); every figure is the **median of "
      f"{args.rounds} rounds**.\n")
    A("- **omnikv-3-tls** is what a secured deployment runs: HTTPS client API, peer mutual TLS, "
      "authentication on (`KVD_CERT_FILE`, `KVD_KEY_FILE`, `KVD_PEER_CERT_FILE`, "
      "`KVD_PEER_KEY_FILE`, `KVD_PEER_CA_FILE`, `KVD_AUTH_FILE`); the load generator trusts "
      "the CA (`--cacert`) and sends a `write` user's bearer token (`--token-file`). "
      "Certificates and token from `kvctl certs new --replicas 3` and `kvctl token new`.")
    A("- **etcd-3-tls**: client TLS (`--cert-file`, `--key-file`, https URLs) and peer TLS "
      "with client certificates required (`--peer-cert-file`, `--peer-key-file`, "
      "`--peer-trusted-ca-file`, `--peer-client-cert-auth`); driven over its native gRPC API "
      "(etcd-client with rustls). No etcd authentication (its auth takes a user/password "
      "round trip for a token; omnikv's bearer token is checked on every request). "
      "Certificates: ECDSA P-256 from the openssl CLI, the key type `kvctl certs new` "
      "makes.\n")
    if meta.get("secured"):
        A("Checked before the runs, against every member of the secured clusters:\n")
        A("".join(f"- {line}\n" for line in meta["secured"]))
    m, v = meta["machine"], meta["versions"]
    A("## Machine and versions\n")
    A(f"- CPU: {m['cpu']}, {m['cores']} cores, **shared with other work** (load average "
      f"{m['loadavg_at_start']} at start, {meta['loadavg_at_end']} at end; per run in the raw "
      f"results); memory {m['memory']}; kernel {m['kernel']}; data on {m['work_fs']}")
    kvd = (v["kvd"].splitlines() or [""])[0]
    A(f"- omnikv tree {v['omnikv_tree']}; kvd: {kvd}; {v['rustc']}")
    A(f"- etcd: {v['etcd']} ({v['etcd_go']})")
    A("- idle server CPU (cores, 2 s before the runs): " +
      ", ".join(f"{k} {x:.3f}" for k, x in meta["idle_cpu"].items()) + "\n")
    A("## Writes\n")
    A("CPU is CPU-microseconds per put over every server process and the load generator.\n")
    A("| system | clients | puts/s | p50 ms | p99 ms | CPU us/put | errors |")
    A("|---|---|---|---|---|---|---|")
    for c in args.clients:
        for s in args.systems:
            r = g(s, c)
            if r:
                A(f"| {s} | {c} | {base.fmt(r['ops_per_sec'])} | {r['p50_ms']:.2f} | "
                  f"{r['p99_ms']:.2f} | {base.fmt(r['cpu_us_per_op'])} | "
                  f"{base.fmt(r['errors'])} |")
    A("")
    A("## Ratios\n")
    A("Ratios of the medians above; in brackets the median of the ratios within each round "
      "(the two runs compared within a round are at most a minute apart, so these follow "
      "the machine's load drift less).\n")
    A("| comparison | clients | puts/s | p50 | p99 | CPU/put |")
    A("|---|---|---|---|---|---|")

    def paired(a, b, c, f):
        by = {}
        for r in runs:
            if r["clients"] == c and r["system"] in (a, b):
                by.setdefault(r["round"], {})[r["system"]] = r[f]
        xs = [v[a] / v[b] for v in by.values() if v.get(a) and v.get(b)]
        return statistics.median(xs) if xs else None

    for a, b, what in (("omnikv-3-tls", "omnikv-3", "omnikv: TLS / plaintext"),
                       ("etcd-3-tls", "etcd-3", "etcd: TLS / plaintext"),
                       ("omnikv-3-tls", "etcd-3-tls", "TLS: omnikv / etcd"),
                       ("omnikv-3", "etcd-3", "plaintext: omnikv / etcd")):
        for c in args.clients:
            ra, rb = g(a, c), g(b, c)
            if ra and rb:
                cells = [f"{ra[f] / rb[f]:.2f}x ({paired(a, b, c, f):.2f}x)" if rb[f] else "n/a"
                         for f in ("ops_per_sec", "p50_ms", "p99_ms", "cpu_us_per_op")]
                A(f"| {what} | {c} | " + " | ".join(cells) + " |")
    A("")
    A("## Runs\n")
    A("| round | system | clients | puts/s | p50 ms | p99 ms | load avg 1 min |")
    A("|---|---|---|---|---|---|---|")
    for r in runs:
        A(f"| {r['round']} | {r['system']} | {r['clients']} | {base.fmt(r['ops_per_sec'])} | "
          f"{r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['loadavg_1m']:.2f} |")
    A("")
    with open(args.out, "w") as f:
        f.write("\n".join(L) + "\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    base.common_args(ap)
    ap.add_argument("--clients", default="1,64")
    ap.add_argument("--systems", default=",".join(SYSTEMS),
                    help=f"comma list, a subset of {','.join(SYSTEMS)}")
    ap.add_argument("--port-base", type=int, default=28100)
    ap.add_argument("--work", help="data directory [default: a fresh temporary one, removed]")
    ap.add_argument("--out", default=os.path.join(ROOT, "BENCHMARKS-tls.md"))
    ap.add_argument("--json", default=os.path.join(ROOT, "bench", "results", "tls.json"),
                    help="raw runs")
    ap.add_argument("--from-json", help="only rewrite the report from the raw runs of an "
                    "earlier run (its --clients, --systems, --rounds, --duration)")
    args = ap.parse_args()
    args.clients = [int(x) for x in args.clients.split(",")]
    if args.from_json:
        with open(args.from_json) as f:
            old = base.json.load(f)
        args.systems = [s for s in SYSTEMS if any(r["system"] == s for r in old["runs"])]
        report(args, old["meta"], old["runs"])
        return
    base.resolve_binaries(args, extra=("openssl",))
    args.systems = [s for s in args.systems.split(",") if s]
    if not args.systems or set(args.systems) - set(SYSTEMS):
        sys.exit(f"bench: --systems takes a comma list of {', '.join(SYSTEMS)}")
    args.perf = False  # fsyncs are not reported here; skip perf
    work = args.work or tempfile.mkdtemp(prefix="omnikv-bench-tls-")
    started = time.time()
    meta = {"started": time.strftime("%Y-%m-%d %H:%M %Z"),
            "command": shlex.join(["bench/tls.py"] + sys.argv[1:]),
            "machine": base.machine_info(work), "versions": base.versions(args),
            "idle_cpu": {}}
    log(f"work dir {work}; kvd {args.kvd}; etcd {args.etcd}")
    pki = Pki(args, work, args.systems)
    pb = args.port_base
    make = {"omnikv-3": lambda: base.Cluster("omnikv-3", "omnikv", 3, pb, work, args),
            "omnikv-3-tls": lambda: Secured("omnikv-3-tls", "omnikv", 3, pb + 100, work,
                                            args, pki),
            "etcd-3": lambda: base.Cluster("etcd-3", "etcd", 3, pb + 200, work, args),
            "etcd-3-tls": lambda: Secured("etcd-3-tls", "etcd", 3, pb + 300, work, args, pki)}
    clusters = [make[s]() for s in SYSTEMS if s in args.systems]
    live = []

    stop_all = base.stopper(live, work, remove=not args.work)
    runs = []
    try:
        for c in clusters:
            live.append(c)
            c.start()
        for c in clusters:
            c.wait_ready()
        meta["secured"] = [line for c in clusters if isinstance(c, Secured) for line in c.check()]
        for line in meta["secured"]:
            log(line)
        time.sleep(1.0)
        for c in clusters:
            pids = c.pids()
            c0 = sum(map(base.cpu_seconds, pids))
            time.sleep(2.0)
            meta["idle_cpu"][c.name] = (sum(map(base.cpu_seconds, pids)) - c0) / 2.0
        for rnd in range(args.rounds):
            for clients in args.clients:
                # Odd rounds in the opposite order: no system always runs first or last.
                for c in clusters if rnd % 2 == 0 else clusters[::-1]:
                    r = base.run_load(c, clients, args=args)
                    r["round"] = rnd + 1
                    runs.append(r)
    finally:
        stop_all()
    base.finish_run(meta, started, args.json, {"runs": runs})
    report(args, meta, runs)
    log(f"wrote {args.out} and {args.json} in {meta['elapsed_min']:.1f} min")


if __name__ == "__main__":
    main()

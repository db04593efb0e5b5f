#!/usr/bin/env python3
"""omnikv vs etcd over the same gRPC API (issue 18), ONE interleaved run on this machine.
Python stdlib only; reuses bench/run.py's clusters and bench/data_model.py's load runs.

omnikv-3 (three kvd replicas serving etcd's v3 API, `KVD_ETCD_ADDR`) and etcd-3 (three etcd
members) are up at the same time, every write fsynced (both systems' defaults). One load
generator, `omnikv-bench --target etcd` (bench/driver: etcd's native Rust client, the
etcd-client crate), drives both, over etcd's gRPC API: the only difference between two runs
of a point is the server behind the port. Each point runs omnikv then etcd, then etcd then
omnikv in the next round, so machine noise hits both. Points:
  put c=1, c=64, c=256        puts of --value-size bytes over --keys keys (kv workload)
  get (linearizable) c=64     linearizable Range of one key (kv, --read-ratio 1)
  txn (cas) c=64              compare-and-swap transactions on the mod revision (cas)
  watch                       --watchers watchers of one prefix, one writer at --watch-rate
Every figure is the median of --rounds runs. Writes bench/results/etcd-api.json and
BENCHMARKS-etcd-api.md.
  usage: bench/etcd_api.py --bin target/release [--duration 5] [--rounds 3]
"""

import argparse
import json
import os
import shlex
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import data_model as dm  # noqa: E402  (closed-loop and watch runs of omnikv-bench)
import run as base  # noqa: E402  (clusters, probes, process accounting)

ROOT = base.ROOT
log = base.log


class OmnikvOverEtcdApi(base.Cluster):
    """Three kvd replicas that also serve etcd's v3 API; the load generator reaches them
    there, with etcd's client, as it reaches etcd (probes still use the HTTP API)."""

    def __init__(self, port_base, work, args):
        super().__init__("omnikv-3", "omnikv", 3, port_base, work, args)
        self.etcd_api = {m.label: f"127.0.0.1:{port_base + 80 + i}"
                         for i, m in enumerate(self.members)}

    def command(self, m):
        cmd, env = super().command(m)
        env["KVD_ETCD_ADDR"] = self.etcd_api[m.label]
        return cmd, env

    def bench_target(self):
        return "etcd"

    def bench_endpoints(self, first):
        eps = [self.etcd_api[m.label] for m in self.members]
        return eps[first:] + eps[:first]


POINTS = [
    # (point, workload, clients, extra flags)
    ("put c=1", "kv", 1, ()),
    ("put c=64", "kv", 64, ()),
    ("put c=256", "kv", 256, ()),
    ("get (linearizable) c=64", "kv", 64, ("--read-ratio", "1")),
    ("txn (cas) c=64", "cas", 64, ()),
]


def run(args, work, live):
    pb = args.port_base
    pair = [OmnikvOverEtcdApi(pb, work, args), base.Cluster("etcd-3", "etcd", 3, pb + 100, work, args)]
    runs = []
    base.start_pair(pair, live)
    for c in pair:
        dm.load_keys(args, c)
    for rnd in range(args.rounds):
        log(f"round {rnd + 1} of {args.rounds}")
        order = pair if rnd % 2 == 0 else pair[::-1]
        for point, workload, clients, extra in POINTS:
            for c in order:
                runs.append(dm.closed_loop(args, c, c.name, point, workload, clients, extra))
        if args.watchers:
            for c in order:
                runs.append(dm.watch_point(args, c, c.name))
    base.stop_pair(pair, live)
    return runs


def medians(runs):
    out = {}
    keys = {(r["system"], r["point"]) for r in runs}
    for k in keys:
        rows = [r for r in runs if (r["system"], r["point"]) == k]
        med = {}
        for f, v in rows[0].items():
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                med[f] = statistics.median(r[f] for r in rows)
            else:
                med[f] = v
        med["runs"] = len(rows)
        out[k] = med
    return out


fmt = dm.fmt  # "n/a" or x with thousands separators and d decimals


def ratio(a, b, d=2):
    return "n/a" if not a or not b else f"{a / b:.{d}f}"


def write_report(args, meta, runs):
    med = medians(runs)
    L = []
    A = L.append
    A("# omnikv vs etcd over the same gRPC API (etcd's v3 API)")
    A("")
    A(f"One interleaved run, {meta['started']}, `{meta['command']}` ({meta['elapsed_min']:.1f} "
      f"min). {args.rounds} rounds of {args.duration:g} s points (after {args.warmup:g} s of "
      "warm-up); every figure is the median of the rounds; ratios are within this run.")
    A("")
    A("Both systems: 3 members on loopback on this machine, every write fsynced (each one's "
      "default). One load generator drives both: `omnikv-bench --target etcd` (bench/driver, "
      "etcd's Rust client `etcd-client` over gRPC), the same closed loop, keys, value size and "
      "connections; omnikv is reached on the etcd API port of each replica (`KVD_ETCD_ADDR`), "
      "etcd on its client port. Endpoints leader first. Same load generator, same protocol: "
      "the difference is the server.")
    A("")
    m = meta["machine"]
    A(f"Machine: {m['cpu'].strip()}, {m['cores']} cores, {m['memory']}, kernel {m['kernel']}, "
      f"data on {m['work_fs']}; load average at start {m['loadavg_at_start']}, at end "
      f"{meta['loadavg_at_end']}. Versions: kvd `{meta['versions']['kvd']}` (tree "
      f"{meta['versions']['omnikv_tree']}), etcd `{meta['versions']['etcd']}`.")
    if m["loadavg_at_start"][0] > m["cores"]:
        A("")
        A("The machine was shared: other work ran at low priority during the run (the load "
          "averages above), so absolute figures are lower and noisier than on a quiet machine; "
          "the points are interleaved, so both systems met the same noise.")
    A("")
    A("| point | omnikv ops/s | etcd ops/s | omnikv / etcd | omnikv p50 / p99 ms | "
      "etcd p50 / p99 ms | omnikv srv CPU us/op | etcd srv CPU us/op | errors o/e |")
    A("|---|---:|---:|---:|---|---|---:|---:|---|")
    for point, _, _, _ in POINTS:
        o, e = med.get(("omnikv-3", point)), med.get(("etcd-3", point))
        if not o or not e:
            continue
        A(f"| {point} | {fmt(o['ops_per_sec'])} | {fmt(e['ops_per_sec'])} | "
          f"{ratio(o['ops_per_sec'], e['ops_per_sec'])} | {fmt(o['p50_ms'], 2)} / "
          f"{fmt(o['p99_ms'], 2)} | {fmt(e['p50_ms'], 2)} / {fmt(e['p99_ms'], 2)} | "
          f"{fmt(o['server_cpu_us_per_op'])} | {fmt(e['server_cpu_us_per_op'])} | "
          f"{o['errors']:g}/{e['errors']:g} |")
    A("")
    cas_o, cas_e = med.get(("omnikv-3", "txn (cas) c=64")), med.get(("etcd-3", "txn (cas) c=64"))
    if cas_o and cas_e:
        A(f"txn (cas): a transaction comparing the drawn key's mod revision with the last one any "
          f"client saw, putting it if equal, else reading it back; failed compares (a share of "
          f"{cas_o['failed_share']:.3f} for omnikv, {cas_e['failed_share']:.3f} for etcd) count as "
          "answered operations.")
        A("")
    o, e = med.get(("omnikv-3", "watch")), med.get(("etcd-3", "watch"))
    if o and e:
        A(f"## Watch fan-out: {args.watchers} watchers, one writer at {args.watch_rate:g} puts/s")
        A("")
        A("Watchers of one prefix over etcd's Watch service (one stream each, watcher i on member "
          "i mod 3), opened before the writer starts; delay from each put's acknowledgement (and "
          "from its sending) to its delivery to a watcher.")
        A("")
        A("| system | events/s | delivered / expected | from ack p50 / p99 ms | "
          "from send p50 / p99 ms | server CPU cores | watch errors |")
        A("|---|---:|---:|---|---|---:|---:|")
        for name, r in (("omnikv", o), ("etcd", e)):
            A(f"| {name} | {fmt(r['events_per_sec'])} | {r['delivered_share']:.3f} | "
              f"{fmt(r['ack_p50_ms'], 2)} / {fmt(r['ack_p99_ms'], 2)} | "
              f"{fmt(r['send_p50_ms'], 2)} / {fmt(r['send_p99_ms'], 2)} | "
              f"{r['server_cpu_cores']:.2f} | {r['watch_errors']:g} |")
        A("")
    A("Reproduce: `just bench-etcd-api` (release build; about "
      f"{meta['elapsed_min']:.0f} min at these settings). Raw rows: bench/results/etcd-api.json.")
    with open(args.out, "w") as f:
        f.write("\n".join(L) + "\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    base.common_args(ap)
    ap.add_argument("--watchers", type=int, default=100, help="0: no watch point")
    ap.add_argument("--watch-rate", type=float, default=100.0)
    ap.add_argument("--port-base", type=int, default=28700)
    ap.add_argument("--work", help="data directory [default: a fresh temporary one, removed]")
    ap.add_argument("--out", default=os.path.join(ROOT, "BENCHMARKS-etcd-api.md"))
    ap.add_argument("--json", default=os.path.join(ROOT, "bench", "results", "etcd-api.json"))
    ap.add_argument("--from-json", help="only rewrite the report from an earlier results file")
    args = ap.parse_args()
    if args.from_json:
        with open(args.from_json) as f:
            old = json.load(f)
        write_report(args, old["meta"], old["runs"])
        return
    base.resolve_binaries(args)
    work = args.work or tempfile.mkdtemp(prefix="omnikv-etcd-api-")
    started = time.time()
    meta = {"started": time.strftime("%Y-%m-%d %H:%M %Z"),
            "command": shlex.join(["bench/etcd_api.py"] + sys.argv[1:]),
            "machine": base.machine_info(work), "versions": base.versions(args)}
    live = []
    stop_all = base.stopper(live, work, remove=not args.work)
    try:
        runs = run(args, work, live)
    finally:
        stop_all()
    base.finish_run(meta, started, args.json, {"runs": runs})
    write_report(args, meta, runs)
    log(f"wrote {args.out} and {args.json} in {meta['elapsed_min']:.1f} min")


if __name__ == "__main__":
    main()

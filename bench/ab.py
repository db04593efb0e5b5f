#!/usr/bin/env python3
"""A/B of two kvd builds in one interleaved run: two 3-replica clusters up side by side, the
same `omnikv-bench kv` points run on each in turn (the order alternating every round), so
that machine noise hits both; every figure is the median of --rounds runs. Both data sets are
loaded first (every key written once), so puts overwrite as in a long run.

  usage: bench/ab.py --old OLD_KVD --new NEW_KVD --bin DIR [--clients 64,256] [--rounds 3]
                     [--duration 5] [--read-ratio 0] [--old-env K=V,..] [--new-env K=V,..]
                     [--json FILE]

--old-env and --new-env add environment variables to one build's replicas (to compare two
settings of one binary, say KVD_IO_THREADS=1 against 2).

DIR holds omnikv-bench (--bench names it). Uses bench/run.py's cluster and load code.
"""

import argparse
import copy
import json
import os
import statistics
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run  # noqa: E402

class EnvCluster(run.Cluster):
    """A cluster whose replicas get `extra_env` on top of bench/run.py's environment."""

    def __init__(self, *a, extra_env):
        super().__init__(*a)
        self.extra_env = extra_env

    def command(self, m):
        cmd, env = super().command(m)
        env.update(self.extra_env)
        return cmd, env


def env_pairs(text):
    return dict(kv.split("=", 1) for kv in text.split(",") if kv)


FIELDS = ["ops_per_sec", "p50_ms", "p99_ms", "cpu_us_per_op", "fsyncs_per_op", "errors"]


def load(args, c):
    """Writes every key once (64 clients, sequential keys)."""
    cmd = [args.bench, "--target", "omnikv", "--endpoints",
           ",".join(map(c.url, c.endpoints())), "-o", "json", "kv", "--clients", "64",
           "--ops", str(args.keys), "--keys", str(args.keys), "--key-order", "sequential",
           "--warmup", "0", "--value-size", str(args.value_size)]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    run.common_args(ap)
    ap.add_argument("--old", required=True, help="kvd binary A (before)")
    ap.add_argument("--new", required=True, help="kvd binary B (after)")
    ap.add_argument("--clients", default="64,256")
    ap.add_argument("--read-ratio", type=float, default=0.0)
    ap.add_argument("--port-base", type=int, default=28100)
    ap.add_argument("--old-env", default="", help="K=V,... for the old build's replicas")
    ap.add_argument("--new-env", default="", help="K=V,... for the new build's replicas")
    ap.add_argument("--json", help="write every run and the medians here")
    args = ap.parse_args()
    args.kvd = args.new
    args.bench = args.bench or os.path.join(args.bin, "omnikv-bench")
    for b in (args.old, args.new, args.bench):
        if not (os.path.isfile(b) and os.access(b, os.X_OK)):
            sys.exit(f"ab: {b} not found")
    args.perf = run.perf_usable()
    work = tempfile.mkdtemp(prefix="omnikv-ab-")
    old_args = copy.copy(args)
    old_args.kvd = args.old
    pair = [EnvCluster("old", "omnikv", 3, args.port_base, work, old_args,
                       extra_env=env_pairs(args.old_env)),
            EnvCluster("new", "omnikv", 3, args.port_base + 100, work, args,
                       extra_env=env_pairs(args.new_env))]
    live = []
    stop_all = run.stopper(live, work, remove=True)
    runs = []
    try:
        for c in pair:
            c.start()
            live.append(c)
        for c in pair:
            c.wait_ready()
            load(args, c)
        points = [int(x) for x in args.clients.split(",")]
        for rnd in range(args.rounds):
            run.log(f"round {rnd + 1} of {args.rounds}")
            order = pair if rnd % 2 == 0 else pair[::-1]
            for clients in points:
                for c in order:
                    r = run.run_load(c, clients, args.read_ratio, args=args)
                    r["build"], r["round"] = c.name, rnd + 1
                    runs.append(r)
    finally:
        stop_all()
    med = {}
    for r in runs:
        med.setdefault((r["build"], r["clients"]), []).append(r)
    table = ["| clients | build | puts/s | p50 ms | p99 ms | CPU us/op (3 kvd + client) "
             "| fsyncs/op | errors | runs |", "|---|---|---|---|---|---|---|---|---|"]
    out = {}
    for (build, clients), rs in sorted(med.items(), key=lambda kv: (kv[0][1], kv[0][0] != "old")):
        m = {f: statistics.median(x[f] for x in rs) for f in FIELDS}
        out[f"{build} c={clients}"] = m
        table.append(f"| {clients} | {build} | {m['ops_per_sec']:,.0f} | {m['p50_ms']:.2f} | "
                     f"{m['p99_ms']:.2f} | {m['cpu_us_per_op']:.0f} | {m['fsyncs_per_op']:.3f} | "
                     f"{m['errors']:.0f} | {len(rs)} |")
    for clients in sorted({c for _, c in med}):
        o, n = out.get(f"old c={clients}"), out.get(f"new c={clients}")
        if o and n:
            table.append(f"\nc={clients}: new/old puts/s {n['ops_per_sec'] / o['ops_per_sec']:.2f}x, "
                         f"p99 {n['p99_ms'] / o['p99_ms']:.2f}x")
    text = (f"old: {args.old} {args.old_env}\nnew: {args.new} {args.new_env}\n"
            f"load average at end {os.getloadavg()}\n\n"
            + "\n".join(table))
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"old": args.old, "new": args.new, "runs": runs, "medians": out}, f,
                      indent=1)


if __name__ == "__main__":
    main()

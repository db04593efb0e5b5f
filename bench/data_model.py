#!/usr/bin/env python3
"""The data-model comparison (issue 13) and the put path before/after revisions, each as ONE
interleaved run on this machine. Python stdlib only; reuses bench/run.py's clusters.

Part `compare`: omnikv-3 (three kvd replicas) and etcd-3 (three etcd members) are up at the
same time, every write fsynced (both systems' defaults); each point runs omnikv then etcd,
round after round, driven by the same load generator, `omnikv-bench` (bench/driver): omnikv
over its HTTP API, etcd over its native gRPC API (etcd-client crate). Points:
  put 1 and 64 clients, linearizable get 64 clients (kv workload, --keys keys loaded first),
  range read of a --range-keys-key prefix (range), compare-and-swap at 64 clients (cas),
  watch fan-out: --watchers watchers of one prefix, one writer at --watch-rate puts/s (watch).
Part `revisions`: the release kvd of commit e98420f (before revisions; --old-kvd) and this
tree's kvd (--bin), two 3-replica clusters up at the same time, puts at 1 and 64 clients
interleaved old, new, old, new ...

Every figure is the median of --rounds runs; ratios are within this one run. Writes
bench/results/data-model.json and BENCHMARKS-data-model.md.
  usage: bench/data_model.py --bin target/release --old-kvd OLD/release/kvd [--duration 5]
"""

import argparse
import copy
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run as base  # noqa: E402  (bench/run.py: clusters, probes, process accounting)

ROOT = base.ROOT
log = base.log


def tool(args, cluster, argv, timeout_s):
    """One omnikv-bench run against `cluster` (endpoints leader first), with the CPU the
    server processes used meanwhile. Returns the tool's JSON plus server_cpu_s."""
    lead = cluster.leader() or 0
    cmd = [args.bench, "--target", cluster.bench_target(), "--endpoints",
           ",".join(cluster.bench_endpoints(lead)), "-o", "json", "--timeout", "5s"] + argv
    pids = cluster.pids()
    cpu0 = {pid: base.cpu_seconds(pid) for pid in pids}
    t0 = time.monotonic()
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    wall = time.monotonic() - t0
    cpu1 = {pid: base.cpu_seconds(pid) for pid in pids}
    try:
        r = json.loads(p.stdout)
    except json.JSONDecodeError:
        raise RuntimeError(f"{shlex.join(cmd)} failed ({p.returncode}): {p.stderr[-2000:]}")
    r["server_cpu_s"] = sum(cpu1[pid] - cpu0[pid] for pid in pids)
    r["wall_s"] = wall
    return r


def closed_loop(args, cluster, system, point, workload, clients, extra=()):
    """A closed-loop workload (kv, range, cas) at `clients` clients: one result row."""
    argv = [workload, "--clients", str(clients), "--duration", f"{args.duration}s",
            "--warmup", f"{args.warmup}s", "--value-size", str(args.value_size),
            "--keys", str(args.keys), *extra]
    r = tool(args, cluster, argv, args.duration + args.warmup + 120)
    ok = max(r["ok"], 1)
    # The server CPU was counted over the whole process run (warmup and setup included):
    # per operation it is spread over every operation of the run, measured or not, pro rata.
    share = r["duration_s"] / max(r["wall_s"], 1e-9)
    res = {
        "system": system, "point": point, "workload": workload, "clients": clients,
        "ops_per_sec": r["ops_per_sec"], "p50_ms": r["latency_ms"]["p50"],
        "p99_ms": r["latency_ms"]["p99"], "errors": sum(r["errors"].values()),
        "misses": r["misses"], "failed_share": round(r["misses"] / ok, 4),
        "server_cpu_us_per_op": round(r["server_cpu_s"] * share / ok * 1e6, 1),
        "client_cpu_cores": r["client_cpu_cores"],
        "loadavg_1m": os.getloadavg()[0],
    }
    if res["errors"]:
        res["first_errors"] = r.get("first_errors")
    log(f"{system:9} {point:22} {res['ops_per_sec']:9.0f} ops/s p50 {res['p50_ms']:7.2f} "
        f"p99 {res['p99_ms']:7.2f} ms srv {res['server_cpu_us_per_op']:6.0f} us/op "
        f"misses {res['misses']} err {res['errors']}")
    return res


def watch_point(args, cluster, system):
    argv = ["watch", "--watchers", str(args.watchers), "--rate", str(args.watch_rate),
            "--duration", f"{args.duration}s", "--warmup", f"{args.warmup}s",
            "--value-size", str(args.value_size)]
    r = tool(args, cluster, argv, args.duration + args.warmup + 120)
    res = {
        "system": system, "point": "watch", "workload": "watch", "clients": args.watchers,
        "events_per_sec": r["events_per_sec"], "events": r["events"],
        "events_expected": r["events_expected"],
        "delivered_share": round(r["events"] / max(r["events_expected"], 1), 4),
        "ack_p50_ms": r["delay_from_ack_ms"]["p50"], "ack_p99_ms": r["delay_from_ack_ms"]["p99"],
        "send_p50_ms": r["delay_from_send_ms"]["p50"],
        "send_p99_ms": r["delay_from_send_ms"]["p99"],
        "put_p50_ms": r["put_latency_ms"]["p50"],
        "before_ack": r["delivered_before_ack"], "watch_errors": r["watch_errors"],
        "server_cpu_cores": round(r["server_cpu_s"] / max(r["wall_s"], 1e-9), 3),
        "client_cpu_cores": r["client_cpu_cores"],
    }
    if r.get("first_error"):
        res["first_error"] = r["first_error"]
    log(f"{system:9} watch x{args.watchers} @{args.watch_rate}/s {res['events_per_sec']:9.0f} "
        f"events/s ({res['delivered_share']:.3f} of expected) from ack p50 "
        f"{res['ack_p50_ms']:.2f} p99 {res['ack_p99_ms']:.2f} ms, from send p50 "
        f"{res['send_p50_ms']:.2f} p99 {res['send_p99_ms']:.2f} ms")
    return res


def load_keys(args, cluster):
    """Writes every key bench-0 .. bench-<keys-1> once (gets then find them)."""
    tool(args, cluster, ["kv", "--clients", "64", "--ops", str(args.keys), "--keys",
                         str(args.keys), "--key-order", "sequential", "--warmup", "0",
                         "--value-size", str(args.value_size)], 600)


COMPARE_POINTS = [
    # (point, workload, clients, extra flags)
    ("put c=1", "kv", 1, ()),
    ("put c=64", "kv", 64, ()),
    ("get (linearizable) c=64", "kv", 64, ("--read-ratio", "1")),
    ("range 1000 keys", "range", None, ()),
    ("cas c=64", "cas", 64, ()),
]


def compare(args, work, live):
    pb = args.port_base
    pair = [base.Cluster("omnikv-3", "omnikv", 3, pb, work, args),
            base.Cluster("etcd-3", "etcd", 3, pb + 100, work, args)]
    runs = []
    base.start_pair(pair, live)
    for c in pair:
        load_keys(args, c)
    for rnd in range(args.rounds):
        log(f"compare: round {rnd + 1} of {args.rounds}")
        for point, workload, clients, extra in COMPARE_POINTS:
            if workload == "range":
                clients = args.range_clients
                extra = ("--range-keys", str(args.range_keys))
            for c in pair:
                runs.append(closed_loop(args, c, c.name, point, workload, clients, extra))
        if args.watchers:
            for c in pair:
                runs.append(watch_point(args, c, c.name))
    base.stop_pair(pair, live)
    return runs


def revisions(args, work, live):
    pb = args.port_base + 200
    old_args = copy.copy(args)
    old_args.kvd = args.old_kvd
    pair = [base.Cluster("before", "omnikv", 3, pb, work, old_args),
            base.Cluster("after", "omnikv", 3, pb + 100, work, args)]
    runs = []
    base.start_pair(pair, live)
    for rnd in range(args.rounds):
        log(f"revisions: round {rnd + 1} of {args.rounds}")
        for clients in (1, 64):
            for c in pair:
                runs.append(closed_loop(args, c, c.name, f"put c={clients}", "kv", clients))
    base.stop_pair(pair, live)
    return runs


METRICS = ["ops_per_sec", "p50_ms", "p99_ms", "errors", "misses", "failed_share", "server_cpu_us_per_op",
           "client_cpu_cores", "events_per_sec", "events", "events_expected", "delivered_share",
           "ack_p50_ms", "ack_p99_ms", "send_p50_ms", "send_p99_ms", "put_p50_ms", "before_ack",
           "watch_errors", "server_cpu_cores"]


def medians(runs):
    groups = {}
    for r in runs:
        groups.setdefault((r["system"], r["point"]), []).append(r)
    out = {}
    for k, rs in groups.items():
        out[k] = {f: statistics.median(x[f] for x in rs) for f in METRICS if f in rs[0]}
        out[k]["runs"] = len(rs)
        out[k]["clients"] = rs[0]["clients"]
    return out


def fmt(x, d=0):
    return "n/a" if x is None else f"{x:,.{d}f}"


def ratio(a, b, d=2):
    return f"{a / b:.{d}f}x" if a and b else "n/a"


def write_report(args, meta, cmp_runs, rev_runs):
    L = []
    A = L.append
    A("# omnikv vs etcd: the data model (ranges, transactions, watch), and the put path "
      "before/after revisions\n")
    A("<!-- Generated by bench/data_model.py: edit the script, not this file. -->\n")
    A(f"Run {meta['started']} ({meta['elapsed_min']:.1f} min), command:\n")
    A(f"```\n{meta['command']}\n```\n")
    m, v = meta["machine"], meta["versions"]
    A(f"Every figure is the **median of {args.rounds} rounds**; each round runs every point "
      "once per system, interleaved (omnikv, etcd, omnikv, etcd, ...) while both clusters are "
      "up, so machine noise hits both; ratios compare figures of this one run only. "
      f"{m['cores']} cores ({m['cpu']}), shared with other work: load average "
      f"{m['loadavg_at_start']} at start, {meta['loadavg_at_end']} at end. All servers and the "
      "load generator share the machine; 3 members each, every commit fsynced (both systems' "
      f"defaults), release builds; each run is {args.duration} s after a {args.warmup} s "
      "warmup.\n")
    A(f"- omnikv tree {v['omnikv_tree']}; kvd {v['kvd']}; before revisions: kvd of e98420f "
      f"({args.old_kvd})")
    A(f"- etcd: {v['etcd']} ({v['etcd_go']})")
    A("- load generator: `omnikv-bench` (bench/driver), kvctl bench's closed loop and "
      "histogram for both systems: omnikv over its HTTP API (HTTP/1.1 connection pools, "
      "`omnikv_common::Client` for single keys), etcd over its **native gRPC API** "
      "(etcd-client crate, one HTTP/2 channel per connection), as each system's users run it. "
      "Connections = clients (connection j starts on member j; the endpoint list starts at the "
      f"leader). Values {args.value_size} bytes; keys uniform over {args.keys:,} "
      "(`bench-N`, all written before the run).\n")
    med = medians(cmp_runs)
    if cmp_runs:
        A("## Puts, gets, range reads, compare-and-swap (3 members each)\n")
        A(f"- put, get: single keys; get is linearizable (omnikv: read barrier; etcd: "
          "ReadIndex, its default).")
        A(f"- range: a linearizable read of every key under a prefix holding "
          f"{args.range_keys:,} keys of {args.value_size} bytes (omnikv `GET /v1/kv?prefix=`, "
          f"JSON with base64; etcd Range with a prefix, protobuf), decoded by the client, "
          f"{args.range_clients} clients; an answer with another key count is an error.")
        A("- cas: a transaction comparing the drawn key's mod revision with the last one any "
          "client saw (every key's is read before the run, as a client reads what it then "
          "updates), then put; else get the key to learn its mod revision (omnikv "
          "`POST /v1/txn`, etcd Txn, same compare and branches). Both outcomes are answered "
          "operations; *failed* is the share whose compare failed (another client swapped "
          "the key in between).")
        A("- CPU: server CPU-microseconds per operation, summed over the 3 members.\n")
        A("| workload | clients | omnikv ops/s | etcd ops/s | ratio | omnikv p50 / p99 ms | "
          "etcd p50 / p99 ms | p99 ratio | omnikv CPU us/op | etcd CPU us/op | errors o / e |")
        A("|---|---|---|---|---|---|---|---|---|---|---|")
        for point, workload, _, _ in COMPARE_POINTS:
            o, e = med.get(("omnikv-3", point)), med.get(("etcd-3", point))
            if not o or not e:
                continue
            name = point
            if workload == "cas":
                name += f" (failed: {o['failed_share']:.1%} / {e['failed_share']:.1%})"
            A(f"| {name} | {o['clients']} | {fmt(o['ops_per_sec'])} | {fmt(e['ops_per_sec'])} | "
              f"{ratio(o['ops_per_sec'], e['ops_per_sec'])} | {o['p50_ms']:.2f} / "
              f"{o['p99_ms']:.2f} | {e['p50_ms']:.2f} / {e['p99_ms']:.2f} | "
              f"{ratio(o['p99_ms'], e['p99_ms'])} | {fmt(o['server_cpu_us_per_op'])} | "
              f"{fmt(e['server_cpu_us_per_op'])} | {fmt(o['errors'])} / {fmt(e['errors'])} |")
        A("")
        o, e = med.get(("omnikv-3", "watch")), med.get(("etcd-3", "watch"))
        if o and e:
            A(f"## Watch fan-out: {args.watchers} watchers, one writer at {args.watch_rate} "
              "puts/s\n")
            A(f"{args.watchers} watches of one prefix (omnikv `GET /v1/watch?prefix=`, NDJSON, one "
              "HTTP/1.1 stream each; etcd Watch, one gRPC stream each over one channel per "
              "member), watcher i on member i mod 3, opened before the writer starts. The "
              "writer puts through the leader on a fixed schedule (open loop). Each value "
              "carries its sequence number, so each delivery is matched to the moment its put "
              "was sent and acknowledged: *from ack* is delivery minus the writer's "
              "acknowledgement (0 when delivered before the writer saw the ack; *before ack* "
              "is that share), *from send* is delivery minus the send. Events of the puts "
              "sent in the measured window only.\n")
            A("| system | events/s | delivered / expected | from ack p50 / p99 ms | before ack | "
              "from send p50 / p99 ms | put p50 ms | server cores | client cores |")
            A("|---|---|---|---|---|---|---|---|---|")
            for s, r in (("omnikv-3", o), ("etcd-3", e)):
                A(f"| {s} | {fmt(r['events_per_sec'])} | {r['delivered_share']:.3f} | "
                  f"{r['ack_p50_ms']:.2f} / {r['ack_p99_ms']:.2f} | {r['before_ack']:.1%} | "
                  f"{r['send_p50_ms']:.2f} / {r['send_p99_ms']:.2f} | {r['put_p50_ms']:.2f} | "
                  f"{r['server_cpu_cores']:.2f} | {r['client_cpu_cores']:.2f} |")
            A(f"\nRatios omnikv / etcd: events/s {ratio(o['events_per_sec'], e['events_per_sec'])}"
              f", delay from ack p99 {ratio(o['ack_p99_ms'], e['ack_p99_ms'])}, from send p99 "
              f"{ratio(o['send_p99_ms'], e['send_p99_ms'])}.\n")
    rmed = medians(rev_runs)
    if rev_runs:
        A("## The put path before and after revisions (omnikv only)\n")
        A("Two 3-replica clusters up at once: kvd built from e98420f (before revisions, range "
          "reads, transactions and watch) and from this tree; puts through the leader, runs "
          "interleaved before, after, before, after ... Same load generator for both.\n")
        A("| clients | before puts/s | after puts/s | after / before | before p50 / p99 ms | "
          "after p50 / p99 ms | before CPU us/put | after CPU us/put |")
        A("|---|---|---|---|---|---|---|---|")
        for c in (1, 64):
            b, a = rmed.get(("before", f"put c={c}")), rmed.get(("after", f"put c={c}"))
            if b and a:
                A(f"| {c} | {fmt(b['ops_per_sec'])} | {fmt(a['ops_per_sec'])} | "
                  f"{ratio(a['ops_per_sec'], b['ops_per_sec'])} | {b['p50_ms']:.2f} / "
                  f"{b['p99_ms']:.2f} | {a['p50_ms']:.2f} / {a['p99_ms']:.2f} | "
                  f"{fmt(b['server_cpu_us_per_op'])} | {fmt(a['server_cpu_us_per_op'])} |")
        A("")
    raw = os.path.relpath(args.json, os.path.dirname(os.path.abspath(args.out)))
    A(f"Raw runs: [{raw}]({raw}).")
    with open(args.out, "w") as f:
        f.write("\n".join(L) + "\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    base.common_args(ap)
    ap.add_argument("--old-kvd", help="kvd built from e98420f (before revisions); without it "
                    "the revisions part is skipped")
    ap.add_argument("--range-keys", type=int, default=1000)
    ap.add_argument("--range-clients", type=int, default=16)
    ap.add_argument("--watchers", type=int, default=100, help="0: no watch point")
    ap.add_argument("--watch-rate", type=float, default=100.0)
    ap.add_argument("--skip", default="", help="comma list of: compare,revisions")
    ap.add_argument("--port-base", type=int, default=28400)
    ap.add_argument("--work", help="data directory [default: a fresh temporary one, removed]")
    ap.add_argument("--out", default=os.path.join(ROOT, "BENCHMARKS-data-model.md"))
    ap.add_argument("--json", default=os.path.join(ROOT, "bench", "results", "data-model.json"))
    ap.add_argument("--from-json", help="only rewrite the report from an earlier results file "
                    "(with the --rounds/--duration/... of that run)")
    args = ap.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    if args.from_json:
        with open(args.from_json) as f:
            old = json.load(f)
        write_report(args, old["meta"], old["compare"], old["revisions"])
        return
    if not args.old_kvd:
        skip.add("revisions")
    base.resolve_binaries(args, [args.old_kvd] if args.old_kvd else [])
    work = args.work or tempfile.mkdtemp(prefix="omnikv-dm-")
    started = time.time()
    meta = {"started": time.strftime("%Y-%m-%d %H:%M %Z"),
            "command": shlex.join(["bench/data_model.py"] + sys.argv[1:]),
            "machine": base.machine_info(work), "versions": base.versions(args),
            "etcd_client": "native-grpc"}
    live = []

    stop_all = base.stopper(live, work, remove=not args.work)
    cmp_runs, rev_runs = [], []
    try:
        if "compare" not in skip:
            cmp_runs = compare(args, work, live)
        if "revisions" not in skip:
            rev_runs = revisions(args, work, live)
    finally:
        stop_all()
    base.finish_run(meta, started, args.json, {"compare": cmp_runs, "revisions": rev_runs})
    write_report(args, meta, cmp_runs, rev_runs)
    log(f"wrote {args.out} and {args.json} in {meta['elapsed_min']:.1f} min")


if __name__ == "__main__":
    main()

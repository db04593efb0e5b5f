#!/usr/bin/env python3
"""Rolling restart under write load, omnikv vs etcd, in ONE interleaved run (issue 14).
Python stdlib only; reuses bench/run.py's clusters.

A 3-replica omnikv cluster, a 3-member etcd cluster and, as the baseline, a 3-replica omnikv
cluster with the SIGTERM hand-off off (KVD_HANDOFF_TIMEOUT_MS=0) are up at the same time on
loopback.
Each round, for each system in turn (omnikv, etcd, baseline, omnikv, ...): `omnikv-bench writes`
(bench/driver/src/rolling_restart.rs) runs --clients writers of unique keys, each failing over
to the next member on any error with the same client logic for both systems; then every
member is restarted in turn, highest first as a StatefulSet rolls: SIGTERM, wait for the
process to exit, --down seconds stopped, start it again, wait until it serves (omnikv:
/readyz; etcd: /health), --settle seconds. omnikv's leader hands leadership over by itself on
SIGTERM (kvd's drain); etcd's leader is first moved with `etcdctl move-leader` to another
member, as etcd's operators do. The writers stop --settle seconds after the last restart.

Measured per round: the longest time without any acknowledged write (over all writers), and
every acknowledged key read back (`omnikv-bench verify`): acknowledged writes lost must be 0.
Reported: the median over --rounds rounds, per system, and the ratio.
  usage: bench/rolling_restart.py --bin target/release [--rounds 3] [--clients 8]
"""

import argparse
import json
import os
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run as base  # noqa: E402  (bench/run.py: clusters, probes, machine info)

ROOT = base.ROOT
log = base.log


class WithoutHandoff(base.Cluster):
    """omnikv with the SIGTERM hand-off off (KVD_HANDOFF_TIMEOUT_MS=0): a stopped leader
    leaves the cluster to elect a new one, as before the hand-off existed."""

    def start_member(self, i):
        old = os.environ.get("KVD_HANDOFF_TIMEOUT_MS")
        os.environ["KVD_HANDOFF_TIMEOUT_MS"] = "0"
        try:
            super().start_member(i)
        finally:
            if old is None:
                del os.environ["KVD_HANDOFF_TIMEOUT_MS"]
            else:
                os.environ["KVD_HANDOFF_TIMEOUT_MS"] = old


def serving(cluster, i):
    """Whether member i serves clients again after a restart."""
    m = cluster.members[i]
    if cluster.kind == "omnikv":
        st, _ = base.http("GET", f"http://{m.client}/readyz")
        return st == 200
    st, body = base.http("GET", f"http://{m.client}/health")
    return st == 200 and b'"true"' in body


def etcd_members(args, cluster):
    """[(index, member id, raft index)] and the leader's member id, from endpoint status."""
    eps = ",".join(cluster.endpoints())
    p = subprocess.run([args.etcdctl, "--endpoints", eps, "endpoint", "status", "-w", "json"],
                       capture_output=True, text=True, timeout=10,
                       env=dict(os.environ, ETCDCTL_API="3"))
    rows, leader = [], None
    for s in json.loads(p.stdout or "[]"):
        idx = cluster.endpoints().index(s["Endpoint"].split("://")[-1])
        st = s["Status"]
        rows.append((idx, st["header"]["member_id"], st.get("raftIndex", 0)))
        leader = st.get("leader") or leader
    return rows, leader


def etcd_move_leader_away(args, cluster, i):
    """If member i leads, `etcdctl move-leader` to the most up-to-date other member;
    returns the seconds it took (None when i did not lead)."""
    rows, leader = etcd_members(args, cluster)
    mine = [mid for idx, mid, _ in rows if idx == i]
    if not mine or mine[0] != leader:
        return None
    target = max((r for r in rows if r[0] != i), key=lambda r: r[2])
    t0 = time.monotonic()
    p = subprocess.run([args.etcdctl, "--endpoints", cluster.members[i].client,
                        "move-leader", format(target[1], "x")],
                       capture_output=True, text=True, timeout=30,
                       env=dict(os.environ, ETCDCTL_API="3"))
    took = time.monotonic() - t0
    if p.returncode != 0:
        log(f"etcd move-leader failed: {p.stderr.strip()}")
    return took


def restart(args, cluster, i, t0):
    """SIGTERM member i, wait for its exit, keep it down --down s, start it, wait until it
    serves. Returns what happened, timed (`*_at_s`: seconds since `t0`, the writers' start)."""
    out = {"member": i + 1}
    lead = cluster.leader()
    out["was_leader"] = lead == i
    if cluster.kind == "etcd":
        out["move_leader_s"] = etcd_move_leader_away(args, cluster, i)
    m = cluster.members[i]
    term = time.monotonic()
    out["sigterm_at_s"] = round(term - t0, 3)
    m.proc.send_signal(signal.SIGTERM)
    m.proc.wait(timeout=60)
    out["exit_s"] = round(time.monotonic() - term, 3)
    time.sleep(args.down)
    cluster.start_member(i)
    t1 = time.monotonic()
    out["started_at_s"] = round(t1 - t0, 3)
    while not serving(cluster, i):
        if time.monotonic() - t1 > 60:
            raise RuntimeError(f"{cluster.name} member {i + 1} not serving 60 s after restart")
        time.sleep(0.05)
    out["serving_after_start_s"] = round(time.monotonic() - t1, 3)
    return out


def one_round(args, cluster, rnd, work):
    """Writers on, every member restarted in turn, writers off, every ack read back."""
    acks = os.path.join(work, f"acks-{cluster.name}-{rnd}.txt")
    eps = ",".join(cluster.endpoints())
    cmd = [args.bench, "--target", cluster.kind, "--endpoints", eps, "writes",
           "--clients", str(args.clients), "--acks", acks, "--prefix", f"rr{rnd}/",
           "--value-size", str(args.value_size), "--attempt-ms", str(args.attempt_ms)]
    writer = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    t0 = time.monotonic()
    time.sleep(args.warmup)
    restarts = []
    for i in reversed(range(cluster.size)):
        restarts.append(restart(args, cluster, i, t0))
        time.sleep(args.settle)
    # communicate() closes the writers' stdin: their end of the run.
    stdout, stderr = writer.communicate(timeout=60)
    try:
        w = json.loads(stdout)
    except json.JSONDecodeError:
        raise RuntimeError(f"{shlex.join(cmd)} failed: {stderr[-2000:]}")
    v = subprocess.run([args.bench, "--target", cluster.kind, "--endpoints", eps, "verify",
                        "--acks", acks], capture_output=True, text=True, timeout=600)
    try:
        ver = json.loads(v.stdout)
    except json.JSONDecodeError:
        raise RuntimeError(f"verify failed: {v.stderr[-2000:]}")
    # Machine noise: the longest gap before the first SIGTERM, when nothing was restarting.
    with open(acks) as f:
        times = [float(line.split()[1]) for line in f if line.strip()]
    first_term_ms = restarts[0]["sigterm_at_s"] * 1000
    calm = [t for t in times if 300 <= t <= first_term_ms]
    calm_gap = max((b - a for a, b in zip(calm, calm[1:])), default=0.0)
    res = {"system": cluster.name, "round": rnd, "acked": w["acked"],
           "calm_gap_ms": round(calm_gap, 1),
           "failed_attempts": w["failed_attempts"], "duration_ms": w["duration_ms"],
           "longest_gap_ms": round(w["longest_gap_ms"], 1),
           "longest_gap_at_ms": round(w["longest_gap_at_ms"], 1),
           "top_gaps": [[round(a, 1), round(b, 1)] for a, b in w["top_gaps"][:5]],
           "lost": ver["missing"] + ver["wrong_value"], "read_errors": ver["read_errors"],
           "restarts": restarts, "first_errors": w["first_errors"][:5]}
    log(f"{cluster.name:9} round {rnd}: {w['acked']} acked, longest gap "
        f"{res['longest_gap_ms']:.0f} ms at {res['longest_gap_at_ms'] / 1000:.2f} s "
        f"(before any restart: {calm_gap:.0f} ms), "
        f"lost {res['lost']}, read errors {res['read_errors']}; restarts {restarts}")
    return res


def write_report(args, meta, runs):
    by = {}
    for r in runs:
        by.setdefault(r["system"], []).append(r)
    med = {s: {"longest_gap_ms": statistics.median(x["longest_gap_ms"] for x in rs),
               "calm_gap_ms": statistics.median(x["calm_gap_ms"] for x in rs),
               "acked": statistics.median(x["acked"] for x in rs),
               "lost": sum(x["lost"] for x in rs), "rounds": len(rs)}
           for s, rs in by.items()}
    L = []
    A = L.append
    A("# Rolling restart under write load: omnikv vs etcd\n")
    A(f"Generated by `{meta['command']}` on {meta['started']} ({meta['machine']}); "
      f"{meta['versions'].get('etcd', 'etcd')}. One interleaved run: each round restarts "
      "every member of the omnikv cluster, then of the etcd cluster, both clusters up "
      f"throughout; {args.clients} writers of unique keys (`omnikv-bench writes`, the same "
      "fail-over logic for both systems), each member in turn SIGTERMed, kept down "
      f"{args.down} s, started again and waited for, {args.settle} s between members; a write "
      f"attempt gives up after {args.attempt_ms} ms and the writer tries the next member. "
      "omnikv's leader hands over by itself on SIGTERM; etcd's leader is moved first with "
      "`etcdctl move-leader`. Every acknowledged key is read back after the round.\n")
    A(f"Medians of {args.rounds} rounds.\n")
    A("| system | longest write gap (median) | longest gap before any restart (noise) | "
      "acked writes per round | acked writes lost |")
    A("|---|---|---|---|---|")
    for s in ("omnikv-3", "etcd-3", "omnikv-3-no-handoff"):
        if s in med:
            A(f"| {s} | {med[s]['longest_gap_ms']:.0f} ms | {med[s]['calm_gap_ms']:.0f} ms | "
              f"{med[s]['acked']:.0f} | {med[s]['lost']} |")
    if "omnikv-3" in med and "etcd-3" in med and med["etcd-3"]["longest_gap_ms"]:
        ratio = med["omnikv-3"]["longest_gap_ms"] / med["etcd-3"]["longest_gap_ms"]
        A(f"\nomnikv's longest gap is {ratio:.2f}x etcd's (target for omnikv: under 200 ms: "
          f"{'met' if med['omnikv-3']['longest_gap_ms'] < 200 else 'not met'}).")
    if "omnikv-3" in med and "omnikv-3-no-handoff" in med:
        A(f"Without the hand-off (`KVD_HANDOFF_TIMEOUT_MS=0`, the same rounds) omnikv's "
          f"longest gap is {med['omnikv-3-no-handoff']['longest_gap_ms']:.0f} ms: the "
          "election after the leader stops.\n")
    A("\n## Rounds\n")
    A("| system | round | longest gap | at | acked | lost | 5 longest gaps (start s, ms) |")
    A("|---|---|---|---|---|---|---|")
    for r in runs:
        gaps = ", ".join(f"{a / 1000:.1f}: {b:.0f}" for a, b in r["top_gaps"])
        A(f"| {r['system']} | {r['round']} | {r['longest_gap_ms']:.0f} ms | "
          f"{r['longest_gap_at_ms'] / 1000:.2f} s | {r['acked']} | {r['lost']} | {gaps} |")
    with open(args.out, "w") as f:
        f.write("\n".join(L) + "\n")
    return med


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    base.common_args(ap)
    ap.add_argument("--etcdctl", default=shutil.which("etcdctl") or "etcdctl")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--attempt-ms", type=int, default=1000,
                    help="a write attempt's timeout: a writer then tries the next member")
    ap.add_argument("--down", type=float, default=0.5, help="seconds a member stays stopped")
    ap.add_argument("--settle", type=float, default=1.0,
                    help="seconds between a member serving again and the next restart")
    ap.add_argument("--skip", default="",
                    help="comma list of: omnikv,etcd,baseline (omnikv without the hand-off)")
    ap.add_argument("--port-base", type=int, default=28700)
    ap.add_argument("--work", help="data directory [default: a fresh temporary one, removed]")
    ap.add_argument("--out", default=os.path.join(ROOT, "BENCHMARKS-rolling-restart.md"))
    ap.add_argument("--json", default=os.path.join(ROOT, "bench", "results",
                                                   "rolling-restart.json"))
    args = ap.parse_args()
    base.resolve_binaries(args, [args.etcdctl])
    skip = set(filter(None, args.skip.split(",")))
    work = args.work or tempfile.mkdtemp(prefix="omnikv-rr-")
    meta = {"started": time.strftime("%Y-%m-%d %H:%M %Z"),
            "command": shlex.join(["bench/rolling_restart.py"] + sys.argv[1:]),
            "machine": base.machine_info(work), "versions": base.versions(args)}
    clusters = []
    if "omnikv" not in skip:
        clusters.append(base.Cluster("omnikv-3", "omnikv", 3, args.port_base, work, args))
    if "etcd" not in skip:
        clusters.append(base.Cluster("etcd-3", "etcd", 3, args.port_base + 100, work, args))
    if "baseline" not in skip:
        clusters.append(WithoutHandoff("omnikv-3-no-handoff", "omnikv", 3, args.port_base + 200,
                                       work, args))

    stop_all = base.stopper(clusters, work, remove=not args.work)
    runs = []
    try:
        for c in clusters:
            c.start()
        for c in clusters:
            c.wait_ready()
        for rnd in range(1, args.rounds + 1):
            for c in clusters:
                runs.append(one_round(args, c, rnd, work))
    finally:
        stop_all()
    meta["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    os.makedirs(os.path.dirname(args.json), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump({"meta": meta, "runs": runs}, f, indent=1)
    med = write_report(args, meta, runs)
    log(f"wrote {args.out} and {args.json}: {json.dumps(med)}")
    if any(r["lost"] for r in runs):
        sys.exit("acknowledged writes were lost")


if __name__ == "__main__":
    main()

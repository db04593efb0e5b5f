#!/usr/bin/env python3
"""Where the time goes in a 3-replica cluster under `omnikv-bench kv` load. Two measures:

perf (default): a CPU profile of every process at once (perf record -e cpu-clock, no hardware
  counters needed) of omnikv or etcd, plus optionally a syscall count of the leader (strace -c).
  Wall-clock shares: noisy on a shared machine.

callgrind (--callgrind): the omnikv leader (--follower: a follower) runs under valgrind's
  callgrind (the other replicas and the load generator natively) and the script reports its
  **instructions per committed put**, all its threads together, over a fixed number of operations, with the
  functions that cost the most (inclusive and self). Instruction counts do not depend on how
  busy the machine is, so two builds can be compared on a shared machine. The data set is
  loaded first (every key written once) with instrumentation off; then a warmup, then the
  counted run. Under valgrind the leader is ~50x slower, so its batches are larger than in a
  native run: compare builds at the same --clients, not with native figures.

syscalls (--syscalls): context switches and syscalls per put of each kvd (perf stat, software
  events and syscall tracepoints: counts, not times).

  usage: bench/profile.py --bin DIR [--system omnikv|etcd] [--clients 64] [--seconds 8]
                          [--strace] [--out FILE]
         bench/profile.py --bin DIR --syscalls [--clients 64] [--seconds 8]
         bench/profile.py --bin DIR --callgrind [--follower] [--clients 64] [--ops 3000]
                          [--out FILE]

DIR holds kvd and omnikv-bench (release builds; --kvd and --bench name them one by one).
Uses bench/run.py's cluster code.
"""

import argparse
import glob
import json
import os
import re
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run  # noqa: E402


class CallgrindCluster(run.Cluster):
    """A 3-replica omnikv cluster whose member 1 runs under callgrind, instrumentation off."""

    def __init__(self, *a, out_file):
        super().__init__(*a)
        self.out_file = out_file

    def command(self, m):
        cmd, env = super().command(m)
        # Under valgrind member 1 is slow: longer election timeouts for everyone, so that its
        # heartbeats are not taken for a failure.
        env["KVD_ELECTION_TICKS"] = "200"
        if m.label == 1:
            cmd = ["valgrind", "--tool=callgrind", "--instr-atstart=no",
                   f"--callgrind-out-file={self.out_file}", *cmd]
        return cmd, env


def bench_cmd(a, c, clients, *extra):
    return [a.bench, "--target", "omnikv", "--endpoints",
            ",".join(map(c.url, c.endpoints_from(0))), "-o", "json", "--timeout", "30s", "kv",
            "--clients", str(clients), "--value-size", str(a.value_size), "--keys",
            str(a.keys), *extra]


def run_json(cmd):
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"{cmd[0]} failed ({r.returncode}): {r.stderr[-2000:]}")
    return json.loads(r.stdout)


def callgrind_control(*args):
    subprocess.run(["callgrind_control", *args], check=True, stdout=subprocess.DEVNULL)


def move_leader(c, to):
    """Moves leadership to member index `to`; waits until it leads."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        lead = c.leader()
        if lead == to:
            return
        if lead is not None:
            c.probe("POST", c.members[lead].client, "/v1/move-leader",
                    json.dumps({"to": to + 1}).encode(),
                    {"content-type": "application/json", "omnikv-timeout-ms": "20000"}, 25)
        time.sleep(1)
    raise RuntimeError(f"member {to + 1} did not take leadership")


def top_functions(dump, inclusive, n):
    r = subprocess.run(["callgrind_annotate", f"--inclusive={'yes' if inclusive else 'no'}",
                        "--threshold=99", dump], capture_output=True, text=True)
    rows = []
    for line in r.stdout.splitlines():
        m = re.match(r"\s*([\d,]+)\s+\(\s*([\d.]+)%\)\s+(.*)", line)
        if m and "PROGRAM TOTALS" not in line:
            rows.append((int(m.group(1).replace(",", "")), m.group(2), m.group(3)))
    return rows[:n]


def short(name):
    """A Rust symbol without its crate path noise and hash."""
    name = re.sub(r"^\S+:", "", name, count=1) if name.startswith("/") or "???" in name else name
    name = re.sub(r"::h[0-9a-f]{16}", "", name)
    name = re.sub(r" \[[^\]]*\]$", "", name)
    return name[:150]


def callgrind(a):
    if a.system != "omnikv":
        sys.exit("profile.py: --callgrind profiles omnikv's leader only")
    work = tempfile.mkdtemp(prefix="omnikv-callgrind-")
    out_file = os.path.join(work, "callgrind.out")
    c = CallgrindCluster("omnikv-3", "omnikv", 3, a.port_base, work, a, out_file=out_file)
    report = []
    try:
        c.start()
        c.wait_ready(deadline_s=300)
        # Member 1 runs under valgrind: the leader, or with --follower a follower.
        move_leader(c, 1 if a.follower else 0)
        pid = c.members[0].proc.pid
        # The data set, every key once, uninstrumented (the leader runs ~5x slower only).
        run_json(bench_cmd(a, c, 64, "--ops", str(a.keys), "--key-order", "sequential",
                           "--warmup", "0"))
        callgrind_control("-i", "on", str(pid))
        run_json(bench_cmd(a, c, a.clients, "--ops", str(a.ops // 4), "--warmup", "0"))
        callgrind_control("-z", str(pid))
        r = run_json(bench_cmd(a, c, a.clients, "--ops", str(a.ops), "--warmup", "0"))
        callgrind_control("-d", str(pid))
        lead_after = c.leader()
        dumps = sorted(glob.glob(out_file + ".*"), key=os.path.getmtime)
        dump = dumps[-1]
        totals = 0
        with open(dump) as f:
            for line in f:
                if line.startswith(("summary:", "totals:")):
                    totals = int(line.split()[1])
        ok = r["ok"]
        role = "a follower" if a.follower else "the leader"
        report.append(f"# callgrind of {role} of omnikv-3 (member 1, pid {pid}), "
                      f"{a.clients} clients, {a.value_size}-byte puts, {a.keys} keys\n")
        report.append(f"kvd: {a.kvd}")
        report.append(f"counted run: {r['ops']} operations, {ok} ok, errors {r['errors']}; "
                      f"leader afterwards: member {None if lead_after is None else lead_after + 1}")
        report.append(f"instructions (all threads of member 1): {totals:,}")
        report.append(f"**instructions per put: {totals / max(ok, 1):,.0f}**\n")
        for inclusive, n in ((True, 60), (False, 40)):
            kind = "inclusive" if inclusive else "self"
            report.append(f"## top functions, {kind} (instructions per put, share)")
            for ir, pct, name in top_functions(dump, inclusive, n):
                report.append(f"{ir / max(ok, 1):>10,.0f}  {pct:>6}%  {short(name)}")
            report.append("")
        report.append(f"(raw dump: {dump})")
    finally:
        c.stop()
    return "\n".join(report)


SYSCALLS = ["futex", "epoll_wait", "read", "write", "writev", "recvfrom", "sendto", "fdatasync",
            "sched_yield"]


def syscalls(a):
    """Context switches and syscalls per committed put of every kvd (perf stat, -A per
    process), in a run of --seconds under load."""
    work = tempfile.mkdtemp(prefix="omnikv-syscalls-")
    c = run.Cluster("omnikv-3", "omnikv", 3, a.port_base, work, a)
    try:
        c.start()
        c.wait_ready()
        lead = c.leader() or 0
        run_json(bench_cmd(a, c, 64, "--ops", str(a.keys), "--key-order", "sequential",
                           "--warmup", "0"))
        events = ["context-switches"] + [f"syscalls:sys_enter_{x}" for x in SYSCALLS]
        bench = subprocess.Popen(
            [a.bench, "--target", "omnikv", "--endpoints",
             ",".join(map(c.url, c.endpoints_from(lead))), "-o", "json", "kv",
             "--clients", str(a.clients), "--duration", f"{a.seconds}s", "--warmup", "1s",
             "--value-size", str(a.value_size), "--keys", str(a.keys)],
            stdout=subprocess.PIPE)
        time.sleep(1.5)
        counts = {}
        for i, m in enumerate(c.members):
            counts[i] = subprocess.Popen(
                ["perf", "stat", "-x,", "-e", ",".join(events), "-p", str(m.proc.pid), "--",
                 "sleep", str(a.seconds - 1)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                text=True)
        per = {}
        for i, p in counts.items():
            _, err = p.communicate()
            for line in err.splitlines():
                f = line.split(",")
                if len(f) > 2 and f[0].strip().isdigit():
                    per.setdefault(f[2].replace("syscalls:sys_enter_", ""), {})[i] = int(f[0])
        out, _ = bench.communicate()
        r = json.loads(out)
        puts = r["ops_per_sec"] * (a.seconds - 1)
        lines = [f"# kvd context switches and syscalls per put, {a.clients} clients "
                 f"({r['ops_per_sec']:,.0f} puts/s, p99 {r['latency_ms']['p99']} ms); "
                 f"leader member {lead + 1}; kvd {a.kvd}", "",
                 "| event | " + " | ".join(f"member {i + 1}" + (" (leader)" if i == lead else "")
                                          for i in range(3)) + " | all |",
                 "|---|---|---|---|---|"]
        for ev, by in per.items():
            vals = [by.get(i, 0) / puts for i in range(3)]
            lines.append(f"| {ev} | " + " | ".join(f"{v:.2f}" for v in vals)
                         + f" | {sum(vals):.2f} |")
        return "\n".join(lines)
    finally:
        c.stop()


def perf(a):
    work = tempfile.mkdtemp(prefix="omnikv-profile-")
    c = run.Cluster(f"{a.system}-3", a.system, 3, a.port_base, work, a)
    report = []
    try:
        c.start()
        c.wait_ready()
        time.sleep(1)
        lead = c.leader()
        total = a.seconds + 4
        bench = subprocess.Popen(
            [a.bench, "--target", a.system, "--endpoints",
             ",".join(map(c.url, c.endpoints_from(lead or 0))), "-o", "json", "kv",
             "--clients", str(a.clients), "--duration", f"{total}s", "--warmup", "0",
             "--value-size", str(a.value_size), "--keys", str(a.keys),
             "--read-ratio", str(a.read_ratio)],
            stdout=subprocess.PIPE)
        time.sleep(2)
        pids = c.pids() + [bench.pid]
        data = os.path.join(work, "perf.data")
        subprocess.run(["perf", "record", "-q", "-F", "499", "-e", "cpu-clock", "-o", data,
                        "-p", ",".join(map(str, pids)), "--", "sleep", str(a.seconds)],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if a.strace:
            st = subprocess.run(["timeout", "3", "strace", "-c", "-f", "-p",
                                 str(c.members[lead].proc.pid)],
                                capture_output=True, text=True)
            report.append(f"## strace -c -f of the leader (member {lead + 1}) for 3 s "
                          f"(slows it down; counts, not times, are what matter)\n")
            report.append(st.stderr)
        out, _ = bench.communicate()
        report.insert(0, f"# {a.system}-3, {a.clients} clients, read ratio {a.read_ratio}, "
                         f"leader member {lead + 1} (pid {c.members[lead].proc.pid}), "
                         f"pids {pids} (last = omnikv-bench)\nomnikv-bench: "
                         f"{out.decode().strip()}\n")
        for sort, n in (("pid", 10), ("comm", 20), ("dso", 15), ("sym", 45)):
            r = subprocess.run(["perf", "report", "-i", data, "--stdio", "--no-children",
                                "--sort", sort, "-q", "--percent-limit", "0.4"],
                               capture_output=True, text=True)
            lines = [x for x in r.stdout.splitlines() if x.strip()][:n]
            report.append(f"## perf report --sort {sort} (top {n})\n" + "\n".join(lines) + "\n")
    finally:
        c.stop()
    return "\n".join(report)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default=os.path.join(run.ROOT, "target", "release"))
    ap.add_argument("--kvd")
    ap.add_argument("--bench", help="omnikv-bench [default: BIN/omnikv-bench]")
    ap.add_argument("--etcd", default="etcd")
    ap.add_argument("--system", choices=["omnikv", "etcd"], default="omnikv")
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--read-ratio", type=float, default=0.0)
    ap.add_argument("--value-size", type=int, default=100)
    ap.add_argument("--keys", type=int, default=10_000)
    ap.add_argument("--seconds", type=float, default=8.0, help="perf: seconds sampled")
    ap.add_argument("--strace", action="store_true", help="perf: count the leader's syscalls")
    ap.add_argument("--callgrind", action="store_true",
                    help="instructions per put of the leader under callgrind (see above)")
    ap.add_argument("--syscalls", action="store_true",
                    help="context switches and syscalls per put of each kvd (perf stat)")
    ap.add_argument("--ops", type=int, default=3000, help="callgrind: operations counted")
    ap.add_argument("--follower", action="store_true",
                    help="callgrind: profile a follower (member 2 leads) instead of the leader")
    ap.add_argument("--port-base", type=int, default=27700)
    ap.add_argument("--out")
    a = ap.parse_args()
    a.kvd = a.kvd or os.path.join(a.bin, "kvd")
    a.bench = a.bench or os.path.join(a.bin, "omnikv-bench")
    text = callgrind(a) if a.callgrind else syscalls(a) if a.syscalls else perf(a)
    print(text)
    if a.out:
        with open(a.out, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()

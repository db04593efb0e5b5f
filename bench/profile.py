#!/usr/bin/env python3
"""Where the time goes: a CPU profile of a 3-replica omnikv (or etcd) cluster under
`kvctl bench` load, every process sampled at once (perf record -e cpu-clock, no hardware
counters needed), plus a syscall count of the leader.

  usage: bench/profile.py --bin target/release [--system omnikv|etcd] [--clients 64]
                          [--seconds 8] [--out bench/results/profile-omnikv-64.txt]

Prints (and writes to --out) the CPU share per process, per DSO and the top symbols, and the
leader's syscall counts per operation (strace -c). Uses bench/run.py's cluster code.
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default=os.path.join(run.ROOT, "target", "release"))
    ap.add_argument("--kvd")
    ap.add_argument("--kvctl")
    ap.add_argument("--etcd", default="etcd")
    ap.add_argument("--system", choices=["omnikv", "etcd"], default="omnikv")
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--read-ratio", type=float, default=0.0)
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--strace", action="store_true", help="also count the leader's syscalls")
    ap.add_argument("--out")
    a = ap.parse_args()
    a.kvd = a.kvd or os.path.join(a.bin, "kvd")
    a.kvctl = a.kvctl or os.path.join(a.bin, "kvctl")
    work = tempfile.mkdtemp(prefix="omnikv-profile-")
    c = run.Cluster(f"{a.system}-3", a.system, 3, 27700, work, a)
    report = []
    try:
        c.start()
        c.wait_ready()
        time.sleep(1)
        lead = c.leader()
        total = a.seconds + 4
        bench = subprocess.Popen(
            [a.kvctl, "--endpoints", ",".join(c.endpoints()), "-o", "json", "bench",
             "--target", a.system, "--clients", str(a.clients), "--duration", f"{total}s",
             "--warmup", "0", "--read-ratio", str(a.read_ratio)],
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
                         f"pids {pids} (last = kvctl)\nkvctl: {out.decode().strip()}\n")
        for sort, n in (("pid", 10), ("comm", 20), ("dso", 15), ("sym", 45)):
            r = subprocess.run(["perf", "report", "-i", data, "--stdio", "--no-children",
                                "--sort", sort, "-q", "--percent-limit", "0.4"],
                               capture_output=True, text=True)
            lines = [x for x in r.stdout.splitlines() if x.strip()][:n]
            report.append(f"## perf report --sort {sort} (top {n})\n" + "\n".join(lines) + "\n")
    finally:
        c.stop()
    text = "\n".join(report)
    print(text)
    if a.out:
        with open(a.out, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""State-transfer figures on this machine (release build, fsync on, 100-byte values).

Two situations, each for every N in --keys:
  add     a 4th replica joins a 3-replica cluster holding N keys while writers keep writing:
          time from `kvctl reconfigure` until replica 4 serves every key, bytes and rate, peak
          RSS of the sender and of replica 4 during the transfer (VmHWM, reset just before),
          the receiving loop's longest pause (the longest `GET /v1/status` it took to answer,
          polled every 2 ms; and kvd's own `omnikv_loop_longest_iteration_microseconds` where
          the build has it), and the cluster's write throughput meanwhile.
  behind  replica F of a 3-replica cluster is stopped, the others write past their compaction,
          the third member O is stopped, and F restarts: it must take the state by checkpoint
          while it is the leader's only partner for a quorum. Writers keep writing to the
          leader: from when F answers (its loop runs) until it caught up, their longest gap
          between two acknowledgements, and throughput per second.

The N keys are written first with `omnikv-bench load` (transactions of 128 puts).

usage: bench/transfer.py --bin DIR [--keys 1000000] [--only add|behind] [--label TEXT]
                        [--bench PATH] [--keep DIR]  (omnikv-bench, default DIR/omnikv-bench;
                        a directory for each run's kvd logs)
Prints a markdown table per situation (`just bench-transfer`).
"""

import argparse
import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

# Peer ports BASE+pid, client ports BASE+1000+pid (OMNIKV_BENCH_PORT_BASE, default 27000).
BASE = int(os.environ.get("OMNIKV_BENCH_PORT_BASE", "27000"))
PEERS = ",".join(f"{p}=127.0.0.1:{BASE + p}" for p in range(1, 5))


def client_addr(p):
    return f"127.0.0.1:{BASE + 1000 + p}"


class Cluster:
    def __init__(self, bin_dir, work, bench):
        self.bin, self.work, self.procs, self.bench = bin_dir, work, {}, bench

    def start(self, p, config_id, nodes, env=None):
        e = dict(os.environ)
        e.update(
            PID=str(p),
            CONFIG_ID=str(config_id),
            NODES=f"[{nodes}]",
            KVD_DATA_DIR=f"{self.work}/data-{p}",
            KVD_CLIENT_ADDR=client_addr(p),
            KVD_PEER_ADDR=f"127.0.0.1:{BASE + p}",
            KVD_PEERS=PEERS,
            KVD_LOG="info",
        )
        e.update(env or {})
        log = open(f"{self.work}/kvd-{p}.log", "ab")
        self.procs[p] = subprocess.Popen([f"{self.bin}/kvd"], env=e, stdout=log, stderr=log)

    def kill(self, p):
        proc = self.procs.pop(p, None)
        if proc:
            proc.send_signal(signal.SIGKILL)
            proc.wait()

    def stop_all(self):
        for p in list(self.procs):
            self.kill(p)

    def kvctl(self, eps, *args):
        out = subprocess.run(
            [f"{self.bin}/kvctl", "--endpoints", eps, *args], capture_output=True, text=True
        )
        return out

    def status(self, p, timeout=1.0):
        try:
            c = http.client.HTTPConnection(client_addr(p), timeout=timeout)
            c.request("GET", "/v1/status")
            r = c.getresponse()
            body = r.read()
            c.close()
            return json.loads(body) if r.status == 200 else None
        except Exception:
            return None

    def metric(self, p, name):
        try:
            c = http.client.HTTPConnection(client_addr(p), timeout=2)
            c.request("GET", "/metrics")
            text = c.getresponse().read().decode()
            c.close()
        except Exception:
            return None
        for line in text.splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                return float(line.split()[-1])
        return None

    def wait(self, what, pred, timeout=600):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if pred():
                return
            time.sleep(0.05)
        raise SystemExit(f"timed out: {what}")

    def leader(self, among):
        for p in among:
            s = self.status(p)
            if s and s.get("leader"):
                return s["leader"]
        return None


def vm_hwm_kb(proc):
    with open(f"/proc/{proc.pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


def reset_hwm(proc):
    try:
        with open(f"/proc/{proc.pid}/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


class Poller(threading.Thread):
    """Asks replica `p` for its status every 2 ms; the longest answer, and the sender."""

    def __init__(self, p):
        super().__init__(daemon=True)
        self.p, self.stop, self.longest, self.sender = p, False, 0.0, None
        self.last_transfer = None

    def run(self):
        conn = None
        while not self.stop:
            t0 = time.monotonic()
            try:
                if conn is None:
                    conn = http.client.HTTPConnection(client_addr(self.p), timeout=30)
                conn.request("GET", "/v1/status")
                body = conn.getresponse().read()
                took = time.monotonic() - t0
                self.longest = max(self.longest, took)
                s = json.loads(body)
                t = s.get("transfer")
                if t:
                    self.sender = t.get("from")
                    self.last_transfer = t
            except Exception:
                conn = None
            time.sleep(0.002)


class Writers:
    """`n` threads putting 100-byte values to replica `p` one at a time: acknowledgement
    times (for the throughput per second and the longest gap)."""

    def __init__(self, p, n=16):
        self.p, self.stop, self.acks, self.errors = p, False, [], 0
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self.run, args=(w,), daemon=True) for w in range(n)]

    def start(self):
        for t in self.threads:
            t.start()

    def run(self, w):
        conn, i, value = None, 0, b"v" * 100
        while not self.stop:
            try:
                if conn is None:
                    conn = http.client.HTTPConnection(client_addr(self.p), timeout=60)
                conn.request("PUT", f"/v1/kv/w{w}-{i}", body=value)
                r = conn.getresponse()
                r.read()
                if r.status == 200:
                    with self.lock:
                        self.acks.append(time.monotonic())
                    i += 1
                else:
                    self.errors += 1
                    time.sleep(0.01)
            except Exception:
                conn = None
                self.errors += 1
                time.sleep(0.01)

    def finish(self):
        self.stop = True
        for t in self.threads:
            t.join(timeout=70)

    def summary(self, t0, t1):
        acks = sorted(a for a in self.acks if t0 <= a <= t1)
        gaps = [b - a for a, b in zip([t0] + acks, acks + [t1])]
        secs = max(int(t1 - t0), 1)
        per_s = [0] * (secs + 1)
        for a in acks:
            per_s[min(int(a - t0), secs)] += 1
        per_s = per_s[:secs] or [0]
        return {
            "ops_s": len(acks) / (t1 - t0) if t1 > t0 else 0,
            "min_s": min(per_s),
            "gap_s": max(gaps) if gaps else t1 - t0,
        }


KEEP = None  # --keep DIR: each run's kvd logs are copied there


def keep_logs(work, label):
    """Copies the run's kvd logs to --keep (if given), then removes its work dir."""
    if KEEP:
        dest = tempfile.mkdtemp(prefix=f"{label or 'run'}.", dir=KEEP)
        for name in os.listdir(work):
            if name.endswith(".log"):
                shutil.copy(os.path.join(work, name), dest)
        print(f"(logs kept in {dest})", file=sys.stderr, flush=True)
    shutil.rmtree(work, ignore_errors=True)


def load(c, n):
    """Writes bench-0 .. bench-<n-1> (100-byte values) with `omnikv-bench load`: transactions
    of 128 puts, 64 in flight over the three members. Keys per second."""
    eps = ",".join(f"http://{client_addr(p)}" for p in (1, 2, 3))
    out = subprocess.run([c.bench, "--target", "omnikv", "--endpoints", eps, "-o", "json",
                          "--timeout", "30s", "load", "--keys", str(n), "--value-size", "100",
                          "--batch", "128", "--clients", "64"], capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"load failed: {out.stderr}")
    return json.loads(out.stdout)["keys_per_sec"]


def cluster3(c, env=None):
    for p in (1, 2, 3):
        c.start(p, 1, "1,2,3", env)
    c.wait("a leader", lambda: c.leader((1, 2, 3)) is not None, 60)


def add(bin_dir, bench, n, label):
    work = tempfile.mkdtemp(prefix="omnikv-bench-transfer.")
    c = Cluster(bin_dir, work, bench)
    try:
        cluster3(c)
        rate = load(c, n)
        held = c.status(1)["keys"]
        c.start(4, 2, "1,2,3,4")
        c.wait("replica 4 answers", lambda: c.status(4) is not None, 60)
        for p in (1, 2, 3, 4):
            reset_hwm(c.procs[p])
        poll = Poller(4)
        poll.start()
        leader = c.leader((1, 2, 3))
        writers = Writers(leader)
        writers.start()
        time.sleep(1)
        t0 = time.monotonic()
        out = c.kvctl(",".join(client_addr(p) for p in (1, 2, 3)), "--timeout", "60s",
                      "reconfigure", "--nodes", "1,2,3,4", "--peer", f"4=127.0.0.1:{BASE + 4}")
        if out.returncode != 0:
            raise SystemExit(f"reconfigure failed: {out.stderr}")

        def serving():
            s = c.status(4)
            return s and s["role"] not in ("joining", "catching-up") and s["keys"] >= held

        c.wait("replica 4 serves", serving, 1200)
        t1 = time.monotonic()
        poll.stop = True
        writers.finish()
        w = writers.summary(t0, t1)
        sender = poll.sender
        rss_s = max(vm_hwm_kb(c.procs[p]) for p in (1, 2, 3)) if sender is None else vm_hwm_kb(c.procs[sender])
        rss_r = vm_hwm_kb(c.procs[4])
        b = c.metric(4, "omnikv_checkpoint_bytes_received_total") or 0
        loop_us = c.metric(4, "omnikv_loop_longest_iteration_microseconds")
        loop = f"{loop_us / 1000:.0f}" if loop_us is not None else "n/a"
        print(f"| {label} | {held} | {rate:.0f} | {t1 - t0:.2f} | {b / 1e6:.1f} | "
              f"{b / 1e6 / (t1 - t0):.1f} | {rss_s / 1024:.0f} (#{sender}) | {rss_r / 1024:.0f} | "
              f"{poll.longest * 1000:.0f} | {loop} | {w['ops_s']:.0f} | {w['min_s']} | "
              f"{w['gap_s'] * 1000:.0f} |", flush=True)
    finally:
        c.stop_all()
        keep_logs(work, label)


def behind(bin_dir, bench, n, label):
    work = tempfile.mkdtemp(prefix="omnikv-bench-transfer.")
    c = Cluster(bin_dir, work, bench)
    try:
        # Compaction every 1000 entries, keeping 100: the writes below pass it on both others.
        cluster3(c, {"KVD_SNAPSHOT_INTERVAL": "1000", "KVD_SNAPSHOT_KEEP": "100"})
        load(c, n)
        leader = c.leader((1, 2, 3))
        f, o = [p for p in (1, 2, 3) if p != leader]
        c.kill(f)
        # Past the others' compaction: F must take a checkpoint.
        eps = ",".join(client_addr(p) for p in (leader, o))
        c.kvctl(eps, "bench", "--clients", "64", "--ops", "30000", "--keys", str(20 * n),
                "--warmup", "0", "--value-size", "100")
        held = c.status(leader)["keys"]
        c.kill(o)
        writers = Writers(leader)
        writers.start()
        time.sleep(1)
        t0 = time.monotonic()
        c.start(f, 1, "1,2,3")
        t_up = None
        poll = Poller(f)

        def caught_up():
            nonlocal t_up
            s = c.status(f)
            if s and t_up is None:
                # F answers: from here on its loop runs (before, the cluster had no quorum).
                t_up = time.monotonic()
                poll.start()
            return s and s["role"] not in ("joining", "catching-up") and s["keys"] >= held

        c.wait("F caught up", caught_up, 1200)
        t1 = time.monotonic()
        time.sleep(1)
        poll.stop = True
        writers.finish()
        w = writers.summary(t_up, t1)
        b = c.metric(f, "omnikv_checkpoint_bytes_received_total") or 0
        loop_us = c.metric(f, "omnikv_loop_longest_iteration_microseconds")
        loop = f"{loop_us / 1000:.0f}" if loop_us is not None else "n/a"
        print(f"| {label} | {held} | {t_up - t0:.2f} | {t1 - t_up:.2f} | {b / 1e6:.1f} | {poll.longest * 1000:.0f} | "
              f"{loop} | {w['ops_s']:.0f} | {w['min_s']} | {w['gap_s'] * 1000:.0f} | "
              f"{writers.errors} |", flush=True)
    finally:
        c.stop_all()
        keep_logs(work, label)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--keys", default="1000000")
    ap.add_argument("--only", choices=["add", "behind"])
    ap.add_argument("--label", default="")
    ap.add_argument("--bench", help="the omnikv-bench binary [default: BIN/omnikv-bench]")
    ap.add_argument("--keep", help="a directory to copy each run's kvd logs into")
    a = ap.parse_args()
    global KEEP
    KEEP = a.keep
    keys = [int(k) for k in a.keys.split(",")]
    bench = a.bench or os.path.join(a.bin, "omnikv-bench")
    if a.only in (None, "add"):
        print("\n## Adding a 4th replica (writers: 16, one put at a time each, to the leader)\n")
        print("| build | keys held | preload (keys/s) | serving after (s) | MB received | MB/s | "
              "sender peak RSS (MB) | receiver peak RSS (MB) | longest status answer (ms) | "
              "longest loop iteration (ms) | writes/s during | worst second | longest write gap (ms) |")
        print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
        for n in keys:
            add(a.bin, bench, n, a.label)
    if a.only in (None, "behind"):
        print("\n## A follower behind compaction takes a checkpoint while the third member is down\n")
        print("| build | keys held | restart until it answers (s) | then caught up after (s) | MB received | longest status answer (ms) | "
              "longest loop iteration (ms) | writes/s during | worst second | longest write gap (ms) | "
              "write errors |")
        print("|---|---|---|---|---|---|---|---|---|---|---|")
        for n in keys:
            behind(a.bin, bench, n, a.label)


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Renewals at the speed of the HTTP stack, and cheap on the wire.

Measured in one run, on loopback:

1. throughput: wrk (-t1 -c16, keep-alive, the original client's renewal body,
   bench/renew.lua) against the HTTP ceiling (examples/http_ceiling.rs:
   lbmesh's own HTTP stack with a handler that only parses that body) and
   against `lbmesh serve` renewing 1 and then 1,000 registered servers, in
   rounds whose order alternates, so all see the same machine;
   lbmesh/ceiling per round, and each server's CPU time per request;
2. what the API's guards cost, in the same rounds: the ceiling with and
   without them (`--unguarded`: no caps, timeouts or activity watch), and
   lbmesh with its default caps and timeouts against lbmesh with them lifted
   by config (`[api]` caps at 1,000,000, timeouts of a day);
3. latency at an offered rate (bench/renew_paced.lua: 16 connections, one
   call each per 10 ms) for the same four servers (lbmesh with 1,000
   servers), in alternating rounds: the p99 a fleet sees, where wrk at full
   speed measures the queue of a saturated server, and the guards' cost on
   it;
4. fsync calls during pure renewals (strace -f on lbmesh while wrk runs),
   split between the request path and the store's background thread;
5. with --perf, where lbmesh's time goes (perf record -g during wrk);
6. gossip bytes/s per peer in a two-peer QUIC mesh holding 1,000 servers,
   idle and while those servers are renewed at 100/s and at full speed.

Usage: bench/renewals.py [--bin target/release/lbmesh]
       [--ceiling target/release/examples/http_ceiling] [--duration 10]
       [--rounds 4] [--perf] [--skip-gossip]
On a shared machine run it as `nice -n -10 bench/renewals.py` (every process
it starts inherits the priority), and compare within a run only.
Needs wrk, strace, tcpdump (root) and HAProxy; perf for --perf. Uses only
127.0.0.0/8; stops what it started and removes its files.
"""

import argparse
import collections
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from mesh import TOKEN, Keepalive, Mesh, free_port, steady  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
FIRST_PORT = 42000


def wrk(url, duration, frontends, servers, pid=None, pace_ms=None):
    """One wrk run; with `pid`, also that process's CPU time per request;
    with `pace_ms`, each connection waits that long between its calls."""
    cpu0 = cpu_seconds(pid) if pid else 0
    script, extra = "renew.lua", []
    if pace_ms is not None:
        script, extra = "renew_paced.lua", [str(pace_ms)]
    out = subprocess.run(
        ["wrk", "-t1", "-c16", f"-d{duration}s", "--latency", "-s", os.path.join(HERE, script),
         url, "--", TOKEN, str(FIRST_PORT), str(frontends), str(servers), *extra],
        check=True, capture_output=True, text=True).stdout
    line = next(ln for ln in out.splitlines() if ln.startswith("WRK "))
    res = json.loads(line[4:])
    if pid:
        res["cpu_us"] = (cpu_seconds(pid) - cpu0) * 1e6 / max(1, res["requests"])
    return res


def cpu_seconds(pid):
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


# The API's caps and timeouts lifted as far as the configuration allows
# (what the flood test's control does): the "without guards" side of the
# guard comparison on lbmesh itself.
LIFTED = ('[api]\nmax-connections = 1000000\nmax-connections-per-source = 1000000\n'
          'header-timeout = "1d"\nbody-timeout = "1d"\nidle-timeout = "1d"\n')


class Peer:
    """One `lbmesh serve` on its own loopback address."""

    def __init__(self, binary, root, ip="127.0.30.1", extra=""):
        self.dir = tempfile.mkdtemp(prefix="peer-", dir=root)
        self.ip = ip
        self.api = free_port(self.ip)
        token = os.path.join(self.dir, "token")
        with open(token, "w") as f:
            f.write(TOKEN + "\n")
        os.chmod(token, 0o600)
        cfg = os.path.join(self.dir, "lbmesh.toml")
        with open(cfg, "w") as f:
            f.write(f'node-id = "bench"\napi-listen = "{self.ip}:{self.api}"\n'
                    f'gossip-listen = "{self.ip}:{free_port(self.ip, socket.SOCK_DGRAM)}"\n'
                    f'bind-address = "{self.ip}"\ndata-dir = "{self.dir}/data"\ntoken-file = "{token}"\n'
                    f'[registry]\nmax-servers = 20000\nallowed-backends = ["0.0.0.0/0", "::/0", "127.0.0.0/8"]\n'
                    f'[haproxy]\nmin-reload-interval = "500ms"\n' + extra)
        self.log = open(os.path.join(self.dir, "lbmesh.log"), "w")
        self.proc = subprocess.Popen([binary, "serve", "--config", cfg], stdout=self.log, stderr=self.log,
                                     env={**os.environ, "LBMESH_LOG": "warn"})
        self.url = f"http://{self.ip}:{self.api}"
        end = time.time() + 60
        while time.time() < end:
            try:
                urllib.request.urlopen(self.url + "/healthz", timeout=2)
                return
            except Exception:
                time.sleep(0.1)
        raise RuntimeError("lbmesh did not become healthy")

    def register(self, frontends, servers):
        c = Keepalive(self.ip, self.api)
        for s in range(servers):
            for f in range(frontends):
                port = FIRST_PORT + f
                c.post("/hooks/update-haproxy", {"name": f"svc{port}", "frontend-port": str(port),
                                                  "backend-port": "30443", "dst-ip": f"127.77.{f}.{s + 1}",
                                                  "action": "add", "send-proxy": ""})

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()


class Ceiling:
    def __init__(self, binary, ip, unguarded=False):
        self.proc = subprocess.Popen([binary, f"{ip}:0"] + (["--unguarded"] if unguarded else []),
                                     stdout=subprocess.PIPE, text=True)
        self.url = "http://" + self.proc.stdout.readline().strip()

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait()


def show(label, r):
    return (f"{label} {r['rps']:>7,.0f} req/s p50 {r['p50_ms']:5.2f} p99 {r['p99_ms']:6.2f} ms "
            f"{r['cpu_us']:5.1f} us CPU/req")


def median(xs):
    xs = sorted(xs)
    n = len(xs)
    return (xs[n // 2] + xs[(n - 1) // 2]) / 2


def throughput(a, root):
    """Rounds of wrk against four servers, in an order that alternates from
    one round to the next (ABCD, DCBA, ...) so that drift in the machine's
    load falls on all of them alike:

    - ceiling: the HTTP ceiling, on lbmesh's API stack with its guards;
    - ceiling-unguarded: the same handler and stack without the guards;
    - lbmesh: `lbmesh serve` renewing registered servers, default config;
    - lbmesh-lifted: the same with the caps and timeouts lifted by config.
    """
    sides = {
        "ceiling": Ceiling(a.ceiling, "127.0.30.2"),
        "ceiling-unguarded": Ceiling(a.ceiling, "127.0.30.4", unguarded=True),
    }
    peers = {"lbmesh": Peer(a.bin, root), "lbmesh-lifted": Peer(a.bin, root, "127.0.30.3", LIFTED)}
    sides.update(peers)
    rows = []
    try:
        for frontends, servers in ((1, 1), (10, 100)):
            for p in peers.values():
                p.register(frontends, servers)
            n = frontends * servers
            order = list(sides)
            for r in range(a.rounds):
                res = {}
                for name in (order if r % 2 == 0 else order[::-1]):
                    res[name] = wrk(sides[name].url, a.duration, frontends, servers, sides[name].proc.pid)
                    if res[name]["non2xx"] or res[name]["socket_errors"]:
                        raise RuntimeError(f"{name}: errors: {res[name]}")
                rows.append((n, r, res))
                print(f"{n:>5} servers, round {r + 1}, load {os.getloadavg()[0]:5.2f}: "
                      f"lbmesh/ceiling {res['lbmesh']['rps'] / res['ceiling']['rps']:.0%}", flush=True)
                for name in sides:
                    print("    " + show(f"{name:<18}", res[name]), flush=True)
        paced_rows = paced(a, sides)
        fsyncs(a, peers["lbmesh"])
        if a.perf:
            profile(a, peers["lbmesh"])
    finally:
        for s in sides.values():
            s.stop()
    return rows, paced_rows


PACE_MS = 10


def paced(a, sides):
    """Latency at an offered rate a fleet would send (16 connections, one
    call each per PACE_MS: about 1,600 renewals a second, a fleet of 16,000
    servers renewing every 10 s) rather than at saturation: the ceiling and
    lbmesh (1,000 servers) in alternating rounds."""
    rows = []
    order = ["ceiling", "ceiling-unguarded", "lbmesh", "lbmesh-lifted"]
    for r in range(a.rounds):
        res = {}
        for name in (order if r % 2 == 0 else order[::-1]):
            res[name] = wrk(sides[name].url, a.duration, 10, 100, sides[name].proc.pid, PACE_MS)
            if res[name]["non2xx"] or res[name]["socket_errors"]:
                raise RuntimeError(f"{name}: errors: {res[name]}")
        rows.append(res)
        print(f" 1000 servers, paced, round {r + 1}, load {os.getloadavg()[0]:5.2f}", flush=True)
        for name in order:
            print("    " + show(f"{name:<18}", res[name]), flush=True)
    return rows


def paced_summary(rows):
    for name in ("ceiling", "ceiling-unguarded", "lbmesh", "lbmesh-lifted"):
        p99 = [r[name]["p99_ms"] for r in rows]
        rps = [r[name]["rps"] for r in rows]
        print(f" 1000 servers, paced (16 connections, one call each per {PACE_MS} ms), {name}: "
              f"{median(rps):,.0f} req/s, p99 median {median(p99):.2f} ms "
              f"(rounds {min(p99):.2f}..{max(p99):.2f})"
              + ("; target < 2 ms" if name == "lbmesh" else ""))
    ratio = [r["lbmesh"]["p99_ms"] / r["ceiling"]["p99_ms"] for r in rows]
    print(f" 1000 servers, paced: lbmesh/ceiling p99 median {median(ratio):.2f} "
          f"(rounds {min(ratio):.2f}..{max(ratio):.2f})")
    for guarded, bare in (("ceiling", "ceiling-unguarded"), ("lbmesh", "lbmesh-lifted")):
        p50 = [r[guarded]["p50_ms"] / r[bare]["p50_ms"] for r in rows]
        p99 = [r[guarded]["p99_ms"] / r[bare]["p99_ms"] for r in rows]
        cpu = [r[guarded]["cpu_us"] - r[bare]["cpu_us"] for r in rows]
        print(f"      guards, paced, {guarded} / {bare}: p50 median {median(p50):.3f} "
              f"(rounds {min(p50):.3f}..{max(p50):.3f}), p99 median {median(p99):.3f} "
              f"(rounds {min(p99):.3f}..{max(p99):.3f}), CPU/req difference median "
              f"{median(cpu):+.2f} us")


def summary(rows):
    for n in sorted({r[0] for r in rows}):
        rs = [r[2] for r in rows if r[0] == n]
        ratio = [r["lbmesh"]["rps"] / r["ceiling"]["rps"] for r in rs]
        p99 = [r["lbmesh"]["p99_ms"] for r in rs]
        print(f"{n:>5} servers, {len(rs)} rounds: lbmesh/ceiling median {median(ratio):.0%} "
              f"(rounds {min(ratio):.0%}..{max(ratio):.0%}; target >= 60 %); lbmesh p99 median "
              f"{median(p99):.2f} ms (rounds {min(p99):.2f}..{max(p99):.2f}; target < 2 ms); "
              f"ceiling p99 median {median([r['ceiling']['p99_ms'] for r in rs]):.2f} ms")
        for guarded, bare in (("ceiling", "ceiling-unguarded"), ("lbmesh", "lbmesh-lifted")):
            rps = [r[guarded]["rps"] / r[bare]["rps"] for r in rs]
            p = [r[guarded]["p99_ms"] / r[bare]["p99_ms"] for r in rs]
            cpu = [r[guarded]["cpu_us"] - r[bare]["cpu_us"] for r in rs]
            print(f"      guards, {guarded} / {bare}: req/s median {median(rps):.3f} "
                  f"(rounds {min(rps):.3f}..{max(rps):.3f}), p99 median {median(p):.3f} "
                  f"(rounds {min(p):.3f}..{max(p):.3f}), CPU/req difference median {median(cpu):+.2f} us "
                  f"(rounds {min(cpu):+.2f}..{max(cpu):+.2f})")


def fsyncs(a, peer):
    """fsync/fdatasync calls by thread while wrk renews 1,000 servers: the
    request path (tokio workers) against the store's writer thread, whose
    calls are also shown per second (lease ends each second; a compaction
    of the log now and then: a few more)."""
    trace = os.path.join(peer.dir, "strace.txt")
    st = subprocess.Popen(["strace", "-f", "-qq", "-ttt", "-e", "trace=fsync,fdatasync", "-o", trace,
                           "-p", str(peer.proc.pid)], stderr=subprocess.DEVNULL)
    time.sleep(1)
    names = {t: open(f"/proc/{peer.proc.pid}/task/{t}/comm").read().strip()
             for t in os.listdir(f"/proc/{peer.proc.pid}/task")}
    t0 = time.time()
    res = wrk(peer.url, 10, 10, 100)
    st.send_signal(signal.SIGINT)
    st.wait()
    by = collections.Counter()
    store_seconds = collections.Counter()
    for line in open(trace):
        m = re.match(r"(\d+)\s+([\d.]+) (fsync|fdatasync)\(", line)
        if m:
            thread = names.get(m.group(1), "?")
            by[thread] += 1
            if thread == "lbmesh-store" and float(m.group(2)) >= t0:
                store_seconds[int(float(m.group(2)) - t0)] += 1
    store = sum(n for t, n in by.items() if t == "lbmesh-store")
    request_path = sum(n for t, n in by.items() if t != "lbmesh-store")
    print(f"fsync+fdatasync during {res['requests']:,} renewals in 10 s (under strace, "
          f"{res['rps']:,.0f} req/s): request path {request_path}, store thread {store} ({dict(by)}); "
          f"store thread per second of the wrk run: {[store_seconds[i] for i in range(10)]}", flush=True)


def profile(a, peer):
    data = os.path.join(peer.dir, "perf.data")
    rec = subprocess.Popen(["perf", "record", "-F", "999", "-g", "-o", data, "-p", str(peer.proc.pid)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wrk(peer.url, 8, 10, 100)
    rec.send_signal(signal.SIGINT)
    rec.wait()
    rep = subprocess.run(["perf", "report", "-i", data, "--stdio", "--no-children", "--sort", "dso,sym",
                          "--percent-limit", "1.5", "-g", "none"], capture_output=True, text=True).stdout
    print("perf, self time by symbol (>= 1.5 %):")
    for line in rep.splitlines():
        if line.strip() and not line.startswith("#"):
            print("  " + line.strip()[:140])


def renew_at(m, rate, seconds):
    """Renews the 1,000 servers at peer 1 at `rate` per second."""
    c = Keepalive(m.peers[0]["ip"], m.peers[0]["api"])
    end = time.time() + seconds
    k = 0
    while time.time() < end:
        t = time.time()
        f, s = k % 10, (k // 10) % 100
        c.post("/hooks/update-haproxy", {"name": f"svc{FIRST_PORT + f}", "frontend-port": str(FIRST_PORT + f),
                                          "backend-port": "30443", "dst-ip": f"127.77.{f}.{s + 1}",
                                          "action": "add", "send-proxy": ""})
        k += 1
        time.sleep(max(0.0, 1 / rate - (time.time() - t)))


def gossip(a, root):
    m = Mesh(a.bin, 2, "quic", root)
    try:
        c = Keepalive(m.peers[0]["ip"], m.peers[0]["api"])
        for f in range(10):
            for s in range(100):
                c.post("/hooks/update-haproxy", {"name": f"svc{FIRST_PORT + f}",
                                                  "frontend-port": str(FIRST_PORT + f), "backend-port": "30443",
                                                  "dst-ip": f"127.77.{f}.{s + 1}", "action": "add",
                                                  "send-proxy": ""})
        m.wait_converged(2)
        url = f"http://{m.peers[0]['ip']}:{m.peers[0]['api']}"
        for label, load in (("idle", None), ("100 renewals/s", 100), ("full speed (wrk)", "wrk")):
            done = threading.Event()
            info = {}

            def drive():
                if load == "wrk":
                    info["wrk"] = wrk(url, 12, 10, 100)
                elif load:
                    renew_at(m, load, 12)
                done.set()

            th = threading.Thread(target=drive)
            th.start()
            time.sleep(1)
            bps, cpu = steady(m, 10)
            th.join()
            extra = f" ({info['wrk']['rps']:,.0f} renewals/s)" if "wrk" in info else ""
            print(f"gossip, 1,000 servers, {label:<17}{extra}: {bps / 1024:7.2f} KiB/s sent per peer, "
                  f"CPU {cpu:5.1f} % per peer", flush=True)
    finally:
        m.stop()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default="target/release/lbmesh")
    ap.add_argument("--ceiling", default="target/release/examples/http_ceiling")
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--perf", action="store_true")
    ap.add_argument("--skip-gossip", action="store_true")
    a = ap.parse_args()
    root = tempfile.mkdtemp(prefix="lbmesh-bench-renewals-")
    try:
        print(f"load average before: {os.getloadavg()[0]:.2f}", flush=True)
        rows, paced_rows = throughput(a, root)
        summary(rows)
        paced_summary(paced_rows)
        if not a.skip_gossip:
            gossip(a, root)
        print(f"load average after: {os.getloadavg()[0]:.2f}")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()

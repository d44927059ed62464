#!/usr/bin/env python3
"""Renewals at the speed of the HTTP stack, and cheap on the wire.

Measured in one run, on loopback:

1. throughput: wrk (-t1 -c16, keep-alive, the original client's renewal body,
   bench/renew.lua) against the HTTP ceiling (examples/http_ceiling.rs:
   lbmesh's own HTTP stack with a handler that only parses that body) and
   against `lbmesh serve` renewing 1 and then 1,000 registered servers,
   alternately, so both see the same machine; lbmesh/ceiling per round;
2. fsync calls during pure renewals (strace -f on lbmesh while wrk runs),
   split between the request path and the store's background thread;
3. with --perf, where lbmesh's time goes (perf record -g during wrk);
4. gossip bytes/s per peer in a two-peer QUIC mesh holding 1,000 servers,
   idle and while those servers are renewed at 100/s and at full speed.

Usage: bench/renewals.py [--bin target/release/lbmesh]
       [--ceiling target/release/examples/http_ceiling] [--duration 10]
       [--rounds 2] [--perf]
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


def wrk(url, duration, frontends, servers):
    out = subprocess.run(
        ["wrk", "-t1", "-c16", f"-d{duration}s", "--latency", "-s", os.path.join(HERE, "renew.lua"),
         url, "--", TOKEN, str(FIRST_PORT), str(frontends), str(servers)],
        check=True, capture_output=True, text=True).stdout
    line = next(ln for ln in out.splitlines() if ln.startswith("WRK "))
    return json.loads(line[4:])


class Peer:
    """One `lbmesh serve` on its own loopback address."""

    def __init__(self, binary, root):
        self.dir = tempfile.mkdtemp(prefix="peer-", dir=root)
        self.ip = "127.0.30.1"
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
                    f'[registry]\nmax-servers = 20000\n[haproxy]\nmin-reload-interval = "500ms"\n')
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


def throughput(a, root):
    ceiling = subprocess.Popen([a.ceiling, "127.0.30.2:0"], stdout=subprocess.PIPE, text=True)
    ceiling_url = "http://" + ceiling.stdout.readline().strip()
    peer = Peer(a.bin, root)
    rows = []
    try:
        for frontends, servers in ((1, 1), (10, 100)):
            peer.register(frontends, servers)
            n = frontends * servers
            for r in range(a.rounds):
                c = wrk(ceiling_url, a.duration, frontends, servers)
                l = wrk(peer.url, a.duration, frontends, servers)
                rows.append((n, r, c, l))
                print(f"{n:>5} servers round {r + 1}: ceiling {c['rps']:>9,.0f} req/s p99 {c['p99_ms']:5.2f} ms"
                      f" | lbmesh {l['rps']:>9,.0f} req/s p50 {l['p50_ms']:5.2f} p99 {l['p99_ms']:5.2f} ms"
                      f" non-2xx {l['non2xx']} | lbmesh/ceiling {l['rps'] / c['rps']:.0%}", flush=True)
        fsyncs(a, peer)
        if a.perf:
            profile(a, peer)
    finally:
        peer.stop()
        ceiling.send_signal(signal.SIGTERM)
        ceiling.wait()
    return rows


def fsyncs(a, peer):
    """fsync/fdatasync calls by thread while wrk renews 1,000 servers."""
    trace = os.path.join(peer.dir, "strace.txt")
    st = subprocess.Popen(["strace", "-f", "-qq", "-e", "trace=fsync,fdatasync", "-o", trace,
                           "-p", str(peer.proc.pid)], stderr=subprocess.DEVNULL)
    time.sleep(1)
    names = {t: open(f"/proc/{peer.proc.pid}/task/{t}/comm").read().strip()
             for t in os.listdir(f"/proc/{peer.proc.pid}/task")}
    res = wrk(peer.url, 5, 10, 100)
    st.send_signal(signal.SIGINT)
    st.wait()
    by = collections.Counter()
    for line in open(trace):
        m = re.match(r"(\d+)\s+(fsync|fdatasync)\(", line)
        if m:
            by[names.get(m.group(1), "?")] += 1
    store = sum(n for t, n in by.items() if t == "lbmesh-store")
    request_path = sum(n for t, n in by.items() if t != "lbmesh-store")
    print(f"fsync+fdatasync during {res['requests']:,} renewals in 5 s (under strace): "
          f"request path {request_path}, store thread {store} ({dict(by)})", flush=True)


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
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--perf", action="store_true")
    ap.add_argument("--skip-gossip", action="store_true")
    a = ap.parse_args()
    root = tempfile.mkdtemp(prefix="lbmesh-bench-renewals-")
    try:
        print(f"load average before: {os.getloadavg()[0]:.2f}", flush=True)
        rows = throughput(a, root)
        for n in sorted({r[0] for r in rows}):
            rs = [r for r in rows if r[0] == n]
            ratio = min(r[3]["rps"] / r[2]["rps"] for r in rs)
            p99 = max(r[3]["p99_ms"] for r in rs)
            print(f"{n:>5} servers: lbmesh/ceiling worst round {ratio:.0%} (target >= 60 %), "
                  f"lbmesh p99 worst {p99:.2f} ms (target < 2 ms)")
        if not a.skip_gossip:
            gossip(a, root)
        print(f"load average after: {os.getloadavg()[0]:.2f}")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()

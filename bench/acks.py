#!/usr/bin/env python3
"""Acknowledgement latency: `registry.ack = "local"` against "replicated".

Real `lbmesh serve` peers over QUIC on loopback (the launcher of
bench/mesh.py), 3 and 5 peers, both modes measured in the same run, meshes
started alternately so both see the same machine load:

* sequential: one keep-alive client sends writes to peer 1 and times each
  answer (a registration or delete of one of 50 servers of one frontend,
  cycled, so every write is a real change that must be stored);
* concurrent: 8 such clients at once (group commit on both sides).

Prints p50/p90/p99/max per mode and peer count, the replicated/local ratio,
and checks every replicated answer said "replicated": true.

Usage: bench/acks.py [--bin target/release/lbmesh] [--writes 1000]
Uses only 127.0.0.0/8.
"""

import argparse
import json
import os
import shutil
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from mesh import Keepalive, Mesh, free_port, pct  # noqa: E402


class AckMesh(Mesh):
    """bench/mesh.py's mesh with `registry.ack` set."""

    def __init__(self, binary, n, mode, root):
        self.mode = mode
        super().__init__(binary, n, "quic", root)

    def config(self, i, seeds):
        path = super().config(i, seeds)
        text = open(path).read().replace("[registry]\n", f'[registry]\nack = "{self.mode}"\n', 1)
        with open(path, "w") as f:
            f.write(text)
        return path


def writes(m, client, frontend, count, offset):
    """`count` writes through `client`; returns their latencies in seconds."""
    times = []
    replicated = []
    for k in range(count):
        s = (k // 2) % 50
        body = {"name": "acks", "frontend-port": str(frontend), "backend-port": str(31000 + offset),
                "dst-ip": f"198.18.{200 + offset}.{s + 1}", "action": "add" if k % 2 == 0 else "delete"}
        t0 = time.perf_counter()
        out = json.loads(client.post("/hooks/update-haproxy", body))
        times.append(time.perf_counter() - t0)
        replicated.append(out.get("replicated"))
    return times, replicated


def run(binary, n, mode, count, root):
    m = AckMesh(binary, n, mode, root)
    try:
        ip, port = m.peers[0]["ip"], m.peers[0]["api"]
        frontend = free_port(ip)
        c = Keepalive(ip, port)
        c.post("/hooks/update-haproxy?wait=applied", {"name": "acks", "frontend-port": str(frontend),
                                                       "backend-port": "30000", "dst-ip": "198.18.199.1",
                                                       "action": "add"})
        m.wait_converged(n)
        writes(m, c, frontend, 50, 0)  # warm-up
        seq, rep = writes(m, c, frontend, count, 0)
        conc, crep = [], []
        lock = threading.Lock()

        def client(j):
            t, r = writes(m, Keepalive(ip, port), frontend, count // 4, 1 + j)
            with lock:
                conc.extend(t)
                crep.extend(r)

        threads = [threading.Thread(target=client, args=(j,)) for j in range(8)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        rate = len(conc) / (time.perf_counter() - t0)
        expect = True if mode == "replicated" else None
        bad = sum(1 for r in rep + crep if r != expect)
        return seq, conc, rate, bad
    finally:
        m.stop()


def line(label, xs):
    ms = [x * 1000 for x in xs]
    return (f"{label:<34} p50 {pct(ms, .5):6.2f}  p90 {pct(ms, .9):6.2f}  p99 {pct(ms, .99):6.2f}"
            f"  max {max(ms):7.2f} ms  ({len(ms)} writes)")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default="target/release/lbmesh")
    ap.add_argument("--writes", type=int, default=1000)
    a = ap.parse_args()
    root = tempfile.mkdtemp(prefix="lbmesh-bench-acks-")
    results = {}
    try:
        print(f"load average before: {os.getloadavg()[0]:.2f}", flush=True)
        for n in (3, 5):
            for mode in ("local", "replicated"):
                seq, conc, rate, bad = run(a.bin, n, mode, a.writes, root)
                results[(n, mode)] = (seq, conc)
                print(line(f"{n} peers {mode:<10} sequential", seq), flush=True)
                print(line(f"{n} peers {mode:<10} 8 clients", conc) + f"  {rate:,.0f} writes/s", flush=True)
                if bad:
                    print(f"  {bad} answers did not say what {mode} acknowledgements promise", flush=True)
        for n in (3, 5):
            (ls, lc), (rs, rc) = results[(n, "local")], results[(n, "replicated")]
            print(f"{n} peers replicated/local: sequential p50 {pct(rs, .5) / pct(ls, .5):.2f}x "
                  f"p99 {pct(rs, .99) / pct(ls, .99):.2f}x; 8 clients p99 {pct(rc, .99) / pct(lc, .99):.2f}x")
        worst = max(pct(results[(n, "replicated")][k], .99) for n in (3, 5) for k in (0, 1)) * 1000
        print(f"replicated p99, worst case: {worst:.2f} ms (target <= 10 ms: {'met' if worst <= 10 else 'NOT met'})")
        print(f"load average after: {os.getloadavg()[0]:.2f}")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()

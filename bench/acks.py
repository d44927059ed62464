#!/usr/bin/env python3
"""Acknowledgement latency: `registry.ack = "local"` against "replicated".

Real `lbmesh serve` peers over QUIC on loopback (the launcher of
bench/mesh.py), 3 and 5 peers, both modes measured in the same run, meshes
started alternately so both see the same machine load:

* sequential: one keep-alive client sends writes to peer 1 and times each
  answer (a registration or delete of one of 50 servers of one frontend,
  cycled, so every write is a real change that must be stored);
* concurrent: 8 such clients at once (group commit on both sides).

Prints p50/p90/p99/max per mode and peer count, for new registrations (the
headline: the 200 a phone-home client waits for when it first registers) and
for all writes (registrations and deletes), the replicated/local ratio, the
load average before each part, and any answer that did not say
"replicated": true (with its latency: at once means no peer looked live,
about 1 s means the bound passed).

Usage: bench/acks.py [--bin target/release/lbmesh] [--writes 1000] [--peers 3 5]
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
    """`count` writes through `client`, a new registration then its delete;
    returns (kind, seconds, "replicated" field) per write."""
    out = []
    for k in range(count):
        s = (k // 2) % 50
        kind = "add" if k % 2 == 0 else "delete"
        body = {"name": "acks", "frontend-port": str(frontend), "backend-port": str(31000 + offset),
                "dst-ip": f"198.18.{200 + offset}.{s + 1}", "action": kind}
        t0 = time.perf_counter()
        answer = json.loads(client.post("/hooks/update-haproxy", body))
        out.append((kind, time.perf_counter() - t0, answer.get("replicated")))
    return out


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
        seq = writes(m, c, frontend, count, 0)
        conc = []
        lock = threading.Lock()

        def client(j):
            got = writes(m, Keepalive(ip, port), frontend, count // 4, 1 + j)
            with lock:
                conc.extend(got)

        threads = [threading.Thread(target=client, args=(j,)) for j in range(8)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        rate = len(conc) / (time.perf_counter() - t0)
        return seq, conc, rate
    finally:
        m.stop()


def line(label, xs):
    ms = [x * 1000 for x in xs]
    return (f"{label:<40} p50 {pct(ms, .5):6.2f}  p90 {pct(ms, .9):6.2f}  p99 {pct(ms, .99):6.2f}"
            f"  max {max(ms):7.2f} ms  ({len(ms)} writes)")


def adds(ws):
    return [t for kind, t, _ in ws if kind == "add"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default="target/release/lbmesh")
    ap.add_argument("--writes", type=int, default=1000)
    ap.add_argument("--peers", type=int, nargs="+", default=[3, 5])
    a = ap.parse_args()
    root = tempfile.mkdtemp(prefix="lbmesh-bench-acks-")
    results = {}
    try:
        for n in a.peers:
            for mode in ("local", "replicated"):
                print(f"{n} peers {mode}: load average {os.getloadavg()[0]:.2f} before", flush=True)
                seq, conc, rate = run(a.bin, n, mode, a.writes, root)
                results[(n, mode)] = (seq, conc)
                print(line(f"{n} peers {mode:<10} sequential, new", adds(seq)), flush=True)
                print(line(f"{n} peers {mode:<10} sequential, all", [t for _, t, _ in seq]), flush=True)
                print(line(f"{n} peers {mode:<10} 8 clients, new", adds(conc)), flush=True)
                print(line(f"{n} peers {mode:<10} 8 clients, all", [t for _, t, _ in conc])
                      + f"  {rate:,.0f} writes/s", flush=True)
                expect = True if mode == "replicated" else None
                bad = [(kind, t) for kind, t, r in seq + conc if r != expect]
                if bad:
                    print(f"  {len(bad)} answers did not say what {mode} acknowledgements promise; "
                          f"their latencies (ms): {sorted(round(t * 1000, 1) for _, t in bad)[:20]}", flush=True)
        print(f"load average after: {os.getloadavg()[0]:.2f}")
        for n in a.peers:
            (ls, lc), (rs, rc) = results[(n, "local")], results[(n, "replicated")]
            ls, lc, rs, rc = adds(ls), adds(lc), adds(rs), adds(rc)
            print(f"{n} peers replicated/local, new registrations: sequential p50 {pct(rs, .5) / pct(ls, .5):.2f}x "
                  f"p99 {pct(rs, .99) / pct(ls, .99):.2f}x; 8 clients p50 {pct(rc, .5) / pct(lc, .5):.2f}x "
                  f"p99 {pct(rc, .99) / pct(lc, .99):.2f}x")
        worst = max(pct(adds(results[(n, "replicated")][0]), .99) for n in a.peers) * 1000
        print(f"replicated p99 of a new registration, sequential, worst mesh size: {worst:.2f} ms "
              f"(target <= 10 ms: {'met' if worst <= 10 else 'NOT met'})")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Ten times the registry: one lbmesh peer holding 100,000 servers on 5,000
frontends, with its real HAProxy, then a second peer catching up.

Measures, on loopback, with the release binary:
* registering every server (keep-alive HTTP/1.1, 32 connections), and the
  time until HAProxy serves them all (`/v1/status`: in step, all servers);
* lbmesh's RSS (VmRSS, VmHWM) and HAProxy's (master and workers);
* `GET /v1/status` and `GET /v1/frontends` latency (sequential requests);
* an apply through the Runtime API (a server added to a frontend) and a
  reload (a new frontend), each timed with `?wait=applied`;
* `haproxy -c` of the config on disk;
* catch-up: a second peer (QUIC, same cluster CA) joins; time from its start
  until its registry digest equals the first peer's, and until its HAProxy
  serves every server.

Frontend f (0-based) is the f-th free TCP port from 20000 up on both peers'
bind addresses, owned by "svc<port>"; its server s is
127.<80 + f // 256>.<f % 256>.<s + 1>:30443. Nothing listens there, so
HAProxy's health checks (every 30 s here) are refused locally.

Usage: bench/scale.py [--bin target/release/lbmesh] [--frontends 5000]
                      [--servers-per-frontend 20] [--keep]
Prints one line per measurement and a JSON summary at the end.
"""

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from lbclient import Conn  # noqa: E402

TOKEN = "scale-bench-token-0123456789abcdef0123"


def free_port(ip, kind=socket.SOCK_STREAM):
    s = socket.socket(socket.AF_INET, kind)
    s.bind((ip, 0))
    p = s.getsockname()[1]
    s.close()
    return p


def port_free(ip, port):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.bind((ip, port))
        return True
    except OSError:
        return False
    finally:
        s.close()


def http(method, url, timeout=60):
    req = urllib.request.Request(url, method=method)
    req.add_header("X-Funkypenguin-Token", TOKEN)
    t0 = time.perf_counter()
    with urllib.request.urlopen(req, timeout=timeout) as r:
        body = r.read()
    return time.perf_counter() - t0, body


def rss_kib(pid):
    out = {}
    for line in open(f"/proc/{pid}/status"):
        k, _, v = line.partition(":")
        if k in ("VmRSS", "VmHWM"):
            out[k] = int(v.split()[0])
    return out


def children(pid):
    kids = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                stat = open(f"/proc/{d}/stat").read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(stat[1]) == pid:
                kids.append(int(d))
    return kids


def haproxy_rss_kib(lbmesh_pid):
    total = 0
    for master in children(lbmesh_pid):
        for p in [master] + children(master):
            try:
                total += rss_kib(p)["VmRSS"]
            except (OSError, KeyError):
                pass
    return total


class Peer:
    def __init__(self, binary, root, ca, node, ip, seeds, extra=""):
        self.binary, self.node, self.ip = binary, node, ip
        self.dir = os.path.join(root, node)
        os.makedirs(self.dir)
        subprocess.run([binary, "ca", "issue", "--dir", ca, "--node-id", node],
                       check=True, capture_output=True)
        self.api = free_port(ip)
        self.gossip = free_port(ip, socket.SOCK_DGRAM)
        token = os.path.join(root, "token")
        self.config = os.path.join(self.dir, "lbmesh.toml")
        seed_list = ", ".join(f'"{s}"' for s in seeds)
        with open(self.config, "w") as f:
            f.write(f'node-id = "{node}"\napi-listen = "{ip}:{self.api}"\n'
                    f'gossip-listen = "{ip}:{self.gossip}"\nbind-address = "{ip}"\n'
                    f'data-dir = "{self.dir}/data"\ntoken-file = "{token}"\nseeds = [{seed_list}]\n'
                    f'[registry]\nmax-servers = 200000\nmax-frontends = 10000\n{extra}'
                    f'[haproxy]\ncheck-interval = "30s"\n'
                    f'[mesh]\nca-cert = "{ca}/ca.crt"\ncert = "{ca}/{node}.crt"\nkey = "{ca}/{node}.key"\n')
        self.log = open(os.path.join(self.dir, "lbmesh.log"), "w")
        self.started = time.time()
        self.proc = subprocess.Popen([binary, "serve", "--config", self.config],
                                     stdout=self.log, stderr=self.log,
                                     env={**os.environ, "LBMESH_LOG": "warn"},
                                     start_new_session=True)

    def url(self, path):
        return f"http://{self.ip}:{self.api}{path}"

    def status(self):
        return json.loads(http("GET", self.url("/v1/status"))[1])

    def wait(self, what, pred, within, every=0.05):
        end = time.time() + within
        while time.time() < end:
            try:
                s = self.status()
                if pred(s):
                    return s
            except Exception:
                pass
            time.sleep(every)
        raise RuntimeError(f"{self.node}: {what} not within {within} s")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


def registration(port, f, s):
    return {"name": f"svc{port}", "frontend-port": str(port), "backend-port": "30443",
            "dst-ip": f"127.{80 + f // 256}.{f % 256}.{s + 1}", "action": "add", "ttl": "86400"}


async def register_all(url, bodies, conns=32):
    queue = list(reversed(bodies))
    refused = []

    async def worker():
        c = Conn(url)
        headers = {"X-Funkypenguin-Token": TOKEN, "Content-Type": "application/json"}
        while queue:
            body = queue.pop()
            status, out = await c.request("POST", "/hooks/update-haproxy", headers,
                                          json.dumps(body).encode())
            if status != 200:
                refused.append((status, out[:200]))
        await c.close()

    await asyncio.gather(*(worker() for _ in range(conns)))
    return refused


def latency(url, n):
    times, size = [], 0
    for _ in range(n):
        t, body = http("GET", url)
        times.append(t * 1000)
        size = len(body)
    times.sort()
    return {"p50_ms": statistics.median(times), "p99_ms": times[min(len(times) - 1, int(0.99 * len(times)))],
            "max_ms": times[-1], "bytes": size, "n": n}


def wait_applied(peer, body):
    c = socket.create_connection((peer.ip, peer.api))
    data = json.dumps(body).encode()
    t0 = time.perf_counter()
    c.sendall((f"POST /hooks/update-haproxy?wait=applied&timeout=60 HTTP/1.1\r\nHost: x\r\n"
               f"X-Funkypenguin-Token: {TOKEN}\r\nContent-Type: application/json\r\n"
               f"Connection: close\r\nContent-Length: {len(data)}\r\n\r\n").encode() + data)
    out = b""
    while True:
        b = c.recv(65536)
        if not b:
            break
        out += b
    t = time.perf_counter() - t0
    answer = json.loads(out.split(b"\r\n\r\n", 1)[1])
    if answer.get("applied") is not True:
        raise RuntimeError(f"not applied: {answer}")
    return t * 1000


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bin", default="target/release/lbmesh")
    ap.add_argument("--frontends", type=int, default=5000)
    ap.add_argument("--servers-per-frontend", type=int, default=20)
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    a = ap.parse_args()
    total = a.frontends * a.servers_per_frontend
    root = tempfile.mkdtemp(prefix="lbmesh-scale-")
    with open(os.path.join(root, "token"), "w") as f:
        f.write(TOKEN + "\n")
    os.chmod(os.path.join(root, "token"), 0o600)
    ca = os.path.join(root, "ca")
    subprocess.run([a.bin, "ca", "init", "--dir", ca], check=True, capture_output=True)
    ips = ["127.0.60.1", "127.0.61.1"]
    ports = [p for p in range(20000, 60000) if all(port_free(ip, p) for ip in ips)][:a.frontends + 1]
    frontend_ports, spare_port = ports[:a.frontends], ports[a.frontends]
    results = {"servers": total, "frontends": a.frontends}
    peers = []

    def say(key, value, text):
        results[key] = value
        print(text, flush=True)

    try:
        p1 = Peer(a.bin, root, ca, "lb1", ips[0], [])
        peers.append(p1)
        p1.wait("health", lambda s: s["haproxy"]["in_step"], 60)
        say("rss_empty_kib", rss_kib(p1.proc.pid), f"lbmesh RSS empty: {rss_kib(p1.proc.pid)}")
        bodies = [registration(port, f, s) for s in range(a.servers_per_frontend)
                  for f, port in enumerate(frontend_ports)]
        t0 = time.time()
        refused = asyncio.run(register_all(p1.url(""), bodies))
        if refused:
            raise RuntimeError(f"{len(refused)} registrations refused, e.g. {refused[:3]}")
        registered = time.time() - t0
        say("register_s", registered, f"registered {total} servers in {registered:.1f} s "
            f"({total / registered:.0f}/s)")
        p1.wait("all served", lambda s: s["haproxy"]["in_step"] and not s["haproxy"]["deferred"]
                and s["registry"]["servers"] == total, 600, every=0.1)
        served = time.time() - t0
        say("served_s", served, f"all {total} served by HAProxy {served:.1f} s after the first registration")
        time.sleep(5)
        say("rss_kib", rss_kib(p1.proc.pid), f"lbmesh RSS with {total} servers: {rss_kib(p1.proc.pid)}")
        say("haproxy_rss_kib", haproxy_rss_kib(p1.proc.pid),
            f"HAProxy RSS (master and workers): {haproxy_rss_kib(p1.proc.pid)} KiB")
        st = latency(p1.url("/v1/status"), 50)
        say("status", st, f"GET /v1/status: {st}")
        fr = latency(p1.url("/v1/frontends"), 5)
        say("frontends", fr, f"GET /v1/frontends: {fr}")
        say("rss_after_reads_kib", rss_kib(p1.proc.pid),
            f"lbmesh RSS after the reads: {rss_kib(p1.proc.pid)}")
        runtime_ms = wait_applied(p1, registration(frontend_ports[0], 0, a.servers_per_frontend))
        say("apply_runtime_ms", runtime_ms, f"a server added to a frontend, applied (Runtime API): {runtime_ms:.0f} ms")
        reload_ms = wait_applied(p1, registration(spare_port, a.frontends, 0))
        say("apply_reload_ms", reload_ms, f"a new frontend, applied (reload): {reload_ms:.0f} ms")
        cfg = os.path.join(p1.dir, "data", "haproxy.cfg")
        t = time.perf_counter()
        subprocess.run(["haproxy", "-c", "-q", "-f", cfg], check=True)
        check_ms = (time.perf_counter() - t) * 1000
        say("haproxy_check_ms", check_ms, f"haproxy -c of the config ({os.path.getsize(cfg)} bytes): {check_ms:.0f} ms")
        say("rss_final_kib", rss_kib(p1.proc.pid), f"lbmesh RSS at the end: {rss_kib(p1.proc.pid)}")

        digest = p1.status()["registry"]["digest"]
        servers_now = p1.status()["registry"]["servers"]
        p2 = Peer(a.bin, root, ca, "lb2", ips[1], [f"{ips[0]}:{p1.gossip}"])
        peers.append(p2)
        t0 = p2.started
        p2.wait("catch-up", lambda s: s["registry"]["digest"] == digest, 300, every=0.02)
        caught = time.time() - t0
        say("catchup_s", caught, f"catch-up of a new peer on {servers_now} servers: {caught:.2f} s")
        p2.wait("served", lambda s: s["haproxy"]["in_step"] and s["registry"]["servers"] == servers_now,
                600, every=0.1)
        say("catchup_served_s", time.time() - t0,
            f"... and its HAProxy serving them all: {time.time() - t0:.2f} s")
        say("rss_peer2_kib", rss_kib(p2.proc.pid), f"lbmesh RSS of the new peer: {rss_kib(p2.proc.pid)}")
    finally:
        for p in reversed(peers):
            p.stop()
        if a.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    print(json.dumps(results))


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Mesh benchmarks on loopback: real `lbmesh serve` peers with real HAProxy.

For each transport (plain UDP, then QUIC with mutual TLS) measured in the same
run, so the ratio between them is fair on a noisy machine:

* propagation: a registration accepted by peer 1 until HAProxy on every peer
  routes to it (seen on each peer's Runtime API), for 3 and 5 peers; p50/p99;
* steady-state gossip bytes/s and CPU per peer with 1,000 and 10,000 servers
  registered (loopback capture with tcpdump; /proc CPU times);
* catch-up (QUIC): a new peer joining a mesh that holds 10,000 servers, until
  its registry digest equals the others';
* restart: a peer killed with SIGKILL and started again 1 s later (a write
  made meanwhile elsewhere): from its start until its status says it has
  caught up, and until it holds the mesh's registry (both seen by a client
  polling `/v1/status` every 10 ms), and the daemon's own figure (its
  `caught_up_at_ms - started_ms`, from joining the mesh, without the
  process start); UDP and QUIC meshes run side by side and the restarts
  alternate between them, for 3 and 5 peers.

Usage: bench/mesh.py [--bin target/release/lbmesh] [--samples 200] [--quick]
                     [--only restart]
Needs root for tcpdump; uses only 127.0.0.0/8.
"""

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request

TOKEN = "bench-token-0123456789abcdef0123456789"


def free_port(ip, kind=socket.SOCK_STREAM):
    s = socket.socket(socket.AF_INET, kind)
    s.bind((ip, 0))
    p = s.getsockname()[1]
    s.close()
    return p


def http(method, url, body=None, timeout=30):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method)
    req.add_header("X-Funkypenguin-Token", TOKEN)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read() or b"null")


class Keepalive:
    """One keep-alive HTTP/1.1 connection for fast sequential requests."""

    def __init__(self, host, port):
        self.sock = socket.create_connection((host, port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.f = self.sock.makefile("rb")
        self.host = f"{host}:{port}"

    def post(self, path, body):
        data = json.dumps(body).encode()
        self.sock.sendall(
            (f"POST {path} HTTP/1.1\r\nHost: {self.host}\r\nContent-Type: application/json\r\n"
             f"X-Funkypenguin-Token: {TOKEN}\r\nContent-Length: {len(data)}\r\n\r\n").encode() + data)
        status = self.f.readline()
        length = 0
        while True:
            line = self.f.readline()
            if line in (b"\r\n", b""):
                break
            k, _, v = line.decode().partition(":")
            if k.lower() == "content-length":
                length = int(v)
        body = self.f.read(length)
        if b" 200 " not in status:
            raise RuntimeError(f"{status!r} {body!r}")
        return body


class Mesh:
    def __init__(self, binary, n, transport, root, subnet=10):
        self.binary, self.n, self.transport = binary, n, transport
        self.dir = tempfile.mkdtemp(prefix=f"lbmesh-bench-{transport}-", dir=root)
        with open(os.path.join(self.dir, "token"), "w") as f:
            f.write(TOKEN + "\n")
        os.chmod(os.path.join(self.dir, "token"), 0o600)
        self.ca = os.path.join(self.dir, "ca")
        subprocess.run([binary, "ca", "init", "--dir", self.ca], check=True, capture_output=True)
        self.peers = []
        self.procs = {}
        for i in range(n + 1):  # one spare peer for the catch-up
            ip = f"127.{subnet}.{10 + i}.1"
            self.peers.append({"i": i, "ip": ip, "api": free_port(ip),
                               "gossip": free_port(ip, socket.SOCK_DGRAM),
                               "data": os.path.join(self.dir, f"lb{i + 1}")})
        for p in self.peers[:n]:
            self.start(p["i"])
        for p in self.peers[:n]:
            self.wait_healthy(p["i"])
        self.wait_converged(n)

    def config(self, i, seeds):
        p = self.peers[i]
        node = f"lb{i + 1}"
        mesh = f'transport = "{self.transport}"\n'
        if self.transport == "quic":
            # Issued once: a restart keeps the peer's key, as on a real VM.
            if not os.path.exists(os.path.join(self.ca, f"{node}.crt")):
                subprocess.run([self.binary, "ca", "issue", "--dir", self.ca, "--node-id", node],
                               check=True, capture_output=True)
            mesh += (f'ca-cert = "{self.ca}/ca.crt"\ncert = "{self.ca}/{node}.crt"\n'
                     f'key = "{self.ca}/{node}.key"\n')
        path = os.path.join(self.dir, f"{node}.toml")
        with open(path, "w") as f:
            f.write(f'node-id = "{node}"\napi-listen = "{p["ip"]}:{p["api"]}"\n'
                    f'gossip-listen = "{p["ip"]}:{p["gossip"]}"\nbind-address = "{p["ip"]}"\n'
                    f'data-dir = "{p["data"]}"\ntoken-file = "{self.dir}/token"\n'
                    f'seeds = [{", ".join(seeds)}]\n'
                    f'[registry]\nmax-servers = 20000\nmax-frontends = 200\n'
                    f'allowed-backends = ["0.0.0.0/0", "::/0", "127.0.0.0/8"]\n'
                    f'[haproxy]\nmin-reload-interval = "200ms"\nmin-slots = 8\n'
                    f'[mesh]\n{mesh}')
        return path

    def start(self, i):
        seeds = [f'"{p["ip"]}:{p["gossip"]}"' for p in self.peers[:3]]
        path = self.config(i, seeds)
        log = open(os.path.join(self.dir, f"lb{i + 1}.log"), "w")
        self.procs[i] = subprocess.Popen([self.binary, "serve", "--config", path],
                                         stdout=log, stderr=log, env={**os.environ, "LBMESH_LOG": "warn"})

    def url(self, i, path):
        p = self.peers[i]
        return f"http://{p['ip']}:{p['api']}{path}"

    def wait_healthy(self, i, within=60):
        end = time.time() + within
        while time.time() < end:
            try:
                urllib.request.urlopen(self.url(i, "/healthz"), timeout=2)
                return
            except Exception:
                time.sleep(0.1)
        raise RuntimeError(f"lb{i + 1} not healthy")

    def status(self, i):
        return http("GET", self.url(i, "/v1/status"))

    def wait_converged(self, n, within=120):
        end = time.time() + within
        while time.time() < end:
            try:
                st = [self.status(i) for i in range(n)]
                if all(s["converged"] and s["haproxy"]["in_step"]
                       and sum(1 for p in s["peers"] if p["live"]) == n for s in st):
                    if len({s["registry"]["digest"] for s in st}) == 1:
                        return
            except Exception:
                pass
            time.sleep(0.2)
        raise RuntimeError("mesh did not converge")

    def runtime_has(self, i, backend, addr):
        path = os.path.join(self.peers[i]["data"], "haproxy.sock")
        s = socket.socket(socket.AF_UNIX)
        s.connect(path)
        s.sendall(f"show servers state {backend}\n".encode())
        out = b""
        while True:
            b = s.recv(65536)
            if not b:
                break
            out += b
        s.close()
        ip, port = addr
        return f" {ip} " in out.decode() and f" {port} " in out.decode()

    def pids(self, i):
        return [self.procs[i].pid]

    def stop(self):
        for p in self.procs.values():
            p.send_signal(signal.SIGTERM)
        for p in self.procs.values():
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def propagation(m, samples):
    """Registration at peer 1 → HAProxy on every peer routes to it."""
    frontend = free_port("127.0.10.1")
    backend = f"{frontend}_backend"
    c = Keepalive(m.peers[0]["ip"], m.peers[0]["api"])
    # A first server creates the frontend (a reload); the samples then add
    # servers to it, as new nodes and renewals do.
    c.post("/hooks/update-haproxy?wait=applied", {"name": "prop", "frontend-port": str(frontend),
                                                   "backend-port": "30000", "dst-ip": "198.18.250.1",
                                                   "action": "add"})
    m.wait_converged(m.n)
    times = []
    for k in range(samples):
        ip = f"198.18.{251 + k // 250}.{k % 250 + 1}"
        port = 30001 + (k % 1000)
        t0 = time.perf_counter()
        c.post("/hooks/update-haproxy", {"name": "prop", "frontend-port": str(frontend),
                                          "backend-port": str(port), "dst-ip": ip, "action": "add"})
        pending = set(range(m.n))
        while pending:
            for i in list(pending):
                if m.runtime_has(i, backend, (ip, port)):
                    pending.discard(i)
            if time.perf_counter() - t0 > 10:
                raise RuntimeError(f"sample {k} not applied everywhere within 10 s")
        times.append(time.perf_counter() - t0)
        # Keep within the pre-allocated slots: withdraw again.
        c.post("/hooks/update-haproxy", {"name": "prop", "frontend-port": str(frontend),
                                          "backend-port": str(port), "dst-ip": ip, "action": "delete"})
        time.sleep(0.01)
    return times


def register_many(m, count, base_port):
    """count servers over frontends of 200 servers, through peer 1."""
    c = Keepalive(m.peers[0]["ip"], m.peers[0]["api"])
    for k in range(count):
        c.post("/hooks/update-haproxy", {"name": f"svc{k // 200}", "frontend-port": str(base_port + k // 200),
                                          "backend-port": "30443",
                                          "dst-ip": f"198.19.{k // 250}.{k % 250 + 1}", "action": "add"})


def steady(m, seconds):
    """Gossip bytes/s and CPU per peer over `seconds` of quiet."""
    pcap = os.path.join(m.dir, "steady.pcap")
    ports = " or ".join(f"src port {p['gossip']}" for p in m.peers[:m.n])
    dump = subprocess.Popen(["tcpdump", "-i", "lo", "-U", "-w", pcap, f"udp and ({ports})"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1)
    ticks = os.sysconf("SC_CLK_TCK")

    def cpu(pid):
        f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        return (int(f[11]) + int(f[12])) / ticks

    c0 = {i: cpu(m.procs[i].pid) for i in range(m.n)}
    t0 = time.time()
    time.sleep(seconds)
    c1 = {i: cpu(m.procs[i].pid) for i in range(m.n)}
    elapsed = time.time() - t0
    dump.send_signal(signal.SIGINT)
    dump.wait()
    # Sum UDP payload bytes by source port from the pcap (Ethernet/IPv4 on lo).
    data = open(pcap, "rb").read()
    by_port = {}
    off = 24
    while off + 16 <= len(data):
        caplen = int.from_bytes(data[off + 8:off + 12], "little")
        pkt = data[off + 16:off + 16 + caplen]
        off += 16 + caplen
        if len(pkt) < 14 + 28:
            continue
        ip = pkt[14:]
        ihl = (ip[0] & 0x0f) * 4
        sport = int.from_bytes(ip[ihl:ihl + 2], "big")
        udp_len = int.from_bytes(ip[ihl + 4:ihl + 6], "big") - 8
        by_port[sport] = by_port.get(sport, 0) + udp_len
    per_peer = [by_port.get(p["gossip"], 0) / elapsed for p in m.peers[:m.n]]
    cpu_pct = [(c1[i] - c0[i]) / elapsed * 100 for i in range(m.n)]
    return sum(per_peer) / len(per_peer), sum(cpu_pct) / len(cpu_pct)


def catch_up(m):
    """A new peer joins a mesh holding many servers; time until it agrees."""
    digest = m.status(0)["registry"]["digest"]
    j = m.n
    t0 = time.time()
    m.start(j)
    m.wait_healthy(j)
    while time.time() - t0 < 120:
        try:
            if m.status(j)["registry"]["digest"] == digest:
                return time.time() - t0
        except Exception:
            pass
        time.sleep(0.05)
    raise RuntimeError("the new peer did not catch up within 120 s")


def restart_once(m, victim, k):
    """SIGKILL peer `victim`, write elsewhere, start it 1 s later; seconds
    from its start until it says it caught up, until it holds the mesh's
    registry, and the daemon's own time from joining to caught up."""
    m.procs[victim].kill()
    m.procs[victim].wait()
    time.sleep(1)
    http("POST", m.url(0, "/hooks/update-haproxy"),
         {"name": "restart", "frontend-port": "40999", "backend-port": str(30000 + k % 1000),
          "dst-ip": f"198.20.{k // 250}.{k % 250 + 1}", "action": "add"})
    want = m.status(0)["registry"]["digest"]
    t0 = time.time()
    m.start(victim)
    caught = holds = own = None
    while time.time() - t0 < 60:
        try:
            s = m.status(victim)
            now = time.time() - t0
            st = s.get("mesh", {})
            if caught is None and st.get("caught_up"):
                caught = now
                own = (st["caught_up_at_ms"] - st["started_ms"]) / 1000
            if holds is None and s["registry"]["digest"] == want:
                holds = now
            if caught is not None and holds is not None:
                return caught, holds, own
        except Exception:
            pass
        time.sleep(0.01)
    raise RuntimeError(f"lb{victim + 1} did not catch up within 60 s")


def restarts(binary, root, samples, sizes=(3, 5)):
    """Restart to caught-up, UDP and QUIC side by side, 3 and 5 peers."""
    out = {}
    for n in sizes:
        meshes = {t: Mesh(binary, n, t, root, subnet=20 + i) for i, t in enumerate(("udp", "quic"))}
        try:
            print(f"restart, {n} peers: load average {os.getloadavg()[0]:.2f} before", flush=True)
            got = {t: [] for t in meshes}
            for k in range(samples):
                for t, m in meshes.items():
                    got[t].append(restart_once(m, 1 + k % (n - 1), k))
            for t, xs in got.items():
                row = []
                for j, what in enumerate(("caught up", "holds the registry", "daemon's own")):
                    v = [x[j] for x in xs]
                    row.append((pct(v, .5), pct(v, .9), max(v)))
                out[f"restart_{t}_{n}"] = row
                print(f"restart {t:>4} {n} peers ({len(xs)} restarts): "
                      + "; ".join(f"{what} p50 {a:.3f} p90 {b:.3f} max {c:.3f} s" for what, (a, b, c)
                                  in zip(("caught up", "holds the registry", "daemon's own"), row)),
                      flush=True)
            u, q = out[f"restart_udp_{n}"], out[f"restart_quic_{n}"]
            print(f"restart ratio quic/udp, {n} peers: "
                  + "; ".join(f"{what} p50 {qa[0] / ua[0]:.2f} p90 {qa[1] / ua[1]:.2f}" for what, ua, qa
                              in zip(("caught up", "holds", "daemon's own"), u, q))
                  + f" (load average {os.getloadavg()[0]:.2f} after)", flush=True)
        finally:
            for m in meshes.values():
                m.stop()
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default="target/release/lbmesh")
    ap.add_argument("--samples", type=int, default=200)
    ap.add_argument("--quick", action="store_true", help="fewer samples and servers, for a smoke run")
    ap.add_argument("--only", choices=["restart"], help="run only this part")
    ap.add_argument("--restarts", type=int, default=12, help="restarts per transport and mesh size")
    ap.add_argument("--peers", type=int, nargs="+", default=[3, 5], help="mesh sizes for the restarts")
    a = ap.parse_args()
    samples = 30 if a.quick else a.samples
    big = 2000 if a.quick else 10000
    root = tempfile.mkdtemp(prefix="lbmesh-bench-")
    results = {}
    if a.only == "restart":
        try:
            print(json.dumps(restarts(a.bin, root, 4 if a.quick else a.restarts, a.peers)))
        finally:
            shutil.rmtree(root, ignore_errors=True)
        return
    try:
        for transport in ("udp", "quic"):
            for n in (3, 5):
                m = Mesh(a.bin, n, transport, root)
                try:
                    t = propagation(m, samples)
                    results[f"prop_{transport}_{n}"] = (pct(t, 0.5), pct(t, 0.99))
                    print(f"propagation {transport:>4} {n} peers: p50 {pct(t, .5) * 1000:6.1f} ms"
                          f"  p99 {pct(t, .99) * 1000:6.1f} ms  ({len(t)} samples)", flush=True)
                    if n == 3:
                        base = 41000
                        register_many(m, 1000, base)
                        m.wait_converged(n)
                        results[f"steady_{transport}_1k"] = steady(m, 10)
                        register_many(m, big - 1000, base + 5)
                        m.wait_converged(n)
                        results[f"steady_{transport}_{big}"] = steady(m, 10)
                        for key in (f"steady_{transport}_1k", f"steady_{transport}_{big}"):
                            bps, cpu = results[key]
                            print(f"steady {key}: {bps / 1024:7.1f} KiB/s gossip sent per peer, "
                                  f"CPU {cpu:5.2f} % per peer", flush=True)
                        if transport == "quic":
                            ct = catch_up(m)
                            results[f"catchup_{big}"] = ct
                            print(f"catch-up of a new peer on {big} servers (quic): {ct:.2f} s", flush=True)
                finally:
                    m.stop()
        for n in (3, 5):
            u, q = results[f"prop_udp_{n}"][1], results[f"prop_quic_{n}"][1]
            print(f"propagation p99 ratio quic/udp, {n} peers: {q / u:.2f}")
        results.update(restarts(a.bin, root, 4 if a.quick else a.restarts))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(json.dumps({k: v for k, v in results.items()}))


if __name__ == "__main__":
    main()

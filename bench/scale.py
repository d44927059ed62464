#!/usr/bin/env python3
"""Ten times the registry: one lbmesh peer holding 100,000 servers on 5,000
frontends, with its real HAProxy, then a new peer catching up; measured
first at a tenth of the size (10,000 servers on 500 frontends) on the same
daemon in the same run, as the baseline.

At each size, on loopback, with the release binary:
* registering the servers (keep-alive HTTP/1.1, 32 concurrent connections),
  and the time until HAProxy serves them all (`/v1/status`: in step, all
  servers);
* lbmesh's RSS (VmRSS, VmHWM) and HAProxy's (master and workers), and
  lbmesh's again right after the reads below and 6 s later (it returns what
  bulk work freed to the system within 5 s);
* `GET /v1/status`, `GET /v1/frontends` and `GET /v1/frontends/PORT`
  latency (sequential requests);
* renewals of one server, 500/s on one keep-alive connection, for 10 s
  alone and 10 s while another process loops on `GET /v1/frontends` with
  curl (latency from when each renewal was due: p50, p99, p99.9, max);
* applies timed with `?wait=applied`: a server added to an existing
  frontend (Runtime API, 5 times) and a new frontend (a reload);
* `haproxy -c` of the config on disk (best of 3);
* catch-up: a new peer (QUIC, same cluster CA) joins; time from its start
  until its registry digest equals the first peer's, and until its HAProxy
  serves every server.

Frontend f (0-based) is the f-th free TCP port from 20000 up on every
peer's bind address, owned by "svc<port>"; its server s is
127.<80 + f // 256>.<f % 256>.<s + 1>:30443. Nothing listens there, so
HAProxy's health checks (every 30 s here) are refused locally. Every daemon
gets an open-files limit of --nofile (raising the hard limit needs root):
HAProxy takes a file descriptor per server slot with health checks.

Usage: bench/scale.py [--bin target/release/lbmesh] [--frontends 5000]
                      [--baseline-frontends 500] [--servers-per-frontend 20]
                      [--connections 32] [--nofile 1048576] [--keep]
Prints one line per measurement and a JSON summary at the end.
"""

import argparse
import asyncio
from http.client import HTTPConnection
import json
import resource
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
    nofile = None
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
                    f'[registry]\nmax-servers = 200000\nmax-frontends = 10000\nallowed-backends = ["127.0.0.0/8"]\n{extra}'
                    f'[haproxy]\ncheck-interval = "30s"\n'
                    f'[mesh]\nca-cert = "{ca}/ca.crt"\ncert = "{ca}/{node}.crt"\nkey = "{ca}/{node}.key"\n')
        self.log = open(os.path.join(self.dir, "lbmesh.log"), "w")
        self.started = time.time()
        self.proc = subprocess.Popen([binary, "serve", "--config", self.config],
                                     stdout=self.log, stderr=self.log,
                                     env={**os.environ, "LBMESH_LOG": "warn"},
                                     start_new_session=True, preexec_fn=self.limits)

    def limits(self):
        """In the child: the open-files limit (raising the hard limit needs root)."""
        if self.nofile:
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (self.nofile, self.nofile))
            except (ValueError, OSError):
                pass

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


# Run in a process of its own: reads `GET /v1/frontends` whole with curl
# (whose chunked decoding costs little CPU, unlike Python's), again and
# again, until the given time; prints how many.
LISTING_LOOP = r"""
import subprocess, sys, time
url, token, until = sys.argv[1], sys.argv[2], float(sys.argv[3])
n = 0
while time.time() < until:
    subprocess.run(["curl", "-sf", "-o", "/dev/null", "-H", f"X-Funkypenguin-Token: {token}", url],
                   check=True)
    n += 1
print(n)
"""


def paced_renewals(peer, body, seconds, rate):
    """Renews one registered server on one keep-alive connection, one renewal
    every 1/rate s, for `seconds`. A renewal's latency runs from when it was
    due, not when it was sent: when one is held up, those due meanwhile
    count the wait too (as a client renewing at that rate sees it)."""
    c = HTTPConnection(peer.ip, peer.api, timeout=60)
    data = json.dumps(body).encode()
    headers = {"X-Funkypenguin-Token": TOKEN, "Content-Type": "application/json"}
    times, start = [], time.perf_counter()
    for i in range(int(seconds * rate)):
        due = start + i / rate
        wait = due - time.perf_counter()
        if wait > 0:
            time.sleep(wait)
        c.request("POST", "/hooks/update-haproxy", data, headers)
        r = c.getresponse()
        r.read()
        if r.status != 200:
            raise RuntimeError(f"renewal refused: {r.status}")
        times.append((time.perf_counter() - due) * 1000)
    c.close()
    times.sort()
    q = lambda f: times[min(len(times) - 1, int(f * len(times)))]  # noqa: E731
    return {"p50_ms": q(0.5), "p99_ms": q(0.99), "p999_ms": q(0.999), "max_ms": times[-1],
            "over_10ms": sum(t > 10 for t in times), "n": len(times)}


def renewals_under_listing(peer, body, seconds=10, rate=500):
    """Renewals (paced_renewals) alone, then while another process loops on
    `GET /v1/frontends`; the listings it completed meanwhile."""
    alone = paced_renewals(peer, body, seconds, rate)
    loop = subprocess.Popen([sys.executable, "-c", LISTING_LOOP, peer.url("/v1/frontends"), TOKEN,
                             str(time.time() + seconds + 0.5)], stdout=subprocess.PIPE, text=True)
    time.sleep(0.5)
    listing = paced_renewals(peer, body, seconds, rate)
    listings = int(loop.communicate(timeout=300)[0].strip() or 0)
    return alone, listing, listings


def wait_applied(peer, body):
    c = socket.create_connection((peer.ip, peer.api))
    data = json.dumps(body).encode()
    t0 = time.perf_counter()
    c.sendall((f"POST /hooks/update-haproxy?wait=applied&timeout=30 HTTP/1.1\r\nHost: x\r\n"
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


def measure(p1, label, frontend_ports, spare_port, extra, served, a, say):
    """Everything measured on `p1` at one size: memory, reads, an apply of
    each kind, `haproxy -c`. Each key is prefixed by `label` ("base" or
    "full"), so that the baseline and the full size sit side by side."""
    k = lambda name: f"{label}.{name}"  # noqa: E731
    time.sleep(5)
    say(k("rss_kib"), rss_kib(p1.proc.pid), f"lbmesh RSS: {rss_kib(p1.proc.pid)}")
    say(k("haproxy_rss_kib"), haproxy_rss_kib(p1.proc.pid),
        f"HAProxy RSS (master and workers): {haproxy_rss_kib(p1.proc.pid)} KiB")
    st = latency(p1.url("/v1/status"), 50)
    say(k("status"), st, f"GET /v1/status: {st}")
    fr = latency(p1.url("/v1/frontends"), 5)
    say(k("frontends"), fr, f"GET /v1/frontends: {fr}")
    one = latency(p1.url(f"/v1/frontends/{frontend_ports[0]}"), 50)
    say(k("frontend"), one, f"GET /v1/frontends/PORT: {one}")
    renewal = registration(frontend_ports[0], 0, 0)
    alone, listing, listings = renewals_under_listing(p1, renewal)
    say(k("renewals_alone"), alone, f"renewals of one server, 500/s on one connection: {alone}")
    say(k("renewals_listing"), listing, f"... while another connection loops on GET /v1/frontends "
        f"({listings} listings): {listing}")
    say(k("listings_under_renewals"), listings, "")
    say(k("rss_after_reads_kib"), rss_kib(p1.proc.pid),
        f"lbmesh RSS after the reads: {rss_kib(p1.proc.pid)}")
    # lbmesh gives what bulk work freed back to the system within 5 s.
    time.sleep(6)
    say(k("rss_settled_kib"), rss_kib(p1.proc.pid),
        f"lbmesh RSS 6 s after the reads: {rss_kib(p1.proc.pid)}")
    if not served:
        say(k("rss_final_kib"), rss_kib(p1.proc.pid), f"lbmesh RSS at the end: {rss_kib(p1.proc.pid)}")
        return
    runtime = [wait_applied(p1, registration(frontend_ports[i], i, a.servers_per_frontend + extra))
               for i in range(5)]
    say(k("apply_runtime_ms"), statistics.median(runtime),
        f"a server added to a frontend, applied (Runtime API), median of 5: "
        f"{statistics.median(runtime):.0f} ms ({', '.join(f'{t:.0f}' for t in runtime)})")
    reload_ms = wait_applied(p1, registration(spare_port, len(frontend_ports), 0))
    say(k("apply_reload_ms"), reload_ms, f"a new frontend, applied (reload): {reload_ms:.0f} ms")
    cfg = os.path.join(p1.dir, "data", "haproxy.cfg")
    checks = []
    for _ in range(3):
        t = time.perf_counter()
        subprocess.run(["haproxy", "-c", "-q", "-f", cfg], check=True)
        checks.append((time.perf_counter() - t) * 1000)
    say(k("haproxy_check_ms"), min(checks),
        f"haproxy -c of the config ({os.path.getsize(cfg)} bytes), best of 3: {min(checks):.0f} ms")
    say(k("rss_final_kib"), rss_kib(p1.proc.pid), f"lbmesh RSS at the end: {rss_kib(p1.proc.pid)}")


def catch_up(a, root, ca, node, ip, p1, say, label, served):
    """A new peer joins `p1`: time until its registry digest equals p1's,
    and until its HAProxy serves every server."""
    digest = p1.status()["registry"]["digest"]
    servers_now = p1.status()["registry"]["servers"]
    p2 = Peer(a.bin, root, ca, node, ip, [f"{p1.ip}:{p1.gossip}"])
    try:
        t0 = p2.started
        p2.wait("catch-up", lambda s: s["registry"]["digest"] == digest, 300, every=0.02)
        caught = time.time() - t0
        say(f"{label}.catchup_s", caught, f"catch-up of a new peer on {servers_now} servers: {caught:.2f} s")
        if served:
            p2.wait("served", lambda s: s["haproxy"]["in_step"] and s["registry"]["servers"] == servers_now,
                    600, every=0.1)
            say(f"{label}.catchup_served_s", time.time() - t0,
                f"... and its HAProxy serving them all: {time.time() - t0:.2f} s")
        say(f"{label}.rss_new_peer_kib", rss_kib(p2.proc.pid),
            f"lbmesh RSS of the new peer: {rss_kib(p2.proc.pid)}")
    finally:
        p2.stop()


def grow(p1, frontend_ports, first, last, a, say, label):
    """Registers the servers of frontends [first, last) and waits until
    HAProxy serves every server registered so far."""
    total = p1.status()["registry"]["servers"] + (last - first) * a.servers_per_frontend
    bodies = [registration(port, first + f, s) for s in range(a.servers_per_frontend)
              for f, port in enumerate(frontend_ports[first:last])]
    t0 = time.time()
    refused = asyncio.run(register_all(p1.url(""), bodies, a.connections))
    if refused:
        raise RuntimeError(f"{len(refused)} registrations refused, e.g. {refused[:3]}")
    registered = time.time() - t0
    say(f"{label}.register_s", registered, f"registered {len(bodies)} servers in {registered:.1f} s "
        f"({len(bodies) / registered:.0f}/s)")
    def settled(s):
        h = s["haproxy"]
        if s["registry"]["servers"] != total:
            return False
        if h["in_step"] and not h["deferred"]:
            return True
        # HAProxy cannot load this many checked servers under the open-files
        # limit: lbmesh keeps the previous workers serving and says why.
        last = h.get("last_apply") or {}
        return not last.get("ok", True) and "could not load" in (last.get("error") or "")

    s = p1.wait("all served", settled, 900, every=0.1)
    served = time.time() - t0
    if s["haproxy"]["in_step"]:
        say(f"{label}.served_s", served,
            f"all {total} served by HAProxy {served:.1f} s after the first of these registrations")
        return total, True
    error = s["haproxy"]["last_apply"]["error"]
    say(f"{label}.haproxy_error", error, f"all {total} registered after {served:.1f} s; "
        f"HAProxy cannot load them here (open-files hard limit "
        f"{resource.getrlimit(resource.RLIMIT_NOFILE)[1]}): {error}")
    return total, False


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bin", default="target/release/lbmesh")
    ap.add_argument("--frontends", type=int, default=5000)
    ap.add_argument("--baseline-frontends", type=int, default=500,
                    help="measure everything first at this many frontends (0: no baseline)")
    ap.add_argument("--servers-per-frontend", type=int, default=20)
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--nofile", type=int, default=1048576,
                    help="open-files limit for the daemons (HAProxy needs one per checked server slot)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    a = ap.parse_args()
    root = tempfile.mkdtemp(prefix="lbmesh-scale-")
    with open(os.path.join(root, "token"), "w") as f:
        f.write(TOKEN + "\n")
    os.chmod(os.path.join(root, "token"), 0o600)
    ca = os.path.join(root, "ca")
    subprocess.run([a.bin, "ca", "init", "--dir", ca], check=True, capture_output=True)
    ips = ["127.0.60.1", "127.0.61.1", "127.0.62.1"]
    ports = [p for p in range(20000, 60000) if all(port_free(ip, p) for ip in ips)][:a.frontends + 2]
    frontend_ports, spares = ports[:a.frontends], ports[a.frontends:]
    results = {"frontends": a.frontends, "servers_per_frontend": a.servers_per_frontend,
               "load_start": os.getloadavg()[0]}
    peers = []

    def say(key, value, text):
        results[key] = value
        if text:
            print(text, flush=True)

    try:
        Peer.nofile = a.nofile
        p1 = Peer(a.bin, root, ca, "lb1", ips[0], [])
        peers.append(p1)
        p1.wait("health", lambda s: s["haproxy"]["in_step"], 60)
        say("rss_empty_kib", rss_kib(p1.proc.pid), f"lbmesh RSS empty: {rss_kib(p1.proc.pid)}")
        sizes = [n for n in (a.baseline_frontends, a.frontends) if n > 0]
        done = 0
        labels = ["base", "full"][-len(sizes):]
        for n, (frontends, ip, spare, label) in enumerate(zip(sizes, ips[1:], spares, labels)):
            total, served = grow(p1, frontend_ports, done, frontends, a, say, label)
            done = frontends
            say(f"{label}.servers", total, f"{label}: {total} servers on {frontends} frontends, "
                f"load average {os.getloadavg()[0]}")
            say(f"{label}.load", os.getloadavg()[0], "")
            measure(p1, label, frontend_ports[:frontends], spare, n, served, a, say)
            catch_up(a, root, ca, f"lb{n + 2}", ip, p1, say, label, served)
    finally:
        for p in reversed(peers):
            p.stop()
        if a.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    results["load_end"] = os.getloadavg()[0]
    print(json.dumps(results))


if __name__ == "__main__":
    main()

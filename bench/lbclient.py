#!/usr/bin/env python3
"""Load client and bookkeeping for bench/run. Standard library only.

Sends phone-home registrations over keep-alive HTTP/1.1 connections, polls
/v1/status, watches the baseline's hook processes and prints the summary.
Addresses follow the scheme of bench/renew.lua: frontend f (0-based) is port
FIRST+f owned by "svc<port>", and its server s is 127.77.<f>.<s+1>:30443.
"""

import argparse
import asyncio
import json
import os
import re
import subprocess
import sys
import time
from datetime import datetime
from urllib.parse import urlsplit

BACKEND_PORT = 30443


def registration(first, f, s, action="add"):
    port = first + f
    if not (0 <= f < 256 and 0 <= s < 254):
        raise SystemExit(f"frontend {f} / server {s} outside the address scheme")
    return {
        "name": f"svc{port}",
        "frontend-port": str(port),
        "backend-port": str(BACKEND_PORT),
        "dst-ip": f"127.77.{f}.{s + 1}",
        "action": action,
        "send-proxy": "",
    }


class Conn:
    """One keep-alive HTTP/1.1 connection; reconnects when the server closes."""

    def __init__(self, url):
        u = urlsplit(url)
        self.host, self.port = u.hostname, u.port or 80
        self.reader = self.writer = None

    async def close(self):
        if self.writer is not None:
            self.writer.close()
            try:
                await self.writer.wait_closed()
            except OSError:
                pass
        self.reader = self.writer = None

    async def request(self, method, path, headers, body=b""):
        for attempt in (0, 1):
            fresh = self.writer is None
            if fresh:
                self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
            try:
                return await self._exchange(method, path, headers, body)
            except (ConnectionError, asyncio.IncompleteReadError):
                await self.close()
                # A kept-alive connection may have been closed by the server
                # meanwhile; retry once on a new one. (A repeated registration
                # is a renewal, so a retry is harmless.)
                if fresh or attempt == 1:
                    raise
        raise AssertionError("unreachable")

    async def _exchange(self, method, path, headers, body):
        head = [f"{method} {path} HTTP/1.1", f"Host: {self.host}:{self.port}"]
        head += [f"{k}: {v}" for k, v in headers.items()]
        head.append(f"Content-Length: {len(body)}")
        self.writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + body)
        await self.writer.drain()
        raw = await self.reader.readuntil(b"\r\n\r\n")
        lines = raw.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        hdrs = {}
        for line in lines[1:]:
            if ":" in line:
                k, v = line.split(":", 1)
                hdrs[k.strip().lower()] = v.strip()
        if "content-length" in hdrs:
            data = await self.reader.readexactly(int(hdrs["content-length"]))
        elif hdrs.get("transfer-encoding", "").lower() == "chunked":
            data = b""
            while True:
                size = int((await self.reader.readline()).split(b";")[0], 16)
                chunk = await self.reader.readexactly(size + 2)
                if size == 0:
                    break
                data += chunk[:-2]
        else:
            data = await self.reader.read()
            await self.close()
        if hdrs.get("connection", "").lower() == "close":
            await self.close()
        return status, data


async def send_all(url, token, bodies, conns):
    """Sends every body as a phone-home POST; returns timing and status counts."""
    path = "/hooks/update-haproxy"
    headers = {"Content-Type": "application/json", "X-Funkypenguin-Token": token}
    payloads = [json.dumps(b, separators=(",", ":")).encode() for b in bodies]
    statuses = {}
    queue = iter(payloads)

    async def worker():
        c = Conn(url)
        try:
            for p in queue:
                status, _ = await c.request("POST", path, headers, p)
                statuses[status] = statuses.get(status, 0) + 1
        finally:
            await c.close()

    t0 = time.monotonic()
    start_wall = time.time()
    await asyncio.gather(*(worker() for _ in range(min(conns, len(payloads)))))
    t1 = time.monotonic()
    return {
        "sent": len(payloads),
        "ok": statuses.get(200, 0),
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "send_s": round(t1 - t0, 4),
        "rps": round(len(payloads) / (t1 - t0), 1),
        "t0": t0,
        "start_wall": start_wall,
    }


async def get_status(conn, token):
    status, data = await conn.request(
        "GET", "/v1/status", {"Authorization": f"Bearer {token}"}
    )
    if status != 200:
        raise SystemExit(f"/v1/status answered {status}: {data[:200]!r}")
    return json.loads(data)


async def wait_applied(url, token, servers, timeout, interval=0.005):
    """Polls /v1/status until HAProxy serves exactly `servers` servers."""
    conn = Conn(url)
    deadline = time.monotonic() + timeout
    try:
        while True:
            st = await get_status(conn, token)
            if st["haproxy"]["in_step"] and st["registry"]["servers"] == servers:
                return time.monotonic(), st
            if time.monotonic() > deadline:
                return None, st
            await asyncio.sleep(interval)
    finally:
        await conn.close()


APPLIED = re.compile(r'^(\S+Z)\s+INFO .*\bapplied method="?(\w+)"? ms=(\d+) servers=(\d+)')


def log_size(path):
    return os.path.getsize(path) if path else 0


def timeline(path, offset, start_wall):
    """The daemon's "applied" log lines written after `offset`, as times since
    `start_wall`: each apply's end, how long it took (waits included), method
    and servers served."""
    if not path:
        return []
    with open(path, "rb") as f:
        f.seek(offset)
        text = f.read().decode("utf-8", "replace")
    out = []
    for line in re.sub(r"\x1b\[[0-9;]*m", "", text).splitlines():
        m = APPLIED.match(line)
        if m:
            end = datetime.fromisoformat(m[1].replace("Z", "+00:00")).timestamp()
            end_ms = round((end - start_wall) * 1000)
            took = int(m[3])
            out.append({"method": m[2], "start_ms": end_ms - took, "end_ms": end_ms,
                        "took_ms": took, "servers": int(m[4])})
    return out


def show_timeline(lines):
    for t in lines:
        print(f"  +{t['start_ms']:>5} .. +{t['end_ms']:>5} ms  {t['method']:<8} "
              f"took {t['took_ms']:>4} ms  servers={t['servers']}")


def plan(first, frontends, servers, from_server=0):
    # Interleaved like renew.lua: consecutive calls go to different frontends.
    return [
        registration(first, f, s)
        for s in range(from_server, servers)
        for f in range(frontends)
    ]


def cmd_register(a):
    async def run():
        offset = log_size(a.log)
        out = await send_all(a.url, a.token, plan(a.first, a.frontends, a.servers, a.from_server), a.conns)
        if a.wait is not None:
            done, st = await wait_applied(a.url, a.token, a.wait, a.timeout)
            out["applied"] = done is not None
            out["applied_s"] = round(done - out["t0"], 4) if done else None
            out["servers"] = st["registry"]["servers"]
            if a.log:
                out["timeline"] = timeline(a.log, offset, out["start_wall"])
        return out

    out = asyncio.run(run())
    emit(a, out)
    show_timeline(out.get("timeline", []))


def cmd_burst(a):
    async def run():
        conn = Conn(a.url)
        before = await get_status(conn, a.token)
        await conn.close()
        offset = log_size(a.log)
        bodies = plan(a.first, a.frontends, a.servers)
        sent = await send_all(a.url, a.token, bodies, a.conns)
        done, st = await wait_applied(a.url, a.token, len(bodies), a.timeout)
        hb, ha = before["haproxy"], st["haproxy"]
        return {
            "registrations": len(bodies),
            "ok": sent["ok"],
            "statuses": sent["statuses"],
            "start_wall": sent["start_wall"],
            "acked_s": sent["send_s"],
            "applied": done is not None,
            "applied_s": round(done - sent["t0"], 4) if done else None,
            "servers": st["registry"]["servers"],
            "frontends": st["registry"]["frontends"],
            "reloads": ha["reloads"] - hb["reloads"],
            "runtime_updates": ha["runtime_updates"] - hb["runtime_updates"],
            "timeline": timeline(a.log, offset, sent["start_wall"]),
        }

    out = asyncio.run(run())
    emit(a, out)
    print("applies (times since the first request; 'took' includes waiting for the reload interval):")
    show_timeline(out["timeline"])


def cmd_wait(a):
    done, st = asyncio.run(wait_applied(a.url, a.token, a.servers, a.timeout, 0.05))
    if done is None:
        raise SystemExit(
            f"not applied within {a.timeout}s: registry.servers={st['registry']['servers']} "
            f"in_step={st['haproxy']['in_step']}"
        )
    emit(a, {"servers": st["registry"]["servers"], "reloads": st["haproxy"]["reloads"]})


def cmd_status(a):
    async def run():
        c = Conn(a.url)
        try:
            return await get_status(c, a.token)
        finally:
            await c.close()

    print(json.dumps(asyncio.run(run())))


def children(pid):
    """The direct children of `pid`."""
    kids = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return kids
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                kids += f.read().split()
        except FileNotFoundError:
            pass
    return kids


def wait_no_children(pid, timeout, quiet=0.3):
    """Waits until `pid` has had no child for `quiet` seconds. Returns the time
    the last child was last seen (monotonic), the largest number seen at once,
    and how many were left at the timeout (0 when drained)."""
    deadline = time.monotonic() + timeout
    last_seen, most = time.monotonic(), 0
    while True:
        now = time.monotonic()
        n = len(children(pid))
        most = max(most, n)
        if n:
            last_seen = now
        elif now - last_seen >= quiet:
            return last_seen, most, 0
        if now > deadline:
            return last_seen, most, n
        time.sleep(0.02)


def cmd_drain(a):
    t0 = time.monotonic()
    last, most, left = wait_no_children(a.pid, a.timeout)
    emit(a, {"drain_s": round(last - t0, 2), "max_running": most, "left": left})


def frontends_in(config, first, count):
    try:
        with open(config) as f:
            text = f.read()
    except FileNotFoundError:
        return 0
    ports = {int(p) for p in re.findall(r"^frontend (\d+)_frontend$", text, re.M)}
    return len([p for p in ports if first <= p < first + count])


def cmd_baseline_apply(a):
    bodies = [registration(a.first, f, 0) for f in range(a.frontends)]
    sent = asyncio.run(send_all(a.url, a.token, bodies, a.conns))
    last, most, left = wait_no_children(a.pid, a.timeout)
    elapsed = last - sent["t0"]
    applied = frontends_in(a.config, a.first, a.frontends)
    emit(
        a,
        {
            "registrations": len(bodies),
            "ok": sent["ok"],
            "accepted_s": sent["send_s"],
            "elapsed_s": round(elapsed, 2),
            "max_running": most,
            "left": left,
            "applied": applied,
            "lost": len(bodies) - applied,
            "applied_per_s": round(applied / elapsed, 1),
        },
    )


def emit(a, out):
    """Prints a result (its timeline is shown apart) and records it if asked."""
    out = {k: v for k, v in out.items() if k != "t0"}
    if getattr(a, "record", None):
        name, path = a.record
        with open(path, "a") as f:
            f.write(json.dumps({"name": name, **out}) + "\n")
    print(json.dumps({k: v for k, v in out.items() if k != "timeline"}))


def cmd_timeit(a):
    best = None
    for _ in range(a.repeat):
        t0 = time.monotonic()
        subprocess.run(a.command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        ms = (time.monotonic() - t0) * 1000
        best = ms if best is None else min(best, ms)
    emit(a, {"ms": round(best, 1)})


def cmd_record(a):
    with open(a.path, "a") as f:
        f.write(json.dumps({"name": a.name, **json.loads(a.json)}) + "\n")


def cmd_summary(a):
    r = {}
    with open(a.path) as f:
        for line in f:
            d = json.loads(line)
            r.setdefault(d.pop("name"), {}).update(d)
    rows = []

    def row(what, lbmesh, baseline="-", ratio="-", target="-", met=None):
        rows.append((what, lbmesh, baseline, ratio, target, "-" if met is None else "yes" if met else "NO"))

    lb, wh = r.get("renew_lbmesh"), r.get("renew_webhook")
    if lb or wh:
        lb = lb or {"rps": 0, "p99_ms": 0, "non2xx": "-", "socket_errors": "-", "reloads": "-"}
        w = wh or {}
        row("1 renewals: req/s", f"{lb['rps']:.0f}", f"{w['rps']:.0f} accepted" if wh else "-",
            f"{lb['rps'] / w['rps']:.1f}x" if wh and w["rps"] else "-", ">= 20000", lb["rps"] >= 20000)
        row("1 renewals: p99 latency ms", f"{lb['p99_ms']:.2f}", f"{w['p99_ms']:.1f}" if wh else "-",
            "-", "< 5", lb["p99_ms"] < 5)
        row("1 renewals: non-2xx / socket errors", f"{lb['non2xx']} / {lb['socket_errors']}",
            f"{w['non2xx']} / {w['socket_errors']}" if wh else "-")
        row("1 renewals: HAProxy reloads during the run", str(lb.get("reloads", "-")), str(w.get("reloads", "-")))
        if lb.get("cpu_s") and lb.get("requests"):
            row("1 renewals: lbmesh CPU time per call, us", f"{lb['cpu_s'] * 1e6 / lb['requests']:.0f}")
    ba = r.get("apply_webhook")
    bu = r.get("burst_lbmesh")
    if bu:
        ms = bu["applied_s"] * 1000 if bu["applied_s"] is not None else None
        row("3 burst of 1000 new: all served, ms", f"{ms:.0f}" if ms is not None else "timeout",
            target="<= 2000", met=ms is not None and ms <= 2000)
        row("3 burst: reloads", str(bu["reloads"]), target="<= 5", met=bu["reloads"] <= 5)
    if ba or bu:
        per_s = bu["registrations"] / bu["applied_s"] if bu and bu["applied_s"] else None
        base = (f"{ba['applied_per_s']} ({ba['applied']}/{ba['registrations']} in "
                f"{ba['elapsed_s']} s, {ba['lost']} lost)") if ba else "-"
        row("2/3 applied registrations/s", f"{per_s:.0f}" if per_s else "-", base,
            f"{per_s / ba['applied_per_s']:.0f}x" if per_s and ba and ba["applied_per_s"] else "-")
    rss0, rss = r.get("rss_0"), r.get("rss_10k")
    if rss:
        row("4 RSS MiB with 10000 servers", f"{rss['rss_kib'] / 1024:.1f}",
            f"{rss0['rss_kib'] / 1024:.1f} (same daemon, 0 servers)" if rss0 else "-",
            f"{rss['rss_kib'] / rss0['rss_kib']:.1f}x" if rss0 else "-", "< 30", rss["rss_kib"] < 30 * 1024)
    for name, what in (("check_1k", "haproxy -c of the 1000-server config, ms"),
                       ("check_10k", "haproxy -c of the 10000-server config, ms")):
        if name in r:
            row(what, f"{r[name]['ms']:.0f}")

    sc = r.get("scale")
    if sc:
        def pair(key, scale=1.0, fmt="{:.1f}"):
            f, b = sc.get(f"full.{key}"), sc.get(f"base.{key}")
            out = [fmt.format(v * scale) if isinstance(v, (int, float)) else "-" for v in (f, b)]
            ratio = f"{f / b:.1f}x" if isinstance(f, (int, float)) and isinstance(b, (int, float)) and b else "-"
            return out[0], f"{out[1]} (10x fewer)", ratio, f
        full_rss = sc.get("full.rss_final_kib", {}).get("VmRSS")
        base_rss = sc.get("base.rss_final_kib", {}).get("VmRSS")
        if full_rss:
            row("12 scale: lbmesh RSS MiB", f"{full_rss / 1024:.1f}",
                f"{base_rss / 1024:.1f} (10x fewer)" if base_rss else "-",
                f"{full_rss / base_rss:.1f}x" if base_rss else "-", "< 76.3 (80 MB)", full_rss * 1024 < 80e6)
        for key, what, target in (("status", "GET /v1/status p50 ms", 50),
                                  ("frontends", "GET /v1/frontends p50 ms", None),
                                  ("frontend", "GET /v1/frontends/PORT p50 ms", None)):
            f, b = sc.get(f"full.{key}"), sc.get(f"base.{key}")
            if f:
                row(f"12 scale: {what}", f"{f['p50_ms']:.1f}", f"{b['p50_ms']:.1f} (10x fewer)" if b else "-",
                    f"{f['p50_ms'] / b['p50_ms']:.1f}x" if b else "-",
                    f"< {target}" if target else "-", f["p50_ms"] < target if target else None)
        full, base, ratio, f = pair("catchup_s", fmt="{:.2f}")
        if f is not None:
            row("12 scale: catch-up of a new peer, s", full, base, ratio, "< 3", f < 3)
        if "full.haproxy_error" in sc:
            row("12 scale: HAProxy at full size", "not loaded: " + sc["full.haproxy_error"][:60])

    head = ("benchmark", "lbmesh", "baseline", "ratio", "target", "met")
    widths = [max(len(str(x[i])) for x in rows + [head]) for i in range(len(head))]
    for x in [head, tuple("-" * w for w in widths)] + rows:
        print("| " + " | ".join(str(v).ljust(w) for v, w in zip(x, widths)) + " |")
    if "load" in r:
        print("1-minute load average before each part: "
              + ", ".join(f"{k} {v}" for k, v in r["load"].items()))


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)

    def target(sp):
        sp.add_argument("url")
        sp.add_argument("token")

    def recorded(sp):
        sp.add_argument("--record", nargs=2, metavar=("NAME", "FILE"))

    sp = sub.add_parser("register", help="send FRONTENDS x SERVERS registrations")
    target(sp)
    recorded(sp)
    sp.add_argument("first", type=int)
    sp.add_argument("frontends", type=int)
    sp.add_argument("servers", type=int)
    sp.add_argument("--from-server", type=int, default=0)
    sp.add_argument("--conns", type=int, default=32)
    sp.add_argument("--wait", type=int, metavar="SERVERS", help="then wait until HAProxy serves SERVERS")
    sp.add_argument("--timeout", type=float, default=60)
    sp.add_argument("--log", help="the daemon's log, to show its applies")
    sp.set_defaults(fn=cmd_register)

    sp = sub.add_parser("burst", help="register, then time until HAProxy serves all")
    target(sp)
    recorded(sp)
    sp.add_argument("first", type=int)
    sp.add_argument("frontends", type=int)
    sp.add_argument("servers", type=int)
    sp.add_argument("--conns", type=int, default=32)
    sp.add_argument("--timeout", type=float, default=30)
    sp.add_argument("--log", help="the daemon's log, to show its applies")
    sp.set_defaults(fn=cmd_burst)

    sp = sub.add_parser("wait", help="wait until HAProxy serves SERVERS servers")
    target(sp)
    recorded(sp)
    sp.add_argument("servers", type=int)
    sp.add_argument("--timeout", type=float, default=60)
    sp.set_defaults(fn=cmd_wait)

    sp = sub.add_parser("status", help="print /v1/status")
    target(sp)
    sp.set_defaults(fn=cmd_status)

    sp = sub.add_parser("drain", help="wait until process PID has no child left")
    recorded(sp)
    sp.add_argument("pid", type=int)
    sp.add_argument("--timeout", type=float, default=120)
    sp.set_defaults(fn=cmd_drain)

    sp = sub.add_parser("baseline-apply", help="registrations on distinct ports, then count what the baseline applied")
    target(sp)
    recorded(sp)
    sp.add_argument("first", type=int)
    sp.add_argument("frontends", type=int)
    sp.add_argument("--pid", type=int, required=True, help="the webhook process")
    sp.add_argument("--config", required=True, help="the baseline's live haproxy.cfg")
    sp.add_argument("--conns", type=int, default=32)
    sp.add_argument("--timeout", type=float, default=120)
    sp.set_defaults(fn=cmd_baseline_apply)

    sp = sub.add_parser("timeit", help="the best wall time of COMMAND over --repeat runs")
    recorded(sp)
    sp.add_argument("--repeat", type=int, default=3)
    sp.add_argument("command", nargs="+")
    sp.set_defaults(fn=cmd_timeit)

    sp = sub.add_parser("record", help="append a JSON result (merged with earlier ones of NAME)")
    sp.add_argument("path")
    sp.add_argument("name")
    sp.add_argument("json")
    sp.set_defaults(fn=cmd_record)

    sp = sub.add_parser("summary", help="print the results as a table")
    sp.add_argument("path")
    sp.set_defaults(fn=cmd_summary)

    a = p.parse_args()
    a.fn(a)


if __name__ == "__main__":
    sys.exit(main())

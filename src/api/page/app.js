// The lbmesh status page: reads /healthz, /v1/status, /v1/frontends and
// /v1/events, and draws them. Everything is set as text, never as markup.
"use strict";

const REFRESH_MS = 2000;
const TOKEN_KEY = "lbmesh-token";
const $ = (id) => document.getElementById(id);

function token() {
  return sessionStorage.getItem(TOKEN_KEY) || "";
}

// `#token=…` in the address: taken once, then removed from the address bar.
function takeTokenFromFragment() {
  const m = location.hash.match(/^#token=(.+)$/);
  if (m) {
    sessionStorage.setItem(TOKEN_KEY, decodeURIComponent(m[1]));
    history.replaceState(null, "", location.pathname + location.search);
  }
}

async function getJSON(path, withToken) {
  const headers = withToken ? { Authorization: "Bearer " + token() } : {};
  const r = await fetch(path, { headers, cache: "no-store" });
  let body = null;
  try {
    body = await r.json();
  } catch (_) {
    body = null;
  }
  return { status: r.status, body };
}

function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = String(text);
  if (cls) e.className = cls;
  return e;
}

function fill(tbody, rows) {
  tbody.replaceChildren(
    ...rows.map((cells) => {
      const tr = el("tr");
      for (const c of cells) {
        if (c instanceof Node) {
          const td = el("td");
          td.append(c);
          tr.append(td);
        } else {
          tr.append(el("td", c === undefined || c === null ? "-" : c));
        }
      }
      return tr;
    }),
  );
}

function duration(seconds) {
  seconds = Math.max(0, Math.round(seconds));
  const d = Math.floor(seconds / 86400);
  const h = Math.floor((seconds % 86400) / 3600);
  const m = Math.floor((seconds % 3600) / 60);
  const s = seconds % 60;
  if (d) return d + "d " + h + "h";
  if (h) return h + "h " + m + "m";
  if (m) return m + "m " + s + "s";
  return s + "s";
}

function plural(n, word) {
  return n + " " + word + (n === 1 ? "" : "s");
}

function utc(ms) {
  return new Date(ms).toISOString().replace("T", " ").slice(0, 19) + " UTC";
}

function badge(id, text, good) {
  const b = $(id);
  b.textContent = text;
  b.className = "badge " + (good ? "good" : "bad");
}

function showHealth(h) {
  const ok = h.status === 200;
  badge("health", ok ? "healthy" : "unhealthy", ok);
  const problems = (h.body && h.body.problems) || [];
  $("problems").hidden = problems.length === 0;
  $("problem-list").replaceChildren(...problems.map((p) => el("li", p)));
}

function showStatus(s) {
  $("node").textContent = s.node_id + " · lbmesh " + s.version + " · up " + duration(s.uptime_seconds);
  const peers = s.peers || [];
  const live = peers.filter((p) => p.live);
  const masters = (s.vrrp && s.vrrp.masters) || [];
  const parts = [plural(peers.length, "peer") + ", " + live.length + " live"];
  parts.push(masters.length === 0 ? "no peer holds the floating IP" : "floating IP on " + masters.join(", "));
  const mesh = s.mesh || {};
  let conv = s.converged ? "converged" : "NOT converged";
  if (s.converged && mesh.converged_since_ms) conv += " since " + utc(mesh.converged_since_ms);
  if (!s.converged && mesh.lagging_since_ms) {
    conv += "; this peer has differed from most live peers since " + utc(mesh.lagging_since_ms);
  }
  parts.push(conv);
  const summary = $("mesh-summary");
  summary.textContent = parts.join(" · ");
  summary.className = s.converged ? "" : "bad";
  const sb = $("split-brain");
  sb.hidden = !(s.vrrp && s.vrrp.split_brain);
  sb.textContent = "Split brain: " + masters.join(", ") + " all hold the floating IP.";
  fill(
    $("peers").tBodies[0],
    peers.map((p) => [
      p.node_id + (p.node_id === s.node_id ? " (this peer)" : ""),
      el("span", p.live ? "live" : "dead", p.live ? "good" : "bad"),
      p.incarnation,
      p.gossip_addr,
      p.api_addr,
      p.registry_digest,
      p.config_digest,
      el("span", p.vrrp_state || "-", masters.includes(p.node_id) ? "vip" : ""),
    ]),
  );
  const r = s.registry;
  $("registry-summary").textContent = [
    "digest " + r.digest,
    plural(r.frontends, "frontend"),
    plural(r.servers, "server"),
    plural(r.conflicts, "conflict"),
  ].join(" · ");
  const h = s.haproxy;
  $("haproxy-summary").textContent = [
    h.mode,
    h.running ? "running" : "NOT RUNNING",
    h.in_step ? "serves what the registry asks" : "OUT OF STEP with the registry",
    "config " + (h.config_digest || "-"),
    plural(h.reloads, "reload"),
    plural(h.runtime_updates, "runtime change"),
    plural(h.restarts, "restart"),
  ].join(" · ");
  $("haproxy-summary").className = h.running && h.in_step ? "" : "bad";
  const l = h.last_apply;
  const what = { none: "check", runtime: "Runtime API change", reload: "reload" };
  $("last-apply").textContent = l
    ? "Last " + (what[l.method] || l.method) + " at " + l.at + ": " + (l.ok ? "ok" : "FAILED") + " in " + l.duration_ms + " ms" + (l.error ? ": " + l.error : "")
    : "Not applied yet.";
  $("last-apply").className = l && !l.ok ? "bad" : "muted";
}

function showFrontends(f) {
  const box = $("frontends");
  const frontends = f.frontends || [];
  $("no-frontends").hidden = frontends.length !== 0;
  box.replaceChildren(
    ...frontends.map((fe) => {
      const div = el("div", null, "frontend");
      div.append(el("h3", "Frontend " + fe.port + " — " + fe.owner));
      if (fe.quarantined) {
        div.append(el("p", "Quarantined: " + fe.quarantined, "alert"));
      }
      const table = el("table");
      const head = el("tr");
      for (const t of ["server", "health", "lease ends", "accepted by", "PROXY"]) head.append(el("th", t));
      table.append(el("thead"), el("tbody"));
      table.tHead.append(head);
      fill(
        table.tBodies[0],
        fe.servers.map((sv) => [
          sv.address,
          el("span", sv.health || "unknown", "health-" + (sv.health || "unknown")),
          sv.expires_at + " (in " + duration(sv.expires_in_seconds) + ")",
          sv.origin,
          sv.send_proxy ? "yes" : "no",
        ]),
      );
      div.append(table);
      return div;
    }),
  );
  const conflicts = f.conflicts || [];
  $("conflicts-section").hidden = conflicts.length === 0;
  fill(
    $("conflicts").tBodies[0],
    conflicts.map((c) => [c.frontend, c.server, c.name, c.owner]),
  );
}

const EVENT_META = new Set(["seq", "at_ms", "level", "message", "event"]);

function showEvents(e) {
  const events = (e.events || []).slice().reverse();
  fill(
    $("events").tBodies[0],
    events.map((ev) => {
      const details = Object.entries(ev)
        .filter(([k]) => !EVENT_META.has(k))
        .map(([k, v]) => k + "=" + (Array.isArray(v) ? v.join(",") : v))
        .join(" ");
      return [utc(ev.at_ms), el("span", ev.level, "level-" + ev.level), ev.message, details];
    }),
  );
}

async function refresh() {
  try {
    showHealth(await getJSON("/healthz", false));
    if (!token()) {
      $("login").hidden = false;
      $("details").hidden = true;
    } else {
      const [s, f, e] = await Promise.all([
        getJSON("/v1/status", true),
        getJSON("/v1/frontends", true),
        getJSON("/v1/events?limit=50", true),
      ]);
      if (s.status === 401) {
        sessionStorage.removeItem(TOKEN_KEY);
        $("login-error").textContent = "That token was refused.";
        $("login").hidden = false;
        $("details").hidden = true;
      } else if (s.status === 200 && f.status === 200 && e.status === 200) {
        $("login").hidden = true;
        $("details").hidden = false;
        showStatus(s.body);
        showFrontends(f.body);
        showEvents(e.body);
      } else {
        throw new Error("the API answered " + s.status + ", " + f.status + ", " + e.status);
      }
    }
    $("updated").textContent = "updated " + new Date().toLocaleTimeString() + ", every " + REFRESH_MS / 1000 + " s";
    $("updated").className = "muted";
  } catch (err) {
    $("updated").textContent = "cannot reach lbmesh: " + err.message;
    $("updated").className = "bad";
  }
}

document.addEventListener("DOMContentLoaded", () => {
  takeTokenFromFragment();
  $("token-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, $("token-input").value.trim());
    $("token-input").value = "";
    $("login-error").textContent = "";
    refresh();
  });
  $("forget").addEventListener("click", () => {
    sessionStorage.removeItem(TOKEN_KEY);
    refresh();
  });
  refresh();
  setInterval(refresh, REFRESH_MS);
});

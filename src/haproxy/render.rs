//! Renders the HAProxy config as a pure function of the registry view.
//!
//! Deterministic and sorted: the same view and settings give the same bytes
//! on every peer. Every value written comes from a validated type (ports,
//! IP addresses, names limited to `[A-Za-z0-9_.-]`) or from operator settings
//! checked at start-up; no request text reaches the config.
//!
//! Each backend pre-allocates a power of two of server slots so that adding,
//! removing or moving servers can go through the Runtime API without a reload.
//! A server's slot is chosen by hashing its address (with linear probing), so
//! most servers keep their slot, and their stick-table entries, when others come
//! and go.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use sha2::{Digest as _, Sha256};

use crate::registry::RegistryView;
use crate::registry::view::short_digest;

/// Operator settings that shape the config; fixed for the life of a process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderSettings {
    /// Where frontends listen.
    pub bind_address: IpAddr,
    /// The Runtime API socket (`stats socket`).
    pub runtime_socket: PathBuf,
    /// A unix socket answering HTTP 200 while a worker runs; health checks use it.
    pub health_socket: PathBuf,
    /// lbmesh's log socket: HAProxy's notices, warnings and alerts go there.
    pub log_socket: Option<PathBuf>,
    pub hard_stop_after: Duration,
    /// Old workers are killed after this many reloads, however busy.
    pub max_reloads: u32,
    pub check_interval: Duration,
    pub check_fall: u32,
    pub check_rise: u32,
    pub timeout_connect: Duration,
    pub timeout_client: Duration,
    pub timeout_server: Duration,
    pub min_slots: usize,
}

impl RenderSettings {
    /// Settings matching the original recipe's defaults, with sockets under `dir`.
    pub fn with_sockets_in(dir: &std::path::Path) -> Self {
        Self {
            bind_address: IpAddr::from([127, 0, 0, 1]),
            runtime_socket: dir.join("haproxy.sock"),
            health_socket: dir.join("haproxy-health.sock"),
            log_socket: None,
            hard_stop_after: Duration::from_secs(300),
            max_reloads: 50,
            check_interval: Duration::from_secs(2),
            check_fall: 3,
            check_rise: 2,
            timeout_connect: Duration::from_secs(5),
            timeout_client: Duration::from_secs(5000),
            timeout_server: Duration::from_secs(5000),
            min_slots: 4,
        }
    }
}

/// A server placed in a backend slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotServer {
    pub addr: SocketAddr,
    pub send_proxy: bool,
}

/// The slots of one backend; `None` is an empty slot (in maintenance).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backend {
    pub slots: Vec<Option<SlotServer>>,
    /// The PROXY-protocol flag of empty slots: on if any server uses it, so a
    /// homogeneous pool can grow without a reload.
    pub send_proxy: bool,
}

impl Backend {
    fn slot_send_proxy(&self, i: usize) -> bool {
        self.slots[i].map_or(self.send_proxy, |s| s.send_proxy)
    }

    /// Whether `other` differs only in what the Runtime API can change.
    fn same_shape(&self, other: &Backend) -> bool {
        self.slots.len() == other.slots.len()
            && (0..self.slots.len()).all(|i| self.slot_send_proxy(i) == other.slot_send_proxy(i))
    }
}

/// A rendered config and the structure it was rendered from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    pub text: String,
    /// Per frontend port.
    pub backends: BTreeMap<u16, Backend>,
    /// Digest of what is served (frontends and slots), independent of local
    /// settings such as the bind address, so peers can compare it.
    pub digest: String,
}

impl Rendered {
    /// Whether going from `self` to `next` needs only Runtime API commands.
    pub fn same_shape(&self, next: &Rendered) -> bool {
        self.backends.len() == next.backends.len()
            && self
                .backends
                .iter()
                .zip(&next.backends)
                .all(|((p1, b1), (p2, b2))| p1 == p2 && b1.same_shape(b2))
    }

    pub fn server_count(&self) -> usize {
        self.backends
            .values()
            .map(|b| b.slots.iter().flatten().count())
            .sum()
    }
}

pub fn frontend_name(port: u16) -> String {
    format!("{port}_frontend")
}

pub fn backend_name(port: u16) -> String {
    format!("{port}_backend")
}

pub fn slot_name(i: usize) -> String {
    format!("s{}", i + 1)
}

/// An address as HAProxy reads it: IPv6 in brackets.
pub fn haproxy_addr(addr: SocketAddr) -> String {
    match addr {
        SocketAddr::V4(a) => a.to_string(),
        SocketAddr::V6(a) => format!("[{}]:{}", a.ip(), a.port()),
    }
}

fn hash64(addr: &SocketAddr) -> u64 {
    let d = Sha256::digest(addr.to_string().as_bytes());
    u64::from_be_bytes(d[..8].try_into().expect("sha256 is 32 bytes"))
}

/// Places servers into a power-of-two number of slots by address hash.
pub fn place(servers: &[SlotServer], min_slots: usize) -> Backend {
    let n = servers.len().max(min_slots).max(1).next_power_of_two();
    let mut order: Vec<(u64, SlotServer)> = servers.iter().map(|s| (hash64(&s.addr), *s)).collect();
    order.sort_by_key(|(h, s)| (*h, s.addr));
    let mut slots: Vec<Option<SlotServer>> = vec![None; n];
    for (h, s) in order {
        let mut i = (h % n as u64) as usize;
        while slots[i].is_some() {
            i = (i + 1) % n;
        }
        slots[i] = Some(s);
    }
    Backend {
        send_proxy: servers.iter().any(|s| s.send_proxy),
        slots,
    }
}

/// Seconds or milliseconds, whichever HAProxy reads exactly.
fn dur(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

/// Lays out backends for the view, leaving out `excluded` frontend ports.
pub fn plan(
    view: &RegistryView,
    excluded: &BTreeSet<u16>,
    min_slots: usize,
) -> BTreeMap<u16, Backend> {
    view.frontends
        .values()
        .filter(|f| !excluded.contains(&f.port))
        .map(|f| {
            let servers: Vec<SlotServer> = f
                .servers
                .iter()
                .map(|(addr, s)| SlotServer {
                    addr: *addr,
                    send_proxy: s.send_proxy,
                })
                .collect();
            (f.port, place(&servers, min_slots))
        })
        .collect()
}

/// Renders the whole config for `view`, leaving out `excluded` frontend ports.
pub fn render(
    view: &RegistryView,
    excluded: &BTreeSet<u16>,
    settings: &RenderSettings,
) -> Rendered {
    let backends = plan(view, excluded, settings.min_slots);
    let owners: BTreeMap<u16, &str> = view
        .frontends
        .values()
        .map(|f| (f.port, f.owner.as_str()))
        .collect();
    render_backends(backends, &owners, settings)
}

/// Renders config text for already placed backends.
pub fn render_backends(
    backends: BTreeMap<u16, Backend>,
    owners: &BTreeMap<u16, &str>,
    s: &RenderSettings,
) -> Rendered {
    let mut t = String::with_capacity(1024 + backends.len() * 400);
    let bind_ip = match s.bind_address {
        IpAddr::V4(ip) => ip.to_string(),
        IpAddr::V6(ip) => format!("[{ip}]"),
    };
    // `::` alone would listen on IPv6 only; "every address" means both families.
    let bind_opts = if s.bind_address == IpAddr::from(std::net::Ipv6Addr::UNSPECIFIED) {
        " v4v6"
    } else {
        ""
    };
    // Server state changes and proxy errors, not one line per connection
    // (those are at info, below `notice`).
    let (log, log_global) = match &s.log_socket {
        Some(path) => (
            format!(
                "    log \"{}\" len {} format short local0 notice\n",
                path.display(),
                super::log::MAX_MESSAGE
            ),
            "    log global\n",
        ),
        None => (String::new(), ""),
    };
    // Writing to a String cannot fail; the results are ignored on purpose.
    let _ = write!(
        t,
        "# Generated by lbmesh from its registry. Do not edit: every change is overwritten.\n\
         global\n\
         \x20   stats socket \"{runtime}\" mode 600 level admin expose-fd listeners\n\
         \x20   stats timeout 30s\n\
         \x20   hard-stop-after {hard_stop}\n\
         \x20   mworker-max-reloads {max_reloads}\n\
         {log}\
         \n\
         defaults\n\
         \x20   mode tcp\n\
         {log_global}\
         \x20   timeout connect {tc}\n\
         \x20   timeout client {tcl}\n\
         \x20   timeout server {ts}\n\
         \x20   default-server inter {inter} fall {fall} rise {rise}\n\
         \n\
         frontend lbmesh_health\n\
         \x20   mode http\n\
         \x20   bind \"unix@{health}\"\n\
         \x20   http-request return status 200 content-type text/plain string ok\n",
        runtime = s.runtime_socket.display(),
        hard_stop = dur(s.hard_stop_after),
        max_reloads = s.max_reloads,
        tc = dur(s.timeout_connect),
        tcl = dur(s.timeout_client),
        ts = dur(s.timeout_server),
        inter = dur(s.check_interval),
        fall = s.check_fall,
        rise = s.check_rise,
        health = s.health_socket.display(),
    );
    for (port, b) in &backends {
        let _ = write!(
            t,
            "\n# owner: {owner}\n\
             frontend {fe}\n\
             \x20   bind {bind_ip}:{port}{bind_opts}\n\
             \x20   mode tcp\n\
             \x20   default_backend {be}\n\
             \n\
             backend {be}\n\
             \x20   mode tcp\n\
             \x20   balance roundrobin\n\
             \x20   stick-table type ip size 200k expire 30m\n\
             \x20   stick on src\n",
            owner = owners.get(port).copied().unwrap_or("-"),
            fe = frontend_name(*port),
            be = backend_name(*port),
        );
        for (i, slot) in b.slots.iter().enumerate() {
            let proxy = if b.slot_send_proxy(i) {
                " send-proxy"
            } else {
                ""
            };
            match slot {
                Some(srv) => {
                    let _ = writeln!(
                        t,
                        "    server {} {} check{proxy}",
                        slot_name(i),
                        haproxy_addr(srv.addr)
                    );
                }
                None => {
                    let _ = writeln!(
                        t,
                        "    server {} 0.0.0.0:1 check disabled{proxy}",
                        slot_name(i)
                    );
                }
            }
        }
    }
    let digest = digest_of(&backends);
    Rendered {
        text: t,
        backends,
        digest,
    }
}

/// The digest of what is served (frontends and slots), without the text.
pub fn digest_of(backends: &BTreeMap<u16, Backend>) -> String {
    let mut digest = Sha256::new();
    for (port, b) in backends {
        digest.update(format!("F{port}\n"));
        for (i, slot) in b.slots.iter().enumerate() {
            if let Some(srv) = slot {
                digest.update(format!("S{i} {} {}\n", srv.addr, srv.send_proxy));
            }
        }
    }
    short_digest(digest)
}

#[cfg(test)]
mod tests;

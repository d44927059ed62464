//! Renders the HAProxy config: a pure function of a slot layout (or, for a
//! fresh start, of the registry view) and the operator's settings.
//!
//! Deterministic: the same layout and settings give the same bytes. Every
//! value written comes from a validated type (ports, IP addresses, names
//! limited to `[A-Za-z0-9_.-]`) or from operator settings checked at
//! start-up; no request text reaches the config. The text is streamed to a
//! writer, so a config of 100,000 servers is never held in memory whole.

use std::collections::BTreeSet;
use std::io::{self, Write};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use super::layout::{self, Backend, Layout, SlotPolicy, SlotServer};
use crate::registry::RegistryView;

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
    /// How long an old worker may keep its connections after a reload. It
    /// is the only bound on old workers: `mworker-max-reloads` is not set,
    /// because it kills the oldest worker, connections and all, when reloads
    /// come often (lbmesh bounds how many old workers a reload may leave).
    pub hard_stop_after: Duration,
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
            check_interval: Duration::from_secs(2),
            check_fall: 3,
            check_rise: 2,
            timeout_connect: Duration::from_secs(5),
            timeout_client: Duration::from_secs(5000),
            timeout_server: Duration::from_secs(5000),
            min_slots: 4,
        }
    }

    pub fn slot_policy(&self) -> SlotPolicy {
        SlotPolicy {
            min_slots: self.min_slots,
        }
    }
}

/// A rendered config and the layout it was rendered from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    pub text: String,
    pub backends: Layout,
    /// Digest of what is served, independent of local settings such as the
    /// bind address and of slot positions, so peers can compare it.
    pub digest: String,
}

impl Rendered {
    pub fn server_count(&self) -> usize {
        layout::server_count(&self.backends)
    }
}

pub fn frontend_name(port: u16) -> String {
    format!("{port}_frontend")
}

pub fn backend_name(port: u16) -> String {
    format!("{port}_backend")
}

/// The frontend port of a rendered frontend or backend name.
pub fn port_of_name(name: &str) -> Option<u16> {
    name.strip_suffix("_frontend")
        .or_else(|| name.strip_suffix("_backend"))?
        .parse()
        .ok()
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

/// Seconds or milliseconds, whichever HAProxy reads exactly.
fn dur(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

/// The servers of each frontend of `view`, sorted by address.
pub fn wanted_servers(view: &RegistryView, port: u16) -> Vec<SlotServer> {
    view.frontends
        .get(&port)
        .map(|f| {
            f.servers
                .iter()
                .map(|(addr, s)| SlotServer {
                    addr: *addr,
                    send_proxy: s.send_proxy,
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Lays out every frontend of `view` afresh, leaving out `excluded` ports.
pub fn fresh_layout(view: &RegistryView, excluded: &BTreeSet<u16>, policy: &SlotPolicy) -> Layout {
    view.frontends
        .values()
        .filter(|f| !excluded.contains(&f.port))
        .map(|f| {
            let servers = wanted_servers(view, f.port);
            (f.port, Backend::fresh(f.owner.clone(), &servers, policy))
        })
        .collect()
}

/// Renders the whole config for `view` laid out afresh (what a peer serves
/// after a start), leaving out `excluded` frontend ports.
pub fn render(
    view: &RegistryView,
    excluded: &BTreeSet<u16>,
    settings: &RenderSettings,
) -> Rendered {
    let backends = fresh_layout(view, excluded, &settings.slot_policy());
    let text = render_text(&backends, settings);
    let digest = layout::digest(&backends);
    Rendered {
        text,
        backends,
        digest,
    }
}

/// The config text of `layout`.
pub fn render_text(layout: &Layout, settings: &RenderSettings) -> String {
    let mut out = Vec::with_capacity(1024 + layout.len() * 400);
    write_config(layout, settings, &mut out).expect("writing to a Vec cannot fail");
    String::from_utf8(out).expect("the config is ASCII")
}

/// Writes the config of `layout` to `out`.
pub fn write_config(layout: &Layout, s: &RenderSettings, out: &mut impl Write) -> io::Result<()> {
    write_global(s, out)?;
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
    for (port, b) in layout {
        write_frontend(*port, b, &bind_ip, bind_opts, out)?;
    }
    Ok(())
}

fn write_global(s: &RenderSettings, out: &mut impl Write) -> io::Result<()> {
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
    write!(
        out,
        "# Generated by lbmesh from its registry. Do not edit: every change is overwritten.\n\
         global\n\
         \x20   stats socket \"{runtime}\" mode 600 level admin expose-fd listeners\n\
         \x20   stats timeout 30s\n\
         \x20   hard-stop-after {hard_stop}\n\
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
        tc = dur(s.timeout_connect),
        tcl = dur(s.timeout_client),
        ts = dur(s.timeout_server),
        inter = dur(s.check_interval),
        fall = s.check_fall,
        rise = s.check_rise,
        health = s.health_socket.display(),
    )
}

fn write_frontend(
    port: u16,
    b: &Backend,
    bind_ip: &str,
    bind_opts: &str,
    out: &mut impl Write,
) -> io::Result<()> {
    write!(
        out,
        "\n# owner: {owner}\n\
         frontend {port}_frontend\n\
         \x20   bind {bind_ip}:{port}{bind_opts}\n\
         \x20   mode tcp\n\
         \x20   default_backend {port}_backend\n\
         \n\
         backend {port}_backend\n\
         \x20   mode tcp\n\
         \x20   balance roundrobin\n\
         \x20   stick-table type ip size 200k expire 30m\n\
         \x20   stick on src\n",
        owner = b.owner,
    )?;
    for (i, slot) in b.slots.iter().enumerate() {
        let proxy = if slot.send_proxy { " send-proxy" } else { "" };
        match slot.server {
            Some(SocketAddr::V4(a)) => {
                writeln!(out, "    server s{} {a} check{proxy}", i + 1)?;
            }
            Some(SocketAddr::V6(a)) => {
                writeln!(
                    out,
                    "    server s{} [{}]:{} check{proxy}",
                    i + 1,
                    a.ip(),
                    a.port()
                )?;
            }
            None => writeln!(out, "    server s{} 0.0.0.0:1 check disabled{proxy}", i + 1)?,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;

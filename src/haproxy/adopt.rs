//! Carrying on with an HAProxy left running by an earlier lbmesh, without a
//! reload: a reload would hand its long-lived connections to an old worker
//! that `hard-stop-after` ends. What it serves is read back from the config
//! file it runs, which must be lbmesh's own rendering with this daemon's
//! settings (checked by rendering it again, byte for byte), and from its
//! Runtime API (which server sits in each slot now). Anything that does not
//! match leaves the planner to reload, as after any unknown start.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use super::layout::{Backend, Layout, Slot};
use super::render::{RenderSettings, port_of_name, render_text};

/// `srv_admin_state` bit of a server put in maintenance (by `disabled` in
/// the config or `set server … state maint`): an empty slot.
const FORCED_MAINT: u32 = 0x01;

/// The layout of a config lbmesh rendered, if `text` is exactly what
/// rendering it with `settings` gives.
pub fn layout_of_config(text: &str, settings: &RenderSettings) -> Option<Layout> {
    let mut layout = Layout::new();
    let mut owner = None;
    let mut backend: Option<u16> = None;
    for line in text.lines() {
        if let Some(name) = line.strip_prefix("# owner: ") {
            owner = Some(name.parse().ok()?);
        } else if let Some(name) = line.strip_prefix("backend ") {
            let port = port_of_name(name)?;
            layout.insert(
                port,
                Backend {
                    owner: owner.take()?,
                    slots: Vec::new(),
                },
            );
            backend = Some(port);
        } else if let Some(rest) = line.strip_prefix("    server ") {
            let mut words = rest.split(' ');
            let (_name, addr) = (words.next()?, words.next()?);
            let flags: Vec<&str> = words.collect();
            let slot = Slot {
                send_proxy: flags.contains(&"send-proxy"),
                server: if flags.contains(&"disabled") {
                    None
                } else {
                    Some(addr.parse::<SocketAddr>().ok()?)
                },
            };
            layout.get_mut(&backend?)?.slots.push(slot);
        }
    }
    (render_text(&layout, settings) == text).then_some(layout)
}

/// Whether HAProxy's `show servers state` says every slot of `layout`
/// holds what the layout says: its server and in service, or in
/// maintenance when empty.
pub fn runtime_matches(layout: &Layout, servers_state: &str) -> bool {
    let mut header: Vec<&str> = Vec::new();
    let mut seen: BTreeMap<(u16, String), (Option<SocketAddr>, bool)> = BTreeMap::new();
    for line in servers_state.lines() {
        if let Some(h) = line.strip_prefix("# ") {
            header = h.split(' ').collect();
            continue;
        }
        let fields: Vec<&str> = line.split(' ').collect();
        if fields.len() != header.len() || header.is_empty() {
            continue;
        }
        let col = |name: &str| header.iter().position(|h| *h == name).map(|i| fields[i]);
        let (Some(be), Some(srv), Some(addr), Some(port), Some(admin)) = (
            col("be_name"),
            col("srv_name"),
            col("srv_addr"),
            col("srv_port"),
            col("srv_admin_state"),
        ) else {
            return false;
        };
        let Some(port_no) = port_of_name(be) else {
            continue;
        };
        let addr = addr
            .parse::<IpAddr>()
            .ok()
            .zip(port.parse::<u16>().ok())
            .map(SocketAddr::from);
        let Ok(admin) = admin.parse::<u32>() else {
            return false;
        };
        seen.insert((port_no, srv.to_owned()), (addr, admin & FORCED_MAINT != 0));
    }
    let slots: usize = layout.values().map(|b| b.slots.len()).sum();
    slots == seen.len()
        && layout.iter().all(|(port, b)| {
            b.slots.iter().enumerate().all(|(i, slot)| {
                match (seen.get(&(*port, super::render::slot_name(i))), slot.server) {
                    (Some((_, true)), None) => true,
                    (Some((Some(addr), false)), Some(want)) => *addr == want,
                    _ => false,
                }
            })
        })
}

/// What the HAProxy at `config` serves, when it can be known without a
/// reload; `None` leaves the planner to reload.
pub async fn read_back(
    config: &std::path::Path,
    runtime_socket: &std::path::Path,
    settings: &RenderSettings,
) -> Option<Layout> {
    let text = std::fs::read_to_string(config).ok()?;
    let Some(layout) = layout_of_config(&text, settings) else {
        tracing::info!(
            "the adopted HAProxy runs a config this daemon would not render (another version or settings): reloading it"
        );
        return None;
    };
    let state = super::runtime::send(runtime_socket, "show servers state")
        .await
        .ok()?;
    if !runtime_matches(&layout, &state) {
        tracing::info!("the adopted HAProxy's servers differ from its config file: reloading it");
        return None;
    }
    Some(layout)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::haproxy::layout::SlotPolicy;
    use crate::haproxy::layout::SlotServer;

    fn layout() -> Layout {
        let p = SlotPolicy { min_slots: 4 };
        let s = |a: &str, proxy| SlotServer {
            addr: a.parse().unwrap(),
            send_proxy: proxy,
        };
        [
            (
                443,
                Backend::fresh(
                    "traefik".parse().unwrap(),
                    &[s("198.18.0.21:30443", true), s("[2001:db8::7]:30443", true)],
                    &p,
                ),
            ),
            (
                8080,
                Backend::fresh(
                    "unifi".parse().unwrap(),
                    &[s("198.18.0.22:30808", false)],
                    &p,
                ),
            ),
        ]
        .into()
    }

    fn settings() -> RenderSettings {
        RenderSettings::with_sockets_in(std::path::Path::new("/run/lbmesh"))
    }

    #[test]
    fn a_rendered_config_reads_back_as_its_layout() {
        let l = layout();
        let text = render_text(&l, &settings());
        assert_eq!(layout_of_config(&text, &settings()), Some(l.clone()));
        // Other settings, an edited file, or another format: not ours to trust.
        let mut other = settings();
        other.hard_stop_after = std::time::Duration::from_secs(1);
        assert_eq!(layout_of_config(&text, &other), None);
        assert_eq!(
            layout_of_config(&text.replace("30808", "30809 "), &settings()),
            None
        );
        assert_eq!(layout_of_config("", &settings()), None);
        let empty = render_text(&Layout::new(), &settings());
        assert_eq!(layout_of_config(&empty, &settings()), Some(Layout::new()));
    }

    const HEADER: &str = "1\n# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight srv_iweight srv_time_since_last_change srv_check_status srv_check_result srv_check_health srv_check_state srv_agent_state bk_f_forced_id srv_f_forced_id srv_fqdn srv_port srvrecord srv_use_ssl srv_check_port srv_check_addr srv_agent_addr srv_agent_port\n";

    /// `show servers state` as HAProxy 2.6 answers it for `slots`
    /// (address, admin state) of one backend.
    fn state(port: u16, slots: &[(&str, u16, u32)]) -> String {
        slots
            .iter()
            .enumerate()
            .map(|(i, (addr, p, admin))| {
                format!(
                    "3 {port}_backend {} s{} {addr} 2 {admin} 1 1 1 6 3 4 6 0 0 0 - {p} - 0 0 - - 0\n",
                    i + 1,
                    i + 1
                )
            })
            .collect()
    }

    #[test]
    fn the_runtime_must_hold_every_slot_as_the_layout_says() {
        let l = layout();
        let b443 = |s1: (&'static str, u16, u32)| {
            let mut v = vec![s1, ("2001:db8::7", 30443, 0)];
            v.extend([("0.0.0.0", 1, 5); 4]);
            state(443, &v)
        };
        let b8080 = state(
            8080,
            &[
                ("198.18.0.22", 30808, 4),
                ("0.0.0.0", 1, 1),
                ("0.0.0.0", 1, 5),
                ("0.0.0.0", 1, 5),
                ("0.0.0.0", 1, 5),
            ],
        );
        let good = format!("{HEADER}{}{b8080}\n", b443(("198.18.0.21", 30443, 0)));
        assert!(runtime_matches(&l, &good), "{good}");
        // A slot emptied or moved at runtime after the file was written.
        for s1 in [
            ("0.0.0.0", 1, 1),
            ("198.18.0.99", 30443, 0),
            ("198.18.0.21", 30444, 0),
        ] {
            let bad = format!("{HEADER}{}{b8080}", b443(s1));
            assert!(!runtime_matches(&l, &bad), "{s1:?}");
        }
        // A backend missing, or an unreadable answer.
        assert!(!runtime_matches(&l, &format!("{HEADER}{b8080}")));
        assert!(!runtime_matches(&l, "Unknown command\n"));
        assert!(runtime_matches(&Layout::new(), HEADER));
    }
}

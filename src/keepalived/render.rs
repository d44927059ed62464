//! keepalived.conf for one peer: its parameters, validated, and the renderer.

use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

/// What `lbmesh keepalived config` renders.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeepalivedParams {
    pub instance: String,
    pub interface: String,
    /// The floating IP with its prefix length, e.g. `198.18.0.100/24`.
    pub vip: String,
    pub virtual_router_id: u8,
    pub priority: u8,
    /// VRRPv3 advertisement interval.
    pub advert_int: Duration,
    /// Adverts a backup misses before it takes over (keepalived's
    /// `down_timer_adverts`; VRRP's own rule is 3): failover takes this many
    /// advert intervals plus a skew of under one.
    pub down_timer_adverts: u8,
    /// The file lbmesh writes to let keepalived run this peer's instance (0)
    /// or hold it in FAULT (1): health, drain and split brain, applied at once.
    pub track_file: PathBuf,
    /// Unicast: this peer's source address and the other peers. Empty peers: multicast.
    pub unicast_src: Option<IpAddr>,
    pub unicast_peers: Vec<IpAddr>,
    pub lbmesh: PathBuf,
    /// The arguments that lead the check and notify commands to the local
    /// daemon, e.g. `--config /etc/lbmesh/lbmesh.toml`: flags, absolute
    /// paths and URLs (keepalived runs them from `/`).
    pub target: Vec<String>,
    /// Use a notify FIFO the daemon reads instead of a notify script.
    pub notify_fifo: Option<PathBuf>,
}

impl KeepalivedParams {
    /// Every check, the unicast peers included.
    pub fn validate(&self) -> Result<(), String> {
        self.validate_fields()?;
        if !self.unicast_peers.is_empty() && self.unicast_src.is_none() {
            return Err("unicast peers need --unicast-src (this peer's address)".into());
        }
        if let Some(src) = self.unicast_src {
            // Alone, keepalived would make itself MASTER: a split brain.
            if !self.unicast_peers.iter().any(|p| *p != src) {
                return Err(
                    "unicast VRRP needs at least one other peer (--peer, or a mesh that sees them)"
                        .into(),
                );
            }
        }
        Ok(())
    }

    /// The checks that need nothing from the daemon (so a typo is reported
    /// before the daemon is asked for peers).
    pub fn validate_fields(&self) -> Result<(), String> {
        super::notification::check_word("--instance", &self.instance)?;
        super::notification::check_word("--interface", &self.interface)?;
        let (ip, prefix) = self
            .vip
            .split_once('/')
            .ok_or("--vip must be ADDRESS/PREFIX, e.g. 198.18.0.100/24")?;
        let ip: IpAddr = ip
            .parse()
            .map_err(|_| format!("--vip: {ip:?} is not an IP address"))?;
        let max = if ip.is_ipv4() { 32 } else { 128 };
        match prefix.parse::<u8>() {
            Ok(p) if p <= max => {}
            _ => return Err(format!("--vip: prefix {prefix:?} is not 0 to {max}")),
        }
        if self.virtual_router_id == 0 {
            return Err("--router-id must be 1 to 255".into());
        }
        if self.priority == 0 || self.priority == 255 {
            return Err(
                "--priority must be 1 to 254 (255 is reserved for the address owner)".into(),
            );
        }
        if !(Duration::from_millis(10)..=Duration::from_secs(40)).contains(&self.advert_int) {
            return Err("--advert-int must be from 0.01 to 40 seconds".into());
        }
        if !(1..=100).contains(&self.down_timer_adverts) {
            return Err("--down-timer-adverts must be 1 to 100".into());
        }
        for p in [&self.lbmesh, &self.track_file] {
            let s = p.to_string_lossy();
            if s.chars()
                .any(|c| c.is_whitespace() || c == '"' || c.is_control())
            {
                return Err(format!("path {s:?} must not contain spaces or quotes"));
            }
        }
        // keepalived splits the script line on spaces.
        for w in &self.target {
            if w.is_empty()
                || w.chars()
                    .any(|c| c.is_whitespace() || c == '"' || c == '\\' || c.is_control())
            {
                return Err(format!(
                    "--config, --api, --token-file and --ca must not contain spaces or quotes (got {w:?})"
                ));
            }
            if !(w.starts_with("--") || w.starts_with('/') || w.contains("://")) {
                return Err(format!(
                    "{w:?} must be an absolute path (keepalived runs the commands from /)"
                ));
            }
        }
        Ok(())
    }
}

fn seconds(d: Duration) -> String {
    let s = format!("{:.2}", d.as_secs_f64());
    s.trim_end_matches('0').trim_end_matches('.').to_owned()
}

/// keepalived.conf for one peer. Deterministic; every value validated.
pub fn render(p: &KeepalivedParams) -> String {
    let lbmesh = p.lbmesh.display();
    let target = p.target.join(" ");
    let fifo = p
        .notify_fifo
        .as_ref()
        .map(|f| format!("    # lbmesh reads this FIFO (keepalived.notify-fifo), in order.\n    vrrp_notify_fifo {}\n", f.display()))
        .unwrap_or_default();
    let mut o = String::new();
    let _ = write!(
        o,
        "# keepalived.conf generated by `lbmesh keepalived config`.\n\
         # The VIP follows the VRRP master. lbmesh decides, through the track file,\n\
         # whether this peer may hold it: not while its daemon or HAProxy is\n\
         # unhealthy, its config lags the mesh, it is drained, or it lost a split\n\
         # brain that the mesh saw.\n\
         global_defs {{\n\
         \x20   enable_script_security\n\
         \x20   script_user root\n\
         \x20   vrrp_garp_master_delay 0\n\
         \x20   vrrp_garp_master_repeat 2\n\
         \x20   vrrp_garp_master_refresh 60\n\
         \x20   # Adverts leave on time however busy the VM is: VRRP runs with\n\
         \x20   # realtime priority, above every ordinary process, and never swaps.\n\
         \x20   vrrp_rt_priority 40\n\
         \x20   vrrp_no_swap\n\
         {fifo}\
         }}\n\
         \n\
         # lbmesh writes 0 (this peer may hold the VIP) or 1 (FAULT); keepalived\n\
         # reads it the moment it changes. FAULT until lbmesh has written it.\n\
         track_file lbmesh_state {{\n\
         \x20   file \"{track}\"\n\
         \x20   weight 0\n\
         \x20   init_file 1\n\
         }}\n\
         \n\
         # A backstop for a daemon that died or hangs and so cannot write the file.\n\
         vrrp_script lbmesh_alive {{\n\
         \x20   script \"{lbmesh} keepalived check --alive {target}\"\n\
         \x20   interval 1\n\
         \x20   timeout 2\n\
         \x20   fall 3\n\
         \x20   rise 1\n\
         }}\n\
         \n\
         vrrp_instance {instance} {{\n\
         \x20   state BACKUP\n\
         \x20   # A recovered peer does not take the VIP back: no second failover.\n\
         \x20   nopreempt\n\
         \x20   interface {iface}\n\
         \x20   version 3\n\
         \x20   virtual_router_id {vrid}\n\
         \x20   priority {prio}\n\
         \x20   advert_int {advert}\n\
         \x20   # The master is declared dead after this many missed adverts.\n\
         \x20   down_timer_adverts {down}\n",
        track = p.track_file.display(),
        instance = p.instance,
        iface = p.interface,
        vrid = p.virtual_router_id,
        prio = p.priority,
        advert = seconds(p.advert_int),
        down = p.down_timer_adverts,
    );
    if let Some(src) = p.unicast_src {
        let _ = writeln!(o, "    unicast_src_ip {src}");
        if !p.unicast_peers.is_empty() {
            o.push_str("    unicast_peer {\n");
            let mut peers = p.unicast_peers.clone();
            peers.sort();
            peers.dedup();
            for peer in peers.iter().filter(|x| **x != src) {
                let _ = writeln!(o, "        {peer}");
            }
            o.push_str("    }\n");
        }
    }
    let _ = write!(
        o,
        "    virtual_ipaddress {{\n\
         \x20       {vip} dev {iface}\n\
         \x20   }}\n\
         \x20   track_file {{\n\
         \x20       lbmesh_state\n\
         \x20   }}\n\
         \x20   track_script {{\n\
         \x20       lbmesh_alive\n\
         \x20   }}\n",
        vip = p.vip,
        iface = p.interface
    );
    if p.notify_fifo.is_none() {
        let _ = writeln!(o, "    notify \"{lbmesh} keepalived notify {target}\"");
    }
    o.push_str("}\n");
    o
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn params() -> KeepalivedParams {
        KeepalivedParams {
            instance: "VI_LBMESH".into(),
            interface: "eth0".into(),
            vip: "198.18.0.100/24".into(),
            virtual_router_id: 51,
            priority: 150,
            advert_int: Duration::from_millis(40),
            down_timer_adverts: 6,
            track_file: "/var/lib/lbmesh/keepalived.track".into(),
            unicast_src: Some("198.18.0.11".parse().unwrap()),
            unicast_peers: vec![
                "198.18.0.13".parse().unwrap(),
                "198.18.0.12".parse().unwrap(),
                "198.18.0.11".parse().unwrap(),
            ],
            lbmesh: "/usr/local/bin/lbmesh".into(),
            target: vec!["--config".into(), "/etc/lbmesh/lbmesh.toml".into()],
            notify_fifo: None,
        }
    }

    /// Compares with `tests/golden/<name>.conf`; `UPDATE_GOLDEN=1` rewrites it.
    fn golden(name: &str, text: &str) {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/golden/{name}.conf"));
        if std::env::var_os("UPDATE_GOLDEN").is_some() {
            std::fs::write(&path, text).unwrap();
        }
        assert_eq!(
            text,
            std::fs::read_to_string(&path).unwrap(),
            "{}",
            path.display()
        );
    }

    fn multicast() -> KeepalivedParams {
        let mut m = params();
        m.unicast_src = None;
        m.unicast_peers.clear();
        m.notify_fifo = Some("/run/lbmesh/vrrp.fifo".into());
        m
    }

    #[test]
    fn renders_unicast_and_multicast() {
        let p = params();
        p.validate().unwrap();
        golden("keepalived_unicast", &render(&p));
        golden("keepalived_multicast", &render(&multicast()));
    }

    #[test]
    fn the_examples_in_deploy_are_what_the_generator_makes() {
        for (name, p) in [("unicast", params()), ("multicast", multicast())] {
            let path = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join(format!("deploy/keepalived/keepalived-{name}.conf"));
            let example = std::fs::read_to_string(&path).unwrap();
            let made = render(&p);
            // Each example has a header of its own, then the generated text.
            let from = |t: &str| t.find("# The VIP follows").map(|i| t[i..].to_owned());
            assert_eq!(from(&example), from(&made), "{}", path.display());
        }
    }

    #[test]
    fn bad_params_are_refused() {
        for (f, needle) in [
            (
                Box::new(|p: &mut KeepalivedParams| p.vip = "198.18.0.100".into())
                    as Box<dyn Fn(&mut KeepalivedParams)>,
                "--vip",
            ),
            (Box::new(|p| p.vip = "nope/24".into()), "--vip"),
            (Box::new(|p| p.vip = "198.18.0.100/33".into()), "prefix"),
            (Box::new(|p| p.interface = "eth0; rm".into()), "--interface"),
            (Box::new(|p| p.priority = 255), "--priority"),
            (Box::new(|p| p.virtual_router_id = 0), "--router-id"),
            (
                Box::new(|p| p.target = vec!["--api".into(), "http://x\"y".into()]),
                "--api",
            ),
            (
                Box::new(|p| p.target = vec!["--token-file".into(), "lbmesh-data/token".into()]),
                "absolute",
            ),
            (
                Box::new(|p| p.advert_int = Duration::from_secs(60)),
                "--advert-int",
            ),
            (
                Box::new(|p| p.down_timer_adverts = 0),
                "--down-timer-adverts",
            ),
            (Box::new(|p| p.track_file = "/a b".into()), "spaces"),
        ] {
            let mut p = params();
            f(&mut p);
            let err = p.validate().unwrap_err();
            assert!(err.contains(needle), "{err}");
        }
    }
}

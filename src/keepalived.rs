//! keepalived integration: the VRRP state keepalived reports (notify hook or
//! FIFO), hooks run on becoming MASTER or BACKUP, and keepalived.conf
//! rendered for this peer.

use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::AsyncBufReadExt;
use tokio::sync::watch;

/// A VRRP state as keepalived names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum VrrpState {
    Master,
    Backup,
    Fault,
    Stop,
}

impl FromStr for VrrpState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "MASTER" => Ok(Self::Master),
            "BACKUP" => Ok(Self::Backup),
            "FAULT" => Ok(Self::Fault),
            "STOP" | "DELETED" => Ok(Self::Stop),
            _ => Err(format!(
                "unknown VRRP state {}: expected MASTER, BACKUP, FAULT or STOP",
                crate::registry::types::quoted(s)
            )),
        }
    }
}

impl std::fmt::Display for VrrpState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Master => "MASTER",
            Self::Backup => "BACKUP",
            Self::Fault => "FAULT",
            Self::Stop => "STOP",
        })
    }
}

/// One notification from keepalived: `TYPE NAME STATE [PRIORITY]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notification {
    /// `INSTANCE` or `GROUP`.
    pub kind: String,
    /// The vrrp_instance (or group) name.
    pub name: String,
    pub state: VrrpState,
    #[serde(default)]
    pub priority: Option<u8>,
}

fn check_word(what: &str, s: &str) -> Result<(), String> {
    if s.is_empty()
        || s.len() > 64
        || !s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
    {
        return Err(format!(
            "{what} must be 1 to 64 characters from A-Z a-z 0-9 _ . -, got {}",
            crate::registry::types::quoted(s)
        ));
    }
    Ok(())
}

impl Notification {
    pub fn new(
        kind: &str,
        name: &str,
        state: &str,
        priority: Option<&str>,
    ) -> Result<Self, String> {
        let kind = kind.to_ascii_uppercase();
        if kind != "INSTANCE" && kind != "GROUP" {
            return Err(format!(
                "unknown notification type {}: expected INSTANCE or GROUP",
                crate::registry::types::quoted(&kind)
            ));
        }
        check_word("the instance name", name)?;
        let priority = match priority {
            None => None,
            Some(p) => Some(p.parse::<u8>().map_err(|_| {
                format!(
                    "priority {} is not 0 to 255",
                    crate::registry::types::quoted(p)
                )
            })?),
        };
        Ok(Self {
            kind,
            name: name.to_owned(),
            state: state.parse()?,
            priority,
        })
    }

    /// Parses a notify-FIFO line: `INSTANCE "VI_1" MASTER 100`.
    pub fn from_fifo_line(line: &str) -> Result<Self, String> {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            [kind, name, state] => Self::new(kind, name.trim_matches('"'), state, None),
            [kind, name, state, prio, ..] => {
                Self::new(kind, name.trim_matches('"'), state, Some(prio))
            }
            _ => Err(format!(
                "not a keepalived notification: {}",
                crate::registry::types::quoted(line)
            )),
        }
    }
}

/// Commands run on VRRP transitions (e.g. moving a provider's floating IP).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Hooks {
    pub on_master: Vec<String>,
    pub on_backup: Vec<String>,
    pub on_fault: Vec<String>,
}

/// This peer's VRRP state, as last reported, shared with the mesh.
#[derive(Clone)]
pub struct Vrrp {
    current: Arc<Mutex<Option<Notification>>>,
    published: watch::Sender<Option<String>>,
    hooks: Arc<Hooks>,
    /// Hooks run one at a time, in the order of the transitions: a BACKUP
    /// hook releasing an address must finish before the MASTER hook claims it.
    queue: tokio::sync::mpsc::UnboundedSender<(String, Vec<String>, VrrpState, String)>,
}

impl Vrrp {
    /// Call within a tokio runtime: hooks run on a task of their own.
    pub fn new(hooks: Hooks) -> (Vrrp, watch::Receiver<Option<String>>) {
        let (published, rx) = watch::channel(None);
        let (queue, mut jobs) =
            tokio::sync::mpsc::unbounded_channel::<(String, Vec<String>, VrrpState, String)>();
        tokio::spawn(async move {
            while let Some((program, args, state, name)) = jobs.recv().await {
                run_hook(&program, &args, state, &name).await;
            }
        });
        (
            Vrrp {
                current: Arc::default(),
                published,
                hooks: Arc::new(hooks),
                queue,
            },
            rx,
        )
    }

    pub fn current(&self) -> Option<Notification> {
        self.current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Records a notification; runs the hook of a new state.
    pub fn report(&self, n: Notification) {
        let previous = {
            let mut cur = self.current.lock().unwrap_or_else(|p| p.into_inner());
            cur.replace(n.clone())
        };
        let changed = previous.as_ref().is_none_or(|p| p.state != n.state);
        tracing::info!(instance = %n.name, state = %n.state, priority = ?n.priority, "VRRP state reported by keepalived");
        self.published
            .send_replace(Some(format!("{} {}", n.state, n.name)));
        if changed {
            let hook = match n.state {
                VrrpState::Master => &self.hooks.on_master,
                VrrpState::Backup => &self.hooks.on_backup,
                VrrpState::Fault => &self.hooks.on_fault,
                VrrpState::Stop => return,
            };
            if let Some((program, args)) = hook.split_first() {
                let _ = self
                    .queue
                    .send((program.clone(), args.to_vec(), n.state, n.name.clone()));
            }
        }
    }
}

async fn run_hook(program: &str, args: &[String], state: VrrpState, instance: &str) {
    let run = tokio::process::Command::new(program)
        .args(args)
        .env("LBMESH_VRRP_STATE", state.to_string())
        .env("LBMESH_VRRP_INSTANCE", instance)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    match tokio::time::timeout(Duration::from_secs(60), run).await {
        Ok(Ok(out)) if out.status.success() => {
            tracing::info!(%program, %state, "VRRP hook succeeded");
        }
        Ok(Ok(out)) => tracing::error!(
            %program, %state, status = %out.status,
            stderr = %String::from_utf8_lossy(&out.stderr).trim(),
            "VRRP hook failed"
        ),
        Ok(Err(e)) => tracing::error!(%program, %state, error = %e, "cannot run VRRP hook"),
        Err(_) => tracing::error!(%program, %state, "VRRP hook still running after 60 s; killed"),
    }
}

/// Reads keepalived's notify FIFO (`notify_fifo` in keepalived.conf) and
/// reports every line, in order. Reopens the FIFO when keepalived restarts.
pub async fn read_fifo(path: PathBuf, vrrp: Vrrp, mut shutdown: watch::Receiver<bool>) {
    if !path.exists() {
        if let Err(e) = nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o600))
        {
            tracing::warn!(fifo = %path.display(), error = %e, "cannot create the notify FIFO");
        }
    }
    loop {
        // Read-write, so the FIFO never reads as closed while keepalived restarts.
        let file = tokio::net::unix::pipe::OpenOptions::new()
            .read_write(true)
            .open_receiver(&path);
        let file = match file {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(fifo = %path.display(), error = %e, "cannot open keepalived's notify FIFO; retrying");
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_secs(2)) => continue,
                    () = crate::shutdown::signalled(&mut shutdown) => return,
                }
            }
        };
        let mut lines = tokio::io::BufReader::new(file).lines();
        loop {
            let line = tokio::select! {
                l = lines.next_line() => l,
                () = crate::shutdown::signalled(&mut shutdown) => return,
            };
            match line {
                Ok(Some(l)) => match Notification::from_fifo_line(&l) {
                    Ok(n) => vrrp.report(n),
                    Err(e) => tracing::warn!(error = %e, "ignoring a notify FIFO line"),
                },
                // Writer closed (keepalived restarting): open again.
                Ok(None) | Err(_) => break,
            }
        }
    }
}

/// What `lbmesh keepalived config` renders.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeepalivedParams {
    pub instance: String,
    pub interface: String,
    /// The floating IP with its prefix length, e.g. `198.18.0.100/24`.
    pub vip: String,
    pub virtual_router_id: u8,
    pub priority: u8,
    /// VRRPv3 advertisement interval; failover takes about three of them.
    pub advert_int: Duration,
    /// Unicast: this peer's source address and the other peers. Empty peers: multicast.
    pub unicast_src: Option<IpAddr>,
    pub unicast_peers: Vec<IpAddr>,
    pub lbmesh: PathBuf,
    pub api: String,
    pub token_file: Option<PathBuf>,
    /// Use a notify FIFO the daemon reads instead of a notify script.
    pub notify_fifo: Option<PathBuf>,
}

impl KeepalivedParams {
    pub fn validate(&self) -> Result<(), String> {
        check_word("--instance", &self.instance)?;
        check_word("--interface", &self.interface)?;
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
        for p in [
            &self.lbmesh,
            self.token_file.as_ref().unwrap_or(&self.lbmesh),
        ] {
            let s = p.to_string_lossy();
            if s.chars()
                .any(|c| c.is_whitespace() || c == '"' || c.is_control())
            {
                return Err(format!("path {s:?} must not contain spaces or quotes"));
            }
        }
        if self
            .api
            .chars()
            .any(|c| c.is_whitespace() || c == '"' || c.is_control())
        {
            return Err("--api must not contain spaces or quotes".into());
        }
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
}

fn seconds(d: Duration) -> String {
    let s = format!("{:.2}", d.as_secs_f64());
    s.trim_end_matches('0').trim_end_matches('.').to_owned()
}

/// keepalived.conf for one peer. Deterministic; every value validated.
pub fn render(p: &KeepalivedParams) -> String {
    let lbmesh = p.lbmesh.display();
    let token = p
        .token_file
        .as_ref()
        .map(|t| format!(" --token-file {}", t.display()))
        .unwrap_or_default();
    let fifo = p
        .notify_fifo
        .as_ref()
        .map(|f| format!("    # lbmesh reads this FIFO (keepalived.notify-fifo), in order.\n    vrrp_notify_fifo {}\n", f.display()))
        .unwrap_or_default();
    let mut o = String::new();
    let _ = write!(
        o,
        "# keepalived.conf generated by `lbmesh keepalived config`.\n\
         # The VIP follows the VRRP master; lbmesh's check takes it away from a peer\n\
         # whose daemon or HAProxy is unhealthy or whose config lags the mesh.\n\
         global_defs {{\n\
         \x20   enable_script_security\n\
         \x20   script_user root\n\
         \x20   vrrp_garp_master_delay 0\n\
         \x20   vrrp_garp_master_repeat 2\n\
         \x20   vrrp_garp_master_refresh 60\n\
         {fifo}\
         }}\n\
         \n\
         vrrp_script lbmesh_check {{\n\
         \x20   script \"{lbmesh} keepalived check --api {api}\"\n\
         \x20   interval 1\n\
         \x20   timeout 2\n\
         \x20   fall 2\n\
         \x20   rise 2\n\
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
         \x20   advert_int {advert}\n",
        api = p.api,
        instance = p.instance,
        iface = p.interface,
        vrid = p.virtual_router_id,
        prio = p.priority,
        advert = seconds(p.advert_int),
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
         \x20   track_script {{\n\
         \x20       lbmesh_check\n\
         \x20   }}\n",
        vip = p.vip,
        iface = p.interface
    );
    if p.notify_fifo.is_none() {
        let _ = writeln!(
            o,
            "    notify \"{lbmesh} keepalived notify --api {}{token}\"",
            p.api
        );
    }
    o.push_str("}\n");
    o
}

/// Answers one health check for keepalived: Ok, or the reason in one line.
pub async fn check(api: &str, timeout: Duration) -> Result<(), String> {
    let url = format!("{}/healthz", api.trim_end_matches('/'));
    let client = reqwest::Client::builder()
        .timeout(timeout)
        .use_rustls_tls()
        // The check runs on the same host as the daemon; its certificate
        // may be self-signed. Health is not a secret.
        .danger_accept_invalid_certs(true)
        .build()
        .map_err(|e| e.to_string())?;
    let resp = client
        .get(&url)
        .send()
        .await
        .map_err(|e| format!("lbmesh does not answer at {url}: {e}"))?;
    let status = resp.status();
    let body: serde_json::Value = resp.json().await.unwrap_or_default();
    if status.is_success() {
        return Ok(());
    }
    let problems: Vec<&str> = body["problems"]
        .as_array()
        .map(|a| a.iter().filter_map(|p| p.as_str()).collect())
        .unwrap_or_default();
    Err(if problems.is_empty() {
        format!("lbmesh is unhealthy ({status})")
    } else {
        format!("lbmesh is unhealthy: {}", problems.join("; "))
    })
}

/// Reads the token for the notify command.
pub fn load_token(path: &Path) -> anyhow::Result<crate::secret::Token> {
    Ok(crate::secret::Token::load(path)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params() -> KeepalivedParams {
        KeepalivedParams {
            instance: "VI_LBMESH".into(),
            interface: "eth0".into(),
            vip: "198.18.0.100/24".into(),
            virtual_router_id: 51,
            priority: 150,
            advert_int: Duration::from_millis(250),
            unicast_src: Some("198.18.0.11".parse().unwrap()),
            unicast_peers: vec![
                "198.18.0.13".parse().unwrap(),
                "198.18.0.12".parse().unwrap(),
                "198.18.0.11".parse().unwrap(),
            ],
            lbmesh: "/usr/local/bin/lbmesh".into(),
            api: "http://127.0.0.1:9000".into(),
            token_file: Some("/etc/lbmesh/token".into()),
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

    #[test]
    fn renders_unicast_and_multicast() {
        let p = params();
        p.validate().unwrap();
        golden("keepalived_unicast", &render(&p));
        let mut m = params();
        m.unicast_src = None;
        m.unicast_peers.clear();
        m.notify_fifo = Some("/run/lbmesh/vrrp.fifo".into());
        golden("keepalived_multicast", &render(&m));
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
            (Box::new(|p| p.api = "http://x\" y".into()), "--api"),
            (
                Box::new(|p| p.advert_int = Duration::from_secs(60)),
                "--advert-int",
            ),
        ] {
            let mut p = params();
            f(&mut p);
            let err = p.validate().unwrap_err();
            assert!(err.contains(needle), "{err}");
        }
    }

    #[test]
    fn notifications_parse() {
        assert_eq!(
            Notification::from_fifo_line("INSTANCE \"VI_1\" MASTER 100").unwrap(),
            Notification {
                kind: "INSTANCE".into(),
                name: "VI_1".into(),
                state: VrrpState::Master,
                priority: Some(100)
            }
        );
        assert_eq!(
            Notification::new("INSTANCE", "VI_1", "BACKUP", None)
                .unwrap()
                .state,
            VrrpState::Backup
        );
        for bad in [
            "",
            "INSTANCE VI_1",
            "INSTANCE VI_1 KING 1",
            "HOST VI_1 MASTER",
            "INSTANCE VI;1 MASTER",
            "INSTANCE VI_1 MASTER 999",
        ] {
            assert!(Notification::from_fifo_line(bad).is_err(), "{bad:?}");
        }
    }
}

//! Configuration: embedded defaults, overridden by a TOML file, then by
//! `LBMESH_…` environment variables, then by command-line flags.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::registry::{Limits, PeerId, PortRange};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {error}")]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{key} = {value:?}: {problem}")]
    Invalid {
        key: &'static str,
        value: String,
        problem: String,
    },
}

fn invalid(
    key: &'static str,
    value: impl std::fmt::Display,
    problem: impl Into<String>,
) -> ConfigError {
    ConfigError::Invalid {
        key,
        value: value.to_string(),
        problem: problem.into(),
    }
}

/// The config file, exactly as written; every key optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct FileConfig {
    pub node_id: Option<String>,
    pub api_listen: Option<SocketAddr>,
    pub gossip_listen: Option<SocketAddr>,
    pub seeds: Option<Vec<String>>,
    pub data_dir: Option<PathBuf>,
    pub token_file: Option<PathBuf>,
    pub bind_address: Option<IpAddr>,
    #[serde(default)]
    pub api: ApiFile,
    #[serde(default)]
    pub registry: RegistryFile,
    #[serde(default)]
    pub haproxy: HaproxyFile,
    #[serde(default)]
    pub mesh: MeshFile,
    #[serde(default)]
    pub keepalived: KeepalivedFile,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct KeepalivedFile {
    /// keepalived's notify_fifo, read by the daemon (alternative to the notify command).
    pub notify_fifo: Option<PathBuf>,
    /// Commands run when this peer becomes MASTER, BACKUP or FAULT.
    pub on_master: Option<Vec<String>>,
    pub on_backup: Option<Vec<String>>,
    pub on_fault: Option<Vec<String>>,
    /// How long this peer's HAProxy config may differ from the mesh majority
    /// before the health check fails.
    #[serde(default, with = "humantime_serde")]
    pub max_lag: Option<Duration>,
}

/// How peers talk to each other.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MeshTransport {
    /// QUIC with mutual TLS against the cluster CA (the default).
    Quic,
    /// Plain chitchat UDP: no authentication, no encryption. Only for
    /// networks where every host that can reach the gossip port is trusted.
    Udp,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct MeshFile {
    pub transport: Option<MeshTransport>,
    /// The cluster CA certificate (PEM).
    pub ca_cert: Option<PathBuf>,
    /// This peer's certificate and key from `lbmesh ca issue`.
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub cluster_id: Option<String>,
    /// The gossip address other peers use, when gossip-listen is a wildcard.
    pub advertise: Option<SocketAddr>,
    #[serde(default, with = "humantime_serde")]
    pub gossip_interval: Option<Duration>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ApiFile {
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// Serve HTTPS with a self-signed certificate made on first start.
    pub tls_self_signed: Option<bool>,
    /// Extra DNS names or IPs for the self-signed certificate.
    pub tls_names: Option<Vec<String>>,
    pub max_body_bytes: Option<usize>,
    #[serde(default, with = "humantime_serde")]
    pub max_wait: Option<Duration>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RegistryFile {
    #[serde(default, with = "humantime_serde")]
    pub default_ttl: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub min_ttl: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub max_ttl: Option<Duration>,
    pub max_servers: Option<usize>,
    pub max_servers_per_frontend: Option<usize>,
    pub max_frontends: Option<usize>,
    pub allowed_ports: Option<Vec<PortRange>>,
    #[serde(default, with = "humantime_serde")]
    pub max_clock_skew: Option<Duration>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum HaproxyMode {
    /// lbmesh runs HAProxy as its child.
    Supervised,
    /// HAProxy runs as its own service; lbmesh runs `reload-command`.
    External,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct HaproxyFile {
    pub mode: Option<HaproxyMode>,
    pub binary: Option<PathBuf>,
    pub config_path: Option<PathBuf>,
    pub reload_command: Option<Vec<String>>,
    pub runtime_socket: Option<PathBuf>,
    pub master_socket: Option<PathBuf>,
    pub health_socket: Option<PathBuf>,
    #[serde(default, with = "humantime_serde")]
    pub hard_stop_after: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub min_reload_interval: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub coalesce: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub check_interval: Option<Duration>,
    pub check_fall: Option<u32>,
    pub check_rise: Option<u32>,
    #[serde(default, with = "humantime_serde")]
    pub timeout_connect: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub timeout_client: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub timeout_server: Option<Duration>,
    pub min_slots: Option<usize>,
}

impl FileConfig {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
            path: path.to_owned(),
            error,
        })?;
        toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        })
    }
}

/// Values given by flags or environment (clap merges those two).
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub node_id: Option<String>,
    pub api_listen: Option<SocketAddr>,
    pub gossip_listen: Option<SocketAddr>,
    pub gossip_advertise: Option<SocketAddr>,
    pub seeds: Vec<String>,
    pub data_dir: Option<PathBuf>,
    pub token_file: Option<PathBuf>,
    pub bind_address: Option<IpAddr>,
    pub haproxy_mode: Option<HaproxyMode>,
    pub haproxy_binary: Option<PathBuf>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
}

/// The resolved, validated configuration of `lbmesh serve`.
#[derive(Debug, Clone)]
pub struct Settings {
    pub node_id: PeerId,
    pub api_listen: SocketAddr,
    pub gossip_listen: SocketAddr,
    pub gossip_advertise: SocketAddr,
    pub seeds: Vec<String>,
    pub cluster_id: String,
    pub gossip_interval: Duration,
    pub data_dir: PathBuf,
    pub token_file: PathBuf,
    pub bind_address: IpAddr,
    pub tls: Option<ApiTls>,
    pub gossip_tls: GossipTls,
    pub max_body_bytes: usize,
    pub max_wait: Duration,
    pub limits: Limits,
    pub allowed_ports: Vec<PortRange>,
    pub notify_fifo: Option<PathBuf>,
    pub hooks: crate::keepalived::Hooks,
    pub max_lag: Duration,
    pub haproxy: HaproxySettings,
}

/// How the API serves HTTPS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiTls {
    /// A certificate and key given by the operator (certbot, or `lbmesh ca issue`).
    Files { cert: PathBuf, key: PathBuf },
    /// A self-signed certificate made on first start in `dir`, for these names.
    SelfSigned { dir: PathBuf, names: Vec<String> },
}

/// Peer-link security.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GossipTls {
    /// Plain UDP (mesh.transport = "udp").
    None,
    /// QUIC with mutual TLS using these files; `create` makes a CA and a
    /// certificate there on first start when they are missing and no seeds
    /// are configured (a single peer).
    Quic {
        files: crate::tls::PeerTlsFiles,
        create: bool,
    },
}

#[derive(Debug, Clone)]
pub struct HaproxySettings {
    pub mode: HaproxyMode,
    pub binary: PathBuf,
    pub config_path: PathBuf,
    pub reload_command: Vec<String>,
    pub runtime_socket: PathBuf,
    pub master_socket: PathBuf,
    pub health_socket: PathBuf,
    pub hard_stop_after: Duration,
    pub min_reload_interval: Duration,
    pub coalesce: Duration,
    pub check_interval: Duration,
    pub check_fall: u32,
    pub check_rise: u32,
    pub timeout_connect: Duration,
    pub timeout_client: Duration,
    pub timeout_server: Duration,
    pub min_slots: usize,
}

pub const DEFAULT_API_LISTEN: &str = "127.0.0.1:9000";
pub const DEFAULT_GOSSIP_LISTEN: &str = "127.0.0.1:7946";

/// A node id from the host name, made to fit the id rules.
fn default_node_id() -> String {
    let host = nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_default();
    let id: String = host
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "_.-".contains(c) {
                c
            } else {
                '-'
            }
        })
        .take(63)
        .collect();
    if id.is_empty() { "lbmesh-1".into() } else { id }
}

/// Paths end up inside the HAProxy config in double quotes, and sockets have
/// a length limit; refuse what would break either.
fn check_socket_path(key: &'static str, p: &Path) -> Result<(), ConfigError> {
    let s = p.to_string_lossy();
    if s.chars().any(|c| c.is_control() || c == '"' || c == '\\') {
        return Err(invalid(
            key,
            s,
            "must not contain quotes, backslashes or control characters",
        ));
    }
    if s.len() > 100 {
        return Err(invalid(
            key,
            s,
            "unix socket paths must be at most 100 bytes",
        ));
    }
    Ok(())
}

fn positive(key: &'static str, d: Duration) -> Result<Duration, ConfigError> {
    if d.is_zero() {
        return Err(invalid(
            key,
            humantime::format_duration(d),
            "must be more than zero",
        ));
    }
    Ok(d)
}

impl Settings {
    /// Resolves defaults < file < overrides, relative paths against `cwd`, and validates.
    pub fn resolve(file: FileConfig, o: Overrides, cwd: &Path) -> Result<Settings, ConfigError> {
        let node_id_raw = o.node_id.or(file.node_id).unwrap_or_else(default_node_id);
        let node_id: PeerId = node_id_raw
            .parse()
            .map_err(|e: crate::registry::FieldError| {
                invalid("node-id", &node_id_raw, e.problem)
            })?;
        let api_listen = o
            .api_listen
            .or(file.api_listen)
            .unwrap_or_else(|| DEFAULT_API_LISTEN.parse().expect("valid default"));
        let gossip_listen = o
            .gossip_listen
            .or(file.gossip_listen)
            .unwrap_or_else(|| DEFAULT_GOSSIP_LISTEN.parse().expect("valid default"));
        if api_listen.port() != 0
            && api_listen.port() == gossip_listen.port()
            && api_listen.ip() == gossip_listen.ip()
        {
            return Err(invalid(
                "gossip-listen",
                gossip_listen,
                "must differ from api-listen",
            ));
        }
        let gossip_advertise = match o.gossip_advertise.or(file.mesh.advertise) {
            Some(a) if a.ip().is_unspecified() || a.port() == 0 => {
                return Err(invalid(
                    "mesh.advertise",
                    a,
                    "must be a concrete address and port other peers can reach",
                ));
            }
            Some(a) => a,
            None if gossip_listen.ip().is_unspecified() => {
                return Err(invalid(
                    "gossip-listen",
                    gossip_listen,
                    "listens on every address; set mesh.advertise (--gossip-advertise) to the address peers reach this one at",
                ));
            }
            None => gossip_listen,
        };
        let cluster_id = file.mesh.cluster_id.unwrap_or_else(|| "lbmesh".into());
        if cluster_id.is_empty()
            || cluster_id.len() > 63
            || !cluster_id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
        {
            return Err(invalid(
                "mesh.cluster-id",
                &cluster_id,
                "must be 1 to 63 characters from A-Z a-z 0-9 _ . -",
            ));
        }
        let gossip_interval = file
            .mesh
            .gossip_interval
            .unwrap_or(Duration::from_millis(200));
        if !(Duration::from_millis(10)..=Duration::from_secs(10)).contains(&gossip_interval) {
            return Err(invalid(
                "mesh.gossip-interval",
                humantime::format_duration(gossip_interval),
                "must be from 10ms to 10s",
            ));
        }
        let seeds = if o.seeds.is_empty() {
            file.seeds.unwrap_or_default()
        } else {
            o.seeds
        };
        for s in &seeds {
            if s.rsplit_once(':')
                .and_then(|(h, p)| (!h.is_empty()).then(|| p.parse::<u16>().ok()).flatten())
                .is_none()
            {
                return Err(invalid("seed", s, "must be HOST:PORT"));
            }
        }
        let abs = |p: PathBuf| if p.is_absolute() { p } else { cwd.join(p) };
        let data_dir = abs(o
            .data_dir
            .or(file.data_dir)
            .unwrap_or_else(|| PathBuf::from("lbmesh-data")));
        let token_file = abs(o
            .token_file
            .or(file.token_file)
            .unwrap_or_else(|| data_dir.join("token")));
        let bind_address = o
            .bind_address
            .or(file.bind_address)
            .unwrap_or(IpAddr::from([127, 0, 0, 1]));

        let gossip_tls = match file.mesh.transport.unwrap_or(MeshTransport::Quic) {
            MeshTransport::Udp => GossipTls::None,
            MeshTransport::Quic => {
                let tls_dir = data_dir.join("tls");
                let given = [&file.mesh.ca_cert, &file.mesh.cert, &file.mesh.key];
                if given.iter().any(|g| g.is_some()) && !given.iter().all(|g| g.is_some()) {
                    return Err(invalid(
                        "mesh.ca-cert",
                        "",
                        "mesh.ca-cert, mesh.cert and mesh.key go together; give all three",
                    ));
                }
                let explicit = file.mesh.cert.is_some();
                let files = crate::tls::PeerTlsFiles {
                    ca_cert: abs(file
                        .mesh
                        .ca_cert
                        .clone()
                        .unwrap_or_else(|| tls_dir.join(crate::tls::CA_CERT))),
                    cert: abs(file
                        .mesh
                        .cert
                        .clone()
                        .unwrap_or_else(|| tls_dir.join(format!("{node_id}.crt")))),
                    key: abs(file
                        .mesh
                        .key
                        .clone()
                        .unwrap_or_else(|| tls_dir.join(format!("{node_id}.key")))),
                };
                GossipTls::Quic {
                    files,
                    create: !explicit && seeds.is_empty(),
                }
            }
        };
        let tls = match (
            o.tls_cert.or(file.api.tls_cert),
            o.tls_key.or(file.api.tls_key),
        ) {
            (Some(c), Some(k)) => {
                if file.api.tls_self_signed == Some(true) {
                    return Err(invalid(
                        "api.tls-self-signed",
                        "true",
                        "conflicts with api.tls-cert and api.tls-key; choose one",
                    ));
                }
                Some(ApiTls::Files {
                    cert: abs(c),
                    key: abs(k),
                })
            }
            (None, None) if file.api.tls_self_signed == Some(true) => {
                let names = file.api.tls_names.clone().unwrap_or_default();
                for n in &names {
                    if n.is_empty()
                        || n.len() > 253
                        || !n
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b".-:".contains(&b))
                    {
                        return Err(invalid(
                            "api.tls-names",
                            n,
                            "must be DNS names or IP addresses",
                        ));
                    }
                }
                Some(ApiTls::SelfSigned {
                    dir: data_dir.join("tls"),
                    names,
                })
            }
            (None, None) => None,
            (Some(c), None) => {
                return Err(invalid(
                    "api.tls-key",
                    "",
                    format!("missing while api.tls-cert is set ({})", c.display()),
                ));
            }
            (None, Some(k)) => {
                return Err(invalid(
                    "api.tls-cert",
                    "",
                    format!("missing while api.tls-key is set ({})", k.display()),
                ));
            }
        };
        let max_body_bytes = file.api.max_body_bytes.unwrap_or(16 * 1024);
        if !(256..=1024 * 1024).contains(&max_body_bytes) {
            return Err(invalid(
                "api.max-body-bytes",
                max_body_bytes,
                "must be from 256 to 1048576",
            ));
        }
        let max_wait = positive(
            "api.max-wait",
            file.api.max_wait.unwrap_or(Duration::from_secs(30)),
        )?;

        let d = Limits::default();
        let r = file.registry;
        let limits = Limits {
            default_ttl: positive(
                "registry.default-ttl",
                r.default_ttl.unwrap_or(d.default_ttl),
            )?,
            min_ttl: positive("registry.min-ttl", r.min_ttl.unwrap_or(d.min_ttl))?,
            max_ttl: positive("registry.max-ttl", r.max_ttl.unwrap_or(d.max_ttl))?,
            max_servers: r.max_servers.unwrap_or(d.max_servers),
            max_servers_per_frontend: r
                .max_servers_per_frontend
                .unwrap_or(d.max_servers_per_frontend),
            max_frontends: r.max_frontends.unwrap_or(d.max_frontends),
            max_clock_skew: r.max_clock_skew.unwrap_or(d.max_clock_skew),
        };
        if !(limits.min_ttl <= limits.default_ttl && limits.default_ttl <= limits.max_ttl) {
            return Err(invalid(
                "registry.default-ttl",
                humantime::format_duration(limits.default_ttl),
                "must lie between registry.min-ttl and registry.max-ttl",
            ));
        }
        for (key, v, max) in [
            ("registry.max-servers", limits.max_servers, 1_000_000),
            (
                "registry.max-servers-per-frontend",
                limits.max_servers_per_frontend,
                4096,
            ),
            ("registry.max-frontends", limits.max_frontends, 65_535),
        ] {
            if v == 0 || v > max {
                return Err(invalid(key, v, format!("must be from 1 to {max}")));
            }
        }

        let h = file.haproxy;
        let mode = o.haproxy_mode.or(h.mode).unwrap_or(HaproxyMode::Supervised);
        let reload_command = h.reload_command.unwrap_or_default();
        if mode == HaproxyMode::External && reload_command.is_empty() {
            return Err(invalid(
                "haproxy.reload-command",
                "",
                "is required in external mode, e.g. [\"systemctl\", \"reload\", \"haproxy\"]",
            ));
        }
        let runtime_socket = abs(h
            .runtime_socket
            .unwrap_or_else(|| data_dir.join("haproxy.sock")));
        let master_socket = abs(h
            .master_socket
            .unwrap_or_else(|| data_dir.join("haproxy-master.sock")));
        let health_socket = abs(h
            .health_socket
            .unwrap_or_else(|| data_dir.join("haproxy-health.sock")));
        check_socket_path("haproxy.runtime-socket", &runtime_socket)?;
        check_socket_path("haproxy.master-socket", &master_socket)?;
        check_socket_path("haproxy.health-socket", &health_socket)?;
        let check_fall = h.check_fall.unwrap_or(3);
        let check_rise = h.check_rise.unwrap_or(2);
        for (key, v) in [
            ("haproxy.check-fall", check_fall),
            ("haproxy.check-rise", check_rise),
        ] {
            if !(1..=100).contains(&v) {
                return Err(invalid(key, v, "must be from 1 to 100"));
            }
        }
        let min_slots = h.min_slots.unwrap_or(4);
        if !(1..=1024).contains(&min_slots) {
            return Err(invalid(
                "haproxy.min-slots",
                min_slots,
                "must be from 1 to 1024",
            ));
        }
        let haproxy = HaproxySettings {
            mode,
            binary: o
                .haproxy_binary
                .or(h.binary)
                .unwrap_or_else(|| PathBuf::from("haproxy")),
            config_path: abs(h
                .config_path
                .unwrap_or_else(|| data_dir.join("haproxy.cfg"))),
            reload_command,
            runtime_socket,
            master_socket,
            health_socket,
            hard_stop_after: positive(
                "haproxy.hard-stop-after",
                h.hard_stop_after.unwrap_or(Duration::from_secs(300)),
            )?,
            min_reload_interval: h.min_reload_interval.unwrap_or(Duration::from_millis(500)),
            coalesce: h.coalesce.unwrap_or(Duration::from_millis(20)),
            check_interval: positive(
                "haproxy.check-interval",
                h.check_interval.unwrap_or(Duration::from_secs(2)),
            )?,
            check_fall,
            check_rise,
            timeout_connect: positive(
                "haproxy.timeout-connect",
                h.timeout_connect.unwrap_or(Duration::from_secs(5)),
            )?,
            timeout_client: positive(
                "haproxy.timeout-client",
                h.timeout_client.unwrap_or(Duration::from_secs(5000)),
            )?,
            timeout_server: positive(
                "haproxy.timeout-server",
                h.timeout_server.unwrap_or(Duration::from_secs(5000)),
            )?,
            min_slots,
        };
        let k = file.keepalived;
        for (key, hook) in [
            ("keepalived.on-master", &k.on_master),
            ("keepalived.on-backup", &k.on_backup),
            ("keepalived.on-fault", &k.on_fault),
        ] {
            if hook
                .as_ref()
                .is_some_and(|h| h.is_empty() || h[0].is_empty())
            {
                return Err(invalid(
                    key,
                    "[]",
                    "must name a program, e.g. [\"/usr/local/bin/move-ip\", \"--to-me\"]",
                ));
            }
        }
        let hooks = crate::keepalived::Hooks {
            on_master: k.on_master.unwrap_or_default(),
            on_backup: k.on_backup.unwrap_or_default(),
            on_fault: k.on_fault.unwrap_or_default(),
        };
        let max_lag = positive(
            "keepalived.max-lag",
            k.max_lag.unwrap_or(Duration::from_secs(10)),
        )?;
        let notify_fifo = k.notify_fifo.map(abs);
        Ok(Settings {
            notify_fifo,
            hooks,
            max_lag,
            node_id,
            api_listen,
            gossip_listen,
            gossip_advertise,
            seeds,
            cluster_id,
            gossip_interval,
            data_dir,
            token_file,
            bind_address,
            tls,
            gossip_tls,
            max_body_bytes,
            max_wait,
            limits,
            allowed_ports: r.allowed_ports.unwrap_or_default(),
            haproxy,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(toml: &str) -> Result<Settings, ConfigError> {
        let file: FileConfig = toml::from_str(toml).map_err(|e| ConfigError::Parse {
            path: "test.toml".into(),
            message: e.to_string(),
        })?;
        Settings::resolve(file, Overrides::default(), Path::new("/srv"))
    }

    #[test]
    fn defaults_work_without_a_file() {
        let s = parse("").unwrap();
        assert_eq!(s.api_listen.to_string(), "127.0.0.1:9000");
        assert_eq!(s.data_dir, Path::new("/srv/lbmesh-data"));
        assert_eq!(s.token_file, Path::new("/srv/lbmesh-data/token"));
        assert_eq!(s.haproxy.mode, HaproxyMode::Supervised);
        assert!(s.limits.default_ttl > Duration::from_secs(600));
    }

    #[test]
    fn file_keys_and_override_precedence() {
        let file: FileConfig = toml::from_str(
            r#"
            node-id = "lb1"
            api-listen = "127.0.0.1:9100"
            bind-address = "0.0.0.0"
            [registry]
            default-ttl = "20m"
            allowed-ports = ["443", "8000-8999", 25]
            [haproxy]
            check-interval = "500ms"
            "#,
        )
        .unwrap();
        let o = Overrides {
            node_id: Some("lb2".into()),
            ..Default::default()
        };
        let s = Settings::resolve(file, o, Path::new("/")).unwrap();
        assert_eq!(s.node_id.as_str(), "lb2", "a flag beats the file");
        assert_eq!(s.api_listen.port(), 9100);
        assert_eq!(s.limits.default_ttl, Duration::from_secs(1200));
        assert_eq!(s.allowed_ports.len(), 3);
        assert_eq!(s.haproxy.check_interval, Duration::from_millis(500));
    }

    #[test]
    fn the_example_configs_in_deploy_are_valid() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/config");
        let mut n = 0;
        for e in std::fs::read_dir(dir).unwrap() {
            let path = e.unwrap().path();
            if path.extension().is_some_and(|x| x == "toml") {
                let file = FileConfig::load(&path).unwrap();
                Settings::resolve(file, Overrides::default(), Path::new("/"))
                    .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                n += 1;
            }
        }
        assert!(n >= 2);
    }

    #[test]
    fn bad_configs_name_the_key() {
        for (toml, needle) in [
            ("nodeid = \"x\"", "unknown field `nodeid`"),
            ("[haproxy]\nmodee = 1", "unknown field `modee`"),
            ("node-id = \"has space\"", "node-id"),
            ("api-listen = \"nowhere\"", "api-listen"),
            ("[registry]\ndefault-ttl = \"forever\"", "default-ttl"),
            ("[registry]\ndefault-ttl = \"5s\"", "registry.default-ttl"),
            (
                "[registry]\nallowed-ports = [\"9-1\"]",
                "ends before it starts",
            ),
            ("[registry]\nmax-servers = 0", "registry.max-servers"),
            ("[haproxy]\nmode = \"external\"", "haproxy.reload-command"),
            (
                "[haproxy]\nruntime-socket = \"/tmp/a\\\"b\"",
                "haproxy.runtime-socket",
            ),
            ("[api]\ntls-cert = \"/x.pem\"", "api.tls-key"),
            (
                "[haproxy]\ncheck-interval = \"0s\"",
                "haproxy.check-interval",
            ),
            ("gossip-listen = \"127.0.0.1:9000\"", "gossip-listen"),
            ("seeds = [\"nohostport\"]", "seed"),
        ] {
            let err = parse(toml).unwrap_err().to_string();
            assert!(err.contains(needle), "{toml:?}: {err}");
        }
    }
}

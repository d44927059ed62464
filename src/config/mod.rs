//! Configuration: embedded defaults, overridden by a TOML file, then by
//! `LBMESH_…` environment variables, then by command-line flags.
//!
//! One module per section of the file, each with the keys as written, the
//! settings they resolve to and the resolver between them; this module holds
//! the top-level keys and puts the sections together.

mod api;
mod haproxy;
mod keepalived;
mod mesh;
mod registry;

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::registry::PeerId;

pub use api::{ApiFile, ApiSettings, ApiTls};
pub use haproxy::{HaproxyFile, HaproxyMode, HaproxySettings};
pub use keepalived::{KeepalivedFile, KeepalivedSettings};
pub use mesh::{GossipSettings, GossipTls, MeshFile, MeshTransport};
pub use registry::{RegistryFile, RegistrySettings};

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

/// A duration that must not be zero.
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
    pub data_dir: PathBuf,
    pub token_file: PathBuf,
    pub api: ApiSettings,
    pub gossip: GossipSettings,
    pub registry: RegistrySettings,
    pub haproxy: HaproxySettings,
    pub keepalived: KeepalivedSettings,
}

/// Makes relative paths absolute against the directory lbmesh started in.
#[derive(Debug, Clone, Copy)]
struct Paths<'a> {
    cwd: &'a Path,
}

impl Paths<'_> {
    fn abs(&self, p: PathBuf) -> PathBuf {
        if p.is_absolute() { p } else { self.cwd.join(p) }
    }
}

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

impl Settings {
    /// Resolves defaults < file < overrides, relative paths against `cwd`, and validates.
    pub fn resolve(file: FileConfig, o: Overrides, cwd: &Path) -> Result<Settings, ConfigError> {
        let paths = Paths { cwd };
        let node_id_raw = o
            .node_id
            .clone()
            .or(file.node_id)
            .unwrap_or_else(default_node_id);
        let node_id: PeerId = node_id_raw
            .parse()
            .map_err(|e: crate::registry::FieldError| {
                invalid("node-id", &node_id_raw, e.problem)
            })?;
        let api_listen = o
            .api_listen
            .or(file.api_listen)
            .unwrap_or_else(|| api::DEFAULT_LISTEN.parse().expect("valid default"));
        let data_dir = paths.abs(
            o.data_dir
                .clone()
                .or(file.data_dir)
                .unwrap_or_else(|| PathBuf::from("lbmesh-data")),
        );
        let token_file = paths.abs(
            o.token_file
                .clone()
                .or(file.token_file)
                .unwrap_or_else(|| data_dir.join("token")),
        );
        let gossip = mesh::resolve(
            file.mesh,
            mesh::Given {
                listen: o.gossip_listen.or(file.gossip_listen),
                advertise: o.gossip_advertise,
                seeds: if o.seeds.is_empty() {
                    file.seeds.unwrap_or_default()
                } else {
                    o.seeds.clone()
                },
                api_listen,
                node_id: &node_id,
                data_dir: &data_dir,
            },
            paths,
        )?;
        let api = api::resolve(file.api, api_listen, &o, &data_dir, paths)?;
        let registry = registry::resolve(file.registry)?;
        let haproxy = haproxy::resolve(
            file.haproxy,
            o.bind_address.or(file.bind_address),
            &o,
            &data_dir,
            paths,
        )?;
        let keepalived = keepalived::resolve(
            file.keepalived,
            paths,
            &data_dir,
            haproxy.render.bind_address,
        )?;
        Ok(Settings {
            node_id,
            data_dir,
            token_file,
            api,
            gossip,
            registry,
            haproxy,
            keepalived,
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
        assert_eq!(s.api.listen.to_string(), "127.0.0.1:9000");
        assert_eq!(s.data_dir, Path::new("/srv/lbmesh-data"));
        assert_eq!(s.token_file, Path::new("/srv/lbmesh-data/token"));
        assert_eq!(s.haproxy.mode, HaproxyMode::Supervised);
        assert!(s.registry.limits.default_ttl > Duration::from_secs(600));
        assert_eq!(
            s.haproxy.render.runtime_socket,
            Path::new("/srv/lbmesh-data/haproxy.sock")
        );
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
        assert_eq!(s.api.listen.port(), 9100);
        assert_eq!(s.registry.limits.default_ttl, Duration::from_secs(1200));
        assert_eq!(s.registry.allowed_ports.len(), 3);
        assert_eq!(s.haproxy.render.check_interval, Duration::from_millis(500));
        assert_eq!(s.haproxy.render.bind_address.to_string(), "0.0.0.0");
    }

    #[test]
    fn the_floating_ip_and_its_interface_go_together() {
        assert!(parse("").unwrap().keepalived.handoff.is_none());
        let s = parse(
            "bind-address = \"0.0.0.0\"\n[keepalived]\nvip = \"198.18.0.100/24\"\ninterface = \"eth0\"",
        )
        .unwrap();
        let h = s.keepalived.handoff.unwrap();
        assert_eq!(h.vip.to_string(), "198.18.0.100");
        assert_eq!(h.interface, "eth0");
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
            ("[mesh]\ncluster-id = \"a b\"", "mesh.cluster-id"),
            ("[mesh]\ngossip-interval = \"1h\"", "mesh.gossip-interval"),
            ("[mesh]\ncert = \"/x.crt\"", "go together"),
            ("[api]\nmax-body-bytes = 1", "api.max-body-bytes"),
            ("[keepalived]\non-master = []", "keepalived.on-master"),
            ("[keepalived]\nmax-lag = \"0s\"", "keepalived.max-lag"),
            (
                "[keepalived]\nvip = \"198.18.0.100\"",
                "keepalived.interface",
            ),
            ("[keepalived]\ninterface = \"eth0\"", "keepalived.vip"),
            (
                "bind-address = \"0.0.0.0\"\n[keepalived]\nvip = \"2001:db8::1\"\ninterface = \"eth0\"",
                "only an IPv4",
            ),
            (
                "bind-address = \"0.0.0.0\"\n[keepalived]\nvip = \"127.0.0.9\"\ninterface = \"eth0\"",
                "keepalived.vip",
            ),
            (
                "bind-address = \"0.0.0.0\"\n[keepalived]\nvip = \"198.18.0.100\"\ninterface = \"eth0; x\"",
                "keepalived.interface",
            ),
            (
                "[keepalived]\nvip = \"198.18.0.100\"\ninterface = \"eth0\"",
                "bind-address",
            ),
            ("[haproxy]\nmin-slots = 0", "haproxy.min-slots"),
        ] {
            let err = parse(toml).unwrap_err().to_string();
            assert!(err.contains(needle), "{toml:?}: {err}");
        }
    }
}

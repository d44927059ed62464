//! The `[api]` section with `api-listen`: where and how the phone-home API is served.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::{ConfigError, Overrides, Paths, invalid, positive};

pub const DEFAULT_LISTEN: &str = "127.0.0.1:9000";

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
    /// Connections open at once (loopback callers have a reserve beyond it).
    pub max_connections: Option<usize>,
    /// Connections open at once from one source address.
    pub max_connections_per_source: Option<usize>,
    /// Extra connections only loopback callers (keepalived's check) may use.
    pub local_reserve: Option<usize>,
    #[serde(default, with = "humantime_serde")]
    pub header_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub body_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub idle_timeout: Option<Duration>,
}

/// The phone-home API.
#[derive(Debug, Clone)]
pub struct ApiSettings {
    pub listen: SocketAddr,
    /// HTTPS, or plain HTTP when `None`.
    pub tls: Option<ApiTls>,
    pub max_body_bytes: usize,
    /// The longest `?wait=applied`.
    pub max_wait: Duration,
    /// Connection caps and timeouts.
    pub limits: crate::api::ConnLimits,
}

/// How the API serves HTTPS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiTls {
    /// A certificate and key given by the operator (certbot, or `lbmesh ca issue`).
    Files { cert: PathBuf, key: PathBuf },
    /// A self-signed certificate made on first start in `dir`, for these names.
    SelfSigned { dir: PathBuf, names: Vec<String> },
}

pub(super) fn resolve(
    file: ApiFile,
    listen: SocketAddr,
    o: &Overrides,
    data_dir: &Path,
    paths: Paths<'_>,
) -> Result<ApiSettings, ConfigError> {
    let tls = match (
        o.tls_cert.clone().or(file.tls_cert),
        o.tls_key.clone().or(file.tls_key),
    ) {
        (Some(c), Some(k)) => {
            if file.tls_self_signed == Some(true) {
                return Err(invalid(
                    "api.tls-self-signed",
                    "true",
                    "conflicts with api.tls-cert and api.tls-key; choose one",
                ));
            }
            Some(ApiTls::Files {
                cert: paths.abs(c),
                key: paths.abs(k),
            })
        }
        (None, None) if file.tls_self_signed == Some(true) => {
            let names = file.tls_names.unwrap_or_default();
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
    let max_body_bytes = file.max_body_bytes.unwrap_or(16 * 1024);
    if !(256..=1024 * 1024).contains(&max_body_bytes) {
        return Err(invalid(
            "api.max-body-bytes",
            max_body_bytes,
            "must be from 256 to 1048576",
        ));
    }
    let max_wait = positive(
        "api.max-wait",
        file.max_wait.unwrap_or(Duration::from_secs(30)),
    )?;
    let d = crate::api::ConnLimits::default();
    let limits = crate::api::ConnLimits {
        max_connections: file.max_connections.unwrap_or(d.max_connections),
        max_per_source: file.max_connections_per_source.unwrap_or(d.max_per_source),
        local_reserve: file.local_reserve.unwrap_or(d.local_reserve),
        header_timeout: positive(
            "api.header-timeout",
            file.header_timeout.unwrap_or(d.header_timeout),
        )?,
        body_timeout: positive(
            "api.body-timeout",
            file.body_timeout.unwrap_or(d.body_timeout),
        )?,
        idle_timeout: positive(
            "api.idle-timeout",
            file.idle_timeout.unwrap_or(d.idle_timeout),
        )?,
    };
    for (key, v) in [
        ("api.max-connections", limits.max_connections),
        ("api.max-connections-per-source", limits.max_per_source),
    ] {
        if !(1..=1_000_000).contains(&v) {
            return Err(invalid(key, v, "must be from 1 to 1000000"));
        }
    }
    if limits.local_reserve > 100_000 {
        return Err(invalid(
            "api.local-reserve",
            limits.local_reserve,
            "must be at most 100000",
        ));
    }
    Ok(ApiSettings {
        listen,
        tls,
        max_body_bytes,
        max_wait,
        limits,
    })
}

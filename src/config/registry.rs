//! The `[registry]` section: leases, bounds and the frontend-port policy.

use std::time::Duration;

use serde::Deserialize;

use super::{ConfigError, invalid, positive};
use crate::registry::{BackendPolicy, Limits, PortRange};
use crate::shared::{AckMode, AckPolicy};

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
    /// Networks backend servers may be in (CIDRs or single addresses).
    pub allowed_backends: Option<Vec<String>>,
    #[serde(default, with = "humantime_serde")]
    pub max_clock_skew: Option<Duration>,
    /// When a write is acknowledged: "replicated" (default) or "local".
    pub ack: Option<AckMode>,
    /// How long a replicated write waits for another peer.
    #[serde(default, with = "humantime_serde")]
    pub ack_timeout: Option<Duration>,
}

/// What the registry accepts.
#[derive(Debug, Clone)]
pub struct RegistrySettings {
    pub limits: Limits,
    /// Frontend ports clients may ask for; empty means every port but lbmesh's own and 22.
    pub allowed_ports: Vec<PortRange>,
    /// When writes are acknowledged.
    pub ack: AckPolicy,
    /// Backend addresses clients may register.
    pub backends: BackendPolicy,
}

pub(super) fn resolve(r: RegistryFile) -> Result<RegistrySettings, ConfigError> {
    let d = Limits::default();
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
    let backends = match r.allowed_backends {
        None => BackendPolicy::default(),
        Some(list) => {
            let mut nets = Vec::with_capacity(list.len());
            for raw in &list {
                let net = raw
                    .parse::<ipnet::IpNet>()
                    .or_else(|_| raw.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                    .map_err(|_| {
                        invalid(
                            "registry.allowed-backends",
                            raw,
                            "must be networks like \"10.0.0.0/8\" or addresses",
                        )
                    })?;
                nets.push(net);
            }
            if nets.is_empty() {
                return Err(invalid(
                    "registry.allowed-backends",
                    "[]",
                    "allows no backend at all; leave it out for every unicast address but loopback and link-local",
                ));
            }
            BackendPolicy::new(nets)
        }
    };
    let ack = AckPolicy {
        mode: r.ack.unwrap_or_default(),
        timeout: r.ack_timeout.unwrap_or(AckPolicy::default().timeout),
    };
    if !(Duration::from_millis(10)..=Duration::from_secs(60)).contains(&ack.timeout) {
        return Err(invalid(
            "registry.ack-timeout",
            humantime::format_duration(ack.timeout),
            "must be from 10ms to 60s",
        ));
    }
    Ok(RegistrySettings {
        limits,
        allowed_ports: r.allowed_ports.unwrap_or_default(),
        ack,
        backends,
    })
}

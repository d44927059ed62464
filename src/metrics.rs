//! Prometheus metrics: one registry of counters and gauges shared by every subsystem.
//!
//! Names and labels are an interface: `deploy/prometheus/` alerts on them and
//! `deploy/grafana/` draws them; a test checks that every name used there exists.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub route: &'static str,
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ApplyLabels {
    pub method: &'static str,
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: &'static str,
}

/// Why HAProxy's config changed, and whether the change worked.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CauseLabels {
    pub cause: &'static str,
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PeerStateLabels {
    /// `live` or `dead`.
    pub state: &'static str,
}

/// Servers of one frontend in one health state, as HAProxy's checks see them.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServerStateLabels {
    pub frontend: String,
    pub state: &'static str,
}

/// Why this peer refused (or closed) a gossip connection
/// (`lbmesh_peer_connections_refused_total`).
pub mod refused_connection {
    /// The certificate is on the revocation list.
    pub const REVOKED: &str = "revoked";
    /// The certificate is not signed by the cluster CA (another cluster's, self-signed).
    pub const UNKNOWN_CA: &str = "unknown_ca";
    /// The certificate has expired or is not valid yet.
    pub const EXPIRED: &str = "expired";
    /// The peer presented no certificate.
    pub const NO_CERTIFICATE: &str = "no_certificate";
    /// The certificate names another node than the one the peer gossips
    /// as, or no node at all.
    pub const IDENTITY: &str = "identity";
    /// The handshake did not finish in time.
    pub const HANDSHAKE_TIMEOUT: &str = "handshake_timeout";
    /// Any other TLS failure.
    pub const TLS: &str = "tls";
    /// The other side closed the handshake: it does not trust this peer's
    /// certificate (a host of another cluster trying to join, or this
    /// peer's certificate revoked or expired in the other's view).
    pub const REFUSED_BY_PEER: &str = "refused_by_peer";
    pub const ALL: [&str; 8] = [
        REVOKED,
        UNKNOWN_CA,
        EXPIRED,
        NO_CERTIFICATE,
        IDENTITY,
        HANDSHAKE_TIMEOUT,
        TLS,
        REFUSED_BY_PEER,
    ];

    /// The reason of a failed handshake, from its error text (quinn and
    /// rustls give the certificate error only as text).
    pub fn of_handshake(error: &str) -> &'static str {
        let has = |s: &str| error.contains(s);
        if has("Revoked") || has("revoked") {
            REVOKED
        } else if has("UnknownIssuer") || has("BadSignature") {
            UNKNOWN_CA
        } else if has("expired") || has("Expired") || has("not valid yet") || has("NotValidYet") {
            EXPIRED
        } else if has("no certificates") || has("NoCertificatesPresented") {
            NO_CERTIFICATE
        } else if has("timed out") {
            HANDSHAKE_TIMEOUT
        } else {
            TLS
        }
    }
}

/// Buckets for latencies across the mesh, from a millisecond to a minute.
fn mesh_latency_buckets() -> [f64; 14] {
    [
        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 15.0, 60.0,
    ]
}

/// Entries not served, by the peer that accepted them and why.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusedLabels {
    pub peer: String,
    pub reason: &'static str,
}

pub struct Metrics {
    registry: Registry,
    pub refused_entries: Family<RefusedLabels, Gauge>,
    pub duplicate_node_ids: Gauge,
    pub unverified_peers: Gauge,
    pub unverified_gossip_dropped: Gauge,
    pub requests: Family<RequestLabels, Counter>,
    pub frontends: Gauge,
    pub servers: Gauge,
    pub applies: Family<ApplyLabels, Counter>,
    pub reloads: Family<CauseLabels, Counter>,
    pub runtime_changes: Family<CauseLabels, Counter>,
    pub validation_failures: Counter,
    pub apply_seconds: Histogram,
    pub quarantined: Gauge,
    pub haproxy_up: Gauge,
    pub haproxy_restarts: Counter,
    pub haproxy_servers: Family<ServerStateLabels, Gauge>,
    pub vrrp_masters: Gauge,
    pub peers: Family<PeerStateLabels, Gauge>,
    pub converged: Gauge,
    pub lag_seconds: Gauge<f64, AtomicU64>,
    pub peer_connections_refused: Family<ReasonLabels, Counter>,
    pub gossip_entries_malformed: Counter,
    pub api_connections_refused: Family<ReasonLabels, Counter>,
    pub replication_seconds: Histogram,
    pub propagation_seconds: Histogram,
    /// 1 when this peer may hold the VIP, 0 while keepalived holds it in FAULT.
    pub vrrp_may_hold: Gauge,
    pub split_brain_stepdowns: Counter,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("lbmesh");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "http_requests",
            "API requests by route and outcome",
            requests.clone(),
        );
        let frontends = Gauge::default();
        registry.register("frontends", "Frontends in the registry", frontends.clone());
        let servers = Gauge::default();
        registry.register("servers", "Live servers in the registry", servers.clone());
        let applies = Family::<ApplyLabels, Counter>::default();
        registry.register(
            "applies",
            "Config applies by method (runtime, reload, none) and result",
            applies.clone(),
        );
        let reloads = Family::<CauseLabels, Counter>::default();
        registry.register(
            "haproxy_reloads",
            "HAProxy reloads (or starts) by cause (start, registry, expiry, retry) and result",
            reloads.clone(),
        );
        let runtime_changes = Family::<CauseLabels, Counter>::default();
        registry.register(
            "haproxy_runtime_changes",
            "Server changes made through HAProxy's Runtime API, without a reload, by cause and result",
            runtime_changes.clone(),
        );
        // Every label set exists from the start, at 0, so rate() and
        // increase() see the first change.
        for cause in crate::events::Cause::ALL {
            for result in ["ok", "failed"] {
                let labels = CauseLabels {
                    cause: cause.as_str(),
                    result,
                };
                reloads.get_or_create(&labels).inc_by(0);
                runtime_changes.get_or_create(&labels).inc_by(0);
            }
        }
        let validation_failures = Counter::default();
        registry.register(
            "validation_failures",
            "Rendered configs that haproxy -c rejected",
            validation_failures.clone(),
        );
        let apply_seconds = Histogram::new([
            0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
        ]);
        registry.register(
            "apply_duration_seconds",
            "Time from picking up a registry change to HAProxy serving it",
            apply_seconds.clone(),
        );
        let quarantined = Gauge::default();
        registry.register(
            "quarantined_frontends",
            "Frontends left out of the config because they cannot bind",
            quarantined.clone(),
        );
        let haproxy_up = Gauge::default();
        registry.register(
            "haproxy_up",
            "1 when an HAProxy worker answers",
            haproxy_up.clone(),
        );
        let haproxy_restarts = Counter::default();
        registry.register(
            "haproxy_restarts",
            "Times the supervised HAProxy died and was restarted",
            haproxy_restarts.clone(),
        );
        let haproxy_servers = Family::<ServerStateLabels, Gauge>::default();
        registry.register(
            "haproxy_servers",
            "Servers per frontend by the state HAProxy's health checks give them (up, down, maint, drain, no_check)",
            haproxy_servers.clone(),
        );
        let vrrp_masters = Gauge::default();
        registry.register(
            "vrrp_masters",
            "Live peers reporting VRRP MASTER for one instance (more than 1 is split brain)",
            vrrp_masters.clone(),
        );
        let peers = Family::<PeerStateLabels, Gauge>::default();
        registry.register(
            "peers",
            "Peers this one knows of (itself included) by state: live or dead",
            peers.clone(),
        );
        for state in ["live", "dead"] {
            peers.get_or_create(&PeerStateLabels { state }).set(0);
        }
        let converged = Gauge::default();
        registry.register(
            "converged",
            "1 when every live peer reports the same registry and config digests",
            converged.clone(),
        );
        let lag_seconds = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "lag_seconds",
            "How long this peer's HAProxy config has differed from what most live peers serve (0 when in step)",
            lag_seconds.clone(),
        );
        let peer_connections_refused = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "peer_connections_refused",
            "Gossip connections this peer refused or closed, by reason (revoked, unknown_ca, expired, no_certificate, identity, handshake_timeout, tls)",
            peer_connections_refused.clone(),
        );
        for reason in refused_connection::ALL {
            peer_connections_refused
                .get_or_create(&ReasonLabels { reason })
                .inc_by(0);
        }
        let gossip_entries_malformed = Counter::default();
        registry.register(
            "gossip_entries_malformed",
            "Entries gossiped by peers that cannot be decoded (entries refused by this peer's policy are lbmesh_refused_entries)",
            gossip_entries_malformed.clone(),
        );
        let replication_seconds = Histogram::new(mesh_latency_buckets());
        registry.register(
            "replication_seconds",
            "From accepting a write to another peer holding it",
            replication_seconds.clone(),
        );
        let propagation_seconds = Histogram::new(mesh_latency_buckets());
        registry.register(
            "propagation_seconds",
            "From a write accepted by another peer to this peer merging it (includes clock skew)",
            propagation_seconds.clone(),
        );
        let api_connections_refused = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "api_connections_refused",
            "API connections closed at once because a cap was reached (per_source_cap, connection_cap)",
            api_connections_refused.clone(),
        );
        let refused_entries = Family::<RefusedLabels, Gauge>::default();
        registry.register(
            "refused_entries",
            "Entries held but not served because this peer's own policy or bounds refuse them, by the peer that accepted them and the reason",
            refused_entries.clone(),
        );
        let duplicate_node_ids = Gauge::default();
        registry.register(
            "duplicate_node_ids",
            "Node ids that two or more live peers claim at once (a stolen certificate or a cloned VM)",
            duplicate_node_ids.clone(),
        );
        let unverified_peers = Gauge::default();
        registry.register(
            "unverified_peers",
            "Peer incarnations held but not served: this peer never authenticated their node id at their address",
            unverified_peers.clone(),
        );
        let unverified_gossip_dropped = Gauge::default();
        registry.register(
            "unverified_gossip_dropped",
            "Gossip entries about unverified peer incarnations dropped because the bound on them was reached, since start",
            unverified_gossip_dropped.clone(),
        );
        let vrrp_may_hold = Gauge::default();
        registry.register(
            "vrrp_may_hold",
            "1 when this peer may hold the VIP, 0 while lbmesh holds keepalived in FAULT",
            vrrp_may_hold.clone(),
        );
        let split_brain_stepdowns = Counter::default();
        registry.register(
            "split_brain_stepdowns",
            "Times this peer stepped down because another live peer also held the VIP",
            split_brain_stepdowns.clone(),
        );
        Self {
            duplicate_node_ids,
            unverified_peers,
            unverified_gossip_dropped,
            refused_entries,
            haproxy_servers,
            runtime_changes,
            peers,
            converged,
            lag_seconds,
            peer_connections_refused,
            gossip_entries_malformed,
            api_connections_refused,
            replication_seconds,
            propagation_seconds,
            vrrp_masters,
            vrrp_may_hold,
            split_brain_stepdowns,
            registry,
            requests,
            frontends,
            servers,
            applies,
            reloads,
            validation_failures,
            apply_seconds,
            quarantined,
            haproxy_up,
            haproxy_restarts,
        }
    }

    pub fn request(&self, route: &'static str, outcome: &'static str) {
        self.requests
            .get_or_create(&RequestLabels { route, outcome })
            .inc();
    }

    /// Sets the mesh gauges from the mesh task's snapshot.
    pub fn observe_mesh(&self, snap: &crate::mesh::MeshSnapshot) {
        let (peers, state) = (&snap.peers, &snap.state);
        let live = peers.iter().filter(|p| p.live).count();
        self.peers
            .get_or_create(&PeerStateLabels { state: "live" })
            .set(live as i64);
        self.peers
            .get_or_create(&PeerStateLabels { state: "dead" })
            .set((peers.len() - live) as i64);
        self.converged.set(i64::from(state.converged));
        self.lag_seconds.set(
            state
                .lag(state.computed_at_ms)
                .map_or(0.0, |d| d.as_secs_f64()),
        );
        self.vrrp_masters.set(state.vip_holders.len() as i64);
    }

    /// Counts a refused peer connection (see [`refused_connection`]).
    pub fn refused_connection(&self, reason: &'static str) {
        self.peer_connections_refused
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    /// Counts an API connection closed at once by a cap (see [`crate::api::guard`]).
    pub fn refused_api_connection(&self, reason: &'static str) {
        self.api_connections_refused
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    /// Sets the refused-entries gauges to `counts`, dropping those gone.
    pub fn set_refused(&self, counts: &std::collections::BTreeMap<(String, &'static str), usize>) {
        self.refused_entries.clear();
        for ((peer, reason), n) in counts {
            self.refused_entries
                .get_or_create(&RefusedLabels {
                    peer: peer.clone(),
                    reason,
                })
                .set(*n as i64);
        }
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handshake_failures_are_told_apart() {
        use rustls::CertificateError as C;
        let cert = |e: C| rustls::Error::InvalidCertificate(e).to_string();
        for (error, reason) in [
            (cert(C::Revoked), "revoked"),
            (cert(C::UnknownIssuer), "unknown_ca"),
            (cert(C::BadSignature), "unknown_ca"),
            (cert(C::Expired), "expired"),
            (cert(C::NotValidYet), "expired"),
            (
                rustls::Error::NoCertificatesPresented.to_string(),
                "no_certificate",
            ),
            ("handshake timed out".to_string(), "handshake_timeout"),
            (cert(C::UnhandledCriticalExtension), "tls"),
            (
                rustls::Error::PeerIncompatible(rustls::PeerIncompatible::NoCipherSuitesInCommon)
                    .to_string(),
                "tls",
            ),
        ] {
            assert_eq!(refused_connection::of_handshake(&error), reason, "{error}");
        }
    }

    #[test]
    fn every_label_set_is_there_from_the_start() {
        let text = Metrics::new().encode();
        for needle in [
            "lbmesh_haproxy_reloads_total{cause=\"expiry\",result=\"failed\"} 0",
            "lbmesh_haproxy_runtime_changes_total{cause=\"registry\",result=\"ok\"} 0",
            "lbmesh_peer_connections_refused_total{reason=\"revoked\"} 0",
            "lbmesh_peers{state=\"dead\"} 0",
            "lbmesh_haproxy_restarts_total 0",
        ] {
            assert!(text.contains(needle), "{needle} missing:\n{text}");
        }
    }
}

//! Prometheus metrics: one registry of counters and gauges shared by every subsystem.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

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

pub struct Metrics {
    registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    pub frontends: Gauge,
    pub servers: Gauge,
    pub applies: Family<ApplyLabels, Counter>,
    pub reloads: Family<ResultLabels, Counter>,
    pub validation_failures: Counter,
    pub apply_seconds: Histogram,
    pub quarantined: Gauge,
    pub haproxy_up: Gauge,
    pub haproxy_restarts: Gauge,
    pub vrrp_masters: Gauge,
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
        let reloads = Family::<ResultLabels, Counter>::default();
        registry.register(
            "haproxy_reloads",
            "HAProxy reloads by result",
            reloads.clone(),
        );
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
        let haproxy_restarts = Gauge::default();
        registry.register(
            "haproxy_restarts",
            "Times the supervised HAProxy died and was restarted",
            haproxy_restarts.clone(),
        );
        let vrrp_masters = Gauge::default();
        registry.register(
            "vrrp_masters",
            "Live peers reporting VRRP MASTER for one instance (more than 1 is split brain)",
            vrrp_masters.clone(),
        );
        Self {
            vrrp_masters,
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

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

//! The status of a peer as `/v1/status` serves it and `lbmesh status` prints it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::haproxy::apply::ApplyReport;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeStatus {
    pub node_id: String,
    pub version: String,
    pub uptime_seconds: u64,
    pub registry: RegistryStatus,
    pub haproxy: HaproxyStatus,
    pub storage_ok: bool,
    #[serde(default)]
    pub vrrp: VrrpStatus,
    /// Every peer this one knows of, itself included.
    #[serde(default)]
    pub peers: Vec<PeerStatus>,
    /// Whether every live peer reports the same registry and config digests.
    #[serde(default)]
    pub converged: bool,
    /// The mesh as the mesh task computed it: convergence, lag, catching up.
    #[serde(default)]
    pub mesh: crate::mesh::MeshState,
    /// Node ids that two or more live peers claim at once.
    #[serde(default)]
    pub duplicate_node_ids: Vec<String>,
    /// A digest of this peer's registry policy (ports, backends, bounds).
    #[serde(default)]
    pub policy_digest: String,
    /// Live peers publish a policy digest other than this peer's: they
    /// accept and serve different things.
    #[serde(default)]
    pub policies_differ: bool,
    /// Entries this peer holds or was sent but does not serve, because its
    /// own policy or bounds refuse them (the first 100).
    #[serde(default)]
    pub refused: Vec<RefusedOut>,
    /// How many entries are refused in all.
    #[serde(default)]
    pub refused_total: usize,
    /// Live servers left out because another name owns their frontend.
    #[serde(default)]
    pub conflicts: Vec<ConflictStatus>,
}

/// An entry this peer does not serve, who accepted it and why.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RefusedOut {
    pub frontend_port: u16,
    pub server: String,
    pub name: String,
    pub peer: String,
    pub reason: String,
    pub message: String,
}

/// A live server left out of its frontend: `name` claims it, `owner` owns it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConflictStatus {
    pub frontend: u16,
    pub server: String,
    pub name: String,
    pub owner: String,
}

/// Who holds the floating IP, as keepalived reports it through the mesh.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct VrrpStatus {
    /// This peer's state and instance, e.g. `MASTER VI_LBMESH`.
    pub state: Option<String>,
    /// Live peers reporting MASTER.
    pub masters: Vec<String>,
    /// More than one live MASTER.
    pub split_brain: bool,
    /// Whether this peer may hold the VIP, and why not.
    #[serde(default)]
    pub failover: Option<crate::failover::FailoverStatus>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RegistryStatus {
    pub digest: String,
    /// Changes to this peer's registry (its own writes and merged gossip)
    /// since its lbmesh started; 0 again after a restart.
    #[serde(alias = "generation")]
    pub changes: u64,
    pub frontends: usize,
    pub servers: usize,
    /// Live servers left out because another name owns their frontend.
    pub conflicts: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HaproxyStatus {
    pub mode: String,
    pub running: bool,
    pub master_pid: Option<u32>,
    pub restarts: u64,
    pub config_digest: Option<String>,
    pub wanted_config_digest: Option<String>,
    pub in_step: bool,
    pub last_apply: Option<ApplyReportOut>,
    pub quarantined: BTreeMap<u16, String>,
    /// Frontends whose change waits for its turn to reload, and why.
    #[serde(default)]
    pub deferred: BTreeMap<u16, String>,
    /// Frontends still bound with no servers, and the seconds left before
    /// a reload may remove them.
    #[serde(default)]
    pub held: BTreeMap<u16, u64>,
    pub reloads: u64,
    pub runtime_updates: u64,
}

/// [`ApplyReport`] with its time as RFC 3339 for people.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ApplyReportOut {
    pub at: String,
    pub method: String,
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub duration_ms: u64,
}

impl From<&ApplyReport> for ApplyReportOut {
    fn from(r: &ApplyReport) -> Self {
        Self {
            at: rfc3339(r.at_ms),
            method: serde_json::to_value(r.method)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default(),
            ok: r.ok,
            error: r.error.clone(),
            duration_ms: r.duration_ms,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerStatus {
    pub node_id: String,
    pub live: bool,
    /// Which start of the peer this row describes (Unix ms of the start,
    /// larger on every start).
    #[serde(alias = "generation")]
    pub incarnation: u64,
    pub gossip_addr: String,
    pub api_addr: Option<String>,
    pub registry_digest: Option<String>,
    pub config_digest: Option<String>,
    pub vrrp_state: Option<String>,
    /// A digest of the peer's registry policy (ports, backends, bounds).
    #[serde(default)]
    pub policy_digest: Option<String>,
    /// Another live peer claims the same node id (each gets a row).
    #[serde(default)]
    pub duplicate: bool,
    /// A gossip link whose certificate names this node is open now (always
    /// true without peer authentication).
    #[serde(default)]
    pub authenticated: bool,
    /// Its VRRP state, as shown, was gossiped by the peer itself (not only
    /// relayed by others).
    #[serde(default)]
    pub vrrp_first_hand: bool,
}

/// Whether every live peer reports the same registry and config digests.
pub fn converged(peers: &[PeerStatus]) -> bool {
    let live: Vec<&PeerStatus> = peers.iter().filter(|p| p.live).collect();
    live.windows(2).all(|w| {
        w[0].registry_digest == w[1].registry_digest && w[0].config_digest == w[1].config_digest
    })
}

/// Unix milliseconds as RFC 3339 (UTC, seconds).
pub fn rfc3339(ms: u64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
    humantime::format_rfc3339_seconds(t).to_string()
}

//! `GET /v1/status`: this peer, and in a mesh every peer it knows, as one document.

use std::sync::Arc;

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};

use super::ApiState;
use super::auth::authorize;
use crate::haproxy::apply::ApplyStatus;
use crate::keepalived::Vrrp;
use crate::status::{
    ApplyReportOut, ConflictStatus, HaproxyStatus, NodeStatus, RefusedOut, RegistryStatus,
    VrrpStatus,
};

/// Whether HAProxy serves the latest registry change (not only the last one
/// the applier picked up).
fn apply_in_step(st: &ApiState, apply: &ApplyStatus) -> bool {
    apply.in_step() && apply.config_generation >= st.registry.config_generation()
}

/// The status of this peer (and, in a mesh, of every peer it knows).
pub async fn node_status(st: &ApiState) -> NodeStatus {
    // The digest, counts and refusals, read in runs (no write waits for a
    // pass over the whole registry).
    let report = st.registry.report(100);
    let summary = report.summary;
    let generation = st.registry.with(|r| r.generation());
    let running = st.haproxy.is_serving().await;
    let node_id = st.registry.with(|r| r.node().to_string());
    // A snapshot that includes every change this peer has made and applied,
    // so its own row is never one change behind. The applier's state is read
    // afresh on each try: one captured before the wait may be replaced while
    // waiting (a peer that starts applies several times in its first
    // second), and no snapshot would then match it until the bound.
    let mesh = st
        .mesh
        .fresh(
            |m| {
                m.registry_generation >= generation
                    && m.row(&node_id)
                        .is_some_and(|me| me.config_digest == st.apply.borrow().config_digest)
            },
            Duration::from_secs(1),
        )
        .await;
    let apply = st.apply.borrow().clone();
    let policy_digest = st
        .registry
        .with(|r| crate::mesh::addresses::policy_digest(r));
    let (refused, counts) = (report.refused, report.counts);
    let policies_differ = mesh
        .peers
        .iter()
        .filter(|p| p.live)
        .filter_map(|p| p.policy_digest.as_deref())
        .any(|d| d != policy_digest);
    let mut duplicate_node_ids: Vec<String> = mesh
        .peers
        .iter()
        .filter(|p| p.duplicate)
        .map(|p| p.node_id.clone())
        .collect();
    duplicate_node_ids.sort();
    duplicate_node_ids.dedup();
    // Building the view is costly with many servers; conflicts are rare.
    let conflicts = if summary.conflicts == 0 {
        Vec::new()
    } else {
        st.registry
            .view()
            .conflicts
            .into_iter()
            .map(|c| ConflictStatus {
                frontend: c.frontend,
                server: c.server.to_string(),
                name: c.name.to_string(),
                owner: c.owner.to_string(),
            })
            .collect()
    };
    NodeStatus {
        node_id,
        version: env!("CARGO_PKG_VERSION").into(),
        uptime_seconds: st.started.elapsed().as_secs(),
        registry: RegistryStatus {
            digest: summary.digest,
            changes: generation,
            frontends: summary.frontends,
            servers: summary.servers,
            conflicts: summary.conflicts,
        },
        haproxy: HaproxyStatus {
            mode: if st.haproxy.is_supervised() {
                "supervised"
            } else {
                "external"
            }
            .into(),
            running,
            master_pid: st.haproxy.state().master_pid(),
            restarts: st.haproxy.state().restarts(),
            in_step: apply_in_step(st, &apply),
            config_digest: apply.config_digest.clone(),
            wanted_config_digest: apply.wanted_config_digest.clone(),
            last_apply: apply.last.as_ref().map(ApplyReportOut::from),
            quarantined: apply.quarantined.clone(),
            deferred: apply.deferred.clone(),
            held: apply
                .held
                .iter()
                .map(|(port, ms)| (*port, ms.div_ceil(1000)))
                .collect(),
            reloads: apply.reloads,
            runtime_updates: apply.runtime_updates,
        },
        storage_ok: !st.registry.store().is_failed(),
        vrrp: VrrpStatus {
            state: st
                .vrrp
                .as_ref()
                .and_then(Vrrp::current)
                .map(|n| format!("{} {}", n.state, n.name)),
            split_brain: mesh.state.split_brain(),
            masters: mesh.state.vip_holders.clone(),
            failover: st.failover.as_ref().map(|f| f.status()),
        },
        peers: mesh.peers.clone(),
        converged: mesh.state.converged,
        mesh: mesh.state.clone(),
        duplicate_node_ids,
        policy_digest,
        policies_differ,
        refused: refused
            .into_iter()
            .map(|r| RefusedOut {
                frontend_port: r.frontend,
                server: r.server.to_string(),
                name: r.name.to_string(),
                peer: r.peer.to_string(),
                reason: r.reason.into(),
                message: r.message,
            })
            .collect(),
        refused_total: counts.values().sum(),
        conflicts,
    }
}

pub(super) async fn status(State(st): State<Arc<ApiState>>, headers: HeaderMap) -> Response {
    if let Err(e) = authorize(&st, &headers) {
        return e.into_response();
    }
    Json(node_status(&st).await).into_response()
}

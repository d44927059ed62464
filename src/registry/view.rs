//! The registry as it is served at one instant: frontends, owners, live servers, digest.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::net::SocketAddr;

use serde::Serialize;
use sha2::{Digest as _, Sha256};

use super::types::{Origin, ServiceName};
use crate::clock::Stamp;

/// What every part downstream of the registry (render, API, status) reads.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RegistryView {
    /// Bumps on every accepted change; lets a client wait for its change.
    pub generation: u64,
    /// Bumps only on changes that alter what HAProxy should serve.
    pub config_generation: u64,
    pub frontends: BTreeMap<u16, FrontendView>,
    /// Live servers left out because another name owns their frontend.
    pub conflicts: Vec<ConflictView>,
    /// Live servers this peer does not serve because its own policy refuses
    /// them (a forwarding loop, an address or port it does not allow).
    pub refused: Vec<RefusedView>,
    /// The next instant (Unix ms) at which a lease ends and the view changes.
    pub next_expiry_ms: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FrontendView {
    pub port: u16,
    pub owner: ServiceName,
    pub servers: BTreeMap<SocketAddr, ServerView>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ServerView {
    pub send_proxy: bool,
    pub since_ms: u64,
    pub expires_ms: u64,
    /// The peer that accepted the write now deciding this server.
    pub origin: Origin,
    pub stamp: Stamp,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConflictView {
    pub frontend: u16,
    pub server: SocketAddr,
    pub name: ServiceName,
    pub owner: ServiceName,
}

/// An entry this peer holds but does not serve, with who sent it and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RefusedView {
    pub frontend: u16,
    pub server: SocketAddr,
    pub name: ServiceName,
    /// The peer that accepted it.
    pub peer: super::types::PeerId,
    /// A stable label: `forwarding_loop`, `address_local`, `port_not_allowed`, …
    pub reason: &'static str,
    pub message: String,
}

impl RegistryView {
    pub fn server_count(&self) -> usize {
        self.frontends.values().map(|f| f.servers.len()).sum()
    }

    /// A short hex digest of everything that is served: owners, servers, leases.
    /// Equal on every peer that computes the same view.
    pub fn digest(&self) -> String {
        let mut h = Sha256::new();
        for f in self.frontends.values() {
            f.add_to_digest(&mut h);
        }
        short_digest(h)
    }
}

impl FrontendView {
    /// Adds this frontend to a registry digest: hashing the frontends in
    /// port order gives [`RegistryView::digest`].
    pub fn add_to_digest(&self, h: &mut Sha256) {
        hash_frontend(h, self.port, &self.owner);
        for (addr, s) in &self.servers {
            hash_server(h, addr, s.send_proxy, s.expires_ms);
        }
    }
}

/// The registry digest's record of a frontend; shared with the streaming
/// summary so both give the same digest.
// Written into the hasher piece by piece (`io::Write`): the same bytes as
// formatting a string first, without an allocation per server.
pub(crate) fn hash_frontend(h: &mut Sha256, port: u16, owner: &ServiceName) {
    writeln!(h, "F{port} {owner}").expect("hashing cannot fail");
}

pub(crate) fn hash_server(h: &mut Sha256, addr: &SocketAddr, send_proxy: bool, expires_ms: u64) {
    writeln!(h, "S{addr} {send_proxy} {expires_ms}").expect("hashing cannot fail");
}

/// Digest and counts of the registry, computed without building a view.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Summary {
    pub digest: String,
    pub frontends: usize,
    pub servers: usize,
    pub conflicts: usize,
    /// Live entries this peer's own policy or bounds leave out.
    pub refused: usize,
}

/// The first 16 hex characters of a SHA-256: plenty to tell states apart by eye.
pub fn short_digest(h: Sha256) -> String {
    hex::encode(&h.finalize()[..8])
}

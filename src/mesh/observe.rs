//! The mesh task: publishes this peer's digests, VRRP state and sync state
//! into its key space, and computes the one [`MeshSnapshot`] that the API,
//! the health check and the status page read.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use chitchat::{ChitchatHandle, ChitchatId};
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

use super::addresses;
use super::duplicates::DuplicateWatch;
use super::quic::Identities;
use super::snapshot::{
    self, CatchUpRule, Incarnation, META_SYNC, MeshSnapshot, Observation, Observed, SyncState,
};
use super::trust::{self, Standing, standing};
use super::{META_API, META_DIGEST, META_VRRP};
use crate::haproxy::apply::ApplyStatus;
use crate::shared::SharedRegistry;
use crate::status::PeerStatus;

/// How often the snapshot is computed when nothing wakes the task sooner.
const TICK: Duration = Duration::from_millis(100);

/// A peer whose generation (its start, Unix ms) is this recent may be
/// catching up before it looks live.
const JUST_STARTED: u64 = 60_000;

/// A changed registry digest is recomputed at most this often unless someone
/// waits for it (a summary of a big registry is not free).
const DIGEST_EVERY: Duration = Duration::from_millis(250);

/// This peer's registry digest, and what it was computed from.
pub(super) struct OwnDigest {
    registry_generation: u64,
    config: Option<String>,
    registry_digest: String,
    at: Instant,
}

pub(super) struct Observe {
    pub handle: Arc<ChitchatHandle>,
    pub me: ChitchatId,
    pub api_url: String,
    pub identities: Option<Arc<Identities>>,
    pub registry: Arc<SharedRegistry>,
    pub apply: watch::Receiver<ApplyStatus>,
    pub vrrp: watch::Receiver<Option<String>>,
    /// How far this peer holds every other incarnation (from the sync task).
    pub holds: Arc<ArcSwap<BTreeMap<Incarnation, u64>>>,
    pub rule: CatchUpRule,
    pub snapshot: Arc<ArcSwap<MeshSnapshot>>,
    /// Counts published snapshots, for readers waiting for a fresh one.
    pub updates: watch::Sender<u64>,
    /// Whether this peer has caught up with the mesh, for those who wait for it.
    pub caught_up: watch::Sender<bool>,
    /// Asks for a snapshot at once (someone waits for a fresh one).
    pub poke: Arc<Notify>,
    /// Asks for a snapshot soon: what a peer holds or published changed.
    pub wake: Arc<Notify>,
    pub metrics: Option<Arc<crate::metrics::Metrics>>,
    pub digest: Option<OwnDigest>,
    /// The sync state last published.
    pub published: Option<SyncState>,
    /// Turns changes between snapshots into events.
    pub events: crate::events::diff::MeshWatch,
    pub guard: GuardInputs,
    /// Heartbeats of every incarnation, to see one node id beating twice.
    pub beats: DuplicateWatch,
    /// The duplicates last reported.
    pub duplicates: BTreeMap<String, Vec<ChitchatId>>,
    /// While not caught up: when gossip was last pushed to every seed and
    /// known peer, and how often it is (the gossip interval).
    pub catch_up_pushed: Option<Instant>,
    pub catch_up_push_every: Duration,
}

/// What this peer publishes so that no peer builds a forwarding loop to it,
/// and so that differing policies show.
pub(super) struct GuardInputs {
    /// The digest of this peer's registry policy (`meta/policy`).
    pub policy: String,
    pub own_ports: std::collections::BTreeSet<u16>,
    pub local_addrs: Option<addresses::ReadAddrs>,
    /// Addresses of the mesh whoever holds them (the configured VIP).
    pub floating_ips: std::collections::BTreeSet<std::net::IpAddr>,
    /// When `meta/addrs` was last published (interfaces change: every 2 s).
    pub published_at: Option<Instant>,
}

/// A display-safe copy of a value another peer published about itself.
fn meta(state: &chitchat::NodeState, key: &str) -> Option<String> {
    let v = state.get(key)?;
    let clean: String = v.chars().filter(|c| !c.is_control()).take(128).collect();
    Some(clean)
}

/// The row of another peer's incarnation; `identities` tell whether it is
/// connected now and whether its VRRP state came from itself.
fn row(
    id: &ChitchatId,
    state: &chitchat::NodeState,
    live: bool,
    identities: Option<&Identities>,
) -> PeerStatus {
    let digest = meta(state, META_DIGEST);
    let mut parts = digest.as_deref().unwrap_or("").split(' ');
    let registry_digest = parts.next().filter(|s| !s.is_empty()).map(str::to_owned);
    let config_digest = parts.next().filter(|s| *s != "-").map(str::to_owned);
    PeerStatus {
        node_id: id
            .node_id
            .chars()
            .filter(|c| !c.is_control())
            .take(63)
            .collect(),
        live,
        incarnation: id.generation_id,
        gossip_addr: id.gossip_advertise_addr.to_string(),
        api_addr: meta(state, META_API),
        registry_digest,
        config_digest,
        vrrp_state: meta(state, META_VRRP),
        policy_digest: meta(state, addresses::META_POLICY),
        duplicate: false,
        authenticated: trust::connected(identities, &id.node_id),
        vrrp_first_hand: identities.is_none_or(|i| {
            let held = state
                .get_versioned(META_VRRP)
                .map(|vv| (vv.version, (!vv.is_deleted()).then(|| vv.value.clone())));
            held.is_none() || i.vrrp_first_hand(id) == held
        }),
    }
}

impl Observe {
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let (poke, wake) = (self.poke.clone(), self.wake.clone());
        // A closed channel only means no more changes from there.
        let (mut apply_open, mut vrrp_open) = (true, true);
        loop {
            let poked = tokio::select! {
                // Fixed branch order: seeded simulations replay exactly.
                biased;
                () = poke.notified() => true,
                () = wake.notified() => false,
                _ = tick.tick() => false,
                r = self.apply.changed(), if apply_open => {
                    apply_open = r.is_ok();
                    false
                }
                r = self.vrrp.changed(), if vrrp_open => {
                    vrrp_open = r.is_ok();
                    false
                }
                () = crate::shutdown::signalled(&mut shutdown) => return,
            };
            self.step(poked).await;
        }
    }

    /// Recomputes this peer's registry digest if it may have changed.
    fn own_digest(&mut self, urgent: bool) -> &OwnDigest {
        let registry_generation = self.registry.with(|r| r.generation());
        let config = self.apply.borrow().config_digest.clone();
        let stale = match &self.digest {
            None => true,
            Some(d) => {
                let changed = d.registry_generation != registry_generation || d.config != config;
                let age = d.at.elapsed();
                // Leases end without a new generation: at least every second.
                (changed && (urgent || d.config != config || age >= DIGEST_EVERY))
                    || age >= Duration::from_secs(1)
            }
        };
        if stale {
            self.digest = Some(OwnDigest {
                registry_generation,
                config,
                registry_digest: self.registry.summary().digest,
                at: Instant::now(),
            });
        }
        self.digest.as_ref().expect("computed above")
    }

    /// Publishes this peer's state and computes the next snapshot.
    pub async fn step(&mut self, urgent: bool) {
        let d = self.own_digest(urgent);
        let own_digest = format!(
            "{} {}",
            d.registry_digest,
            d.config.as_deref().unwrap_or("-")
        );
        let (registry_generation, registry_digest, config_digest) = (
            d.registry_generation,
            d.registry_digest.clone(),
            d.config.clone(),
        );
        let vrrp_state = self.vrrp.borrow().clone();
        let me = PeerStatus {
            node_id: self.me.node_id.to_string(),
            live: true,
            incarnation: self.me.generation_id,
            gossip_addr: self.me.gossip_advertise_addr.to_string(),
            api_addr: Some(self.api_url.clone()),
            registry_digest: Some(registry_digest),
            config_digest,
            vrrp_state: vrrp_state.clone(),
            policy_digest: Some(self.guard.policy.clone()),
            duplicate: false,
            authenticated: true,
            vrrp_first_hand: true,
        };
        let addrs = match self.guard.local_addrs {
            _ if self
                .guard
                .published_at
                .is_some_and(|t| t.elapsed() < Duration::from_secs(2)) =>
            {
                None
            }
            read => {
                self.guard.published_at = Some(Instant::now());
                let own = read.map(|f| f()).unwrap_or_default();
                Some(addresses::encode(&own, &self.guard.own_ports))
            }
        };
        let prev = self.snapshot.load_full();
        let now_ms = self.registry.now_ms();
        let chitchat = self.handle.chitchat();
        let (snap, push_to) = {
            let mut cc = chitchat.lock().await;
            let live: HashSet<ChitchatId> = cc.live_nodes().cloned().collect();
            let scheduled: HashSet<Incarnation> = cc
                .scheduled_for_deletion_nodes()
                .map(|id| (id.node_id.to_string(), id.generation_id))
                .collect();
            // The newest verified incarnation of every other node id.
            let identities = self.identities.as_deref();
            let mut newest: BTreeMap<&str, (&ChitchatId, &chitchat::NodeState)> = BTreeMap::new();
            let mut unverified: Vec<String> = Vec::new();
            for (id, state) in cc.node_states() {
                if id.node_id == self.me.node_id {
                    continue;
                }
                match standing(identities, id) {
                    Standing::Verified(_) => {}
                    Standing::Unverified(_) => {
                        unverified.push(format!(
                            "{} {} {}",
                            id.node_id
                                .chars()
                                .filter(|c| !c.is_control())
                                .take(63)
                                .collect::<String>(),
                            id.gossip_advertise_addr,
                            id.generation_id
                        ));
                        continue;
                    }
                    Standing::Refused(_) => continue,
                }
                let slot = newest.entry(&id.node_id).or_insert((id, state));
                if id.generation_id > slot.0.generation_id {
                    *slot = (id, state);
                }
            }
            // Backends must not point at any trusted peer (this one included).
            let guard = addresses::guard(
                &self.guard.floating_ips,
                &self.guard.own_ports,
                cc.node_states()
                    .iter()
                    .filter(|(id, _)| matches!(standing(identities, id), Standing::Verified(_)))
                    .filter_map(|(_, st)| st.get(addresses::META_ADDRS)),
            );
            if self.registry.with(|r| r.set_loop_guard(guard)) {
                self.registry.notify();
            }
            // One node id beating in two places (this one's included).
            let now = Instant::now().into_std();
            for (id, state) in cc.node_states() {
                self.beats.observe(id, state.heartbeat().into(), now);
            }
            self.beats.retain(|id| cc.node_states().contains_key(id));
            let duplicates = self.beats.duplicates(now);
            let duplicate_rows: Vec<PeerStatus> = duplicates
                .values()
                .flatten()
                .filter_map(|id| {
                    let state = cc.node_states().get(id)?;
                    let mut r = row(id, state, live.contains(id), identities);
                    r.duplicate = true;
                    Some(r)
                })
                .collect();
            let mut catching_up: Vec<SocketAddr> = Vec::new();
            let others: Vec<Observed> = newest
                .into_values()
                .map(|(id, state)| {
                    let sync = state.get(META_SYNC).and_then(|v| SyncState::decode(v).ok());
                    let is_live = live.contains(id);
                    // A restarted peer looks live only after a few rounds, and
                    // needs the list at once. (A generation is its start in
                    // Unix ms: a dead peer that never caught up stays out.)
                    let just_started = id.generation_id + JUST_STARTED >= now_ms;
                    if (is_live || just_started) && !sync.as_ref().is_some_and(|s| s.caught_up) {
                        catching_up.push(id.gossip_advertise_addr);
                    }
                    Observed {
                        status: row(id, state, is_live, identities),
                        sync,
                    }
                })
                .collect();
            let holds: BTreeMap<Incarnation, u64> = self
                .holds
                .load()
                .iter()
                .filter(|(inc, _)| !scheduled.contains(*inc))
                .map(|(inc, v)| (inc.clone(), *v))
                .collect();
            let snap = snapshot::next(
                &prev,
                &Observation {
                    now_ms,
                    me,
                    others,
                    holds: holds.clone(),
                    verified: identities.map(Identities::verified_nodes),
                    registry_generation,
                },
                &self.rule,
            );
            let sync = SyncState {
                caught_up: snap.state.caught_up,
                holds,
            };
            // A list is only useful to a peer that is catching up, and only
            // once it names that peer: publish it then, not on every change.
            let republish = match &self.published {
                None => true,
                Some(p) => {
                    *p != sync
                        && (p.caught_up != sync.caught_up
                            || !p.holds.keys().eq(sync.holds.keys())
                            || !catching_up.is_empty())
                }
            };
            let state = cc.self_node_state();
            if republish {
                state.set(META_SYNC, sync.encode());
                self.published = Some(sync);
            } else {
                catching_up.clear();
            }
            state.set(META_DIGEST, &own_digest);
            state.set(addresses::META_POLICY, &self.guard.policy);
            if let Some(a) = addrs {
                state.set(addresses::META_ADDRS, a);
            }
            let vrrp_changed = prev
                .peers
                .iter()
                .find(|p| *p.node_id == *self.me.node_id)
                .is_none_or(|p| p.vrrp_state != vrrp_state);
            match vrrp_state {
                Some(v) => state.set(META_VRRP, v),
                None => {
                    if state.contains_key(META_VRRP) {
                        state.delete(META_VRRP);
                    }
                }
            }
            let mut snap = snap;
            unverified.sort();
            if let Some(m) = &self.metrics {
                m.unverified_peers.set(unverified.len() as i64);
                if let Some(i) = identities {
                    m.unverified_gossip_dropped.set(i.dropped() as i64);
                }
            }
            snap.state.unverified_peers = unverified;
            if !duplicates.is_empty() {
                // Each incarnation of a duplicated node id is a row of its own.
                snap.peers.retain(|p| !duplicates.contains_key(&p.node_id));
                snap.peers.extend(duplicate_rows);
                snap.peers.sort_by(|a, b| a.node_id.cmp(&b.node_id));
            }
            self.report_duplicates(&duplicates);
            // A new VRRP state goes to every live peer at once: split
            // brains are judged on it.
            if vrrp_changed {
                catching_up = live
                    .iter()
                    .filter(|id| **id != self.me)
                    .map(|id| id.gossip_advertise_addr)
                    .collect();
            }
            // While not caught up, every seed and every peer it knows of
            // hears from it each gossip interval, rather than chitchat's one
            // random seed a round: a restarted peer's first contact does not
            // wait for the right draw, and its links (a handshake each, on
            // QUIC) open in parallel.
            if !snap.state.caught_up
                && self
                    .catch_up_pushed
                    .is_none_or(|t| t.elapsed() >= self.catch_up_push_every)
            {
                self.catch_up_pushed = Some(Instant::now());
                let mine = self.me.gossip_advertise_addr;
                let mut everyone: Vec<SocketAddr> = cc.seed_nodes().into_iter().collect();
                everyone.extend(cc.node_states().keys().map(|id| id.gossip_advertise_addr));
                everyone.retain(|a| *a != mine && !catching_up.contains(a));
                everyone.sort();
                everyone.dedup();
                catching_up.extend(everyone);
            }
            (snap, catching_up)
        };
        // Gossip now rather than at the next round: to a peer catching up (the
        // new list), to every live peer (a new VRRP state), or from this peer
        // while it catches up.
        for addr in push_to {
            let _ = self.handle.gossip(addr);
        }
        self.report(&prev, &snap);
        self.events
            .update(self.registry.events(), &self.me.node_id, &snap.peers);
        let caught_up = snap.state.caught_up;
        self.snapshot.store(Arc::new(snap));
        self.updates.send_modify(|n| *n += 1);
        self.caught_up
            .send_if_modified(|c| std::mem::replace(c, caught_up) != caught_up);
    }

    /// Logs each new duplicate node id once, and sets its metric.
    fn report_duplicates(&mut self, duplicates: &BTreeMap<String, Vec<ChitchatId>>) {
        if *duplicates == self.duplicates {
            return;
        }
        for (node, ids) in duplicates {
            if self.duplicates.contains_key(node) {
                continue;
            }
            let addrs: Vec<String> = ids
                .iter()
                .map(|i| i.gossip_advertise_addr.to_string())
                .collect();
            tracing::error!(
                node = %node,
                addresses = ?addrs,
                "two live peers claim one node id (a stolen certificate or a cloned VM?); revoke the certificate that is not yours with `lbmesh ca revoke`"
            );
        }
        if let Some(m) = &self.metrics {
            m.duplicate_node_ids.set(duplicates.len() as i64);
        }
        self.duplicates = duplicates.clone();
    }

    /// Logs catching up, and sets the metrics.
    fn report(&self, prev: &MeshSnapshot, snap: &MeshSnapshot) {
        let (was, is) = (&prev.state, &snap.state);
        if let Some(m) = &self.metrics {
            m.observe_mesh(snap);
        }
        if is.caught_up && !was.caught_up {
            tracing::info!(
                how = ?is.caught_up_by,
                after_ms = is.caught_up_at_ms.unwrap_or(0).saturating_sub(is.started_ms),
                "caught up with the mesh"
            );
        }
    }
}

//! Server slots: which backend slot each server sits in, and how a layout
//! follows the registry so that most changes need no reload.
//!
//! HAProxy 2.6 cannot add a server to a running backend, so every backend is
//! rendered with spare `server` lines ("slots") that the Runtime API fills
//! and empties. A slot's PROXY-protocol flag is fixed when it is rendered,
//! so it is part of the slot. A layout is a pure value: the planner evolves
//! the one HAProxy runs into the next one, keeping every server that stays
//! in its slot.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;

use sha2::{Digest as _, Sha256};

use crate::registry::ServiceName;
use crate::registry::view::short_digest;

/// A server as a backend serves it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct SlotServer {
    pub addr: SocketAddr,
    pub send_proxy: bool,
}

/// One `server` line of a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot {
    /// Whether the line was rendered with `send-proxy`; only a reload changes it.
    pub send_proxy: bool,
    /// The server in the slot; `None` is an empty slot, in maintenance.
    pub server: Option<SocketAddr>,
}

impl Slot {
    fn holds(&self, s: &SlotServer) -> bool {
        self.server == Some(s.addr) && self.send_proxy == s.send_proxy
    }
}

/// The slots of one frontend's backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backend {
    /// The service name that owns the frontend (a comment in the config).
    pub owner: ServiceName,
    pub slots: Vec<Slot>,
}

/// Backends by frontend port: everything HAProxy serves.
pub type Layout = BTreeMap<u16, Backend>;

/// How many slots a backend gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotPolicy {
    /// No backend has fewer slots than this.
    pub min_slots: usize,
}

impl SlotPolicy {
    /// Spare slots a backend of `servers` servers is given: half again, at least 4.
    pub fn spare(&self, servers: usize) -> usize {
        servers.div_ceil(2).max(4)
    }

    /// Slots of a backend laid out for `servers` servers.
    pub fn capacity(&self, servers: usize) -> usize {
        (servers + self.spare(servers)).max(self.min_slots).max(1)
    }

    /// Whether a backend should get more slots now, while it still has some
    /// free: growing takes a reload, which may have to wait for its turn.
    pub fn wants_growth(&self, capacity: usize, servers: usize) -> bool {
        capacity.saturating_sub(servers) < self.spare(servers).div_ceil(2)
            && capacity < self.capacity(servers)
    }

    /// Whether a backend has so many empty slots that a reload should shrink it.
    pub fn wants_shrink(&self, capacity: usize, servers: usize) -> bool {
        capacity > 4 * self.capacity(servers)
    }
}

/// The result of fitting a pool into a backend's existing slots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fit {
    /// The backend with every server that fits placed, the others left out.
    pub backend: Backend,
    /// Servers that found no free slot with their PROXY-protocol flag.
    pub overflow: usize,
}

impl Backend {
    /// A backend laid out afresh: servers in address order, then spare slots.
    pub fn fresh(owner: ServiceName, servers: &[SlotServer], policy: &SlotPolicy) -> Backend {
        let mut b = Backend {
            owner,
            slots: Vec::new(),
        };
        b.place_all(servers, policy.capacity(servers.len()));
        b
    }

    pub fn servers(&self) -> impl Iterator<Item = SlotServer> + '_ {
        self.slots.iter().filter_map(|s| {
            s.server.map(|addr| SlotServer {
                addr,
                send_proxy: s.send_proxy,
            })
        })
    }

    pub fn server_count(&self) -> usize {
        self.slots.iter().filter(|s| s.server.is_some()).count()
    }

    /// Places `want` into the slots that exist (what the Runtime API can do):
    /// servers that stay keep their slot, new ones take the first free slot
    /// with their PROXY-protocol flag.
    pub fn fit(&self, owner: &ServiceName, want: &[SlotServer]) -> Fit {
        let mut slots = self.slots.clone();
        let mut placed = vec![false; want.len()];
        for slot in &mut slots {
            let keep = slot.server.and_then(|addr| {
                want.binary_search_by(|s| s.addr.cmp(&addr))
                    .ok()
                    .filter(|&i| slot.holds(&want[i]))
            });
            match keep {
                Some(i) => placed[i] = true,
                None => slot.server = None,
            }
        }
        let mut overflow = 0;
        let mut next_free = [0usize, 0usize];
        for (s, _) in want.iter().zip(&placed).filter(|(_, p)| !**p) {
            let cursor = &mut next_free[s.send_proxy as usize];
            match (*cursor..slots.len())
                .find(|&i| slots[i].server.is_none() && slots[i].send_proxy == s.send_proxy)
            {
                Some(i) => {
                    slots[i].server = Some(s.addr);
                    *cursor = i + 1;
                }
                None => {
                    *cursor = slots.len();
                    overflow += 1;
                }
            }
        }
        Fit {
            backend: Backend {
                owner: owner.clone(),
                slots,
            },
            overflow,
        }
    }

    /// The backend a reload should render for `want`: servers that stay keep
    /// their slot; the backend grows ahead of need, or shrinks when it is
    /// mostly empty; empty slots take the PROXY-protocol flag of the pool.
    pub fn reshape(
        &self,
        owner: &ServiceName,
        want: &[SlotServer],
        policy: &SlotPolicy,
    ) -> Backend {
        let capacity = self.slots.len();
        if policy.wants_shrink(capacity, want.len()) {
            return Backend::fresh(owner.clone(), want, policy);
        }
        let capacity = if policy.wants_growth(capacity, want.len()) || capacity < want.len() {
            policy.capacity(want.len())
        } else {
            capacity
        };
        // Keep servers in place; empty slots can take any flag at a reload.
        let default_proxy = want.iter().any(|s| s.send_proxy);
        let mut placed = vec![false; want.len()];
        let mut slots: Vec<Slot> = (0..capacity)
            .map(|i| {
                let kept = self
                    .slots
                    .get(i)
                    .and_then(|s| s.server)
                    .and_then(|addr| want.binary_search_by(|s| s.addr.cmp(&addr)).ok());
                match kept {
                    Some(j) => {
                        placed[j] = true;
                        Slot {
                            send_proxy: want[j].send_proxy,
                            server: Some(want[j].addr),
                        }
                    }
                    None => Slot {
                        send_proxy: default_proxy,
                        server: None,
                    },
                }
            })
            .collect();
        let mut free = 0;
        for (s, _) in want.iter().zip(&placed).filter(|(_, p)| !**p) {
            while slots[free].server.is_some() {
                free += 1;
            }
            slots[free] = Slot {
                send_proxy: s.send_proxy,
                server: Some(s.addr),
            };
        }
        Backend {
            owner: owner.clone(),
            slots,
        }
    }

    fn place_all(&mut self, servers: &[SlotServer], capacity: usize) {
        let default_proxy = servers.iter().any(|s| s.send_proxy);
        self.slots = servers
            .iter()
            .map(|s| Slot {
                send_proxy: s.send_proxy,
                server: Some(s.addr),
            })
            .chain(std::iter::repeat(Slot {
                send_proxy: default_proxy,
                server: None,
            }))
            .take(capacity.max(servers.len()))
            .collect();
    }

    /// Whether `other` differs from `self` only in what the Runtime API can
    /// change (which server sits in which slot).
    pub fn same_shape(&self, other: &Backend) -> bool {
        self.slots.len() == other.slots.len()
            && self
                .slots
                .iter()
                .zip(&other.slots)
                .all(|(a, b)| a.send_proxy == b.send_proxy)
    }
}

/// Whether going from `a` to `b` needs only Runtime API commands.
pub fn same_shape(a: &Layout, b: &Layout) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|((p, x), (q, y))| p == q && x.same_shape(y))
}

pub fn server_count(layout: &Layout) -> usize {
    layout.values().map(Backend::server_count).sum()
}

/// The digest of one frontend's pool: its port and servers. Computed once
/// per change of the pool, and combined by [`combine`].
pub type FrontendDigest = [u8; 32];

/// The digest of frontend `port` serving `servers` (sorted); `None` for an
/// empty pool, which serves nothing.
pub fn frontend_digest(port: u16, servers: &[SlotServer]) -> Option<FrontendDigest> {
    if servers.is_empty() {
        return None;
    }
    let mut h = Sha256::new();
    let mut line = String::with_capacity(64);
    // Writing to a String cannot fail.
    let _ = writeln!(line, "F{port}");
    h.update(line.as_bytes());
    for s in servers {
        line.clear();
        let _ = writeln!(line, "S{} {}", s.addr, s.send_proxy);
        h.update(line.as_bytes());
    }
    Some(h.finalize().into())
}

/// [`frontend_digest`] of what `backend` serves.
pub fn backend_digest(port: u16, backend: &Backend) -> Option<FrontendDigest> {
    let mut servers: Vec<SlotServer> = backend.servers().collect();
    servers.sort_unstable();
    frontend_digest(port, &servers)
}

/// The digest of what is served, from each serving frontend's digest in
/// port order.
pub fn combine<'a>(frontends: impl IntoIterator<Item = (u16, &'a FrontendDigest)>) -> String {
    let mut h = Sha256::new();
    for (port, d) in frontends {
        h.update(port.to_be_bytes());
        h.update(d);
    }
    short_digest(h)
}

/// The digest of what a layout serves: each frontend that has servers, and
/// its servers, in order. Slot positions and empty frontends do not count,
/// so two peers serving the same registry agree whatever their history.
pub fn digest(layout: &Layout) -> String {
    let digests: Vec<(u16, FrontendDigest)> = layout
        .iter()
        .filter_map(|(port, b)| Some((*port, backend_digest(*port, b)?)))
        .collect();
    combine(digests.iter().map(|(p, d)| (*p, d)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner() -> ServiceName {
        "svc".parse().unwrap()
    }

    fn servers(ids: &[u8], proxy: bool) -> Vec<SlotServer> {
        let mut v: Vec<SlotServer> = ids
            .iter()
            .map(|i| SlotServer {
                addr: format!("198.18.0.{i}:30000").parse().unwrap(),
                send_proxy: proxy,
            })
            .collect();
        v.sort();
        v
    }

    fn addrs(b: &Backend) -> Vec<Option<u8>> {
        b.slots
            .iter()
            .map(|s| {
                s.server.map(|a| match a.ip() {
                    std::net::IpAddr::V4(v4) => v4.octets()[3],
                    std::net::IpAddr::V6(_) => 0,
                })
            })
            .collect()
    }

    #[test]
    fn capacity_leaves_half_again_and_at_least_four_spare() {
        let p = SlotPolicy { min_slots: 4 };
        for (servers, capacity) in [(0, 4), (1, 5), (4, 8), (8, 12), (20, 30), (100, 150)] {
            assert_eq!(p.capacity(servers), capacity, "{servers} servers");
            assert!(
                !p.wants_growth(capacity, servers),
                "fresh never wants growth"
            );
        }
        assert_eq!(SlotPolicy { min_slots: 16 }.capacity(2), 16);
        // 20 servers in 30 slots: growth is due once fewer than half the
        // spare a fresh layout would leave are free.
        assert!(!p.wants_growth(30, 24));
        assert!(p.wants_growth(30, 25));
        assert!(p.wants_shrink(200, 20));
        assert!(!p.wants_shrink(30, 5));
    }

    #[test]
    fn fit_keeps_servers_in_place_and_fills_free_slots() {
        let p = SlotPolicy { min_slots: 4 };
        let b = Backend::fresh(owner(), &servers(&[1, 2, 3], false), &p);
        assert_eq!(
            addrs(&b),
            vec![Some(1), Some(2), Some(3), None, None, None, None]
        );
        // 2 leaves, 9 and 7 arrive: 1 and 3 stay where they are.
        let f = b.fit(&owner(), &servers(&[1, 3, 7, 9], false));
        assert_eq!(f.overflow, 0);
        assert_eq!(
            addrs(&f.backend),
            vec![Some(1), Some(7), Some(3), Some(9), None, None, None]
        );
        assert!(b.same_shape(&f.backend));
        // More servers than slots: the rest overflow.
        let f = b.fit(&owner(), &servers(&[1, 2, 3, 4, 5, 6, 7, 8, 9], false));
        assert_eq!(f.overflow, 2);
        assert_eq!(f.backend.server_count(), 7);
    }

    #[test]
    fn a_server_needs_a_slot_with_its_proxy_flag() {
        let p = SlotPolicy { min_slots: 4 };
        let b = Backend::fresh(owner(), &servers(&[1], false), &p);
        let f = b.fit(&owner(), &servers(&[1], true));
        assert_eq!(f.overflow, 1, "no slot was rendered with send-proxy");
        assert_eq!(f.backend.server_count(), 0);
        let r = b.reshape(&owner(), &servers(&[1], true), &p);
        assert_eq!(r.slots.len(), b.slots.len());
        assert!(r.slots.iter().all(|s| s.send_proxy));
        assert_eq!(addrs(&r)[0], Some(1));
    }

    #[test]
    fn reshape_grows_ahead_of_need_and_shrinks_when_mostly_empty() {
        let p = SlotPolicy { min_slots: 4 };
        let b = Backend::fresh(owner(), &servers(&[1, 2, 3, 4], false), &p);
        assert_eq!(b.slots.len(), 8);
        let want = servers(&[1, 2, 3, 4, 5, 6, 7], false);
        assert!(p.wants_growth(8, 7));
        let r = b.reshape(&owner(), &want, &p);
        assert_eq!(r.slots.len(), p.capacity(7));
        assert_eq!(&addrs(&r)[..4], &[Some(1), Some(2), Some(3), Some(4)]);
        assert_eq!(r.server_count(), 7);
        // Only one server left of 150 slots' worth: a reload compacts it.
        let big = Backend::fresh(owner(), &servers(&(1..=100).collect::<Vec<_>>(), false), &p);
        let r = big.reshape(&owner(), &servers(&[50], false), &p);
        assert_eq!(r.slots.len(), p.capacity(1));
        assert_eq!(addrs(&r)[0], Some(50));
        // Neither: the shape stays.
        let r = b.reshape(&owner(), &servers(&[2, 9], false), &p);
        assert!(b.same_shape(&r));
        assert_eq!(addrs(&r)[1], Some(2));
    }

    #[test]
    fn the_digest_is_what_is_served_not_where() {
        let p = SlotPolicy { min_slots: 4 };
        let a: Layout = [(443, Backend::fresh(owner(), &servers(&[1, 2], false), &p))].into();
        let moved = a[&443].fit(&owner(), &servers(&[1, 2], false)).backend;
        let mut b = a.clone();
        b.get_mut(&443).unwrap().slots.reverse();
        assert_eq!(digest(&a), digest(&b));
        assert_eq!(digest(&a), digest(&[(443, moved)].into()));
        // A frontend without servers serves nothing.
        let mut c = a.clone();
        c.insert(80, Backend::fresh(owner(), &[], &p));
        assert_eq!(digest(&a), digest(&c));
        let d: Layout = [(443, Backend::fresh(owner(), &servers(&[1], false), &p))].into();
        assert_ne!(digest(&a), digest(&d));
    }
}

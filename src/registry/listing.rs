//! Reading the served registry one frontend at a time: a frontend on its
//! own, or the listing of every frontend in short runs, so that no reader
//! holds the registry for a walk of all of it.

use std::net::SocketAddr;

use super::entry::{Entry, Op};
use super::types::{Key, Origin};
use super::view::{ConflictView, FrontendView};
use super::{Registry, bounds, server_view};

/// Keys a listing reads per run, i.e. per hold of the registry lock: about
/// 35 microseconds of work (`cargo bench --bench listing`).
pub const LISTING_RUN_KEYS: usize = 256;

/// A run of served frontends, in port order, as [`Registry::view`] shows
/// them, with their conflicts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FrontendRun {
    /// The registry's generation when the run was read.
    pub generation: u64,
    pub frontends: Vec<FrontendView>,
    /// Live servers of these frontends left out because another name owns
    /// their frontend, in (frontend, server) order.
    pub conflicts: Vec<ConflictView>,
    /// The port the next run starts from; `None` once every frontend is read.
    pub next: Option<u16>,
}

impl Registry {
    /// The frontend on `port` as [`Registry::view`] serves it at `now_ms`,
    /// reading only that frontend's keys while the size bounds hold for
    /// every add (then they leave nothing out, and the view of one frontend
    /// depends on the others only through which ports are live).
    pub fn frontend_view(&self, port: u16, now_ms: u64) -> Option<FrontendView> {
        if !self.bounds_fit() {
            return self.view(now_ms).frontends.remove(&port);
        }
        self.frontend_parts(port, now_ms, &mut Vec::new())
    }

    /// The served frontends from port `from` on at `now_ms`, stopping once
    /// about `max_keys` keys have been read (a frontend is never split). Each run is read from one state of the
    /// registry; a listing made of several runs shows each frontend as it
    /// was when its run was read. When the size bounds leave something out,
    /// which frontends are served depends on all of them: the run is then
    /// the rest of the whole view.
    pub fn frontends_from(&self, from: u16, max_keys: usize, now_ms: u64) -> FrontendRun {
        let mut run = FrontendRun {
            generation: self.generation,
            ..FrontendRun::default()
        };
        if !self.bounds_fit() {
            let v = self.view(now_ms);
            run.frontends = v
                .frontends
                .into_values()
                .filter(|f| f.port >= from)
                .collect();
            run.conflicts = v
                .conflicts
                .into_iter()
                .filter(|c| c.frontend >= from)
                .collect();
            return run;
        }
        let mut keys = 0;
        for (&port, &adds) in self.adds_per_frontend.range(from..) {
            if keys >= max_keys.max(1) {
                run.next = Some(port);
                break;
            }
            // Tombstones are read too, but adds are what a frontend costs.
            keys += adds;
            run.frontends
                .extend(self.frontend_parts(port, now_ms, &mut run.conflicts));
        }
        run
    }

    /// Whether the size bounds hold for every add: then they leave nothing
    /// out, and one frontend can be read on its own.
    fn bounds_fit(&self) -> bool {
        bounds::fits(&self.limits, self.adds_per_frontend.values().copied())
    }

    /// The frontend on `port` read from its own keys (valid while the size
    /// bounds hold); its conflicts are appended to `conflicts`.
    fn frontend_parts(
        &self,
        port: u16,
        now_ms: u64,
        conflicts: &mut Vec<ConflictView>,
    ) -> Option<FrontendView> {
        let lo = Key {
            frontend: port,
            server: SocketAddr::from(([0, 0, 0, 0], 0)),
        };
        let live: Vec<(&Key, &Origin, &Entry)> = self
            .keys
            .range(lo..)
            .take_while(|(k, _)| k.frontend == port)
            .filter_map(|(k, ke)| {
                let p = ke.winner.as_ref()?;
                let e = &ke.by_peer[p];
                e.live_until(now_ms)?;
                Some((k, p, e))
            })
            .filter(|(k, _, _)| self.admit(k, |p| self.is_live_frontend(p, now_ms)).is_ok())
            .collect();
        let owner = live
            .iter()
            .filter_map(|(_, _, e)| match &e.op {
                Op::Add { name, since_ms, .. } => Some((*since_ms, name)),
                Op::Delete { .. } => None,
            })
            .min()?
            .1
            .clone();
        let mut servers = std::collections::BTreeMap::new();
        for (k, p, e) in live {
            if *e.name() != owner {
                conflicts.push(ConflictView {
                    frontend: port,
                    server: k.server,
                    name: e.name().clone(),
                    owner: owner.clone(),
                });
            } else if let Some(s) = server_view(p, e) {
                servers.insert(k.server, s);
            }
        }
        Some(FrontendView {
            port,
            owner,
            servers,
        })
    }
}

//! Reading the served registry one frontend at a time: a frontend on its
//! own, or the listing of every frontend in short runs, so that no reader
//! holds the registry for a walk of all of it.

use std::net::SocketAddr;

use super::entry::{Entry, Op};
use super::types::{Key, Origin};
use super::view::{ConflictView, FrontendView, RefusedView, RegistryView};
use super::{Registry, bounds, server_view};

/// Keys a listing reads per run, i.e. per hold of the registry lock: about
/// 35 microseconds of work (`cargo bench --bench listing`).
pub const LISTING_RUN_KEYS: usize = 256;

/// A run of served frontends, in port order, as [`Registry::view`] shows
/// them, with their conflicts, the servers this peer refuses, and the first
/// lease end among them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FrontendRun {
    /// The registry's generation when the run was read.
    pub generation: u64,
    /// Its config generation then.
    pub config_generation: u64,
    pub frontends: Vec<FrontendView>,
    /// Live servers of these frontends left out because another name owns
    /// their frontend, in (frontend, server) order.
    pub conflicts: Vec<ConflictView>,
    /// Live servers of these frontends this peer's policy refuses, in
    /// (frontend, server) order.
    pub refused: Vec<RefusedView>,
    /// The first lease end (Unix ms) among the live servers of these
    /// frontends, served or not.
    pub next_expiry_ms: Option<u64>,
    /// The port the next run starts from; `None` once every frontend is read.
    pub next: Option<u16>,
}

fn earliest(a: Option<u64>, b: Option<u64>) -> Option<u64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
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
        let mut run = FrontendRun::default();
        self.read_frontend(port, now_ms, &mut run);
        run.frontends.pop()
    }

    /// The served frontends from port `from` on at `now_ms`, stopping once
    /// about `max_keys` keys have been read (a frontend is never split).
    /// Each run is read from one state of the registry; a listing made of
    /// several runs shows each frontend as it was when its run was read.
    /// When the size bounds leave something out, which frontends are served
    /// depends on all of them: the run is then the rest of the whole view.
    pub fn frontends_from(&self, from: u16, max_keys: usize, now_ms: u64) -> FrontendRun {
        let mut run = FrontendRun {
            generation: self.generation,
            config_generation: self.config_generation,
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
            run.refused = v
                .refused
                .into_iter()
                .filter(|r| r.frontend >= from)
                .collect();
            run.next_expiry_ms = v.next_expiry_ms;
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
            self.read_frontend(port, now_ms, &mut run);
        }
        run
    }

    /// Whether the size bounds hold for every add: then they leave nothing
    /// out, and one frontend can be read on its own.
    fn bounds_fit(&self) -> bool {
        bounds::fits(&self.limits, self.adds_per_frontend.values().copied())
    }

    /// Adds the frontend on `port`, read from its own keys (valid while the
    /// size bounds hold), to `run`: the frontend if served, its conflicts,
    /// refusals and first lease end.
    fn read_frontend(&self, port: u16, now_ms: u64, run: &mut FrontendRun) {
        let lo = Key {
            frontend: port,
            server: SocketAddr::from(([0, 0, 0, 0], 0)),
        };
        let mut live: Vec<(&Key, &Origin, &Entry)> = Vec::new();
        for (k, ke) in self
            .keys
            .range(lo..)
            .take_while(|(k, _)| k.frontend == port)
        {
            let Some(p) = ke.winner.as_ref() else {
                continue;
            };
            let e = &ke.by_peer[p];
            let Some(end) = e.live_until(now_ms) else {
                continue;
            };
            run.next_expiry_ms = earliest(run.next_expiry_ms, Some(end));
            match self.admit(k, |p| self.is_live_frontend(p, now_ms)) {
                Ok(()) => live.push((k, p, e)),
                Err(why) => run.refused.push(why.view(k, e.name(), &p.node)),
            }
        }
        let Some(owner) = live
            .iter()
            .filter_map(|(_, _, e)| match &e.op {
                Op::Add { name, since_ms, .. } => Some((*since_ms, name)),
                Op::Delete { .. } => None,
            })
            .min()
            .map(|(_, name)| name.clone())
        else {
            return;
        };
        let mut servers = std::collections::BTreeMap::new();
        for (k, p, e) in live {
            if *e.name() != owner {
                run.conflicts.push(ConflictView {
                    frontend: port,
                    server: k.server,
                    name: e.name().clone(),
                    owner: owner.clone(),
                });
            } else if let Some(s) = server_view(p, e) {
                servers.insert(k.server, s);
            }
        }
        run.frontends.push(FrontendView {
            port,
            owner,
            servers,
        });
    }
}

impl RegistryView {
    /// The registry as served, read run after run from `read` (given the
    /// port to start from; see [`Registry::frontends_from`]), each run under
    /// its own hold of the registry: the same as [`Registry::view`] when
    /// nothing changed in between. Otherwise each frontend is as it was when
    /// its run was read, and the generations are those of the first run, so
    /// whoever compares them with the registry's sees that it must read again.
    pub fn from_runs(mut read: impl FnMut(u16) -> FrontendRun) -> RegistryView {
        let first = read(0);
        let mut view = RegistryView {
            generation: first.generation,
            config_generation: first.config_generation,
            ..RegistryView::default()
        };
        // Run by run into the view, so that nothing but the view and one
        // run is ever held.
        let mut run = Some(first);
        while let Some(r) = run.take() {
            view.frontends
                .extend(r.frontends.into_iter().map(|f| (f.port, f)));
            view.conflicts.extend(r.conflicts);
            view.refused.extend(r.refused);
            view.next_expiry_ms = earliest(view.next_expiry_ms, r.next_expiry_ms);
            run = r.next.map(&mut read);
        }
        view
    }
}

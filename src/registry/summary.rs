//! The digest and counts of the served registry ([`Summary`]) without
//! building a view, computed in one pass or in runs of a few frontends each
//! read under its own hold of the registry (see
//! [`SharedRegistry::summary`](crate::shared::SharedRegistry::summary)), and
//! kept until the registry changes or a lease ends.

use std::net::SocketAddr;

use sha2::{Digest as _, Sha256};

use super::entry::{Entry, Op};
use super::types::{Key, ServiceName};
use super::view::{self, Summary};
use super::{Registry, bounds};

/// A [`Summary`] computed at `from_ms` from state `state`. Until the state
/// changes, it holds for every instant before the first lease then live
/// ends, `until_ms` (status and gossip ask for it often; with 100,000
/// servers one costs tens of milliseconds).
#[derive(Debug, Clone)]
pub(super) struct SummaryMemo {
    state: u64,
    from_ms: u64,
    until_ms: Option<u64>,
    summary: Summary,
}

impl SummaryMemo {
    fn holds(&self, state: u64, now_ms: u64) -> bool {
        self.state == state && self.from_ms <= now_ms && self.until_ms.is_none_or(|t| now_ms < t)
    }
}

/// A summary being computed, frontend after frontend, at one instant.
pub struct SummaryRuns {
    now_ms: u64,
    /// The registry's state when the first run was read.
    state: u64,
    hash: Sha256,
    sum: Summary,
    /// Servers served per frontend, to see whether a bound leaves some out.
    per_frontend: Vec<usize>,
    /// The first lease end after `now_ms` among live entries.
    until_ms: Option<u64>,
    /// The port the next run starts from; `None` once every key is read.
    pub next: Option<u16>,
}

impl Registry {
    /// The digest and counts of [`Registry::view`] at `now_ms`, without
    /// building it: status and gossip ask often, and a view of 10,000
    /// servers is a megabyte of short-lived allocations.
    pub fn summary(&self, now_ms: u64) -> Summary {
        if let Some(s) = self.memoized_summary(now_ms) {
            return s;
        }
        let mut runs = self.start_summary(now_ms);
        self.summarize(&mut runs, usize::MAX);
        self.finish_summary(runs)
    }

    /// The summary kept from an earlier call, if it still holds at `now_ms`.
    pub fn memoized_summary(&self, now_ms: u64) -> Option<Summary> {
        let memo = self.summary.lock().unwrap_or_else(|p| p.into_inner());
        memo.as_ref()
            .filter(|m| m.holds(self.state, now_ms))
            .map(|m| m.summary.clone())
    }

    /// A summary at `now_ms` to be computed by [`Registry::summarize`].
    pub fn start_summary(&self, now_ms: u64) -> SummaryRuns {
        SummaryRuns {
            now_ms,
            state: self.state,
            hash: Sha256::new(),
            sum: Summary::default(),
            per_frontend: Vec::new(),
            until_ms: None,
            next: Some(0),
        }
    }

    /// Reads the next run of `runs`: whole frontends from `runs.next` on,
    /// stopping once about `max_keys` keys have been read.
    pub fn summarize(&self, runs: &mut SummaryRuns, max_keys: usize) {
        let Some(from) = runs.next.take() else {
            return;
        };
        let now_ms = runs.now_ms;
        let lo = Key {
            frontend: from,
            server: SocketAddr::from(([0, 0, 0, 0], 0)),
        };
        let mut live: Vec<(&SocketAddr, &ServiceName, bool, u64, u64)> = Vec::new();
        let mut read = 0;
        let mut iter = self.keys.range(lo..).peekable();
        while let Some((first, _)) = iter.peek() {
            let frontend = first.frontend;
            if read >= max_keys.max(1) {
                runs.next = Some(frontend);
                return;
            }
            live.clear();
            while let Some((k, ke)) = iter.next_if(|(k, _)| k.frontend == frontend) {
                read += 1;
                let Some(Entry {
                    op:
                        Op::Add {
                            name,
                            send_proxy,
                            since_ms,
                            expires_ms,
                        },
                    ..
                }) = ke.winner()
                else {
                    continue;
                };
                if *expires_ms <= now_ms {
                    continue;
                }
                runs.until_ms = Some(runs.until_ms.map_or(*expires_ms, |u| u.min(*expires_ms)));
                if self
                    .admit(k, |port| self.is_live_frontend(port, now_ms))
                    .is_ok()
                {
                    live.push((&k.server, name, *send_proxy, *since_ms, *expires_ms));
                } else {
                    runs.sum.refused += 1;
                }
            }
            let Some(owner) = live
                .iter()
                .map(|(_, name, _, since, _)| (*since, *name))
                .min()
                .map(|(_, name)| name)
            else {
                continue;
            };
            let sum = &mut runs.sum;
            sum.frontends += 1;
            view::hash_frontend(&mut runs.hash, frontend, owner);
            let servers_before = sum.servers;
            for (addr, name, proxy, _, expires) in &live {
                if *name == owner {
                    sum.servers += 1;
                    view::hash_server(&mut runs.hash, addr, *proxy, *expires);
                } else {
                    sum.conflicts += 1;
                }
            }
            runs.per_frontend.push(sum.servers - servers_before);
        }
    }

    /// The summary `runs` computed (every run read), kept for later calls
    /// when the registry did not change since its first run.
    pub fn finish_summary(&self, runs: SummaryRuns) -> Summary {
        let SummaryRuns {
            now_ms,
            state,
            hash,
            mut sum,
            per_frontend,
            until_ms,
            next,
        } = runs;
        debug_assert!(next.is_none(), "every run is read");
        if !bounds::fits(&self.limits, per_frontend) {
            // Some are left out (rare: entries gossiped beyond this peer's
            // bounds); the view knows which.
            let v = self.view(now_ms);
            sum = Summary {
                digest: v.digest(),
                frontends: v.frontends.len(),
                servers: v.server_count(),
                conflicts: v.conflicts.len(),
                refused: v.refused.len(),
            };
        } else {
            sum.digest = view::short_digest(hash);
        }
        if state == self.state {
            let mut memo = self.summary.lock().unwrap_or_else(|p| p.into_inner());
            *memo = Some(SummaryMemo {
                state,
                from_ms: now_ms,
                until_ms,
                summary: sum.clone(),
            });
        }
        sum
    }
}

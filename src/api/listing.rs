//! `GET /v1/frontends`: every served frontend, read from the registry in
//! short runs and written to the client as it goes, so that a listing of
//! 100,000 servers neither holds the registry (and every write behind it)
//! for a walk of all of it nor builds the whole answer in memory.
//!
//! The answer is `{"changes":…,"frontends":[…],"conflicts":[…],"digest":…}`:
//! `changes` is the registry's generation when the listing began, each
//! frontend is as it was when its run was read (all at the instant the
//! listing began), and `digest` — written last — is the registry digest of
//! exactly the frontends listed.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use futures_util::{StreamExt as _, stream};
use sha2::Sha256;

use super::ApiState;
use super::v1_read::frontend_out;
use crate::haproxy::stats::ServerHealth;
use crate::registry::view::{ConflictView, short_digest};
use crate::registry::{FrontendRun, LISTING_RUN_KEYS};

/// Bytes gathered (over several runs) before a piece of the answer is
/// handed to the connection.
const PIECE_BYTES: usize = 64 * 1024;

/// The answer of `GET /v1/frontends`: whole when it fits in one piece,
/// else streamed (chunked) piece by piece.
pub(super) fn response(st: Arc<ApiState>) -> Response {
    let now = st.registry.now_ms();
    let writer = ListingWriter {
        now,
        quarantined: st.apply.borrow().quarantined.clone(),
        health: st.health.borrow().clone(),
        ..ListingWriter::default()
    };
    let mut pieces = Pieces {
        st,
        writer,
        next: Some(0),
        done: false,
    };
    let json = [(header::CONTENT_TYPE, "application/json")];
    match pieces.next() {
        // A listing of one piece goes out whole, with its length.
        Some(Ok(whole)) if pieces.done => (json, whole).into_response(),
        first => {
            let rest = stream::unfold(pieces, |mut pieces| async move {
                // A piece is a fraction of a millisecond of work; yielding
                // between pieces lets the other connections of this worker
                // thread (a renewal) in, where the socket's budget alone
                // would let the listing run for many pieces at a time.
                tokio::task::yield_now().await;
                Some((pieces.next()?, pieces))
            });
            let body = stream::iter(first).chain(rest);
            (json, Body::from_stream(body)).into_response()
        }
    }
}

/// Reads runs of frontends from the registry and hands out the answer in
/// pieces of about [`PIECE_BYTES`]; the next piece is read only once the
/// connection took the last one.
struct Pieces {
    st: Arc<ApiState>,
    writer: ListingWriter,
    /// The port the next run starts from; `None` once all are read.
    next: Option<u16>,
    done: bool,
}

impl Iterator for Pieces {
    type Item = Result<Bytes, serde_json::Error>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let mut out = Vec::with_capacity(PIECE_BYTES + PIECE_BYTES / 4);
        while out.len() < PIECE_BYTES {
            let written = match self.next {
                Some(from) => {
                    let run =
                        self.st
                            .registry
                            .frontends_from(from, LISTING_RUN_KEYS, self.writer.now);
                    self.next = run.next;
                    self.writer.run(&mut out, run)
                }
                None => {
                    self.done = true;
                    // The listing's runs and pieces are freed; hand the pages back.
                    crate::memory::bulk_work_done();
                    self.writer.end(&mut out)
                }
            };
            if let Err(e) = written {
                self.done = true;
                return Some(Err(e));
            }
            if self.done {
                break;
            }
        }
        Some(Ok(Bytes::from(out)))
    }
}

/// Writes the listing's JSON from runs of frontends read in port order;
/// pure: the caller reads the runs and sends the bytes.
#[derive(Default)]
pub(crate) struct ListingWriter {
    /// The instant the listing shows (lease ends, seconds left).
    pub now: u64,
    pub quarantined: BTreeMap<u16, String>,
    pub health: Arc<ServerHealth>,
    started: bool,
    frontends: usize,
    conflicts: Vec<ConflictView>,
    digest: Sha256,
}

impl ListingWriter {
    /// Appends the frontends of `run` (after the opening, for the first).
    pub fn run(&mut self, out: &mut Vec<u8>, run: FrontendRun) -> Result<(), serde_json::Error> {
        if !self.started {
            self.started = true;
            out.extend_from_slice(b"{\"changes\":");
            serde_json::to_writer(&mut *out, &run.generation)?;
            out.extend_from_slice(b",\"frontends\":[");
        }
        for f in &run.frontends {
            if self.frontends > 0 {
                out.push(b',');
            }
            self.frontends += 1;
            serde_json::to_writer(
                &mut *out,
                &frontend_out(f, self.now, &self.quarantined, &self.health),
            )?;
            f.add_to_digest(&mut self.digest);
        }
        self.conflicts.extend(run.conflicts);
        Ok(())
    }

    /// Closes the answer: the conflicts, and the digest of what was listed.
    pub fn end(&mut self, out: &mut Vec<u8>) -> Result<(), serde_json::Error> {
        if !self.started {
            self.run(out, FrontendRun::default())?;
        }
        out.extend_from_slice(b"],\"conflicts\":");
        serde_json::to_writer(&mut *out, &std::mem::take(&mut self.conflicts))?;
        out.extend_from_slice(b",\"digest\":");
        let digest = short_digest(std::mem::take(&mut self.digest));
        serde_json::to_writer(&mut *out, &digest)?;
        out.push(b'}');
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde_json::{Value, json};

    use super::*;
    use crate::registry::{Command, FrontendView, Key, Limits, PortPolicy, Registry, RegistryView};

    const T0: u64 = 1_700_000_000_000;

    /// The listing written from runs as the handler reads them.
    fn streamed(r: &Registry, w: &mut ListingWriter, now: u64) -> (Vec<u8>, usize) {
        let mut out = Vec::new();
        let (mut from, mut runs) = (Some(0), 0);
        while let Some(port) = from {
            let run = r.frontends_from(port, LISTING_RUN_KEYS, now);
            from = run.next;
            runs += 1;
            w.run(&mut out, run).unwrap();
        }
        w.end(&mut out).unwrap();
        (out, runs)
    }

    #[test]
    fn the_streamed_listing_is_the_whole_view_and_each_frontends_own_answer() {
        let limits = Limits {
            max_servers: 10_000,
            max_frontends: 1_000,
            ..Limits::default()
        };
        let policy = || PortPolicy::new(vec![], []);
        let mut r = Registry::new("lb1".parse().unwrap(), limits.clone(), policy());
        // Another peer that, cut off from this one, let a second name claim
        // every seventh frontend: conflicts once they meet.
        let mut other = Registry::new("lb2".parse().unwrap(), limits, policy());
        let register = |reg: &mut Registry, f: u16, s: u16, name: &str, ttl: u64, now: u64| {
            let cmd = Command::Register {
                key: Key {
                    frontend: 20_000 + f,
                    server: format!("198.18.{}.{}:{}", f / 200, f % 200, 30_000 + s)
                        .parse()
                        .unwrap(),
                },
                name: name.parse().unwrap(),
                send_proxy: s % 2 == 1,
                ttl: Some(Duration::from_secs(ttl)),
            };
            reg.apply(cmd, now).unwrap()
        };
        let mut now = T0;
        // 600 frontends of 1 to 5 servers; some leases end before the listing.
        for f in 0..600u16 {
            for s in 0..=(f % 5) {
                now += 1;
                let ttl = if s == 3 && f % 11 == 0 { 60 } else { 600 };
                register(&mut r, f, s, "a", ttl, now);
            }
            if f % 7 == 0 {
                let c = register(&mut other, f, 9, "b", 600, now + 1);
                r.merge_remote(c.key, other.origin().clone(), Some(c.entry), now + 1);
            }
        }
        let now = now + 90_000;
        let v = r.view(now);
        assert!(
            v.frontends.len() > 500 && !v.conflicts.is_empty(),
            "{}",
            v.conflicts.len()
        );
        let quarantined = BTreeMap::from([(20_003, "the port is taken".to_string())]);
        let mut w = ListingWriter {
            now,
            quarantined: quarantined.clone(),
            ..ListingWriter::default()
        };
        let (body, runs) = streamed(&r, &mut w, now);
        assert!(runs > 5, "read in {runs} runs");
        let listed: Value = serde_json::from_slice(&body).unwrap();
        let health = ServerHealth::default();
        let one = |f: &FrontendView| {
            serde_json::to_value(frontend_out(f, now, &quarantined, &health)).unwrap()
        };
        let whole = json!({
            "changes": v.generation,
            "digest": v.digest(),
            "frontends": v.frontends.values().map(one).collect::<Vec<_>>(),
            "conflicts": v.conflicts,
        });
        assert_eq!(listed, whole);
        for (f, port) in listed["frontends"]
            .as_array()
            .unwrap()
            .iter()
            .zip(v.frontends.keys())
        {
            let alone = r.frontend_view(*port, now).unwrap();
            assert_eq!(f, &one(&alone));
        }
        assert_eq!(listed["frontends"][3]["quarantined"], "the port is taken");
    }

    #[test]
    fn an_empty_registry_lists_nothing() {
        let r = Registry::new(
            "lb1".parse().unwrap(),
            Limits::default(),
            PortPolicy::new(vec![], []),
        );
        let (body, runs) = streamed(&r, &mut ListingWriter::default(), T0);
        assert_eq!(runs, 1);
        let listed: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            listed,
            json!({"changes": 0, "digest": RegistryView::default().digest(), "frontends": [], "conflicts": []})
        );
    }
}

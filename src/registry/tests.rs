use std::net::SocketAddr;
use std::time::Duration;

use proptest::prelude::*;

use super::view::ConflictView;
use super::*;

const T0: u64 = 1_700_000_000_000;

fn reg() -> Registry {
    Registry::new(
        "lb1".parse().unwrap(),
        Limits {
            max_servers: 4,
            max_servers_per_frontend: 3,
            max_frontends: 2,
            ..Limits::default()
        },
        PortPolicy::new(vec![], [9000]),
    )
}

fn key(frontend: u16, server: &str) -> Key {
    Key {
        frontend,
        server: server.parse::<SocketAddr>().unwrap(),
    }
}

fn add(frontend: u16, server: &str, name: &str) -> Command {
    Command::Register {
        key: key(frontend, server),
        name: name.parse().unwrap(),
        send_proxy: false,
        ttl: None,
    }
}

fn del(frontend: u16, server: &str, name: &str) -> Command {
    Command::Delete {
        key: key(frontend, server),
        name: name.parse().unwrap(),
    }
}

#[test]
fn register_renew_update_delete() {
    let mut r = reg();
    let c = r
        .apply(add(443, "203.0.113.7:30443", "traefik"), T0)
        .unwrap();
    assert_eq!(c.outcome, Outcome::Registered);
    assert!(c.affects_config);
    let c = r
        .apply(add(443, "203.0.113.7:30443", "traefik"), T0 + 1000)
        .unwrap();
    assert_eq!(c.outcome, Outcome::Renewed);
    assert!(!c.affects_config);
    let c = r
        .apply(
            Command::Register {
                key: key(443, "203.0.113.7:30443"),
                name: "traefik".parse().unwrap(),
                send_proxy: true,
                ttl: None,
            },
            T0 + 2000,
        )
        .unwrap();
    assert_eq!(c.outcome, Outcome::Updated);
    let v = r.view(T0 + 2000);
    let s = &v.frontends[&443].servers[&"203.0.113.7:30443".parse().unwrap()];
    assert!(s.send_proxy);
    assert_eq!(s.since_ms, T0, "renewal keeps the start of the lease chain");
    assert_eq!(s.expires_ms, T0 + 2000 + 1_800_000);
    let c = r
        .apply(del(443, "203.0.113.7:30443", "traefik"), T0 + 3000)
        .unwrap();
    assert_eq!(c.outcome, Outcome::Deleted);
    assert!(r.view(T0 + 3000).frontends.is_empty());
    let c = r
        .apply(del(443, "203.0.113.7:30443", "traefik"), T0 + 4000)
        .unwrap();
    assert_eq!(c.outcome, Outcome::Absent);
    r.check_invariants().unwrap();
}

#[test]
fn pool_holds_several_servers() {
    let mut r = reg();
    r.apply(add(443, "203.0.113.7:30443", "traefik"), T0)
        .unwrap();
    r.apply(add(443, "203.0.113.8:30443", "traefik"), T0)
        .unwrap();
    let v = r.view(T0);
    assert_eq!(v.frontends[&443].servers.len(), 2);
    assert_eq!(v.server_count(), 2);
}

#[test]
fn another_name_cannot_claim_a_live_frontend() {
    let mut r = reg();
    r.apply(add(443, "203.0.113.7:30443", "traefik"), T0)
        .unwrap();
    let err = r
        .apply(add(443, "203.0.113.9:30443", "intruder"), T0)
        .unwrap_err();
    assert!(
        matches!(err, RegistryError::NameConflict { ref owner, .. } if owner.as_str() == "traefik")
    );
    assert!(err.to_string().contains("traefik"));
    let err = r
        .apply(del(443, "203.0.113.7:30443", "intruder"), T0)
        .unwrap_err();
    assert!(matches!(err, RegistryError::NotOwner { .. }));
    // Once the owner's leases end, the port is free again.
    let later = T0 + 1_800_001;
    r.apply(add(443, "203.0.113.9:30443", "intruder"), later)
        .unwrap();
    assert_eq!(r.view(later).frontends[&443].owner.as_str(), "intruder");
}

#[test]
fn leases_expire() {
    let mut r = reg();
    r.apply(
        Command::Register {
            key: key(443, "203.0.113.7:30443"),
            name: "traefik".parse().unwrap(),
            send_proxy: false,
            ttl: Some(Duration::from_secs(60)),
        },
        T0,
    )
    .unwrap();
    r.apply(add(8443, "203.0.113.7:30843", "mqtt"), T0).unwrap();
    let v = r.view(T0 + 59_999);
    assert_eq!(v.frontends.len(), 2);
    assert_eq!(v.next_expiry_ms, Some(T0 + 60_000));
    let v = r.view(T0 + 60_000);
    assert_eq!(v.frontends.keys().copied().collect::<Vec<_>>(), vec![8443]);
    // The lease end is reported once, in the window that holds it.
    assert!(r.leases_ended(T0, T0 + 59_999).is_empty());
    let origin = r.origin().clone();
    assert_eq!(
        r.leases_ended(T0 + 59_999, T0 + 60_000),
        vec![(
            key(443, "203.0.113.7:30443"),
            "traefik".parse().unwrap(),
            origin
        )]
    );
    assert!(r.leases_ended(T0 + 60_000, T0 + 61_000).is_empty());
    // Garbage collection forgets the expired lease without changing the view.
    assert_eq!(r.collect_garbage(T0 + 60_000).len(), 1);
    assert_eq!(r.view(T0 + 60_000).frontends, v.frontends);
    r.check_invariants().unwrap();
    // A deleted server does not expire.
    r.apply(del(8443, "203.0.113.7:30843", "mqtt"), T0 + 61_000)
        .unwrap();
    assert!(r.leases_ended(T0, u64::MAX).is_empty());
}

#[test]
fn ttl_bounds() {
    let mut r = reg();
    for (ttl, ok) in [(5, false), (10, true), (86_400, true), (86_401, false)] {
        let res = r.apply(
            Command::Register {
                key: key(443, "203.0.113.7:30443"),
                name: "traefik".parse().unwrap(),
                send_proxy: false,
                ttl: Some(Duration::from_secs(ttl)),
            },
            T0,
        );
        assert_eq!(res.is_ok(), ok, "ttl {ttl}");
    }
}

#[test]
fn size_bounds() {
    let mut r = reg();
    r.apply(add(443, "203.0.113.1:1", "a"), T0).unwrap();
    r.apply(add(443, "203.0.113.2:1", "a"), T0).unwrap();
    r.apply(add(443, "203.0.113.3:1", "a"), T0).unwrap();
    let e = r.apply(add(443, "203.0.113.4:1", "a"), T0).unwrap_err();
    assert!(e.to_string().contains("max-servers-per-frontend"), "{e}");
    r.apply(add(80, "203.0.113.4:1", "b"), T0).unwrap();
    let e = r.apply(add(81, "203.0.113.4:1", "c"), T0).unwrap_err();
    assert!(e.to_string().contains("max-servers"), "{e}");
    // Renewals still pass when full.
    r.apply(add(443, "203.0.113.1:1", "a"), T0 + 1).unwrap();
    // Expired leases never block: they are collected when room is needed.
    let later = T0 + 1_800_001;
    r.apply(add(81, "203.0.113.4:1", "c"), later).unwrap();
    r.check_invariants().unwrap();
}

#[test]
fn policy_is_enforced() {
    let mut r = reg();
    assert!(matches!(
        r.apply(add(22, "203.0.113.1:1", "a"), T0),
        Err(RegistryError::Policy(_))
    ));
    assert!(r.apply(add(9000, "203.0.113.1:1", "a"), T0).is_err());
    assert!(r.view(T0).frontends.is_empty());
}

#[test]
fn a_remote_delete_beats_an_older_local_add() {
    let mut a = reg();
    let add_change = a
        .apply(add(443, "203.0.113.7:30443", "traefik"), T0)
        .unwrap();
    // Peer lb2 deletes one second later without having seen the add.
    let mut b = Registry::new(
        "lb2".parse().unwrap(),
        Limits::default(),
        PortPolicy::new(vec![], []),
    );
    let del_change = b
        .apply(del(443, "203.0.113.7:30443", "traefik"), T0 + 1000)
        .unwrap();
    assert_eq!(del_change.outcome, Outcome::Absent);
    let m = a.merge_remote(
        add_change.key,
        "lb2".parse().unwrap(),
        Some(del_change.entry.clone()),
        T0 + 1000,
    );
    assert!(m.changed && m.affects_config);
    b.merge_remote(
        add_change.key,
        "lb1".parse().unwrap(),
        Some(add_change.entry.clone()),
        T0 + 1000,
    );
    assert!(a.view(T0 + 1000).frontends.is_empty());
    assert_eq!(a.view(T0 + 1000), {
        let mut v = b.view(T0 + 1000);
        v.generation = a.generation();
        v.config_generation = a.config_generation();
        v
    });
}

#[test]
fn concurrent_claims_resolve_to_the_oldest_claim_everywhere() {
    let mut a = reg();
    let mut b = Registry::new(
        "lb2".parse().unwrap(),
        Limits::default(),
        PortPolicy::new(vec![], []),
    );
    let ca = a.apply(add(443, "203.0.113.7:1", "first"), T0).unwrap();
    let cb = b
        .apply(add(443, "203.0.113.8:1", "second"), T0 + 10)
        .unwrap();
    a.merge_remote(cb.key, "lb2".parse().unwrap(), Some(cb.entry), T0 + 10);
    b.merge_remote(ca.key, "lb1".parse().unwrap(), Some(ca.entry), T0 + 10);
    for r in [&a, &b] {
        let v = r.view(T0 + 20);
        assert_eq!(v.frontends[&443].owner.as_str(), "first");
        assert_eq!(v.frontends[&443].servers.len(), 1);
        assert_eq!(v.conflicts.len(), 1);
        assert_eq!(v.conflicts[0].name.as_str(), "second");
    }
    assert_eq!(a.view(T0 + 20).digest(), b.view(T0 + 20).digest());
}

#[test]
fn a_gossiped_renewal_changes_the_registry_but_not_the_config() {
    let mut a = reg();
    let mut b = Registry::new(
        "lb2".parse().unwrap(),
        Limits::default(),
        PortPolicy::new(vec![], []),
    );
    let first = b
        .apply(add(443, "203.0.113.7:30443", "traefik"), T0)
        .unwrap();
    let m = a.merge_remote(
        first.key,
        "lb2".parse().unwrap(),
        Some(first.entry.clone()),
        T0,
    );
    assert_eq!(
        m,
        Merge {
            changed: true,
            affects_config: true
        }
    );
    assert_eq!(
        a.merge_remote(first.key, "lb2".parse().unwrap(), Some(first.entry), T0),
        Merge::default(),
        "the same entry again is no change"
    );
    let renewal = b
        .apply(add(443, "203.0.113.7:30443", "traefik"), T0 + 5_000)
        .unwrap();
    let m = a.merge_remote(
        renewal.key,
        "lb2".parse().unwrap(),
        Some(renewal.entry),
        T0 + 5_000,
    );
    assert_eq!(
        m,
        Merge {
            changed: true,
            affects_config: false
        }
    );
}

/// What a listing read in runs of about `max_keys` keys shows: frontends
/// and conflicts.
fn listing(r: &Registry, max_keys: usize, now: u64) -> (Vec<FrontendView>, Vec<ConflictView>) {
    let (mut frontends, mut conflicts) = (Vec::new(), Vec::new());
    let mut from = Some(0);
    let mut runs = 0;
    while let Some(port) = from {
        let run = r.frontends_from(port, max_keys, now);
        assert_eq!(run.generation, r.generation());
        assert!(run.next.is_none_or(|next| next > port), "runs move forward");
        frontends.extend(run.frontends);
        conflicts.extend(run.conflicts);
        from = run.next;
        runs += 1;
        assert!(runs <= 70_000, "the listing ends");
    }
    (frontends, conflicts)
}

/// The view as [`SharedRegistry::view`](crate::shared::SharedRegistry::view)
/// reads it: in runs of about `max_keys` keys.
fn view_in_runs(r: &Registry, max_keys: usize, now: u64) -> RegistryView {
    RegistryView::from_runs(|from| r.frontends_from(from, max_keys, now))
}

/// The summary as [`SharedRegistry::summary`](crate::shared::SharedRegistry::summary)
/// computes it when none is kept: in runs of about `max_keys` keys.
fn summary_in_runs(r: &Registry, max_keys: usize, now: u64) -> Summary {
    let mut runs = r.start_summary(now);
    let mut n = 0;
    while runs.next.is_some() {
        r.summarize(&mut runs, max_keys);
        n += 1;
        assert!(n <= 70_000, "the summary ends");
    }
    r.finish_summary(runs)
}

/// The same from the whole view.
fn whole_listing(v: &RegistryView) -> (Vec<FrontendView>, Vec<ConflictView>) {
    (v.frontends.values().cloned().collect(), v.conflicts.clone())
}

#[derive(Debug, Clone)]
enum Step {
    Add(u8, u8, u8, u32),
    Del(u8, u8, u8),
    Tick(u32),
    Gc,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        (0u8..3, 0u8..6, 0u8..2, 10u32..100).prop_map(|(f, s, n, t)| Step::Add(f, s, n, t)),
        (0u8..3, 0u8..6, 0u8..2).prop_map(|(f, s, n)| Step::Del(f, s, n)),
        (0u32..60_000).prop_map(Step::Tick),
        Just(Step::Gc),
    ]
}

proptest! {
    /// Whatever clients do, the bookkeeping stays exact, bounds hold, and
    /// every frontend in the view has exactly one owner and at least one server.
    #[test]
    fn registry_invariants(steps in proptest::collection::vec(step(), 1..80)) {
        let mut r = reg();
        let mut now = T0;
        for s in steps {
            match s {
                Step::Add(f, s, n, t) => {
                    let _ = r.apply(Command::Register {
                        key: key(1000 + f as u16, &format!("198.18.0.{s}:80")),
                        name: format!("n{n}").parse().unwrap(),
                        send_proxy: false,
                        ttl: Some(Duration::from_secs(t as u64)),
                    }, now);
                }
                Step::Del(f, s, n) => {
                    let _ = r.apply(del(1000 + f as u16, &format!("198.18.0.{s}:80"), &format!("n{n}")), now);
                }
                Step::Tick(ms) => now += ms as u64,
                Step::Gc => { r.collect_garbage(now); }
            }
            r.check_invariants().map_err(TestCaseError::fail)?;
            let v = r.view(now);
            let s = r.summary(now);
            prop_assert_eq!(&s.digest, &v.digest(), "the streaming digest equals the view's");
            prop_assert_eq!(s.servers, v.server_count());
            prop_assert_eq!(s.frontends, v.frontends.len());
            prop_assert_eq!(s.conflicts, v.conflicts.len());
            prop_assert_eq!(s.refused, v.refused.len());
            for port in 1000..1006 {
                prop_assert_eq!(r.frontend_view(port, now), v.frontends.get(&port).cloned());
            }
            for max_keys in [0, 1, 3, 1000] {
                prop_assert_eq!(listing(&r, max_keys, now), whole_listing(&v));
                prop_assert_eq!(&view_in_runs(&r, max_keys, now), &v);
                prop_assert_eq!(&summary_in_runs(&r, max_keys, now), &s);
            }
            prop_assert!(v.server_count() <= 4);
            prop_assert!(v.frontends.len() <= 2);
            for f in v.frontends.values() {
                prop_assert!(!f.servers.is_empty());
                prop_assert!(f.servers.len() <= 3);
                for srv in f.servers.values() {
                    prop_assert!(srv.expires_ms > now);
                }
            }
        }
    }
}

/// Found by the simulations: an add's "observed" once meant the newest stamp
/// of any kind, so a renewal whose peer had seen an earlier add from a fast
/// clock counted as having seen a later delete, and resurrected the server.
#[test]
fn a_renewal_that_saw_only_adds_does_not_beat_a_later_delete() {
    let limits = Limits::default;
    let mut fast = Registry::new(
        "fast".parse().unwrap(),
        limits(),
        PortPolicy::new(vec![], []),
    );
    let mut renew = Registry::new(
        "renew".parse().unwrap(),
        limits(),
        PortPolicy::new(vec![], []),
    );
    let mut slow = Registry::new(
        "slow".parse().unwrap(),
        limits(),
        PortPolicy::new(vec![], []),
    );
    let k = "203.0.113.7:30443";
    // The first add, on a clock 300 ms fast, reaches the renewing peer but
    // not yet the peer that will take the delete.
    let first = fast.apply(add(443, k, "traefik"), T0 + 300).unwrap();
    renew.merge_remote(
        first.key,
        "fast".parse().unwrap(),
        Some(first.entry.clone()),
        T0,
    );
    // Then, at the same real instant, a renewal and a delete at two peers.
    let renewal = renew.apply(add(443, k, "traefik"), T0 + 100).unwrap();
    let deleted = slow.apply(del(443, k, "traefik"), T0 + 50).unwrap();
    assert!(
        renewal.entry.observed < deleted.entry.stamp,
        "the renewal saw no delete"
    );
    for r in [&mut fast, &mut renew, &mut slow] {
        r.merge_remote(
            renewal.key,
            "renew".parse().unwrap(),
            Some(renewal.entry.clone()),
            T0 + 400,
        );
        r.merge_remote(
            deleted.key,
            "slow".parse().unwrap(),
            Some(deleted.entry.clone()),
            T0 + 400,
        );
        r.merge_remote(
            first.key,
            "fast".parse().unwrap(),
            Some(first.entry.clone()),
            T0 + 400,
        );
        assert!(
            r.view(T0 + 400).frontends.is_empty(),
            "{}: the delete must win",
            r.node()
        );
    }
}

#[test]
fn a_flood_of_deletes_never_blocks_a_delete_and_stays_bounded() {
    let mut r = reg();
    // A token holder deletes servers nobody registered, far beyond the bound.
    for i in 0..50u16 {
        let c = r
            .apply(
                del(443, &format!("203.0.113.9:{}", 1000 + i), "x"),
                T0 + u64::from(i),
            )
            .unwrap();
        assert_eq!(c.outcome, Outcome::Absent);
    }
    assert!(r.own_entries().count() <= r.limits().max_servers);
    // A real server is still registered and deleted at once.
    r.apply(add(443, "203.0.113.7:30443", "traefik"), T0 + 100)
        .unwrap();
    let c = r
        .apply(del(443, "203.0.113.7:30443", "traefik"), T0 + 101)
        .unwrap();
    assert_eq!(c.outcome, Outcome::Deleted);
    assert!(r.view(T0 + 102).frontends.is_empty());
    // The newest tombstones are the ones kept, the oldest were forgotten.
    assert!(c.forgotten.contains(&key(443, "203.0.113.9:1046")));
    assert_eq!(
        r.keys
            .get(&key(443, "203.0.113.7:30443"))
            .map(|k| k.winner().unwrap().is_delete()),
        Some(true)
    );
    r.check_invariants().unwrap();
}

#[test]
fn refusals_read_as_plain_words() {
    let mut r = reg();
    r.apply(add(443, "203.0.113.7:30443", "svc"), T0).unwrap();
    let e = r
        .apply(add(443, "203.0.113.8:30443", "other"), T0)
        .unwrap_err()
        .to_string();
    assert_eq!(
        e,
        "frontend port 443 is owned by \"svc\"; \"other\" cannot claim it while it has live servers"
    );
    let e = r
        .apply(del(443, "203.0.113.7:30443", "other"), T0)
        .unwrap_err()
        .to_string();
    assert!(e.ends_with("registered by \"svc\", not \"other\""), "{e}");
    let e = r
        .apply(
            Command::Register {
                key: key(443, "203.0.113.7:30443"),
                name: "svc".parse().unwrap(),
                send_proxy: false,
                ttl: Some(Duration::from_secs(2)),
            },
            T0,
        )
        .unwrap_err()
        .to_string();
    assert_eq!(e, "a lease of 2s is outside the allowed 10s to 1day");
}

/// A wide peer's entries beyond this peer's own bounds: left out the same
/// way on every narrow peer, listed with the peer and the reason, and never
/// a reason to refuse this peer's own clients.
#[test]
fn gossip_beyond_the_own_bounds_is_left_out_the_same_way_everywhere() {
    let mut wide = Registry::new(
        "lb2".parse().unwrap(),
        Limits::default(),
        PortPolicy::new(vec![], [9000]),
    );
    // Five frontends, the first with four servers, a millisecond apart.
    let mut writes = Vec::new();
    for (i, (f, s)) in [
        (1000, 1),
        (1000, 2),
        (1000, 3),
        (1000, 4),
        (1001, 1),
        (1002, 1),
    ]
    .into_iter()
    .chain([(1003, 1), (1004, 1)])
    .enumerate()
    {
        let c = wide
            .apply(
                add(f, &format!("198.18.0.{s}:80"), &format!("svc{f}")),
                T0 + i as u64,
            )
            .unwrap();
        writes.push(c);
    }
    // Two narrow peers (2 frontends, 3 servers per frontend, 5 in all)
    // hear the writes in opposite orders.
    let narrow_peer = || {
        Registry::new(
            "lb1".parse().unwrap(),
            Limits {
                max_servers: 5,
                max_servers_per_frontend: 3,
                max_frontends: 2,
                ..Limits::default()
            },
            PortPolicy::new(vec![], [9000]),
        )
    };
    let mut narrow = [narrow_peer(), narrow_peer()];
    for (n, r) in narrow.iter_mut().enumerate() {
        let mut order: Vec<&Change> = writes.iter().collect();
        if n == 1 {
            order.reverse();
        }
        for c in order {
            r.merge_remote(c.key, wide.origin().clone(), Some(c.entry.clone()), T0 + 10);
        }
        r.check_invariants().unwrap();
    }
    let now = T0 + 20;
    let (a, b) = (narrow[0].view(now), narrow[1].view(now));
    assert_eq!(
        a, b,
        "every peer with the same bounds leaves out the same ones"
    );
    assert_eq!(narrow[0].summary(now).digest, a.digest());
    // The oldest two frontends, the oldest three servers of the first.
    let served: Vec<(u16, usize)> = a
        .frontends
        .values()
        .map(|f| (f.port, f.servers.len()))
        .collect();
    assert_eq!(served, vec![(1000, 3), (1001, 1)]);
    let refused: Vec<(u16, &str, &str)> = a
        .refused
        .iter()
        .map(|r| (r.frontend, r.peer.as_str(), r.reason))
        .collect();
    assert_eq!(
        refused,
        vec![
            (1000, "lb2", "max_servers_per_frontend"),
            (1002, "lb2", "max_frontends"),
            (1003, "lb2", "max_frontends"),
            (1004, "lb2", "max_frontends"),
        ]
    );
    assert_eq!(
        a.refused[0].message,
        "frontend port 1000 already has 3 older servers (this peer's registry.max-servers-per-frontend)"
    );
    let counts = narrow[0].refused_counts(now);
    assert_eq!(counts[&("lb2".parse().unwrap(), "max_frontends")], 3);
    // Eight adds held: more than max-servers (5), yet four are served and
    // the frontends are full. A new server on a served frontend with room is
    // accepted; a new frontend is refused for the two served, not the five held.
    let r = &mut narrow[0];
    let e = r
        .apply(add(2000, "198.18.0.9:80", "mine"), now)
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "registry full: 2 frontends served (max-frontends)"
    );
    r.apply(add(1001, "198.18.0.9:80", "svc1001"), now).unwrap();
    let e = r
        .apply(add(1001, "198.18.0.10:80", "svc1001"), now)
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "registry full: 5 servers served (max-servers)"
    );
    // When the oldest frontend goes, the next oldest is served in its place.
    for c in writes.iter().filter(|c| c.key.frontend == 1000) {
        let gone = wide
            .apply(del(1000, &c.key.server.to_string(), "svc1000"), now)
            .unwrap();
        r.merge_remote(gone.key, wide.origin().clone(), Some(gone.entry), now);
    }
    let v = r.view(now + 1);
    assert_eq!(
        v.frontends.keys().copied().collect::<Vec<_>>(),
        vec![1001, 1002]
    );
    assert_eq!(r.summary(now + 1).digest, v.digest());
    r.check_invariants().unwrap();
}

proptest! {
    /// Whatever a wider peer sends, what this peer serves fits its own
    /// bounds, and the streaming digest equals the view's.
    #[test]
    fn gossip_never_takes_the_view_beyond_the_own_bounds(
        adds in proptest::collection::vec((0u16..6, 0u8..8, 0u64..5_000, 10u32..100), 1..60),
    ) {
        let mut wide = Registry::new(
            "lb2".parse().unwrap(),
            Limits::default(),
            PortPolicy::new(vec![], [9000]),
        );
        let mut r = reg();
        let mut now = T0;
        for (f, s, dt, ttl) in adds {
            now += dt;
            let c = wide.apply(Command::Register {
                key: key(1000 + f, &format!("198.18.0.{s}:80")),
                name: format!("n{f}").parse().unwrap(),
                send_proxy: false,
                ttl: Some(Duration::from_secs(u64::from(ttl))),
            }, now);
            if let Ok(c) = c {
                r.merge_remote(c.key, wide.origin().clone(), Some(c.entry), now);
            }
            r.check_invariants().map_err(TestCaseError::fail)?;
            let v = r.view(now);
            let s = r.summary(now);
            prop_assert_eq!(&s.digest, &v.digest());
            prop_assert_eq!(s.refused, v.refused.len(), "status lists what the view leaves out");
            for port in 1000..1006 {
                prop_assert_eq!(r.frontend_view(port, now), v.frontends.get(&port).cloned());
            }
            for max_keys in [1, 1000] {
                prop_assert_eq!(listing(&r, max_keys, now), whole_listing(&v));
                prop_assert_eq!(&view_in_runs(&r, max_keys, now), &v);
                prop_assert_eq!(&summary_in_runs(&r, max_keys, now), &s);
            }
            prop_assert!(v.server_count() <= 4);
            prop_assert!(v.frontends.len() <= 2);
            prop_assert!(v.frontends.values().all(|f| f.servers.len() <= 3));
        }
    }
}

/// A peer's entry stamped, or leased, absurdly far ahead (found by the
/// gossip_merge fuzz target: a stamp of 2^64-1 made the next local write
/// overflow the clock) is refused on arrival and listed with its reason;
/// this peer's own writes to the key go on as before.
#[test]
fn gossip_from_far_in_the_future_is_refused() {
    let mut r = reg();
    let k = key(443, "198.18.0.9:30443");
    let lb2: Origin = "lb2".parse().unwrap();
    let lease = |stamp: u64, expires_ms: u64| Entry {
        stamp: Stamp(stamp),
        observed: Stamp(0),
        op: Op::Add {
            name: "svc".parse().unwrap(),
            send_proxy: false,
            since_ms: T0,
            expires_ms,
        },
    };
    let day = 24 * 3600 * 1000;
    for (e, what) in [
        (lease(u64::MAX, T0 + 60_000), "its write"),
        (lease(Stamp::from_wall_ms(T0).0, u64::MAX), "its lease end"),
        (
            lease(Stamp::from_wall_ms(T0 + 2 * day).0, T0 + 60_000),
            "its write",
        ),
        (
            Entry {
                stamp: Stamp(u64::MAX),
                observed: Stamp(0),
                op: Op::Delete {
                    name: "svc".parse().unwrap(),
                },
            },
            "its write",
        ),
    ] {
        let m = r.merge_remote(k, lb2.clone(), Some(e), T0);
        assert!(!m.changed, "{what}");
        let refused = r.refused(T0, 10);
        assert_eq!(refused.len(), 1);
        assert_eq!(refused[0].reason, "clock_ahead");
        assert!(
            refused[0].message.starts_with(what)
                && refused[0]
                    .message
                    .ends_with("ahead of this peer's clock, beyond registry.max-ttl"),
            "{}",
            refused[0].message
        );
        r.check_invariants().unwrap();
    }
    // A lease a day long from a clock a few seconds ahead is accepted.
    let ok = lease(Stamp::from_wall_ms(T0 + 5_000).0, T0 + day + 5_000);
    assert!(r.merge_remote(k, lb2.clone(), Some(ok), T0).changed);
    assert!(r.refused(T0, 10).is_empty());
    // This peer's own writes still take their stamps from its clock.
    let c = r
        .apply(add(443, "198.18.0.9:30443", "svc"), T0 + 1)
        .unwrap();
    assert!(c.entry.stamp.wall_ms() < T0 + 10_000);
    r.apply(del(443, "198.18.0.9:30443", "svc"), T0 + 2)
        .unwrap();
    r.check_invariants().unwrap();
}

proptest! {
    /// Read in runs, the view is the whole view: servers this peer refuses
    /// as loops (a mesh address on a frontend port, judged against the live
    /// frontends of every run), conflicts between names, and the first lease
    /// end, whichever run holds it.
    #[test]
    fn a_view_read_in_runs_is_the_whole_view(
        adds in proptest::collection::vec((0u16..6, 0u8..4, 0u16..7, 0u8..2, 0u64..20_000, 10u32..60), 1..50),
    ) {
        let mut wide = Registry::new(
            "lb2".parse().unwrap(),
            Limits::default(),
            PortPolicy::new(vec![], [9000]),
        );
        let mut r = Registry::new("lb1".parse().unwrap(), Limits::default(), PortPolicy::new(vec![], [9000]));
        r.set_loop_guard(LoopGuard {
            addrs: ["198.18.0.1".parse().unwrap()].into(),
            ports: [9000].into(),
        });
        let mut now = T0;
        for (f, s, port, name, dt, ttl) in adds {
            now += dt;
            // Server ports 1000..1006 are frontend ports: on 198.18.0.1, a loop.
            let c = wide.apply(Command::Register {
                key: key(1000 + f, &format!("198.18.0.{s}:{}", 1000 + port)),
                name: format!("n{name}").parse().unwrap(),
                send_proxy: false,
                ttl: Some(Duration::from_secs(u64::from(ttl))),
            }, now);
            if let Ok(c) = c {
                r.merge_remote(c.key, wide.origin().clone(), Some(c.entry), now);
            }
            let v = r.view(now);
            let whole = r.summary(now);
            prop_assert_eq!(&whole.digest, &v.digest());
            prop_assert_eq!(whole.refused, v.refused.len());
            prop_assert_eq!(whole.conflicts, v.conflicts.len());
            for max_keys in [0, 1, 2, 5, 1000] {
                prop_assert_eq!(&view_in_runs(&r, max_keys, now), &v);
                prop_assert_eq!(&summary_in_runs(&r, max_keys, now), &whole);
                let (mut ended, mut from) = (Vec::new(), Some(0));
                while let Some(port) = from {
                    from = r.leases_ended_from(port, max_keys, T0, now, &mut ended);
                }
                prop_assert_eq!(&ended, &r.leases_ended(T0, now));
            }
        }
    }
}

/// A summary whose runs saw the registry change between them mixes two
/// states: it is not kept, and the next one is computed afresh.
#[test]
fn a_summary_that_saw_a_change_is_not_kept() {
    let mut r = reg();
    for f in [1000, 1001] {
        r.apply(add(f, "198.18.0.1:80", "svc"), T0).unwrap();
    }
    let mut runs = r.start_summary(T0);
    r.summarize(&mut runs, 1);
    assert!(runs.next.is_some(), "one run per frontend");
    r.apply(add(1000, "198.18.0.2:80", "svc"), T0).unwrap();
    while runs.next.is_some() {
        r.summarize(&mut runs, 1);
    }
    let mixed = r.finish_summary(runs);
    assert_eq!(mixed.servers, 2, "the first run was read before the change");
    assert_eq!(r.memoized_summary(T0), None, "a mixed summary is not kept");
    let now = r.summary(T0);
    assert_eq!(now.servers, 3);
    assert_eq!(now.digest, r.view(T0).digest());
    assert_eq!(
        r.memoized_summary(T0),
        Some(now),
        "a summary of one state is kept"
    );
}

/// A registration refused for room is refused again from what was served
/// then, until the registry changes (here a delete) or a lease ends (see
/// `size_bounds`): never a stale refusal.
#[test]
fn a_refusal_for_room_is_remembered_until_the_registry_changes() {
    let mut r = reg();
    for s in 1..=3 {
        r.apply(add(443, &format!("203.0.113.{s}:1"), "a"), T0)
            .unwrap();
    }
    for _ in 0..3 {
        let e = r.apply(add(443, "203.0.113.4:1", "a"), T0 + 1).unwrap_err();
        assert!(e.to_string().contains("max-servers-per-frontend"), "{e}");
    }
    // A delete makes room at once.
    r.apply(del(443, "203.0.113.3:1", "a"), T0 + 2).unwrap();
    r.apply(add(443, "203.0.113.4:1", "a"), T0 + 3).unwrap();

    r.check_invariants().unwrap();
}

//! Every decision of the planner, as scripts: registry states, clock moves,
//! what HAProxy runs, the step expected, and the outcome handed back.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::*;
use crate::registry::{Command, Key, Limits, PortPolicy, Registry};

const T0_MS: u64 = 1_700_000_000_000;

/// One line of a script.
#[derive(Debug, Clone)]
enum Do {
    /// The registry holds these frontends, each with servers 198.18.0.<id>:30000.
    Registry(&'static [(u16, &'static [u8])]),
    /// Like `Registry`, every server asking for the PROXY protocol.
    RegistryProxy(&'static [(u16, &'static [u8])]),
    /// The HAProxy instance that runs (None: none does).
    Haproxy(Option<u32>),
    /// Milliseconds since the start of the script.
    At(u64),
    /// Poll: the step expected.
    Expect(Want),
    /// Hand back the outcome of the last step; `Some(text)`: the report's
    /// error must contain it; `None`: no failure reported.
    Then(Outcome, Option<&'static str>),
    Quarantined(&'static [u16]),
    Deferred(&'static [u16]),
    Held(&'static [u16]),
    /// Whether HAProxy serves what it should (config digest = wanted digest).
    InStep(bool),
}

#[derive(Debug, Clone)]
enum Want {
    /// Wait, until that many ms after the start (None: until something changes).
    Wait(Option<u64>),
    Runtime(&'static [&'static str]),
    /// An install: the frontends of the layout, and the new ones among them.
    Reload(&'static [u16], &'static [u16]),
    /// An install: the slot count of one backend.
    ReloadSlots(u16, usize),
    Probe(&'static [u16]),
    /// A `haproxy -c` of these frontends only.
    Checking(&'static [u16]),
    SyncFile,
}

fn done() -> Outcome {
    Outcome::Installed(Install::Done { instance: 1 })
}

fn bind_failed(port: u16) -> BTreeMap<u16, String> {
    BTreeMap::from([(port, format!("cannot listen on 127.0.0.1:{port}: in use"))])
}

fn settings() -> PlanSettings {
    PlanSettings {
        slots: SlotPolicy { min_slots: 4 },
        min_reload_interval: Duration::from_millis(500),
        empty_frontend_grace: Duration::from_secs(30),
        max_frontend_backoff: Duration::from_secs(600),
        probe_interval: Duration::from_secs(1),
        retry: Duration::from_secs(1),
        max_retry: Duration::from_secs(60),
        file_sync_delay: Duration::from_secs(1),
    }
}

fn view(spec: &[(u16, &[u8])], proxy: bool) -> RegistryView {
    let mut r = Registry::new(
        "lb1".parse().unwrap(),
        Limits::default(),
        PortPolicy::new(vec![], []),
    );
    for (port, ids) in spec {
        for id in *ids {
            r.apply(
                Command::Register {
                    key: Key {
                        frontend: *port,
                        server: format!("198.18.0.{id}:30000").parse().unwrap(),
                    },
                    name: format!("svc{port}").parse().unwrap(),
                    send_proxy: proxy,
                    ttl: None,
                },
                T0_MS,
            )
            .unwrap();
        }
    }
    r.view(T0_MS)
}

fn run(name: &str, script: &[Do]) {
    let t0 = Instant::now();
    let mut p = Planner::new(settings());
    let mut v = view(&[], false);
    let mut observed = Observed { instance: None };
    let mut now = t0;
    let mut last: Option<Step> = None;
    for (line, action) in script.iter().enumerate() {
        let at = format!("{name}, line {line} ({action:?})");
        match action {
            Do::Registry(spec) => v = view(spec, false),
            Do::RegistryProxy(spec) => v = view(spec, true),
            Do::Haproxy(i) => observed.instance = *i,
            Do::At(ms) => now = t0 + Duration::from_millis(*ms),
            Do::Expect(want) => {
                let step = p.poll(&v, &observed, now);
                check(&at, want, &step, t0);
                last = Some(step);
            }
            Do::Then(outcome, error) => {
                if let Outcome::Installed(Install::Done { instance }) = outcome {
                    observed.instance = Some(*instance);
                }
                let report = p.handle(outcome.clone(), now);
                let failure = report.and_then(|r| r.result.err());
                match (error, &failure) {
                    (None, None) => {}
                    (Some(want), Some(got)) => {
                        assert!(got.contains(want), "{at}: error {got:?} lacks {want:?}")
                    }
                    _ => panic!("{at}: expected error {error:?}, reported {failure:?}"),
                }
                last = None;
            }
            Do::Quarantined(ports) => {
                let got: Vec<u16> = p.status().quarantined.keys().copied().collect();
                assert_eq!(got, *ports, "{at}");
            }
            Do::Deferred(ports) => {
                let got: Vec<u16> = p.status().deferred.keys().copied().collect();
                assert_eq!(got, *ports, "{at}: {:?}", p.status().deferred);
            }
            Do::Held(ports) => {
                let got: Vec<u16> = p.status().held.keys().copied().collect();
                assert_eq!(got, *ports, "{at}");
            }
            Do::InStep(want) => {
                let s = p.status();
                let in_step = s.config_digest.as_deref() == Some(s.wanted_digest.as_str());
                assert_eq!(in_step, *want, "{at}: {s:?}");
            }
        }
    }
    assert!(
        last.is_none() || matches!(last, Some(Step::Wait { .. })),
        "{name}: the script ends with a step that was not handed back"
    );
}

fn check(at: &str, want: &Want, step: &Step, t0: Instant) {
    let ms = |i: &Instant| i.duration_since(t0).as_millis() as u64;
    match (want, step) {
        (Want::Wait(w), Step::Wait { until }) => assert_eq!(*w, until.as_ref().map(ms), "{at}"),
        (Want::Runtime(cmds), Step::Runtime { commands, .. }) => {
            assert_eq!(commands, cmds, "{at}")
        }
        (Want::Reload(ports, new), Step::Install { layout, new_ports }) => {
            assert_eq!(layout.keys().copied().collect::<Vec<_>>(), *ports, "{at}");
            assert_eq!(new_ports, new, "{at}");
        }
        (Want::ReloadSlots(port, n), Step::Install { layout, .. }) => {
            assert_eq!(layout[port].slots.len(), *n, "{at}")
        }
        (Want::Probe(ports), Step::Probe { ports: got }) => assert_eq!(got, ports, "{at}"),
        (Want::Checking(ports), Step::Check { layout }) => {
            assert_eq!(layout.keys().copied().collect::<Vec<_>>(), *ports, "{at}")
        }
        (Want::SyncFile, Step::SyncFile { .. }) => {}
        _ => panic!("{at}: expected {want:?}, got {step:?}"),
    }
}

use Do::*;
use Want::*;

/// A started HAProxy serving 443 with servers 1 and 2 (and 4 spare slots).
const STARTED: &[Do] = &[
    Registry(&[(443, &[1, 2])]),
    Expect(Reload(&[443], &[443])),
    Then(Outcome::Installed(Install::Done { instance: 1 }), None),
    Expect(Wait(None)),
    InStep(true),
];

fn started_then(rest: &[Do]) -> Vec<Do> {
    STARTED.iter().chain(rest).cloned().collect()
}

#[test]
fn starting_and_server_changes() {
    let cases: Vec<(&str, Vec<Do>)> = vec![
        ("nothing runs: start on everything", started_then(&[])),
        (
            "a server joins: Runtime API, no reload",
            started_then(&[
                Registry(&[(443, &[1, 2, 3])]),
                Expect(Runtime(&[
                    "set server 443_backend/s3 addr 198.18.0.3 port 30000",
                    "set server 443_backend/s3 state ready",
                ])),
                Then(Outcome::Runtime(Ok(())), None),
                Expect(Wait(Some(1_000))),
                InStep(true),
            ]),
        ),
        (
            "a server leaves and another takes its slot",
            started_then(&[
                Registry(&[(443, &[2, 9])]),
                Expect(Runtime(&[
                    "set server 443_backend/s1 addr 198.18.0.9 port 30000",
                ])),
                Then(Outcome::Runtime(Ok(())), None),
            ]),
        ),
        (
            "after Runtime API changes the config file follows, a second later",
            started_then(&[
                Registry(&[(443, &[1])]),
                Expect(Runtime(&[
                    "set server 443_backend/s2 state maint",
                    "set server 443_backend/s2 addr 0.0.0.0 port 1",
                ])),
                Then(Outcome::Runtime(Ok(())), None),
                At(400),
                Expect(Wait(Some(1_000))),
                At(1_000),
                Expect(SyncFile),
                Then(Outcome::FileSynced(Ok(())), None),
                Expect(Wait(None)),
            ]),
        ),
        (
            "a failed Runtime API change is put right by a reload",
            started_then(&[
                Registry(&[(443, &[1, 2, 3])]),
                Expect(Runtime(&[
                    "set server 443_backend/s3 addr 198.18.0.3 port 30000",
                    "set server 443_backend/s3 state ready",
                ])),
                Then(
                    Outcome::Runtime(Err("no answer".into())),
                    Some("reloading instead"),
                ),
                Expect(Wait(Some(500))),
                At(500),
                Expect(Reload(&[443], &[])),
                Then(done(), None),
                Expect(Wait(None)),
            ]),
        ),
        (
            "the pool outgrows its slots: what fits goes in at once, then a reload grows it",
            started_then(&[
                Registry(&[(443, &[1, 2, 3, 4, 5, 6, 7, 8])]),
                Expect(Runtime(&[
                    "set server 443_backend/s3 addr 198.18.0.3 port 30000",
                    "set server 443_backend/s3 state ready",
                    "set server 443_backend/s4 addr 198.18.0.4 port 30000",
                    "set server 443_backend/s4 state ready",
                    "set server 443_backend/s5 addr 198.18.0.5 port 30000",
                    "set server 443_backend/s5 state ready",
                    "set server 443_backend/s6 addr 198.18.0.6 port 30000",
                    "set server 443_backend/s6 state ready",
                ])),
                Then(Outcome::Runtime(Ok(())), None),
                Expect(Wait(Some(500))),
                Deferred(&[443]),
                InStep(true),
                At(500),
                Expect(ReloadSlots(443, 12)),
                Then(done(), None),
                InStep(true),
            ]),
        ),
        (
            "slots grow ahead of need, before the last one is taken",
            started_then(&[
                Registry(&[(443, &[1, 2, 3, 4, 5])]),
                Expect(Runtime(&[
                    "set server 443_backend/s3 addr 198.18.0.3 port 30000",
                    "set server 443_backend/s3 state ready",
                    "set server 443_backend/s4 addr 198.18.0.4 port 30000",
                    "set server 443_backend/s4 state ready",
                    "set server 443_backend/s5 addr 198.18.0.5 port 30000",
                    "set server 443_backend/s5 state ready",
                ])),
                Then(Outcome::Runtime(Ok(())), None),
                At(500),
                Expect(ReloadSlots(443, 9)),
                Then(done(), None),
            ]),
        ),
        (
            "a server that asks for the PROXY protocol needs a slot rendered for it",
            started_then(&[
                RegistryProxy(&[(443, &[1, 2])]),
                Expect(Runtime(&[
                    "set server 443_backend/s1 state maint",
                    "set server 443_backend/s1 addr 0.0.0.0 port 1",
                    "set server 443_backend/s2 state maint",
                    "set server 443_backend/s2 addr 0.0.0.0 port 1",
                ])),
                Then(Outcome::Runtime(Ok(())), None),
                At(500),
                Expect(Reload(&[443], &[])),
                Then(done(), None),
                Expect(Wait(None)),
                InStep(true),
            ]),
        ),
    ];
    for (name, script) in cases {
        run(name, &script);
    }
}

#[test]
fn frontends_come_and_go_within_a_reload_budget() {
    let cases: Vec<(&str, Vec<Do>)> = vec![
        (
            "a new frontend reloads, and bursts wait for min-reload-interval",
            started_then(&[
                At(100),
                Registry(&[(443, &[1, 2]), (8443, &[1])]),
                Expect(Wait(Some(500))),
                Deferred(&[8443]),
                InStep(true),
                At(500),
                Expect(Reload(&[443, 8443], &[8443])),
                Then(done(), None),
                Expect(Wait(None)),
            ]),
        ),
        (
            "a frontend whose last server left stays bound through its grace period",
            started_then(&[
                Registry(&[]),
                Expect(Runtime(&[
                    "set server 443_backend/s1 state maint",
                    "set server 443_backend/s1 addr 0.0.0.0 port 1",
                    "set server 443_backend/s2 state maint",
                    "set server 443_backend/s2 addr 0.0.0.0 port 1",
                ])),
                Then(Outcome::Runtime(Ok(())), None),
                Held(&[443]),
                InStep(true),
                At(1_000),
                Expect(SyncFile),
                Then(Outcome::FileSynced(Ok(())), None),
                Expect(Wait(Some(30_000))),
                At(30_000),
                Expect(Reload(&[], &[])),
                Then(done(), None),
                Held(&[]),
                Expect(Wait(None)),
            ]),
        ),
        (
            "a pool that empties and refills within the grace period costs no reload",
            started_then(&[
                Registry(&[]),
                Expect(Runtime(&[
                    "set server 443_backend/s1 state maint",
                    "set server 443_backend/s1 addr 0.0.0.0 port 1",
                    "set server 443_backend/s2 state maint",
                    "set server 443_backend/s2 addr 0.0.0.0 port 1",
                ])),
                Then(Outcome::Runtime(Ok(())), None),
                At(20_000),
                Registry(&[(443, &[3])]),
                Expect(Runtime(&[
                    "set server 443_backend/s1 addr 198.18.0.3 port 30000",
                    "set server 443_backend/s1 state ready",
                ])),
                Then(Outcome::Runtime(Ok(())), None),
                Held(&[]),
                At(40_000),
                Expect(SyncFile),
                Then(Outcome::FileSynced(Ok(())), None),
                Expect(Wait(None)),
            ]),
        ),
        (
            "a frontend that keeps coming and going waits twice as long each time",
            started_then(&[
                // 8443 comes (reload 1), leaves, is removed after its grace
                // (reload 2, soon after: a strike), comes back (reload 3).
                At(1_000),
                Registry(&[(443, &[1, 2]), (8443, &[1])]),
                Expect(Reload(&[443, 8443], &[8443])),
                Then(done(), None),
                Registry(&[(443, &[1, 2])]),
                Expect(Runtime(&[
                    "set server 8443_backend/s1 state maint",
                    "set server 8443_backend/s1 addr 0.0.0.0 port 1",
                ])),
                Then(Outcome::Runtime(Ok(())), None),
                At(31_000),
                Expect(Reload(&[443], &[])),
                Then(done(), None),
                Registry(&[(443, &[1, 2]), (8443, &[1])]),
                At(31_500),
                // Strike 1: 8443 may cause a reload 1 s after its last.
                Expect(Wait(Some(32_000))),
                Deferred(&[8443]),
                At(32_000),
                Expect(Reload(&[443, 8443], &[8443])),
                Then(done(), None),
                Registry(&[(443, &[1, 2])]),
                Expect(Runtime(&[
                    "set server 8443_backend/s1 state maint",
                    "set server 8443_backend/s1 addr 0.0.0.0 port 1",
                ])),
                Then(Outcome::Runtime(Ok(())), None),
                At(62_000),
                Expect(Reload(&[443], &[])),
                Then(done(), None),
                // Strike 3: 4 s now.
                Registry(&[(443, &[1, 2]), (8443, &[1])]),
                At(62_500),
                Expect(Wait(Some(66_000))),
                // Another frontend's reload carries 8443 along for free.
                Registry(&[(443, &[1, 2]), (8443, &[1]), (25, &[1])]),
                Expect(Reload(&[25, 443, 8443], &[25, 8443])),
                Then(done(), None),
                Expect(Wait(None)),
                InStep(true),
            ]),
        ),
        (
            "too many old workers: the reload waits, and says why",
            started_then(&[
                At(1_000),
                Registry(&[(443, &[1, 2]), (8443, &[1])]),
                Expect(Reload(&[443, 8443], &[8443])),
                Then(Outcome::Installed(Install::Busy { old_workers: 8 }), None),
                Expect(Wait(Some(2_000))),
                Deferred(&[8443]),
                InStep(true),
                At(2_000),
                Expect(Reload(&[443, 8443], &[8443])),
                Then(done(), None),
            ]),
        ),
    ];
    for (name, script) in cases {
        run(name, &script);
    }
}

#[test]
fn haproxy_that_cannot_start_heals_itself() {
    let cases: Vec<(&str, Vec<Do>)> = vec![
        (
            "HAProxy died: start again at once, on a fresh config",
            started_then(&[
                Haproxy(None),
                Expect(Reload(&[443], &[443])),
                Then(done(), None),
                Expect(Wait(None)),
            ]),
        ),
        (
            "another HAProxy runs (restarted by its service): install ours",
            started_then(&[
                Haproxy(Some(7)),
                Expect(Reload(&[443], &[443])),
                Then(done(), None),
                Expect(Wait(None)),
            ]),
        ),
        (
            "a port taken by another process is quarantined and the rest starts",
            started_then(&[
                Registry(&[(443, &[1, 2]), (8443, &[1])]),
                Haproxy(None),
                Expect(Reload(&[443, 8443], &[443, 8443])),
                Then(
                    Outcome::Installed(Install::CannotBind(bind_failed(443))),
                    None,
                ),
                Quarantined(&[443]),
                Expect(Reload(&[8443], &[8443])),
                Then(done(), None),
                InStep(true),
                Expect(Wait(Some(1_000))),
                At(1_000),
                Expect(Probe(&[443])),
                Then(
                    Outcome::Probed(BTreeMap::from([(443, Err("in use".into()))])),
                    None,
                ),
                Expect(Wait(Some(2_000))),
                At(2_000),
                Expect(Probe(&[443])),
                Then(Outcome::Probed(BTreeMap::from([(443, Ok(()))])), None),
                Quarantined(&[]),
                Expect(Reload(&[443, 8443], &[443])),
                Then(done(), None),
            ]),
        ),
        (
            "a start that fails on a port HAProxy names is retried without it, at once",
            started_then(&[
                Haproxy(None),
                Expect(Reload(&[443], &[443])),
                Then(
                    Outcome::Installed(Install::Failed {
                        bind: bind_failed(443),
                        error: "HAProxy exited".into(),
                    }),
                    Some("leaving out the frontends that cannot bind"),
                ),
                Expect(Reload(&[], &[])),
                Then(done(), None),
            ]),
        ),
        (
            "a start that fails for no reason we can fix backs off: 1 s, 2 s, 4 s",
            started_then(&[
                Haproxy(None),
                Expect(Reload(&[443], &[443])),
                Then(
                    Outcome::Installed(Install::Failed {
                        bind: BTreeMap::new(),
                        error: "HAProxy exited with 1".into(),
                    }),
                    Some("exited with 1"),
                ),
                Expect(Wait(Some(1_000))),
                InStep(false),
                At(1_000),
                Expect(Reload(&[443], &[443])),
                Then(
                    Outcome::Installed(Install::TimedOut("no worker within 30 s".into())),
                    Some("30 s"),
                ),
                Expect(Wait(Some(3_000))),
                At(3_000),
                Expect(Reload(&[443], &[443])),
                Then(
                    Outcome::Installed(Install::WriteFailed("disk full".into())),
                    Some("disk full"),
                ),
                Expect(Wait(Some(7_000))),
                At(7_000),
                Expect(Reload(&[443], &[443])),
                Then(done(), None),
                InStep(true),
            ]),
        ),
    ];
    for (name, script) in cases {
        run(name, &script);
    }
}

#[test]
fn a_rejected_config_is_bisected_and_only_the_guilty_are_left_out() {
    let invalid = || Check::Invalid("[ALERT] (1) : config : bad server\n".into());
    let cases: Vec<(&str, Vec<Do>)> = vec![
        (
            "one bad frontend of four is found and quarantined; the others apply",
            vec![
                Registry(&[(25, &[1]), (80, &[2]), (443, &[3]), (8443, &[4])]),
                Expect(Reload(&[25, 80, 443, 8443], &[25, 80, 443, 8443])),
                Then(
                    Outcome::Installed(Install::Rejected(invalid())),
                    Some("looking for the frontends to leave out"),
                ),
                Expect(Checking(&[])),
                Deferred(&[25, 80, 443, 8443]),
                Then(Outcome::Checked(Check::Valid), None),
                Expect(Checking(&[25, 80])),
                Then(Outcome::Checked(Check::Valid), None),
                Expect(Checking(&[443, 8443])),
                Then(Outcome::Checked(invalid()), None),
                Expect(Checking(&[443])),
                Then(Outcome::Checked(Check::Valid), None),
                Expect(Checking(&[8443])),
                Then(Outcome::Checked(invalid()), None),
                Quarantined(&[8443]),
                Expect(Reload(&[25, 80, 443], &[25, 80, 443])),
                Then(done(), None),
                InStep(true),
                // Its servers change: it is tried again.
                Registry(&[(25, &[1]), (80, &[2]), (443, &[3]), (8443, &[5])]),
                At(500),
                Expect(Reload(&[25, 80, 443, 8443], &[8443])),
                Then(done(), None),
            ],
        ),
        (
            "an haproxy that rejects every config blames no frontend and backs off",
            vec![
                Registry(&[(25, &[1]), (80, &[2])]),
                Expect(Reload(&[25, 80], &[25, 80])),
                Then(
                    Outcome::Installed(Install::Rejected(invalid())),
                    Some("rejects"),
                ),
                Expect(Checking(&[])),
                Then(Outcome::Checked(invalid()), Some("no frontend is to blame")),
                Quarantined(&[]),
                Expect(Wait(Some(1_000))),
                At(1_000),
                Expect(Reload(&[25, 80], &[25, 80])),
                Then(
                    Outcome::Installed(Install::Rejected(invalid())),
                    Some("rejects"),
                ),
                Expect(Checking(&[])),
                Then(Outcome::Checked(invalid()), Some("no frontend is to blame")),
                Expect(Wait(Some(3_000))),
            ],
        ),
        (
            "a check that times out is reported as such, and judges nothing",
            vec![
                Registry(&[(25, &[1])]),
                Expect(Reload(&[25], &[25])),
                Then(
                    Outcome::Installed(Install::Rejected(Check::TimedOut(Duration::from_secs(30)))),
                    Some("did not finish within 30 s"),
                ),
                Quarantined(&[]),
                Expect(Wait(Some(1_000))),
            ],
        ),
        (
            "a timeout while bisecting stops the bisection without blame",
            vec![
                Registry(&[(25, &[1]), (80, &[2])]),
                Expect(Reload(&[25, 80], &[25, 80])),
                Then(
                    Outcome::Installed(Install::Rejected(invalid())),
                    Some("rejects"),
                ),
                Expect(Checking(&[])),
                Then(Outcome::Checked(Check::Valid), None),
                Expect(Checking(&[25])),
                Then(
                    Outcome::Checked(Check::CannotRun("haproxy: not found".into())),
                    Some("not found"),
                ),
                Quarantined(&[]),
                Expect(Wait(Some(1_000))),
            ],
        ),
        (
            "invalid only together: nobody is blamed",
            vec![
                Registry(&[(25, &[1]), (80, &[2])]),
                Expect(Reload(&[25, 80], &[25, 80])),
                Then(
                    Outcome::Installed(Install::Rejected(invalid())),
                    Some("rejects"),
                ),
                Expect(Checking(&[])),
                Then(Outcome::Checked(Check::Valid), None),
                Expect(Checking(&[25])),
                Then(Outcome::Checked(Check::Valid), None),
                Expect(Checking(&[80])),
                Then(
                    Outcome::Checked(Check::Valid),
                    Some("no frontend on its own"),
                ),
                Quarantined(&[]),
                Expect(Wait(Some(1_000))),
            ],
        ),
        (
            "server changes still go through the Runtime API while bisecting",
            started_then(&[
                At(1_000),
                Registry(&[(443, &[1, 2]), (80, &[2])]),
                Expect(Reload(&[80, 443], &[80])),
                Then(
                    Outcome::Installed(Install::Rejected(invalid())),
                    Some("rejects"),
                ),
                Registry(&[(443, &[1, 2, 3]), (80, &[2])]),
                Expect(Runtime(&[
                    "set server 443_backend/s3 addr 198.18.0.3 port 30000",
                    "set server 443_backend/s3 state ready",
                ])),
                Then(Outcome::Runtime(Ok(())), None),
                Expect(Checking(&[])),
                Then(Outcome::Checked(Check::Valid), None),
                Expect(Checking(&[80])),
                Then(Outcome::Checked(invalid()), None),
                Expect(Checking(&[443])),
                Then(Outcome::Checked(Check::Valid), None),
                Quarantined(&[80]),
                Expect(Wait(Some(2_000))),
                InStep(true),
            ]),
        ),
    ];
    for (name, script) in cases {
        run(name, &script);
    }
}

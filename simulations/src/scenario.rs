//! Scenarios: lists of steps, built in or read from a TOML file.

use std::time::Duration;

use lbmesh::mesh::transport::{LinkRules, Links};
use rand::Rng;
use rand::rngs::SmallRng;
use serde::{Deserialize, Serialize};

/// Which peer a step acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Pick {
    /// A live peer chosen by the seed.
    Random,
    /// The peer holding the VIP (the lowest-numbered live peer).
    VipHolder,
    /// Peer number N (from 0).
    #[serde(untagged)]
    Index(usize),
}

/// One thing that happens in a run. Every step is followed by the invariant checks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "kebab-case")]
pub enum Step {
    /// `n` new phone-home clients register, each at a peer of its own.
    Clients { n: usize },
    /// Every client calls again (a renewal), failing over past dead peers.
    Renew,
    /// A fraction of the clients withdraw (pod shutdown).
    Delete { fraction: f64 },
    /// A fraction of the clients' nodes get a new IP: new server registered,
    /// old one withdrawn.
    MoveNodes { fraction: f64 },
    /// A peer crashes; `wipe` loses its data directory too.
    Crash { peer: Pick, wipe: bool },
    /// Every crashed peer starts again.
    Restart,
    /// Every peer restarts at once, keeping its data.
    FullRestart,
    /// The peers in `a` and those in `b` cannot reach each other.
    Partition { a: Vec<usize>, b: Vec<usize> },
    /// Messages from `from` to `to` are lost (one way).
    OneWay { from: usize, to: usize },
    /// Every link works again.
    Heal,
    /// Each message is lost with this probability.
    Loss { p: f64 },
    /// Each message is delayed uniformly up to this many milliseconds (reordering them).
    Delay { max_ms: u64 },
    /// A thundering herd: `n` clients register at the same instant.
    Herd { n: usize },
    /// Simulated time passes.
    Sleep { ms: u64 },
    /// Faults heal; the mesh must converge, and the registry must hold
    /// exactly what clients were told.
    Quiet,
    /// A new client registers at a live peer, which crashes the moment it
    /// has answered; `wipe` loses its disk too.
    WriteThenCrash { wipe: bool },
    /// A peer is gone for good, disk and all: it never starts again.
    Lose { peer: Pick },
    /// Within this long, every running peer says it has caught up with the
    /// mesh and holds everything the clients were told.
    CaughtUp { within_ms: u64 },
}

/// How messages travel between the peers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum LinkModel {
    /// Datagrams, as chitchat's UDP.
    #[default]
    Datagrams,
    /// Connections, as lbmesh's QUIC transport.
    Quic,
    /// Connections that outlive a restarted peer until an idle timeout, as
    /// quinn's defaults did before lbmesh noticed dead incarnations.
    QuicIdleTimeoutOnly,
}

impl LinkModel {
    pub fn links(self) -> Links {
        match self {
            LinkModel::Datagrams => Links::Datagrams,
            LinkModel::Quic => Links::Connections(LinkRules::LBMESH),
            LinkModel::QuicIdleTimeoutOnly => Links::Connections(LinkRules::IDLE_TIMEOUT_ONLY),
        }
    }
}

/// A named list of steps, and the clock skew of each peer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Scenario {
    pub name: String,
    /// Clock skew per peer in milliseconds (missing peers: none).
    #[serde(default)]
    pub skew_ms: Vec<i64>,
    /// How messages travel.
    #[serde(default)]
    pub links: LinkModel,
    #[serde(rename = "step")]
    pub steps: Vec<Step>,
}

impl Scenario {
    /// Reads a scenario file (TOML), e.g.
    ///
    /// ```toml
    /// name = "my-partition"
    /// [[step]]
    /// action = "clients"
    /// n = 10
    /// [[step]]
    /// action = "partition"
    /// a = [0]
    /// b = [1, 2]
    /// [[step]]
    /// action = "quiet"
    /// ```
    pub fn from_toml(text: &str) -> anyhow::Result<Scenario> {
        let s: Scenario = toml::from_str(text)?;
        anyhow::ensure!(!s.steps.is_empty(), "scenario {:?} has no steps", s.name);
        Ok(s)
    }
}

pub const BUILT_IN: [&str; 13] = [
    "basic",
    "crash-restart",
    "partition",
    "one-way",
    "lossy",
    "clock-skew",
    "node-ip-change",
    "client-failover",
    "thundering-herd",
    "full-restart",
    "stale-links",
    "disk-lost-after-ack",
    "whole-mesh-restart-one-gone",
];

fn half(peers: usize) -> (Vec<usize>, Vec<usize>) {
    let cut = peers / 2;
    ((0..cut).collect(), (cut..peers).collect())
}

/// A built-in scenario for `peers` peers; the seed varies its details.
pub fn built_in(name: &str, peers: usize, rng: &mut SmallRng) -> Option<Scenario> {
    use Step::*;
    let clients = 4 + rng.random_range(0..6usize);
    let some = |rng: &mut SmallRng| rng.random_range(0.2..0.6);
    let steps = match name {
        "basic" => vec![
            Clients { n: clients },
            Sleep { ms: 500 },
            Renew,
            Delete {
                fraction: some(rng),
            },
            Clients { n: 2 },
            Quiet,
        ],
        "crash-restart" => vec![
            Clients { n: clients },
            Crash {
                peer: Pick::Random,
                wipe: false,
            },
            Clients { n: 3 },
            Delete { fraction: 0.3 },
            Sleep { ms: 1_000 },
            Restart,
            Quiet,
            Crash {
                peer: Pick::Random,
                wipe: true,
            },
            Renew,
            Restart,
            Quiet,
        ],
        "partition" => {
            let (a, b) = half(peers);
            vec![
                Clients { n: clients },
                Sleep { ms: 500 },
                Partition { a, b },
                Clients { n: 3 },
                Delete {
                    fraction: some(rng),
                },
                Renew,
                Sleep { ms: 2_000 },
                Heal,
                Quiet,
            ]
        }
        "one-way" => vec![
            Clients { n: clients },
            OneWay { from: 0, to: 1 },
            OneWay {
                from: 1,
                to: 2 % peers,
            },
            Clients { n: 3 },
            Delete {
                fraction: some(rng),
            },
            Sleep { ms: 2_000 },
            Quiet,
        ],
        "lossy" => vec![
            Loss { p: 0.3 },
            Delay { max_ms: 200 },
            Clients { n: clients },
            Renew,
            Delete {
                fraction: some(rng),
            },
            Sleep { ms: 2_000 },
            Quiet,
        ],
        "clock-skew" => {
            let (a, b) = half(peers);
            vec![
                Clients { n: clients },
                Sleep { ms: 500 },
                Partition { a, b },
                Delete { fraction: 0.5 },
                Clients { n: 3 },
                Sleep { ms: 1_000 },
                Heal,
                Quiet,
                Renew,
                Quiet,
            ]
        }
        "node-ip-change" => vec![
            Clients { n: clients },
            Sleep { ms: 500 },
            MoveNodes {
                fraction: some(rng),
            },
            Renew,
            Quiet,
            MoveNodes { fraction: 1.0 },
            Quiet,
        ],
        "client-failover" => vec![
            Clients { n: clients },
            Crash {
                peer: Pick::VipHolder,
                wipe: false,
            },
            Crash {
                peer: Pick::Random,
                wipe: false,
            },
            Renew,
            Clients { n: 3 },
            Delete { fraction: 0.3 },
            Quiet,
            Restart,
            Quiet,
        ],
        "thundering-herd" => vec![Herd { n: 200 }, Renew, Quiet],
        "full-restart" => vec![
            Clients { n: clients },
            Quiet,
            FullRestart,
            Quiet,
            Delete { fraction: 0.5 },
            Quiet,
        ],
        // A peer restarts while the others still hold connections to its
        // previous incarnation: it must hear them within a second.
        "stale-links" => vec![
            Clients { n: clients },
            Quiet,
            Crash {
                peer: Pick::Random,
                wipe: false,
            },
            Sleep { ms: 1_000 },
            Clients { n: 3 },
            Delete { fraction: 0.2 },
            Restart,
            CaughtUp { within_ms: 1_000 },
            Clients { n: 2 },
            Quiet,
            Crash {
                peer: Pick::VipHolder,
                wipe: true,
            },
            Sleep { ms: 500 },
            Restart,
            CaughtUp { within_ms: 1_000 },
            Quiet,
        ],
        "disk-lost-after-ack" => vec![
            Clients { n: clients },
            Quiet,
            WriteThenCrash { wipe: true },
            Sleep { ms: 500 },
            Restart,
            CaughtUp { within_ms: 2_000 },
            Quiet,
            WriteThenCrash { wipe: true },
            WriteThenCrash { wipe: false },
            Restart,
            Quiet,
        ],
        "whole-mesh-restart-one-gone" => vec![
            Clients { n: clients },
            Quiet,
            Lose { peer: Pick::Random },
            Clients { n: 3 },
            Delete { fraction: 0.2 },
            FullRestart,
            CaughtUp { within_ms: 15_000 },
            Quiet,
            Renew,
            Quiet,
        ],
        _ => return None,
    };
    let links = if name == "stale-links" {
        LinkModel::Quic
    } else {
        LinkModel::Datagrams
    };
    // Clocks a few seconds apart in the skew scenario; within a second elsewhere.
    let spread = if name == "clock-skew" { 3_000 } else { 300 };
    let skew_ms = (0..peers)
        .map(|_| rng.random_range(-spread..=spread))
        .collect();
    Some(Scenario {
        name: name.into(),
        skew_ms,
        links,
        steps,
    })
}

/// How long a quiet step waits for the mesh to agree before it is a violation.
pub const CONVERGE_WITHIN: Duration = Duration::from_secs(60);

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    use super::*;

    #[test]
    fn every_built_in_scenario_exists_and_files_parse() {
        let mut rng = SmallRng::seed_from_u64(1);
        for name in BUILT_IN {
            assert!(built_in(name, 5, &mut rng).is_some(), "{name}");
        }
        let s = Scenario::from_toml(
            "name = \"mine\"\nskew_ms = [0, 2000]\n[[step]]\naction = \"clients\"\nn = 3\n\
             [[step]]\naction = \"crash\"\npeer = \"vip-holder\"\nwipe = false\n\
             [[step]]\naction = \"crash\"\npeer = 2\nwipe = true\n[[step]]\naction = \"quiet\"\n",
        )
        .unwrap();
        assert_eq!(s.steps.len(), 4);
        assert_eq!(
            s.steps[2],
            Step::Crash {
                peer: Pick::Index(2),
                wipe: true
            }
        );
        assert!(Scenario::from_toml("name = \"x\"\n[[step]]\naction = \"explode\"\n").is_err());
        let s = Scenario::from_toml(
            "name = \"q\"\nlinks = \"quic\"\n[[step]]\naction = \"write-then-crash\"\nwipe = true\n\
             [[step]]\naction = \"lose\"\npeer = \"random\"\n[[step]]\naction = \"caught-up\"\nwithin_ms = 900\n",
        )
        .unwrap();
        assert_eq!(s.links, LinkModel::Quic);
        assert_eq!(s.steps[2], Step::CaughtUp { within_ms: 900 });
    }
}

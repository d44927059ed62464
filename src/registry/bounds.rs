//! Which served servers fit this peer's own size bounds (`max-frontends`,
//! `max-servers-per-frontend`, `max-servers`). Own clients are refused at the
//! door when a bound is reached; entries other peers accepted arrive by
//! gossip and are left out of what is served instead. Pure and
//! deterministic: every peer with the same bounds and the same entries
//! leaves out the same ones, the newest first.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use super::Limits;
use super::types::Key;

/// The bound an entry lies beyond.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum OverBound {
    #[error(
        "frontend port {frontend} is beyond this peer's registry.max-frontends ({max}): older frontends fill it"
    )]
    Frontends { frontend: u16, max: usize },
    #[error(
        "frontend port {frontend} already has {max} older servers (this peer's registry.max-servers-per-frontend)"
    )]
    ServersPerFrontend { frontend: u16, max: usize },
    #[error("{max} older servers fill this peer's registry.max-servers")]
    Servers { max: usize },
}

impl OverBound {
    /// A stable label for metrics and JSON.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Frontends { .. } => "max_frontends",
            Self::ServersPerFrontend { .. } => "max_servers_per_frontend",
            Self::Servers { .. } => "max_servers",
        }
    }
}

/// How much of a bound is used: servers in all, frontends, and servers of
/// one frontend.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Occupancy {
    pub servers: usize,
    pub frontends: usize,
    pub on_frontend: usize,
}

impl Occupancy {
    /// Why one more server on a frontend with `on_frontend` servers would not
    /// fit, in the words of the "registry full" answer.
    pub fn full(&self, limits: &Limits, frontend: u16) -> Option<String> {
        if self.servers >= limits.max_servers {
            Some(format!("{} servers served (max-servers)", self.servers))
        } else if self.on_frontend >= limits.max_servers_per_frontend {
            Some(format!(
                "frontend port {frontend} has {} servers (max-servers-per-frontend)",
                self.on_frontend
            ))
        } else if self.on_frontend == 0 && self.frontends >= limits.max_frontends {
            Some(format!(
                "{} frontends served (max-frontends)",
                self.frontends
            ))
        } else {
            None
        }
    }
}

/// Whether servers grouped by frontend fit every bound as they are.
pub fn fits(limits: &Limits, per_frontend: impl IntoIterator<Item = usize>) -> bool {
    let (mut frontends, mut servers) = (0, 0);
    for n in per_frontend {
        if n > limits.max_servers_per_frontend {
            return false;
        }
        frontends += 1;
        servers += n;
    }
    frontends <= limits.max_frontends && servers <= limits.max_servers
}

/// The servers to leave out of `candidates` (each frontend's servers of its
/// owner, with their `since_ms`) so that what is left fits `limits`.
/// Frontends are kept oldest claim first, and within a frontend servers
/// oldest first (ties by port and address): what was served first stays
/// served, and a flood of new entries cannot push it out.
pub fn leave_out(
    limits: &Limits,
    candidates: &BTreeMap<u16, Vec<(u64, SocketAddr)>>,
) -> BTreeMap<Key, OverBound> {
    let mut out = BTreeMap::new();
    if fits(limits, candidates.values().map(Vec::len)) {
        return out;
    }
    let mut order: Vec<(u64, u16)> = candidates
        .iter()
        .filter_map(|(port, servers)| Some((servers.iter().map(|s| s.0).min()?, *port)))
        .collect();
    order.sort_unstable();
    let (mut frontends, mut servers) = (0, 0);
    for (_, frontend) in order {
        let mut pool = candidates[&frontend].clone();
        pool.sort_unstable();
        let mut kept = 0;
        for (_, server) in pool {
            let why = if kept == 0 && frontends >= limits.max_frontends {
                Some(OverBound::Frontends {
                    frontend,
                    max: limits.max_frontends,
                })
            } else if kept >= limits.max_servers_per_frontend {
                Some(OverBound::ServersPerFrontend {
                    frontend,
                    max: limits.max_servers_per_frontend,
                })
            } else if servers >= limits.max_servers {
                Some(OverBound::Servers {
                    max: limits.max_servers,
                })
            } else {
                None
            };
            match why {
                Some(why) => {
                    out.insert(Key { frontend, server }, why);
                }
                None => {
                    if kept == 0 {
                        frontends += 1;
                    }
                    kept += 1;
                    servers += 1;
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(frontends: usize, per: usize, servers: usize) -> Limits {
        Limits {
            max_frontends: frontends,
            max_servers_per_frontend: per,
            max_servers: servers,
            ..Limits::default()
        }
    }

    fn addr(i: u8) -> SocketAddr {
        SocketAddr::from(([198, 18, 0, i], 80))
    }

    /// (frontend, [(since, server)]) in any order.
    fn pools(spec: &[(u16, &[(u64, u8)])]) -> Pools {
        spec.iter()
            .map(|(f, s)| (*f, s.iter().map(|(t, i)| (*t, addr(*i))).collect()))
            .collect()
    }

    type Pools = BTreeMap<u16, Vec<(u64, SocketAddr)>>;
    /// (frontend, last octet of the server, reason)
    type Left = Vec<(u16, u8, &'static str)>;

    fn left(out: &BTreeMap<Key, OverBound>) -> Left {
        out.iter()
            .map(|(k, why)| {
                let std::net::IpAddr::V4(v4) = k.server.ip() else {
                    unreachable!()
                };
                (k.frontend, v4.octets()[3], why.label())
            })
            .collect()
    }

    #[test]
    fn the_bounds_table() {
        // (limits, candidates, left out)
        let cases: Vec<(Limits, Pools, Left)> = vec![
            // Within every bound: nothing left out.
            (
                limits(2, 2, 4),
                pools(&[(80, &[(5, 1), (6, 2)]), (81, &[(1, 3)])]),
                vec![],
            ),
            // The newest frontend goes, whatever its port.
            (
                limits(2, 9, 99),
                pools(&[(80, &[(9, 1)]), (81, &[(1, 2)]), (82, &[(5, 3), (20, 4)])]),
                vec![(80, 1, "max_frontends")],
            ),
            // Equal ages: the higher port goes.
            (
                limits(1, 9, 99),
                pools(&[(80, &[(1, 1)]), (81, &[(1, 2)])]),
                vec![(81, 2, "max_frontends")],
            ),
            // The newest servers of a frontend go; ties by address.
            (
                limits(9, 2, 99),
                pools(&[(80, &[(3, 1), (1, 2), (2, 4), (2, 3)])]),
                vec![
                    (80, 1, "max_servers_per_frontend"),
                    (80, 4, "max_servers_per_frontend"),
                ],
            ),
            // The total bound fills with the oldest frontends' servers; a
            // frontend left without a server does not count as served.
            (
                limits(2, 9, 3),
                pools(&[
                    (80, &[(1, 1), (2, 2)]),
                    (81, &[(3, 3), (4, 4)]),
                    (82, &[(9, 5)]),
                ]),
                vec![(81, 4, "max_servers"), (82, 5, "max_frontends")],
            ),
            (
                limits(3, 9, 2),
                pools(&[(80, &[(1, 1), (2, 2)]), (81, &[(3, 3)])]),
                vec![(81, 3, "max_servers")],
            ),
        ];
        for (i, (l, c, want)) in cases.into_iter().enumerate() {
            assert_eq!(left(&leave_out(&l, &c)), want, "case {i}");
        }
    }

    #[test]
    fn what_is_kept_always_fits_and_the_order_of_arrival_does_not_matter() {
        let l = limits(3, 2, 5);
        let mut c = Pools::new();
        for i in 0..40u8 {
            c.entry(1000 + u16::from(i % 7))
                .or_default()
                .push((u64::from(i) * 37 % 11, addr(i)));
        }
        let out = leave_out(&l, &c);
        let mut reversed = c.clone();
        for v in reversed.values_mut() {
            v.reverse();
        }
        assert_eq!(leave_out(&l, &reversed), out);
        let kept: BTreeMap<u16, usize> = c
            .iter()
            .map(|(f, s)| {
                let n = s
                    .iter()
                    .filter(|(_, a)| {
                        !out.contains_key(&Key {
                            frontend: *f,
                            server: *a,
                        })
                    })
                    .count();
                (*f, n)
            })
            .filter(|(_, n)| *n > 0)
            .collect();
        assert!(fits(&l, kept.values().copied()), "{kept:?}");
        assert_eq!(kept.values().sum::<usize>(), 5);
    }
}

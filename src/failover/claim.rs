//! What a peer publishes about its VRRP state: `STATE INSTANCE SINCE_MS`,
//! e.g. `MASTER VI_LBMESH 1732838400123` (since when, wall-clock ms). Peers
//! of earlier versions publish only `STATE INSTANCE`; their claims parse
//! with `since_ms` 0.

use crate::keepalived::VrrpState;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    pub state: VrrpState,
    pub instance: String,
    /// When this peer entered `state` (its wall clock, ms).
    pub since_ms: u64,
}

impl Claim {
    /// Parses a gossiped claim; None for anything malformed (a peer is
    /// outside input).
    pub fn parse(s: &str) -> Option<Claim> {
        let mut words = s.split(' ');
        let state = words.next()?.parse().ok()?;
        let instance = words.next()?;
        if instance.is_empty()
            || instance.len() > 64
            || !instance
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
        {
            return None;
        }
        let since_ms = match words.next() {
            None => 0,
            Some(w) => w.parse().ok()?,
        };
        if words.next().is_some() {
            return None;
        }
        Some(Claim {
            state,
            instance: instance.to_owned(),
            since_ms,
        })
    }
}

impl std::fmt::Display for Claim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {} {}", self.state, self.instance, self.since_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claims_round_trip_and_bad_ones_are_refused() {
        let c = Claim {
            state: VrrpState::Master,
            instance: "VI_1".into(),
            since_ms: 1_732_838_400_123,
        };
        assert_eq!(Claim::parse(&c.to_string()), Some(c));
        assert_eq!(
            Claim::parse("BACKUP VI_1").map(|c| (c.state, c.since_ms)),
            Some((VrrpState::Backup, 0))
        );
        for bad in [
            "",
            "MASTER",
            "KING VI_1 1",
            "MASTER VI;1 1",
            "MASTER VI_1 soon",
            "MASTER VI_1 1 2",
            "MASTER  1",
        ] {
            assert_eq!(Claim::parse(bad), None, "{bad:?}");
        }
    }
}

//! Which frontend ports clients may claim: allowed ranges minus ports that are never allowed.

use std::collections::BTreeSet;
use std::fmt;
use std::ops::RangeInclusive;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// SSH is never handed to a client: taking it over would lock operators out.
pub const SSH_PORT: u16 = 22;

/// An inclusive port range written `443` or `8000-8999`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortRange(pub RangeInclusive<u16>);

impl FromStr for PortRange {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let num = |t: &str| -> Result<u16, String> {
            match t.trim().parse::<u16>() {
                Ok(p) if p >= 1 => Ok(p),
                _ => Err(format!(
                    "port range {s:?}: {t:?} is not a port from 1 to 65535"
                )),
            }
        };
        let range = match s.split_once('-') {
            Some((a, b)) => num(a)?..=num(b)?,
            None => {
                let p = num(s)?;
                p..=p
            }
        };
        if range.start() > range.end() {
            return Err(format!("port range {s:?} ends before it starts"));
        }
        Ok(Self(range))
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.start() == self.0.end() {
            write!(f, "{}", self.0.start())
        } else {
            write!(f, "{}-{}", self.0.start(), self.0.end())
        }
    }
}

impl Serialize for PortRange {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for PortRange {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Num(u32),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Num(n) => n.to_string().parse().map_err(serde::de::Error::custom),
            Raw::Text(t) => t.parse().map_err(serde::de::Error::custom),
        }
    }
}

/// The frontend-port policy.
#[derive(Debug, Clone)]
pub struct PortPolicy {
    allowed: Vec<PortRange>,
    reserved: BTreeSet<u16>,
}

/// Why a port was refused; the message tells the client what is allowed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error("port {0} is reserved (SSH or one of lbmesh's own ports)")]
    Reserved(u16),
    #[error("port {port} is not in the allowed frontend ports ({allowed})")]
    NotAllowed { port: u16, allowed: String },
}

impl PortPolicy {
    /// `allowed` empty means every port; `own_ports` are the daemon's listeners.
    pub fn new(allowed: Vec<PortRange>, own_ports: impl IntoIterator<Item = u16>) -> Self {
        let mut reserved: BTreeSet<u16> = own_ports.into_iter().collect();
        reserved.insert(SSH_PORT);
        Self { allowed, reserved }
    }

    pub fn check(&self, port: u16) -> Result<(), PolicyError> {
        if self.reserved.contains(&port) {
            return Err(PolicyError::Reserved(port));
        }
        if !self.allowed.is_empty() && !self.allowed.iter().any(|r| r.0.contains(&port)) {
            return Err(PolicyError::NotAllowed {
                port,
                allowed: self
                    .allowed
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
        Ok(())
    }
}

/// The allowed ranges and the reserved ports, for digests and messages.
impl fmt::Display for PortPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let allowed: Vec<String> = self.allowed.iter().map(ToString::to_string).collect();
        let reserved: Vec<String> = self.reserved.iter().map(ToString::to_string).collect();
        write!(
            f,
            "allowed [{}] reserved [{}]",
            allowed.join(", "),
            reserved.join(", ")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_parse() {
        assert_eq!("443".parse::<PortRange>().unwrap().0, 443..=443);
        assert_eq!("8000-8999".parse::<PortRange>().unwrap().0, 8000..=8999);
        for bad in ["0", "65536", "9-1", "a-b", "", "1-", "-5"] {
            assert!(bad.parse::<PortRange>().is_err(), "{bad}");
        }
    }

    #[test]
    fn policy_table() {
        let open = PortPolicy::new(vec![], [9000, 7946]);
        let narrow = PortPolicy::new(
            vec!["443".parse().unwrap(), "8000-8999".parse().unwrap()],
            [9000],
        );
        for (policy, port, ok) in [
            (&open, 443, true),
            (&open, 1, true),
            (&open, 22, false),
            (&open, 9000, false),
            (&open, 7946, false),
            (&narrow, 443, true),
            (&narrow, 8443, true),
            (&narrow, 80, false),
            (&narrow, 9000, false),
            (&narrow, 22, false),
        ] {
            assert_eq!(policy.check(port).is_ok(), ok, "{port}");
        }
        assert!(
            narrow
                .check(80)
                .unwrap_err()
                .to_string()
                .contains("443, 8000-8999")
        );
    }
}

//! What keepalived reports: a VRRP state and the notification that carries it
//! (notify script arguments or a notify-FIFO line), parsed and validated.

use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A VRRP state as keepalived names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum VrrpState {
    Master,
    Backup,
    Fault,
    Stop,
}

impl FromStr for VrrpState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "MASTER" => Ok(Self::Master),
            "BACKUP" => Ok(Self::Backup),
            "FAULT" => Ok(Self::Fault),
            "STOP" | "DELETED" => Ok(Self::Stop),
            _ => Err(format!(
                "unknown VRRP state {}: expected MASTER, BACKUP, FAULT or STOP",
                crate::registry::types::quoted(s)
            )),
        }
    }
}

impl std::fmt::Display for VrrpState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Master => "MASTER",
            Self::Backup => "BACKUP",
            Self::Fault => "FAULT",
            Self::Stop => "STOP",
        })
    }
}

/// One notification from keepalived: `TYPE NAME STATE [PRIORITY]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notification {
    /// `INSTANCE` or `GROUP`.
    pub kind: String,
    /// The vrrp_instance (or group) name.
    pub name: String,
    pub state: VrrpState,
    #[serde(default)]
    pub priority: Option<u8>,
}

pub(super) fn check_word(what: &str, s: &str) -> Result<(), String> {
    if s.is_empty()
        || s.len() > 64
        || !s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
    {
        return Err(format!(
            "{what} must be 1 to 64 characters from A-Z a-z 0-9 _ . -, got {}",
            crate::registry::types::quoted(s)
        ));
    }
    Ok(())
}

impl Notification {
    pub fn new(
        kind: &str,
        name: &str,
        state: &str,
        priority: Option<&str>,
    ) -> Result<Self, String> {
        let kind = kind.to_ascii_uppercase();
        if kind != "INSTANCE" && kind != "GROUP" {
            return Err(format!(
                "unknown notification type {}: expected INSTANCE or GROUP",
                crate::registry::types::quoted(&kind)
            ));
        }
        check_word("the instance name", name)?;
        let priority = match priority {
            None => None,
            Some(p) => Some(p.parse::<u8>().map_err(|_| {
                format!(
                    "priority {} is not 0 to 255",
                    crate::registry::types::quoted(p)
                )
            })?),
        };
        Ok(Self {
            kind,
            name: name.to_owned(),
            state: state.parse()?,
            priority,
        })
    }

    /// Parses a notify-FIFO line: `INSTANCE "VI_1" MASTER 100`.
    pub fn from_fifo_line(line: &str) -> Result<Self, String> {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            [kind, name, state] => Self::new(kind, name.trim_matches('"'), state, None),
            [kind, name, state, prio, ..] => {
                Self::new(kind, name.trim_matches('"'), state, Some(prio))
            }
            _ => Err(format!(
                "not a keepalived notification: {}",
                crate::registry::types::quoted(line)
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notifications_parse() {
        assert_eq!(
            Notification::from_fifo_line("INSTANCE \"VI_1\" MASTER 100").unwrap(),
            Notification {
                kind: "INSTANCE".into(),
                name: "VI_1".into(),
                state: VrrpState::Master,
                priority: Some(100)
            }
        );
        assert_eq!(
            Notification::new("INSTANCE", "VI_1", "BACKUP", None)
                .unwrap()
                .state,
            VrrpState::Backup
        );
        for bad in [
            "",
            "INSTANCE VI_1",
            "INSTANCE VI_1 KING 1",
            "HOST VI_1 MASTER",
            "INSTANCE VI;1 MASTER",
            "INSTANCE VI_1 MASTER 999",
        ] {
            assert!(Notification::from_fifo_line(bad).is_err(), "{bad:?}");
        }
    }
}

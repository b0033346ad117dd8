//! Agents: names and the phases an agent goes through on its way to a tenant's node.

use std::fmt;

use crate::{Error, Result};

/// An agent's name: a DNS-1123 label (it becomes a cluster resource name).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AgentName(String);

impl AgentName {
    /// Validates a DNS-1123 label: 1 to 63 lower-case letters, digits or hyphens, starting
    /// and ending with a letter or digit.
    ///
    /// # Errors
    /// [`Error::InvalidRequest`] otherwise.
    pub fn parse(raw: &str) -> Result<Self> {
        let bytes = raw.as_bytes();
        let edge_ok = |b: Option<&u8>| b.is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
        let ok = raw.len() <= 63
            && edge_ok(bytes.first())
            && edge_ok(bytes.last())
            && bytes.iter().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-');
        if ok {
            Ok(Self(raw.to_owned()))
        } else {
            Err(Error::invalid(
                "agent name must be a DNS-1123 label: at most 63 lower-case letters, digits or '-', starting and ending with a letter or digit",
            ))
        }
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for AgentName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Where an agent stands on its tenant's node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AgentPhase {
    Pending,
    Deploying,
    Running,
    Failed,
    Stopped,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_names_are_dns_labels() {
        for good in ["a", "support-bot", "x1", &"a".repeat(63)] {
            assert!(AgentName::parse(good).is_ok(), "{good}");
        }
        for bad in ["", "-a", "a-", "Support", "a_b", "a.b", &"a".repeat(64)] {
            assert!(AgentName::parse(bad).is_err(), "{bad}");
        }
    }
}

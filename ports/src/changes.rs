//! Changes that replicas sharing one database tell each other about, so that what each
//! keeps in memory (API keys, users' session state, tenants, agents) is dropped when the
//! stored record changes, and so that a leader's loop can be woken. A [`Change`] names
//! what changed, never a secret: an API key is named by its digest.
//!
//! [`LocalChangeFeed`] carries changes within one process: enough where only one replica
//! can use the database (SQLite), and for tests.

use std::fmt;

use async_trait::async_trait;
use tokio::sync::broadcast;

use crate::Result;
use crate::agents::AgentName;
use crate::identity::UserId;
use crate::ports::ChangeFeed;
use crate::tenancy::TenantId;
use crate::tokens::{FamilyId, SecretDigest};

/// Something that changed in the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// An API key was revoked (deleted).
    KeyRevoked { tenant: TenantId, key: SecretDigest },
    /// A tenant was deleted, with its keys and agents.
    TenantDeleted { tenant: TenantId },
    /// A tenant's stored record changed.
    TenantChanged { tenant: TenantId },
    /// Every session of a user ended (its access tokens issued before now are refused).
    SessionsEnded { user: UserId },
    /// One session of a user (a refresh-token family) ended: logged out, or revoked when a
    /// rotated refresh token was presented again. Its access tokens are refused.
    SessionRevoked { user: UserId, session: FamilyId },
    /// An agent was registered, updated or deleted.
    AgentChanged { tenant: TenantId, name: AgentName },
    /// Changes may have been missed (the feed lost its connection): forget everything
    /// derived from the store.
    Missed,
}

impl fmt::Display for Change {
    /// One line: a word naming the kind, then its fields separated by spaces. What
    /// [`Change::parse`] reads back.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::KeyRevoked { tenant, key } => write!(f, "key_revoked {tenant} {key}"),
            Self::TenantDeleted { tenant } => write!(f, "tenant_deleted {tenant}"),
            Self::TenantChanged { tenant } => write!(f, "tenant_changed {tenant}"),
            Self::SessionsEnded { user } => write!(f, "sessions_ended {user}"),
            Self::SessionRevoked { user, session } => write!(f, "session_revoked {user} {session}"),
            Self::AgentChanged { tenant, name } => write!(f, "agent_changed {tenant} {name}"),
            Self::Missed => f.write_str("missed"),
        }
    }
}

impl Change {
    /// Reads what [`fmt::Display`] wrote; `None` for anything else (a newer replica's kind
    /// of change is for it to know).
    pub fn parse(text: &str) -> Option<Self> {
        let mut words = text.split(' ');
        let kind = words.next()?;
        let mut next = || words.next();
        let change = match kind {
            "key_revoked" => Self::KeyRevoked { tenant: TenantId::parse(next()?).ok()?, key: SecretDigest::from_hex(next()?).ok()? },
            "tenant_deleted" => Self::TenantDeleted { tenant: TenantId::parse(next()?).ok()? },
            "tenant_changed" => Self::TenantChanged { tenant: TenantId::parse(next()?).ok()? },
            "sessions_ended" => Self::SessionsEnded { user: UserId::parse(next()?).ok()? },
            "session_revoked" => Self::SessionRevoked { user: UserId::parse(next()?).ok()?, session: FamilyId::parse(next()?).ok()? },
            "agent_changed" => Self::AgentChanged { tenant: TenantId::parse(next()?).ok()?, name: AgentName::parse(next()?).ok()? },
            "missed" => Self::Missed,
            _ => return None,
        };
        next().is_none().then_some(change)
    }
}

/// How many changes a slow subscriber may fall behind before it is told it missed some.
pub const FEED_BACKLOG: usize = 1024;

/// Changes within one process: every subscriber receives what is published, in order.
pub struct LocalChangeFeed {
    sender: broadcast::Sender<Change>,
}

impl Default for LocalChangeFeed {
    fn default() -> Self {
        Self { sender: broadcast::channel(FEED_BACKLOG).0 }
    }
}

impl LocalChangeFeed {
    /// Hands `change` to every current subscriber (none is fine).
    pub fn send(&self, change: Change) {
        let _ = self.sender.send(change);
    }

    /// What is sent from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Change> {
        self.sender.subscribe()
    }
}

#[async_trait]
impl ChangeFeed for LocalChangeFeed {
    async fn publish(&self, change: &Change) -> Result<()> {
        self.send(change.clone());
        Ok(())
    }

    fn subscribe(&self) -> broadcast::Receiver<Change> {
        LocalChangeFeed::subscribe(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_read_back_as_written() {
        let (tenant, user) = (TenantId::generate(), UserId::generate());
        let changes = [
            Change::KeyRevoked { tenant, key: SecretDigest::of("nxk_x") },
            Change::TenantDeleted { tenant },
            Change::TenantChanged { tenant },
            Change::SessionsEnded { user },
            Change::SessionRevoked { user, session: FamilyId::generate() },
            Change::AgentChanged { tenant, name: AgentName::parse("bot").unwrap() },
            Change::Missed,
        ];
        for change in changes {
            assert_eq!(Change::parse(&change.to_string()), Some(change));
        }
        for garbage in [
            "",
            "missed extra",
            "tenant_deleted",
            "tenant_deleted t_0",
            "who_knows t_1",
            "sessions_ended usr_zz",
            "session_revoked usr_00000000000000000000000000000000 zz",
        ] {
            assert_eq!(Change::parse(garbage), None, "{garbage:?}");
        }
    }

    #[tokio::test]
    async fn local_subscribers_receive_in_order() {
        let feed = LocalChangeFeed::default();
        feed.send(Change::Missed);
        let mut receiver = feed.subscribe();
        let user = UserId::generate();
        feed.send(Change::SessionsEnded { user });
        feed.send(Change::Missed);
        assert_eq!(receiver.recv().await.unwrap(), Change::SessionsEnded { user });
        assert_eq!(receiver.recv().await.unwrap(), Change::Missed);
    }
}

//! Tenants (the unit of isolation: a namespace, a node, agents and API keys) and the
//! tenant-scoped API keys that programmatic clients present.

use std::fmt;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::identity::{DisplayName, UserId, short_text};
use crate::tokens::SecretDigest;
use crate::{Error, Result};

/// A tenant's id; shown to clients as `t_<32 hex digits>`. The same uuid names its
/// cluster resources (`tenant-<uuid>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TenantId(Uuid);

impl TenantId {
    const PREFIX: &'static str = "t_";
    const CR_PREFIX: &'static str = "tenant-";

    /// A new random id.
    pub fn generate() -> Self {
        Self(Uuid::new_v4())
    }

    /// Wraps a stored uuid.
    pub fn from_uuid(id: Uuid) -> Self {
        Self(id)
    }

    /// The uuid behind the id, as stored.
    pub fn as_uuid(&self) -> Uuid {
        self.0
    }

    /// Parses the client form `t_<hex>`.
    ///
    /// # Errors
    /// [`Error::InvalidRequest`] when the text is not a tenant id.
    pub fn parse(text: &str) -> Result<Self> {
        text.strip_prefix(Self::PREFIX)
            .filter(|hex| hex.len() == 32 && hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
            .and_then(|hex| Uuid::try_parse(hex).ok())
            .map(Self)
            .ok_or_else(|| Error::invalid("malformed tenant id: expected t_ and 32 lower-case hex digits"))
    }

    /// The name of the tenant's custom resource and namespace: `tenant-<uuid>`.
    pub fn cr_name(&self) -> String {
        format!("{}{}", Self::CR_PREFIX, self.0.hyphenated())
    }

    /// The tenant a custom resource or namespace name belongs to: the inverse of
    /// [`TenantId::cr_name`], so only its exact form (`tenant-` and a lower-case hyphenated
    /// uuid) names a tenant.
    pub fn from_cr_name(name: &str) -> Option<Self> {
        let id = Self(Uuid::try_parse(name.strip_prefix(Self::CR_PREFIX)?).ok()?);
        (id.cr_name() == name).then_some(id)
    }
}

impl fmt::Display for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", Self::PREFIX, self.0.simple())
    }
}

/// What the tenant's node runs as (`ASTROMESH_ROLE`), e.g. `full`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeProfile(String);

impl NodeProfile {
    /// The profile a tenant gets when none is asked for.
    pub const DEFAULT: &'static str = "full";

    /// Validates a profile: a lower-case word of letters, digits and hyphens, at most 63 long.
    ///
    /// # Errors
    /// [`Error::InvalidRequest`] otherwise.
    pub fn parse(raw: &str) -> Result<Self> {
        let ok = !raw.is_empty() && raw.len() <= 63 && raw.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if ok { Ok(Self(raw.to_owned())) } else { Err(Error::invalid("nodeProfile must be a lower-case word of letters, digits and hyphens")) }
    }

    /// The profile.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for NodeProfile {
    fn default() -> Self {
        Self(Self::DEFAULT.to_owned())
    }
}

/// Where a tenant's provisioning stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TenantPhase {
    Pending,
    Provisioning,
    Ready,
    Error,
}

impl TenantPhase {
    /// Every phase, in the order a tenant goes through them.
    pub const ALL: [Self; 4] = [Self::Pending, Self::Provisioning, Self::Ready, Self::Error];

    /// Its name, as the API shows it and stores keep it: `Pending`, `Provisioning`, `Ready`, `Error`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "Pending",
            Self::Provisioning => "Provisioning",
            Self::Ready => "Ready",
            Self::Error => "Error",
        }
    }

    /// The phase named `name` ([`TenantPhase::as_str`]); `None` for any other text.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|phase| phase.as_str() == name)
    }
}

/// A tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tenant {
    pub id: TenantId,
    /// The user who created it and alone manages it.
    pub owner: UserId,
    pub display_name: DisplayName,
    pub node_profile: NodeProfile,
    /// Quota: how many agents it may run.
    pub max_agents: u32,
    pub created_at: DateTime<Utc>,
}

/// What the cluster reports of a tenant's runtime resources.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantStatus {
    pub phase: TenantPhase,
    /// The namespace holding its resources, once provisioned.
    pub namespace: Option<String>,
    /// Where its astromesh-node answers, once provisioned.
    pub node_endpoint: Option<String>,
    /// Why it is in `Error`, if it is.
    pub message: Option<String>,
}

impl TenantStatus {
    /// Not provisioned (yet).
    pub fn pending() -> Self {
        Self { phase: TenantPhase::Pending, namespace: None, node_endpoint: None, message: None }
    }
}

/// A tenant-scoped API key's label: trimmed, 1 to 100 characters, no control characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyLabel(String);

impl KeyLabel {
    /// Validates a label.
    ///
    /// # Errors
    /// [`Error::InvalidRequest`] when it is blank, too long or holds control characters.
    pub fn parse(raw: &str) -> Result<Self> {
        short_text(raw, "label").map(Self)
    }

    /// The label.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// What an API key may do in its tenant.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum KeyScope {
    /// Everything a tenant-scoped caller may do (the default).
    #[default]
    Write,
    /// Reads only: `GET` routes; anything else is refused.
    Read,
}

impl KeyScope {
    /// `write` or `read`, as stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Write => "write",
            Self::Read => "read",
        }
    }

    /// The scope named `write` or `read`.
    ///
    /// # Errors
    /// [`Error::InvalidRequest`] for any other name.
    pub fn parse(raw: &str) -> Result<Self> {
        match raw {
            "write" => Ok(Self::Write),
            "read" => Ok(Self::Read),
            _ => Err(Error::invalid("scope must be write or read")),
        }
    }
}

/// A tenant-scoped API key as stored: its digest and label, never its value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKey {
    pub digest: SecretDigest,
    pub tenant_id: TenantId,
    pub label: KeyLabel,
    pub scope: KeyScope,
    pub created_at: DateTime<Utc>,
    /// When it stops working, if ever.
    pub expires_at: Option<DateTime<Utc>>,
    pub last_used_at: Option<DateTime<Utc>>,
}

impl ApiKey {
    /// Whether it has expired at `now` (it works up to, not at, `expires_at`).
    pub fn expired_at(&self, now: DateTime<Utc>) -> bool {
        self.expires_at.is_some_and(|end| now >= end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_id_forms() {
        let id = TenantId::generate();
        assert_eq!(TenantId::parse(&id.to_string()).unwrap(), id);
        assert!(id.cr_name().starts_with("tenant-") && id.cr_name().len() == 43);
        assert!(TenantId::parse("usr_00").is_err());
    }

    #[test]
    fn cr_names_map_back_to_their_tenant_only_in_their_exact_form() {
        let id = TenantId::from_uuid("0f0f0f0f-0000-4000-8000-00000000000a".parse().unwrap());
        assert_eq!(id.cr_name(), "tenant-0f0f0f0f-0000-4000-8000-00000000000a");
        assert_eq!(TenantId::from_cr_name(&id.cr_name()), Some(id));
        let other_forms =
            ["tenant-0f0f0f0f00004000800000000000000a", "tenant-0F0F0F0F-0000-4000-8000-00000000000A", "tenant-{0f0f0f0f-0000-4000-8000-00000000000a}"];
        for other in ["default", "tenant-", "tenant-x", "nexus-system"].into_iter().chain(other_forms) {
            assert_eq!(TenantId::from_cr_name(other), None, "{other}");
        }
    }

    #[test]
    fn key_labels_are_trimmed_and_bounded() {
        assert_eq!(KeyLabel::parse(" ci ").unwrap().as_str(), "ci");
        assert!(KeyLabel::parse("").is_err());
        assert!(KeyLabel::parse(&"k".repeat(101)).is_err());
        assert!(KeyLabel::parse("a\nb").is_err());
    }

    #[test]
    fn node_profile_rules() {
        assert_eq!(NodeProfile::default().as_str(), "full");
        assert!(NodeProfile::parse("gateway-2").is_ok());
        assert!(NodeProfile::parse("Full").is_err());
        assert!(NodeProfile::parse("").is_err());
    }
}

//! sea-orm entities: the rows as stored. Converted to and from domain types only in the
//! store modules beside them.

pub(crate) mod agent_versions;
pub(crate) mod agents;
pub(crate) mod api_keys;
pub(crate) mod audit_events;
pub(crate) mod login_attempts;
pub(crate) mod refresh_tokens;
pub(crate) mod revoked_keys;
pub(crate) mod settings;
pub(crate) mod tenants;
pub(crate) mod users;

//! Tenancy use cases against mockall doubles.

use std::sync::Arc;

use chrono::{TimeZone, Utc};
use mockall::Sequence;
use mockall::predicate::eq;
use nexus_ports::Error;
use nexus_ports::audit::AuditAction;
use nexus_ports::identity::UserId;
use nexus_ports::ports::{MockApiKeyStore, MockAuditStore, MockClock, MockClusterBackend, MockSecretGenerator, MockTenantStore, MockUserStore};
use nexus_ports::tenancy::{ApiKey, KeyLabel, KeyScope, Tenant, TenantId, TenantPhase, TenantStatus};
use nexus_ports::tokens::{OpaqueSecret, SecretDigest};

use super::{KeyGrant, Quotas, TenancyPorts, TenancyService};
use crate::app::key_usage::KeyUsage;

fn now() -> chrono::DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 28, 12, 0, 0).unwrap()
}

fn owner() -> UserId {
    UserId::from_uuid(uuid::Uuid::nil())
}

fn owned_tenant() -> Tenant {
    Tenant { id: TenantId::from_uuid(uuid::Uuid::max()), created_at: now(), ..nexus_ports::testing::tenant(owner()) }
}

fn ready(tenant: &Tenant) -> TenantStatus {
    TenantStatus { phase: TenantPhase::Ready, namespace: Some(tenant.id.cr_name()), node_endpoint: Some("http://node".into()), message: None }
}

/// Every user exists, named `<its id>@example.com`.
fn users() -> MockUserStore {
    let mut users = MockUserStore::new();
    users.expect_find_user().returning(|id| {
        let email = nexus_ports::identity::Email::parse(&format!("{}@example.com", id.as_uuid().simple())).unwrap();
        Ok(Some(nexus_ports::identity::User { id: *id, display_name: nexus_ports::identity::DisplayName::from_email(&email), email, created_at: now() }))
    });
    users
}

#[derive(Default)]
struct Ports {
    tenants: MockTenantStore,
    keys: MockApiKeyStore,
    cluster: MockClusterBackend,
    secrets: MockSecretGenerator,
}

impl Ports {
    /// The store knows one tenant, owned by `owner()`.
    fn with_owned_tenant() -> Self {
        let mut ports = Self::default();
        ports.tenants.expect_find_tenant().returning(|id| Ok((*id == owned_tenant().id).then(owned_tenant)));
        ports
    }

    fn service(self) -> (TenancyService, Arc<KeyUsage>) {
        let mut clock = MockClock::new();
        clock.expect_now().returning(now);
        let usage = Arc::new(KeyUsage::new(Arc::new(MockApiKeyStore::new())));
        let ports = TenancyPorts {
            tenants: Arc::new(self.tenants),
            keys: Arc::new(self.keys),
            cluster: Arc::new(self.cluster),
            secrets: Arc::new(self.secrets),
            clock: Arc::new(clock),
            usage: usage.clone(),
            audit: Arc::new(MockAuditStore::new()),
            users: Arc::new(users()),
            changes: crate::app::Changes::local(),
        };
        let service = TenancyService::new(ports, Quotas { max_tenants: 10, max_keys: 20, max_agents: 50 });
        (service, usage)
    }
}

fn tenant_id() -> String {
    owned_tenant().id.to_string()
}

#[tokio::test]
async fn creating_a_tenant_stores_and_provisions_it() {
    let mut ports = Ports::default();
    ports
        .tenants
        .expect_insert_tenant()
        .withf(|t, max_tenants, audit| {
            (audit.action, audit.tenant, audit.user) == (AuditAction::TenantCreate, Some(t.id), Some(owner()))
                && t.owner == owner()
                && t.display_name.as_str() == "My Org"
                && t.node_profile.as_str() == "full"
                && t.max_agents == 50
                && t.created_at == now()
                && *max_tenants == 10
        })
        .times(1)
        .returning(|_, _, _| Ok(()));
    ports.cluster.expect_provision_tenant().times(1).returning(|t| Ok(ready(t)));
    let state = ports.service().0.create_tenant(owner(), "  My Org ", None).await.unwrap();
    assert_eq!(state.status.phase, TenantPhase::Ready);
    assert_eq!(state.status.namespace, Some(state.tenant.id.cr_name()));
}

#[tokio::test]
async fn a_tenant_the_cluster_fails_to_provision_is_kept_in_phase_error() {
    let mut ports = Ports::default();
    ports.tenants.expect_insert_tenant().returning(|_, _, _| Ok(()));
    ports.cluster.expect_provision_tenant().returning(|_| Err(Error::Unavailable("cluster down".into())));
    let state = ports.service().0.create_tenant(owner(), "org", Some("gateway")).await.unwrap();
    assert_eq!(state.status.phase, TenantPhase::Error);
    assert_eq!(state.status.message.as_deref(), Some("cluster down"));
    assert_eq!(state.tenant.node_profile.as_str(), "gateway");
}

#[tokio::test]
async fn a_tenants_message_never_carries_internal_detail() {
    let mut ports = Ports::default();
    ports.tenants.expect_insert_tenant().returning(|_, _, _| Ok(()));
    ports.cluster.expect_provision_tenant().returning(|_| Err(Error::internal("the Kubernetes API refused a request (422): spec.replicas: Invalid value")));
    let state = ports.service().0.create_tenant(owner(), "org", None).await.unwrap();
    assert_eq!((state.status.phase, state.status.message.as_deref()), (TenantPhase::Error, Some("internal error")), "the detail is for the log");
}

#[tokio::test]
async fn a_tenant_left_to_the_leader_is_stored_but_not_provisioned_by_the_serving_replica() {
    let mut ports = Ports::default();
    ports.tenants.expect_insert_tenant().times(1).returning(|_, _, _| Ok(()));
    ports.cluster.expect_provision_tenant().never();
    let service = ports.service().0.leaving_provisioning_to_the_leader();
    let state = service.create_tenant(owner(), "org", None).await.unwrap();
    assert_eq!(state.status, TenantStatus::pending(), "the leader's loop provisions it");
}

#[tokio::test]
async fn invalid_tenants_touch_no_port() {
    let (service, _) = Ports::default().service();
    for (name, profile) in [("", None), ("   ", None), (&*"x".repeat(101), None), ("org", Some("Not A Profile"))] {
        assert!(matches!(service.create_tenant(owner(), name, profile).await, Err(Error::InvalidRequest(_))), "{name:?} {profile:?}");
    }
}

#[tokio::test]
async fn only_the_owner_deletes_and_deprovisioning_comes_first() {
    let mut ports = Ports::with_owned_tenant();
    let mut order = Sequence::new();
    ports.cluster.expect_deprovision_tenant().with(eq(owned_tenant().id)).times(1).in_sequence(&mut order).returning(|_| Ok(()));
    ports.keys.expect_list_keys().times(1).in_sequence(&mut order).returning(|_| Ok(vec![]));
    ports.tenants.expect_delete_tenant().times(1).in_sequence(&mut order).returning(|_, audit| Ok(audit.action == AuditAction::TenantDelete));
    let (service, _) = ports.service();
    assert!(matches!(service.delete_tenant(&UserId::generate(), &tenant_id()).await, Err(Error::Forbidden(_))));
    assert!(matches!(service.delete_tenant(&owner(), &TenantId::generate().to_string()).await, Err(Error::Forbidden(_))));
    assert!(matches!(service.delete_tenant(&owner(), "t_nope").await, Err(Error::InvalidRequest(_))));
    assert_eq!(service.delete_tenant(&owner(), &tenant_id()).await.unwrap(), owned_tenant().id);
}

#[tokio::test]
async fn a_cluster_that_cannot_deprovision_keeps_the_tenant() {
    let mut ports = Ports::with_owned_tenant();
    ports.cluster.expect_deprovision_tenant().returning(|_| Err(Error::Unavailable("cluster down".into())));
    let result = ports.service().0.delete_tenant(&owner(), &tenant_id()).await;
    assert!(matches!(result, Err(Error::Unavailable(_))), "{result:?}");
}

#[tokio::test]
async fn keys_are_minted_once_and_stored_as_digests() {
    let mut ports = Ports::with_owned_tenant();
    ports.secrets.expect_generate().with(eq("nxk_")).times(1).returning(|_| Ok(OpaqueSecret::new("nxk_raw".into())));
    ports
        .keys
        .expect_insert_key()
        .withf(|k, max_keys, audit| {
            (audit.action, audit.target.clone()) == (AuditAction::KeyCreate, k.digest.to_hex())
                && k.digest == SecretDigest::of("nxk_raw")
                && k.tenant_id == owned_tenant().id
                && k.label.as_str() == "ci"
                && k.last_used_at.is_none()
                && *max_keys == 20
        })
        .times(1)
        .returning(|_, _, _| Ok(()));
    let (service, _) = ports.service();
    let created = service.create_key(&owner(), &tenant_id(), " ci ", KeyGrant::default()).await.unwrap();
    assert_eq!(created.raw.expose(), "nxk_raw");
    assert!(matches!(service.create_key(&owner(), &tenant_id(), "", KeyGrant::default()).await, Err(Error::InvalidRequest(_))));
    assert!(matches!(service.create_key(&UserId::generate(), &tenant_id(), "ci", KeyGrant::default()).await, Err(Error::Forbidden(_))));
}

#[tokio::test]
async fn listed_keys_show_usage_not_yet_written() {
    let stored = ApiKey {
        digest: SecretDigest::of("k"),
        tenant_id: owned_tenant().id,
        label: KeyLabel::parse("ci").unwrap(),
        scope: KeyScope::Write,
        created_at: now(),
        expires_at: None,
        last_used_at: None,
    };
    let mut ports = Ports::with_owned_tenant();
    let listed = stored.clone();
    ports.keys.expect_list_keys().returning(move |_| Ok(vec![listed.clone()]));
    let (service, usage) = ports.service();
    usage.record(stored.digest, now());
    assert_eq!(service.list_keys(&owner(), &tenant_id()).await.unwrap()[0].last_used_at, Some(now()));
}

#[tokio::test]
async fn revoking_needs_a_well_formed_hash_of_this_tenant() {
    let mut ports = Ports::with_owned_tenant();
    ports.keys.expect_delete_key().returning(|_, digest, _| Ok(*digest == SecretDigest::of("k")));
    let (service, _) = ports.service();
    assert!(matches!(service.revoke_key(&owner(), &tenant_id(), "xyz").await, Err(Error::InvalidRequest(_))));
    assert!(matches!(service.revoke_key(&owner(), &tenant_id(), &SecretDigest::of("other").to_hex()).await, Err(Error::NotFound(_))));
    assert_eq!(service.revoke_key(&owner(), &tenant_id(), &SecretDigest::of("k").to_hex()).await.unwrap(), SecretDigest::of("k"));
}

#[tokio::test]
async fn over_quota_nothing_is_provisioned_or_minted() {
    let mut ports = Ports::with_owned_tenant();
    ports.tenants.expect_insert_tenant().returning(|_, n, _| Err(Error::Conflict(format!("tenant quota reached: a user may own at most {n} tenants"))));
    ports.secrets.expect_generate().returning(|_| Ok(OpaqueSecret::new("nxk_raw".into())));
    ports.keys.expect_insert_key().returning(|_, n, _| Err(Error::Conflict(format!("API key quota reached: a tenant may have at most {n} keys"))));
    let (service, _) = ports.service();
    assert_eq!(
        service.create_tenant(owner(), "org", None).await.unwrap_err(),
        Error::Conflict("tenant quota reached: a user may own at most 10 tenants".into())
    );
    assert_eq!(
        service.create_key(&owner(), &tenant_id(), "ci", KeyGrant::default()).await.unwrap_err(),
        Error::Conflict("API key quota reached: a tenant may have at most 20 keys".into())
    );
}

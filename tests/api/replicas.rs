//! Two replicas on one PostgreSQL database, each with its own pool and what it keeps in
//! memory: revoking a key, deleting a tenant, ending a user's sessions or changing an agent
//! through one takes effect there at once, and on the other within a second; statuses
//! (held in the database) read the same through both. SQLite serves one replica: a second
//! on the same file is refused. (Separate processes: `replica_processes`.)

use reqwest::{Method, StatusCode};

use crate::agents::{SUPPORT_BOT, get, running, send, wait_for};
use crate::support::{Backend, Server, config, database, on_postgres, within_a_second};

on_postgres!(changes_through_one_replica_hold_on_the_other);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_replica_on_one_sqlite_file_is_refused_until_the_first_stops() {
    let Some(db) = database(Backend::Sqlite).await else { return };
    let first = Server::start(config(&db.url)).await;
    let refused = nexus::bootstrap::build(&config(&db.url)).await.err().expect("a second replica on the file is refused");
    assert!(matches!(&refused, nexus_ports::Error::Conflict(m) if m.contains("in use by another Nexus process")), "{refused:?}");
    first.stop().await;
    let second = Server::start(config(&db.url)).await;
    second.stop().await;
    db.drop_database().await;
}

fn bearer(token: &str) -> (&'static str, String) {
    ("authorization", format!("Bearer {token}"))
}

/// The status of `GET /api/v1/me` with these headers.
async fn me(server: &Server, headers: &[(&str, &str)]) -> StatusCode {
    server.call(Method::GET, "/api/v1/me", headers, None).await.status
}

async fn changes_through_one_replica_hold_on_the_other(backend: Backend) {
    let Some(db) = database(backend).await else { return };
    let (a, b) = (Server::start(config(&db.url)).await, Server::start(config(&db.url)).await);
    let token = a.user("ada@example.com").await;
    let bystander = a.user("bob@example.com").await;
    let auth = bearer(&token);
    let kept = a.tenant(&token, "kept").await.str("id");
    let doomed = a.tenant(&token, "doomed").await.str("id");
    let kept_key = a.key(&token, &kept, "kept").await.str("rawKey");
    let revoked = a.key(&token, &kept, "revoked").await;
    let doomed_key = a.key(&token, &doomed, "doomed").await.str("rawKey");
    let revoked_key = revoked.str("rawKey");

    // Both replicas have seen every credential, so each keeps them in memory.
    for server in [&a, &b] {
        for key in [&kept_key, &revoked_key, &doomed_key] {
            assert_eq!(get(server, "/api/v1/agents", key).await.status, StatusCode::OK);
        }
        for tenant in [&kept, &doomed] {
            assert_eq!(me(server, &[(auth.0, &auth.1), ("x-tenant-id", tenant)]).await, StatusCode::OK);
        }
        assert_eq!(me(server, &[("authorization", &format!("Bearer {bystander}"))]).await, StatusCode::OK);
    }

    // An agent registered through one replica is listed by both.
    assert_eq!(send(&a, Method::POST, "/api/v1/agents", &kept_key, "application/yaml", SUPPORT_BOT).await.status, StatusCode::CREATED);
    let listed = async |server: &Server| get(server, "/api/v1/agents", &kept_key).await.body.as_array().map_or(0, Vec::len);
    assert_eq!(listed(&a).await, 1, "at once on the replica that registered it");
    within_a_second("the other replica lists the new agent", async || listed(&b).await == 1).await;
    let through_a = wait_for(&a, &kept_key, "support-bot", "Running through the replica that registered it", running).await;
    let through_b = wait_for(&b, &kept_key, "support-bot", "Running through the other replica", running).await;
    assert_eq!(through_a["status"]["phase"], through_b["status"]["phase"]);
    let tenant_through_b = b.tenant(&token, "made on b").await.str("id");
    let phase_on_a = a.call(Method::GET, "/api/v1/tenants", &[(auth.0, &auth.1)], None).await.body;
    let phase_on_a = phase_on_a.as_array().and_then(|all| all.iter().find(|t| t["id"] == tenant_through_b.as_str())).map(|t| t["phase"].clone());
    assert_eq!(phase_on_a.as_ref().and_then(|p| p.as_str()), Some("Ready"), "a tenant created through one replica is Ready through the other");
    assert_eq!(b.call(Method::DELETE, "/api/v1/agents/support-bot", &[("x-api-key", &kept_key)], None).await.status, StatusCode::OK);
    assert_eq!(listed(&b).await, 0, "at once on the replica that deleted it");
    within_a_second("the other replica forgets the deleted agent", async || listed(&a).await == 0).await;

    // A revoked key.
    let path = format!("/api/v1/tenants/{kept}/keys/{}", revoked.str("hash"));
    assert_eq!(a.call(Method::DELETE, &path, &[(auth.0, &auth.1)], None).await.status, StatusCode::OK);
    assert_eq!(me(&a, &[("x-api-key", &revoked_key)]).await, StatusCode::UNAUTHORIZED, "at once on the replica that revoked it");
    within_a_second("the other replica refuses the revoked key", async || me(&b, &[("x-api-key", &revoked_key)]).await == StatusCode::UNAUTHORIZED).await;

    // A deleted tenant: its keys and its scope go.
    assert_eq!(a.call(Method::DELETE, &format!("/api/v1/tenants/{doomed}"), &[(auth.0, &auth.1)], None).await.status, StatusCode::OK);
    let gone = async |server: &Server| {
        me(server, &[("x-api-key", &doomed_key)]).await == StatusCode::UNAUTHORIZED
            && me(server, &[(auth.0, &auth.1), ("x-tenant-id", &doomed)]).await == StatusCode::FORBIDDEN
    };
    assert!(gone(&a).await, "at once on the replica that deleted it");
    within_a_second("the other replica forgets the deleted tenant", async || gone(&b).await).await;

    // Ended sessions.
    assert_eq!(a.call(Method::DELETE, "/api/v1/me/sessions", &[(auth.0, &auth.1)], None).await.status, StatusCode::NO_CONTENT);
    assert_eq!(me(&a, &[(auth.0, &auth.1)]).await, StatusCode::UNAUTHORIZED, "at once on the replica that ended them");
    within_a_second("the other replica refuses the ended session", async || me(&b, &[(auth.0, &auth.1)]).await == StatusCode::UNAUTHORIZED).await;

    // What did not change still works on both.
    for server in [&a, &b] {
        assert_eq!(me(server, &[("x-api-key", &kept_key)]).await, StatusCode::OK);
        assert_eq!(me(server, &[("authorization", &format!("Bearer {bystander}"))]).await, StatusCode::OK);
    }
    a.stop().await;
    b.stop().await;
    db.drop_database().await;
}

//! The README's walk through the progenitor-generated client, against a Nexus started in
//! this process on a fresh SQLite database: every answer is decoded into the types the
//! document declares, so a response that contradicts the document fails the walk.

use nexus::config::ServeConfig;
use nexus_client::types::{self, AgentManifest, CreateKeyRequest, CreateTenantRequest, LoginRequest, Me, RefreshRequest, RegisterRequest};
use nexus_client::{Client, ClientAgentsExt, ClientAuthExt, ClientKeysExt, ClientMeExt, ClientTenantsExt};
use poem::listener::{Acceptor, Listener, TcpListener};

const SUPPORT_BOT: &str = r#"
apiVersion: astromesh/v1
kind: Agent
metadata:
  name: support-bot
  version: "1.0.0"
spec:
  identity:
    display_name: "Support Bot"
  model:
    primary:
      provider: ollama
      model: "llama3.1:8b"
  orchestration:
    pattern: react
"#;

/// A client that sends `header: value` on every request (a bearer token or an API key).
fn client_with(base: &str, header: &'static str, value: &str) -> Client {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(header, value.parse().expect("a header value"));
    Client::new_with_client(base, reqwest::Client::builder().default_headers(headers).build().expect("a reqwest client"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_walk_through_the_generated_client() {
    let db = std::env::temp_dir().join(format!("nexus-client-walk-{}.db", uuid::Uuid::new_v4().simple()));
    let config = ServeConfig::local(&format!("sqlite://{}", db.display()));
    let nexus = nexus::bootstrap::build(&config).await.expect("nexus starts");
    let acceptor = TcpListener::bind(config.listen).into_acceptor().await.expect("bind");
    let base = format!("http://127.0.0.1:{}", acceptor.local_addr()[0].as_socket_addr().expect("tcp").port());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(nexus::http::serve(acceptor, nexus, config.connection_limits(), async move {
        let _ = stopped.await;
    }));

    let public = Client::new(&base);
    let email = "walker@example.com";
    let register = RegisterRequest {
        email: email.try_into().unwrap(),
        password: "a-strong-password".try_into().unwrap(),
        display_name: Some("Walker".try_into().unwrap()),
    };
    let registered = public.auth_register().body(register).send().await.expect("registered").into_inner();
    assert_eq!(registered.user.email, email);
    let login = LoginRequest { email: email.to_owned(), password: "a-strong-password".try_into().unwrap() };
    let session = public.auth_login().body(login).send().await.expect("logged in").into_inner();
    let refreshed = public.auth_refresh().body(RefreshRequest { refresh_token: session.refresh_token }).send().await.expect("refreshed").into_inner();

    let user = client_with(&base, "authorization", &format!("Bearer {}", refreshed.access_token));
    match user.me_get().send().await.expect("me").into_inner() {
        Me::UserPrincipal(me) => assert_eq!(me.user.email, email),
        other => panic!("a user token is a user: {other:?}"),
    }
    let tenant = CreateTenantRequest { display_name: "My Organisation".try_into().unwrap(), node_profile: Some("full".try_into().unwrap()) };
    let tenant = user.tenant_create().body(tenant).send().await.expect("tenant created").into_inner();
    assert_eq!(user.tenant_list().send().await.expect("tenants").into_inner().iter().map(|t| t.id.as_str()).collect::<Vec<_>>(), [tenant.id.as_str()]);
    let key = user
        .key_create()
        .tenant_id(tenant.id.as_str())
        .body(CreateKeyRequest { label: "ci".try_into().unwrap(), scope: None, expires_at: None })
        .send()
        .await
        .expect("key created")
        .into_inner();
    let keys = user.key_list().tenant_id(tenant.id.as_str()).send().await.expect("keys").into_inner();
    assert_eq!(keys.iter().map(|k| k.hash.as_str()).collect::<Vec<_>>(), [key.hash.as_str()]);

    // An API key travels in X-API-Key.
    let api = client_with(&base, "x-api-key", &key.raw_key);
    match api.me_get().send().await.expect("me").into_inner() {
        Me::ApiKeyPrincipal(me) => assert_eq!((me.tenant.id.as_str(), me.key_label.as_str()), (tenant.id.as_str(), "ci")),
        other => panic!("an API key is a tenant's: {other:?}"),
    }
    // progenitor sends one media type per operation: the manifest goes as the typed JSON body.
    let manifest: AgentManifest = serde_yaml::from_str(SUPPORT_BOT).expect("the manifest reads as the document's AgentManifest");
    let created = api.agent_create().body(manifest).send().await.expect("agent created").into_inner();
    assert_eq!((created.name.as_str(), created.version.as_deref()), ("support-bot", Some("1.0.0")));
    let status = api.agent_status().name("support-bot").send().await.expect("status").into_inner();
    assert!(matches!(status.phase, types::AgentPhaseView::Pending | types::AgentPhaseView::Deploying | types::AgentPhaseView::Running), "{status:?}");
    let agents = user.agent_list().x_tenant_id(tenant.id.as_str()).send().await.expect("agents").into_inner();
    assert_eq!(agents.iter().map(|a| a.name.clone()).collect::<Vec<_>>(), ["support-bot"]);
    let detail = user.agent_get().name("support-bot").x_tenant_id(tenant.id.as_str()).send().await.expect("agent").into_inner();
    assert_eq!(detail.agent_spec["spec"]["orchestration"]["pattern"], "react", "unknown fields are kept");
    let versions = api.agent_versions().name("support-bot").send().await.expect("versions").into_inner();
    assert_eq!(versions.iter().map(|v| v.number).collect::<Vec<_>>(), [1]);

    let _ = stop.send(());
    server.await.expect("server task").expect("server stopped cleanly");
    let _ = std::fs::remove_file(&db);
}

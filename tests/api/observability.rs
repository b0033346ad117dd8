//! What an operator sees: Prometheus metrics scraped from their own listener and parsed
//! with a Prometheus parser, and request ids on every answer.

use poem::listener::{Acceptor, Listener, TcpListener};
use reqwest::{Method, StatusCode};

use crate::support::{Backend, Server, on_both_backends, with_server};

type Exposition = openmetrics_parser::MetricsExposition<openmetrics_parser::PrometheusType, openmetrics_parser::PrometheusValue>;

/// Scrapes the metrics endpoint served on a listener of its own, as `main` serves it, and
/// parses the answer as the Prometheus text format.
async fn scrape() -> Exposition {
    let acceptor = TcpListener::bind("127.0.0.1:0").into_acceptor().await.expect("bind");
    let port = acceptor.local_addr()[0].as_socket_addr().expect("tcp").port();
    let server = tokio::spawn(poem::Server::new_with_acceptor(acceptor).run(nexus::http::metrics::endpoint()));
    let response = reqwest::get(format!("http://127.0.0.1:{port}/metrics")).await.expect("scraped");
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.headers()["content-type"].to_str().unwrap().starts_with("text/plain"));
    let text = response.text().await.unwrap();
    server.abort();
    openmetrics_parser::prometheus::parse_prometheus(&text).unwrap_or_else(|err| panic!("not the Prometheus text format ({err:?}):\n{text}"))
}

/// The values of `label` over the family's samples.
fn label_values(exposition: &Exposition, family: &str, label: &str) -> std::collections::BTreeSet<String> {
    let family = exposition.families.get(family).unwrap_or_else(|| panic!("{family} missing"));
    family.iter_samples().filter_map(|sample| sample.get_labelset().ok()?.get_label_value(label).map(str::to_owned)).collect()
}

on_both_backends!(metrics_name_routes_by_template_and_cover_the_service);

async fn metrics_name_routes_by_template_and_cover_the_service(backend: Backend) {
    with_server(backend, async |server: &Server| {
        let token = server.user("metrics@example.com").await;
        server.get("/api/v1/agents/some-agent", Some(&token)).await;
        server.get("/api/v1/no-such-route", None).await;
        // A node call: the live status of an agent asks its node.
        let tenant = server.tenant(&token, "Metered").await.str("id");
        let scoped = [("authorization", format!("Bearer {token}")), ("x-tenant-id", tenant)];
        let scoped: Vec<(&str, &str)> = scoped.iter().map(|(name, value)| (*name, value.as_str())).collect();
        let manifest = nexus_ports::testing::manifest_document("metered", "m");
        assert_eq!(server.call(Method::POST, "/api/v1/agents", &scoped, Some(&manifest)).await.status, StatusCode::CREATED);
        server.call(Method::GET, "/api/v1/agents/metered/status", &scoped, None).await;
        let scrape = scrape().await;
        for family in [
            "nexus_http_requests_total",
            "nexus_http_request_duration_seconds",
            "nexus_tenants",
            "nexus_agents",
            "nexus_auth_refusals_total",
            "nexus_rate_limit_refusals_total",
            "nexus_node_requests_total",
            "nexus_node_request_duration_seconds",
            "nexus_password_hash_queue_wait_seconds",
            "process_resident_memory_bytes",
            "process_cpu_seconds_total",
            "process_open_fds",
        ] {
            assert!(scrape.families.contains_key(family), "{family} missing from {:?}", scrape.families.keys().collect::<Vec<_>>());
        }
        let durations = &scrape.families["nexus_http_request_duration_seconds"];
        assert_eq!(durations.family_type, openmetrics_parser::PrometheusType::Histogram);
        let routes = label_values(&scrape, "nexus_http_requests_total", "route");
        assert!(routes.contains("/api/v1/agents/{name}"), "{routes:?}");
        assert!(routes.contains("/auth/register"), "{routes:?}");
        assert!(routes.contains("unmatched"), "an unknown path is not a label of its own: {routes:?}");
        assert!(routes.iter().all(|route| !route.contains("some-agent") && !route.contains("no-such-route")), "{routes:?}");
        assert!(label_values(&scrape, "nexus_http_requests_total", "status").contains("400"));
        assert!(label_values(&scrape, "nexus_tenants", "phase").contains("Ready"));
        assert!(label_values(&scrape, "nexus_node_requests_total", "operation").contains("agent_view"));
        assert!(
            label_values(&scrape, "nexus_node_requests_total", "outcome")
                .iter()
                .all(|o| ["ok", "upstream_error", "unavailable", "error"].contains(&o.as_str()))
        );
        for histogram in ["nexus_node_request_duration_seconds", "nexus_password_hash_queue_wait_seconds"] {
            assert_eq!(scrape.families[histogram].family_type, openmetrics_parser::PrometheusType::Histogram, "{histogram}");
        }
        let reasons = label_values(&scrape, "nexus_auth_refusals_total", "reason");
        assert!(["missing", "invalid_token", "session_ended", "invalid_key", "expired_key"].iter().all(|r| reasons.contains(*r)), "{reasons:?}");
        let limits = label_values(&scrape, "nexus_rate_limit_refusals_total", "limit");
        assert!(limits.contains("auth_address") && limits.contains("login_account"), "{limits:?}");
    })
    .await;
}

on_both_backends!(every_answer_carries_a_request_id);

/// Every answer carries the server's own request id (32 random hex digits) on successes,
/// errors, 404s and 413s alike; a client's id (1 to 128 visible ASCII characters) comes back
/// apart, as `X-Correlation-ID`, and anything else sent is dropped.
async fn every_answer_carries_a_request_id(backend: Backend) {
    with_server(backend, async |server: &Server| {
        let client = reqwest::Client::new();
        let header = |response: &reqwest::Response, name: &str| response.headers().get(name).map(|v| v.to_str().unwrap().to_owned());
        let id_of = async |method: Method, path: &str, id: Option<&str>, body: Option<Vec<u8>>| {
            let mut request = client.request(method, format!("{}{path}", server.base));
            if let Some(id) = id {
                request = request.header("x-request-id", id);
            }
            if let Some(body) = body {
                request = request.header("content-type", "application/json").body(body);
            }
            let response = request.send().await.unwrap();
            let id = header(&response, "x-request-id").expect("every answer has an id");
            assert!(id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()), "the server's own: {id}");
            (response.status(), header(&response, "x-correlation-id"))
        };
        assert_eq!(id_of(Method::GET, "/healthz", Some("trace-42"), None).await, (StatusCode::OK, Some("trace-42".to_owned())));
        let longest = "x".repeat(128);
        assert_eq!(id_of(Method::GET, "/healthz", Some(&longest), None).await.1.as_deref(), Some(longest.as_str()));
        for refused in ["x".repeat(129), "two words".to_owned()] {
            assert_eq!(id_of(Method::GET, "/healthz", Some(&refused), None).await.1, None, "{refused:?}");
        }
        let (status, _) = id_of(Method::GET, "/no/such/route", None, None).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        let (status, id) = id_of(Method::GET, "/api/v1/me", Some("unauthorised-1"), None).await;
        assert_eq!((status, id.as_deref()), (StatusCode::UNAUTHORIZED, Some("unauthorised-1")));
        let (status, id) = id_of(Method::POST, "/auth/login", Some("big-1"), Some(vec![b' '; 2 * 1024 * 1024])).await;
        assert_eq!((status, id.as_deref()), (StatusCode::PAYLOAD_TOO_LARGE, Some("big-1")));
        let request_id =
            async |sent: &str| header(&client.get(format!("{}/healthz", server.base)).header("x-request-id", sent).send().await.unwrap(), "x-request-id");
        let (a, b) = (request_id("same").await, request_id("same").await);
        assert_ne!(a, b, "each request gets its own id, whatever the client sent");
    })
    .await;
}

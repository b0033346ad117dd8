//! The live status stream, read as a client reads it: Server-Sent Events over one open
//! response, with the status at once, a change of phase, heartbeats while idle, `deleted`
//! at the end; streams bounded per tenant, and ending after their maximum duration.

use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};

use crate::agents::{SUPPORT_BOT, send, tenant_with_key};
use crate::support::{Backend, Server, on_both_backends, with_configured_server};

on_both_backends!(
    the_stream_follows_an_agent_until_it_is_deleted,
    streams_are_bounded_per_tenant_and_end_in_time,
    a_stream_ends_when_its_credential_no_longer_holds
);

/// An open stream, read chunk by chunk.
struct Stream {
    response: reqwest::Response,
    buffer: String,
}

/// One SSE event: its type and its data (JSON), or a heartbeat comment.
#[derive(Debug)]
enum Sse {
    Event(String, serde_json::Value),
    Heartbeat,
}

impl Stream {
    async fn open(server: &Server, key: &str, name: &str) -> Result<Self, reqwest::Response> {
        Self::open_with(server, &[("x-api-key", key)], name).await
    }

    async fn open_with(server: &Server, headers: &[(&str, &str)], name: &str) -> Result<Self, reqwest::Response> {
        let mut request = reqwest::Client::new().get(format!("{}/api/v1/agents/{name}/events", server.base));
        for (header, value) in headers {
            request = request.header(*header, *value);
        }
        let response = request.send().await.unwrap();
        if response.status() != StatusCode::OK {
            return Err(response);
        }
        let content_type = response.headers()["content-type"].to_str().unwrap().to_owned();
        assert!(content_type.starts_with("text/event-stream"), "{content_type}");
        Ok(Self { response, buffer: String::new() })
    }

    /// The next event or heartbeat; `None` once the server ended the stream. Fails after 10 s.
    async fn next(&mut self) -> Option<Sse> {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let mut event = None;
                let mut data = String::new();
                for line in block.lines() {
                    if let Some(kind) = line.strip_prefix("event: ") {
                        event = Some(kind.to_owned());
                    } else if let Some(text) = line.strip_prefix("data: ") {
                        data.push_str(text);
                    }
                }
                return Some(match event {
                    Some(kind) => Sse::Event(kind, serde_json::from_str(&data).expect("the data is JSON")),
                    None if block.starts_with(':') => Sse::Heartbeat,
                    None => panic!("an event without a type: {block:?}"),
                });
            }
            let chunk = tokio::time::timeout(Duration::from_secs(10), self.response.chunk()).await.expect("the stream went quiet for 10 s");
            match chunk.expect("the stream broke") {
                Some(bytes) => self.buffer.push_str(std::str::from_utf8(&bytes).unwrap()),
                None => return None,
            }
        }
    }

    /// The next event, passing over heartbeats.
    async fn next_event(&mut self) -> Option<(String, serde_json::Value)> {
        loop {
            match self.next().await? {
                Sse::Event(kind, data) => return Some((kind, data)),
                Sse::Heartbeat => {}
            }
        }
    }
}

fn config(c: nexus::config::ServeConfig) -> nexus::config::ServeConfig {
    nexus::config::ServeConfig {
        events_poll: Duration::from_millis(50).into(),
        events_heartbeat: Duration::from_secs(1).into(),
        events_max_streams: 2,
        events_max_duration: Duration::from_secs(30).into(),
        ..c
    }
}

async fn the_stream_follows_an_agent_until_it_is_deleted(backend: Backend) {
    with_configured_server(backend, config, async |server: &Server| {
        let (_, key) = tenant_with_key(server, "events@example.com").await;
        assert_eq!(send(server, Method::POST, "/api/v1/agents", &key, "application/yaml", SUPPORT_BOT).await.status, StatusCode::CREATED);
        let mut stream = Stream::open(server, &key, "support-bot").await.expect("the stream opens");

        // The current status at once, then every change until Running with nodeAck.
        let (kind, first) = stream.next_event().await.expect("the current status");
        assert_eq!((kind.as_str(), first["name"].as_str(), first["version"].as_u64()), ("status", Some("support-bot"), Some(1)), "{first}");
        let mut last = first;
        while !(last["phase"] == "Running" && last["nodeAck"] == true) {
            let (kind, next) = stream.next_event().await.expect("a change");
            assert_eq!(kind, "status");
            assert!(next["phase"] != last["phase"] || next["nodeAck"] != last["nodeAck"], "an event only on a change: {last} then {next}");
            last = next;
        }
        assert!(last["lastSyncedAt"].is_string(), "{last}");

        // Idle: heartbeats, and no event while nothing changes.
        let idle = Instant::now();
        assert!(matches!(stream.next().await, Some(Sse::Heartbeat)), "a heartbeat while idle");
        assert!(idle.elapsed() < Duration::from_secs(3));

        // Deleted: the final event, then the stream ends.
        assert_eq!(server.call(Method::DELETE, "/api/v1/agents/support-bot", &[("x-api-key", &key)], None).await.status, StatusCode::OK);
        let (kind, gone) = stream.next_event().await.expect("deleted");
        assert_eq!((kind.as_str(), gone["name"].as_str(), gone.get("phase")), ("deleted", Some("support-bot"), None), "{gone}");
        assert!(stream.next_event().await.is_none(), "the stream ends after deleted");

        // An agent the tenant does not have: 404, as JSON.
        let missing = Stream::open(server, &key, "support-bot").await.err().expect("404");
        assert_eq!(missing.status(), StatusCode::NOT_FOUND);
        assert!(missing.json::<serde_json::Value>().await.unwrap()["error"].is_string());
    })
    .await;
}

async fn streams_are_bounded_per_tenant_and_end_in_time(backend: Backend) {
    let short = |c| nexus::config::ServeConfig { events_max_duration: Duration::from_secs(2).into(), ..config(c) };
    with_configured_server(backend, short, async |server: &Server| {
        let (_, key) = tenant_with_key(server, "bounded@example.com").await;
        let (_, their_key) = tenant_with_key(server, "elsewhere@example.com").await;
        for key in [&key, &their_key] {
            assert_eq!(send(server, Method::POST, "/api/v1/agents", key, "application/yaml", SUPPORT_BOT).await.status, StatusCode::CREATED);
        }
        let first = Stream::open(server, &key, "support-bot").await.expect("first");
        let mut second = Stream::open(server, &key, "support-bot").await.expect("second");
        let refused = Stream::open(server, &key, "support-bot").await.err().expect("a third is refused");
        assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
        assert!(refused.headers().contains_key("retry-after"));
        assert!(refused.json::<serde_json::Value>().await.unwrap()["error"].as_str().unwrap().contains("event streams open"));
        let mut theirs = Stream::open(server, &their_key, "support-bot").await.expect("another tenant has a bound of its own");

        // A stream a client closed frees its place (seen at the next heartbeat).
        drop(first);
        let started = Instant::now();
        let mut reopened = loop {
            match Stream::open(server, &key, "support-bot").await {
                Ok(stream) => break stream,
                Err(_) if started.elapsed() < Duration::from_secs(10) => tokio::time::sleep(Duration::from_millis(200)).await,
                Err(refused) => panic!("the closed stream's place was never freed: {}", refused.status()),
            }
        };

        // Each stream ends after its maximum duration.
        for stream in [&mut second, &mut theirs, &mut reopened] {
            while stream.next().await.is_some() {}
        }
    })
    .await;
}

/// The credential that opened a stream is checked again while it is open (at least at
/// every heartbeat): a revoked key, and a user whose sessions ended, get a final
/// `revoked` event, then the stream ends.
async fn a_stream_ends_when_its_credential_no_longer_holds(backend: Backend) {
    with_configured_server(backend, config, async |server: &Server| {
        let token = server.user("revoked@example.com").await;
        let tenant = server.tenant(&token, "revoked").await.str("id");
        let created = server.key(&token, &tenant, "doomed").await;
        let (key, hash) = (created.str("rawKey"), created.str("hash"));
        assert_eq!(send(server, Method::POST, "/api/v1/agents", &key, "application/yaml", SUPPORT_BOT).await.status, StatusCode::CREATED);
        let bearer = format!("Bearer {token}");
        let ended = |stream: &'static str| format!("the {stream} stream sends revoked, then ends");

        let mut by_key = Stream::open(server, &key, "support-bot").await.expect("the stream opens");
        assert_eq!(by_key.next_event().await.expect("the current status").0, "status");
        let revoked = server.call(Method::DELETE, &format!("/api/v1/tenants/{tenant}/keys/{hash}"), &[("authorization", &bearer)], None).await;
        assert_eq!(revoked.status, StatusCode::OK);
        let (kind, last) = loop {
            let (kind, data) = by_key.next_event().await.unwrap_or_else(|| panic!("{}", ended("key's")));
            if kind != "status" {
                break (kind, data);
            }
        };
        assert_eq!((kind.as_str(), last["name"].as_str()), ("revoked", Some("support-bot")), "{last}");
        assert!(last["message"].is_string(), "{last}");
        assert!(by_key.next_event().await.is_none(), "{}", ended("key's"));

        let mut by_user = Stream::open_with(server, &[("authorization", &bearer), ("x-tenant-id", &tenant)], "support-bot").await.expect("the stream opens");
        assert_eq!(by_user.next_event().await.expect("the current status").0, "status");
        assert_eq!(server.call(Method::DELETE, "/api/v1/me/sessions", &[("authorization", &bearer)], None).await.status, StatusCode::NO_CONTENT);
        let (kind, last) = loop {
            let (kind, data) = by_user.next_event().await.unwrap_or_else(|| panic!("{}", ended("user's")));
            if kind != "status" {
                break (kind, data);
            }
        };
        assert_eq!(kind, "revoked", "{last}");
        assert!(by_user.next_event().await.is_none(), "{}", ended("user's"));
    })
    .await;
}

//! Connections cannot be hoarded and bodies are bounded whatever the framing: a client that
//! trickles half a request head loses its connection after the header-read timeout, an
//! idle kept-alive connection closes after the idle timeout, a normal client is served
//! while others hold slow connections, and an HTTP/2 body with no length is refused at the
//! limit without being buffered. A body sent after `100 Continue` is body, however slowly
//! it comes. What every client together can make the process hold is bounded: HTTP/2
//! streams per connection, requests being answered, bytes of bodies buffered; a separate
//! process's resident memory is measured under hundreds of HTTP/2 streams and many slow
//! HTTP/1.1 uploads.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use nexus::config::ServeConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::h2_flood::{Flood, Outcome};
use crate::support::{Backend, Server, with_configured_server};

fn address(server: &Server) -> String {
    server.base.trim_start_matches("http://").to_owned()
}

/// Reads `stream` until the server closes it (end of stream or reset), returning what it
/// sent; `None` when it is still open after `patience`.
async fn read_until_closed(stream: &mut (impl AsyncReadExt + Unpin), patience: Duration) -> Option<Vec<u8>> {
    let deadline = Instant::now() + patience;
    let mut received = Vec::new();
    let mut buffer = [0_u8; 4096];
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buffer)).await {
            Err(_) => return None,
            Ok(Ok(0) | Err(_)) => return Some(received),
            Ok(Ok(read)) => received.extend_from_slice(&buffer[..read]),
        }
    }
}

fn slow(config: ServeConfig) -> ServeConfig {
    ServeConfig { header_read_timeout: Duration::from_millis(500).into(), max_connections: 16, ..config }
}

#[tokio::test]
async fn half_sent_heads_are_closed_and_a_normal_client_is_still_served() {
    with_configured_server(Backend::Sqlite, slow, async |server| {
        // Three times as many as are served at once, each stopping half-way through its head.
        let mut hoarded = Vec::new();
        for _ in 0..48 {
            let mut stream = TcpStream::connect(address(server)).await.expect("connect");
            stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: nexus\r\n").await.expect("half a head");
            hoarded.push(stream);
        }
        let client = reqwest::Client::builder().timeout(Duration::from_secs(30)).build().expect("client");
        let answer = client.get(format!("{}/healthz", server.base)).send().await.expect("served despite the hoarders");
        assert_eq!(answer.status(), 200);
        for (at, stream) in hoarded.iter_mut().enumerate() {
            let sent = read_until_closed(stream, Duration::from_secs(20)).await;
            assert_eq!(sent.as_deref(), Some(&b""[..]), "slow connection {at} was closed without an answer");
        }
    })
    .await;
}

#[tokio::test]
async fn a_head_trickled_in_byte_by_byte_does_not_keep_its_connection() {
    with_configured_server(Backend::Sqlite, slow, async |server| {
        let stream = TcpStream::connect(address(server)).await.expect("connect");
        let (mut reader, mut writer) = stream.into_split();
        // Active all the time (a byte every 100 ms), so only the head's deadline can end it.
        let trickle = tokio::spawn(async move {
            let head = format!("GET /healthz HTTP/1.1\r\nHost: nexus\r\nX-Padding: {}", "a".repeat(1000));
            for byte in head.as_bytes() {
                if writer.write_all(&[*byte]).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        let sent = read_until_closed(&mut reader, Duration::from_secs(20)).await;
        assert_eq!(sent.as_deref(), Some(&b""[..]), "closed while still trickling");
        trickle.abort();
    })
    .await;
}

#[tokio::test]
async fn an_idle_kept_alive_connection_is_closed_after_its_answer() {
    let idle = |config: ServeConfig| ServeConfig { idle_timeout: Duration::from_millis(500).into(), ..config };
    with_configured_server(Backend::Sqlite, idle, async |server| {
        let mut stream = TcpStream::connect(address(server)).await.expect("connect");
        stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: nexus\r\n\r\n").await.expect("a whole request");
        let sent = read_until_closed(&mut stream, Duration::from_secs(20)).await.expect("closed once idle");
        assert!(sent.starts_with(b"HTTP/1.1 200"), "answered first: {}", String::from_utf8_lossy(&sent));
    })
    .await;
}

#[tokio::test]
async fn a_second_request_on_a_connection_is_held_to_the_head_deadline_too() {
    with_configured_server(Backend::Sqlite, slow, async |server| {
        let mut stream = TcpStream::connect(address(server)).await.expect("connect");
        stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: nexus\r\n\r\n").await.expect("a whole request");
        let mut first = [0_u8; 12];
        stream.read_exact(&mut first).await.expect("the first answer");
        assert_eq!(&first, b"HTTP/1.1 200");
        stream.write_all(b"GET /healthz HTTP/1.1\r\n").await.expect("half of a second head");
        let sent = read_until_closed(&mut stream, Duration::from_secs(20)).await;
        assert!(sent.is_some(), "the half-sent second request lost its connection");
    })
    .await;
}

/// A Nexus of its own, so its memory is its own.
struct Process {
    child: Child,
    base: String,
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("a free port").local_addr().expect("address").port()
}

async fn start_process(db: &std::path::Path) -> Process {
    start_process_with(db, &[]).await
}

async fn start_process_with(db: &std::path::Path, args: &[&str]) -> Process {
    let port = free_port();
    let mut command = Command::new(env!("CARGO_BIN_EXE_nexus"));
    for (name, _) in std::env::vars().filter(|(name, _)| name.starts_with("NEXUS_")) {
        command.env_remove(name);
    }
    let child = command
        .args(["--listen", &format!("127.0.0.1:{port}"), "--metrics-listen", &format!("127.0.0.1:{}", free_port())])
        .args(["--database-url", &format!("sqlite://{}", db.display())])
        .args(args)
        .env("NEXUS_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("nexus starts");
    let process = Process { child, base: format!("http://127.0.0.1:{port}") };
    let deadline = Instant::now() + Duration::from_secs(60);
    let client = reqwest::Client::new();
    while !client.get(format!("{}/healthz", process.base)).send().await.is_ok_and(|answer| answer.status().is_success()) {
        assert!(Instant::now() < deadline, "nexus did not come up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    process
}

fn resident_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("process status");
    let line = status.lines().find(|line| line.starts_with("VmRSS:")).expect("VmRSS");
    line.split_whitespace().nth(1).and_then(|kib| kib.parse::<u64>().ok()).expect("a size in kB") * 1024
}

#[tokio::test]
async fn a_50_mb_http2_body_without_length_is_refused_at_the_limit_and_never_buffered() {
    const CHUNK: usize = 64 * 1024;
    const CHUNKS: usize = 800;
    let db = std::env::temp_dir().join(format!("nexus-h2-{}.db", uuid::Uuid::new_v4().simple()));
    let process = start_process(&db).await;
    let before = resident_bytes(process.child.id());

    let client = reqwest::Client::builder().http2_prior_knowledge().timeout(Duration::from_secs(60)).build().expect("an HTTP/2 client");
    let body = futures_util::stream::iter((0..CHUNKS).map(|_| Ok::<_, std::io::Error>(vec![b'a'; CHUNK])));
    let answer = client
        .post(format!("{}/auth/login", process.base))
        .header("Content-Type", "application/json")
        .body(reqwest::Body::wrap_stream(body))
        .send()
        .await
        .expect("an answer, not a dropped stream");
    assert_eq!(answer.version(), reqwest::Version::HTTP_2);
    assert_eq!(answer.status(), 413);
    let error: serde_json::Value = answer.json().await.expect("a JSON error");
    assert!(error["error"].as_str().is_some_and(|text| text.contains("exceeds")), "{error}");

    let grown = resident_bytes(process.child.id()).saturating_sub(before);
    assert!(grown < (CHUNK * CHUNKS / 4) as u64, "resident memory grew by {grown} bytes for a {} byte body", CHUNK * CHUNKS);
    drop(process);
    for suffix in ["", "-shm", "-wal"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", db.display()));
    }
}

/// Reads one HTTP/1.1 answer (head, and a body of its `Content-Length`): its status, its
/// head as text, and its body; `None` when none came within `patience`.
async fn read_answer(stream: &mut (impl AsyncReadExt + Unpin), patience: Duration) -> Option<(u16, String, String)> {
    let deadline = Instant::now() + patience;
    let mut received = Vec::new();
    let mut buffer = [0_u8; 4096];
    loop {
        if let Some(end) = received.windows(4).position(|window| window == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&received[..end]).to_string();
            let status = head.get(9..12).and_then(|code| code.parse().ok())?;
            let length: usize = head
                .lines()
                .find_map(|line| line.to_ascii_lowercase().strip_prefix("content-length:").map(|value| value.trim().parse().unwrap_or(0)))
                .unwrap_or(0);
            if received.len() >= end + 4 + length {
                let body = String::from_utf8_lossy(&received[end + 4..end + 4 + length]).to_string();
                return Some((status, head, body));
            }
        }
        match tokio::time::timeout_at(deadline, stream.read(&mut buffer)).await {
            Err(_) | Ok(Ok(0) | Err(_)) => return None,
            Ok(Ok(read)) => received.extend_from_slice(&buffer[..read]),
        }
    }
}

fn has_header(head: &str, header: &str) -> bool {
    head.lines().any(|line| line.to_ascii_lowercase().starts_with(&format!("{header}:")))
}

#[tokio::test]
async fn a_body_sent_after_100_continue_is_body_however_slowly_it_comes() {
    with_configured_server(Backend::Sqlite, slow, async |server| {
        let body = r#"{"email":"nobody@example.com","password":"not the password"}"#;
        for expect in [true, false] {
            let mut stream = TcpStream::connect(address(server)).await.expect("connect");
            let expectation = if expect { "Expect: 100-continue\r\n" } else { "" };
            let head =
                format!("POST /auth/login HTTP/1.1\r\nHost: nexus\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{expectation}\r\n", body.len());
            stream.write_all(head.as_bytes()).await.expect("the head");
            if expect {
                let mut interim = [0_u8; 25];
                stream.read_exact(&mut interim).await.expect("an interim answer");
                assert_eq!(&interim, b"HTTP/1.1 100 Continue\r\n\r\n");
            }
            // Four times the header-read timeout (500 ms), in eight pieces.
            for piece in body.as_bytes().chunks(body.len().div_ceil(8)) {
                tokio::time::sleep(Duration::from_millis(250)).await;
                stream.write_all(piece).await.expect("the connection stays open while the body comes");
            }
            let (status, _, text) = read_answer(&mut stream, Duration::from_secs(30)).await.expect("an answer, not a closed connection");
            assert_eq!(status, 401, "Expect: 100-continue {expect}: {text}");
        }
    })
    .await;
}

#[tokio::test]
async fn auth_routes_take_a_few_kib_and_refuse_more_whatever_the_framing() {
    with_configured_server(
        Backend::Sqlite,
        |config| config,
        async |server| {
            let login = |bytes: usize| {
                let mut body = String::from(r#"{"email":"nobody@example.com","password":"not the password"}"#);
                body.insert_str(1, &" ".repeat(bytes - body.len()));
                body.into_bytes()
            };
            let client = reqwest::Client::new();
            let post = async |body: reqwest::Body| {
                let answer =
                    client.post(format!("{}/auth/login", server.base)).header("content-type", "application/json").body(body).send().await.expect("an answer");
                let status = answer.status().as_u16();
                (status, answer.text().await.unwrap_or_default())
            };
            assert_eq!(post(login(nexus::http::AUTH_BODY_LIMIT).into()).await.0, 401, "a body of exactly the limit is read");
            let (status, text) = post(login(nexus::http::AUTH_BODY_LIMIT + 1).into()).await;
            assert_eq!((status, text.as_str()), (413, r#"{"error":"request body exceeds 8192 bytes"}"#));
            // Without a length (chunked), refused once the limit is passed.
            let pieces = futures_util::stream::iter((0..3).map(|_| Ok::<_, std::io::Error>(vec![b' '; 4096])));
            assert_eq!(post(reqwest::Body::wrap_stream(pieces)).await.0, 413);
            let pieces = futures_util::stream::iter([Ok::<_, std::io::Error>(login(4000))]);
            assert_eq!(post(reqwest::Body::wrap_stream(pieces)).await.0, 401, "a small chunked body is read");
        },
    )
    .await;
}

/// The head of a POST to `path` declaring `length` bytes of body, with credentials (not
/// valid ones: they are checked once the body has been read).
fn post_head(path: &str, length: usize, extra: &str) -> String {
    format!(
        "POST {path} HTTP/1.1\r\nHost: nexus\r\nAuthorization: Bearer not-a-token\r\nContent-Type: application/yaml\r\nContent-Length: {length}\r\n{extra}\r\n"
    )
}

#[tokio::test]
async fn past_the_requests_cap_a_request_is_answered_503_at_once() {
    let one = |config| ServeConfig { max_requests: 1, ..config };
    with_configured_server(Backend::Sqlite, one, async |server| {
        // The one request being served: its head is in, its body is awaited.
        let mut held = TcpStream::connect(address(server)).await.expect("connect");
        held.write_all(post_head("/api/v1/agents", 10, "").as_bytes()).await.expect("a head");
        tokio::time::sleep(Duration::from_millis(300)).await;
        let busy = reqwest::get(format!("{}/healthz", server.base)).await.expect("an answer");
        assert_eq!(busy.status(), 503);
        assert_eq!(busy.headers()["retry-after"], "1");
        assert_eq!(busy.text().await.expect("a body"), r#"{"error":"too many requests are being served; retry shortly"}"#);
        held.write_all(b"0123456789").await.expect("the body");
        let (status, _, _) = read_answer(&mut held, Duration::from_secs(30)).await.expect("an answer");
        assert_eq!(status, 401, "served once its body came");
        assert_eq!(reqwest::get(format!("{}/healthz", server.base)).await.expect("an answer").status(), 200, "the slot is free again");
    })
    .await;
}

#[tokio::test]
async fn a_body_the_budget_has_no_room_for_waits_briefly_then_is_answered_503_unbuffered() {
    let one_body = |config| ServeConfig { body_budget: nexus::http::BODY_LIMIT as u64, ..config };
    with_configured_server(Backend::Sqlite, one_body, async |server| {
        // Takes the whole budget: declares 1 MiB, sends nothing yet.
        let mut large = TcpStream::connect(address(server)).await.expect("connect");
        large.write_all(post_head("/api/v1/agents", nexus::http::BODY_LIMIT, "").as_bytes()).await.expect("a head");
        tokio::time::sleep(Duration::from_millis(300)).await;

        // Finds no room: waits, is answered 503; its bytes are read and thrown away, so the
        // answer is seen and the connection stays usable.
        let mut small = TcpStream::connect(address(server)).await.expect("connect");
        let started = Instant::now();
        small.write_all(format!("{}{}", post_head("/api/v1/agents", 100, ""), "x".repeat(100)).as_bytes()).await.expect("a request");
        let (status, head, body) = read_answer(&mut small, Duration::from_secs(30)).await.expect("an answer");
        assert_eq!(status, 503, "{head}");
        assert!(started.elapsed() >= nexus::http::BUDGET_WAIT / 2, "it waited for room first");
        assert!(head.to_ascii_lowercase().contains("retry-after: 1"), "{head}");
        assert_eq!(body, r#"{"error":"too many request bodies are being received; retry shortly"}"#);
        // A client waiting for 100 Continue is answered without sending its body.
        let mut polite = TcpStream::connect(address(server)).await.expect("connect");
        polite.write_all(post_head("/api/v1/agents", 100, "Expect: 100-continue\r\n").as_bytes()).await.expect("a head");
        let (status, head, _) = read_answer(&mut polite, Duration::from_secs(30)).await.expect("an answer");
        assert_eq!(status, 503, "{head}");

        // A request without any credentials is refused before its body is read: it needs
        // no room, and is answered at once.
        let anonymous = reqwest::Client::new()
            .post(format!("{}/api/v1/agents", server.base))
            .header("content-type", "application/yaml")
            .body(vec![b'x'; nexus::http::BODY_LIMIT])
            .send()
            .await
            .expect("an answer");
        assert_eq!(anonymous.status(), 401);

        // Once the large body has come and been answered, there is room again.
        large.write_all(&vec![b'x'; nexus::http::BODY_LIMIT]).await.expect("the large body");
        assert_eq!(read_answer(&mut large, Duration::from_secs(30)).await.expect("an answer").0, 401);
        small.write_all(format!("{}{}", post_head("/api/v1/agents", 100, ""), "x".repeat(100)).as_bytes()).await.expect("again, on the same connection");
        assert_eq!(read_answer(&mut small, Duration::from_secs(30)).await.expect("an answer").0, 401);
    })
    .await;
}

/// The highest resident memory of process `pid` seen until `stop` is set.
fn watch_peak(pid: u32) -> (std::sync::Arc<std::sync::atomic::AtomicU64>, std::sync::Arc<std::sync::atomic::AtomicBool>) {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    let peak = std::sync::Arc::new(AtomicU64::new(resident_bytes(pid)));
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let (seen, stopped) = (peak.clone(), stop.clone());
    tokio::spawn(async move {
        while !stopped.load(Ordering::Relaxed) {
            seen.fetch_max(resident_bytes(pid), Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    (peak, stop)
}

const MIB: f64 = 1024.0 * 1024.0;

/// The settings of the memory tests, as flags and as the configuration they make.
fn budgeted(budget: u64, max_requests: u32, max_connections: u32) -> (Vec<String>, ServeConfig) {
    let args = vec![
        "--body-budget".to_owned(),
        budget.to_string(),
        "--max-requests".to_owned(),
        max_requests.to_string(),
        "--max-connections".to_owned(),
        max_connections.to_string(),
        "--http2-max-streams".to_owned(),
        "100".to_owned(),
    ];
    let config = ServeConfig { body_budget: budget, max_requests, max_connections, http2_max_streams: 100, ..ServeConfig::local("sqlite::memory:") };
    (args, config)
}

fn temporary_database(name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("nexus-{name}-{}.db", uuid::Uuid::new_v4().simple()))
}

fn remove_database(db: &std::path::Path) {
    for suffix in ["", "-shm", "-wal"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", db.display()));
    }
}

#[tokio::test]
async fn many_slow_http1_uploads_hold_no_more_than_the_body_budget() {
    const CLIENTS: usize = 64;
    const BODY: usize = 1_000_000;
    const BUDGET: u64 = 8 * 1024 * 1024;
    let (args, config) = budgeted(BUDGET, 256, 128);
    let db = temporary_database("slow-uploads");
    let process = start_process_with(&db, &args.iter().map(String::as_str).collect::<Vec<_>>()).await;
    let pid = process.child.id();
    let before = resident_bytes(pid);
    let (peak, stop) = watch_peak(pid);

    // Each sends a 1 MB manifest slowly: 50 KB every 250 ms, five seconds in all.
    let address = process.base.trim_start_matches("http://").to_owned();
    let uploads = (0..CLIENTS).map(|_| {
        let address = address.clone();
        tokio::spawn(async move {
            let stream = TcpStream::connect(address).await.expect("connect");
            let (mut reader, mut writer) = stream.into_split();
            let sending = tokio::spawn(async move {
                writer.write_all(post_head("/api/v1/agents", BODY, "").as_bytes()).await?;
                for _ in 0..BODY / 50_000 {
                    writer.write_all(&[b'x'; 50_000]).await?;
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                Ok::<_, std::io::Error>(writer)
            });
            let answer = read_answer(&mut reader, Duration::from_secs(120)).await;
            let _ = sending.await;
            answer
        })
    });
    let answers: Vec<_> = futures_util::future::join_all(uploads).await.into_iter().map(|answer| answer.expect("a client").expect("an answer")).collect();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let grown = peak.load(std::sync::atomic::Ordering::Relaxed).saturating_sub(before);

    let admitted = (BUDGET / (BODY as u64).div_ceil(1024) / 1024) as usize;
    let served = answers.iter().filter(|(status, _, _)| *status == 401).count();
    let refused: Vec<_> = answers.iter().filter(|(status, _, _)| *status == 503).collect();
    assert_eq!((served, refused.len()), (admitted, CLIENTS - admitted), "{answers:?}");
    assert!(refused.iter().all(|(_, head, _)| has_header(head, "retry-after")));
    let bound = config.in_flight_memory_bound();
    println!(
        "{CLIENTS} slow HTTP/1.1 uploads of {BODY} bytes: resident {:.1} MiB before, grew by {:.1} MiB at most (bound {:.1} MiB)",
        before as f64 / MIB,
        grown as f64 / MIB,
        bound as f64 / MIB
    );
    assert!(grown < bound, "resident memory grew by {grown} bytes, past the bound of {bound}");
    drop(process);
    remove_database(&db);
}

#[tokio::test]
async fn hundreds_of_http2_streams_are_refused_past_the_limit_and_hold_no_more_than_the_budget() {
    const CONNECTIONS: usize = 3;
    const STREAMS: usize = 300;
    const BODY: usize = 1_000_000;
    const BUDGET: u64 = 8 * 1024 * 1024;
    let (args, config) = budgeted(BUDGET, 400, 128);
    let db = temporary_database("h2-streams");
    let process = start_process_with(&db, &args.iter().map(String::as_str).collect::<Vec<_>>()).await;
    let pid = process.child.id();
    let before = resident_bytes(pid);
    let (peak, stop) = watch_peak(pid);

    // Every stream sends all of its 1 MB body but the last byte, with credentials that are
    // checked only once the body is in.
    let address = process.base.trim_start_matches("http://").to_owned();
    let mut flood = Vec::new();
    for _ in 0..CONNECTIONS {
        flood.push(Flood::open(&address, "/api/v1/agents", STREAMS, BODY, true).await);
    }
    // The streams the budget has room for wait for their last byte; every other one is
    // refused or answered 503 meanwhile.
    let admitted = (BUDGET / (BODY as u64).div_ceil(1024) / 1024) as usize;
    let deadline = Instant::now() + Duration::from_secs(120);
    while flood.iter().map(Flood::ended).sum::<usize>() < CONNECTIONS * STREAMS - admitted {
        assert!(Instant::now() < deadline, "streams still unanswered");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Time for the admitted streams' bodies to arrive and be buffered.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let grown = peak.load(std::sync::atomic::Ordering::Relaxed).saturating_sub(before);
    let mut results = Vec::new();
    for connection in flood {
        results.extend(connection.finish().await);
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);

    let count = |wanted: &Outcome| results.iter().filter(|outcome| *outcome == wanted).count();
    let refused = count(&Outcome::Refused);
    let busy = count(&Outcome::Answered(503, true));
    let unauthenticated = count(&Outcome::Answered(401, false));
    assert_eq!(
        (refused, busy, unauthenticated),
        (CONNECTIONS * (STREAMS - 100), CONNECTIONS * 100 - admitted, admitted),
        "{:?}",
        results.iter().filter(|outcome| !matches!(outcome, Outcome::Refused)).collect::<Vec<_>>()
    );
    let bound = config.in_flight_memory_bound();
    println!(
        "{CONNECTIONS} HTTP/2 connections x {STREAMS} streams of {BODY} bytes: {refused} refused, {busy} answered 503, {unauthenticated} read; \
         resident {:.1} MiB before, grew by {:.1} MiB at most (bound {:.1} MiB)",
        before as f64 / MIB,
        grown as f64 / MIB,
        bound as f64 / MIB
    );
    assert!(grown < bound, "resident memory grew by {grown} bytes, past the bound of {bound}");
    drop(process);
    remove_database(&db);
}

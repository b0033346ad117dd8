//! Connections cannot be hoarded and bodies are bounded whatever the framing: a client that
//! trickles half a request head loses its connection after the header-read timeout, an
//! idle kept-alive connection closes after the idle timeout, a normal client is served
//! while others hold slow connections, and an HTTP/2 body with no length is refused at the
//! limit without being buffered.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use nexus::config::ServeConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

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
    let port = free_port();
    let mut command = Command::new(env!("CARGO_BIN_EXE_nexus"));
    for (name, _) in std::env::vars().filter(|(name, _)| name.starts_with("NEXUS_")) {
        command.env_remove(name);
    }
    let child = command
        .args(["--listen", &format!("127.0.0.1:{port}"), "--metrics-listen", &format!("127.0.0.1:{}", free_port())])
        .args(["--database-url", &format!("sqlite://{}", db.display())])
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

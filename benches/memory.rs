//! Resident memory under the worst load an anonymous client can send: what the process
//! holds while it is flooded, against `deploy/`'s 512 MiB memory limit.
//!
//! Starts the `nexus` binary as a process of its own with its default limits (SQLite,
//! in-memory cluster, stub node), a fresh one for each of:
//!
//! - HTTP/2: `NEXUS_BENCH_H2_CONNECTIONS` connections (default 4) of 300 streams each, every
//!   stream a `POST /api/v1/agents` with a made-up bearer token (checked only once the body
//!   is in) and a 1 MB body of no declared length, all of it sent but the last byte, every
//!   request sent before the server's settings are read;
//! - HTTP/1.1: `NEXUS_BENCH_H1_CONNECTIONS` connections (default 512), each the same
//!   request with its body chunked and sent slowly (50 KB every 250 ms), the last byte
//!   held back.
//!
//! For each it reports the resident memory (from `/proc`) at rest and at its highest while
//! the bodies are held, as a ratio to the 512 MiB limit, and what became of the requests;
//! then it sends the last bytes and waits for every answer. The configured bound
//! (`NEXUS_BODY_BUDGET` + connections x 128 KiB + requests x 64 KiB, for the defaults)
//! is printed alongside.
//!
//! `cargo bench --bench memory`; `NEXUS_SCALE_BINARY=path/to/nexus` runs another build
//! (an older one, for before/after figures), which is given the same environment.

mod common;
#[path = "../tests/api/h2_flood.rs"]
mod h2_flood;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{Server, env_or, rss_mib};
use h2_flood::{Flood, Outcome};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const STREAMS: usize = 300;
const BODY: usize = 1_000_000;
const LIMIT_MIB: f64 = 512.0;

/// Samples the process's resident memory every 20 ms; the highest seen, in KiB.
struct Peak {
    highest: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl Peak {
    fn watch(pid: u32) -> Self {
        let (highest, stop) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicBool::new(false)));
        let (seen, stopped) = (highest.clone(), stop.clone());
        tokio::spawn(async move {
            while !stopped.load(Ordering::Relaxed) {
                // The sampler keeps KiB, to hold it in an integer.
                #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss, reason = "a positive size in KiB")]
                seen.fetch_max((rss_mib(pid) * 1024.0) as u64, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
        Self { highest, stop }
    }

    fn mib(&self) -> f64 {
        #[allow(clippy::cast_precision_loss, reason = "KiB of a process fit a float")]
        let kib = self.highest.load(Ordering::Relaxed) as f64;
        kib / 1024.0
    }
}

impl Drop for Peak {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Waits until `ended()` has not moved for three seconds (at most a minute).
async fn settle(ended: impl Fn() -> usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let (mut last, mut since) = (ended(), Instant::now());
    while Instant::now() < deadline && since.elapsed() < Duration::from_secs(3) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = ended();
        if now != last {
            (last, since) = (now, Instant::now());
        }
    }
}

fn report(name: &str, rest: f64, peak: &Peak, outcomes: &BTreeMap<String, usize>) {
    println!(
        "{name}: resident {rest:.1} MiB at rest, {:.1} MiB at most while flooded ({:.2} of the {LIMIT_MIB} MiB limit); outcomes {outcomes:?}",
        peak.mib(),
        peak.mib() / LIMIT_MIB
    );
}

async fn http2(server: &Server, connections: usize) {
    let address = server.base.trim_start_matches("http://").to_owned();
    let rest = rss_mib(server.pid());
    let peak = Peak::watch(server.pid());
    let mut flood = Vec::new();
    for _ in 0..connections {
        flood.push(Flood::open(&address, "/api/v1/agents", STREAMS, BODY, false).await);
    }
    settle(|| flood.iter().map(Flood::ended).sum()).await;
    let mut outcomes = BTreeMap::new();
    for connection in flood {
        for outcome in connection.finish().await {
            let name = match outcome {
                Outcome::Refused => "refused".to_owned(),
                Outcome::Answered(status, _) => status.to_string(),
                Outcome::Failed(error) => error,
            };
            *outcomes.entry(name).or_default() += 1;
        }
    }
    report(&format!("HTTP/2, {connections} connections x {STREAMS} streams x {BODY} bytes"), rest, &peak, &outcomes);
}

/// One slow upload: the status of its answer, or why there was none.
async fn slow_upload(address: String, release: Arc<tokio::sync::Notify>, answered: Arc<AtomicU64>) -> String {
    let Ok(stream) = TcpStream::connect(address).await else { return "no connection".to_owned() };
    let (mut reader, mut writer) = stream.into_split();
    let sending = tokio::spawn(async move {
        let head = "POST /api/v1/agents HTTP/1.1\r\nHost: nexus\r\nAuthorization: Bearer not-a-token\r\nContent-Type: application/yaml\r\nTransfer-Encoding: chunked\r\n\r\n";
        writer.write_all(head.as_bytes()).await?;
        let piece = vec![b'x'; 50_000];
        let mut sent = 0;
        while sent < BODY - 1 {
            let next = piece.len().min(BODY - 1 - sent);
            writer.write_all(format!("{next:x}\r\n").as_bytes()).await?;
            writer.write_all(&piece[..next]).await?;
            writer.write_all(b"\r\n").await?;
            sent += next;
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        release.notified().await;
        writer.write_all(b"1\r\nx\r\n0\r\n\r\n").await?;
        Ok::<_, std::io::Error>(writer)
    });
    let mut received = Vec::new();
    let mut buffer = [0_u8; 4096];
    let status = loop {
        match tokio::time::timeout(Duration::from_secs(120), reader.read(&mut buffer)).await {
            Ok(Ok(read)) if read > 0 => {
                received.extend_from_slice(&buffer[..read]);
                if received.len() >= 12 {
                    break String::from_utf8_lossy(&received[9..12]).to_string();
                }
            }
            _ => break "closed".to_owned(),
        }
    };
    answered.fetch_add(1, Ordering::Relaxed);
    sending.abort();
    status
}

async fn http1(server: &Server, connections: usize) {
    let address = server.base.trim_start_matches("http://").to_owned();
    let rest = rss_mib(server.pid());
    let peak = Peak::watch(server.pid());
    let release = Arc::new(tokio::sync::Notify::new());
    let answered = Arc::new(AtomicU64::new(0));
    let uploads: Vec<_> = (0..connections).map(|_| tokio::spawn(slow_upload(address.clone(), release.clone(), answered.clone()))).collect();
    // The bodies take five seconds to send; then whatever is held stays held.
    tokio::time::sleep(Duration::from_secs(6)).await;
    settle(|| usize::try_from(answered.load(Ordering::Relaxed)).unwrap_or(usize::MAX)).await;
    let mut outcomes = BTreeMap::new();
    release.notify_waiters();
    for upload in uploads {
        *outcomes.entry(upload.await.expect("an upload")).or_default() += 1;
    }
    report(&format!("HTTP/1.1, {connections} slow uploads x {BODY} bytes"), rest, &peak, &outcomes);
}

#[tokio::main]
async fn main() {
    let h2_connections = usize::try_from(env_or("NEXUS_BENCH_H2_CONNECTIONS", 4)).expect("a count");
    let h1_connections = usize::try_from(env_or("NEXUS_BENCH_H1_CONNECTIONS", 512)).expect("a count");
    let defaults = nexus::config::ServeConfig::local("sqlite::memory:");
    #[allow(clippy::cast_precision_loss, reason = "a size in bytes fits a float")]
    let bound = defaults.in_flight_memory_bound() as f64 / 1024.0 / 1024.0;
    println!("configured bound of what requests hold, for the defaults: {bound:.0} MiB (beyond the idle process and password hashes)");
    // A process of its own for each, so that neither starts with what the other left.
    let server = Server::start(env!("CARGO_BIN_EXE_nexus"), "memory-h2", &[]).await;
    http2(&server, h2_connections).await;
    drop(server);
    let server = Server::start(env!("CARGO_BIN_EXE_nexus"), "memory-h1", &[]).await;
    http1(&server, h1_connections).await;
}

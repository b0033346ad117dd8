//! An HTTP/2 client holding hundreds of streams on one connection, as an attacker would:
//! every request is sent before the server's settings are read (so before the client
//! knows the server's stream limit), each with all of its body but the last byte. Shared
//! by the API tests and the memory benchmark.

use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

/// A connection whose reading waits until `open_at` HEADERS frames have been written: an
/// HTTP/2 client on it sends all its requests before it has read the server's settings
/// (so before it knows the server's stream limit), as a client racing them would.
pub struct Gated {
    inner: TcpStream,
    /// Bytes of the connection preface still to pass.
    preface: usize,
    /// The frame header being written, and the bytes of payload that follow it.
    header: Vec<u8>,
    payload: usize,
    headers_sent: usize,
    open_at: usize,
    reader: Option<Waker>,
}

impl Gated {
    pub fn new(inner: TcpStream, open_at: usize) -> Self {
        Self { inner, preface: 24, header: Vec::new(), payload: 0, headers_sent: 0, open_at, reader: None }
    }

    fn count(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            let skip = if self.preface > 0 { &mut self.preface } else { &mut self.payload };
            if *skip > 0 {
                let passed = (*skip).min(bytes.len());
                *skip -= passed;
                bytes = &bytes[passed..];
                continue;
            }
            let taken = (9 - self.header.len()).min(bytes.len());
            self.header.extend_from_slice(&bytes[..taken]);
            bytes = &bytes[taken..];
            if self.header.len() == 9 {
                self.payload = usize::from(self.header[0]) << 16 | usize::from(self.header[1]) << 8 | usize::from(self.header[2]);
                self.headers_sent += usize::from(self.header[3] == 0x1);
                self.header.clear();
            }
        }
    }
}

impl AsyncRead for Gated {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        if self.headers_sent < self.open_at {
            self.reader = Some(cx.waker().clone());
            return Poll::Pending;
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Gated {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        let this = &mut *self;
        let written = Pin::new(&mut this.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(count)) = written {
            this.count(&buf[..count]);
            if this.headers_sent >= this.open_at
                && let Some(reader) = this.reader.take()
            {
                reader.wake();
            }
        }
        written
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// What became of one HTTP/2 request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Reset by the server with `REFUSED_STREAM`: past the connection's stream limit.
    Refused,
    /// Answered with this status, with `Retry-After` or without.
    Answered(u16, bool),
    Failed(String),
}

/// One connection's streams, each with all of its body sent but the last byte.
pub struct Flood {
    outcomes: Vec<JoinHandle<Outcome>>,
    senders: Vec<h2::SendStream<Bytes>>,
    driver: JoinHandle<()>,
}

impl Flood {
    /// Opens a connection to `address` and `streams` POSTs to `path`, each with a body of
    /// `body` bytes (its length `declared`, or not) sending all of it but the last byte,
    /// and credentials (not valid ones: they are checked once the body has been read).
    pub async fn open(address: &str, path: &str, streams: usize, body: usize, declared: bool) -> Self {
        let payload = Bytes::from(vec![b' '; body - 1]);
        let stream = TcpStream::connect(address).await.expect("connect");
        let (mut client, connection) = h2::client::Builder::new()
            .initial_max_send_streams(streams)
            .handshake::<_, Bytes>(Gated::new(stream, streams))
            .await
            .expect("an HTTP/2 connection");
        let driver = tokio::spawn(async move {
            let _ = connection.await;
        });
        let (mut outcomes, mut senders) = (Vec::new(), Vec::new());
        for _ in 0..streams {
            client = client.ready().await.expect("ready for a request");
            let mut request = http::Request::post(format!("http://{address}{path}"))
                .header("content-type", "application/yaml")
                .header("authorization", "Bearer not-a-token")
                .body(())
                .expect("a request");
            if declared {
                request.headers_mut().insert("content-length", body.into());
            }
            let (response, mut send) = client.send_request(request, false).expect("a stream");
            // Buffered by the client, sent as the server's windows allow.
            send.send_data(payload.clone(), false).expect("the body");
            senders.push(send);
            outcomes.push(tokio::spawn(async move {
                match response.await {
                    Ok(answer) => Outcome::Answered(answer.status().as_u16(), answer.headers().contains_key("retry-after")),
                    Err(err) if err.reason() == Some(h2::Reason::REFUSED_STREAM) => Outcome::Refused,
                    Err(err) => Outcome::Failed(err.to_string()),
                }
            }));
        }
        Self { outcomes, senders, driver }
    }

    /// How many of its streams have ended (refused or answered).
    pub fn ended(&self) -> usize {
        self.outcomes.iter().filter(|outcome| outcome.is_finished()).count()
    }

    /// Sends every stream's last byte and waits until each has ended.
    pub async fn finish(self) -> Vec<Outcome> {
        for mut send in self.senders {
            let _ = send.send_data(Bytes::from_static(b" "), true);
        }
        let mut results = Vec::new();
        for outcome in self.outcomes {
            results.push(tokio::time::timeout(Duration::from_secs(60), outcome).await.expect("every stream ends").expect("a stream task"));
        }
        self.driver.abort();
        results
    }
}

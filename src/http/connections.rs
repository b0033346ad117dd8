//! What one client can hold of the server: no more than `max_connections` connections are
//! served at once (the rest wait in the listen backlog), a request head must arrive whole
//! within the header-read timeout (so a client trickling half a header cannot keep a
//! connection, and with it a slot and a descriptor, for as long as it likes), a connection
//! with no traffic closes after the idle timeout, and a request whose answer is not ready
//! within the request timeout is answered 503.
//!
//! The header-read deadline is kept on the connection's bytes: it is armed when the
//! connection opens and again whenever the client starts sending after an answer (the next
//! request on a kept-alive connection), and disarmed at the blank line that ends a head. An
//! HTTP/2 connection's preface ends with one too; HTTP/2 then frames its own traffic, so the
//! deadline is never armed again there and the idle timeout bounds it.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use poem::http::StatusCode;
use poem::listener::Acceptor;
use poem::web::{LocalAddr, RemoteAddr};
use poem::{Endpoint, IntoResponse, Request, Response};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Sleep;

use super::error::json_error;

/// How long clients may take and how many connections are served at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// The longest a request head may take to arrive.
    pub header_read_timeout: Duration,
    /// The longest a connection may carry no traffic.
    pub idle_timeout: Duration,
    /// The longest a request may take to be answered (a streamed answer's body may last longer).
    pub request_timeout: Duration,
    /// How many connections are served at once.
    pub max_connections: usize,
}

/// An acceptor that serves at most `max_connections` connections at once and holds each
/// to the header-read deadline.
pub struct GuardedAcceptor<A> {
    inner: A,
    slots: Arc<Semaphore>,
    header_read_timeout: Duration,
}

impl<A> GuardedAcceptor<A> {
    /// Wraps `inner` with `limits`.
    pub fn new(inner: A, limits: &ConnectionLimits) -> Self {
        Self { inner, slots: Arc::new(Semaphore::new(limits.max_connections.max(1))), header_read_timeout: limits.header_read_timeout }
    }
}

impl<A: Acceptor> Acceptor for GuardedAcceptor<A> {
    type Io = Guarded<A::Io>;

    fn local_addr(&self) -> Vec<LocalAddr> {
        self.inner.local_addr()
    }

    async fn accept(&mut self) -> io::Result<(Self::Io, LocalAddr, RemoteAddr, poem::http::uri::Scheme)> {
        // Waiting for a slot before accepting leaves the connection in the kernel's backlog
        // rather than holding it open here.
        let slot = self.slots.clone().acquire_owned().await.map_err(|_| io::Error::other("connection slots closed"))?;
        let (io, local, remote, scheme) = self.inner.accept().await?;
        Ok((Guarded::new(io, slot, self.header_read_timeout), local, remote, scheme))
    }
}

/// Where a connection is in its request heads.
enum Head {
    /// A head is arriving: it must be whole by the deadline. `matched` counts the bytes of
    /// the closing `\r\n\r\n` seen so far.
    Arriving { deadline: Pin<Box<Sleep>>, matched: u8 },
    /// A head has arrived; `answered` once the server has written since.
    Arrived { answered: bool },
    /// The connection speaks HTTP/2: no more heads to watch.
    Framed,
}

/// A connection held to its slot and to the header-read deadline.
pub struct Guarded<T> {
    inner: T,
    _slot: OwnedSemaphorePermit,
    timeout: Duration,
    head: Head,
    /// Whether the connection opened with the HTTP/2 preface; unknown before its first bytes.
    http2: Option<bool>,
}

impl<T> Guarded<T> {
    fn new(inner: T, slot: OwnedSemaphorePermit, timeout: Duration) -> Self {
        Self { inner, _slot: slot, timeout, head: arriving(timeout), http2: None }
    }

    /// Follows the head through `bytes` just read.
    fn observe(&mut self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        let http2 = *self.http2.get_or_insert_with(|| bytes.starts_with(b"PRI "));
        let mut rest = bytes;
        loop {
            match &mut self.head {
                Head::Framed => return,
                Head::Arrived { answered: false } => return,
                Head::Arrived { answered: true } => self.head = arriving(self.timeout),
                Head::Arriving { matched, .. } => {
                    let Some(end) = head_end(rest, matched) else { return };
                    rest = &rest[end..];
                    // The HTTP/2 preface is the one head such a connection sends.
                    self.head = if http2 { Head::Framed } else { Head::Arrived { answered: false } };
                }
            }
            if rest.is_empty() {
                return;
            }
        }
    }
}

fn arriving(timeout: Duration) -> Head {
    Head::Arriving { deadline: Box::pin(tokio::time::sleep(timeout)), matched: 0 }
}

/// Scans `bytes` for the end of a head, carrying how much of `\r\n\r\n` was matched across
/// reads; returns the offset just past it when found.
fn head_end(bytes: &[u8], matched: &mut u8) -> Option<usize> {
    const END: &[u8; 4] = b"\r\n\r\n";
    for (at, &byte) in bytes.iter().enumerate() {
        *matched = if byte == END[usize::from(*matched)] {
            *matched + 1
        } else if byte == b'\r' {
            1
        } else {
            0
        };
        if *matched == 4 {
            *matched = 0;
            return Some(at + 1);
        }
    }
    None
}

fn timed_out() -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, "request head not received in time")
}

impl<T: AsyncRead + Unpin> AsyncRead for Guarded<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                this.observe(&buf.filled()[before..]);
                if let Head::Arriving { deadline, .. } = &this.head
                    && deadline.is_elapsed()
                {
                    return Poll::Ready(Err(timed_out()));
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending => {
                if let Head::Arriving { deadline, .. } = &mut this.head
                    && deadline.as_mut().poll(cx).is_ready()
                {
                    return Poll::Ready(Err(timed_out()));
                }
                Poll::Pending
            }
            failed => failed,
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Guarded<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if let Head::Arrived { answered } = &mut this.head {
            *answered = true;
        }
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(mut self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if let Head::Arrived { answered } = &mut this.head {
            *answered = true;
        }
        Pin::new(&mut this.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Answers 503 for a request not answered within `limit`; a streamed answer's body is not
/// bounded, only the wait for its head.
pub async fn bound_request<E: Endpoint>(next: E, request: Request, limit: Duration) -> poem::Result<Response> {
    match tokio::time::timeout(limit, next.call(request)).await {
        Ok(answer) => answer.map(IntoResponse::into_response),
        Err(_) => Ok(json_error(StatusCode::SERVICE_UNAVAILABLE, format!("the request was not answered within {}", humantime::format_duration(limit)))),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use poem::http::StatusCode;
    use poem::{Endpoint, EndpointExt, Request};

    use super::{Guarded, Head, bound_request, head_end};

    #[tokio::test]
    async fn the_http2_preface_is_held_to_the_deadline_and_then_frames_are_not() {
        let slot = std::sync::Arc::new(tokio::sync::Semaphore::new(1)).acquire_owned().await.expect("a slot");
        let mut connection = Guarded::new((), slot, Duration::from_secs(10));
        connection.observe(b"PRI * HTTP/2.0\r\n");
        assert!(matches!(connection.head, Head::Arriving { .. }), "half a preface is still arriving");
        connection.observe(b"\r\nSM\r\n\r\n");
        assert!(matches!(connection.head, Head::Framed), "past the preface only frames follow");
        connection.observe(b"\x00\x00\x00\x04\x00");
        assert!(matches!(connection.head, Head::Framed));
    }

    #[tokio::test]
    async fn a_request_not_answered_in_time_is_answered_503() {
        let slow = poem::endpoint::make(|_| async {
            tokio::time::sleep(Duration::from_secs(5)).await;
            "late"
        });
        let bounded = slow.around(|next, request| bound_request(next, request, Duration::from_millis(50)));
        let answer = bounded.get_response(Request::default()).await;
        assert_eq!(answer.status(), StatusCode::SERVICE_UNAVAILABLE);
        let body = answer.into_body().into_string().await.expect("a body");
        assert_eq!(body, r#"{"error":"the request was not answered within 50ms"}"#);
    }

    #[test]
    fn a_head_ends_at_its_blank_line_even_across_reads() {
        let mut matched = 0;
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nHost: a\r\n", &mut matched), None);
        assert_eq!(head_end(b"\r", &mut matched), None);
        assert_eq!(head_end(b"\nbody", &mut matched), Some(1));
        assert_eq!(head_end(b"\r\r\n\r\n", &mut 0), Some(5));
        assert_eq!(head_end(b"a\r\nb\r\n", &mut 0), None);
    }
}

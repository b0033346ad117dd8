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
//! interim answer (`100 Continue` to a client that sent `Expect: 100-continue`) is not an
//! answer: the body that follows it is body, not the start of another head. An HTTP/2
//! connection's preface ends with a blank line too; HTTP/2 then frames its own traffic, so
//! the deadline is never armed again there and the idle timeout bounds it.
//!
//! Connections are served here rather than by poem's server, so that what one connection
//! may hold is set explicitly: at most [`HEAD_BUFFER`] of HTTP/1.1 read buffer (a longer
//! head is answered 431), and on HTTP/2 at most `http2_max_streams` streams at once
//! (more are refused with `REFUSED_STREAM`), flow-control windows of [`HTTP2_WINDOW`] (what
//! a client may send before the server has read it), and [`HTTP2_HEADER_LIST`] of headers
//! per request. Requests being answered at once are capped too ([`InFlight`]).

use std::convert::Infallible;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use poem::endpoint::BoxEndpoint;
use poem::http::StatusCode;
use poem::http::uri::Scheme;
use poem::listener::Acceptor;
use poem::web::{LocalAddr, RemoteAddr};
use poem::{Endpoint, EndpointExt, IntoResponse, Middleware, Request, Response};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::time::{Instant, Sleep};

use super::error::{json_error, status_of};

/// The most an HTTP/1.1 connection buffers of what it reads: a request head must fit (as
/// an HTTP/2 request's headers must fit [`HTTP2_HEADER_LIST`]); a longer one is answered 431.
pub const HEAD_BUFFER: usize = 16 * 1024;
/// HTTP/2 flow-control windows, of each stream and of the whole connection: what a client
/// may have sent that the server has not read yet (HTTP/2's own default is 65,535).
pub const HTTP2_WINDOW: u32 = 64 * 1024;
/// The most bytes of headers (decompressed) one HTTP/2 request may carry.
pub const HTTP2_HEADER_LIST: u32 = 16 * 1024;
/// What one open connection may hold at most, counted generously: its read buffer
/// ([`HEAD_BUFFER`]) or its unread HTTP/2 data ([`HTTP2_WINDOW`]), and as much again for
/// the protocol's own state (write buffer, header compression tables, frame buffers).
pub const CONNECTION_MEMORY: u64 = 128 * 1024;
/// What one request being answered may hold at most beyond its body, counted generously:
/// its head (at most [`HTTP2_HEADER_LIST`] once decompressed) and its tasks' state.
pub const REQUEST_MEMORY: u64 = 64 * 1024;

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
    /// How many streams one HTTP/2 connection may have open at once.
    pub http2_max_streams: u32,
    /// How many requests are answered at once, all connections together.
    pub max_requests: usize,
    /// How many bytes of request bodies may be buffered at once, all requests together.
    pub body_budget: usize,
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
    /// When the connection last carried traffic, for the idle timeout.
    activity: Activity,
}

/// When a connection last carried traffic: milliseconds since it opened.
#[derive(Clone)]
struct Activity {
    opened: Instant,
    last: Arc<AtomicU64>,
}

impl Activity {
    fn new() -> Self {
        Self { opened: Instant::now(), last: Arc::new(AtomicU64::new(0)) }
    }

    fn touch(&self) {
        let now = u64::try_from(self.opened.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last.store(now, Ordering::Relaxed);
    }

    /// Resolves once the connection has carried nothing for `timeout`.
    async fn idle_for(&self, timeout: Duration) {
        loop {
            let due = self.opened + Duration::from_millis(self.last.load(Ordering::Relaxed)) + timeout;
            if Instant::now() >= due {
                return;
            }
            tokio::time::sleep_until(due).await;
        }
    }
}

impl<T> Guarded<T> {
    fn new(inner: T, slot: OwnedSemaphorePermit, timeout: Duration) -> Self {
        Self { inner, _slot: slot, timeout, head: arriving(timeout), http2: None, activity: Activity::new() }
    }

    /// Notes that the server wrote `bytes`: an answer, unless they are only interim
    /// answers (`100 Continue`), after which the request's body is still to come.
    fn wrote(&mut self, bytes: &[u8]) {
        self.activity.touch();
        if let Head::Arrived { answered } = &mut self.head
            && !only_interim(bytes)
        {
            *answered = true;
        }
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

/// Whether `bytes` written to an HTTP/1.1 connection are nothing but interim (1xx) answer
/// heads, such as the `HTTP/1.1 100 Continue` that invites a client to send its body.
fn only_interim(mut bytes: &[u8]) -> bool {
    loop {
        let interim = bytes.len() >= 10 && bytes.starts_with(b"HTTP/1.") && bytes[9] == b'1';
        if !interim {
            return false;
        }
        let mut matched = 0;
        match head_end(bytes, &mut matched) {
            // An interim head written in pieces: still nothing but it.
            None => return true,
            Some(end) => bytes = &bytes[end..],
        }
        if bytes.is_empty() {
            return true;
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
                this.activity.touch();
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
        this.wrote(buf);
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
        let mut written = bufs.iter().filter(|buf| !buf.is_empty());
        match (written.next(), written.next()) {
            (Some(first), None) => this.wrote(first),
            // An interim head is written alone; several pieces are an answer.
            (Some(_), Some(_)) => this.wrote(b"answer"),
            (None, _) => {}
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

/// The body type hyper writes: what poem's answers convert to.
type AnswerBody = http_body_util::combinators::BoxBody<Bytes, io::Error>;

/// Serves `endpoint` on `acceptor` within `limits` until `shutdown` resolves; then stops
/// accepting, lets open connections finish their requests for up to `grace`, and drops
/// what is left.
///
/// # Errors
/// None today: a failed accept (out of descriptors) is logged and retried shortly.
pub async fn serve_connections<A, E>(acceptor: A, endpoint: E, limits: ConnectionLimits, shutdown: impl Future<Output = ()>, grace: Duration) -> io::Result<()>
where
    A: Acceptor + 'static,
    E: Endpoint + 'static,
{
    let endpoint: Arc<BoxEndpoint<'static>> = Arc::new(endpoint.map_to_response().boxed());
    let mut acceptor = GuardedAcceptor::new(acceptor, &limits);
    let (stop, stopping) = watch::channel(false);
    let mut connections = tokio::task::JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        while connections.try_join_next().is_some() {}
        tokio::select! {
            () = &mut shutdown => break,
            accepted = acceptor.accept() => match accepted {
                Ok((io, local, remote, scheme)) => {
                    connections.spawn(serve_connection(io, Peer { local, remote, scheme }, endpoint.clone(), limits, stopping.clone()));
                }
                Err(err) => {
                    tracing::warn!(error = %err, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
    drop(acceptor);
    let _ = stop.send(true);
    let finished = tokio::time::timeout(grace, async { while connections.join_next().await.is_some() {} }).await;
    if finished.is_err() {
        tracing::warn!(open = connections.len(), "connections still open after the shutdown grace; closing them");
    }
    connections.shutdown().await;
    Ok(())
}

/// The addresses and scheme of one connection, copied into each of its requests.
#[derive(Clone)]
struct Peer {
    local: LocalAddr,
    remote: RemoteAddr,
    scheme: Scheme,
}

async fn serve_connection<T>(io: Guarded<T>, peer: Peer, endpoint: Arc<BoxEndpoint<'static>>, limits: ConnectionLimits, mut stopping: watch::Receiver<bool>)
where
    T: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let activity = io.activity.clone();
    let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
        let endpoint = endpoint.clone();
        let request = Request::from((request, peer.local.clone(), peer.remote.clone(), peer.scheme.clone()));
        async move { Ok::<_, Infallible>(hyper::Response::<AnswerBody>::from(endpoint.get_response(request).await)) }
    });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().max_buf_size(HEAD_BUFFER);
    builder
        .http2()
        .max_concurrent_streams(limits.http2_max_streams)
        .initial_stream_window_size(HTTP2_WINDOW)
        .initial_connection_window_size(HTTP2_WINDOW)
        .max_header_list_size(HTTP2_HEADER_LIST)
        .max_pending_accept_reset_streams(20);
    let connection = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(connection);
    tokio::select! {
        _ = connection.as_mut() => return,
        () = activity.idle_for(limits.idle_timeout) => {}
        _ = stopping.wait_for(|stop| *stop) => {}
    }
    // Idle, or the server is stopping: finish what is in flight, take nothing new.
    connection.as_mut().graceful_shutdown();
    let _ = connection.await;
}

/// Caps the requests being answered at once, all connections together: past the cap a
/// request is answered 503 with `Retry-After` at once, holding nothing. A request counts
/// until its answer's head is ready (a streamed body, such as the status stream, does not).
pub(crate) struct InFlight {
    slots: Arc<Semaphore>,
}

impl InFlight {
    pub(crate) fn new(max: usize) -> Self {
        Self { slots: Arc::new(Semaphore::new(max.max(1))) }
    }
}

impl<E: Endpoint> Middleware<E> for InFlight {
    type Output = InFlightEndpoint<E>;

    fn transform(&self, inner: E) -> Self::Output {
        InFlightEndpoint { inner, slots: self.slots.clone() }
    }
}

pub(crate) struct InFlightEndpoint<E> {
    inner: E,
    slots: Arc<Semaphore>,
}

impl<E: Endpoint> Endpoint for InFlightEndpoint<E> {
    type Output = Response;

    async fn call(&self, request: Request) -> poem::Result<Response> {
        let Ok(_slot) = self.slots.try_acquire() else {
            metrics::counter!("nexus_overload_refusals_total", "limit" => "requests").increment(1);
            let busy = nexus_ports::Error::Overloaded { message: "too many requests are being served; retry shortly".into(), retry_after_secs: 1 };
            return Ok(status_of(busy).into_response());
        };
        self.inner.call(request).await.map(IntoResponse::into_response)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use poem::http::StatusCode;
    use poem::{Endpoint, EndpointExt, Request};

    use super::{Guarded, Head, bound_request, head_end, only_interim};

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

    #[test]
    fn interim_answers_are_not_answers() {
        assert!(only_interim(b"HTTP/1.1 100 Continue\r\n\r\n"));
        assert!(only_interim(b"HTTP/1.1 100 Continue\r\n"), "an interim head in pieces");
        assert!(only_interim(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\n\r\n"));
        assert!(!only_interim(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n\r\n"));
        assert!(!only_interim(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"));
        assert!(!only_interim(b"{\"error\":\"x\"}"));
    }

    #[tokio::test]
    async fn a_body_after_100_continue_does_not_arm_the_head_deadline_again() {
        let slot = std::sync::Arc::new(tokio::sync::Semaphore::new(1)).acquire_owned().await.expect("a slot");
        let mut connection = Guarded::new((), slot, Duration::from_secs(10));
        connection.observe(b"POST / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n");
        connection.wrote(b"HTTP/1.1 100 Continue\r\n\r\n");
        connection.observe(b"hel");
        assert!(matches!(connection.head, Head::Arrived { answered: false }), "the body is body");
        connection.observe(b"lo");
        connection.wrote(b"HTTP/1.1 401 Unauthorized\r\ncontent-length: 0\r\n\r\n");
        connection.observe(b"GET / HTTP/1.1\r\n");
        assert!(matches!(connection.head, Head::Arriving { .. }), "after the answer, a new head is timed");
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

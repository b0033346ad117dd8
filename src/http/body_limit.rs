//! Caps request bodies, whatever their framing, and what all of them buffer together.
//!
//! Each route takes at most what it needs: [`AUTH_BODY_LIMIT`] under `/auth/` and on every
//! path outside the API (small JSON, or no body at all), [`BODY_LIMIT`] under `/api/`
//! (manifests). A declared `Content-Length` over the limit is refused before any byte is
//! kept; a body without one (HTTP/1.1 chunked, or HTTP/2, which needs no header at all to
//! send a body) is read as it arrives, up to the limit, and refused past it.
//! poem's `SizeLimit` would answer 411 to every request without `Content-Length`.
//!
//! A request under `/api/` without any credentials is answered 401 before its body is read
//! (every operation that takes a body authenticates first), so its body is neither kept
//! nor reserved for; it is only held to the limit as it passes. Every other body is
//! buffered within a process-wide budget: before a byte is read, a body reserves
//! its declared length (or its route's limit when it declares none) and keeps the
//! reservation until its request is answered. A body that does not fit waits up to
//! [`BUDGET_WAIT`] for others to finish, then is answered 503 with `Retry-After`, never
//! buffered (thrown away as it arrives, as below).
//!
//! Most HTTP/1.1 clients read no answer before they have sent their whole body, so a
//! refusal is only seen if the body is consumed: a moderately oversized body (up to
//! [`DRAIN_MAX`], within [`DRAIN_TIMEOUT`]) is read and thrown away first, through a
//! small buffer. Anything larger is refused at once with `Connection: close`, since the
//! connection is then unusable.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use poem::http::{HeaderValue, StatusCode, header};
use poem::{Body, Endpoint, Middleware, Request, Result};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::error::{json_error, status_of};

/// The largest request body accepted under `/api/` (an agent's manifest), in bytes.
pub const BODY_LIMIT: usize = 1024 * 1024;
/// The largest request body accepted under `/auth/` and outside the API, in bytes: the
/// auth routes take small JSON (an email, a password, a refresh token).
pub const AUTH_BODY_LIMIT: usize = 8 * 1024;
/// The longest a body waits for room in the budget before it is answered 503.
pub const BUDGET_WAIT: Duration = Duration::from_secs(1);
/// The budget is kept in units of this many bytes (a semaphore's permits).
const UNIT: usize = 1024;
/// The most bytes of a refused body read and thrown away.
const DRAIN_MAX: u64 = 8 * 1024 * 1024;
/// The longest time spent throwing a refused body away.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// The most bytes a request to `path` may send.
pub(crate) fn limit_for(path: &str) -> usize {
    if path.starts_with("/api/") { BODY_LIMIT } else { AUTH_BODY_LIMIT }
}

pub(crate) struct BodyLimit {
    budget: Arc<Semaphore>,
}

impl BodyLimit {
    /// Bodies buffered at once hold at most `budget` bytes together.
    pub(crate) fn new(budget: usize) -> Self {
        Self { budget: Arc::new(Semaphore::new((budget / UNIT).clamp(1, Semaphore::MAX_PERMITS))) }
    }
}

impl<E: Endpoint> Middleware<E> for BodyLimit {
    type Output = BodyLimitEndpoint<E>;

    fn transform(&self, inner: E) -> Self::Output {
        BodyLimitEndpoint { inner, budget: self.budget.clone() }
    }
}

pub(crate) struct BodyLimitEndpoint<E> {
    inner: E,
    budget: Arc<Semaphore>,
}

/// Reads and discards up to `max` bytes; whether the body ended within that and in time.
async fn drain(reader: impl AsyncRead + Unpin, max: u64) -> bool {
    let mut bounded = reader.take(max + 1);
    let copied = tokio::time::timeout(DRAIN_TIMEOUT, tokio::io::copy(&mut bounded, &mut tokio::io::sink())).await;
    matches!(copied, Ok(Ok(n)) if n <= max)
}

fn too_large(limit: usize, drained: bool) -> poem::Error {
    let mut response = json_error(StatusCode::PAYLOAD_TOO_LARGE, format!("request body exceeds {limit} bytes"));
    if !drained {
        response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    poem::Error::from_response(response)
}

/// 503 for a body the budget has no room for. Its bytes are not kept: an HTTP/1.1 body
/// already on its way is read and thrown away first, like a moderately oversized one, so
/// that the client sees the answer and the connection stays usable; a client that waits
/// for `100 Continue` before sending is answered at once.
async fn no_room(req: &mut Request, declared: Option<u64>) -> poem::Error {
    metrics::counter!("nexus_overload_refusals_total", "limit" => "body_budget").increment(1);
    let busy = nexus_ports::Error::Overloaded { message: "too many request bodies are being received; retry shortly".into(), retry_after_secs: 1 };
    let mut response = status_of(busy).into_response();
    let http2 = req.version() >= poem::http::Version::HTTP_2;
    let waits_for_continue = req.headers().get(header::EXPECT).is_some_and(|expect| expect.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    let drained =
        http2 || waits_for_continue || (declared.unwrap_or(0) <= DRAIN_MAX && drain(req.take_body().into_async_read(), declared.unwrap_or(DRAIN_MAX)).await);
    if !drained {
        response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    poem::Error::from_response(response)
}

/// Whether `req` carries credentials of any kind (valid or not: they are checked later).
fn carries_credentials(req: &Request) -> bool {
    req.headers().contains_key(header::AUTHORIZATION) || req.headers().contains_key("x-api-key")
}

/// `body` as it arrives, failing once more than `limit` bytes have come.
fn held_to(body: Body, limit: usize) -> Body {
    let chunks = body.into_bytes_stream().scan(0_usize, move |seen, chunk| {
        let chunk = chunk.and_then(|chunk| {
            *seen += chunk.len();
            if *seen > limit { Err(std::io::Error::other(format!("request body exceeds {limit} bytes"))) } else { Ok(chunk) }
        });
        std::future::ready(Some(chunk))
    });
    Body::from_bytes_stream(chunks)
}

fn declared_length(req: &Request) -> Result<Option<u64>> {
    let Some(value) = req.headers().get(header::CONTENT_LENGTH) else { return Ok(None) };
    let length = value.to_str().ok().and_then(|text| text.parse::<u64>().ok());
    length.map(Some).ok_or_else(|| poem::Error::from_response(json_error(StatusCode::BAD_REQUEST, "malformed Content-Length")))
}

impl<E: Endpoint> BodyLimitEndpoint<E> {
    /// Reserves room for `bytes` of body, waiting up to [`BUDGET_WAIT`].
    async fn reserve(&self, bytes: usize) -> Option<OwnedSemaphorePermit> {
        let units = u32::try_from(bytes.div_ceil(UNIT).max(1)).unwrap_or(u32::MAX);
        tokio::time::timeout(BUDGET_WAIT, self.budget.clone().acquire_many_owned(units)).await.ok()?.ok()
    }
}

impl<E: Endpoint> Endpoint for BodyLimitEndpoint<E> {
    type Output = E::Output;

    async fn call(&self, mut req: Request) -> Result<Self::Output> {
        let limit = limit_for(req.uri().path());
        let declared = declared_length(&req)?;
        let reserved = match declared {
            Some(declared) if declared > limit as u64 => {
                let drained = declared <= DRAIN_MAX && drain(req.take_body().into_async_read(), declared).await;
                return Err(too_large(limit, drained));
            }
            Some(0) => return self.inner.call(req).await,
            Some(declared) => usize::try_from(declared).unwrap_or(limit),
            None => {
                let body = req.take_body();
                let empty = body.is_empty();
                req.set_body(body);
                // Known to be empty (a GET without a body): nothing to count or keep.
                if empty {
                    return self.inner.call(req).await;
                }
                limit
            }
        };
        if limit > AUTH_BODY_LIMIT && !carries_credentials(&req) {
            // Refused 401 before its body is read: every API operation that takes a body
            // authenticates first. Nothing is kept or reserved; the limit still holds.
            let body = req.take_body();
            req.set_body(held_to(body, limit));
            return self.inner.call(req).await;
        }
        let Some(_room) = self.reserve(reserved).await else { return Err(no_room(&mut req, declared).await) };
        let mut reader = req.take_body().into_async_read();
        let mut kept = Vec::with_capacity(reserved);
        let read = (&mut reader).take(reserved as u64).read_to_end(&mut kept).await;
        read.map_err(|err| poem::Error::from_string(format!("cannot read the request body: {err}"), StatusCode::BAD_REQUEST))?;
        if declared.is_none() && kept.len() == limit && !matches!(reader.read(&mut [0_u8; 1]).await, Ok(0)) {
            // An HTTP/2 stream is reset on its own: nothing to drain, and no connection
            // header to send.
            let http2 = req.version() >= poem::http::Version::HTTP_2;
            return Err(too_large(limit, http2 || drain(reader, DRAIN_MAX).await));
        }
        req.set_body(Body::from_vec(kept));
        self.inner.call(req).await
    }
}

#[cfg(test)]
mod tests {
    use poem::http::StatusCode;
    use poem::{Endpoint, EndpointExt, Request, handler};

    use super::BodyLimit;

    #[handler]
    async fn echo(body: Vec<u8>) -> String {
        body.len().to_string()
    }

    /// A body sent in pieces with no length announced, as HTTP/2 sends one.
    fn unannounced(bytes: usize) -> poem::Body {
        let pieces = (0..bytes.div_ceil(64 * 1024)).map(move |i| Ok::<_, std::io::Error>(vec![b'x'; (bytes - i * 64 * 1024).min(64 * 1024)]));
        poem::Body::from_bytes_stream(futures_util::stream::iter(pieces))
    }

    #[tokio::test]
    async fn a_request_without_a_body_passes_as_it_is() {
        let endpoint = echo.with(BodyLimit::new(1024 * 1024));
        let mut served = endpoint.get_response(Request::builder().finish()).await;
        assert_eq!(served.status(), StatusCode::OK);
        assert_eq!(served.take_body().into_string().await.unwrap(), "0");
    }

    #[tokio::test]
    async fn a_body_without_any_length_header_is_held_to_the_limit() {
        let endpoint = echo.with(BodyLimit::new(1024 * 1024));
        for version in [poem::http::Version::HTTP_2, poem::http::Version::HTTP_11] {
            let over = Request::builder().version(version).method(poem::http::Method::POST).body(unannounced(50 * 1024 * 1024));
            let refused = endpoint.get_response(over).await;
            assert_eq!(refused.status(), StatusCode::PAYLOAD_TOO_LARGE, "{version:?}");
            let within = Request::builder().version(version).method(poem::http::Method::POST).body(unannounced(1024));
            let mut served = endpoint.get_response(within).await;
            assert_eq!(served.status(), StatusCode::OK, "{version:?}");
            assert_eq!(served.take_body().into_string().await.unwrap(), "1024");
        }
    }

    fn post(path: &str, length: Option<usize>, body: poem::Body) -> Request {
        let mut request = Request::builder().method(poem::http::Method::POST).uri(path.parse().expect("a path")).header("authorization", "Bearer made-up");
        if let Some(length) = length {
            request = request.header("content-length", length.to_string());
        }
        request.body(body)
    }

    #[tokio::test]
    async fn auth_routes_take_8_kib_and_the_api_1_mib() {
        let endpoint = echo.with(BodyLimit::new(4 * 1024 * 1024));
        let within = endpoint.get_response(post("/auth/login", None, unannounced(super::AUTH_BODY_LIMIT))).await;
        assert_eq!(within.status(), StatusCode::OK);
        let over = endpoint.get_response(post("/auth/login", Some(super::AUTH_BODY_LIMIT + 1), vec![b'x'; super::AUTH_BODY_LIMIT + 1].into())).await;
        assert_eq!(over.status(), StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(endpoint.get_response(post("/auth/login", None, unannounced(super::AUTH_BODY_LIMIT + 1))).await.status(), StatusCode::PAYLOAD_TOO_LARGE);
        let manifest = endpoint.get_response(post("/api/v1/agents", None, unannounced(super::BODY_LIMIT))).await;
        assert_eq!(manifest.status(), StatusCode::OK);
        assert_eq!(endpoint.get_response(post("/api/v1/agents", None, unannounced(super::BODY_LIMIT + 1))).await.status(), StatusCode::PAYLOAD_TOO_LARGE);
    }

    #[tokio::test]
    async fn a_body_without_room_waits_then_is_answered_503_and_room_comes_back() {
        let endpoint = std::sync::Arc::new(echo.with(BodyLimit::new(super::BODY_LIMIT)));
        // Reserves the whole budget and never sends its body.
        let hog = {
            let endpoint = endpoint.clone();
            tokio::spawn(async move {
                endpoint
                    .get_response(post(
                        "/api/v1/agents",
                        Some(super::BODY_LIMIT),
                        poem::Body::from_bytes_stream(futures_util::stream::pending::<Result<Vec<u8>, std::io::Error>>()),
                    ))
                    .await
            })
        };
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        let started = tokio::time::Instant::now();
        let mut refused = endpoint.get_response(post("/api/v1/agents", Some(10), vec![b'x'; 10].into())).await;
        assert!(started.elapsed() >= super::BUDGET_WAIT, "it waited for room first");
        assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(refused.headers()["retry-after"], "1");
        assert_eq!(refused.take_body().into_string().await.unwrap(), r#"{"error":"too many request bodies are being received; retry shortly"}"#);
        // Without any credentials, nothing is reserved: served despite the full budget.
        let anonymous = Request::builder().method(poem::http::Method::POST).uri("/api/v1/agents".parse().unwrap()).body(vec![b'x'; 10]);
        assert_eq!(endpoint.get_response(anonymous).await.status(), StatusCode::OK);
        // The hog gone (its request cancelled), its room is free again.
        hog.abort();
        let _ = hog.await;
        assert_eq!(endpoint.get_response(post("/api/v1/agents", Some(10), vec![b'x'; 10].into())).await.status(), StatusCode::OK);
    }
}

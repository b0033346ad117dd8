//! Caps request bodies, whatever their framing. A declared `Content-Length` over the limit
//! is refused before any byte is kept; a body without one (HTTP/1.1 chunked, or HTTP/2,
//! which needs no header at all to send a body) is read as it arrives, up to the limit,
//! and refused past it.
//! poem's `SizeLimit` would answer 411 to every request without `Content-Length`.
//!
//! Most HTTP/1.1 clients read no answer before they have sent their whole body, so a
//! refusal is only seen if the body is consumed: a moderately oversized body (up to
//! [`DRAIN_MAX`], within [`DRAIN_TIMEOUT`]) is read and thrown away first. Anything larger
//! is refused at once with `Connection: close`, since the connection is then unusable.

use std::time::Duration;

use poem::http::{HeaderValue, StatusCode, header};
use poem::{Body, Endpoint, Middleware, Request, Result};
use tokio::io::{AsyncRead, AsyncReadExt};

use super::error::json_error;

/// The most bytes of a refused body read and thrown away.
const DRAIN_MAX: u64 = 8 * 1024 * 1024;
/// The longest time spent throwing a refused body away.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

pub(crate) struct BodyLimit {
    limit: usize,
}

impl BodyLimit {
    pub(crate) fn new(limit: usize) -> Self {
        Self { limit }
    }
}

impl<E: Endpoint> Middleware<E> for BodyLimit {
    type Output = BodyLimitEndpoint<E>;

    fn transform(&self, inner: E) -> Self::Output {
        BodyLimitEndpoint { inner, limit: self.limit }
    }
}

pub(crate) struct BodyLimitEndpoint<E> {
    inner: E,
    limit: usize,
}

/// Reads and discards up to `max` bytes; whether the body ended within that and in time.
async fn drain(reader: impl AsyncRead + Unpin, max: u64) -> bool {
    let mut bounded = reader.take(max + 1);
    let copied = tokio::time::timeout(DRAIN_TIMEOUT, tokio::io::copy(&mut bounded, &mut tokio::io::sink())).await;
    matches!(copied, Ok(Ok(n)) if n <= max)
}

impl<E: Endpoint> BodyLimitEndpoint<E> {
    fn too_large(&self, drained: bool) -> poem::Error {
        let mut response = json_error(StatusCode::PAYLOAD_TOO_LARGE, format!("request body exceeds {} bytes", self.limit));
        if !drained {
            response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        poem::Error::from_response(response)
    }
}

fn declared_length(req: &Request) -> Result<Option<u64>> {
    let Some(value) = req.headers().get(header::CONTENT_LENGTH) else { return Ok(None) };
    let length = value.to_str().ok().and_then(|text| text.parse::<u64>().ok());
    length.map(Some).ok_or_else(|| poem::Error::from_response(json_error(StatusCode::BAD_REQUEST, "malformed Content-Length")))
}

impl<E: Endpoint> Endpoint for BodyLimitEndpoint<E> {
    type Output = E::Output;

    async fn call(&self, mut req: Request) -> Result<Self::Output> {
        let limit = self.limit as u64;
        match declared_length(&req)? {
            Some(declared) if declared > limit => {
                let drained = declared <= DRAIN_MAX && drain(req.take_body().into_async_read(), declared).await;
                return Err(self.too_large(drained));
            }
            Some(_) => {}
            None => {
                let body = req.take_body();
                // Known to be empty (a GET without a body): nothing to count or keep.
                if body.is_empty() {
                    req.set_body(body);
                    return self.inner.call(req).await;
                }
                let mut reader = body.into_async_read();
                let mut kept = Vec::new();
                (&mut reader)
                    .take(limit + 1)
                    .read_to_end(&mut kept)
                    .await
                    .map_err(|err| poem::Error::from_string(format!("cannot read the request body: {err}"), StatusCode::BAD_REQUEST))?;
                if kept.len() as u64 > limit {
                    // An HTTP/2 stream is reset on its own: nothing to drain, and no
                    // connection header to send.
                    let http2 = req.version() >= poem::http::Version::HTTP_2;
                    return Err(self.too_large(http2 || drain(reader, DRAIN_MAX).await));
                }
                req.set_body(Body::from_vec(kept));
            }
        }
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
        let endpoint = echo.with(BodyLimit::new(1024));
        let mut served = endpoint.get_response(Request::builder().finish()).await;
        assert_eq!(served.status(), StatusCode::OK);
        assert_eq!(served.take_body().into_string().await.unwrap(), "0");
    }

    #[tokio::test]
    async fn a_body_without_any_length_header_is_held_to_the_limit() {
        let endpoint = echo.with(BodyLimit::new(1024));
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
}

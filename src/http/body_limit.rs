//! Caps request bodies. A declared `Content-Length` over the limit is refused before any
//! byte is read; a body without one (chunked) is read up to the limit and refused past it.
//! poem's `SizeLimit` would answer 411 to every request without `Content-Length`.

use poem::http::{StatusCode, header};
use poem::{Body, Endpoint, Middleware, Request, Result};

use super::error::json_error;

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

impl<E: Endpoint> BodyLimitEndpoint<E> {
    fn too_large(&self) -> poem::Error {
        poem::Error::from_response(json_error(StatusCode::PAYLOAD_TOO_LARGE, format!("request body exceeds {} bytes", self.limit)))
    }
}

impl<E: Endpoint> Endpoint for BodyLimitEndpoint<E> {
    type Output = E::Output;

    async fn call(&self, mut req: Request) -> Result<Self::Output> {
        match req.headers().get(header::CONTENT_LENGTH) {
            Some(declared) => {
                let declared = declared
                    .to_str()
                    .ok()
                    .and_then(|text| text.parse::<u64>().ok())
                    .ok_or_else(|| poem::Error::from_response(json_error(StatusCode::BAD_REQUEST, "malformed Content-Length")))?;
                if declared > self.limit as u64 {
                    return Err(self.too_large());
                }
            }
            None if req.headers().contains_key(header::TRANSFER_ENCODING) => {
                let bytes = req.take_body().into_bytes_limit(self.limit).await.map_err(|err| match err {
                    poem::error::ReadBodyError::PayloadTooLarge => self.too_large(),
                    other => other.into(),
                })?;
                req.set_body(Body::from_bytes(bytes));
            }
            None => {}
        }
        self.inner.call(req).await
    }
}

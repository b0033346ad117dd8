//! The `/auth/*` rate limit as middleware: every request under `/auth/` is counted against
//! its client address (the peer's, or the one trusted proxies forward) before anything is
//! read or hashed, and refused with 429 and `Retry-After` past the rate. Every request,
//! limited or not, then runs with its client address in the request context, where audit
//! events find it.

use poem::{Endpoint, Middleware, Request, Result};

use super::error::status_of;
use crate::app::SharedNexus;

/// The path prefix of the rate-limited routes.
const LIMITED: &str = "/auth/";

pub(crate) struct AuthThrottle {
    nexus: SharedNexus,
}

impl AuthThrottle {
    pub(crate) fn new(nexus: SharedNexus) -> Self {
        Self { nexus }
    }
}

impl<E: Endpoint> Middleware<E> for AuthThrottle {
    type Output = AuthThrottleEndpoint<E>;

    fn transform(&self, inner: E) -> Self::Output {
        AuthThrottleEndpoint { inner, nexus: self.nexus.clone() }
    }
}

pub(crate) struct AuthThrottleEndpoint<E> {
    inner: E,
    nexus: SharedNexus,
}

/// Every `X-Forwarded-For` header of the request, as one comma-separated list.
fn forwarded_for(req: &Request) -> Option<String> {
    let values: Vec<&str> = req.headers().get_all("x-forwarded-for").iter().filter_map(|value| value.to_str().ok()).collect();
    (!values.is_empty()).then(|| values.join(","))
}

impl<E: Endpoint> Endpoint for AuthThrottleEndpoint<E> {
    type Output = E::Output;

    async fn call(&self, req: Request) -> Result<Self::Output> {
        let Some(peer) = req.remote_addr().as_socket_addr().map(std::net::SocketAddr::ip) else {
            return self.inner.call(req).await;
        };
        let forwarded = forwarded_for(&req);
        if req.uri().path().starts_with(LIMITED)
            && let Err(refusal) = self.nexus.auth_throttle.check(peer, forwarded.as_deref())
        {
            metrics::counter!("nexus_rate_limit_refusals_total", "limit" => "auth_address").increment(1);
            return Err(poem::Error::from_response(status_of(refusal).into_response()));
        }
        let client = self.nexus.auth_throttle.client(peer, forwarded.as_deref());
        nexus_ports::context::with_source_ip(client, self.inner.call(req)).await
    }
}

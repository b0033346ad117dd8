//! The request a piece of work is done for, carried along the task that serves it, so that
//! adapters can pass its id on (the node client sends it with every node call) and audit
//! events can name it and its client address, without every port taking them as arguments.

use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;

tokio::task_local! {
    static REQUEST_ID: Arc<str>;
    static CORRELATION_ID: Arc<str>;
    static SOURCE_IP: IpAddr;
}

/// Runs `work` as part of the request `id`.
pub async fn with_request_id<F: Future>(id: Arc<str>, work: F) -> F::Output {
    REQUEST_ID.scope(id, work).await
}

/// The id of the request the current task serves, if it serves one.
#[must_use]
pub fn request_id() -> Option<Arc<str>> {
    REQUEST_ID.try_with(Arc::clone).ok()
}

/// Runs `work` as part of a request the client named `id` (its own correlation id).
pub async fn with_correlation_id<F: Future>(id: Arc<str>, work: F) -> F::Output {
    CORRELATION_ID.scope(id, work).await
}

/// The client's own id of the request the current task serves, if it sent one.
#[must_use]
pub fn correlation_id() -> Option<Arc<str>> {
    CORRELATION_ID.try_with(Arc::clone).ok()
}

/// Runs `work` for a request from the client at `address`.
pub async fn with_source_ip<F: Future>(address: IpAddr, work: F) -> F::Output {
    SOURCE_IP.scope(address, work).await
}

/// The client address of the request the current task serves, if known.
#[must_use]
pub fn source_ip() -> Option<IpAddr> {
    SOURCE_IP.try_with(|address| *address).ok()
}

/// `work`, still part of the current task's request (its id, the client's correlation id
/// and its address): for a task spawned to do part of the request.
pub fn carried<F: Future>(work: F) -> impl Future<Output = F::Output> {
    let (id, correlation, address) = (request_id(), correlation_id(), source_ip());
    async move {
        let work = async move {
            match address {
                Some(address) => with_source_ip(address, work).await,
                None => work.await,
            }
        };
        let work = async move {
            match correlation {
                Some(correlation) => with_correlation_id(correlation, work).await,
                None => work.await,
            }
        };
        match id {
            Some(id) => with_request_id(id, work).await,
            None => work.await,
        }
    }
}

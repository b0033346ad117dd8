//! The request a piece of work is done for, carried along the task that serves it, so that
//! adapters can pass its id on (the node client sends it with every node call) without
//! every port taking it as an argument.

use std::future::Future;
use std::sync::Arc;

tokio::task_local! {
    static REQUEST_ID: Arc<str>;
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

//! What an operator sees of each request: an `X-Request-ID` on every answer (taken from the
//! request when it is 1 to 128 visible ASCII characters, generated otherwise), a log span
//! carrying it, and Prometheus metrics by route template (never a raw path, so the label
//! set stays bounded).

use std::sync::Arc;
use std::time::Instant;

use poem::http::HeaderValue;
use poem::{Endpoint, IntoResponse, Request, Response};
use tracing::Instrument;

/// The header that ties a client's request to log lines, node calls and audit events.
pub const REQUEST_ID: &str = "x-request-id";

/// A request id the client sent, when it is one we keep: 1 to 128 visible ASCII characters.
fn client_request_id(request: &Request) -> Option<String> {
    let value = request.headers().get(REQUEST_ID)?.to_str().ok()?;
    let visible = !value.is_empty() && value.len() <= 128 && value.bytes().all(|b| b.is_ascii_graphic());
    visible.then(|| value.to_owned())
}

/// A new request id: 32 hex digits, a random half drawn once per process and a counter, so
/// that ids are unique across replicas and cost no system call each.
fn generated_request_id() -> String {
    static PROCESS: std::sync::LazyLock<u64> = std::sync::LazyLock::new(|| uuid::Uuid::new_v4().as_u64_pair().0);
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    format!("{:016x}{:016x}", *PROCESS, NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
}

/// The request id of this request (set by [`observe`] before anything else runs).
#[derive(Clone, Debug)]
pub struct RequestId(pub Arc<str>);

/// The outermost middleware: assigns the request id, logs the request in a span that
/// carries it, counts it and times it, and returns the id on the answer whatever it is.
pub(crate) async fn observe<E: Endpoint>(next: Arc<E>, mut request: Request) -> poem::Result<Response> {
    let id: Arc<str> = client_request_id(&request).unwrap_or_else(generated_request_id).into();
    request.extensions_mut().insert(RequestId(id.clone()));
    let method = request.method().clone();
    let route = super::route_template(request.uri().path()).unwrap_or("unmatched");
    let span = tracing::info_span!("request", request_id = %id, method = %method, path = %request.uri().path());
    let started = Instant::now();
    let mut response = nexus_ports::context::with_request_id(id.clone(), next.call(request).instrument(span.clone())).await?.into_response();
    let elapsed = started.elapsed();
    let status = response.status();
    span.in_scope(|| tracing::info!(status = status.as_u16(), duration_ms = elapsed.as_secs_f64() * 1000.0, "answered"));
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(REQUEST_ID, value);
    }
    let method = method.as_str().to_owned();
    metrics::counter!("nexus_http_requests_total", "method" => method.clone(), "route" => route, "status" => status.as_str().to_owned()).increment(1);
    metrics::histogram!("nexus_http_request_duration_seconds", "method" => method, "route" => route).record(elapsed.as_secs_f64());
    Ok(response)
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::Mutex;

    use poem::{EndpointExt, Route, handler};
    use tracing_subscriber::fmt::MakeWriter;

    use super::*;

    /// Log output kept in memory.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl MakeWriter<'_> for Captured {
        type Writer = Self;

        fn make_writer(&self) -> Self {
            self.clone()
        }
    }

    #[handler]
    async fn noisy() -> &'static str {
        tracing::info!("working on it");
        tokio::task::yield_now().await;
        tracing::warn!(detail = "something", "still working");
        "done"
    }

    #[test]
    fn every_json_log_line_of_a_request_carries_its_id() {
        let captured = Captured::default();
        let subscriber = tracing_subscriber::fmt().json().with_writer(captured.clone()).finish();
        tracing::subscriber::with_default(subscriber, || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            runtime.block_on(async {
                let app = Route::new().at("/work", noisy).around(observe);
                let request = Request::builder().uri(poem::http::Uri::from_static("/work")).header(REQUEST_ID, "req-log-1").finish();
                let response = app.call(request).await.unwrap().into_response();
                assert_eq!(response.headers()[REQUEST_ID], "req-log-1");
            });
        });
        let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<serde_json::Value> = text.lines().map(|line| serde_json::from_str(line).unwrap()).collect();
        assert_eq!(lines.len(), 3, "the handler's two lines and the answer's: {text}");
        for line in &lines {
            assert_eq!(line["span"]["request_id"], "req-log-1", "{line}");
        }
    }
}

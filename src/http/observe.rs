//! What an operator sees of each request: an `X-Request-ID` on every answer, the server's
//! own (random: no caller can choose, predict or reuse another request's), a log span
//! carrying it, and Prometheus metrics by route template (never a raw path, so the label
//! set stays bounded). A client's own `X-Request-ID` (1 to 128 visible ASCII characters)
//! is kept apart as the request's correlation id: in the span, in audit events, and echoed
//! as `X-Correlation-ID`.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Instant;

use poem::http::{HeaderValue, Method, StatusCode};
use poem::{Endpoint, IntoResponse, Request, Response};
use tracing::Instrument;

/// The header of the server's id of a request, on every answer (and on node calls).
pub const REQUEST_ID: &str = "x-request-id";

/// The header echoing the id a client sent for its request.
pub const CORRELATION_ID: &str = "x-correlation-id";

/// The id a client sent for its request (in `X-Request-ID`), when it is one we keep: 1 to
/// 128 visible ASCII characters.
fn client_correlation_id(request: &Request) -> Option<&str> {
    let value = request.headers().get(REQUEST_ID)?.to_str().ok()?;
    let visible = !value.is_empty() && value.len() <= 128 && value.bytes().all(|b| b.is_ascii_graphic());
    visible.then_some(value)
}

/// A new request id: 32 hex digits, 122 of their bits random, so that no one can guess
/// another request's id. Written without formatting (a hot path).
fn generated_request_id() -> Arc<str> {
    let mut digits = [0u8; 32];
    Arc::from(&*uuid::Uuid::new_v4().simple().encode_lower(&mut digits))
}

/// The request counter and the latency histogram of one method, route and status.
#[derive(Clone)]
struct Instruments {
    requests: metrics::Counter,
    duration: metrics::Histogram,
}

/// The instruments of `method`, `route` and `status`, registered on first use and kept:
/// registering them anew took an allocation per label on every request. Only the
/// standard methods are kept (any other is registered each time, so that clients sending
/// made-up methods cannot grow this map).
fn instruments(method: &Method, route: &'static str, status: StatusCode) -> Instruments {
    type Kept = HashMap<(Method, &'static str, StatusCode), Instruments>;
    static KEPT: std::sync::LazyLock<RwLock<Kept>> = std::sync::LazyLock::new(RwLock::default);
    let register = || Instruments {
        requests: metrics::counter!("nexus_http_requests_total", "method" => method.as_str().to_owned(), "route" => route, "status" => status.as_str().to_owned()),
        duration: metrics::histogram!("nexus_http_request_duration_seconds", "method" => method.as_str().to_owned(), "route" => route),
    };
    let standard = matches!(*method, Method::GET | Method::HEAD | Method::POST | Method::PUT | Method::PATCH | Method::DELETE | Method::OPTIONS);
    if !standard {
        return register();
    }
    let key = (method.clone(), route, status);
    if let Some(kept) = KEPT.read().unwrap_or_else(std::sync::PoisonError::into_inner).get(&key) {
        return kept.clone();
    }
    KEPT.write().unwrap_or_else(std::sync::PoisonError::into_inner).entry(key).or_insert_with(register).clone()
}

/// The request id of this request (set by [`observe`] before anything else runs).
#[derive(Clone, Debug)]
pub struct RequestId(pub Arc<str>);

/// The outermost middleware: assigns the request id, logs the request in a span that
/// carries it (and the client's correlation id), counts it and times it, and returns both
/// on the answer whatever it is.
pub(crate) async fn observe<E: Endpoint>(next: Arc<E>, mut request: Request) -> poem::Result<Response> {
    let id = generated_request_id();
    let correlation: Option<Arc<str>> = client_correlation_id(&request).map(Arc::from);
    request.extensions_mut().insert(RequestId(id.clone()));
    let method = request.method().clone();
    let route = super::route_template(request.uri().path()).unwrap_or("unmatched");
    let span = match &correlation {
        Some(correlation) => tracing::info_span!("request", request_id = %id, correlation_id = %correlation, method = %method, path = %request.uri().path()),
        None => tracing::info_span!("request", request_id = %id, method = %method, path = %request.uri().path()),
    };
    let started = Instant::now();
    let served = nexus_ports::context::with_request_id(id.clone(), next.call(request).instrument(span.clone()));
    let served = match correlation.clone() {
        Some(correlation) => nexus_ports::context::with_correlation_id(correlation, served).await,
        None => served.await,
    };
    let mut response = served?.into_response();
    let elapsed = started.elapsed();
    let status = response.status();
    span.in_scope(|| tracing::info!(status = status.as_u16(), duration_ms = elapsed.as_secs_f64() * 1000.0, "answered"));
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(REQUEST_ID, value);
    }
    if let Some(value) = correlation.and_then(|correlation| HeaderValue::from_str(&correlation).ok()) {
        response.headers_mut().insert(CORRELATION_ID, value);
    }
    let instruments = instruments(&method, route, status);
    instruments.requests.increment(1);
    instruments.duration.record(elapsed.as_secs_f64());
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
        let id = Arc::new(Mutex::new(String::new()));
        let subscriber = tracing_subscriber::fmt().json().with_writer(captured.clone()).finish();
        tracing::subscriber::with_default(subscriber, || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            runtime.block_on(async {
                let app = Route::new().at("/work", noisy).around(observe);
                let request = Request::builder().uri(poem::http::Uri::from_static("/work")).header(REQUEST_ID, "req-log-1").finish();
                let response = app.call(request).await.unwrap().into_response();
                assert_eq!(response.headers()[CORRELATION_ID], "req-log-1");
                *id.lock().unwrap() = response.headers()[REQUEST_ID].to_str().unwrap().to_owned();
            });
        });
        let id = id.lock().unwrap().clone();
        assert!(id.len() == 32 && id != "req-log-1", "{id}");
        let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<serde_json::Value> = text.lines().map(|line| serde_json::from_str(line).unwrap()).collect();
        assert_eq!(lines.len(), 3, "the handler's two lines and the answer's: {text}");
        for line in &lines {
            assert_eq!(line["span"]["request_id"], id.as_str(), "{line}");
            assert_eq!(line["span"]["correlation_id"], "req-log-1", "{line}");
        }
    }
}

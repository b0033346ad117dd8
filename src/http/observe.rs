//! What an operator sees of each request: an `X-Request-ID` on every answer (taken from the
//! request when it is 1 to 128 visible ASCII characters, generated otherwise), a log span
//! carrying it, and Prometheus metrics by route template (never a raw path, so the label
//! set stays bounded).

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Instant;

use poem::http::{HeaderValue, Method, StatusCode};
use poem::{Endpoint, IntoResponse, Request, Response};
use tracing::Instrument;

/// The header that ties a client's request to log lines, node calls and audit events.
pub const REQUEST_ID: &str = "x-request-id";

/// A request id the client sent, when it is one we keep: 1 to 128 visible ASCII characters.
fn client_request_id(request: &Request) -> Option<&str> {
    let value = request.headers().get(REQUEST_ID)?.to_str().ok()?;
    let visible = !value.is_empty() && value.len() <= 128 && value.bytes().all(|b| b.is_ascii_graphic());
    visible.then_some(value)
}

/// A new request id: 32 hex digits, a random half drawn once per process and a counter, so
/// that ids are unique across replicas and cost no system call each.
fn generated_request_id() -> Arc<str> {
    static PROCESS: std::sync::LazyLock<u64> = std::sync::LazyLock::new(|| uuid::Uuid::new_v4().as_u64_pair().0);
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let mut digits = [0u8; 32];
    hex_into(&mut digits[..16], *PROCESS);
    hex_into(&mut digits[16..], NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
    Arc::from(std::str::from_utf8(&digits).expect("hex digits are ASCII"))
}

/// Writes `value` as lower-case hex digits into `out` (16 bytes), most significant first.
fn hex_into(out: &mut [u8], value: u64) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for (at, digit) in out.iter_mut().enumerate() {
        *digit = DIGITS[((value >> (60 - 4 * at)) & 0xf) as usize];
    }
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
/// carries it, counts it and times it, and returns the id on the answer whatever it is.
pub(crate) async fn observe<E: Endpoint>(next: Arc<E>, mut request: Request) -> poem::Result<Response> {
    let id: Arc<str> = client_request_id(&request).map_or_else(generated_request_id, Arc::from);
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

//! Prometheus metrics, served on a listener of their own (`NEXUS_METRICS_LISTEN`), never on
//! the public API port. Built on the `metrics` facade and its Prometheus exporter; the
//! standard `process_*` families come from `metrics-process`. Labels are bounded: methods,
//! route templates, statuses, phases, reasons; never a tenant, an agent or a user.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use poem::http::StatusCode;
use poem::{Endpoint, EndpointExt, Response, Route, get, handler};

/// Latency buckets in seconds: from a cached read to a slow node call.
const BUCKETS: &[f64] = &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

struct Telemetry {
    handle: PrometheusHandle,
    process: metrics_process::Collector,
}

/// Installs the process-wide recorder once (the first call wins; later ones share it).
fn telemetry() -> &'static Telemetry {
    static TELEMETRY: OnceLock<Telemetry> = OnceLock::new();
    TELEMETRY.get_or_init(|| {
        let builder = PrometheusBuilder::new().set_buckets_for_metric(Matcher::Suffix("_seconds".to_owned()), BUCKETS).expect("the buckets are not empty");
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        // Another recorder already installed (a test harness's) leaves ours unused but harmless.
        let _ = metrics::set_global_recorder(recorder);
        keep_up(handle.clone());
        describe();
        let process = metrics_process::Collector::default();
        process.describe();
        Telemetry { handle, process }
    })
}

/// How often histogram samples are folded into their buckets when nothing scrapes.
const UPKEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// Folds recorded histogram samples into their buckets every [`UPKEEP_EVERY`], on a
/// thread of its own (whatever runtime serves, or none): the recorder otherwise keeps
/// every sample until the next scrape, so an unscraped process would grow with every
/// request it answers.
fn keep_up(handle: PrometheusHandle) {
    let spawned = std::thread::Builder::new().name("metrics-upkeep".to_owned()).spawn(move || {
        loop {
            std::thread::sleep(UPKEEP_EVERY);
            handle.run_upkeep();
        }
    });
    if let Err(err) = spawned {
        tracing::warn!(error = %err, "cannot start the metrics upkeep; histogram samples are folded at each scrape only");
    }
}

fn describe() {
    metrics::describe_counter!("nexus_http_requests_total", "HTTP requests answered, by method, route template and status.");
    metrics::describe_histogram!(
        "nexus_http_request_duration_seconds",
        metrics::Unit::Seconds,
        "Time to answer an HTTP request, by method and route template."
    );
    metrics::describe_gauge!("nexus_tenants", "Tenants by phase, as the reconcile loop last saw them.");
    metrics::describe_gauge!("nexus_agents", "Agents by phase, as the reconcile loop last saw or wrote them.");
    metrics::describe_histogram!(
        "nexus_reconcile_item_duration_seconds",
        metrics::Unit::Seconds,
        "Time the reconcile loop took over one object (kind: agent, tenant, or sweep of the lists)."
    );
    metrics::describe_gauge!("nexus_reconcile_queue_depth", "Objects due for reconciling and not yet taken: the reconcile loop's backlog.");
    metrics::describe_gauge!("nexus_reconcile_objects", "Objects the reconcile loop tracks, each due at its own time.");
    metrics::describe_counter!("nexus_reconcile_resyncs_deferred_total", "Resyncs postponed by the resync rate limit (NEXUS_RESYNC_RATE).");
    metrics::describe_counter!(
        "nexus_auth_refusals_total",
        "Requests refused authentication, by reason: missing, invalid_token, session_ended, invalid_key, expired_key."
    );
    metrics::describe_counter!(
        "nexus_rate_limit_refusals_total",
        "Requests refused by a rate limit: per client address on /auth, or failed logins per account."
    );
    metrics::describe_counter!("nexus_node_requests_total", "Calls to astromesh nodes, by operation and outcome.");
    metrics::describe_histogram!("nexus_node_request_duration_seconds", metrics::Unit::Seconds, "Time a call to a node took, by operation.");
    metrics::describe_histogram!(
        "nexus_password_hash_queue_wait_seconds",
        metrics::Unit::Seconds,
        "Time a password hash or check waited for the hasher before it ran."
    );
    // Counters that may stay at zero for long are exposed from the start, so that rates
    // over them are defined.
    for limit in ["auth_address", "login_account"] {
        metrics::counter!("nexus_rate_limit_refusals_total", "limit" => limit).increment(0);
    }
    for reason in ["missing", "invalid_token", "session_ended", "invalid_key", "expired_key"] {
        metrics::counter!("nexus_auth_refusals_total", "reason" => reason).increment(0);
    }
}

/// Starts recording (idempotent). Call before serving so the families exist from the start.
pub fn install() {
    telemetry();
}

/// The current metrics in the Prometheus text format.
pub fn render() -> String {
    let telemetry = telemetry();
    telemetry.process.collect();
    telemetry.handle.render()
}

#[handler]
fn scrape() -> Response {
    Response::builder().status(StatusCode::OK).content_type("text/plain; version=0.0.4; charset=utf-8").body(render())
}

/// The metrics listener's application: `GET /metrics`.
pub fn endpoint() -> impl Endpoint {
    install();
    Route::new().at("/metrics", get(scrape)).map_to_response()
}

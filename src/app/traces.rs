//! What Nexus reads from a node's execution traces (astromesh-node: one trace per run,
//! `{trace_id, agent, session_id, spans: [...]}`, its root span `agent.run` carrying the
//! run's `start_time` in epoch seconds, `duration_ms` and `status` `ok` or `error`), and an
//! agent's run metrics computed from them. Pure functions: no node, no clock.

use chrono::{DateTime, Duration, Utc};
use serde_json::Value;

/// How many of an agent's most recent traces a node answers at most (astromesh-node
/// 0.74.1 refuses a larger `limit`).
pub const NODE_TRACE_WINDOW: u32 = 100;

/// The run's root span: the span without a parent (the first span otherwise).
fn root(trace: &Value) -> Option<&Value> {
    let spans = trace.get("spans")?.as_array()?;
    spans.iter().find(|span| span.get("parent_span_id").is_none_or(Value::is_null)).or_else(|| spans.first())
}

/// When the run started.
pub fn started_at(trace: &Value) -> Option<DateTime<Utc>> {
    let seconds = root(trace)?.get("start_time")?.as_f64()?;
    // Whole microseconds: what a float of epoch seconds resolves (`as` saturates).
    let micros = (seconds * 1e6).round() as i64;
    DateTime::from_timestamp_micros(micros)
}

/// How long the run took, in milliseconds.
fn duration_ms(trace: &Value) -> Option<f64> {
    root(trace)?.get("duration_ms")?.as_f64().filter(|ms| ms.is_finite() && *ms >= 0.0)
}

/// Whether the run failed.
pub fn failed(trace: &Value) -> bool {
    root(trace).is_some_and(|span| span.get("status").and_then(Value::as_str) == Some("error"))
}

/// Latency percentiles of runs, in milliseconds; `None` without runs.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Latency {
    pub p50: Option<f64>,
    pub p95: Option<f64>,
    pub max: Option<f64>,
}

/// An agent's runs within a period.
#[derive(Debug, Clone, PartialEq)]
pub struct RunMetrics {
    /// Runs that started within the period (each is one trace).
    pub runs: u32,
    /// Of those, the runs that failed.
    pub errors: u32,
    pub latency_ms: Latency,
    /// Whether every run of the period was seen: false when the node's window of recent
    /// traces ([`NODE_TRACE_WINDOW`]) was full and did not reach back to the period's start.
    pub complete: bool,
}

/// The nearest-rank percentile `p` (0 to 1) of ascending `sorted`.
fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted.get(rank.clamp(1, sorted.len().max(1)) - 1).copied()
}

/// The metrics of the runs among `traces` (one agent's, as many as the node gave for a
/// request of `requested`) that started within `period` before `now`.
pub fn run_metrics(traces: &[Value], requested: u32, period: Duration, now: DateTime<Utc>) -> RunMetrics {
    let since = now - period;
    let mut latencies = Vec::new();
    let (mut runs, mut errors) = (0u32, 0u32);
    let mut reaches_back = false;
    for trace in traces {
        let Some(started) = started_at(trace) else { continue };
        if started < since {
            reaches_back = true;
            continue;
        }
        if started > now {
            continue;
        }
        runs += 1;
        errors += u32::from(failed(trace));
        latencies.extend(duration_ms(trace));
    }
    latencies.sort_by(f64::total_cmp);
    let latency_ms = Latency { p50: percentile(&latencies, 0.50), p95: percentile(&latencies, 0.95), max: latencies.last().copied() };
    let window_full = u32::try_from(traces.len()).unwrap_or(u32::MAX) >= requested;
    RunMetrics { runs, errors, latency_ms, complete: !window_full || reaches_back }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;
    use serde_json::json;

    use super::*;

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 28, 12, 0, 0).unwrap()
    }

    /// A trace as the node records it: a root span and a child.
    fn trace(minutes_ago: i64, ms: f64, status: &str) -> Value {
        let start = (now() - Duration::minutes(minutes_ago)).timestamp_micros() as f64 / 1e6;
        json!({"trace_id": "t", "agent": "bot", "spans": [
            {"name": "agent.run", "parent_span_id": null, "status": status, "start_time": start, "duration_ms": ms},
            {"name": "llm.complete", "parent_span_id": "x", "status": "error", "start_time": start, "duration_ms": 1.0}
        ]})
    }

    #[test]
    fn runs_errors_and_latency_within_the_period() {
        let traces = [trace(1, 30.0, "ok"), trace(5, 10.0, "error"), trace(30, 20.0, "ok"), trace(59, 40.0, "ok"), trace(61, 1000.0, "error")];
        let metrics = run_metrics(&traces, 100, Duration::hours(1), now());
        assert_eq!((metrics.runs, metrics.errors), (4, 1), "the run 61 minutes ago is outside; the child span's status is not the run's");
        assert_eq!(metrics.latency_ms, Latency { p50: Some(20.0), p95: Some(40.0), max: Some(40.0) });
        assert!(metrics.complete);
        let recent = run_metrics(&traces, 100, Duration::minutes(10), now());
        assert_eq!((recent.runs, recent.errors, recent.latency_ms.max), (2, 1, Some(30.0)));
    }

    #[test]
    fn no_runs_no_latency() {
        let metrics = run_metrics(&[], 100, Duration::hours(1), now());
        assert_eq!((metrics.runs, metrics.errors, metrics.latency_ms, metrics.complete), (0, 0, Latency::default(), true));
        let untimed = run_metrics(&[json!({"agent": "bot"}), json!({"spans": []})], 100, Duration::hours(1), now());
        assert_eq!(untimed.runs, 0, "a trace without a time is no run of the period");
    }

    #[test]
    fn a_full_window_that_does_not_reach_back_is_incomplete() {
        let traces: Vec<Value> = (0..3).map(|i| trace(i, 1.0, "ok")).collect();
        assert!(!run_metrics(&traces, 3, Duration::hours(1), now()).complete, "three asked, three given, all recent: older ones may exist");
        let mut reaching = traces.clone();
        reaching[2] = trace(90, 1.0, "ok");
        assert!(run_metrics(&reaching, 3, Duration::hours(1), now()).complete);
    }

    #[test]
    fn the_start_time_comes_from_the_root_span() {
        assert_eq!(started_at(&trace(2, 1.0, "ok")), Some(now() - Duration::minutes(2)));
        assert!(failed(&trace(0, 1.0, "error")) && !failed(&trace(0, 1.0, "ok")));
        assert_eq!(percentile(&[1.0, 2.0, 3.0, 4.0], 0.5), Some(2.0));
        assert_eq!(percentile(&[5.0], 0.95), Some(5.0));
    }
}

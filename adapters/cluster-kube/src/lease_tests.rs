//! The election: its decision as a pure function, and the elector against a mocked API
//! server on tokio's paused clock (virtual time: deterministic, no waiting).

use std::time::Duration;

use http::Method;
use serde_json::{Value, json};
use tokio::time::Instant;

use super::*;
use crate::fixtures::{Expect, mocked_open, no_answer, status_error};

const LEASE: &str = "/apis/coordination.k8s.io/v1/namespaces/nexus-system/leases";

fn record(holder: Option<&str>) -> Record {
    Record { holder: holder.map(str::to_owned), renew_time: None, duration_seconds: Some(15) }
}

fn lease(resource_version: &str, holder: Option<&str>, transitions: i32) -> Value {
    json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": "nexus-controller", "namespace": "nexus-system", "resourceVersion": resource_version},
        "spec": {"holderIdentity": holder, "leaseDurationSeconds": 15, "renewTime": "2026-11-28T12:00:00.000000Z", "leaseTransitions": transitions}
    })
}

#[test]
fn a_lease_is_taken_when_free_or_expired_by_our_own_clock() {
    let timing = LeaseTiming::default();
    assert_eq!(decide(&record(None), "a", Duration::ZERO, &timing), Decision::Write, "free");
    assert_eq!(decide(&record(Some("a")), "a", Duration::ZERO, &timing), Decision::Write, "ours: renew");
    assert_eq!(decide(&record(Some("b")), "a", Duration::from_secs(5), &timing), Decision::Follow(timing.retry_every), "held: look again a retry period later");
    assert_eq!(decide(&record(Some("b")), "a", Duration::from_secs(15), &timing), Decision::Write, "not renewed for its whole duration: expired");
    let longer = Record { duration_seconds: Some(60), ..record(Some("b")) };
    assert_eq!(decide(&longer, "a", Duration::from_secs(30), &timing), Decision::Follow(timing.retry_every), "the holder's own duration counts");
    assert_eq!(decide(&longer, "a", Duration::from_secs(59), &timing), Decision::Follow(Duration::from_secs(1)), "looked at again when it would expire");
    assert_eq!(decide(&longer, "a", Duration::from_secs(60), &timing), Decision::Write);
    assert!(timing.renew_every < timing.renew_deadline() && timing.renew_deadline() < timing.duration);
}

#[tokio::test(start_paused = true)]
async fn a_missing_lease_is_created_by_this_replica_as_its_own_field_manager() {
    let (cluster, scenario) = mocked_open(vec![
        Expect { method: Method::GET, uri: format!("{LEASE}/nexus-controller"), body: crate::fixtures::anything, answer: status_error(404, "NotFound") },
        Expect {
            method: Method::POST,
            uri: format!("{LEASE}?&fieldManager=nexus-pod-a"),
            body: |b| {
                assert_eq!(b["spec"]["holderIdentity"], "pod-a");
                assert_eq!(b["spec"]["leaseDurationSeconds"], 15);
                assert_eq!(b["spec"]["leaseTransitions"], 0, "nobody held it before");
                assert!(b["spec"]["renewTime"].is_string() && b["spec"]["acquireTime"].is_string());
            },
            answer: (201, lease("1", Some("pod-a"), 0)),
        },
    ]);
    let mut leading = cluster.leadership_with("pod-a", LeaseTiming::default());
    leading.wait_for(Option::is_some).await.unwrap();
    scenario.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_held_lease_is_taken_only_once_it_expired_and_only_at_the_version_read() {
    // Looked at every retry period (2 s) and once more when it would expire: at 0, 2, ...
    // 14 and 15 s.
    let held = || Expect {
        method: Method::GET,
        uri: format!("{LEASE}/nexus-controller"),
        body: crate::fixtures::anything,
        answer: (200, lease("10", Some("pod-b"), 3)),
    };
    let mut script: Vec<Expect> = (0..9).map(|_| held()).collect();
    script.extend([Expect {
        method: Method::PUT,
        uri: format!("{LEASE}/nexus-controller?&fieldManager=nexus-pod-a"),
        body: |b| {
            assert_eq!(b["metadata"]["resourceVersion"], "10", "a write over what was read, or a 409");
            assert_eq!((b["spec"]["holderIdentity"].as_str(), b["spec"]["leaseTransitions"].as_i64()), (Some("pod-a"), Some(4)));
        },
        answer: (200, lease("11", Some("pod-a"), 4)),
    }]);
    let (cluster, scenario) = mocked_open(script);
    let started = Instant::now();
    let mut leading = cluster.leadership_with("pod-a", LeaseTiming::default());
    leading.wait_for(Option::is_some).await.unwrap();
    assert!(started.elapsed() >= Duration::from_secs(15), "pod-b's lease ran its whole duration unrenewed first");
    scenario.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn of_two_replicas_writing_at_once_the_one_answered_409_does_not_lead() {
    let (cluster, scenario) = mocked_open(vec![
        Expect { method: Method::GET, uri: format!("{LEASE}/nexus-controller"), body: crate::fixtures::anything, answer: (200, lease("3", None, 0)) },
        Expect {
            method: Method::PUT,
            uri: format!("{LEASE}/nexus-controller?&fieldManager=nexus-pod-a"),
            body: |b| assert_eq!(b["metadata"]["resourceVersion"], "3"),
            answer: status_error(409, "Conflict"),
        },
        Expect { method: Method::GET, uri: format!("{LEASE}/nexus-controller"), body: crate::fixtures::anything, answer: (200, lease("4", Some("pod-b"), 1)) },
    ]);
    let leading = cluster.leadership_with("pod-a", LeaseTiming::default());
    scenario.await.unwrap();
    tokio::task::yield_now().await;
    assert!(!leading.has_changed().unwrap() && leading.borrow().is_none(), "it never led");
}

#[tokio::test(start_paused = true)]
async fn a_leader_that_cannot_renew_steps_down_before_its_lease_can_expire() {
    let timing = LeaseTiming::default();
    let (cluster, scenario) = mocked_open(vec![
        Expect { method: Method::GET, uri: format!("{LEASE}/nexus-controller"), body: crate::fixtures::anything, answer: (200, lease("3", None, 0)) },
        Expect {
            method: Method::PUT,
            uri: format!("{LEASE}/nexus-controller?&fieldManager=nexus-pod-a"),
            body: crate::fixtures::anything,
            answer: (200, lease("4", Some("pod-a"), 0)),
        },
        // The API server stops answering: the renewal's read hangs.
        Expect { method: Method::GET, uri: format!("{LEASE}/nexus-controller"), body: crate::fixtures::anything, answer: no_answer() },
    ]);
    let before_renewal = Instant::now();
    let mut leading = cluster.leadership_with("pod-a", timing);
    leading.wait_for(Option::is_some).await.unwrap();
    leading.wait_for(Option::is_none).await.unwrap();
    let led_for = before_renewal.elapsed();
    assert!(led_for >= timing.renew_deadline(), "it led until last renewal + duration - grace");
    assert!(led_for < timing.duration, "and stepped down before any other replica could take the lease");
    scenario.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_leader_that_stepped_down_campaigns_again_once_the_api_server_answers() {
    let (cluster, scenario) = mocked_open(vec![
        Expect { method: Method::GET, uri: format!("{LEASE}/nexus-controller"), body: crate::fixtures::anything, answer: (200, lease("3", None, 0)) },
        Expect {
            method: Method::PUT,
            uri: format!("{LEASE}/nexus-controller?&fieldManager=nexus-pod-a"),
            body: crate::fixtures::anything,
            answer: (200, lease("4", Some("pod-a"), 0)),
        },
        // The API server stops answering, then fails, then answers again.
        Expect { method: Method::GET, uri: format!("{LEASE}/nexus-controller"), body: crate::fixtures::anything, answer: no_answer() },
        Expect {
            method: Method::GET,
            uri: format!("{LEASE}/nexus-controller"),
            body: crate::fixtures::anything,
            answer: status_error(503, "ServiceUnavailable"),
        },
        Expect {
            method: Method::GET,
            uri: format!("{LEASE}/nexus-controller"),
            body: crate::fixtures::anything,
            answer: status_error(503, "ServiceUnavailable"),
        },
        Expect { method: Method::GET, uri: format!("{LEASE}/nexus-controller"), body: crate::fixtures::anything, answer: (200, lease("4", Some("pod-a"), 0)) },
        Expect {
            method: Method::PUT,
            uri: format!("{LEASE}/nexus-controller?&fieldManager=nexus-pod-a"),
            body: |b| {
                assert_eq!(b["metadata"]["resourceVersion"], "4");
                assert_eq!(b["spec"]["leaseTransitions"], 1, "its own lapsed lease taken again: a new term");
            },
            answer: (200, lease("5", Some("pod-a"), 1)),
        },
    ]);
    let mut leading = cluster.leadership_with("pod-a", LeaseTiming::default());
    let first = leading.wait_for(Option::is_some).await.unwrap().unwrap();
    leading.wait_for(Option::is_none).await.unwrap();
    let second = leading.wait_for(Option::is_some).await.expect("it leads again").unwrap();
    assert_eq!((first.number, second.number), (0, 1));
    scenario.await.unwrap();
}

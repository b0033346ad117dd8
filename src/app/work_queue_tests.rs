//! The work queue, resync spread and token bucket, as pure functions of the time given.

use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};

use super::{SPREAD, TokenBucket, WorkQueue, spread};

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 28, 12, 0, 0).unwrap()
}

fn at(seconds: i64) -> DateTime<Utc> {
    t0() + chrono::Duration::seconds(seconds)
}

#[test]
fn items_come_out_when_due_in_due_order() {
    let mut queue = WorkQueue::default();
    queue.wake("late", at(10));
    queue.wake("soon", at(5));
    queue.wake("now", at(0));
    assert_eq!(queue.pop_due(at(0)), Some("now"));
    assert_eq!(queue.pop_due(at(0)), None, "the others are not due yet");
    assert_eq!(queue.next_due(), Some(at(5)));
    assert_eq!((queue.due_count(at(7)), queue.len()), (1, 3), "the one in flight counts in the length, not the backlog");
    assert_eq!(queue.pop_due(at(20)), Some("soon"));
    assert_eq!(queue.pop_due(at(20)), Some("late"));
}

#[test]
fn a_wake_brings_an_item_forward_never_back() {
    let mut queue = WorkQueue::default();
    queue.wake("agent", at(60));
    queue.wake("agent", at(1));
    assert_eq!(queue.next_due(), Some(at(1)));
    queue.wake("agent", at(30));
    assert_eq!(queue.next_due(), Some(at(1)), "a later wake does not postpone it");
    assert_eq!(queue.len(), 1, "one entry per item");
}

#[test]
fn one_item_is_in_flight_at_most_once_and_a_wake_meanwhile_is_kept() {
    let mut queue = WorkQueue::default();
    queue.wake("agent", at(0));
    assert_eq!(queue.pop_due(at(0)), Some("agent"));
    queue.wake("agent", at(0));
    assert_eq!(queue.pop_due(at(0)), None, "not taken twice while in flight");
    assert!(queue.contains(&"agent"));
    queue.finish("agent", Some(at(60)));
    assert_eq!(queue.next_due(), Some(at(0)), "the wake received in flight wins over its own next time");
    assert_eq!(queue.pop_due(at(0)), Some("agent"));
    queue.finish("agent", Some(at(60)));
    assert_eq!(queue.next_due(), Some(at(60)));
    assert_eq!(queue.pop_due(at(60)), Some("agent"));
    queue.finish("agent", None);
    assert!(queue.is_empty(), "an item with no next time is forgotten");
}

#[test]
fn items_abandoned_in_flight_are_due_again() {
    let mut queue = WorkQueue::default();
    queue.wake("a", at(0));
    queue.wake("b", at(100));
    assert_eq!(queue.pop_due(at(0)), Some("a"));
    queue.requeue_in_flight(at(3));
    assert_eq!(queue.pop_due(at(3)), Some("a"));
    assert_eq!(queue.pop_due(at(3)), None);
}

#[test]
fn resyncs_are_spread_over_the_last_part_of_the_period() {
    let resync = Duration::from_secs(60);
    let periods: Vec<Duration> = (0..1000).map(|n| spread(resync, &n)).collect();
    let shortest = resync.mul_f64(1.0 - SPREAD);
    assert!(periods.iter().all(|p| *p <= resync && *p >= shortest));
    assert_eq!(spread(resync, &7), spread(resync, &7), "fixed per object");
    // Spread evenly: each fifth of the spread window holds about a fifth of the objects.
    for fifth in 0..5 {
        let (from, to) = (shortest + (resync - shortest).mul_f64(f64::from(fifth) / 5.0), shortest + (resync - shortest).mul_f64(f64::from(fifth + 1) / 5.0));
        let count = periods.iter().filter(|p| **p >= from && **p < to).count();
        assert!((120..=280).contains(&count), "fifth {fifth} holds {count} of 1000");
    }
}

#[test]
fn the_bucket_allows_a_burst_then_its_rate() {
    let mut bucket = TokenBucket::new(10, t0());
    for _ in 0..10 {
        assert_eq!(bucket.take(t0()), Ok(()));
    }
    assert_eq!(bucket.take(t0()), Err(Duration::from_millis(100)), "the next token is reserved, a tenth of a second later");
    assert_eq!(bucket.take(t0()), Err(Duration::from_millis(200)), "the one after it for the next caller: each waits its own turn");
    let later = t0() + chrono::Duration::milliseconds(250);
    assert_eq!(bucket.take(later), Err(Duration::from_millis(50)), "two and a half tokens came back in 250 ms, two of them reserved");
    let much_later = t0() + chrono::Duration::seconds(3600);
    let burst = (0..100).take_while(|_| bucket.take(much_later).is_ok()).count();
    assert_eq!(burst, 10, "an idle bucket holds no more than its burst");
}

#[test]
fn ten_thousand_resyncs_never_hit_the_node_at_once() {
    // 10k agents all due at the same instant: the bucket lets through one second's worth,
    // and the rest wait their turn at the rate.
    let mut bucket = TokenBucket::new(100, t0());
    let mut waits: Vec<Duration> = Vec::new();
    for _ in 0..10_000 {
        if let Err(wait) = bucket.take(t0()) {
            waits.push(wait);
        }
    }
    assert_eq!(waits.len(), 10_000 - 100);
    assert!(waits.windows(2).all(|w| w[0] < w[1]), "each waits for a token of its own");
    assert_eq!(waits.last(), Some(&Duration::from_secs(99)), "the last one 99 s later, at the rate");
    let zero_rate = TokenBucket::new(0, t0()).take(t0());
    assert_eq!(zero_rate, Ok(()), "a rate of zero is no limit");
}

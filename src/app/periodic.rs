//! The one way background chores repeat: a turn now, then one every period, for ever. A
//! turn that overruns delays the next instead of bunching the missed ones together.

use std::future::Future;
use std::time::Duration;

use tokio::time::MissedTickBehavior;

/// Runs `turn` at once and then every `period`, for ever; run it as a background task.
pub async fn every<F, Fut>(period: Duration, mut turn: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()>,
{
    let mut ticks = tokio::time::interval(period);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        turn().await;
    }
}

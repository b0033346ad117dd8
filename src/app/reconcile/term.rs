//! Leadership and fencing: the term the loop acts in. With several replicas the loop runs
//! only in a term of this replica's leadership ([`crate::app::leadership`] starts and
//! stops it); every node call and cluster write of the loop goes through [`in_term`] or
//! [`fenced`], which refuse once the term is over (another replica took the lease, or the
//! local deadline passed: a leader frozen past its lease that wakes up acts no more) and
//! cut off a call still running when it ends. Status writes carry the term's [`Fence`],
//! which a database holding the lease checks in the same statement.
//!
//! A term begins and ends with nothing of the loop's memory: the queue, each tenant's
//! status as last seen, objects a sweep listed, retries are dropped when leadership is
//! lost and the next term starts from fresh lists, never from what another leader may
//! have changed since.
//!
//! [`in_term`]: Reconciler::in_term
//! [`fenced`]: Reconciler::fenced

use std::future::Future;
use std::sync::MutexGuard;
use std::task::Poll;

use nexus_ports::leadership::{Fence, Term};
use nexus_ports::{Error, Result};
use tokio::sync::watch;
use tokio::time::Instant;

use super::Reconciler;
use super::state::State;

/// Why a node call or a status write was not made.
pub const TERM_OVER: &str = "not done: this replica's term as leader is over";

/// Whether `err` says the term was over (nothing was done).
pub fn is_term_over(err: &Error) -> bool {
    matches!(err, Error::Unavailable(message) if message == TERM_OVER)
}

fn term_over() -> Error {
    Error::Unavailable(TERM_OVER.to_owned())
}

/// The term the loop acts in.
#[derive(Debug, Clone)]
pub(super) enum Acting {
    /// One process and no election: always.
    Alone,
    /// The term `number`, while the election (`leading`) still says this replica leads in
    /// it and its deadline has not passed.
    Term { number: u64, leading: watch::Receiver<Option<Term>> },
    /// Another replica leads: never.
    Following,
}

impl Acting {
    /// What a write is conditional on at `now` and until when the term lasts (`None`: no
    /// end); `None` once the term is over.
    pub(super) fn check(&self, now: Instant) -> Option<(Fence, Option<Instant>)> {
        match self {
            Self::Alone => Some((Fence::Alone, None)),
            Self::Term { number, leading } => {
                let term = (*leading.borrow())?;
                (term.number == *number && term.lasts(now)).then_some((Fence::Term(*number), Some(term.until)))
            }
            Self::Following => None,
        }
    }
}

impl Reconciler {
    fn acting(&self) -> MutexGuard<'_, Acting> {
        self.acting.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Begins term `number` of this replica's leadership, which lasts while `leading`
    /// says so, from fresh lists: nothing a former term knew is kept.
    pub fn begin_term(&self, number: u64, leading: watch::Receiver<Option<Term>>) {
        *self.acting() = Acting::Term { number, leading };
        self.forget_everything();
        self.set_following(false);
    }

    /// Ends the term: the loop follows, its queue and snapshots dropped.
    pub fn end_term(&self) {
        self.set_following(true);
        *self.acting() = Acting::Following;
        self.forget_everything();
    }

    /// Whether the loop may act now.
    pub fn in_term_now(&self) -> bool {
        self.acting().check(Instant::now()).is_some()
    }

    fn forget_everything(&self) {
        let fresh = State::new(self.resync_rate, self.clock.now(), self.resync);
        let mut state = self.state();
        *state = fresh;
        state.publish_counts();
    }

    /// Makes `call` (a node call or a cluster write) in the loop's term: refused when the
    /// term is over, cut off when it ends meanwhile ([`TERM_OVER`] either way).
    pub(super) async fn in_term<T>(&self, call: impl Future<Output = Result<T>>) -> Result<T> {
        self.fenced(|_| call).await
    }

    /// Makes the write `call` builds with the term's fence, as [`Reconciler::in_term`].
    pub(super) async fn fenced<T, F: Future<Output = Result<T>>>(&self, call: impl FnOnce(Fence) -> F) -> Result<T> {
        let Some((fence, until)) = self.acting().check(Instant::now()) else { return Err(term_over()) };
        if until.is_none() {
            return call(fence).await;
        }
        let mut call = std::pin::pin!(call(fence));
        let mut ends = std::pin::pin!(self.term_ends());
        // The term is checked at every step of the call, before the call moves on: a
        // process frozen midway that wakes up past its term takes no further step.
        std::future::poll_fn(|cx| {
            if self.acting().check(Instant::now()).is_none() || ends.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Err(term_over()));
            }
            call.as_mut().poll(cx)
        })
        .await
    }

    /// Returns when the loop's term is over (its deadline moves on with every renewal).
    async fn term_ends(&self) {
        loop {
            let check = self.acting().check(Instant::now());
            match check {
                Some((_, Some(until))) => tokio::time::sleep_until(until).await,
                Some((_, None)) => std::future::pending().await,
                None => return,
            }
        }
    }
}

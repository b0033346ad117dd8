//! Leader election on the `coordination.k8s.io` Lease `nexus-controller`, as client-go
//! does it: every write replaces the Lease with the resource version just read, so of two
//! replicas writing at once the API server lets one through and answers the other 409,
//! whatever their field managers (each replica still writes as its own, `nexus-<identity>`).
//!
//! A replica takes the lease when it is free, or when its record has not changed for the
//! holder's lease duration by this replica's own clock (so clock skew between nodes does
//! not matter). The holder renews it every [`LeaseTiming::renew_every`] and stops leading
//! at its deadline, the last successful renewal + duration - grace, whether or not the
//! API server answers: no other replica can take the lease before it expires, so two
//! never lead at once. Every call is bounded by that deadline.
//!
//! Each acquisition (by another replica, or by this one after its own lapsed) adds one to
//! `leaseTransitions`, which numbers the term this replica then leads in; renewals keep
//! it. The reconcile loop checks its term before every node call and status write.
//!
//! Whether to write is decided by the pure [`decide`]; the [`Elector`] around it does I/O.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ObjectMeta, PostParams};
use nexus_ports::leadership::Term;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::KubeCluster;
use crate::cluster::REQUEST_TIMEOUT;

/// The lease replicas compete for; its holder reconciles.
pub const LEASE_NAME: &str = "nexus-controller";

/// How long a lease lasts and how its holder keeps it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseTiming {
    /// How long the lease is valid after a renewal (`leaseDurationSeconds`).
    pub duration: Duration,
    /// How long before the lease expires its holder stops leading, if it could not renew.
    pub grace: Duration,
    /// How often the holder renews.
    pub renew_every: Duration,
    /// How often a failed call is tried again.
    pub retry_every: Duration,
}

impl Default for LeaseTiming {
    fn default() -> Self {
        Self { duration: Duration::from_secs(15), grace: Duration::from_secs(5), renew_every: Duration::from_secs(4), retry_every: Duration::from_secs(2) }
    }
}

impl LeaseTiming {
    /// How long after a successful renewal the holder may go on leading without another.
    pub fn renew_deadline(&self) -> Duration {
        self.duration.saturating_sub(self.grace)
    }
}

/// What decides who holds the lease, as one reading saw it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct Record {
    pub holder: Option<String>,
    pub renew_time: Option<MicroTime>,
    pub duration_seconds: Option<i32>,
}

impl Record {
    fn of(lease: &Lease) -> Self {
        let spec = lease.spec.clone().unwrap_or_default();
        Self { holder: spec.holder_identity.filter(|h| !h.is_empty()), renew_time: spec.renew_time, duration_seconds: spec.lease_duration_seconds }
    }
}

/// What to do after reading the lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Decision {
    /// Write it as ours: take a free or expired lease, or renew our own.
    Write,
    /// Another replica holds it: look again after this long (a retry period, or when it
    /// would expire if sooner).
    Follow(Duration),
}

/// Whether `me` may write the lease whose record has stayed `record` for `unchanged_for`
/// (by this replica's clock).
pub(crate) fn decide(record: &Record, me: &str, unchanged_for: Duration, timing: &LeaseTiming) -> Decision {
    match record.holder.as_deref() {
        None => Decision::Write,
        Some(holder) if holder == me => Decision::Write,
        Some(_) => {
            let theirs = record.duration_seconds.and_then(|s| u64::try_from(s).ok()).map_or(timing.duration, Duration::from_secs);
            // Looked at again every retry period: the expiry is counted from when this
            // replica first saw the record, so the sooner it sees the last renewal, the
            // sooner it takes over from a holder that died.
            if unchanged_for >= theirs { Decision::Write } else { Decision::Follow((theirs - unchanged_for).min(timing.retry_every)) }
        }
    }
}

/// The lease as `me` writes it over `lease`: renewed now while `me` leads; acquired now
/// otherwise (one more transition, a new term), whether another held it or `me` did
/// until its own lapsed.
fn claimed(mut lease: Lease, me: &str, leading: bool, timing: &LeaseTiming) -> Lease {
    let now = Some(MicroTime(Timestamp::now()));
    let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
    if spec.holder_identity.as_deref() != Some(me) || !leading {
        let held = spec.holder_identity.as_deref().is_some_and(|h| !h.is_empty());
        spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + i32::from(held));
        spec.acquire_time.clone_from(&now);
        spec.holder_identity = Some(me.to_owned());
    }
    spec.renew_time = now;
    spec.lease_duration_seconds = Some(i32::try_from(timing.duration.as_secs()).unwrap_or(i32::MAX));
    lease
}

/// Competes for the lease as one replica and says whether it leads.
pub(crate) struct Elector {
    api: Api<Lease>,
    identity: String,
    timing: LeaseTiming,
    leading: watch::Sender<Option<Term>>,
    /// Until when this replica may lead (last renewal + duration - grace).
    deadline: Option<Instant>,
    /// The number of the term it leads in (`leaseTransitions` when it acquired the lease).
    term: u64,
    /// The record last read and since when it has not changed.
    seen: Option<(Record, Instant)>,
}

impl Elector {
    fn params(&self) -> PostParams {
        PostParams { field_manager: Some(format!("nexus-{}", self.identity)), ..PostParams::default() }
    }

    /// Tells whether this replica leads, and in which term until when.
    fn publish(&mut self, leads: bool) {
        if !leads {
            self.deadline = None;
        }
        let term = self.deadline.filter(|_| leads).map(|until| Term { number: self.term, until });
        let mut was = None;
        self.leading.send_if_modified(|current| {
            was = Some(std::mem::replace(current, term));
            was != Some(term)
        });
        if was.is_some_and(|was| was.map(|t| t.number) != term.map(|t| t.number)) {
            tracing::info!(identity = %self.identity, leads, term = self.term, "leadership changed");
        }
    }

    /// `call`, given up at the deadline (or after [`REQUEST_TIMEOUT`] when not leading).
    async fn bounded<T>(&self, call: impl Future<Output = kube::Result<T>>) -> Option<kube::Result<T>> {
        let limit = Instant::now() + REQUEST_TIMEOUT;
        tokio::time::timeout_at(self.deadline.map_or(limit, |d| d.min(limit)), call).await.ok()
    }

    /// One round: read the lease, write it if ours to write; returns when to go again.
    async fn round(&mut self) -> Duration {
        let started = Instant::now();
        let lease = match self.bounded(self.api.get(LEASE_NAME)).await {
            Some(Ok(lease)) => lease,
            Some(Err(kube::Error::Api(status))) if status.code == 404 => {
                Lease { metadata: ObjectMeta { name: Some(LEASE_NAME.to_owned()), ..ObjectMeta::default() }, spec: None }
            }
            Some(Err(err)) => {
                tracing::warn!(error = %err, "cannot read the leader lease");
                return self.timing.retry_every;
            }
            None => return self.timing.retry_every,
        };
        let record = Record::of(&lease);
        if self.seen.as_ref().is_none_or(|(seen, _)| *seen != record) {
            self.seen = Some((record.clone(), started));
        }
        let unchanged_for = self.seen.as_ref().map_or(Duration::ZERO, |(_, since)| started - *since);
        if let Decision::Follow(wait) = decide(&record, &self.identity, unchanged_for, &self.timing) {
            self.publish(false);
            return wait;
        }
        let exists = lease.metadata.resource_version.is_some();
        let claim = claimed(lease, &self.identity, self.deadline.is_some(), &self.timing);
        let term = claim.spec.as_ref().and_then(|spec| spec.lease_transitions).and_then(|n| u64::try_from(n).ok()).unwrap_or_default();
        let written = if exists {
            self.bounded(self.api.replace(LEASE_NAME, &self.params(), &claim)).await
        } else {
            self.bounded(self.api.create(&self.params(), &claim)).await
        };
        match written {
            Some(Ok(_)) => {
                self.deadline = Some(started + self.timing.renew_deadline());
                self.term = term;
                self.publish(true);
                self.timing.renew_every
            }
            Some(Err(kube::Error::Api(status))) if status.code == 409 => {
                tracing::debug!(identity = %self.identity, "another replica wrote the lease first");
                self.timing.retry_every
            }
            Some(Err(err)) => {
                tracing::warn!(error = %err, "cannot write the leader lease");
                self.timing.retry_every
            }
            None => self.timing.retry_every,
        }
    }

    /// Runs rounds until every receiver is gone, stepping down at the deadline; then
    /// frees the lease if it held it, so another replica takes over at once.
    pub(crate) async fn run(mut self) {
        loop {
            if self.deadline.is_some_and(|deadline| Instant::now() >= deadline) {
                tracing::warn!(identity = %self.identity, "the leader lease could not be renewed in time: stepping down");
                self.publish(false);
            }
            let next = Instant::now() + self.round().await;
            let wake = self.deadline.map_or(next, |deadline| deadline.min(next));
            tokio::select! {
                () = tokio::time::sleep_until(wake) => {}
                () = self.leading.closed() => break,
            }
        }
        if self.deadline.is_some() {
            self.release().await;
        }
    }

    async fn release(&self) {
        if let Some(Ok(mut lease)) = self.bounded(self.api.get(LEASE_NAME)).await
            && let Some(spec) = lease.spec.as_mut().filter(|s| s.holder_identity.as_deref() == Some(self.identity.as_str()))
        {
            spec.holder_identity = None;
            spec.renew_time = None;
            if let Some(Err(err)) = self.bounded(self.api.replace(LEASE_NAME, &self.params(), &lease)).await {
                tracing::debug!(error = %err, "could not free the leader lease");
            }
        }
    }
}

impl KubeCluster {
    /// Competes for the leader lease in the system namespace as `identity` (unique per
    /// process); the channel says the term this replica leads in (`None`: it follows).
    /// The election runs until the channel's receivers are all dropped.
    pub fn leadership(&self, identity: &str) -> watch::Receiver<Option<Term>> {
        self.leadership_with(identity, LeaseTiming::default())
    }

    /// [`Self::leadership`] with `timing` rather than the defaults.
    pub fn leadership_with(&self, identity: &str, timing: LeaseTiming) -> watch::Receiver<Option<Term>> {
        let (leading, receiver) = watch::channel(None);
        let api = Api::namespaced(self.client(), &self.settings().system_namespace);
        let elector = Elector { api, identity: identity.to_owned(), timing, leading, deadline: None, term: 0, seen: None };
        tokio::spawn(elector.run());
        receiver
    }
}

#[cfg(test)]
#[path = "lease_tests.rs"]
mod tests;

//! The live status stream of an agent: its current status at once, then an event on every
//! change of phase or `nodeAck`, and a final `deleted` when it goes. The stream reads the
//! registry and the cluster on a short interval, as any replica can (the status is written
//! by whichever replica reconciles), rather than listening to this process only. Open
//! streams are bounded per tenant (per replica), and each ends after a maximum duration
//! (clients reconnect, as Server-Sent Events clients do). The caller's credential is
//! checked again at every look (so at least at every heartbeat): once it no longer holds
//! (the key revoked or expired, the user's sessions ended, the tenant gone), the stream
//! sends a final `revoked` and ends.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::Stream;
use nexus_ports::agents::{AgentName, AgentPhase, AgentStatus};
use nexus_ports::ports::{AgentStore, ClusterBackend};
use nexus_ports::tenancy::{Tenant, TenantId};
use nexus_ports::{Error, Result};
use tokio::time::Instant;

use super::AgentService;

/// How the streams behave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventSettings {
    /// How often a stream looks for a change.
    pub poll: Duration,
    /// How often an idle stream sends a heartbeat.
    pub heartbeat: Duration,
    /// How many streams a tenant may hold open at once (on one replica).
    pub max_streams: u32,
    /// How long one stream lasts before it ends.
    pub max_duration: Duration,
}

impl Default for EventSettings {
    fn default() -> Self {
        Self { poll: Duration::from_secs(1), heartbeat: Duration::from_secs(15), max_streams: 10, max_duration: Duration::from_secs(3600) }
    }
}

/// One event of the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentEvent {
    /// The agent's status (at once, then on every change of phase or `nodeAck`), with the
    /// number of its current version.
    Status { name: AgentName, status: AgentStatus, version_number: u32 },
    /// The agent was deleted; the stream ends.
    Deleted { name: AgentName },
    /// The credential that opened the stream no longer holds (why, in `reason`); the
    /// stream ends.
    Revoked { name: AgentName, reason: String },
}

/// Checks that the caller who opened a stream may still read it: `Err` with
/// [`Error::Unauthorized`] or [`Error::Forbidden`] once it may not.
pub type StillAllowed = Arc<dyn Fn() -> futures_util::future::BoxFuture<'static, Result<()>> + Send + Sync>;

/// Open streams per tenant.
#[derive(Debug, Default)]
pub(crate) struct OpenStreams(Mutex<HashMap<TenantId, u32>>);

/// One open stream of a tenant, counted until dropped.
pub(crate) struct StreamSlot {
    streams: Arc<OpenStreams>,
    tenant: TenantId,
}

impl OpenStreams {
    fn counts(&self) -> std::sync::MutexGuard<'_, HashMap<TenantId, u32>> {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A slot for one more stream of `tenant`, unless it holds `max` already.
    fn open(self: &Arc<Self>, tenant: TenantId, max: u32) -> Option<StreamSlot> {
        let mut counts = self.counts();
        let open = counts.entry(tenant).or_default();
        if *open >= max {
            return None;
        }
        *open += 1;
        Some(StreamSlot { streams: self.clone(), tenant })
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut counts = self.streams.counts();
        if let Some(open) = counts.get_mut(&self.tenant) {
            *open = open.saturating_sub(1);
            if *open == 0 {
                counts.remove(&self.tenant);
            }
        }
    }
}

/// Where a stream stands between two looks.
struct Watch {
    agents: Arc<dyn AgentStore>,
    cluster: Arc<dyn ClusterBackend>,
    tenant: TenantId,
    name: AgentName,
    poll: Duration,
    ends_at: Instant,
    /// Phase and `nodeAck` last sent; `None` before the first event.
    sent: Option<(AgentPhase, bool)>,
    /// Whether the caller may still read the stream.
    allowed: StillAllowed,
    done: bool,
    _slot: StreamSlot,
}

impl Watch {
    /// The next event: at once the first time, then at the first change seen; `None` once
    /// the agent is gone (after `deleted`), the duration is over, or a read fails.
    async fn next(&mut self) -> Option<AgentEvent> {
        if self.done {
            return None;
        }
        loop {
            match (self.allowed)().await {
                Ok(()) => {}
                Err(Error::Unauthorized(reason) | Error::Forbidden(reason)) => {
                    self.done = true;
                    return Some(AgentEvent::Revoked { name: self.name.clone(), reason });
                }
                Err(err) => {
                    tracing::warn!(agent = %self.name, error = %err, "an event stream could not check its caller's credential; ending it");
                    return None;
                }
            }
            // The object is read before the registry: an agent deleted (and its object let
            // go) between the two reads then reads as deleted, never as Pending.
            let object = match self.cluster.agent_object(&self.tenant, &self.name).await {
                Ok(object) => object,
                Err(err) => {
                    tracing::warn!(agent = %self.name, error = %err, "an event stream could not read its agent's status; ending it");
                    return None;
                }
            };
            let found = match self.agents.find_agent(&self.tenant, &self.name).await {
                Ok(found) => found,
                Err(err) => {
                    tracing::warn!(agent = %self.name, error = %err, "an event stream could not read its agent; ending it");
                    return None;
                }
            };
            let Some(agent) = found else {
                self.done = true;
                return Some(AgentEvent::Deleted { name: self.name.clone() });
            };
            let status = object.map_or_else(AgentStatus::pending, |o| o.status);
            let seen = (status.phase, status.node_ack);
            if self.sent != Some(seen) {
                self.sent = Some(seen);
                return Some(AgentEvent::Status { name: self.name.clone(), status, version_number: agent.version_number });
            }
            if Instant::now() + self.poll > self.ends_at {
                return None;
            }
            tokio::time::sleep(self.poll).await;
        }
    }
}

impl AgentService {
    /// The settings of the live status streams.
    pub fn event_settings(&self) -> EventSettings {
        self.events
    }

    /// The agent's live status stream, for as long as `allowed` holds.
    ///
    /// # Errors
    /// [`Error::NotFound`] when there is no such agent; [`Error::RateLimited`] when the
    /// tenant holds as many open streams as allowed.
    pub async fn events(&self, tenant: &Tenant, name: &str, allowed: StillAllowed) -> Result<impl Stream<Item = AgentEvent> + Send + 'static> {
        let agent = self.find(tenant, name).await?;
        let slot = self.open_streams.open(tenant.id, self.events.max_streams).ok_or_else(|| {
            Error::rate_limited(format!("this tenant has {} event streams open already; close one first", self.events.max_streams), self.events.poll)
        })?;
        let watch = Watch {
            agents: self.agents.clone(),
            cluster: self.cluster.clone(),
            tenant: tenant.id,
            name: agent.manifest.name().clone(),
            // Looks (and checks the credential) at least at every heartbeat.
            poll: self.events.poll.min(self.events.heartbeat),
            ends_at: Instant::now() + self.events.max_duration,
            sent: None,
            allowed,
            done: false,
            _slot: slot,
        };
        Ok(futures_util::stream::unfold(watch, |mut watch| async move { watch.next().await.map(|event| (event, watch)) }))
    }
}

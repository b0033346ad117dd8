//! The change feed of the database: every replica sharing it is told of each change. On
//! PostgreSQL a change is sent with `NOTIFY` on one channel, and each replica `LISTEN`s on
//! it on a connection of its own, relaying what arrives (its own changes too) to its
//! subscribers. On SQLite, which one process serves (it holds the file's lock), a change
//! is a row of the change log, which each pool on the file polls a few times a second;
//! rows go after a minute.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use nexus_ports::changes::{Change, LocalChangeFeed};
use nexus_ports::ports::ChangeFeed;
use nexus_ports::{Error, Result};
use sea_orm::sqlx::postgres::{PgListener, PgPoolOptions};
use sea_orm::{ConnectionTrait, DatabaseBackend, DatabaseConnection, Statement};

use crate::SqlStore;

/// The PostgreSQL channel changes are sent on.
pub const CHANNEL: &str = "nexus_changes";

/// How long the relay waits before listening again after its connection failed.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// How often a SQLite replica reads the change log: well within the second in which
/// other replicas must hear of a change.
pub const POLL_EVERY: Duration = Duration::from_millis(200);

/// How long rows of the change log are kept. A replica that could not read it for this
/// long may have missed changes.
const LOG_KEPT: Duration = Duration::from_secs(60);

/// How many polls go by between two prunings of the change log (a write, so rarely).
const PRUNE_EVERY_POLLS: u32 = 25;

/// The most rows read at once.
const POLL_BATCH: u64 = 1000;

/// [`ChangeFeed`] on the store's database.
pub struct SqlChangeFeed {
    db: DatabaseConnection,
    /// Where the change log is read (see [`SqlStore`]).
    reads: DatabaseConnection,
    local: Arc<LocalChangeFeed>,
    /// PostgreSQL only: listening already, until [`SqlChangeFeed::relay`] takes it.
    listener: Mutex<Option<PgListener>>,
    /// SQLite only: the last row of the change log when the feed was made.
    read_up_to: i64,
}

fn unavailable(err: &sea_orm::DbErr) -> Error {
    tracing::warn!(error = %err, "cannot use the change log");
    Error::Unavailable("cannot reach the change log".to_owned())
}

fn millis(at: std::time::SystemTime) -> i64 {
    at.duration_since(std::time::UNIX_EPOCH).map_or(0, |since| i64::try_from(since.as_millis()).unwrap_or(i64::MAX))
}

impl SqlStore {
    /// The database's change feed. On PostgreSQL it listens before this returns, so that
    /// no change published afterwards is missed; [`SqlChangeFeed::relay`] must then run.
    ///
    /// # Errors
    /// [`Error::Unavailable`] when PostgreSQL does not let it listen.
    pub async fn change_feed(&self) -> Result<SqlChangeFeed> {
        let (listener, read_up_to) = match self.db.get_database_backend() {
            DatabaseBackend::Postgres => (Some(listen(&self.db).await?), 0),
            backend => {
                let last = Statement::from_string(backend, "SELECT COALESCE(MAX(seq), 0) AS seq FROM change_log");
                let row = self.db.query_one_raw(last).await.map_err(|err| unavailable(&err))?;
                (None, row.map(|row| row.try_get::<i64>("", "seq")).transpose().map_err(|err| unavailable(&err))?.unwrap_or(0))
            }
        };
        Ok(SqlChangeFeed { db: self.db.clone(), reads: self.reads.clone(), local: Arc::default(), listener: Mutex::new(listener), read_up_to })
    }
}

/// How often the relay sends a heartbeat (a `NOTIFY` to itself) on its own LISTEN
/// connection.
pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(1);

/// How long the relay goes without hearing anything (its heartbeats included) before it
/// takes its LISTEN connection for dead and listens again on a new one.
pub const SILENCE_LIMIT: Duration = Duration::from_secs(3);

/// The payload of a heartbeat: no change, only a sign the connection carries what is sent.
const HEARTBEAT: &str = "heartbeat";

/// Listens on a connection of its own (a pool of one made from the store's options), with
/// TCP keepalive asked of the server so that it too drops a connection whose client went
/// away.
async fn listen(db: &DatabaseConnection) -> Result<PgListener> {
    let unavailable = |err: sea_orm::sqlx::Error| {
        tracing::warn!(error = %err, "cannot listen for changes on the database");
        Error::Unavailable("cannot listen for changes on the database".to_owned())
    };
    let options = (*db.get_postgres_connection_pool().connect_options()).clone().options([
        ("tcp_keepalives_idle", "5"),
        ("tcp_keepalives_interval", "2"),
        ("tcp_keepalives_count", "3"),
    ]);
    let pool = PgPoolOptions::new().max_connections(1).max_lifetime(None).idle_timeout(None).acquire_timeout(SILENCE_LIMIT).connect_lazy_with(options);
    let mut listener = PgListener::connect_with(&pool).await.map_err(unavailable)?;
    listener.ignore_pool_close_event(true);
    listener.listen(CHANNEL).await.map_err(unavailable)?;
    Ok(listener)
}

impl SqlChangeFeed {
    /// Relays what other replicas (and this one) send to this process's subscribers, until
    /// the store closes. On PostgreSQL the LISTEN connection is live or known dead: a
    /// heartbeat goes through it every [`HEARTBEAT_EVERY`], and one that hears nothing for
    /// [`SILENCE_LIMIT`] (or fails) is dropped for a new one. Changes may have been missed
    /// meanwhile, so every subscriber is told ([`Change::Missed`]) when the connection is
    /// found dead, after each failed attempt to listen again (what was read from the store
    /// in between may be stale), and once more as soon as it listens again. On SQLite it
    /// polls the change log.
    pub async fn relay(self: Arc<Self>) {
        let Some(listener) = self.listener.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take() else {
            return self.poll().await;
        };
        let mut listening = Some(listener);
        while !self.db.get_postgres_connection_pool().is_closed() {
            let mut listener = match listening.take() {
                Some(listener) => listener,
                None => {
                    self.local.send(Change::Missed);
                    match listen(&self.db).await {
                        Ok(listener) => {
                            self.local.send(Change::Missed);
                            tracing::info!("the change feed listens again");
                            listener
                        }
                        Err(_) => {
                            tokio::time::sleep(RETRY_AFTER).await;
                            continue;
                        }
                    }
                }
            };
            self.hear(&mut listener).await;
        }
    }

    /// Relays what `listener` hears, sending heartbeats through it, until it fails, goes
    /// silent or the store closes.
    async fn hear(&self, listener: &mut PgListener) {
        let mut last_heard = tokio::time::Instant::now();
        let mut next_beat = last_heard;
        loop {
            let until_beat = next_beat.saturating_duration_since(tokio::time::Instant::now());
            match tokio::time::timeout(until_beat, listener.try_recv()).await {
                Err(_) => {
                    if self.db.get_postgres_connection_pool().is_closed() {
                        return;
                    }
                    if last_heard.elapsed() >= SILENCE_LIMIT {
                        tracing::warn!(silent_for = ?last_heard.elapsed(), "the change feed heard nothing, not even its heartbeat; listening on a new connection");
                        return;
                    }
                    let beat = sea_orm::sqlx::query("SELECT pg_notify($1, $2)").bind(CHANNEL).bind(HEARTBEAT);
                    match tokio::time::timeout(SILENCE_LIMIT, beat.execute(&mut *listener)).await {
                        Ok(Ok(_)) => {}
                        Ok(Err(err)) => {
                            tracing::warn!(error = %err, "the change feed's heartbeat failed; listening on a new connection");
                            return;
                        }
                        Err(_) => {
                            tracing::warn!("the change feed's heartbeat got no answer; listening on a new connection");
                            return;
                        }
                    }
                    next_beat = tokio::time::Instant::now() + HEARTBEAT_EVERY;
                }
                Ok(Ok(Some(notification))) => {
                    last_heard = tokio::time::Instant::now();
                    if notification.payload() == HEARTBEAT {
                        continue;
                    }
                    match Change::parse(notification.payload()) {
                        Some(change) => self.local.send(change),
                        None => tracing::debug!(payload = notification.payload(), "ignoring a change this version does not know"),
                    }
                }
                Ok(Ok(None)) => {
                    tracing::warn!("lost the change feed's connection; listening on a new one");
                    return;
                }
                Ok(Err(err)) => {
                    tracing::warn!(error = %err, "the change feed cannot listen; listening on a new connection");
                    return;
                }
            }
        }
    }
}

impl SqlChangeFeed {
    /// Reads the change log every [`POLL_EVERY`], relaying each new row in order and
    /// letting rows older than [`LOG_KEPT`] go. After failing to read it for as long as
    /// rows are kept, it says changes may have been missed.
    async fn poll(&self) {
        let mut read_up_to = self.read_up_to;
        let mut last_read = std::time::Instant::now();
        let mut ticks = tokio::time::interval(POLL_EVERY);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut polls: u32 = 0;
        loop {
            ticks.tick().await;
            polls = polls.wrapping_add(1);
            if polls % PRUNE_EVERY_POLLS == 1
                && let Err(err) = self.prune_log().await
            {
                tracing::warn!(error = %err, "cannot prune the change log");
            }
            match self.read_log(read_up_to).await {
                Ok(rows) => {
                    if last_read.elapsed() >= LOG_KEPT {
                        self.local.send(Change::Missed);
                    }
                    last_read = std::time::Instant::now();
                    for (seq, text) in rows {
                        read_up_to = seq;
                        match Change::parse(&text) {
                            Some(change) => self.local.send(change),
                            None => tracing::debug!(change = text, "ignoring a change this version does not know"),
                        }
                    }
                }
                Err(err) => tracing::warn!(error = %err, "cannot read the change log; retrying"),
            }
        }
    }

    async fn prune_log(&self) -> Result<()> {
        let forget = millis(std::time::SystemTime::now() - LOG_KEPT);
        let prune = Statement::from_sql_and_values(self.db.get_database_backend(), "DELETE FROM change_log WHERE at_millis < ?", [forget.into()]);
        self.db.execute_raw(prune).await.map(drop).map_err(|err| unavailable(&err))
    }

    async fn read_log(&self, after: i64) -> Result<Vec<(i64, String)>> {
        let backend = self.db.get_database_backend();
        let read = Statement::from_sql_and_values(
            backend,
            "SELECT seq, change FROM change_log WHERE seq > ? ORDER BY seq LIMIT ?",
            [after.into(), i64::try_from(POLL_BATCH).unwrap_or(i64::MAX).into()],
        );
        let rows = self.reads.query_all_raw(read).await.map_err(|err| unavailable(&err))?;
        rows.iter()
            .map(|row| Ok((row.try_get::<i64>("", "seq")?, row.try_get::<String>("", "change")?)))
            .collect::<std::result::Result<_, sea_orm::DbErr>>()
            .map_err(|err| unavailable(&err))
    }
}

/// Sends `change` to every replica on `conn`: within a transaction, when it commits
/// (PostgreSQL delivers `NOTIFY` at commit; the change log's row commits with the rest).
pub(crate) async fn announce_in(conn: &impl ConnectionTrait, change: &Change) -> Result<()> {
    let backend = conn.get_database_backend();
    let statement = if backend == DatabaseBackend::Postgres {
        Statement::from_sql_and_values(backend, "SELECT pg_notify($1, $2)", [CHANNEL.into(), change.to_string().into()])
    } else {
        Statement::from_sql_and_values(
            backend,
            "INSERT INTO change_log (change, at_millis) VALUES (?, ?)",
            [change.to_string().into(), millis(std::time::SystemTime::now()).into()],
        )
    };
    conn.execute_raw(statement).await.map(drop).map_err(|err| {
        tracing::warn!(error = %err, "cannot publish a change");
        Error::Unavailable("cannot tell the other replicas about a change".to_owned())
    })
}

#[async_trait]
impl ChangeFeed for SqlChangeFeed {
    async fn publish(&self, change: &Change) -> Result<()> {
        announce_in(&self.db, change).await
    }

    fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Change> {
        self.local.subscribe()
    }
}

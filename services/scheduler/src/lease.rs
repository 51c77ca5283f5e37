//! One active scheduler: its queues are in memory, so two dispatching at
//! once would send a task twice. The active one holds a lease; a standby
//! waits for it, then loads the state from the store and takes over.
//!
//! - PostgreSQL store: a session advisory lock on a connection of its own.
//!   The server releases it the moment that connection ends, so a killed
//!   scheduler's lock is free at once.
//! - Otherwise, with Redis (`REDIS_URL`): a key set with NX and a TTL,
//!   renewed by compare-and-extend every third of the TTL; a killed holder's
//!   key expires within the TTL.
//! - Neither (SQLite with in-memory state, `relaymesh up`): one process by
//!   construction, no lease.

use std::time::Duration;

use relaymesh_state::SharedState;
use sqlx::{AnyConnection, Connection as _, Row as _};
use tokio_util::sync::CancellationToken;

use crate::error::{Result, SchedulerError};

/// The Redis key of the lease (under the deployment's key prefix).
const REDIS_KEY: &str = "scheduler:lease";

/// How a lease is held, chosen from the configuration.
pub enum Lease {
    None,
    Postgres { url: String },
    Redis { state: SharedState, ttl: Duration },
}

/// A lease held now.
pub enum Held {
    None,
    Postgres(AnyConnection),
    Redis {
        state: SharedState,
        ttl: Duration,
        token: String,
    },
}

impl Lease {
    pub fn for_store(database_url: &str, state: &SharedState, ttl: Duration) -> Self {
        if database_url.starts_with("postgres:") || database_url.starts_with("postgresql:") {
            Self::Postgres {
                url: database_url.to_owned(),
            }
        } else if matches!(state, SharedState::Redis(_)) {
            Self::Redis {
                state: state.clone(),
                ttl,
            }
        } else {
            Self::None
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Postgres { .. } => "postgres-advisory-lock",
            Self::Redis { .. } => "redis-key",
        }
    }

    /// Waits until the lease is ours (polling every `retry`), or `None` when
    /// `shutdown` comes first.
    pub async fn acquire(&self, retry: Duration, shutdown: &CancellationToken) -> Result<Option<Held>> {
        let mut waited = false;
        loop {
            if let Some(held) = self.try_acquire().await? {
                return Ok(Some(held));
            }
            if !waited {
                tracing::info!(lease = self.kind(), "another scheduler is active; standing by");
                waited = true;
            }
            tokio::select! {
                () = shutdown.cancelled() => return Ok(None),
                () = tokio::time::sleep(retry) => {}
            }
        }
    }

    async fn try_acquire(&self) -> Result<Option<Held>> {
        match self {
            Self::None => Ok(Some(Held::None)),
            Self::Postgres { url } => {
                sqlx::any::install_default_drivers();
                let mut conn = AnyConnection::connect(url).await?;
                // Advisory locks are per database: the key names the schema
                // too, so schedulers of different schemas do not contend.
                let row = sqlx::query(
                    "SELECT pg_try_advisory_lock(hashtext('relaymesh-scheduler:' || current_database() || ':' || \
                     current_schema())) AS held",
                )
                .fetch_one(&mut conn)
                .await?;
                let held: bool = row.try_get("held")?;
                Ok(held.then_some(Held::Postgres(conn)))
            }
            Self::Redis { state, ttl } => {
                let token = uuid::Uuid::new_v4().to_string();
                let won = state
                    .set_nx(REDIS_KEY, token.as_bytes(), Some(*ttl))
                    .await
                    .map_err(|e| SchedulerError::Lease(e.to_string()))?;
                Ok(won.then(|| Held::Redis {
                    state: state.clone(),
                    ttl: *ttl,
                    token,
                }))
            }
        }
    }
}

impl Held {
    /// Keeps the lease until `shutdown` (then releases it and returns `Ok`)
    /// or until it is lost (`Err`: the caller must stop dispatching at once).
    pub async fn keep(self, shutdown: &CancellationToken) -> Result<()> {
        match self {
            Self::None => {
                shutdown.cancelled().await;
                Ok(())
            }
            Self::Postgres(mut conn) => {
                let mut tick = tokio::time::interval(Duration::from_secs(1));
                loop {
                    tokio::select! {
                        () = shutdown.cancelled() => {
                            // Closing the session releases the lock.
                            let _ = conn.close().await;
                            return Ok(());
                        }
                        _ = tick.tick() => {
                            if let Err(e) = sqlx::query("SELECT 1").execute(&mut conn).await {
                                return Err(SchedulerError::Lease(format!("lock connection lost: {e}")));
                            }
                        }
                    }
                }
            }
            Self::Redis { state, ttl, token } => {
                let mut tick = tokio::time::interval(ttl / 3);
                loop {
                    tokio::select! {
                        () = shutdown.cancelled() => {
                            // Hand over at once rather than after the TTL.
                            if state.renew_if(REDIS_KEY, token.as_bytes(), Duration::from_millis(1)).await.is_err() {
                                tracing::warn!("could not release the scheduler lease; it expires by itself");
                            }
                            return Ok(());
                        }
                        _ = tick.tick() => {
                            match state.renew_if(REDIS_KEY, token.as_bytes(), ttl).await {
                                Ok(true) => {}
                                Ok(false) => return Err(SchedulerError::Lease("lease taken by another scheduler".into())),
                                // One failed renewal is survivable within the TTL.
                                Err(e) => tracing::warn!(error = %e, "scheduler lease renewal failed; retrying"),
                            }
                        }
                    }
                }
            }
        }
    }
}

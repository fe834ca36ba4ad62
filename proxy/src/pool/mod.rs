//! Server connection pools, one per (database, user).
//!
//! A pool has `pool_size` slots (a semaphore). Checking out takes a slot (waiting at most
//! `query_wait_timeout_ms`), then reuses a healthy idle connection or opens a new one. A
//! connection goes back to the idle list only through [`PooledConn::release`], which runs
//! `server_reset_query` first; dropping a [`PooledConn`] closes the connection. Either way the
//! slot is freed only when the connection is idle again or gone.

mod server;
mod stats;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use thiserror::Error;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

pub use server::{
    CancelTarget, ServerConn, ServerCredential, ServerError, ServerStatements, ServerTarget, MAX_SERVER_FRAME_BYTES,
};
pub use stats::{PoolStats, StatsSnapshot};

use crate::protocol::messages::TransactionStatus;

/// Why a client could not get a server connection.
#[derive(Debug, Error)]
pub enum PoolError {
    /// Every slot stayed busy for `query_wait_timeout_ms`.
    #[error("no server connection became free within {0:?}")]
    WaitTimeout(Duration),
    /// Opening a new server connection failed.
    #[error(transparent)]
    Connect(#[from] ServerError),
}

/// Limits and timeouts of one pool.
#[derive(Debug, Clone)]
pub struct PoolSettings {
    /// Number of server connections at most.
    pub size: usize,
    /// Connect and login timeout.
    pub connect_timeout: Duration,
    /// Idle connections unused this long are closed.
    pub idle_timeout: Duration,
    /// Connections older than this are closed instead of reused.
    pub lifetime: Duration,
    /// Run before a connection is reused after a session; empty for none.
    pub reset_query: String,
    /// Prepared statements kept per server connection (transaction and statement modes).
    pub max_prepared_statements: usize,
}

/// Server connections for one (database, user).
#[derive(Debug)]
pub struct Pool {
    /// The database name clients use.
    pub database: String,
    /// The client user name.
    pub user: String,
    /// Counters for SHOW STATS.
    pub stats: PoolStats,
    target: ServerTarget,
    settings: PoolSettings,
    credential: Mutex<ServerCredential>,
    slots: Arc<Semaphore>,
    idle: Mutex<Vec<ServerConn>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these short locks cannot leave the data half-changed.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Pool {
    fn new(
        database: &str,
        user: &str,
        target: ServerTarget,
        settings: PoolSettings,
        credential: ServerCredential,
    ) -> Self {
        Pool {
            database: database.to_owned(),
            user: user.to_owned(),
            stats: PoolStats::default(),
            target,
            credential: Mutex::new(credential),
            slots: Arc::new(Semaphore::new(settings.size)),
            idle: Mutex::new(Vec::new()),
            settings,
        }
    }

    /// Where this pool connects.
    pub fn target(&self) -> &ServerTarget {
        &self.target
    }

    /// Replaces the credential used for new connections (e.g. fresher SCRAM keys).
    pub fn set_credential(&self, credential: ServerCredential) {
        *lock(&self.credential) = credential;
    }

    /// Takes a slot, waiting at most `wait`, and returns a usable server connection.
    pub async fn checkout(self: &Arc<Self>, wait: Duration) -> Result<PooledConn, PoolError> {
        let permit = tokio::time::timeout(wait, self.slots.clone().acquire_owned())
            .await
            .map_err(|_| PoolError::WaitTimeout(wait))?
            .map_err(|_| PoolError::WaitTimeout(wait))?;
        while let Some(mut conn) = self.pop_idle() {
            if conn.is_healthy() && !self.expired(&conn, Instant::now()) {
                return Ok(PooledConn { conn, pool: self.clone(), _slot: permit });
            }
            tracing::debug!(db = %self.target.dbname, user = %self.target.user, "discarding stale idle server connection");
        }
        let credential = lock(&self.credential).clone();
        let conn = ServerConn::connect(
            &self.target,
            &credential,
            self.settings.connect_timeout,
            self.settings.max_prepared_statements,
        )
        .await?;
        tracing::debug!(db = %self.target.dbname, user = %self.target.user, "opened server connection");
        Ok(PooledConn { conn, pool: self.clone(), _slot: permit })
    }

    fn pop_idle(&self) -> Option<ServerConn> {
        lock(&self.idle).pop()
    }

    fn expired(&self, conn: &ServerConn, now: Instant) -> bool {
        now.duration_since(conn.created) >= self.settings.lifetime
            || now.duration_since(conn.last_used) >= self.settings.idle_timeout
    }

    /// Closes idle connections past their idle timeout or lifetime.
    fn sweep(&self) {
        let now = Instant::now();
        lock(&self.idle).retain(|conn| !self.expired(conn, now));
    }

    /// Number of idle connections.
    pub fn idle_count(&self) -> usize {
        lock(&self.idle).len()
    }

    /// Number of slots in use (connections checked out or being reset).
    pub fn active_count(&self) -> usize {
        self.settings.size - self.slots.available_permits()
    }
}

/// A server connection checked out of a pool. Dropping it closes the connection.
#[derive(Debug)]
pub struct PooledConn {
    conn: ServerConn,
    pool: Arc<Pool>,
    _slot: OwnedSemaphorePermit,
}

impl PooledConn {
    /// The connection.
    pub fn conn(&mut self) -> &mut ServerConn {
        &mut self.conn
    }

    /// The connection, read-only.
    pub fn conn_ref(&self) -> &ServerConn {
        &self.conn
    }

    /// Returns a connection that is idle (nothing in flight, not in a transaction) to the
    /// pool as it is, for the next transaction (transaction and statement modes, where the
    /// session keeps track of the state it leaves behind).
    pub fn release(self) {
        let PooledConn { mut conn, pool, _slot: slot } = self;
        conn.last_used = Instant::now();
        lock(&pool.idle).push(conn);
        drop(slot);
    }

    /// Returns a connection that is idle (nothing in flight, not in a transaction) to the
    /// pool after a whole session: `server_reset_query` runs first.
    ///
    /// The reset query runs in the background; the slot stays taken until it is done, and a
    /// connection whose reset fails is closed instead.
    pub fn release_after_session(self) {
        let PooledConn { mut conn, pool, _slot: slot } = self;
        tokio::spawn(async move {
            let reset = &pool.settings.reset_query;
            if !reset.is_empty() {
                match conn.simple_query(reset).await {
                    Ok(Ok(TransactionStatus::Idle)) => {}
                    outcome => {
                        tracing::warn!(?outcome, "server reset query failed; closing the server connection");
                        return;
                    }
                }
            }
            conn.last_used = Instant::now();
            lock(&pool.idle).push(conn);
            drop(slot);
        });
    }
}

impl PooledConn {
    /// Closes a connection that may be busy (a query running, a transaction open): cancels
    /// what runs on it first, so the server rolls back promptly, then closes it.
    pub fn discard(self) {
        let PooledConn { conn, _slot: slot, .. } = self;
        tokio::spawn(async move {
            let timeout = Duration::from_secs(5);
            if let Err(e) = tokio::time::timeout(timeout, conn.cancel()).await.unwrap_or(Ok(())) {
                tracing::debug!(error = %e, "cancel before discarding a server connection failed");
            }
            drop(conn);
            drop(slot);
        });
    }
}

/// All pools, created on first use.
#[derive(Debug, Default)]
pub struct Pools {
    pools: Mutex<HashMap<(String, String), Arc<Pool>>>,
}

impl Pools {
    /// The pool for (database, client user), created with `make` if it does not exist yet.
    pub fn get_or_create(
        &self,
        database: &str,
        user: &str,
        make: impl FnOnce() -> (ServerTarget, PoolSettings, ServerCredential),
    ) -> Arc<Pool> {
        let mut pools = lock(&self.pools);
        pools
            .entry((database.to_owned(), user.to_owned()))
            .or_insert_with(|| {
                let (target, settings, credential) = make();
                Arc::new(Pool::new(database, user, target, settings, credential))
            })
            .clone()
    }

    /// Every pool, ordered by (database, user).
    pub fn list(&self) -> Vec<Arc<Pool>> {
        let mut pools: Vec<Arc<Pool>> = lock(&self.pools).values().cloned().collect();
        pools.sort_by(|a, b| (&a.database, &a.user).cmp(&(&b.database, &b.user)));
        pools
    }

    /// Closes expired idle connections in every pool.
    pub fn sweep(&self) {
        let pools: Vec<Arc<Pool>> = lock(&self.pools).values().cloned().collect();
        for pool in pools {
            pool.sweep();
        }
    }

    /// Runs [`Pools::sweep`] every second, forever.
    pub async fn sweep_forever(self: Arc<Self>) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            self.sweep();
        }
    }
}

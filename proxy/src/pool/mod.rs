//! Server connection pools, one per (database, user), and per node for a cluster database.
//!
//! A pool has `pool_size` slots. Checking out waits while the database is paused (admin
//! PAUSE), takes a slot (the pause and the slot together waiting at most
//! `query_wait_timeout_ms`), then reuses a healthy idle connection or opens a new one. A
//! connection goes back to the idle list only through [`PooledConn::release`] or
//! [`PooledConn::release_after_session`]; dropping a [`PooledConn`] closes the connection.
//! Either way the slot is freed only when the connection is idle again or gone.
//!
//! A pool can be changed while in use (RELOAD): its size and timeouts apply at once, and when
//! its server target changes (or on RECONNECT, PAUSE, KILL) its *generation* goes up: idle
//! connections of older generations are closed at once, busy ones when they come back, so
//! transactions in flight finish undisturbed and the next checkout gets the new target.

mod averages;
mod members;
mod notifications;
mod pause;
mod server;
mod slots;
mod stats;

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use thiserror::Error;
use tokio::sync::watch;

pub use averages::{Average, Averages};
pub use members::{ServerInfo, ServerState};
pub use notifications::{Notifications, Subscriber};
pub use pause::PauseState;
pub use server::{
    CancelTarget, Cleartext, ServerConn, ServerCredential, ServerError, ServerStatements, ServerTarget, StatementEpoch,
    MAX_SERVER_FRAME_BYTES,
};
pub use stats::{HistogramsSnapshot, PoolStats, StatsSnapshot};

use crate::auth::userlist::Secret;
use crate::config::{Config, DatabaseConfig, NodeAddr};
use crate::protocol::messages::{self, ErrorResponse, TransactionStatus};
use members::{Members, Ticket};
use slots::{Slot, Slots};

/// Why a client could not get a server connection.
#[derive(Debug, Error)]
pub enum PoolError {
    /// Every slot stayed busy (or the database stayed paused) for `query_wait_timeout_ms`.
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
    /// TLS towards the server (`server_tls_*`).
    pub tls: crate::tls::ServerTls,
    /// Clear-text passwords over plain TCP (`server_allow_cleartext_password`).
    pub cleartext: Cleartext,
}

impl PoolSettings {
    /// The settings `config` gives the pools of database entry `db`.
    pub fn from_config(config: &Config, db: &DatabaseConfig) -> Self {
        let settings = &config.settings;
        PoolSettings {
            size: config.pool_size(db),
            connect_timeout: settings.server_connect_timeout(),
            idle_timeout: settings.server_idle_timeout(),
            lifetime: settings.server_lifetime(),
            reset_query: settings.server_reset_query.clone(),
            max_prepared_statements: settings.max_prepared_statements,
            tls: config.server_tls.clone(),
            cleartext: Cleartext::from_setting(settings.server_allow_cleartext_password),
        }
    }
}

/// Where the pool of (`database`, `client_user`) connects, per database entry `db`.
pub fn server_target(config: &Config, database: &str, db: &DatabaseConfig, client_user: &str) -> ServerTarget {
    ServerTarget {
        host: db.host.clone(),
        port: db.port,
        dbname: config.server_dbname(database, db).to_owned(),
        user: db.user.clone().unwrap_or_else(|| client_user.to_owned()),
    }
}

/// Where the pool of (`database`, `client_user`) on cluster node `node` connects.
pub fn node_target(
    config: &Config,
    database: &str,
    db: &DatabaseConfig,
    client_user: &str,
    node: &NodeAddr,
) -> ServerTarget {
    ServerTarget { host: node.host.clone(), port: node.port, ..server_target(config, database, db, client_user) }
}

/// The credential `config` gives the pool of `client_user` on entry `db`, when the
/// configuration alone decides it: `None` when it comes from a client's SCRAM proof (or the
/// user has no secret), which only a login can provide.
pub fn configured_credential(config: &Config, db: &DatabaseConfig, client_user: &str) -> Option<ServerCredential> {
    if db.user.is_some() {
        return Some(db.password.clone().map_or(ServerCredential::None, ServerCredential::Password));
    }
    match config.userlist.as_ref().and_then(|u| u.get(client_user)) {
        Some(Secret::Plain(p)) => Some(ServerCredential::Password(p.clone())),
        Some(Secret::Md5(h)) => Some(ServerCredential::Md5Hash(h.clone())),
        Some(Secret::Scram(_)) | None => None,
    }
}

fn same_target(a: &ServerTarget, b: &ServerTarget) -> bool {
    (&a.host, a.port, &a.dbname, &a.user) == (&b.host, b.port, &b.dbname, &b.user)
}

/// What a pool connects to and how; replaced by RELOAD.
#[derive(Debug)]
struct Setup {
    target: ServerTarget,
    settings: PoolSettings,
    credential: ServerCredential,
}

/// A server connection in the idle list.
#[derive(Debug)]
struct Idle {
    conn: ServerConn,
    ticket: Ticket,
}

/// Server connections for one (database, user).
#[derive(Debug)]
pub struct Pool {
    /// The database name clients use.
    pub database: String,
    /// The client user name.
    pub user: String,
    /// The cluster node it connects to, for a cluster database.
    pub node: Option<NodeAddr>,
    /// Counters for SHOW STATS.
    pub stats: PoolStats,
    setup: Mutex<Setup>,
    /// Bumped (under the `idle` lock) to retire every existing connection.
    generation: AtomicU64,
    /// The database left the configuration: no more checkouts.
    removed: AtomicBool,
    slots: Arc<Slots>,
    idle: Mutex<Vec<Idle>>,
    members: Arc<Members>,
    pause: watch::Receiver<PauseState>,
    /// The parameters a fresh connection reports (ParameterStatus), for logins that do not
    /// wait for a connection (transaction and statement modes).
    welcome: Mutex<Option<std::collections::BTreeMap<String, String>>>,
    /// How the server reports the values clients set at login (`euc-jp` → `EUC_JP`,
    /// `iso, dmy` → `ISO, DMY`), by (lowercase name, value as the client spelled it), for
    /// logins that do not wait for a connection.
    reported_values: Mutex<std::collections::HashMap<(String, String), String>>,
}

/// At most this many spellings are remembered per pool; beyond, a login setting a reported
/// parameter to a value spelled in a new way asks a server connection again.
const MAX_REPORTED_VALUES: usize = 256;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these short locks cannot leave the data half-changed.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Closes a connection that is idle: a Terminate, so the server ends the session cleanly,
/// then the socket.
fn close(conn: ServerConn) {
    let mut terminate = BytesMut::new();
    messages::encode_terminate(&mut terminate);
    // Best effort: an idle socket's send buffer has room for 5 bytes; if not, just drop it.
    let mut conn = conn;
    conn.stream.try_write_now(&terminate);
}

impl Pool {
    fn new(
        database: &str,
        user: &str,
        node: Option<NodeAddr>,
        target: ServerTarget,
        settings: PoolSettings,
        credential: ServerCredential,
        pause: watch::Receiver<PauseState>,
    ) -> Self {
        Pool {
            database: database.to_owned(),
            user: user.to_owned(),
            node,
            stats: PoolStats::default(),
            slots: Slots::new(settings.size),
            setup: Mutex::new(Setup { target, settings, credential }),
            generation: AtomicU64::new(0),
            removed: AtomicBool::new(false),
            idle: Mutex::new(Vec::new()),
            members: Arc::new(Members::default()),
            pause,
            welcome: Mutex::new(None),
            reported_values: Mutex::new(std::collections::HashMap::new()),
        }
    }

    fn setup(&self) -> MutexGuard<'_, Setup> {
        lock(&self.setup)
    }

    /// Where this pool connects.
    pub fn target(&self) -> ServerTarget {
        self.setup().target.clone()
    }

    /// The parameters a fresh server connection reported, once one was opened.
    pub fn welcome(&self) -> Option<std::collections::BTreeMap<String, String>> {
        lock(&self.welcome).clone()
    }

    /// The value a server reports for the parameter `name` (lowercase) a client set to
    /// `value`, when a login learned it ([`Pool::note_reported_value`]).
    pub fn reported_value(&self, name: &str, value: &str) -> Option<String> {
        lock(&self.reported_values).get(&(name.to_owned(), value.to_owned())).cloned()
    }

    /// Remembers that a server reported `reported` for the parameter `name` (lowercase) a
    /// client set to `value`.
    pub fn note_reported_value(&self, name: &str, value: &str, reported: &str) {
        let mut values = lock(&self.reported_values);
        if values.len() < MAX_REPORTED_VALUES {
            values.insert((name.to_owned(), value.to_owned()), reported.to_owned());
        }
    }

    /// The credential new connections log in with.
    pub fn credential(&self) -> ServerCredential {
        self.setup().credential.clone()
    }

    /// Replaces the credential used for new connections (e.g. fresher SCRAM keys).
    pub fn set_credential(&self, credential: ServerCredential) {
        self.setup().credential = credential;
    }

    /// Takes a slot, waiting at most `wait` (also while the database is paused), and returns
    /// a usable server connection.
    pub async fn checkout(self: &Arc<Self>, wait: Duration) -> Result<PooledConn, PoolError> {
        let started = Instant::now();
        self.check_removed()?;
        let slot = tokio::time::timeout(wait, self.take_slot()).await.map_err(|_| PoolError::WaitTimeout(wait))?;
        self.check_removed()?;
        let generation = self.generation();
        if let Some((conn, ticket)) = self.take_idle(generation) {
            self.stats.record_assignment(started.elapsed());
            return Ok(PooledConn { conn, ticket, pool: self.clone(), _slot: slot });
        }
        let (target, credential, tls, connect_timeout, max_prepared_statements, cleartext) = {
            let setup = self.setup();
            let s = &setup.settings;
            (
                setup.target.clone(),
                setup.credential.clone(),
                s.tls.clone(),
                s.connect_timeout,
                s.max_prepared_statements,
                s.cleartext,
            )
        };
        let ticket = self.members.join(generation);
        let conn = ServerConn::connect(&target, &credential, &tls, connect_timeout, max_prepared_statements, cleartext)
            .await?;
        ticket.connected(&conn);
        ticket.set_state(ServerState::Active);
        *lock(&self.welcome) = Some(conn.params.clone());
        tracing::debug!(db = %target.dbname, user = %target.user, host = %target.host, "opened server connection");
        self.stats.record_assignment(started.elapsed());
        Ok(PooledConn { conn, ticket, pool: self.clone(), _slot: slot })
    }

    /// A new server connection of this pool's target that is not one of its slots: pgvane's
    /// own, for listening on behalf of the pool's clients (`notifications.rs`).
    pub async fn connect_dedicated(&self) -> Result<ServerConn, ServerError> {
        let (target, credential, tls, connect_timeout, cleartext) = {
            let setup = self.setup();
            let s = &setup.settings;
            (setup.target.clone(), setup.credential.clone(), s.tls.clone(), s.connect_timeout, s.cleartext)
        };
        ServerConn::connect(&target, &credential, &tls, connect_timeout, 1, cleartext).await
    }

    /// An idle server connection at once, when one is free and usable: the common case of a
    /// transaction-pooled query, without the timer and waits of [`Pool::checkout`]. `None`
    /// when the pool is paused or removed, every slot is taken or no idle connection is
    /// left; `checkout` then waits or connects.
    pub fn try_checkout(self: &Arc<Self>) -> Option<PooledConn> {
        if self.is_removed() || self.pause.borrow().covers(&self.database) {
            return None;
        }
        let slot = self.slots.try_acquire()?;
        // As in `take_slot`: PAUSE may have started while the slot was taken.
        if self.pause.borrow().covers(&self.database) {
            return None;
        }
        let (conn, ticket) = self.take_idle(self.generation())?;
        self.stats.record_assignment(Duration::ZERO);
        Some(PooledConn { conn, ticket, pool: self.clone(), _slot: slot })
    }

    /// The most recently used idle connection of `generation` that is healthy and not
    /// expired, marked active; stale ones met on the way are closed.
    fn take_idle(&self, generation: u64) -> Option<(ServerConn, Ticket)> {
        while let Some(Idle { mut conn, ticket }) = self.pop_idle() {
            if ticket.generation == generation && conn.is_healthy() && !self.expired(&conn, Instant::now()) {
                ticket.set_state(ServerState::Active);
                return Some((conn, ticket));
            }
            tracing::debug!(db = %self.database, user = %self.user, "discarding stale idle server connection");
            close(conn);
        }
        None
    }

    /// A database removed from the configuration gives no more connections. The error goes
    /// to the client like a server's refusal would.
    fn check_removed(&self) -> Result<(), PoolError> {
        if !self.is_removed() {
            return Ok(());
        }
        let message = format!("database \"{}\" was removed from the configuration", self.database);
        Err(PoolError::Connect(ServerError::Server(ErrorResponse::error("3D000", message))))
    }

    /// Waits until the database is not paused and a slot is free. The pause is checked again
    /// once the slot is held, so PAUSE, which waits for every slot to be free, cannot miss a
    /// checkout that passed the first check just before it.
    async fn take_slot(&self) -> Slot {
        let mut pause = self.pause.clone();
        loop {
            let gate_gone = pause.wait_for(|p| !p.covers(&self.database)).await.is_err();
            let slot = self.slots.acquire().await;
            if gate_gone || !self.pause.borrow().covers(&self.database) {
                return slot;
            }
            drop(slot);
        }
    }

    fn pop_idle(&self) -> Option<Idle> {
        lock(&self.idle).pop()
    }

    /// Puts a connection back in the idle list, or closes it if it belongs to an older
    /// generation (checked under the idle lock, which generation bumps also take).
    ///
    /// A connection beyond the pool size (after the pool shrank) is closed too: normally a
    /// pool never has more connections than slots, as one is only opened with a slot held
    /// and the idle list empty.
    fn put_back(&self, mut conn: ServerConn, ticket: Ticket) {
        let mut idle = lock(&self.idle);
        let surplus = self.members.len() > self.slots.size();
        if ticket.generation != self.generation() || surplus {
            drop(idle);
            tracing::debug!(db = %self.database, user = %self.user, surplus, "closing a server connection");
            close(conn);
            return;
        }
        conn.last_used = Instant::now();
        ticket.set_state(ServerState::Idle);
        idle.push(Idle { conn, ticket });
    }

    fn expired(&self, conn: &ServerConn, now: Instant) -> bool {
        let setup = self.setup();
        now.duration_since(conn.created) >= setup.settings.lifetime
            || now.duration_since(conn.last_used) >= setup.settings.idle_timeout
    }

    /// Closes idle connections past their idle timeout or lifetime, of an older generation,
    /// or beyond the pool size.
    fn sweep(&self) {
        let now = Instant::now();
        let generation = self.generation();
        let stale: Vec<Idle> = {
            let mut idle = lock(&self.idle);
            let (keep, stale) = std::mem::take(&mut *idle)
                .into_iter()
                .partition(|i| i.ticket.generation == generation && !self.expired(&i.conn, now));
            *idle = keep;
            stale
        };
        for i in stale {
            close(i.conn);
        }
        self.trim();
    }

    /// Closes idle connections while the pool has more connections than its size.
    fn trim(&self) {
        let surplus: Vec<Idle> = {
            let mut idle = lock(&self.idle);
            let excess = self.members.len().saturating_sub(self.slots.size()).min(idle.len());
            idle.drain(..excess).collect()
        };
        for i in surplus {
            close(i.conn);
        }
    }

    /// Number of idle connections.
    pub fn idle_count(&self) -> usize {
        lock(&self.idle).len()
    }

    /// Number of slots in use (connections checked out, being opened, reset or closed).
    pub fn active_count(&self) -> usize {
        self.slots.held()
    }

    /// The pool size in force.
    pub fn size(&self) -> usize {
        self.slots.size()
    }

    /// The current generation; connections of older ones are closed when free.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    /// True once the pool's database left the configuration.
    pub fn is_removed(&self) -> bool {
        self.removed.load(Ordering::SeqCst)
    }

    /// Every server connection of the pool, idle or not.
    pub fn servers(&self) -> Vec<ServerInfo> {
        self.members.snapshot()
    }

    /// Retires every existing connection: idle ones are closed now, busy ones when they
    /// come back. New checkouts open new connections.
    pub fn reconnect(&self) {
        let retired = {
            let mut idle = lock(&self.idle);
            self.generation.fetch_add(1, Ordering::SeqCst);
            std::mem::take(&mut *idle)
        };
        for i in retired {
            close(i.conn);
        }
    }

    /// Applies a new configuration: size and timeouts at once; a new target (host, port,
    /// dbname or user) retires the existing connections (see [`Pool::reconnect`]). Returns
    /// true in that case. `credential` replaces the current one when given.
    pub fn reconfigure(
        &self,
        target: ServerTarget,
        settings: PoolSettings,
        credential: Option<ServerCredential>,
    ) -> bool {
        let moved = {
            let mut setup = self.setup();
            let moved = !same_target(&setup.target, &target);
            setup.target = target;
            if settings.size != self.slots.size() {
                self.slots.resize(settings.size);
            }
            setup.settings = settings;
            if let Some(credential) = credential {
                setup.credential = credential;
            }
            moved
        };
        if moved {
            self.reconnect();
        }
        self.trim();
        moved
    }

    /// Marks the pool's database as gone from the configuration: checkouts fail from now
    /// on, and connections are closed as they come free.
    fn remove(&self) {
        self.removed.store(true, Ordering::SeqCst);
        self.reconnect();
    }
}

/// A server connection checked out of a pool. Dropping it closes the connection.
#[derive(Debug)]
pub struct PooledConn {
    conn: ServerConn,
    ticket: Ticket,
    pool: Arc<Pool>,
    _slot: Slot,
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

    /// The pool it came from.
    pub fn pool(&self) -> &Arc<Pool> {
        &self.pool
    }

    /// Returns a connection that is idle (nothing in flight, not in a transaction) to the
    /// pool as it is, for the next transaction (transaction and statement modes, where the
    /// session keeps track of the state it leaves behind). A connection of an older
    /// generation is closed instead.
    pub fn release(self) {
        let PooledConn { conn, ticket, pool, _slot: slot } = self;
        if conn.cancels.pending() {
            // Another client must not get it before the cancel has arrived.
            tokio::spawn(async move {
                conn.cancels.clone().settled().await;
                pool.put_back(conn, ticket);
                drop(slot);
            });
            return;
        }
        pool.put_back(conn, ticket);
        drop(slot);
    }

    /// Returns a connection that is idle (nothing in flight, not in a transaction) to the
    /// pool after a whole session: `server_reset_query` runs first.
    ///
    /// The reset query runs in the background; the slot stays taken until it is done, and a
    /// connection whose reset fails is closed instead (as is one of an older generation).
    pub fn release_after_session(self) {
        let reset = self.pool.setup().settings.reset_query.clone();
        self.release_after(reset);
    }

    /// Returns a connection that is idle after running `reset` on it (nothing if empty),
    /// in the background; a connection whose reset fails is closed instead.
    pub fn release_after(self, reset: String) {
        let PooledConn { mut conn, ticket, pool, _slot: slot } = self;
        if ticket.generation != pool.generation() {
            close(conn);
            return;
        }
        ticket.set_state(ServerState::Tested);
        tokio::spawn(async move {
            // Another client must not get it before a cancel on its way has arrived.
            conn.cancels.clone().settled().await;
            if !reset.is_empty() {
                match conn.simple_query(&reset).await {
                    Ok(Ok(TransactionStatus::Idle)) => {}
                    outcome => {
                        tracing::warn!(?outcome, "server reset query failed; closing the server connection");
                        return;
                    }
                }
            }
            pool.put_back(conn, ticket);
            drop(slot);
        });
    }

    /// Closes a connection that may be busy (a query running, a transaction open): cancels
    /// what runs on it first, so the server rolls back promptly, then closes it.
    pub fn discard(self) {
        let PooledConn { conn, ticket, _slot: slot, .. } = self;
        tokio::spawn(async move {
            let timeout = Duration::from_secs(5);
            if let Err(e) = tokio::time::timeout(timeout, conn.cancel()).await.unwrap_or(Ok(())) {
                tracing::debug!(error = %e, "cancel before discarding a server connection failed");
            }
            drop(conn);
            drop(ticket);
            drop(slot);
        });
    }
}

/// What [`Pools::apply_config`] changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConfigApplied {
    /// Databases whose pools got a new server target: their connections are being replaced.
    pub moved: BTreeSet<String>,
    /// Databases that left the configuration: their pools are closing.
    pub removed: BTreeSet<String>,
}

/// What tells pools apart: database, client user, and the node of a cluster database.
type PoolKey = (String, String, Option<NodeAddr>);

/// All pools, created on first use, and the pause state they share.
#[derive(Debug)]
pub struct Pools {
    pools: Mutex<HashMap<PoolKey, Arc<Pool>>>,
    pause: watch::Sender<PauseState>,
    /// When the prepared statements on every server connection were last invalidated.
    pub statement_epoch: StatementEpoch,
    /// LISTEN/NOTIFY for the pooled modes: one listening connection per (database, user).
    pub notifications: Notifications,
}

impl Default for Pools {
    fn default() -> Self {
        Pools {
            pools: Mutex::default(),
            pause: watch::Sender::new(PauseState::default()),
            statement_epoch: StatementEpoch::default(),
            notifications: Notifications::default(),
        }
    }
}

impl Pools {
    /// The pool for (database, client user), created with `make` if it does not exist yet.
    pub fn get_or_create(
        &self,
        database: &str,
        user: &str,
        make: impl FnOnce() -> (ServerTarget, PoolSettings, ServerCredential),
    ) -> Arc<Pool> {
        self.get_or_create_on(database, user, None, make)
    }

    /// The pool for (database, client user) on cluster node `node` (`None`: the database's
    /// own `host`), created with `make` if it does not exist yet.
    pub fn get_or_create_on(
        &self,
        database: &str,
        user: &str,
        node: Option<&NodeAddr>,
        make: impl FnOnce() -> (ServerTarget, PoolSettings, ServerCredential),
    ) -> Arc<Pool> {
        let mut pools = lock(&self.pools);
        pools
            .entry((database.to_owned(), user.to_owned(), node.cloned()))
            .or_insert_with(|| {
                let (target, settings, credential) = make();
                let pause = self.pause.subscribe();
                Arc::new(Pool::new(database, user, node.cloned(), target, settings, credential, pause))
            })
            .clone()
    }

    /// Every pool's counters added up per database (SHOW STATS).
    pub fn totals_by_database(&self) -> std::collections::BTreeMap<String, StatsSnapshot> {
        let mut totals = std::collections::BTreeMap::new();
        for pool in self.list() {
            averages::add(totals.entry(pool.database.clone()).or_default(), &pool.stats.snapshot());
        }
        totals
    }

    /// Every pool, ordered by (database, user, node).
    pub fn list(&self) -> Vec<Arc<Pool>> {
        let mut pools: Vec<Arc<Pool>> = lock(&self.pools).values().cloned().collect();
        pools.sort_by(|a, b| (&a.database, &a.user, &a.node).cmp(&(&b.database, &b.user, &b.node)));
        pools
    }

    /// The pools of `database`, or every pool for `None`.
    pub fn of(&self, database: Option<&str>) -> Vec<Arc<Pool>> {
        let mut pools = self.list();
        pools.retain(|p| database.is_none_or(|db| p.database == db));
        pools
    }

    /// Brings every pool in line with `config` (after RELOAD): new sizes and timeouts at
    /// once, connections replaced gracefully where the server target changed, pools of
    /// databases no longer configured closed and forgotten.
    pub fn apply_config(&self, config: &Config) -> ConfigApplied {
        let mut applied = ConfigApplied::default();
        lock(&self.pools).retain(|(database, user, node), pool| match config.databases.get(database) {
            None => {
                pool.remove();
                applied.removed.insert(database.clone());
                false
            }
            Some(db) => {
                let target = match node {
                    Some(node) => node_target(config, database, db, user, node),
                    None => server_target(config, database, db, user),
                };
                let settings = PoolSettings::from_config(config, db);
                if pool.reconfigure(target, settings, configured_credential(config, db, user)) {
                    applied.moved.insert(database.clone());
                }
                true
            }
        });
        applied
    }

    /// Pauses `database` (every database for `None`): checkouts wait until [`Pools::resume`].
    /// Returns false if it was paused already.
    pub fn pause(&self, database: Option<&str>) -> bool {
        self.pause.send_if_modified(|state| match database {
            None => !std::mem::replace(&mut state.all, true),
            Some(db) => !state.all && state.databases.insert(db.to_owned()),
        })
    }

    /// Ends a pause of `database` (of everything for `None`). Returns false if there was no
    /// such pause (a database is not resumed alone while everything is paused).
    pub fn resume(&self, database: Option<&str>) -> bool {
        self.pause.send_if_modified(|state| match database {
            None => {
                let was_paused = state.all || !state.databases.is_empty();
                *state = PauseState::default();
                was_paused
            }
            Some(db) => !state.all && state.databases.remove(db),
        })
    }

    /// What is paused.
    pub fn pause_state(&self) -> PauseState {
        self.pause.borrow().clone()
    }

    /// Closes expired idle connections in every pool.
    pub fn sweep(&self) {
        for pool in self.list() {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pause_and_resume_report_changes() {
        let pools = Pools::default();
        assert!(pools.pause(Some("app")));
        assert!(!pools.pause(Some("app")), "already paused");
        assert!(pools.pause_state().covers("app") && !pools.pause_state().covers("other"));
        assert!(pools.pause(None));
        assert!(!pools.pause(Some("other")), "covered by the global pause");
        assert!(!pools.resume(Some("other")));
        assert!(!pools.resume(Some("app")), "not alone while everything is paused");
        assert!(pools.resume(None));
        assert_eq!(pools.pause_state(), PauseState::default());
        assert!(!pools.resume(None));
    }
}

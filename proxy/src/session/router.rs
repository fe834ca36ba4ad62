//! Which server runs a client's statement: the one home of that decision.
//!
//! A statement runs on the pool the policy chain's route names (another `[databases]` entry,
//! or the primary or a replica of a cluster database), else on the client's own database
//! (for a cluster: its `default_route`'s node). Bind, Describe and Close of a named
//! statement follow its Parse; everything else the current server. Inside a transaction (or
//! an extended batch not synced yet) the client stays on its transaction's server: a route
//! is ignored there (pgbouncer-rr's rule). In session mode the client keeps one server
//! connection per database it used ("parked" while it works elsewhere).
//!
//! The pools themselves are created here on first use, from the configuration in force.

use std::collections::HashMap;
use std::sync::Arc;

use crate::auth::scram::ScramKeys;
use crate::clients::Signals;
use crate::cluster::{Cluster, Want};
use crate::config::{Config, DatabaseConfig, NodeAddr};
use crate::policy::Route;
use crate::pool::{self, Pool, PoolError, PoolSettings, PooledConn, ServerCredential, ServerError};
use crate::protocol::messages::ErrorResponse;
use crate::shared::Shared;

/// The pool a statement runs on, as placed by [`Router::place`].
#[derive(Debug, Clone)]
pub(super) struct Placement {
    /// The pool.
    pub pool: Arc<Pool>,
    /// A policy routed it (rather than it following the client's database or statement).
    pub routed: bool,
}

/// Where one client's statements run.
#[derive(Debug)]
pub(super) struct Router {
    user: String,
    database: String,
    /// The SCRAM keys the client's proof yielded: pgvane logs in with them to the servers of
    /// other databases the policy routes to, when the configuration gives no password.
    keys: Option<ScramKeys>,
    /// The pool of the client's own database.
    home: Arc<Pool>,
    /// The pool of the current server connection, or of the next one taken.
    current: Arc<Pool>,
    /// Pools of the other databases the policy routed to, by name.
    routes: HashMap<String, Arc<Pool>>,
    /// Named statements prepared away from the client's own database, and where.
    statements: HashMap<String, Arc<Pool>>,
    /// Session mode: server connections of other databases the client used, kept for it.
    parked: Vec<PooledConn>,
    /// The cluster database whose writer the last statement placed on a cluster node needs.
    for_writer: Option<String>,
}

impl Router {
    /// A router for a client of `database` whose statements start on `home`.
    pub fn new(user: &str, database: &str, keys: Option<ScramKeys>, home: Arc<Pool>) -> Self {
        Router {
            user: user.to_owned(),
            database: database.to_owned(),
            keys,
            current: home.clone(),
            home,
            routes: HashMap::new(),
            statements: HashMap::new(),
            parked: Vec::new(),
            for_writer: None,
        }
    }

    /// The pool of the current server connection, or of the next one taken.
    pub fn current(&self) -> &Arc<Pool> {
        &self.current
    }

    /// Where a statement the chain let through runs: the pool `route` names, or the client's
    /// own database. A cluster database picks its node (waiting for a writer during a
    /// switchover; a cancel request or KILL ends the wait with the client's error). Inside a
    /// transaction a cluster statement stays on the transaction's server.
    pub async fn place(
        &mut self,
        shared: &Shared,
        signals: &Signals,
        route: Option<&Route>,
        in_transaction: bool,
    ) -> Result<Placement, ErrorResponse> {
        let routed = route.is_some();
        let (database, want) = match route {
            Some(Route::Database(name)) => (name.as_str(), None),
            Some(Route::Primary) => (self.database.as_str(), Some(Want::Primary)),
            Some(Route::Replica) => (self.database.as_str(), Some(Want::Replica)),
            None => (self.database.as_str(), None),
        };
        if let Some(cluster) = shared.clusters.get(database) {
            if in_transaction {
                return Ok(Placement { pool: self.current.clone(), routed });
            }
            let want = want.unwrap_or_else(|| cluster.default_route());
            self.for_writer = (want == Want::Primary).then(|| database.to_owned());
            let picked = tokio::select! {
                picked = pool_for_want(shared, &cluster, &self.user, self.keys.as_ref(), want) => picked,
                () = signals.cancel.notified() => Err(ErrorResponse::error("57014", "canceling statement due to user request")),
                // The flag stays raised: the query loop ends the session on it.
                () = signals.kill.raised() => Err(ErrorResponse::error("57P01", "terminating connection due to administrator command")),
            };
            return match picked {
                Ok(pool) => Ok(Placement { pool, routed }),
                Err(error) => {
                    tracing::warn!(
                        database,
                        code = error.code(),
                        message = error.message(),
                        "no server for the statement"
                    );
                    Err(error)
                }
            };
        }
        match route {
            Some(Route::Database(target)) => match self.pool_of(shared, target) {
                Some(pool) => Ok(Placement { pool, routed }),
                // Removed by a RELOAD since the chain checked it.
                None => Err(ErrorResponse::error("3D000", format!("database \"{target}\" does not exist"))),
            },
            // Primary and replica of a plain database: the database itself.
            _ => Ok(Placement { pool: self.home.clone(), routed }),
        }
    }

    /// The current pool is a cluster node picked as the writer that is no longer the writer
    /// (the leader changed between the pick and the checkout): the statement must not run
    /// there. See [`Router::move_to_writer`].
    pub fn writer_moved(&self, shared: &Shared) -> bool {
        let (Some(database), Some(node)) = (&self.for_writer, &self.current.node) else { return false };
        if self.current.database != *database {
            return false;
        }
        shared.clusters.get(database).is_some_and(|cluster| cluster.writer().as_ref() != Some(node))
    }

    /// Makes the pool of the cluster's writer now (waiting for one during a switchover) the
    /// current one.
    pub async fn move_to_writer(&mut self, shared: &Shared, signals: &Signals) -> Result<(), ErrorResponse> {
        let Some(database) = self.for_writer.clone() else { return Ok(()) };
        let Some(cluster) = shared.clusters.get(&database) else { return Ok(()) };
        let pool = tokio::select! {
            picked = pool_for_want(shared, &cluster, &self.user, self.keys.as_ref(), Want::Primary) => picked?,
            () = signals.cancel.notified() => return Err(ErrorResponse::error("57014", "canceling statement due to user request")),
            () = signals.kill.raised() => return Err(ErrorResponse::error("57P01", "terminating connection due to administrator command")),
        };
        tracing::info!(database, to = ?pool.node.as_ref().map(ToString::to_string), "the writer changed before the statement ran; it moves to the new one");
        if Arc::ptr_eq(&self.home, &self.current) {
            self.home = pool.clone();
        }
        self.current = pool;
        Ok(())
    }

    /// Where the client's statement `name` lives: the unnamed one on the current server, a
    /// named one where its Parse ran.
    pub fn statement(&self, name: &str) -> Placement {
        let pool = match name.is_empty() {
            true => &self.current,
            false => self.statements.get(name).unwrap_or(&self.home),
        };
        Placement { pool: pool.clone(), routed: false }
    }

    /// The current server: for messages that name no statement.
    pub fn here(&self) -> Placement {
        Placement { pool: self.current.clone(), routed: false }
    }

    /// Records that the client's named statement `name` was prepared on the current pool.
    pub fn note_statement(&mut self, name: &str) {
        if name.is_empty() {
            return;
        }
        if Arc::ptr_eq(&self.current, &self.home) {
            self.statements.remove(name);
        } else {
            self.statements.insert(name.to_owned(), self.current.clone());
        }
    }

    /// Forgets where statement `name` was prepared (closed, deallocated, or its Parse failed).
    pub fn forget_statement(&mut self, name: &str) {
        self.statements.remove(name);
    }

    /// Forgets where every statement was prepared (DEALLOCATE ALL, DISCARD ALL).
    pub fn forget_statements(&mut self) {
        self.statements.clear();
    }

    /// The pool the client must move to for `placement`, or `None` when it stays: it is there
    /// already, or inside a transaction, whose server keeps the statement.
    pub fn destination(&self, placement: &Placement, in_transaction: bool) -> Option<Arc<Pool>> {
        if Arc::ptr_eq(&placement.pool, &self.current) {
            return None;
        }
        if in_transaction {
            if placement.routed {
                tracing::info!(route = %placement.pool.database, transaction_on = %self.current.database, "route ignored inside a transaction");
            }
            return None;
        }
        Some(placement.pool.clone())
    }

    /// Makes `pool` the current one; in session mode, returns the server connection the
    /// client kept there, if any.
    pub fn move_to(&mut self, pool: Arc<Pool>) -> Option<PooledConn> {
        tracing::debug!(from = %self.current.database, to = %pool.database, "client moves to another database");
        self.current = pool;
        let i = self.parked.iter().position(|s| Arc::ptr_eq(s.pool(), &self.current))?;
        Some(self.parked.swap_remove(i))
    }

    /// Session mode: keeps a server connection of a database the client is leaving.
    pub fn park(&mut self, server: PooledConn) {
        self.parked.push(server);
    }

    /// Session mode, at the end: the server connections kept for the client.
    pub fn take_parked(&mut self) -> Vec<PooledConn> {
        std::mem::take(&mut self.parked)
    }

    /// The pool of `[databases]` entry `database` for this client's user.
    fn pool_of(&mut self, shared: &Shared, database: &str) -> Option<Arc<Pool>> {
        if database == self.database {
            return Some(self.home.clone());
        }
        if let Some(pool) = self.routes.get(database).filter(|p| !p.is_removed()) {
            return Some(pool.clone());
        }
        let pool = pool_for(shared, database, &self.user, self.keys.as_ref())?;
        self.routes.insert(database.to_owned(), pool.clone());
        Some(pool)
    }

    /// A checkout from a cluster node's pool failed with `error`. When the node is
    /// unreachable (connection refused or lost, timed out, or the server refusing sessions
    /// because it is shutting down or starting up) and the client is between transactions,
    /// the statement moves on instead of failing: the node is reported down (if it was the
    /// writer, statements for the primary wait for the new one), and the checkout is tried
    /// again on the writer the cluster now has (a read whose replica went away included).
    /// Returns `None` when a cancel request or KILL ended the wait.
    pub async fn retry_elsewhere(
        &mut self,
        shared: &Shared,
        signals: &Signals,
        error: PoolError,
        in_transaction: bool,
        query_wait: std::time::Duration,
    ) -> Option<Result<PooledConn, PoolError>> {
        let failed = self.current.clone();
        let Some(node) = failed.node.clone() else { return Some(Err(error)) };
        let Some(cluster) = shared.clusters.get(&failed.database) else { return Some(Err(error)) };
        if !node_unreachable(&error) || in_transaction {
            return Some(Err(error));
        }
        cluster.node_failed(&node, &error.to_string());
        let picked = tokio::select! {
            picked = pool_for_want(shared, &cluster, &self.user, self.keys.as_ref(), Want::Primary) => picked,
            () = signals.cancel.notified() => return None,
            () = signals.kill.raised() => return None, // the query loop ends the session on it
        };
        let pool = match picked {
            Ok(pool) => pool,
            Err(no_writer) => {
                tracing::warn!(message = no_writer.message(), "no writer to move the statement to");
                return Some(Err(error));
            }
        };
        tracing::info!(from = %node, to = ?pool.node.as_ref().map(ToString::to_string), "server unreachable; the statement moves to the writer");
        if Arc::ptr_eq(&self.home, &failed) {
            self.home = pool.clone();
        }
        self.current = pool;
        tokio::select! {
            r = self.current.checkout(query_wait) => Some(r),
            () = signals.cancel.notified() => None,
            () = signals.kill.raised() => None, // the query loop ends the session on it
        }
    }
}

/// True when a checkout failed because the node cannot take sessions now (rather than, say,
/// refusing the client's password): connection refused or lost, timeout, or the server
/// saying it is shutting down or starting up.
fn node_unreachable(error: &PoolError) -> bool {
    match error {
        PoolError::WaitTimeout(_) => false,
        PoolError::Connect(ServerError::Server(refusal)) => matches!(refusal.code(), "57P01" | "57P02" | "57P03"),
        PoolError::Connect(ServerError::Auth(_) | ServerError::Scram(_)) => false,
        PoolError::Connect(_) => true,
    }
}

/// The pool of `database` for `user`, created on first use from the configuration in force
/// now (a RELOAD may have come in since the session started). `None` when the configuration
/// has no such database. `keys` are the SCRAM keys the client's proof yielded, if any.
pub(crate) fn pool_for(shared: &Shared, database: &str, user: &str, keys: Option<&ScramKeys>) -> Option<Arc<Pool>> {
    let config = shared.config();
    let db = config.databases.get(database)?;
    let credential = server_credential(&config, db, user, keys.cloned());
    let pool = shared.pools.get_or_create(database, user, || {
        let target = pool::server_target(&config, database, db, user);
        (target, PoolSettings::from_config(&config, db), credential.clone())
    });
    if let ServerCredential::ScramKeys(_) = credential {
        pool.set_credential(credential);
    }
    Some(pool)
}

/// The pool of cluster node `node` of `database` for `user`, created on first use from the
/// configuration in force now. `None` when the configuration has no such database.
fn pool_on_node(
    shared: &Shared,
    database: &str,
    user: &str,
    keys: Option<&ScramKeys>,
    node: &NodeAddr,
) -> Option<Arc<Pool>> {
    let config = shared.config();
    let db = config.databases.get(database)?;
    let credential = server_credential(&config, db, user, keys.cloned());
    let pool = node_pool(shared, &config, database, user, node, &credential)?;
    if let ServerCredential::ScramKeys(_) = credential {
        pool.set_credential(credential);
    }
    Some(pool)
}

/// The pool of cluster node `node` of `database` for `user` under `config`, created with
/// `credential` if it does not exist yet (an existing pool keeps its own). `None` when
/// `config` has no such database.
fn node_pool(
    shared: &Shared,
    config: &Config,
    database: &str,
    user: &str,
    node: &NodeAddr,
    credential: &ServerCredential,
) -> Option<Arc<Pool>> {
    let db = config.databases.get(database)?;
    Some(shared.pools.get_or_create_on(database, user, Some(node), || {
        let target = pool::node_target(config, database, db, user, node);
        (target, PoolSettings::from_config(config, db), credential.clone())
    }))
}

/// The credential pgvane logs in to the server with for this client: from the configuration,
/// or else the SCRAM keys the client's proof yielded.
fn server_credential(config: &Config, db: &DatabaseConfig, user: &str, keys: Option<ScramKeys>) -> ServerCredential {
    pool::configured_credential(config, db, user)
        .or_else(|| keys.map(ServerCredential::ScramKeys))
        .unwrap_or(ServerCredential::None)
}

/// The pool a client of cluster database `database` starts on: its `default_route`'s node.
/// `None` when the database is not a cluster. Gives the cluster's monitor the client's
/// credential, in case it has no other way to log in (see [`Cluster::login`]).
pub(crate) async fn home_pool(
    shared: &Shared,
    database: &str,
    user: &str,
    keys: Option<&ScramKeys>,
) -> Option<Result<Arc<Pool>, ErrorResponse>> {
    let cluster = shared.clusters.get(database)?;
    let config = shared.config();
    if let Some(db) = config.databases.get(database) {
        let server_user = db.user.as_deref().unwrap_or(user);
        cluster.offer_login(server_user, &server_credential(&config, db, user, keys.cloned()));
    }
    // The client's pools on every node, so that reads moving and a switchover find them.
    for node in cluster.node_addrs() {
        pool_on_node(shared, database, user, keys, &node);
    }
    let want = cluster.default_route();
    Some(pool_for_want(shared, &cluster, user, keys, want).await)
}

/// After RELOAD: every (database, user) with a pool on a node of a cluster gets one on each
/// of the cluster's nodes (new ones included), logging in as its other pools do.
pub(crate) fn pools_on_every_node(shared: &Shared) {
    let config = shared.config();
    for cluster in shared.clusters.list() {
        let mut users = std::collections::BTreeMap::new();
        for pool in shared.pools.of(Some(&cluster.database)).into_iter().filter(|p| p.node.is_some()) {
            users.entry(pool.user.clone()).or_insert_with(|| pool.credential());
        }
        for (user, credential) in users {
            for node in cluster.node_addrs() {
                node_pool(shared, &config, &cluster.database, &user, &node, &credential);
            }
        }
    }
}

/// The pool of the node `cluster` picks for `want`, for the client `user`: waits while the
/// cluster has no writer (up to `switchover_timeout_ms`).
async fn pool_for_want(
    shared: &Shared,
    cluster: &Cluster,
    user: &str,
    keys: Option<&ScramKeys>,
    want: Want,
) -> Result<Arc<Pool>, ErrorResponse> {
    let node = cluster.node_for(want).await.map_err(|e| e.to_response())?;
    pool_on_node(shared, &cluster.database, user, keys, &node).ok_or_else(|| {
        ErrorResponse::error("3D000", format!("database \"{}\" was removed from the configuration", cluster.database))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Chain;

    fn shared() -> Shared {
        let text = r#"
            [pgvane]
            listen_port = 0
            auth_type = "trust"
            [databases.app]
            host = "127.0.0.1"
            port = 1
            [databases.reports]
            host = "127.0.0.1"
            port = 2
        "#;
        let config = Config::from_toml(std::path::Path::new("/nonexistent/pgvane.toml"), text).unwrap();
        Shared::new(config, Chain::default(), |_| {})
    }

    fn router(shared: &Shared) -> Router {
        let home = pool_for(shared, "app", "alice", None).unwrap();
        Router::new("alice", "app", None, home)
    }

    #[tokio::test]
    async fn statements_run_where_the_chain_routes_them_else_at_home() {
        let shared = shared();
        let mut router = router(&shared);
        let signals = Signals::default();
        let home = router.current().clone();

        let placed = router.place(&shared, &signals, None, false).await.unwrap();
        assert!(Arc::ptr_eq(&placed.pool, &home) && !placed.routed);
        // Primary and replica of a plain database are the database itself.
        let placed = router.place(&shared, &signals, Some(&Route::Replica), false).await.unwrap();
        assert!(Arc::ptr_eq(&placed.pool, &home) && placed.routed);

        let route = Route::Database("reports".into());
        let reports = router.place(&shared, &signals, Some(&route), false).await.unwrap();
        assert_eq!((reports.pool.database.as_str(), reports.pool.user.as_str()), ("reports", "alice"));
        assert!(reports.routed);
        let again = router.place(&shared, &signals, Some(&route), false).await.unwrap();
        assert!(Arc::ptr_eq(&again.pool, &reports.pool), "one pool per routed database");

        let gone = Route::Database("nowhere".into());
        let error = router.place(&shared, &signals, Some(&gone), false).await.unwrap_err();
        assert_eq!(error.code(), "3D000");
    }

    #[tokio::test]
    async fn the_client_moves_only_between_transactions() {
        let shared = shared();
        let mut router = router(&shared);
        let signals = Signals::default();
        let reports = router.place(&shared, &signals, Some(&Route::Database("reports".into())), false).await.unwrap();
        assert!(router.destination(&reports, true).is_none(), "a transaction keeps its server");
        let to = router.destination(&reports, false).expect("moves between transactions");
        assert!(router.move_to(to).is_none(), "nothing parked there");
        assert!(Arc::ptr_eq(router.current(), &reports.pool));
        assert!(router.destination(&router.here(), false).is_none(), "already there");
    }

    #[tokio::test]
    async fn named_statements_follow_their_parse() {
        let shared = shared();
        let mut router = router(&shared);
        let signals = Signals::default();
        let home = router.current().clone();
        let reports = router.place(&shared, &signals, Some(&Route::Database("reports".into())), false).await.unwrap();
        router.move_to(reports.pool.clone());
        router.note_statement("s1");
        router.note_statement("");
        router.move_to(home.clone());
        assert!(Arc::ptr_eq(&router.statement("s1").pool, &reports.pool), "s1 was prepared on reports");
        assert!(Arc::ptr_eq(&router.statement("s2").pool, &home), "unknown names: the client's database");
        assert!(Arc::ptr_eq(&router.statement("").pool, &home), "the unnamed statement: the current server");
        router.forget_statement("s1");
        assert!(Arc::ptr_eq(&router.statement("s1").pool, &home));
        router.move_to(reports.pool.clone());
        router.note_statement("s3");
        router.forget_statements();
        assert!(Arc::ptr_eq(&router.statement("s3").pool, &home));
    }
}

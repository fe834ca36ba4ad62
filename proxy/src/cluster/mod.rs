//! Clusters: a `[databases]` entry served by several servers (`hosts`, `topology_query`).
//!
//! Each cluster has a [`Topology`] (its nodes' roles, health and lag, and the writer) kept
//! current by a background monitor ([`monitor`]), and answers the request path's one
//! question: which node does a statement for the primary, or for a replica, go to. Server
//! connections to a node come from ordinary pools, one per (database, user, node).
//!
//! Reads are balanced round-robin over the replicas that are up and within the lag limits,
//! and fall back to the writer when there is none. Statements for the primary wait while no
//! writer is known (at startup, during a switchover, while two nodes answer `writer` to the
//! `role_query`) for at most `switchover_timeout_ms`.

mod fence;
mod monitor;
mod probe;
pub mod topology;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use thiserror::Error;
use tokio::sync::{watch, Notify};

use crate::config::{Config, DatabaseConfig, DefaultRoute, NodeAddr};
use crate::pool::{self, Pools, ServerCredential};
use crate::protocol::messages::ErrorResponse;

pub use probe::Login;
use topology::{LagLimits, Node, Observation, Outcome, Switchover, Topology, Writer};

/// Why a statement got no node.
#[derive(Debug, Error)]
pub enum ClusterError {
    /// No writer was known within `switchover_timeout_ms`.
    #[error("no primary server for database \"{database}\" within switchover_timeout_ms ({timeout_ms} ms){nodes}")]
    NoWriter {
        /// The database entry.
        database: String,
        /// The timeout in force.
        timeout_ms: u64,
        /// What the nodes that are down said, as `; <node>: <error>` each.
        nodes: String,
    },
}

impl ClusterError {
    /// The error a client gets: `57P03` (cannot connect now), the SQLSTATE PostgreSQL uses
    /// for a server that cannot take the session yet, so clients may retry.
    pub fn to_response(&self) -> ErrorResponse {
        ErrorResponse::error("57P03", self.to_string())
    }
}

/// What a statement asks a cluster for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Want {
    /// The writer.
    Primary,
    /// A replica that is up and not lagging, else the writer.
    Replica,
}

impl From<DefaultRoute> for Want {
    fn from(route: DefaultRoute) -> Self {
        match route {
            DefaultRoute::Primary => Want::Primary,
            DefaultRoute::Replica => Want::Replica,
        }
    }
}

/// What SHOW BACKENDS shows of a cluster.
#[derive(Debug, Clone)]
pub struct Report {
    /// The database entry.
    pub database: String,
    /// Its nodes.
    pub nodes: Vec<Node>,
    /// The writer state.
    pub writer: Writer,
    /// The last completed switchover.
    pub last_switchover: Option<Switchover>,
    /// The lag limits in force.
    pub limits: LagLimits,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// One cluster database.
#[derive(Debug)]
pub struct Cluster {
    /// The `[databases]` entry.
    pub database: String,
    topology: Mutex<Topology>,
    /// The writer, for statements waiting for one.
    writer: watch::Sender<Option<NodeAddr>>,
    config: Mutex<Arc<Config>>,
    /// The login a client's credentials gave, for a monitor with no configured one.
    offered: Mutex<Option<(String, ServerCredential)>>,
    /// Wakes the monitor before its next round is due.
    wake: Notify,
    /// RELOAD removed the cluster: the monitor ends.
    stopped: AtomicBool,
    next_replica: AtomicUsize,
    /// Switchovers seen since the cluster was configured (`/metrics`).
    pub switchovers: AtomicU64,
}

impl Cluster {
    fn new(database: &str, db: &DatabaseConfig, config: Arc<Config>) -> Self {
        Cluster {
            database: database.to_owned(),
            topology: Mutex::new(Topology::new(&db.nodes, Instant::now())),
            writer: watch::Sender::new(None),
            config: Mutex::new(config),
            offered: Mutex::new(None),
            wake: Notify::new(),
            stopped: AtomicBool::new(false),
            next_replica: AtomicUsize::new(0),
            switchovers: AtomicU64::new(0),
        }
    }

    fn config(&self) -> Arc<Config> {
        lock(&self.config).clone()
    }

    fn topology(&self) -> MutexGuard<'_, Topology> {
        lock(&self.topology)
    }

    /// The current writer, if known.
    pub fn writer(&self) -> Option<NodeAddr> {
        self.writer.borrow().clone()
    }

    /// Every node known (configured or discovered).
    pub fn node_addrs(&self) -> Vec<NodeAddr> {
        self.topology().nodes().iter().map(|n| n.addr.clone()).collect()
    }

    /// The lag limits in force.
    pub fn limits(&self) -> LagLimits {
        limits(&self.config())
    }

    /// The `default_route` of the entry in force.
    pub fn default_route(&self) -> Want {
        let config = self.config();
        config.databases.get(&self.database).map_or(Want::Primary, |db| db.default_route.into())
    }

    /// The node a statement wanting `want` goes to. Replicas are taken round-robin among
    /// those up and within the lag limits; with none, or for the primary, the writer, waited
    /// for up to `switchover_timeout_ms` when none is known.
    pub async fn node_for(&self, want: Want) -> Result<NodeAddr, ClusterError> {
        if want == Want::Replica {
            let replicas = self.topology().readable_replicas(&self.limits());
            if !replicas.is_empty() {
                let i = self.next_replica.fetch_add(1, Ordering::Relaxed) % replicas.len();
                if let Some(node) = replicas.into_iter().nth(i) {
                    return Ok(node);
                }
            }
        }
        self.wait_for_writer().await
    }

    /// The writer, waiting up to `switchover_timeout_ms` for one.
    pub async fn wait_for_writer(&self) -> Result<NodeAddr, ClusterError> {
        if let Some(writer) = self.writer() {
            return Ok(writer);
        }
        self.wake.notify_one();
        let timeout_ms = self.config().settings.switchover_timeout_ms;
        let mut rx = self.writer.subscribe();
        let waited = tokio::time::timeout(Duration::from_millis(timeout_ms), rx.wait_for(Option::is_some)).await;
        match waited {
            Ok(Ok(writer)) => writer.clone().ok_or_else(|| self.no_writer(timeout_ms)),
            _ => Err(self.no_writer(timeout_ms)),
        }
    }

    fn no_writer(&self, timeout_ms: u64) -> ClusterError {
        let mut nodes = String::new();
        for node in self.topology().nodes() {
            if let topology::Health::Down { error, .. } = &node.health {
                nodes.push_str(&format!("; {}: {error}", node.addr));
            }
        }
        ClusterError::NoWriter { database: self.database.clone(), timeout_ms, nodes }
    }

    /// A client logged in with `credential` for server user `user`: the monitor may log in
    /// the same way when the configuration gives it nothing (see [`Cluster::login`]).
    pub fn offer_login(&self, user: &str, credential: &ServerCredential) {
        if matches!(credential, ServerCredential::None) {
            return;
        }
        let mut offered = lock(&self.offered);
        let first = offered.is_none();
        if first || offered.as_ref().is_some_and(|(u, _)| u == user) {
            *offered = Some((user.to_owned(), credential.clone()));
        }
        drop(offered);
        if first {
            self.wake.notify_one();
        }
    }

    /// What the monitor logs in as: the entry's `user`/`password`; else `monitor_user` with
    /// its auth-file secret (plain or md5); else the credential of the first client that
    /// logged in to the database (SCRAM keys from its proof included). `None` until one exists.
    pub fn login(&self, config: &Config, db: &DatabaseConfig) -> Option<Login> {
        let dbname = config.server_dbname(&self.database, db).to_owned();
        let configured = db.user.clone().or_else(|| config.settings.monitor_user.clone()).and_then(|user| {
            pool::configured_credential(config, db, &user).map(|credential| Login {
                user,
                credential,
                dbname: dbname.clone(),
                tls: config.server_tls.clone(),
                cleartext: pool::Cleartext::from_setting(config.settings.server_allow_cleartext_password),
            })
        });
        configured.or_else(|| {
            lock(&self.offered).clone().map(|(user, credential)| Login {
                user,
                credential,
                dbname,
                tls: config.server_tls.clone(),
                cleartext: pool::Cleartext::from_setting(config.settings.server_allow_cleartext_password),
            })
        })
    }

    /// The request path could not reach `node` (connection refused or lost): it is marked
    /// down at once rather than at the next check. If it was the writer, statements for the
    /// primary wait from now on and the monitor polls for the new writer immediately.
    pub fn node_failed(&self, node: &NodeAddr, why: &str) {
        let delay = Duration::from_millis(self.config().settings.server_failed_delay_ms);
        let was_writer = self.topology().node_failed(node, why, Instant::now(), delay);
        if was_writer {
            tracing::warn!(database = %self.database, %node, why, "writer lost; looking for the new one");
            self.writer.send_replace(None);
        } else {
            tracing::info!(database = %self.database, %node, why, "node unreachable; marked down");
        }
        self.wake.notify_one();
    }

    /// A statement outside any transaction block failed on `node` with SQLSTATE 25006
    /// (read-only transaction). If `node` is the writer it may have been demoted: statements
    /// for the primary wait from now on, and the monitor checks every node at once.
    pub fn writer_refused_write(&self, node: &NodeAddr) {
        if self.topology().writer_refused(node, Instant::now()) {
            tracing::warn!(database = %self.database, %node, "the writer refused a write (25006); looking for the writer");
            self.writer.send_replace(None);
            self.wake.notify_one();
        }
    }

    /// Takes in a round of checks (see [`Topology::observe`]) and publishes the writer.
    fn observe(&self, results: &[(NodeAddr, Observation)], failed_delay: Duration) -> Outcome {
        let mut topology = self.topology();
        let before: Vec<(NodeAddr, &'static str, &'static str)> =
            topology.nodes().iter().map(|n| (n.addr.clone(), n.role.as_str(), n.health.as_str())).collect();
        let outcome = topology.observe(results, Instant::now(), SystemTime::now(), failed_delay);
        if outcome.switchover.is_some() {
            self.switchovers.fetch_add(1, Ordering::Relaxed);
        }
        for node in topology.nodes() {
            let now = (node.role.as_str(), node.health.as_str());
            let was = before.iter().find(|(a, ..)| a == &node.addr).map(|(_, r, h)| (*r, *h));
            if was != Some(now) {
                match &node.health {
                    topology::Health::Down { error, .. } => {
                        tracing::warn!(database = %self.database, node = %node.addr, %error, "node down")
                    }
                    _ => {
                        tracing::info!(database = %self.database, node = %node.addr, role = now.0, health = now.1, "node checked")
                    }
                }
            }
        }
        let writer = topology.writer().cloned();
        drop(topology);
        self.writer.send_if_modified(|w| {
            let changed = *w != writer;
            w.clone_from(&writer);
            changed
        });
        if let Some(node) = &outcome.stepped_down {
            tracing::warn!(database = %self.database, %node, "the writer stepped down (or shares the claim); statements for the primary wait");
        }
        outcome
    }

    /// What SHOW BACKENDS shows.
    pub fn report(&self) -> Report {
        let limits = self.limits();
        let topology = self.topology();
        Report {
            database: self.database.clone(),
            nodes: topology.nodes().to_vec(),
            writer: topology.writer_state().clone(),
            last_switchover: topology.last_switchover().cloned(),
            limits,
        }
    }

    fn stop(&self) {
        self.stopped.store(true, Ordering::SeqCst);
        self.wake.notify_one();
    }

    fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::SeqCst)
    }
}

fn limits(config: &Config) -> LagLimits {
    let s = &config.settings;
    LagLimits {
        time: Duration::from_millis(s.max_replica_lag_ms),
        bytes: (s.max_replica_lag_bytes > 0).then_some(s.max_replica_lag_bytes),
    }
}

/// Every cluster, by database name.
#[derive(Debug, Default)]
pub struct Clusters {
    clusters: Mutex<BTreeMap<String, Arc<Cluster>>>,
}

impl Clusters {
    /// The cluster of `database`, if it is one.
    pub fn get(&self, database: &str) -> Option<Arc<Cluster>> {
        lock(&self.clusters).get(database).cloned()
    }

    /// Every cluster, by database name.
    pub fn list(&self) -> Vec<Arc<Cluster>> {
        lock(&self.clusters).values().cloned().collect()
    }

    /// Brings the clusters in line with `config` (at startup and after RELOAD): a monitor
    /// starts for each new cluster database, the others follow the new entry (nodes added
    /// or dropped), and those no longer clusters stop. `pools` are pgvane's server
    /// connections (see [`fence`]). Must run inside the tokio runtime.
    pub fn apply_config(&self, config: &Arc<Config>, pools: &Arc<Pools>) {
        let mut clusters = lock(&self.clusters);
        clusters.retain(|name, cluster| {
            let keep = config.databases.get(name).is_some_and(DatabaseConfig::is_cluster);
            if !keep {
                cluster.stop();
            }
            keep
        });
        for (name, db) in config.databases.iter().filter(|(_, db)| db.is_cluster()) {
            match clusters.get(name) {
                Some(cluster) => {
                    *lock(&cluster.config) = config.clone();
                    if cluster.topology().set_configured(&db.nodes, Instant::now()) {
                        cluster.writer.send_replace(None);
                    }
                    cluster.wake.notify_one();
                }
                None => {
                    let cluster = Arc::new(Cluster::new(name, db, config.clone()));
                    tokio::spawn(monitor::run(cluster.clone(), pools.clone()));
                    clusters.insert(name.clone(), cluster);
                }
            }
        }
    }
}

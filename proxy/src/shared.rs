//! The state every session shares: the configuration and plugin chain in force, the pools,
//! the clusters and the connected clients; and the reload that replaces the configuration
//! (admin RELOAD, SIGHUP, a watched plugin file changing).
//!
//! It sits below the sessions, the admin console and the listener, and imports none of them: what a reload must also do above it (the pools on every cluster node) is handed in
//! as a hook when the state is made.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, RwLock, Weak};
use std::time::{Duration, SystemTime};

use thiserror::Error;
use tokio::sync::watch;

use crate::budget::MessageBudget;
use crate::clients::ClientRegistry;
use crate::cluster::Clusters;
use crate::config::{Config, ConfigError, Settings, RESTART_KEYS};
use crate::lifecycle::{self, Failures, LoadError};
use crate::metrics::ProcessMetrics;
use crate::oci;
use crate::policy::Chain;
use crate::pool::{Averages, Pools};

/// How often the watcher looks at the watched files.
const WATCH_POLL: Duration = Duration::from_millis(250);

/// What every session shares.
#[derive(Debug)]
pub struct Shared {
    config: RwLock<Arc<Config>>,
    policy: RwLock<Arc<Chain>>,
    /// Server connection pools.
    pub pools: Arc<Pools>,
    /// Connected clients: cancel keys, states, signals.
    pub clients: Arc<ClientRegistry>,
    /// What pgvane may hold of large client messages (`client_message_budget_bytes`, read at
    /// startup).
    pub message_budget: MessageBudget,
    /// Cluster databases: topology, health, the writer (the listener starts their monitors).
    pub clusters: Arc<Clusters>,
    /// Failed plugin loads since each plugin last loaded (SHOW PLUGINS).
    pub plugin_failures: Failures,
    /// Process counters and readiness (`/metrics`, `/ready`).
    pub metrics: ProcessMetrics,
    /// Per-database averages over the last stats period (SHOW STATS_AVERAGES).
    pub averages: Averages,
    /// Run at the end of every reload that succeeded, the new configuration in force.
    after_reload: fn(&Shared),
    /// Held while a reload runs, so two reloads cannot interleave.
    reloading: tokio::sync::Mutex<()>,
    /// The shutdown asked for (by a signal or the admin console), if any.
    shutdown: watch::Sender<Option<ShutdownMode>>,
}

/// How pgvane shuts down: PgBouncer's SHUTDOWN variants (docs/deploy.md maps them to signals).
/// Ordered by urgency: a request never moves back to a gentler mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ShutdownMode {
    /// `SHUTDOWN WAIT_FOR_CLIENTS`, SIGTERM: stop accepting; clients in transaction and
    /// statement modes are disconnected between transactions, clients in session mode end
    /// their sessions; whoever is left after `shutdown_timeout_ms` is disconnected.
    WaitForClients,
    /// `SHUTDOWN WAIT_FOR_SERVERS`, SIGINT: as `WaitForClients`, but clients in session mode
    /// too are disconnected at their next point between transactions (their server
    /// connection is then free).
    WaitForServers,
    /// `SHUTDOWN`, SIGQUIT, or a second signal during a drain: every client is disconnected
    /// now.
    Immediate,
}

impl ShutdownMode {
    /// The name the logs and the console use.
    pub fn as_str(self) -> &'static str {
        match self {
            ShutdownMode::WaitForClients => "WAIT_FOR_CLIENTS",
            ShutdownMode::WaitForServers => "WAIT_FOR_SERVERS",
            ShutdownMode::Immediate => "immediate",
        }
    }
}

/// Why [`Shared::reload`] changed nothing.
#[derive(Debug, Error)]
pub enum ReloadError {
    /// The configuration file does not load.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The thread loading the configuration failed.
    #[error("loading the configuration failed: {0}")]
    LoadTask(#[from] tokio::task::JoinError),
    /// A `[[plugins]]` entry failed to load (unreadable, its registry unreachable, a digest
    /// mismatch, not a pgvane:policy component, or its `init` refused its config).
    #[error(transparent)]
    Plugins(#[from] LoadError),
}

/// What a successful [`Shared::reload`] changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReloadOutcome {
    /// Databases newly configured.
    pub added: BTreeSet<String>,
    /// Databases no longer configured: their clients get an error at their next
    /// transaction, their server connections close as they come free.
    pub removed: BTreeSet<String>,
    /// Databases whose entry changed.
    pub changed: BTreeSet<String>,
    /// Databases whose server target (host, port, dbname or user) changed: their server
    /// connections are being replaced as they come free.
    pub reconnecting: BTreeSet<String>,
    /// `[pgvane]` keys that changed but only take effect at the next start.
    pub restart_needed: Vec<&'static str>,
}

/// The keys of [`RESTART_KEYS`] whose values differ between `old` and `new`.
fn restart_keys_changed(old: &Settings, new: &Settings) -> Vec<&'static str> {
    let (Ok(old), Ok(new)) = (toml::Table::try_from(old), toml::Table::try_from(new)) else {
        return Vec::new();
    };
    RESTART_KEYS.iter().copied().filter(|key| old.get(*key) != new.get(*key)).collect()
}

impl Shared {
    /// Shared state for `config`. `after_reload` runs at the end of every reload that
    /// succeeded, once the new configuration is in force.
    pub fn new(config: Config, policy: Chain, after_reload: fn(&Shared)) -> Self {
        let metrics = ProcessMetrics::default();
        for plugin in policy.plugins() {
            metrics.plugin_loaded(&plugin.settings.name, &plugin.origin.digest, true);
        }
        let clients = Arc::new(ClientRegistry::new(config.settings.peer_id));
        Shared {
            message_budget: MessageBudget::new(config.settings.client_message_budget_bytes),
            config: RwLock::new(Arc::new(config)),
            policy: RwLock::new(Arc::new(policy)),
            pools: Arc::new(Pools::default()),
            clients,
            clusters: Arc::default(),
            plugin_failures: Failures::default(),
            metrics,
            averages: Averages::default(),
            after_reload,
            reloading: tokio::sync::Mutex::new(()),
            shutdown: watch::Sender::new(None),
        }
    }

    /// The plugin chain in force. A statement is decided by the chain it finds here.
    pub fn policy(&self) -> Arc<Chain> {
        self.policy.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The configuration in force. A session takes it once and keeps it.
    pub fn config(&self) -> Arc<Config> {
        self.config.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Puts a new configuration in force for sessions that start from now on.
    pub fn set_config(&self, config: Arc<Config>) {
        *self.config.write().unwrap_or_else(|p| p.into_inner()) = config;
    }

    /// Re-reads the configuration file (admin RELOAD, SIGHUP). A file that does not load
    /// changes nothing: the error is returned and the configuration in force stays.
    ///
    /// Otherwise the new configuration is in force for sessions that start from now on, and
    /// the pools follow it at once (see [`Pools::apply_config`]): sessions already running
    /// keep their pool and get the new target and limits at their next checkout.
    pub async fn reload(&self) -> Result<ReloadOutcome, ReloadError> {
        let _one_at_a_time = self.reloading.lock().await;
        let result = self.reload_now().await;
        self.metrics.reloaded(result.is_ok());
        result
    }

    async fn reload_now(&self) -> Result<ReloadOutcome, ReloadError> {
        let old = self.config();
        // Loading derives the SCRAM verifiers of the auth file's plain passwords (PBKDF2):
        // on a blocking thread, not on a worker that serves clients.
        let path = old.path.clone();
        let new = Arc::new(tokio::task::spawn_blocking(move || Config::load(&path)).await??);
        // Plugins are fetched, compiled and initialised (on a thread that serves no client)
        // before anything switches: a plugin that fails to load leaves the whole old
        // configuration in force, and is recorded for SHOW PLUGINS. Statements decided from now
        // on see the new chain; those already in a plugin call finish on the old one, which
        // their `Arc` keeps alive.
        let policy = match lifecycle::load_off_the_serving_threads(new.clone()).await {
            Ok(chain) => Arc::new(chain),
            Err(e) => {
                tracing::error!(error = %e, "plugins not reloaded; the plugins in force stay");
                self.plugin_failures.record(&new, &e);
                if let Some(plugin) = e.plugin() {
                    self.metrics.plugin_loaded(plugin, e.digest().unwrap_or(""), false);
                }
                return Err(e.into());
            }
        };
        self.plugin_failures.clear();
        for plugin in policy.plugins() {
            self.metrics.plugin_loaded(&plugin.settings.name, &plugin.origin.digest, true);
        }
        let mut outcome = ReloadOutcome {
            restart_needed: restart_keys_changed(&old.settings, &new.settings),
            ..ReloadOutcome::default()
        };
        for (name, db) in &new.databases {
            match old.databases.get(name) {
                None => outcome.added.insert(name.clone()),
                Some(old_db) if old_db != db => outcome.changed.insert(name.clone()),
                Some(_) => false,
            };
        }
        outcome.removed = old.databases.keys().filter(|name| !new.databases.contains_key(*name)).cloned().collect();
        self.set_config(new.clone());
        *self.policy.write().unwrap_or_else(|p| p.into_inner()) = policy;
        outcome.reconnecting = self.pools.apply_config(&new).moved;
        self.clusters.apply_config(&new, &self.pools);
        (self.after_reload)(self);
        Ok(outcome)
    }

    /// Asks the process to shut down (admin SHUTDOWN, a signal); `shutdown::serve` carries it
    /// out. A request gentler than one already made changes nothing.
    pub fn request_shutdown(&self, mode: ShutdownMode) {
        self.shutdown.send_if_modified(|current| match *current {
            Some(earlier) if earlier >= mode => false,
            _ => {
                *current = Some(mode);
                true
            }
        });
    }

    /// The shutdown asked for so far, if any.
    pub fn shutdown_mode(&self) -> Option<ShutdownMode> {
        *self.shutdown.borrow()
    }

    /// Resolves with the mode once a shutdown more urgent than `than` is asked for.
    pub async fn shutdown_requested(&self, than: Option<ShutdownMode>) -> ShutdownMode {
        let mut requests = self.shutdown.subscribe();
        loop {
            if let Some(mode) = *requests.borrow_and_update() {
                if Some(mode) > than {
                    return mode;
                }
            }
            // The sender lives as long as `self`: this only ends by a request.
            if requests.changed().await.is_err() {
                return std::future::pending().await;
            }
        }
    }

    /// Starts a graceful drain: `/ready` answers 503 from now on, and every client is told
    /// to leave at its next point between transactions (see [`ClientRegistry::drain`]). The
    /// listener stops accepting once the mode is set (see `listener`).
    pub fn start_draining(&self) {
        self.metrics.start_draining();
        self.clients.drain();
    }
}

/// Every `stats_period_ms`: rolls the per-database averages (SHOW STATS_AVERAGES) and, with
/// `log_stats`, logs one line per database with traffic, as PgBouncer does. Ends with the
/// process.
pub async fn stats_period(shared: Weak<Shared>) {
    let mut last = tokio::time::Instant::now();
    loop {
        let period = match shared.upgrade() {
            Some(shared) => shared.config().settings.stats_period(),
            None => return,
        };
        tokio::time::sleep_until(last + period).await;
        let Some(shared) = shared.upgrade() else { return };
        let now = tokio::time::Instant::now();
        let averages = shared.averages.roll(shared.pools.totals_by_database(), now - last);
        last = now;
        if !shared.config().settings.log_stats {
            continue;
        }
        for (database, a) in averages.iter().filter(|(_, a)| a.query_count > 0 || a.server_assignment_count > 0) {
            tracing::info!(
                database,
                xacts_per_s = a.xact_count,
                queries_per_s = a.query_count,
                in_bytes_per_s = a.bytes_received,
                out_bytes_per_s = a.bytes_sent,
                xact_us = a.xact_time,
                query_us = a.query_time,
                wait_us = a.wait_time,
                "stats"
            );
        }
    }
}

/// What the watcher compares: a file's size and modification time (None: missing).
type Fingerprint = Option<(u64, SystemTime)>;

fn fingerprint(path: &std::path::Path) -> Fingerprint {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.len(), meta.modified().ok()?))
}

/// True when the file at `path` no longer holds the component the plugin loaded from it
/// (compared by digest).
fn differs_from_loaded(shared: &Shared, path: &std::path::Path) -> bool {
    let source = path.display().to_string();
    let policy = shared.policy();
    let Some(plugin) = policy.plugins().iter().find(|p| p.origin.source == source) else { return false };
    match std::fs::read(path) {
        Ok(wasm) => oci::sha256_digest(&wasm) != plugin.origin.digest,
        Err(_) => true,
    }
}

/// The files of the `watch = true` plugins in force.
fn watched(config: &Config) -> Vec<PathBuf> {
    config.plugins.iter().filter(|p| p.watch).filter_map(|p| p.path.as_ref()).map(|p| config.dir().join(p)).collect()
}

/// Reloads (as RELOAD does) when a watched plugin file changes, once it has stopped changing
/// for one poll (a file being written is not loaded half-written; if it is anyway, the load
/// fails, the set in force stays, and the next change tries again). Ends with the process.
pub async fn watch_plugins(shared: Weak<Shared>) {
    let mut seen: BTreeMap<PathBuf, Fingerprint> = BTreeMap::new();
    // Files that changed at the last poll: reload once they hold still.
    let mut settling = false;
    loop {
        tokio::time::sleep(WATCH_POLL).await;
        let Some(shared) = shared.upgrade() else { return };
        let paths = watched(&shared.config());
        let mut changed = false;
        let mut now: BTreeMap<PathBuf, Fingerprint> = BTreeMap::new();
        for path in paths {
            let print = fingerprint(&path);
            match seen.get(&path) {
                Some(old) => changed |= *old != print,
                // First seen (new in the config): it may have changed since it was loaded.
                None => changed |= differs_from_loaded(&shared, &path),
            }
            now.insert(path, print);
        }
        seen = now;
        if changed {
            settling = true;
            continue;
        }
        if !settling {
            continue;
        }
        settling = false;
        tracing::info!("a watched plugin file changed: reloading");
        match shared.reload().await {
            Ok(outcome) => tracing::info!(?outcome, "watched plugin file changed: configuration reloaded"),
            Err(e) => {
                tracing::error!(error = %e, "watched plugin file changed: not reloaded; the plugins in force stay")
            }
        }
    }
}

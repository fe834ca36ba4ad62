//! The listening socket and the state every session shares.

use std::collections::BTreeSet;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::Notify;

use crate::config::{Config, ConfigError, Settings, RESTART_KEYS};
use crate::policy::Chain;
use crate::pool::Pools;
use crate::session::{self, registry::ClientRegistry};

/// What every session shares.
#[derive(Debug)]
pub struct Shared {
    config: RwLock<Arc<Config>>,
    policy: RwLock<Arc<Chain>>,
    /// Server connection pools.
    pub pools: Arc<Pools>,
    /// Connected clients: cancel keys, states, signals.
    pub clients: Arc<ClientRegistry>,
    /// Cluster databases: topology, health, the writer (monitors start in [`Listener::run`]).
    pub clusters: Arc<crate::cluster::Clusters>,
    /// Failed plugin loads since each plugin last loaded (SHOW PLUGINS).
    pub plugin_failures: crate::lifecycle::Failures,
    /// Held while a reload runs, so two reloads cannot interleave.
    reloading: tokio::sync::Mutex<()>,
    shutdown: Notify,
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
    /// Shared state for `config`.
    pub fn new(config: Config, policy: Chain) -> Self {
        Shared {
            config: RwLock::new(Arc::new(config)),
            policy: RwLock::new(Arc::new(policy)),
            pools: Arc::new(Pools::default()),
            clients: Arc::new(ClientRegistry::default()),
            clusters: Arc::default(),
            plugin_failures: crate::lifecycle::Failures::default(),
            reloading: tokio::sync::Mutex::new(()),
            shutdown: Notify::new(),
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
    pub async fn reload(&self) -> Result<ReloadOutcome, ConfigError> {
        let _one_at_a_time = self.reloading.lock().await;
        let old = self.config();
        let new = Arc::new(Config::load(&old.path)?);
        // Plugins are fetched, compiled and initialised (on a thread that serves no client)
        // before anything switches: a plugin that fails to load leaves the whole old
        // configuration in force, and is recorded for SHOW PLUGINS. Statements decided from now
        // on see the new chain; those already in a plugin call finish on the old one, which
        // their `Arc` keeps alive.
        let policy = match crate::lifecycle::load_off_the_serving_threads(new.clone()).await {
            Ok(chain) => Arc::new(chain),
            Err(e) => {
                tracing::error!(error = %e, "plugins not reloaded; the plugins in force stay");
                self.plugin_failures.record(&new, &e);
                return Err(e.into());
            }
        };
        self.plugin_failures.clear();
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
        crate::session::router::pools_on_every_node(self);
        Ok(outcome)
    }

    /// Asks the process to shut down (admin SHUTDOWN); `main` waits for it.
    pub fn request_shutdown(&self) {
        self.shutdown.notify_one();
    }

    /// Resolves once [`Shared::request_shutdown`] has been called.
    pub async fn shutdown_requested(&self) {
        self.shutdown.notified().await;
    }
}

/// A bound pgvane, ready to serve.
#[derive(Debug)]
pub struct Listener {
    listener: TcpListener,
    shared: Arc<Shared>,
}

impl Listener {
    /// Binds `listen_addr:listen_port` (port 0 picks a free one).
    pub async fn bind(config: Config, policy: Chain) -> io::Result<Listener> {
        let addr = (config.settings.listen_addr.as_str(), config.settings.listen_port);
        let listener = TcpListener::bind(addr).await?;
        Ok(Listener { listener, shared: Arc::new(Shared::new(config, policy)) })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The shared state, e.g. to reload the configuration.
    pub fn shared(&self) -> Arc<Shared> {
        self.shared.clone()
    }

    /// Accepts clients forever, each in its own task.
    pub async fn run(self) {
        tokio::spawn(self.shared.pools.clone().sweep_forever());
        self.shared.clusters.apply_config(&self.shared.config(), &self.shared.pools);
        tokio::spawn(crate::lifecycle::watch(Arc::downgrade(&self.shared)));
        loop {
            match self.listener.accept().await {
                Ok((stream, peer)) => {
                    tokio::spawn(session::run(stream, peer, self.shared.clone()));
                }
                Err(e) => {
                    // Typically out of file descriptors: back off briefly, keep serving the others.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
}

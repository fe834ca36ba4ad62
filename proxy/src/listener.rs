//! The listening socket and the state every session shares.

use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::net::TcpListener;

use crate::config::Config;
use crate::pool::Pools;
use crate::session::{self, registry::ClientRegistry};

/// What every session shares.
#[derive(Debug)]
pub struct Shared {
    config: RwLock<Arc<Config>>,
    /// Server connection pools.
    pub pools: Arc<Pools>,
    /// Connected clients: cancel keys, states, signals.
    pub clients: Arc<ClientRegistry>,
}

impl Shared {
    /// Shared state for `config`.
    pub fn new(config: Config) -> Self {
        Shared {
            config: RwLock::new(Arc::new(config)),
            pools: Arc::new(Pools::default()),
            clients: Arc::new(ClientRegistry::default()),
        }
    }

    /// The configuration in force. A session takes it once and keeps it.
    pub fn config(&self) -> Arc<Config> {
        self.config.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Puts a new configuration in force for sessions that start from now on.
    pub fn set_config(&self, config: Arc<Config>) {
        *self.config.write().unwrap_or_else(|p| p.into_inner()) = config;
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
    pub async fn bind(config: Config) -> io::Result<Listener> {
        let addr = (config.settings.listen_addr.as_str(), config.settings.listen_port);
        let listener = TcpListener::bind(addr).await?;
        Ok(Listener { listener, shared: Arc::new(Shared::new(config)) })
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

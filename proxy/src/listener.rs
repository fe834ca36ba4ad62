//! The listening socket and the state every session shares.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

use crate::config::Config;
use crate::pool::Pools;
use crate::session::{self, cancel::CancelRegistry};

/// What every session shares.
#[derive(Debug)]
pub struct Shared {
    /// The configuration.
    pub config: Arc<Config>,
    /// Server connection pools.
    pub pools: Arc<Pools>,
    /// Cancel keys of connected clients.
    pub cancels: Arc<CancelRegistry>,
    clients: Arc<AtomicUsize>,
}

impl Shared {
    /// Counts a new client against `max_client_conn`; `None` when the limit is reached.
    pub fn try_admit(&self) -> Option<ClientSlot> {
        let max = self.config.settings.max_client_conn;
        self.clients
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < max).then_some(n + 1))
            .ok()
            .map(|_| ClientSlot {
                clients: self.clients.clone(),
            })
    }

    /// Number of clients logged in or logging in.
    pub fn client_count(&self) -> usize {
        self.clients.load(Ordering::Acquire)
    }
}

/// One client counted against `max_client_conn`; released on drop.
#[derive(Debug)]
pub struct ClientSlot {
    clients: Arc<AtomicUsize>,
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        self.clients.fetch_sub(1, Ordering::AcqRel);
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
        let shared = Arc::new(Shared {
            config: Arc::new(config),
            pools: Arc::new(Pools::default()),
            cancels: Arc::new(CancelRegistry::default()),
            clients: Arc::new(AtomicUsize::new(0)),
        });
        Ok(Listener { listener, shared })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
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

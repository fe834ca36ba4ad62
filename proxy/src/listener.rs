//! The listening socket: accepts clients and hands each to a session, with the admin
//! console for the clients of the admin database.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

use crate::admin;
use crate::config::Config;
use crate::policy::Chain;
use crate::session;
use crate::shared::{self, Shared};

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
        // After a reload, cluster clients' pools on every node (new nodes included).
        let shared = Shared::new(config, policy, session::router::pools_on_every_node);
        Ok(Listener { listener, shared: Arc::new(shared) })
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
        tokio::spawn(shared::watch_plugins(Arc::downgrade(&self.shared)));
        loop {
            match self.listener.accept().await {
                Ok((stream, peer)) => {
                    tokio::spawn(session::run(stream, peer, self.shared.clone(), admin::Console));
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

//! The listening socket: accepts clients and hands each to a session, with the admin
//! console for the clients of the admin database, until a shutdown is asked for. With
//! `so_reuseport`, several pgvane processes can listen on one port (a rolling restart).

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpSocket, TcpStream};

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
    /// Binds `listen_addr:listen_port` (port 0 picks a free one), with SO_REUSEPORT when
    /// `so_reuseport` is set.
    pub async fn bind(config: Config, policy: Chain) -> io::Result<Listener> {
        let listener = listen(&config)?;
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

    /// Accepts clients, each in its own task, until a shutdown is asked for; then takes the
    /// connections already queued on the socket (they were made before the shutdown, and would
    /// otherwise be reset) and closes it.
    pub async fn run(self) {
        tokio::spawn(self.shared.pools.clone().sweep_forever());
        self.shared.clusters.apply_config(&self.shared.config(), &self.shared.pools);
        tokio::spawn(shared::watch_plugins(Arc::downgrade(&self.shared)));
        let shutdown = self.shared.shutdown_requested(None);
        tokio::pin!(shutdown);
        loop {
            let accepted = tokio::select! {
                biased;
                _ = &mut shutdown => break,
                accepted = self.listener.accept() => accepted,
            };
            match accepted {
                Ok((stream, peer)) => self.serve(stream, peer),
                Err(e) => {
                    // Typically out of file descriptors: back off briefly, keep serving the others.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
        let queued = std::future::poll_fn(|cx| {
            let mut queued = Vec::new();
            while let std::task::Poll::Ready(Ok(accepted)) = self.listener.poll_accept(cx) {
                queued.push(accepted);
            }
            std::task::Poll::Ready(queued)
        })
        .await;
        let n = queued.len();
        for (stream, peer) in queued {
            self.serve(stream, peer);
        }
        tracing::info!(queued = n, "stopped accepting: the listening socket is closed");
    }

    fn serve(&self, stream: TcpStream, peer: SocketAddr) {
        tokio::spawn(session::run(stream, peer, self.shared.clone(), admin::Console));
    }
}

/// The listening socket of `listen_addr:listen_port`.
fn listen(config: &Config) -> io::Result<TcpListener> {
    let settings = &config.settings;
    let ip: std::net::IpAddr = settings
        .listen_addr
        .parse()
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "listen_addr is not an IP address"))?;
    let addr = SocketAddr::new(ip, settings.listen_port);
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    // As tokio's TcpListener::bind: a restart can bind while old connections linger.
    socket.set_reuseaddr(true)?;
    if settings.so_reuseport {
        socket.set_reuseport(true)?;
    }
    socket.bind(addr)?;
    socket.listen(1024)
}

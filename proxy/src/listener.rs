//! The listening sockets: accept clients and hand each to a session, with the admin console
//! for the clients of the admin database, until a shutdown is asked for. TCP always, and the
//! unix-domain socket of `unix_socket_dir` when set: its clients take the same path. With
//! `so_reuseport`, several pgvane processes can listen on one port (a rolling restart).

use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpSocket, UnixStream};

use crate::admin;
use crate::config::{parse_socket_mode, Config};
use crate::endpoint::ClientAddr;
use crate::policy::Chain;
use crate::session;
use crate::shared::{self, Shared};
use crate::tls::Stream;
use crate::unix_socket::UnixSocket;

/// A bound pgvane, ready to serve.
#[derive(Debug)]
pub struct Listener {
    listener: TcpListener,
    /// The unix-domain socket, with the port its name carries.
    unix: Option<(UnixSocket, u16)>,
    shared: Arc<Shared>,
}

impl Listener {
    /// Binds `listen_addr:listen_port` (port 0 picks a free one), with SO_REUSEPORT when
    /// `so_reuseport` is set, and `<unix_socket_dir>/.s.PGSQL.<port>` (the port bound) when
    /// `unix_socket_dir` is set.
    pub async fn bind(config: Config, policy: Chain) -> io::Result<Listener> {
        let listener = listen(&config)?;
        let unix = match config.settings.unix_socket_dir.as_str() {
            "" => None,
            dir => {
                let settings = &config.settings;
                let port = listener.local_addr()?.port();
                let mode = parse_socket_mode(&settings.unix_socket_mode)
                    .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "unix_socket_mode is not octal"))?;
                Some((UnixSocket::bind(Path::new(dir), port, mode, settings.so_reuseport).await?, port))
            }
        };
        // After a reload, cluster clients' pools on every node (new nodes included).
        let shared = Shared::new(config, policy, session::router::pools_on_every_node);
        Ok(Listener { listener, unix, shared: Arc::new(shared) })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The unix-domain socket's file, when there is one.
    pub fn unix_socket_path(&self) -> Option<&Path> {
        self.unix.as_ref().map(|(socket, _)| socket.path())
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
                accepted = self.listener.accept() => accepted.map(|(tcp, peer)| (Stream::Plain(tcp), ClientAddr::Tcp(peer))),
                accepted = accept_unix(self.unix.as_ref()) => accepted,
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
            while let std::task::Poll::Ready(Ok((tcp, peer))) = self.listener.poll_accept(cx) {
                queued.push((Stream::Plain(tcp), ClientAddr::Tcp(peer)));
            }
            if let Some((socket, listen_port)) = &self.unix {
                while let std::task::Poll::Ready(Ok((unix, _))) = socket.listener().poll_accept(cx) {
                    queued.push((Stream::Unix(unix), ClientAddr::Unix { listen_port: *listen_port }));
                }
            }
            std::task::Poll::Ready(queued)
        })
        .await;
        let n = queued.len();
        for (stream, peer) in queued {
            self.serve(stream, peer);
        }
        // Dropping the unix-domain socket removes its file.
        tracing::info!(queued = n, "stopped accepting: the listening sockets are closed");
    }

    fn serve(&self, stream: Stream, peer: ClientAddr) {
        tokio::spawn(session::run(stream, peer, self.shared.clone(), admin::Console));
    }
}

/// The next client on the unix-domain socket; never, without one.
async fn accept_unix(unix: Option<&(UnixSocket, u16)>) -> io::Result<(Stream, ClientAddr)> {
    let Some((socket, listen_port)) = unix else {
        return std::future::pending().await;
    };
    let (stream, _): (UnixStream, _) = socket.listener().accept().await?;
    Ok((Stream::Unix(stream), ClientAddr::Unix { listen_port: *listen_port }))
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

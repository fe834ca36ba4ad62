//! Where a PostgreSQL-protocol server listens, and opening a connection to it: a host and a
//! port over TCP, or, when the host is a directory (it starts with `/`, as in libpq and
//! PgBouncer), the unix-domain socket `<dir>/.s.PGSQL.<port>` in it. Servers, the cluster
//! monitor, cancel requests and peers all connect through [`connect`]; pgvane's own socket
//! (`unix_socket_dir`) is named by [`socket_path`] too. Also the two kinds of client address.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::net::{TcpStream, UnixStream};

use crate::tls::Stream;

/// True when `host` names a socket directory rather than a host: it starts with `/`.
pub fn is_socket_dir(host: &str) -> bool {
    host.starts_with('/')
}

/// The socket file of `port` in the directory `dir`: `<dir>/.s.PGSQL.<port>`.
pub fn socket_path(dir: &Path, port: u16) -> PathBuf {
    dir.join(format!(".s.PGSQL.{port}"))
}

/// The address a connection to a server (or peer) reached: kept for its cancel requests and
/// for SHOW SERVERS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerAddr {
    /// An IP address and port.
    Tcp(SocketAddr),
    /// A unix-domain socket: its file, and the port its name carries.
    Unix {
        /// `<dir>/.s.PGSQL.<port>`.
        path: Arc<Path>,
        /// The port.
        port: u16,
    },
}

impl ServerAddr {
    /// The `addr` column of SHOW SERVERS: the IP address, or `unix` (as PgBouncer shows it).
    pub fn addr_text(&self) -> String {
        match self {
            ServerAddr::Tcp(addr) => addr.ip().to_string(),
            ServerAddr::Unix { .. } => "unix".to_owned(),
        }
    }

    /// The port.
    pub fn port(&self) -> u16 {
        match self {
            ServerAddr::Tcp(addr) => addr.port(),
            ServerAddr::Unix { port, .. } => *port,
        }
    }

    /// Opens a new connection to the same address (for a cancel request).
    pub async fn connect(&self) -> io::Result<Stream> {
        match self {
            ServerAddr::Tcp(addr) => tcp(TcpStream::connect(addr).await?),
            ServerAddr::Unix { path, .. } => Ok(Stream::Unix(UnixStream::connect(path).await?)),
        }
    }
}

impl fmt::Display for ServerAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServerAddr::Tcp(addr) => addr.fmt(f),
            ServerAddr::Unix { path, .. } => path.display().fmt(f),
        }
    }
}

/// Connects to `host`:`port`: over TCP with `TCP_NODELAY`, or to the socket `port` in the
/// directory `host` when it starts with `/`. Returns the plain stream and the address reached.
pub async fn connect(host: &str, port: u16) -> io::Result<(Stream, ServerAddr)> {
    if is_socket_dir(host) {
        let path: Arc<Path> = socket_path(Path::new(host), port).into();
        let stream = UnixStream::connect(&path).await.map_err(|e| in_context(e, &path))?;
        return Ok((Stream::Unix(stream), ServerAddr::Unix { path, port }));
    }
    let stream = TcpStream::connect((host, port)).await?;
    let addr = stream.peer_addr()?;
    Ok((tcp(stream)?, ServerAddr::Tcp(addr)))
}

fn tcp(stream: TcpStream) -> io::Result<Stream> {
    stream.set_nodelay(true)?;
    Ok(Stream::Plain(stream))
}

/// The socket's path in the error: "No such file or directory" alone does not say which.
fn in_context(error: io::Error, path: &Path) -> io::Error {
    io::Error::new(error.kind(), format!("{}: {error}", path.display()))
}

/// Where a client connected from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAddr {
    /// Over TCP, from this address.
    Tcp(SocketAddr),
    /// On pgvane's unix-domain socket (`unix_socket_dir`), whose name carries `listen_port`.
    Unix {
        /// The port in the socket's name.
        listen_port: u16,
    },
}

impl ClientAddr {
    /// The `addr` column of SHOW CLIENTS: the IP address, or `unix` (as PgBouncer shows it).
    pub fn addr_text(&self) -> String {
        match self {
            ClientAddr::Tcp(addr) => addr.ip().to_string(),
            ClientAddr::Unix { .. } => "unix".to_owned(),
        }
    }

    /// The `port` column of SHOW CLIENTS: the client's port, or for a unix-domain socket the
    /// port in the socket's name (as PgBouncer shows it).
    pub fn port(&self) -> u16 {
        match self {
            ClientAddr::Tcp(addr) => addr.port(),
            ClientAddr::Unix { listen_port } => *listen_port,
        }
    }

    /// The client's IP address for the policy plugins (`client-addr`), empty on a unix-domain
    /// socket (as `inet_client_addr()` is NULL there in PostgreSQL).
    pub fn ip_text(&self) -> String {
        match self {
            ClientAddr::Tcp(addr) => addr.ip().to_string(),
            ClientAddr::Unix { .. } => String::new(),
        }
    }
}

impl fmt::Display for ClientAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientAddr::Tcp(addr) => addr.fmt(f),
            ClientAddr::Unix { .. } => f.write_str("unix"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_host_starting_with_a_slash_is_a_socket_directory() {
        assert!(is_socket_dir("/var/run/postgresql"));
        assert!(!is_socket_dir("db.example.com"));
        assert!(!is_socket_dir("::1"));
        assert_eq!(socket_path(Path::new("/tmp"), 5432), Path::new("/tmp/.s.PGSQL.5432"));
    }

    #[test]
    fn unix_addresses_show_as_pgbouncer_shows_them() {
        let client = ClientAddr::Unix { listen_port: 6432 };
        assert_eq!((client.addr_text(), client.port(), client.ip_text()), ("unix".into(), 6432, String::new()));
        let server = ServerAddr::Unix { path: Path::new("/tmp/.s.PGSQL.5432").into(), port: 5432 };
        assert_eq!((server.addr_text(), server.port()), ("unix".into(), 5432));
        assert_eq!(server.to_string(), "/tmp/.s.PGSQL.5432");
    }

    #[tokio::test]
    async fn connects_to_the_socket_in_a_directory() {
        let dir = std::env::temp_dir().join(format!("pgvane-endpoint-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = socket_path(&dir, 5999);
        let _ = std::fs::remove_file(&path);
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        let (stream, addr) = connect(dir.to_str().unwrap(), 5999).await.unwrap();
        assert!(stream.is_unix());
        assert_eq!(addr, ServerAddr::Unix { path: path.clone().into(), port: 5999 });
        assert!(listener.accept().await.is_ok());
        drop(listener);
        std::fs::remove_dir_all(&dir).unwrap();
        let missing = connect(dir.to_str().unwrap(), 5999).await.unwrap_err();
        assert!(missing.to_string().contains(".s.PGSQL.5999"), "{missing}");
    }
}

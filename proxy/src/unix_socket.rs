//! pgvane's unix-domain socket (`unix_socket_dir`): `<dir>/.s.PGSQL.<port>`, the name libpq
//! looks for with `host=<dir>`. The file is made at start, replacing a stale one a killed
//! process left, given `unix_socket_mode`, and removed when the socket closes, unless another
//! pgvane has put its own in its place meanwhile (a rolling restart with `so_reuseport`).

use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::net::{UnixListener, UnixStream};

use crate::endpoint::socket_path;

/// How long a connection to an existing socket file may take to tell a live one from a stale
/// one: a live pgvane accepts at once (the kernel does, into its backlog).
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// The bound socket; dropping it removes its file (if it is still this socket's).
#[derive(Debug)]
pub struct UnixSocket {
    listener: UnixListener,
    path: PathBuf,
    /// The file's (device, inode), to tell it from a file another process made in its place.
    file: (u64, u64),
}

impl UnixSocket {
    /// Listens on `<dir>/.s.PGSQL.<port>` with permissions `mode`. An existing socket file
    /// nobody listens on is stale and replaced. One some process listens on is taken over
    /// when `take_over` (`so_reuseport`: the old process is draining, new clients should come
    /// here) and refused otherwise, as PgBouncer refuses it.
    pub async fn bind(dir: &Path, port: u16, mode: u32, take_over: bool) -> io::Result<UnixSocket> {
        let path = socket_path(dir, port);
        if let Ok(existing) = std::fs::symlink_metadata(&path) {
            use std::os::unix::fs::FileTypeExt;
            if !existing.file_type().is_socket() {
                return Err(in_context(
                    io::Error::from(io::ErrorKind::AlreadyExists),
                    &path,
                    "exists and is not a socket",
                ));
            }
            let live =
                matches!(tokio::time::timeout(PROBE_TIMEOUT, UnixStream::connect(&path)).await, Ok(Ok(_)) | Err(_));
            match (live, take_over) {
                (true, false) => {
                    return Err(in_context(
                        io::Error::from(io::ErrorKind::AddrInUse),
                        &path,
                        "another process listens on it (so_reuseport = true lets pgvane take it over)",
                    ))
                }
                (true, true) => {
                    tracing::info!(path = %path.display(), "taking over the unix-domain socket (so_reuseport)")
                }
                (false, _) => tracing::info!(path = %path.display(), "removing a stale unix-domain socket"),
            }
            std::fs::remove_file(&path).map_err(|e| in_context(e, &path, "cannot remove it"))?;
        }
        let listener = UnixListener::bind(&path).map_err(|e| in_context(e, &path, "cannot listen"))?;
        let made = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
            .map_err(|e| in_context(e, &path, "cannot set unix_socket_mode"))
            .and_then(|()| std::fs::metadata(&path));
        match made {
            Ok(metadata) => Ok(UnixSocket { listener, path, file: (metadata.dev(), metadata.ino()) }),
            Err(e) => {
                let _ = std::fs::remove_file(&path);
                Err(e)
            }
        }
    }

    /// The socket file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The listener.
    pub fn listener(&self) -> &UnixListener {
        &self.listener
    }
}

impl Drop for UnixSocket {
    fn drop(&mut self) {
        let ours = std::fs::symlink_metadata(&self.path).is_ok_and(|m| (m.dev(), m.ino()) == self.file);
        if ours {
            if let Err(e) = std::fs::remove_file(&self.path) {
                tracing::warn!(path = %self.path.display(), error = %e, "could not remove the unix-domain socket");
            }
        }
    }
}

fn in_context(error: io::Error, path: &Path, what: &str) -> io::Error {
    io::Error::new(error.kind(), format!("unix-domain socket {}: {what}: {error}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("pgvane-unix-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[tokio::test]
    async fn binds_with_its_mode_and_removes_its_file_when_dropped() {
        let dir = scratch("mode");
        let socket = UnixSocket::bind(&dir, 6001, 0o700, false).await.unwrap();
        let path = dir.join(".s.PGSQL.6001");
        assert_eq!(socket.path(), path);
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o700);
        drop(socket);
        assert!(!path.exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn a_stale_file_is_replaced_a_live_one_refused_or_taken_over() {
        let dir = scratch("stale");
        let path = dir.join(".s.PGSQL.6002");
        // Stale: a socket file whose listener is gone (std's listener does not remove it).
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        let first = UnixSocket::bind(&dir, 6002, 0o777, false).await.unwrap();
        let refused = UnixSocket::bind(&dir, 6002, 0o777, false).await.unwrap_err();
        assert_eq!(refused.kind(), io::ErrorKind::AddrInUse, "{refused}");
        let second = UnixSocket::bind(&dir, 6002, 0o777, true).await.unwrap();
        // The first one closing leaves the second one's file alone.
        drop(first);
        assert!(path.exists());
        assert!(UnixStream::connect(&path).await.is_ok());
        drop(second);
        assert!(!path.exists());
        std::fs::write(&path, "not a socket").unwrap();
        let err = UnixSocket::bind(&dir, 6002, 0o777, true).await.unwrap_err();
        assert!(err.to_string().contains("not a socket"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

//! Cancel keys: pgvane gives every client its own BackendKeyData and maps it to the server
//! connection the client currently uses, so a CancelRequest reaches that server and nothing else.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::protocol::messages::encode_cancel;

/// Where a cancel for a client must go: its current server and that server's key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CancelTarget {
    /// Server host.
    pub host: String,
    /// Server port.
    pub port: u16,
    /// The server's process ID.
    pub pid: u32,
    /// The server's secret key.
    pub secret: u32,
}

#[derive(Debug)]
struct Entry {
    secret: u32,
    target: Option<CancelTarget>,
}

/// Every connected client's key.
#[derive(Debug, Default)]
pub struct CancelRegistry {
    entries: Mutex<HashMap<u32, Entry>>,
}

impl CancelRegistry {
    fn entries(&self) -> MutexGuard<'_, HashMap<u32, Entry>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Gives a client a fresh, unique key. It is removed when the handle drops.
    pub fn register(self: &Arc<Self>) -> CancelHandle {
        let secret = rand::random::<u32>();
        let mut entries = self.entries();
        let pid = loop {
            // Non-zero and unused; random so keys cannot be guessed from each other.
            let pid = rand::random::<u32>() & 0x7fff_ffff;
            if pid != 0 && !entries.contains_key(&pid) {
                break pid;
            }
        };
        entries.insert(pid, Entry { secret, target: None });
        CancelHandle {
            registry: self.clone(),
            pid,
            secret,
        }
    }

    /// The server to cancel for key (`pid`, `secret`), if the key is valid and the client is busy on one.
    pub fn target(&self, pid: u32, secret: u32) -> Option<CancelTarget> {
        let entries = self.entries();
        let entry = entries.get(&pid)?;
        (entry.secret == secret).then(|| entry.target.clone()).flatten()
    }

    /// Forwards a client's CancelRequest to its server, if any; otherwise does nothing, as PostgreSQL does.
    pub async fn cancel(&self, pid: u32, secret: u32, connect_timeout: Duration) {
        let Some(target) = self.target(pid, secret) else {
            tracing::debug!(pid, "cancel request for no running query; ignored");
            return;
        };
        let send = async {
            let mut stream = TcpStream::connect((target.host.as_str(), target.port)).await?;
            let mut buf = BytesMut::new();
            encode_cancel(target.pid, target.secret, &mut buf);
            stream.write_all(&buf).await?;
            stream.shutdown().await
        };
        match tokio::time::timeout(connect_timeout, send).await {
            Ok(Ok(())) => tracing::debug!(pid, server_pid = target.pid, "cancel request forwarded"),
            Ok(Err(e)) => tracing::warn!(pid, error = %e, "could not forward cancel request"),
            Err(_) => tracing::warn!(pid, "timed out forwarding cancel request"),
        }
    }
}

/// A client's registered key; dropping it unregisters the key.
#[derive(Debug)]
pub struct CancelHandle {
    registry: Arc<CancelRegistry>,
    /// The process ID given to the client.
    pub pid: u32,
    /// The secret given to the client.
    pub secret: u32,
}

impl CancelHandle {
    /// Points cancels at a server connection (`None` while the client holds none).
    pub fn set_target(&self, target: Option<CancelTarget>) {
        if let Some(entry) = self.registry.entries().get_mut(&self.pid) {
            entry.target = target;
        }
    }
}

impl Drop for CancelHandle {
    fn drop(&mut self) {
        self.registry.entries().remove(&self.pid);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_map_to_targets_only_with_the_right_secret() {
        let registry = Arc::new(CancelRegistry::default());
        let a = registry.register();
        let b = registry.register();
        assert_ne!(a.pid, b.pid);
        assert_eq!(registry.target(a.pid, a.secret), None, "idle client: nothing to cancel");
        let target = CancelTarget {
            host: "h".into(),
            port: 1,
            pid: 99,
            secret: 7,
        };
        a.set_target(Some(target.clone()));
        assert_eq!(registry.target(a.pid, a.secret), Some(target));
        assert_eq!(registry.target(a.pid, a.secret.wrapping_add(1)), None);
        assert_eq!(registry.target(b.pid, b.secret), None);
        let (pid, secret) = (a.pid, a.secret);
        drop(a);
        assert_eq!(registry.target(pid, secret), None, "a stale key cancels nothing");
    }
}

//! The server connections of one pool, idle or checked out, as SHOW SERVERS lists them.
//!
//! Every connection carries a [`Ticket`] from the moment pgvane starts opening it; the ticket
//! keeps its entry up to date and removes it when dropped, so however a connection ends
//! (closed, discarded, failed), it leaves the list.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use super::ServerConn;
use crate::endpoint::ServerAddr;

/// What a server connection is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerState {
    /// Connecting and logging in.
    Login,
    /// Checked out by a client.
    Active,
    /// In the pool, ready for a client.
    Idle,
    /// Running `server_reset_query` before going back to the pool.
    Tested,
}

impl ServerState {
    /// The name PgBouncer's SHOW SERVERS uses.
    pub fn as_str(self) -> &'static str {
        match self {
            ServerState::Login => "login",
            ServerState::Active => "active",
            ServerState::Idle => "idle",
            ServerState::Tested => "tested",
        }
    }
}

/// One server connection's entry.
#[derive(Debug, Clone)]
pub struct ServerInfo {
    /// pgvane's ID for it, unique in the process.
    pub id: u64,
    /// What it is doing.
    pub state: ServerState,
    /// The server's address (once connected).
    pub addr: Option<ServerAddr>,
    /// pgvane's end of the connection (once connected over TCP).
    pub local_addr: Option<SocketAddr>,
    /// The backend's process ID from its BackendKeyData (once logged in).
    pub remote_pid: Option<u32>,
    /// When pgvane started opening it.
    pub connect_time: SystemTime,
    /// The pool generation it belongs to; an older one than the pool's means it is closed
    /// as soon as it is free.
    pub generation: u64,
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// The entries of one pool.
#[derive(Debug, Default)]
pub(crate) struct Members {
    entries: Mutex<BTreeMap<u64, ServerInfo>>,
}

impl Members {
    fn entries(&self) -> MutexGuard<'_, BTreeMap<u64, ServerInfo>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds an entry in state `Login` for a connection about to be opened.
    pub(crate) fn join(self: &Arc<Self>, generation: u64) -> Ticket {
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let info = ServerInfo {
            id,
            state: ServerState::Login,
            addr: None,
            local_addr: None,
            remote_pid: None,
            connect_time: SystemTime::now(),
            generation,
        };
        self.entries().insert(id, info);
        Ticket { id, generation, members: self.clone() }
    }

    /// Number of connections, in any state.
    pub(crate) fn len(&self) -> usize {
        self.entries().len()
    }

    /// A copy of every entry, by ID.
    pub(crate) fn snapshot(&self) -> Vec<ServerInfo> {
        self.entries().values().cloned().collect()
    }
}

/// A connection's entry; dropping it removes the entry.
#[derive(Debug)]
pub(crate) struct Ticket {
    id: u64,
    /// The pool generation the connection belongs to.
    pub(crate) generation: u64,
    members: Arc<Members>,
}

impl Ticket {
    fn update(&self, f: impl FnOnce(&mut ServerInfo)) {
        if let Some(info) = self.members.entries().get_mut(&self.id) {
            f(info);
        }
    }

    /// Records what the connection is doing.
    pub(crate) fn set_state(&self, state: ServerState) {
        self.update(|info| info.state = state);
    }

    /// Records the addresses and backend PID of a connection that has just logged in.
    pub(crate) fn connected(&self, conn: &ServerConn) {
        let local_addr = conn.stream.local_addr().ok();
        self.update(|info| {
            info.addr = Some(conn.peer.clone());
            info.local_addr = local_addr;
            info.remote_pid = Some(conn.backend_key.0);
        });
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.members.entries().remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tickets_track_and_leave() {
        let members = Arc::new(Members::default());
        let a = members.join(1);
        let b = members.join(2);
        b.set_state(ServerState::Idle);
        let snap = members.snapshot();
        assert_eq!(snap.len(), 2);
        assert_eq!((snap[0].state, snap[1].state, snap[1].generation), (ServerState::Login, ServerState::Idle, 2));
        drop(a);
        assert_eq!(members.snapshot().len(), 1);
        drop(b);
        assert!(members.snapshot().is_empty());
    }
}

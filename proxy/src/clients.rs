//! Every connected client: its cancel key, who it is, what it is doing, and the signals other
//! parts of pgvane send it (cancel while waiting, kill).
//!
//! pgvane gives each client its own BackendKeyData and maps it to the server connection the
//! client currently uses, so a CancelRequest reaches that server and nothing else; a cancel
//! for an idle client is dropped. A server connection with a cancel on its way goes to no
//! other client until the cancel has arrived (see `pool::CancelsInFlight`). With peering on,
//! the key names this instance, and a cancel for another instance's client is forwarded
//! there (see `peers`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Poll, Waker};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::Notify;

use crate::config::Config;
use crate::endpoint::ClientAddr;
use crate::peers::{self, KeyScheme, Route};
pub use crate::pool::CancelTarget;

/// What a client is doing, as the admin console shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientState {
    /// Still logging in.
    Login,
    /// Logged in, holding no server connection.
    Idle,
    /// Waiting for a server connection.
    Waiting,
    /// Holding a server connection.
    Active,
}

impl ClientState {
    /// The name PgBouncer's SHOW CLIENTS uses.
    pub fn as_str(self) -> &'static str {
        match self {
            ClientState::Login => "login",
            ClientState::Idle => "idle",
            ClientState::Waiting => "waiting",
            ClientState::Active => "active",
        }
    }
}

/// A copy of one client's entry, for the admin console.
#[derive(Debug, Clone)]
pub struct ClientInfo {
    /// pgvane's process ID for it (from its BackendKeyData).
    pub pid: u32,
    /// Its address.
    pub peer: ClientAddr,
    /// User name (empty while logging in).
    pub user: String,
    /// Database name (empty while logging in).
    pub database: String,
    /// `application_name` it gave at startup.
    pub application_name: String,
    /// What it is doing.
    pub state: ClientState,
    /// When it connected.
    pub connect_time: SystemTime,
    /// When its state last changed.
    pub state_since: Instant,
    /// The backend PID of the server connection it holds, if any.
    pub server_pid: Option<u32>,
    /// Why it keeps its server connection between transactions (transaction and statement
    /// modes): the session state it holds there, e.g. "advisory lock, temporary table".
    pub pinned: Option<String>,
}

#[derive(Debug)]
struct Entry {
    secret: u32,
    info: ClientInfo,
    target: Option<CancelTarget>,
    signals: Arc<Signals>,
    /// Dropped to admit a newer connection while still logging in; gone once its task ends.
    evicted: bool,
}

/// Connections beyond `max_client_conn` kept for the admin console's users.
pub const ADMIN_RESERVED_CONNECTIONS: usize = 3;

/// The connection limits, from the configuration.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// `max_client_conn`: logged-in clients (admin console users excepted).
    pub max_client_conn: usize,
    /// `max_pending_logins`: connections still logging in.
    pub max_pending_logins: usize,
}

/// Signals a session listens for.
#[derive(Debug, Default)]
pub struct Signals {
    /// A CancelRequest arrived while the client held no server (it may be waiting for one).
    pub cancel: Notify,
    /// The client must be disconnected (admin KILL, shutdown).
    pub kill: KillSwitch,
    /// pgvane is draining: the client is disconnected (FATAL 57P01) at its next point
    /// between transactions, so that it reconnects elsewhere.
    pub drain: KillSwitch,
}

/// A flag that, once raised, stays raised and wakes the session's task.
///
/// A session awaits it beside every socket wait, many times per query, so waiting must be
/// cheap: one task polls it (a session is one task), which keeps only that task's waker,
/// where a `Notify` would add and remove a waiter in its list on every wait.
#[derive(Debug, Default)]
pub struct KillSwitch {
    raised: AtomicBool,
    waker: Mutex<Option<Waker>>,
}

impl KillSwitch {
    /// True once raised.
    pub fn is_raised(&self) -> bool {
        self.raised.load(Ordering::SeqCst)
    }

    /// Raises the flag and wakes the task waiting for it.
    pub fn raise(&self) {
        self.raised.store(true, Ordering::SeqCst);
        if let Some(waker) = self.waker_slot().take() {
            waker.wake();
        }
    }

    /// Completes once the flag is raised (at once if it already is).
    pub async fn raised(&self) {
        std::future::poll_fn(|cx| {
            if self.raised.load(Ordering::SeqCst) {
                return Poll::Ready(());
            }
            {
                let mut slot = self.waker_slot();
                if !slot.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                    *slot = Some(cx.waker().clone());
                }
            }
            // Raised between the first look and storing the waker: `raise` found no waker.
            match self.raised.load(Ordering::SeqCst) {
                true => Poll::Ready(()),
                false => Poll::Pending,
            }
        })
        .await
    }

    fn waker_slot(&self) -> MutexGuard<'_, Option<Waker>> {
        self.waker.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Every connected client's entry, by its whole cancel key.
#[derive(Debug, Default)]
pub struct ClientRegistry {
    entries: Mutex<HashMap<u64, Entry>>,
    keys: KeyScheme,
}

/// How long a drain lets a client that is logging in, or idle since less than this, go on
/// before it asks it to leave: a client that has just connected gets to send its first
/// transaction (it would otherwise fail on a connection it has only just made), and one that
/// keeps sending is asked to leave at once, after the transaction it is in.
pub const DRAIN_GRACE: Duration = Duration::from_millis(250);

/// True when a drain asks this client to leave now (see [`DRAIN_GRACE`]).
fn leaves_now(info: &ClientInfo) -> bool {
    match info.state {
        ClientState::Login => false,
        ClientState::Idle => info.state_since.elapsed() >= DRAIN_GRACE,
        ClientState::Waiting | ClientState::Active => true,
    }
}

/// The registry's key of (`pid`, `secret`).
fn key(pid: u32, secret: u32) -> u64 {
    (u64::from(pid) << 32) | u64::from(secret)
}

impl ClientRegistry {
    /// A registry whose keys name this instance (`peer_id`, 0 for none).
    pub fn new(peer_id: u16) -> Self {
        ClientRegistry { keys: KeyScheme { peer_id }, ..ClientRegistry::default() }
    }

    fn entries(&self) -> MutexGuard<'_, HashMap<u64, Entry>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a connection just accepted, with a fresh, unique key; the entry is removed
    /// when the handle drops. Connections count from here: when as many are logging in as
    /// `max_pending_logins` allows, or all connections are taken (`max_client_conn` plus
    /// [`ADMIN_RESERVED_CONNECTIONS`]), the oldest connection still logging in is dropped to
    /// make room, so that silent or stalled connections cannot lock anyone out. `None` when
    /// every connection is logged in already.
    pub fn admit(self: &Arc<Self>, peer: ClientAddr, limits: Limits) -> Option<ClientHandle> {
        let mut entries = self.entries();
        let live = entries.values().filter(|e| !e.evicted);
        let (total, pending) =
            live.fold((0, 0), |(t, p), e| (t + 1, p + usize::from(e.info.state == ClientState::Login)));
        if pending >= limits.max_pending_logins || total >= limits.max_client_conn + ADMIN_RESERVED_CONNECTIONS {
            let oldest = entries
                .values_mut()
                .filter(|e| !e.evicted && e.info.state == ClientState::Login)
                .min_by_key(|e| e.info.state_since)?;
            tracing::info!(peer = %oldest.info.peer, "dropping the oldest connection still logging in to admit a new one");
            oldest.evicted = true;
            oldest.signals.kill.raise();
        }
        let (pid, secret) = loop {
            // Non-zero and unused; random so keys cannot be guessed from each other.
            let (pid, secret) = self.keys.key(rand::random(), rand::random());
            if pid != 0 && !entries.contains_key(&key(pid, secret)) {
                break (pid, secret);
            }
        };
        let signals = Arc::new(Signals::default());
        let info = ClientInfo {
            pid,
            peer,
            user: String::new(),
            database: String::new(),
            application_name: String::new(),
            state: ClientState::Login,
            connect_time: SystemTime::now(),
            state_since: Instant::now(),
            server_pid: None,
            pinned: None,
        };
        entries
            .insert(key(pid, secret), Entry { secret, info, target: None, signals: signals.clone(), evicted: false });
        Some(ClientHandle { registry: self.clone(), pid, secret, signals })
    }

    /// Number of registered clients.
    pub fn len(&self) -> usize {
        self.entries().len()
    }

    /// True when no client is connected.
    pub fn is_empty(&self) -> bool {
        self.entries().is_empty()
    }

    /// A copy of every client's entry, ordered by connect time.
    pub fn snapshot(&self) -> Vec<ClientInfo> {
        let mut all: Vec<ClientInfo> = self.entries().values().map(|e| e.info.clone()).collect();
        all.sort_by_key(|c| c.connect_time);
        all
    }

    /// Disconnects every client of `database` (all clients when `None`).
    pub fn kill(&self, database: Option<&str>) -> usize {
        let entries = self.entries();
        let mut n = 0;
        for entry in entries.values() {
            if database.is_none_or(|db| db == entry.info.database) {
                entry.signals.kill.raise();
                n += 1;
            }
        }
        n
    }

    /// One pass of a drain: asks every client that should leave now (see [`DRAIN_GRACE`]) to
    /// leave at its next point between transactions. A drain calls it until the clients are
    /// gone, so that clients still logging in are asked in their turn.
    pub fn drain(&self) {
        for entry in self.entries().values() {
            if !entry.signals.drain.is_raised() && leaves_now(&entry.info) {
                entry.signals.drain.raise();
            }
        }
    }

    /// Clients still connected, the admin console's excepted (a drain waits for these).
    pub fn serving(&self) -> usize {
        self.entries().values().filter(|e| e.info.database != crate::ADMIN_DATABASE).count()
    }

    /// Handles a CancelRequest for key (`pid`, `secret`). A key of another instance of the
    /// group goes to that peer (once; see `peers`). A key of this one: forwarded to the
    /// client's server if it holds one, ends its wait for a server if it is waiting, and
    /// otherwise does nothing, as PostgreSQL does for an idle backend.
    pub async fn cancel(&self, pid: u32, secret: u32, config: &Config) {
        let timeout = config.settings.server_connect_timeout();
        match self.keys.route(pid, secret) {
            Route::Local { pid, secret } => self.cancel_here(pid, secret, timeout).await,
            Route::Exhausted { peer } => {
                tracing::info!(pid, peer, "cancel request for another peer, already forwarded once; dropped")
            }
            Route::Forward { peer, pid, secret } => match config.peers.get(&peer) {
                None => tracing::info!(pid, peer, "cancel request for a peer not in [peers]; dropped"),
                Some(address) => match peers::forward(address, pid, secret, timeout).await {
                    Ok(()) => tracing::debug!(pid, peer, "cancel request forwarded to peer"),
                    Err(e) => tracing::warn!(pid, peer, error = %e, "could not forward cancel request to peer"),
                },
            },
        }
    }

    async fn cancel_here(&self, pid: u32, secret: u32, connect_timeout: Duration) {
        let target = {
            let entries = self.entries();
            let Some(entry) = entries.get(&key(pid, secret)).filter(|e| e.secret == secret) else {
                tracing::debug!(pid, "cancel request with an unknown key; ignored");
                return;
            };
            match &entry.target {
                // Noted under the lock: the client still holds the connection, and it goes
                // to no other client until this cancel has arrived.
                Some(target) => (target.clone(), target.in_flight.begin()),
                None => {
                    // Wakes a session waiting for a pool slot; no permit is stored, so a
                    // stale cancel cannot hit a later wait.
                    entry.signals.cancel.notify_waiters();
                    tracing::debug!(pid, "cancel request for a client without a server");
                    return;
                }
            }
        };
        let (target, _in_flight) = target;
        match tokio::time::timeout(connect_timeout, target.send()).await {
            Ok(Ok(())) => tracing::debug!(pid, server_pid = target.pid, "cancel request forwarded"),
            Ok(Err(e)) => tracing::warn!(pid, error = %e, "could not forward cancel request"),
            Err(_) => tracing::warn!(pid, "timed out forwarding cancel request"),
        }
    }
}

/// A client's registered entry; dropping it unregisters the client.
#[derive(Debug)]
pub struct ClientHandle {
    registry: Arc<ClientRegistry>,
    /// The process ID given to the client.
    pub pid: u32,
    /// The secret given to the client.
    pub secret: u32,
    /// Signals for this client.
    pub signals: Arc<Signals>,
}

impl ClientHandle {
    fn key(&self) -> u64 {
        key(self.pid, self.secret)
    }

    fn update(&self, f: impl FnOnce(&mut Entry)) {
        if let Some(entry) = self.registry.entries().get_mut(&self.key()) {
            f(entry);
        }
    }

    /// Records who the client is once it has logged in, and that it has: false when that
    /// makes more logged-in clients than `max_client_conn` (admin console users may use the
    /// connections reserved for them).
    pub fn logged_in(&self, user: &str, database: &str, application_name: &str, max: usize, admin: bool) -> bool {
        let mut entries = self.registry.entries();
        let logged_in = entries
            .values()
            .filter(|e| {
                !e.evicted && e.info.state != ClientState::Login && !(e.info.pid == self.pid && e.secret == self.secret)
            })
            .count();
        let Some(entry) = entries.get_mut(&self.key()) else { return false };
        if !admin && logged_in >= max {
            return false;
        }
        entry.info.user = user.to_owned();
        entry.info.database = database.to_owned();
        entry.info.application_name = application_name.to_owned();
        entry.info.state = ClientState::Idle;
        entry.info.state_since = Instant::now();
        true
    }

    /// True once the connection was dropped to admit a newer one (it was still logging in).
    pub fn evicted(&self) -> bool {
        self.registry.entries().get(&self.key()).is_none_or(|e| e.evicted)
    }

    /// Records why the client keeps its server connection between transactions (`None`: it
    /// does not).
    pub fn set_pinned(&self, reasons: Option<String>) {
        self.update(|e| e.info.pinned = reasons);
    }

    /// Records what the client is doing and which server it holds (cancels go there).
    pub fn set_state(&self, state: ClientState, target: Option<CancelTarget>) {
        self.update(|e| {
            if e.info.state != state {
                e.info.state = state;
                e.info.state_since = Instant::now();
            }
            e.info.server_pid = target.as_ref().map(|t| t.pid);
            e.target = target;
        });
    }
}

impl Drop for ClientHandle {
    fn drop(&mut self) {
        self.registry.entries().remove(&self.key());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer() -> ClientAddr {
        ClientAddr::Tcp(std::net::SocketAddr::from(([127, 0, 0, 1], 1)))
    }

    #[tokio::test]
    async fn a_kill_switch_wakes_its_waiter_and_stays_raised() {
        let switch = Arc::new(KillSwitch::default());
        let waiter = tokio::spawn({
            let switch = switch.clone();
            async move { switch.raised().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        switch.raise();
        tokio::time::timeout(Duration::from_secs(5), waiter).await.expect("woken").expect("no panic");
        // Raised for good: a later wait ends at once.
        tokio::time::timeout(Duration::from_secs(5), switch.raised()).await.expect("still raised");
    }

    fn limits(max_client_conn: usize, max_pending_logins: usize) -> Limits {
        Limits { max_client_conn, max_pending_logins }
    }

    #[test]
    fn the_oldest_pending_login_makes_room_and_logged_in_clients_are_limited() {
        let registry = Arc::new(ClientRegistry::default());
        let l = limits(2, 2);
        let a = registry.admit(peer(), l).unwrap();
        let b = registry.admit(peer(), l).unwrap();
        assert_ne!(a.pid, b.pid);
        // Two logging in already: the oldest (a) is dropped for the third.
        let c = registry.admit(peer(), l).unwrap();
        assert!(a.evicted() && !b.evicted() && !c.evicted());
        assert!(b.logged_in("u", "d", "", 2, false));
        assert!(c.logged_in("u", "d", "", 2, false));
        // Two logged in: a third ordinary login is refused, an admin's is not.
        let d = registry.admit(peer(), l).unwrap();
        assert!(!d.logged_in("u", "d", "", 2, false));
        assert!(d.logged_in("admin", "pgvane", "", 2, true));
        // Everyone logged in and every reserved connection taken: nothing to drop.
        let rest: Vec<_> = (0..ADMIN_RESERVED_CONNECTIONS - 1).map(|_| registry.admit(peer(), l).unwrap()).collect();
        for r in &rest {
            assert!(r.logged_in("admin", "pgvane", "", 2, true));
        }
        assert!(registry.admit(peer(), l).is_none());
        drop(b);
        assert!(registry.admit(peer(), l).is_some());
        drop(a); // evicted earlier: dropping it removes only its own entry
        assert_eq!(registry.len(), 2 + rest.len(), "c, d and the admins remain");
    }

    #[test]
    fn a_drain_asks_busy_clients_now_and_new_or_just_idle_ones_after_the_grace() {
        let registry = Arc::new(ClientRegistry::new(7));
        let l = limits(10, 10);
        let logging_in = registry.admit(peer(), l).unwrap();
        let busy = registry.admit(peer(), l).unwrap();
        let just_idle = registry.admit(peer(), l).unwrap();
        for (handle, state) in [(&busy, ClientState::Active), (&just_idle, ClientState::Idle)] {
            assert!(handle.logged_in("u", "d", "", 10, false));
            handle.set_state(state, None);
        }
        assert_eq!(crate::peers::peer_of(busy.pid), 7, "keys name the instance");
        registry.drain();
        assert!(busy.signals.drain.is_raised());
        assert!(!logging_in.signals.drain.is_raised() && !just_idle.signals.drain.is_raised());
        std::thread::sleep(DRAIN_GRACE);
        registry.drain();
        assert!(just_idle.signals.drain.is_raised(), "idle past the grace");
        assert!(!logging_in.signals.drain.is_raised(), "still logging in");
        assert_eq!(registry.serving(), 3);
    }

    #[test]
    fn identity_and_state_show_in_snapshots() {
        let registry = Arc::new(ClientRegistry::default());
        let a = registry.admit(peer(), limits(10, 10)).unwrap();
        assert!(a.logged_in("alice", "app", "psql", 10, false));
        let target = CancelTarget {
            addr: crate::endpoint::ServerAddr::Tcp(std::net::SocketAddr::from(([127, 0, 0, 1], 1))),
            pid: 99,
            secret: 7,
            in_flight: Arc::default(),
        };
        a.set_state(ClientState::Active, Some(target));
        let snap = registry.snapshot();
        assert_eq!(snap.len(), 1);
        assert_eq!(
            (snap[0].user.as_str(), snap[0].state, snap[0].server_pid),
            ("alice", ClientState::Active, Some(99))
        );
        assert_eq!(registry.kill(Some("other")), 0);
        assert_eq!(registry.kill(Some("app")), 1);
    }
}

//! What the process counts for `/metrics`, below everything that counts: lock-free
//! histograms, the process counters (logins, authentication failures, TLS handshakes, reloads,
//! plugin loads) and the readiness flags `/ready` answers from.
//!
//! Everything a statement touches is a relaxed atomic: no lock, no allocation, no map lookup
//! per query. Labelled series are fixed arrays indexed by an enum, or are looked up only off the
//! query path (a plugin load). The exporter (`admin::exporter`) reads all of it at scrape time.

mod histogram;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;

pub use histogram::{Histogram, HistogramSnapshot, DURATION_BUCKETS_US, FUEL_BUCKETS, PLUGIN_LATENCY_BUCKETS_US};

/// Why a client's login failed, as the `reason` label of `pgvane_auth_failures_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFailure {
    /// Wrong password, or an unknown user (the two look the same to the client): 28P01.
    Password,
    /// A certificate that does not name the user, or a login that is not allowed (28000).
    NotAllowed,
    /// TLS required but not used, or the handshake failed.
    Tls,
    /// The client did not finish logging in within `client_login_timeout_ms`.
    Timeout,
    /// `max_client_conn` reached (53300).
    TooManyClients,
    /// The client broke the protocol during the login.
    Protocol,
    /// Any other refusal during the login.
    Other,
}

impl AuthFailure {
    /// Every reason, in label order.
    pub const ALL: [AuthFailure; 7] = [
        AuthFailure::Password,
        AuthFailure::NotAllowed,
        AuthFailure::Tls,
        AuthFailure::Timeout,
        AuthFailure::TooManyClients,
        AuthFailure::Protocol,
        AuthFailure::Other,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            AuthFailure::Password => "password",
            AuthFailure::NotAllowed => "not_allowed",
            AuthFailure::Tls => "tls",
            AuthFailure::Timeout => "timeout",
            AuthFailure::TooManyClients => "too_many_clients",
            AuthFailure::Protocol => "protocol",
            AuthFailure::Other => "other",
        }
    }

    /// The reason of a login refused with SQLSTATE `code`.
    pub fn of_sqlstate(code: &str) -> AuthFailure {
        match code {
            "28P01" => AuthFailure::Password,
            "28000" | "42501" => AuthFailure::NotAllowed,
            "53300" => AuthFailure::TooManyClients,
            "08P01" => AuthFailure::Protocol,
            "08006" => AuthFailure::Timeout,
            _ => AuthFailure::Other,
        }
    }
}

/// The process counters.
#[derive(Debug, Default)]
pub struct ProcessMetrics {
    /// Client connections accepted; also the source of session connection ids.
    pub connections: AtomicU64,
    /// Clients that logged in (admin console included).
    pub logins: AtomicU64,
    auth_failures: [AtomicU64; AuthFailure::ALL.len()],
    /// Client TLS handshakes that succeeded.
    pub tls_handshakes_ok: AtomicU64,
    /// Client TLS handshakes that failed.
    pub tls_handshakes_failed: AtomicU64,
    /// Reloads (RELOAD, SIGHUP, a watched plugin file) that put a configuration in force.
    pub reloads_ok: AtomicU64,
    /// Reloads that changed nothing because the file or a plugin did not load.
    pub reloads_failed: AtomicU64,
    /// Plugin loads by (plugin, digest): `Ok` ones and failed ones (digest empty when the
    /// component could not even be read). Updated at load time only, never per statement.
    plugin_loads: Mutex<BTreeMap<(String, String), LoadCounts>>,
    /// `/ready`: the listening socket is bound and accepting.
    listening: AtomicBool,
    /// `/ready`: the process is draining (shutting down); no new work should be sent here.
    draining: AtomicBool,
}

/// Loads of one (plugin, digest).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LoadCounts {
    /// Loads that succeeded.
    pub ok: u64,
    /// Loads that failed.
    pub failed: u64,
}

impl ProcessMetrics {
    /// A new connection: returns its id (1, 2, …), unique in the process.
    pub fn accepted(&self) -> u64 {
        self.connections.fetch_add(1, Relaxed) + 1
    }

    /// A login failed for `reason`.
    pub fn auth_failed(&self, reason: AuthFailure) {
        if let Some(counter) = self.auth_failures.get(reason as usize) {
            counter.fetch_add(1, Relaxed);
        }
    }

    /// Failed logins for `reason`.
    pub fn auth_failures(&self, reason: AuthFailure) -> u64 {
        self.auth_failures.get(reason as usize).map_or(0, |c| c.load(Relaxed))
    }

    /// A client TLS handshake ended.
    pub fn tls_handshake(&self, ok: bool) {
        match ok {
            true => self.tls_handshakes_ok.fetch_add(1, Relaxed),
            false => self.tls_handshakes_failed.fetch_add(1, Relaxed),
        };
    }

    /// A reload ended.
    pub fn reloaded(&self, ok: bool) {
        match ok {
            true => self.reloads_ok.fetch_add(1, Relaxed),
            false => self.reloads_failed.fetch_add(1, Relaxed),
        };
    }

    /// A plugin load ended (`digest` empty when unknown).
    pub fn plugin_loaded(&self, plugin: &str, digest: &str, ok: bool) {
        let mut loads = self.plugin_loads.lock().unwrap_or_else(|p| p.into_inner());
        let counts = loads.entry((plugin.to_owned(), digest.to_owned())).or_default();
        match ok {
            true => counts.ok += 1,
            false => counts.failed += 1,
        }
    }

    /// Plugin loads by (plugin, digest).
    pub fn plugin_loads(&self) -> BTreeMap<(String, String), LoadCounts> {
        self.plugin_loads.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The listening socket accepts clients from now on.
    pub fn set_listening(&self, listening: bool) {
        self.listening.store(listening, Relaxed);
    }

    /// The process stops taking new work: `/ready` answers 503 from now on. Called when a
    /// shutdown starts; a future graceful drain calls it first thing.
    pub fn start_draining(&self) {
        self.draining.store(true, Relaxed);
    }

    /// True while draining.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Relaxed)
    }

    /// `/ready`: the configuration is loaded (there is a process state at all), the listener
    /// accepts clients and the process is not draining.
    pub fn is_ready(&self) -> bool {
        self.listening.load(Relaxed) && !self.is_draining()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_means_listening_and_not_draining() {
        let m = ProcessMetrics::default();
        assert!(!m.is_ready(), "not listening yet");
        m.set_listening(true);
        assert!(m.is_ready());
        m.start_draining();
        assert!(!m.is_ready(), "draining");
    }

    #[test]
    fn auth_failures_count_by_reason() {
        let m = ProcessMetrics::default();
        m.auth_failed(AuthFailure::of_sqlstate("28P01"));
        m.auth_failed(AuthFailure::of_sqlstate("28P01"));
        m.auth_failed(AuthFailure::of_sqlstate("XX000"));
        assert_eq!(m.auth_failures(AuthFailure::Password), 2);
        assert_eq!(m.auth_failures(AuthFailure::Other), 1);
        assert_eq!(m.auth_failures(AuthFailure::Tls), 0);
    }

    #[test]
    fn plugin_loads_count_by_plugin_and_digest() {
        let m = ProcessMetrics::default();
        m.plugin_loaded("a", "sha256:1", true);
        m.plugin_loaded("a", "sha256:1", true);
        m.plugin_loaded("a", "", false);
        let loads = m.plugin_loads();
        assert_eq!(loads[&("a".into(), "sha256:1".into())], LoadCounts { ok: 2, failed: 0 });
        assert_eq!(loads[&("a".into(), String::new())], LoadCounts { ok: 0, failed: 1 });
        assert_eq!(m.accepted(), 1);
        assert_eq!(m.accepted(), 2);
    }
}

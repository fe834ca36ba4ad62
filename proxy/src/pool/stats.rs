//! Counters per pool, for SHOW STATS and `/metrics`. Updated by sessions with relaxed atomics
//! (the histograms too): cheap, no lock, and exact enough for statistics.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use crate::metrics::{Histogram, HistogramSnapshot, DURATION_BUCKETS_US};

/// Totals since the pool was created.
#[derive(Debug)]
pub struct PoolStats {
    server_assignments: AtomicU64,
    xact_count: AtomicU64,
    query_count: AtomicU64,
    received_bytes: AtomicU64,
    sent_bytes: AtomicU64,
    xact_time_us: AtomicU64,
    query_time_us: AtomicU64,
    wait_time_us: AtomicU64,
    client_parses: AtomicU64,
    server_parses: AtomicU64,
    binds: AtomicU64,
    /// Query durations, in microseconds.
    pub query_duration: Histogram,
    /// Transaction durations, in microseconds.
    pub xact_duration: Histogram,
    /// Waits for a server connection (0 for a client that found an idle one at once), in
    /// microseconds.
    pub wait_duration: Histogram,
}

impl Default for PoolStats {
    fn default() -> Self {
        PoolStats {
            server_assignments: AtomicU64::new(0),
            xact_count: AtomicU64::new(0),
            query_count: AtomicU64::new(0),
            received_bytes: AtomicU64::new(0),
            sent_bytes: AtomicU64::new(0),
            xact_time_us: AtomicU64::new(0),
            query_time_us: AtomicU64::new(0),
            wait_time_us: AtomicU64::new(0),
            client_parses: AtomicU64::new(0),
            server_parses: AtomicU64::new(0),
            binds: AtomicU64::new(0),
            query_duration: Histogram::new(DURATION_BUCKETS_US),
            xact_duration: Histogram::new(DURATION_BUCKETS_US),
            wait_duration: Histogram::new(DURATION_BUCKETS_US),
        }
    }
}

/// Copies of a pool's histograms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistogramsSnapshot {
    /// Query durations (µs).
    pub query: HistogramSnapshot,
    /// Transaction durations (µs).
    pub xact: HistogramSnapshot,
    /// Waits for a server connection (µs).
    pub wait: HistogramSnapshot,
}

impl Default for HistogramsSnapshot {
    fn default() -> Self {
        HistogramsSnapshot {
            query: HistogramSnapshot::empty(DURATION_BUCKETS_US),
            xact: HistogramSnapshot::empty(DURATION_BUCKETS_US),
            wait: HistogramSnapshot::empty(DURATION_BUCKETS_US),
        }
    }
}

impl HistogramsSnapshot {
    /// Adds `other` into this one.
    pub fn add(&mut self, other: &HistogramsSnapshot) {
        self.query.add(&other.query);
        self.xact.add(&other.xact);
        self.wait.add(&other.wait);
    }
}

/// A copy of the counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    /// Times a server connection was assigned to a client (checkouts).
    pub server_assignment_count: u64,
    /// Transactions completed (ReadyForQuery back to idle), including implicit ones.
    pub xact_count: u64,
    /// Queries completed (Query messages and Syncs answered with ReadyForQuery).
    pub query_count: u64,
    /// Bytes received from clients.
    pub received_bytes: u64,
    /// Bytes sent to clients.
    pub sent_bytes: u64,
    /// Time spent in transactions, in microseconds.
    pub xact_time_us: u64,
    /// Time spent in queries, in microseconds.
    pub query_time_us: u64,
    /// Time clients waited for a server connection, in microseconds.
    pub wait_time_us: u64,
    /// Parse messages from clients.
    pub client_parse_count: u64,
    /// Parse messages sent to servers (pgvane prepares a statement again on each server
    /// connection that lacks it in transaction and statement modes).
    pub server_parse_count: u64,
    /// Bind messages from clients.
    pub bind_count: u64,
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

impl PoolStats {
    /// A client waited `d` for a server connection.
    pub fn record_wait(&self, d: Duration) {
        self.wait_time_us.fetch_add(micros(d), Relaxed);
    }

    /// A server connection was assigned to a client after `waited` in the pool (taking a
    /// slot, connecting); zero when an idle one was taken at once.
    pub fn record_assignment(&self, waited: Duration) {
        self.server_assignments.fetch_add(1, Relaxed);
        self.wait_duration.observe(micros(waited));
    }

    /// A transaction of duration `d` completed.
    pub fn record_xact(&self, d: Duration) {
        self.xact_count.fetch_add(1, Relaxed);
        self.xact_time_us.fetch_add(micros(d), Relaxed);
        self.xact_duration.observe(micros(d));
    }

    /// A query of duration `d` completed.
    pub fn record_query(&self, d: Duration) {
        self.query_count.fetch_add(1, Relaxed);
        self.query_time_us.fetch_add(micros(d), Relaxed);
        self.query_duration.observe(micros(d));
    }

    /// Copies of the histograms.
    pub fn histograms(&self) -> HistogramsSnapshot {
        HistogramsSnapshot {
            query: self.query_duration.snapshot(),
            xact: self.xact_duration.snapshot(),
            wait: self.wait_duration.snapshot(),
        }
    }

    /// Traffic relayed: `received` bytes from the client, `sent` bytes to it.
    pub fn add_traffic(&self, received: u64, sent: u64) {
        self.received_bytes.fetch_add(received, Relaxed);
        self.sent_bytes.fetch_add(sent, Relaxed);
    }

    /// Prepared-statement traffic: `[client Parses, server Parses, Binds]`.
    pub fn add_statements(&self, [client_parses, server_parses, binds]: [u64; 3]) {
        self.client_parses.fetch_add(client_parses, Relaxed);
        self.server_parses.fetch_add(server_parses, Relaxed);
        self.binds.fetch_add(binds, Relaxed);
    }

    /// A copy of the counters.
    pub fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            server_assignment_count: self.server_assignments.load(Relaxed),
            xact_count: self.xact_count.load(Relaxed),
            query_count: self.query_count.load(Relaxed),
            received_bytes: self.received_bytes.load(Relaxed),
            sent_bytes: self.sent_bytes.load(Relaxed),
            xact_time_us: self.xact_time_us.load(Relaxed),
            query_time_us: self.query_time_us.load(Relaxed),
            wait_time_us: self.wait_time_us.load(Relaxed),
            client_parse_count: self.client_parses.load(Relaxed),
            server_parse_count: self.server_parses.load(Relaxed),
            bind_count: self.binds.load(Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_add_up() {
        let stats = PoolStats::default();
        stats.record_xact(Duration::from_micros(10));
        stats.record_xact(Duration::from_micros(5));
        stats.record_query(Duration::from_millis(1));
        stats.record_wait(Duration::from_micros(7));
        stats.add_traffic(100, 2000);
        stats.record_assignment(Duration::ZERO);
        stats.record_assignment(Duration::from_micros(7));
        let s = stats.snapshot();
        assert_eq!(s.server_assignment_count, 2);
        let h = stats.histograms();
        assert_eq!((h.xact.count, h.xact.sum, h.query.count), (2, 15, 1));
        assert_eq!((h.wait.count, h.wait.sum), (2, 7), "the wait of 7 µs and one of 0");
        assert_eq!((s.xact_count, s.xact_time_us), (2, 15));
        assert_eq!((s.query_count, s.query_time_us, s.wait_time_us), (1, 1000, 7));
        assert_eq!((s.received_bytes, s.sent_bytes), (100, 2000));
    }
}

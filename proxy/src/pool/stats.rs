//! Counters per pool, for SHOW STATS. Updated by sessions with relaxed atomics: cheap, and
//! exact enough for statistics.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Totals since the pool was created.
#[derive(Debug, Default)]
pub struct PoolStats {
    xact_count: AtomicU64,
    query_count: AtomicU64,
    received_bytes: AtomicU64,
    sent_bytes: AtomicU64,
    xact_time_us: AtomicU64,
    query_time_us: AtomicU64,
    wait_time_us: AtomicU64,
}

/// A copy of the counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
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
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

impl PoolStats {
    /// A client waited `d` for a server connection.
    pub fn record_wait(&self, d: Duration) {
        self.wait_time_us.fetch_add(micros(d), Relaxed);
    }

    /// A transaction of duration `d` completed.
    pub fn record_xact(&self, d: Duration) {
        self.xact_count.fetch_add(1, Relaxed);
        self.xact_time_us.fetch_add(micros(d), Relaxed);
    }

    /// A query of duration `d` completed.
    pub fn record_query(&self, d: Duration) {
        self.query_count.fetch_add(1, Relaxed);
        self.query_time_us.fetch_add(micros(d), Relaxed);
    }

    /// Traffic relayed: `received` bytes from the client, `sent` bytes to it.
    pub fn add_traffic(&self, received: u64, sent: u64) {
        self.received_bytes.fetch_add(received, Relaxed);
        self.sent_bytes.fetch_add(sent, Relaxed);
    }

    /// A copy of the counters.
    pub fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            xact_count: self.xact_count.load(Relaxed),
            query_count: self.query_count.load(Relaxed),
            received_bytes: self.received_bytes.load(Relaxed),
            sent_bytes: self.sent_bytes.load(Relaxed),
            xact_time_us: self.xact_time_us.load(Relaxed),
            query_time_us: self.query_time_us.load(Relaxed),
            wait_time_us: self.wait_time_us.load(Relaxed),
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
        let s = stats.snapshot();
        assert_eq!((s.xact_count, s.xact_time_us), (2, 15));
        assert_eq!((s.query_count, s.query_time_us, s.wait_time_us), (1, 1000, 7));
        assert_eq!((s.received_bytes, s.sent_bytes), (100, 2000));
    }
}

//! Per-database averages over the last stats period (`stats_period_ms`), as PgBouncer computes
//! them for SHOW STATS, SHOW STATS_AVERAGES and its `log_stats` line: counts and bytes per
//! second; transaction, query and wait times per transaction, query and server assignment.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use super::StatsSnapshot;

/// One database's averages over a period.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Average {
    /// Server assignments per second.
    pub server_assignment_count: u64,
    /// Transactions per second.
    pub xact_count: u64,
    /// Queries per second.
    pub query_count: u64,
    /// Bytes received from clients per second.
    pub bytes_received: u64,
    /// Bytes sent to clients per second.
    pub bytes_sent: u64,
    /// Microseconds per transaction.
    pub xact_time: u64,
    /// Microseconds per query.
    pub query_time: u64,
    /// Microseconds of wait per server assignment.
    pub wait_time: u64,
    /// Parse messages from clients per second.
    pub client_parse_count: u64,
    /// Parse messages to servers per second.
    pub server_parse_count: u64,
    /// Bind messages per second.
    pub bind_count: u64,
}

impl Average {
    /// The averages between `old` and `new`, `period` apart.
    pub fn between(old: &StatsSnapshot, new: &StatsSnapshot, period: Duration) -> Average {
        let micros = u64::try_from(period.as_micros()).unwrap_or(u64::MAX);
        if micros == 0 {
            return Average::default();
        }
        let delta = |new: u64, old: u64| new.saturating_sub(old);
        let per_second = |d: u64| u64::try_from(u128::from(d) * 1_000_000 / u128::from(micros)).unwrap_or(u64::MAX);
        let per = |total: u64, count: u64| total.checked_div(count).unwrap_or(0);
        let xacts = delta(new.xact_count, old.xact_count);
        let queries = delta(new.query_count, old.query_count);
        let assignments = delta(new.server_assignment_count, old.server_assignment_count);
        Average {
            server_assignment_count: per_second(assignments),
            xact_count: per_second(xacts),
            query_count: per_second(queries),
            bytes_received: per_second(delta(new.received_bytes, old.received_bytes)),
            bytes_sent: per_second(delta(new.sent_bytes, old.sent_bytes)),
            xact_time: per(delta(new.xact_time_us, old.xact_time_us), xacts),
            query_time: per(delta(new.query_time_us, old.query_time_us), queries),
            wait_time: per(delta(new.wait_time_us, old.wait_time_us), assignments),
            client_parse_count: per_second(delta(new.client_parse_count, old.client_parse_count)),
            server_parse_count: per_second(delta(new.server_parse_count, old.server_parse_count)),
            bind_count: per_second(delta(new.bind_count, old.bind_count)),
        }
    }
}

/// Totals of several snapshots (the pools of one database).
pub fn add(total: &mut StatsSnapshot, s: &StatsSnapshot) {
    total.server_assignment_count += s.server_assignment_count;
    total.xact_count += s.xact_count;
    total.query_count += s.query_count;
    total.received_bytes += s.received_bytes;
    total.sent_bytes += s.sent_bytes;
    total.xact_time_us += s.xact_time_us;
    total.query_time_us += s.query_time_us;
    total.wait_time_us += s.wait_time_us;
    total.client_parse_count += s.client_parse_count;
    total.server_parse_count += s.server_parse_count;
    total.bind_count += s.bind_count;
}

/// The totals at the start of the current period and the averages of the last one, by
/// database. Written once a period, read by the console: never on a statement's path.
#[derive(Debug, Default)]
pub struct Averages {
    inner: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    totals: BTreeMap<String, StatsSnapshot>,
    averages: BTreeMap<String, Average>,
}

impl Averages {
    /// Ends a period of length `period` with these per-database totals; returns the new
    /// averages.
    pub fn roll(&self, totals: BTreeMap<String, StatsSnapshot>, period: Duration) -> BTreeMap<String, Average> {
        let mut state = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let averages: BTreeMap<String, Average> = totals
            .iter()
            .map(|(db, new)| {
                let old = state.totals.get(db).copied().unwrap_or_default();
                (db.clone(), Average::between(&old, new, period))
            })
            .collect();
        state.totals = totals;
        state.averages = averages.clone();
        averages
    }

    /// The averages of the last period for `database` (zero before the first period ends).
    pub fn of(&self, database: &str) -> Average {
        let state = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        state.averages.get(database).copied().unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn averages_are_rates_and_times_per_event_as_in_pgbouncer() {
        let old = StatsSnapshot { xact_count: 10, query_count: 20, ..StatsSnapshot::default() };
        let new = StatsSnapshot {
            server_assignment_count: 40,
            xact_count: 30,
            query_count: 60,
            received_bytes: 2_000,
            sent_bytes: 4_000,
            xact_time_us: 2_000,
            query_time_us: 800,
            wait_time_us: 400,
            client_parse_count: 8,
            server_parse_count: 4,
            bind_count: 100,
        };
        let avg = Average::between(&old, &new, Duration::from_secs(2));
        assert_eq!(
            avg,
            Average {
                server_assignment_count: 20,
                xact_count: 10,
                query_count: 20,
                bytes_received: 1_000,
                bytes_sent: 2_000,
                xact_time: 100,
                query_time: 20,
                wait_time: 10,
                client_parse_count: 4,
                server_parse_count: 2,
                bind_count: 50,
            }
        );
        assert_eq!(Average::between(&new, &new, Duration::from_secs(2)), Average::default(), "an idle period");
        let averages = Averages::default();
        averages.roll(BTreeMap::from([("db".to_owned(), old)]), Duration::from_secs(2));
        let rolled = averages.roll(BTreeMap::from([("db".to_owned(), new)]), Duration::from_secs(2));
        assert_eq!((rolled["db"], averages.of("db"), averages.of("other")), (avg, avg, Average::default()));
    }
}

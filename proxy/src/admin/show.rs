//! The result sets of the SHOW commands. Columns are named as in PgBouncer where they mean
//! the same; every value is text. See docs/admin.md for each column.

use std::collections::HashMap;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use bytes::BytesMut;

use crate::clients::{ClientInfo, ClientState};
use crate::config::Settings;
use crate::endpoint::ServerAddr;
use crate::pool::{Average, ServerInfo, ServerState, StatsSnapshot};
use crate::protocol::messages;
use crate::shared::Shared;

use super::AdminError;

mod backends;
pub use backends::backends;

/// Rows of text values under named columns.
#[derive(Debug)]
pub struct ResultSet {
    columns: &'static [&'static str],
    rows: Vec<Vec<Option<String>>>,
}

impl ResultSet {
    fn new(columns: &'static [&'static str]) -> Self {
        ResultSet { columns, rows: Vec::new() }
    }

    fn push(&mut self, row: Vec<Option<String>>) {
        self.rows.push(row);
    }

    /// The column names.
    pub fn columns(&self) -> &[&'static str] {
        self.columns
    }

    /// The rows.
    pub fn rows(&self) -> &[Vec<Option<String>>] {
        &self.rows
    }

    /// Appends RowDescription, the DataRows and CommandComplete `SHOW`.
    pub fn encode(&self, dst: &mut BytesMut) {
        messages::encode_text_row_description(self.columns, dst);
        for row in &self.rows {
            let values: Vec<Option<&[u8]>> = row.iter().map(|v| v.as_deref().map(str::as_bytes)).collect();
            messages::encode_data_row(&values, dst);
        }
        messages::encode_command_complete("SHOW", dst);
    }
}

fn text(value: impl ToString) -> Option<String> {
    Some(value.to_string())
}

/// A timestamp as PgBouncer prints them: `2024-05-01 12:34:56 UTC`.
fn timestamp(t: SystemTime) -> Option<String> {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    Some(format!("{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC", rem / 3_600, rem % 3_600 / 60, rem % 60))
}

/// `SHOW POOLS`.
pub fn pools(shared: &Shared) -> ResultSet {
    let mut set = ResultSet::new(&[
        "database",
        "user",
        "cl_active",
        "cl_waiting",
        "sv_active",
        "sv_idle",
        "sv_tested",
        "sv_login",
        "maxwait",
        "maxwait_us",
        "pool_mode",
        "node",
    ]);
    let config = shared.config();
    let clients = shared.clients.snapshot();
    let now = Instant::now();
    for pool in shared.pools.list() {
        let mine = || clients.iter().filter(|c| c.database == pool.database && c.user == pool.user);
        let cl_active = mine().filter(|c| matches!(c.state, ClientState::Active | ClientState::Idle)).count();
        let waiting: Vec<&ClientInfo> = mine().filter(|c| c.state == ClientState::Waiting).collect();
        let maxwait = waiting.iter().map(|c| now.duration_since(c.state_since)).max().unwrap_or_default();
        let servers = pool.servers();
        let count = |state: ServerState| servers.iter().filter(|s| s.state == state).count();
        set.push(vec![
            text(&pool.database),
            text(&pool.user),
            text(cl_active),
            text(waiting.len()),
            text(count(ServerState::Active)),
            text(count(ServerState::Idle)),
            text(count(ServerState::Tested)),
            text(count(ServerState::Login)),
            text(maxwait.as_secs()),
            text(maxwait.subsec_micros()),
            text(config.settings.pool_mode.as_str()),
            pool.node.as_ref().map(ToString::to_string),
        ]);
    }
    set
}

/// Every server connection of every pool, with its pool's database, server user and
/// current generation.
fn all_servers(shared: &Shared) -> Vec<(String, String, u64, ServerInfo)> {
    let mut all = Vec::new();
    for pool in shared.pools.list() {
        let (user, generation) = (pool.target().user, pool.generation());
        for server in pool.servers() {
            all.push((pool.database.clone(), user.clone(), generation, server));
        }
    }
    all
}

/// `SHOW CLIENTS`.
pub fn clients(shared: &Shared) -> ResultSet {
    let mut set = ResultSet::new(&[
        "type",
        "user",
        "database",
        "state",
        "addr",
        "port",
        "connect_time",
        "wait",
        "wait_us",
        "link",
        "application_name",
        "id",
        "pinned",
    ]);
    // A client names its server by backend PID; the link column gives the server's ID.
    let server_ids: HashMap<(String, u32), u64> = all_servers(shared)
        .into_iter()
        .filter_map(|(database, _, _, s)| s.remote_pid.map(|pid| ((database, pid), s.id)))
        .collect();
    let now = Instant::now();
    for c in shared.clients.snapshot() {
        let wait = match c.state {
            ClientState::Waiting => now.duration_since(c.state_since),
            _ => Default::default(),
        };
        let link = c.server_pid.and_then(|pid| server_ids.get(&(c.database.clone(), pid)));
        set.push(vec![
            text("C"),
            text(&c.user),
            text(&c.database),
            text(c.state.as_str()),
            text(c.peer.addr_text()),
            text(c.peer.port()),
            timestamp(c.connect_time),
            text(wait.as_secs()),
            text(wait.subsec_micros()),
            link.map(|id| id.to_string()),
            text(&c.application_name),
            text(c.pid),
            c.pinned.clone(),
        ]);
    }
    set
}

/// `SHOW SERVERS`.
pub fn servers(shared: &Shared) -> ResultSet {
    let mut set = ResultSet::new(&[
        "type",
        "user",
        "database",
        "state",
        "addr",
        "port",
        "local_addr",
        "local_port",
        "connect_time",
        "close_needed",
        "link",
        "remote_pid",
        "application_name",
        "id",
    ]);
    let clients: HashMap<(String, u32), ClientInfo> = shared
        .clients
        .snapshot()
        .into_iter()
        .filter_map(|c| c.server_pid.map(|pid| ((c.database.clone(), pid), c)))
        .collect();
    for (database, user, generation, s) in all_servers(shared) {
        let client = s.remote_pid.and_then(|pid| clients.get(&(database.clone(), pid)));
        set.push(vec![
            text("S"),
            text(user),
            text(&database),
            text(s.state.as_str()),
            s.addr.as_ref().map(|a| a.addr_text()),
            s.addr.as_ref().map(|a| a.port().to_string()),
            match &s.addr {
                // pgvane's end of a unix-domain socket has no address (PgBouncer's `unix`).
                Some(ServerAddr::Unix { .. }) => text("unix"),
                _ => s.local_addr.map(|a| a.ip().to_string()),
            },
            s.local_addr.map(|a| a.port().to_string()),
            timestamp(s.connect_time),
            text(u8::from(s.generation != generation)),
            client.map(|c| c.pid.to_string()),
            s.remote_pid.map(|pid| pid.to_string()),
            text(client.map_or("", |c| c.application_name.as_str())),
            text(s.id),
        ]);
    }
    set
}

/// `SHOW DATABASES`.
pub fn databases(shared: &Shared) -> ResultSet {
    let mut set = ResultSet::new(&[
        "name",
        "host",
        "port",
        "database",
        "force_user",
        "pool_size",
        "current_connections",
        "current_client_connections",
        "paused",
    ]);
    let config = shared.config();
    let paused = shared.pools.pause_state();
    let clients = shared.clients.snapshot();
    let servers = all_servers(shared);
    for (name, db) in &config.databases {
        set.push(vec![
            text(name),
            text(&db.host),
            text(db.port),
            text(config.server_dbname(name, db)),
            db.user.clone(),
            text(config.pool_size(db)),
            text(servers.iter().filter(|(database, ..)| database == name).count()),
            text(clients.iter().filter(|c| c.database == *name).count()),
            text(u8::from(paused.covers(name))),
        ]);
    }
    set
}

/// The totals columns of SHOW STATS_TOTALS (SHOW STATS prefixes them with `total_`) and
/// the averages columns of SHOW STATS_AVERAGES (`avg_` in SHOW STATS), as in PgBouncer.
fn totals_row(s: &StatsSnapshot) -> [Option<String>; 11] {
    [
        text(s.server_assignment_count),
        text(s.xact_count),
        text(s.query_count),
        text(s.received_bytes),
        text(s.sent_bytes),
        text(s.xact_time_us),
        text(s.query_time_us),
        text(s.wait_time_us),
        text(s.client_parse_count),
        text(s.server_parse_count),
        text(s.bind_count),
    ]
}

fn averages_row(a: &Average) -> [Option<String>; 11] {
    [
        text(a.server_assignment_count),
        text(a.xact_count),
        text(a.query_count),
        text(a.bytes_received),
        text(a.bytes_sent),
        text(a.xact_time),
        text(a.query_time),
        text(a.wait_time),
        text(a.client_parse_count),
        text(a.server_parse_count),
        text(a.bind_count),
    ]
}

/// `SHOW STATS`: per database, totals since start and averages over the last stats period
/// (`stats_period_ms`), with PgBouncer's columns.
pub fn stats(shared: &Shared) -> ResultSet {
    let mut set = ResultSet::new(&[
        "database",
        "total_server_assignment_count",
        "total_xact_count",
        "total_query_count",
        "total_received",
        "total_sent",
        "total_xact_time",
        "total_query_time",
        "total_wait_time",
        "total_client_parse_count",
        "total_server_parse_count",
        "total_bind_count",
        "avg_server_assignment_count",
        "avg_xact_count",
        "avg_query_count",
        "avg_recv",
        "avg_sent",
        "avg_xact_time",
        "avg_query_time",
        "avg_wait_time",
        "avg_client_parse_count",
        "avg_server_parse_count",
        "avg_bind_count",
    ]);
    for (database, totals) in shared.pools.totals_by_database() {
        let average = shared.averages.of(&database);
        let mut row = vec![text(&database)];
        row.extend(totals_row(&totals));
        row.extend(averages_row(&average));
        set.push(row);
    }
    set
}

/// The columns of SHOW STATS_TOTALS and SHOW STATS_AVERAGES.
const STATS_COLUMNS: &[&str] = &[
    "database",
    "server_assignment_count",
    "xact_count",
    "query_count",
    "bytes_received",
    "bytes_sent",
    "xact_time",
    "query_time",
    "wait_time",
    "client_parse_count",
    "server_parse_count",
    "bind_count",
];

/// `SHOW STATS_TOTALS`: the totals of SHOW STATS.
pub fn stats_totals(shared: &Shared) -> ResultSet {
    let mut set = ResultSet::new(STATS_COLUMNS);
    for (database, totals) in shared.pools.totals_by_database() {
        let mut row = vec![text(&database)];
        row.extend(totals_row(&totals));
        set.push(row);
    }
    set
}

/// `SHOW STATS_AVERAGES`: the averages of SHOW STATS.
pub fn stats_averages(shared: &Shared) -> ResultSet {
    let mut set = ResultSet::new(STATS_COLUMNS);
    for database in shared.pools.totals_by_database().into_keys() {
        let mut row = vec![text(&database)];
        row.extend(averages_row(&shared.averages.of(&database)));
        set.push(row);
    }
    set
}

/// A TOML value as SHOW CONFIG prints it: strings bare, anything else in TOML syntax.
fn config_value(value: Option<&toml::Value>) -> Option<String> {
    match value? {
        toml::Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

/// `SHOW CONFIG`: every `[pgvane]` key, from the `Settings` struct itself.
pub fn config(shared: &Shared) -> Result<ResultSet, AdminError> {
    let mut set = ResultSet::new(&["key", "value", "default", "changeable"]);
    let current = toml::Table::try_from(&shared.config().settings).map_err(AdminError::ShowConfig)?;
    let defaults = toml::Table::try_from(Settings::default()).map_err(AdminError::ShowConfig)?;
    for (key, value) in &current {
        let changeable = if crate::config::RESTART_KEYS.contains(&key.as_str()) { "no" } else { "yes" };
        set.push(vec![text(key), config_value(Some(value)), config_value(defaults.get(key)), text(changeable)]);
    }
    Ok(set)
}

/// `SHOW PLUGINS`: the plugins in force, in chain order, with their counters since they were
/// loaded and the last failed load of each; then a row for each plugin of a configuration that
/// failed to load and is not in force.
pub fn plugins(shared: &Shared) -> ResultSet {
    let mut set = ResultSet::new(&[
        "name",
        "source",
        "digest",
        "loaded_at",
        "calls",
        "rejects",
        "errors",
        "fuel_used",
        "warm_instances",
        "memory_peak_bytes",
        "last_load_error",
        "last_load_error_at",
    ]);
    let mut failures = shared.plugin_failures.snapshot();
    let failure_columns = |failure: Option<crate::lifecycle::Failure>| match failure {
        Some(f) => [text(f.error), timestamp(f.at)],
        None => [text(""), text("")],
    };
    let load = |counter: &std::sync::atomic::AtomicU64| text(counter.load(std::sync::atomic::Ordering::Relaxed));
    for plugin in shared.policy().plugins() {
        let [error, at] = failure_columns(failures.remove(&plugin.settings.name));
        set.push(vec![
            text(&plugin.settings.name),
            text(&plugin.origin.source),
            text(&plugin.origin.digest),
            timestamp(plugin.origin.loaded_at),
            load(&plugin.stats.calls),
            load(&plugin.stats.rejects),
            load(&plugin.stats.errors),
            load(&plugin.stats.fuel_used),
            text(plugin.warm_instances()),
            load(&plugin.stats.memory_peak_bytes),
            error,
            at,
        ]);
    }
    for (name, failure) in failures {
        let source = failure.source.clone();
        let [error, at] = failure_columns(Some(failure));
        set.push(vec![text(name), text(source), text(""), text(""), None, None, None, None, None, None, error, at]);
    }
    set
}

/// `SHOW VERSION`.
pub fn version() -> ResultSet {
    let mut set = ResultSet::new(&["version"]);
    set.push(vec![text(format!("pgvane {}", crate::VERSION))]);
    set
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn timestamps_are_utc_calendar_dates() {
        assert_eq!(timestamp(UNIX_EPOCH).unwrap(), "1970-01-01 00:00:00 UTC");
        let t = UNIX_EPOCH + Duration::from_secs(951_827_696); // a leap day
        assert_eq!(timestamp(t).unwrap(), "2000-02-29 12:34:56 UTC");
        let t = UNIX_EPOCH + Duration::from_secs(1_735_689_599);
        assert_eq!(timestamp(t).unwrap(), "2024-12-31 23:59:59 UTC");
    }

    #[test]
    fn result_sets_encode_as_row_description_rows_and_show() {
        let mut set = ResultSet::new(&["a", "b"]);
        set.push(vec![text(1), None]);
        let mut buf = BytesMut::new();
        set.encode(&mut buf);
        let tags: Vec<u8> =
            std::iter::from_fn(|| crate::protocol::decode_frame(&mut buf, 1 << 20).unwrap()).map(|f| f.tag()).collect();
        assert_eq!(tags, b"TDC");
        assert_eq!((set.columns().len(), set.rows().len()), (2, 1));
    }
}

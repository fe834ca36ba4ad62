//! Ending pgvane's own sessions on a writer that stepped down while still up.
//!
//! A writer can stop claiming the writes and stay up: a multi-writer group's write leader
//! losing an election, a split view (two nodes answering `writer`), a primary turning
//! read-only. Statements for the primary already wait for the new writer, but what pgvane's
//! sessions are running there, or hold open in a transaction, would still commit there. So
//! they are ended the way a fast shutdown ends them: `pg_terminate_backend()` on each of
//! pgvane's server sessions to that node that a client holds, found by backend PID *and*
//! client port (never another application's session; on a unix-domain socket every session's
//! client port is -1, so the PID and the socket kind only). The server ends each with
//! `FATAL 57P01`, and the request path does what it does at any switchover: a statement
//! outside a transaction block runs again on the new writer, a transaction block fails with
//! that error and its client is disconnected, as PGD Proxy disconnects its clients when the
//! write leader changes. Idle pooled connections stay: they hold nothing.
//!
//! The monitor's login needs the right to do so: superuser, or `pg_signal_backend` plus
//! `pg_read_all_stats` (to see the client ports of other roles' sessions). Without it the
//! sessions are left to finish and a warning says so.

use std::time::Duration;

use crate::config::NodeAddr;
use crate::endpoint::ServerAddr;
use crate::pool::{Pools, ServerState};

use super::probe::{Login, Probe};

/// pgvane's server sessions to `node` for `database` that a client holds now, as
/// (backend PID, pgvane's port of the connection, -1 on a unix-domain socket as in
/// `pg_stat_activity`).
pub(super) fn held_sessions(pools: &Pools, database: &str, node: &NodeAddr) -> Vec<(u32, i32)> {
    let mut sessions = Vec::new();
    for pool in pools.of(Some(database)).into_iter().filter(|p| p.node.as_ref() == Some(node)) {
        for server in pool.servers().into_iter().filter(|s| s.state == ServerState::Active) {
            match (server.remote_pid, &server.addr, server.local_addr) {
                // PostgreSQL's client_port of a unix-domain socket session.
                (Some(pid), Some(ServerAddr::Unix { .. }), _) => sessions.push((pid, -1)),
                (Some(pid), _, Some(local)) => sessions.push((pid, i32::from(local.port()))),
                _ => {}
            }
        }
    }
    sessions
}

/// The statement ending `sessions` on the node: one row per session found, saying whether
/// it was ended. (The call is in the select list, not the WHERE clause, where the planner
/// could run it before the filter.)
fn terminate_sql(sessions: &[(u32, i32)]) -> String {
    let pairs: Vec<String> = sessions.iter().map(|(pid, port)| format!("({pid}, {port})")).collect();
    format!("select pg_terminate_backend(pid) from pg_stat_activity where (pid, client_port) in ({})", pairs.join(", "))
}

/// Ends pgvane's sessions held on `node`, the writer that stepped down, over the monitor's
/// connection to it. Failures are logged: the sessions then finish on their own.
pub(super) async fn end_sessions(
    database: &str,
    pools: &Pools,
    node: &NodeAddr,
    probe: &mut Probe,
    login: &Login,
    timeout: Duration,
) {
    let sessions = held_sessions(pools, database, node);
    if sessions.is_empty() {
        return;
    }
    match probe.query(node, login, timeout, &terminate_sql(&sessions)).await {
        Ok(rows) => {
            let ended = rows.iter().filter(|row| row.first() == Some(&Some("t".to_owned()))).count();
            if ended == sessions.len() {
                tracing::info!(database, %node, sessions = ended, "the writer stepped down; pgvane's sessions on it ended");
            } else {
                tracing::warn!(
                    database,
                    %node,
                    held = sessions.len(),
                    ended,
                    "the writer stepped down; not every session on it could be ended (finished already, or the monitor lacks pg_signal_backend and pg_read_all_stats)"
                );
            }
        }
        Err(error) => tracing::warn!(
            database,
            %node,
            %error,
            "the writer stepped down; its sessions could not be ended and finish there"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_are_named_by_pid_and_port() {
        let sql = terminate_sql(&[(4242, 50000), (4243, 50001)]);
        assert_eq!(
            sql,
            "select pg_terminate_backend(pid) from pg_stat_activity \
             where (pid, client_port) in ((4242, 50000), (4243, 50001))"
        );
    }
}

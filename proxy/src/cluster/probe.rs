//! The monitor's connection to one node: logs in once, then runs the role-and-position
//! check, or the `role_query` when the cluster has one (and, on the writer, the
//! `topology_query`), on it until it fails.

use std::time::Duration;

use bytes::BytesMut;
use thiserror::Error;
use tokio::io::AsyncWriteExt;

use crate::config::NodeAddr;
use crate::pool::{Cleartext, ServerConn, ServerCredential, ServerError, ServerTarget};
use crate::protocol::messages::{self, tag, ErrorResponse};
use crate::tls::ServerTls;

use super::topology::{Answer, Observation};

/// One statement: is the node in recovery, and its WAL position in bytes (the writer's
/// current position, or what a replica has replayed). Works on any PostgreSQL 10+.
const CHECK_SQL: &str = "select pg_is_in_recovery(), \
     (case when pg_is_in_recovery() then pg_last_wal_replay_lsn() else pg_current_wal_lsn() end) - '0/0'::pg_lsn";

/// Why a check failed.
#[derive(Debug, Error)]
pub enum ProbeError {
    /// Connecting, logging in or talking to the node failed.
    #[error(transparent)]
    Server(#[from] ServerError),
    /// The node answered the check with an error.
    #[error("the check failed: {0}")]
    Query(ErrorResponse),
    /// The check took longer than allowed.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The answer was not what the check asks for.
    #[error("unexpected answer to the check: {0}")]
    Answer(String),
}

/// What the monitor logs in as.
#[derive(Debug, Clone)]
pub struct Login {
    /// Server user.
    pub user: String,
    /// Its secret.
    pub credential: ServerCredential,
    /// Database name on the server.
    pub dbname: String,
    /// TLS towards the node (`server_tls_*`, as for the pools).
    pub tls: ServerTls,
    /// Clear-text passwords over plain TCP (`server_allow_cleartext_password`).
    pub cleartext: Cleartext,
}

/// A monitor connection to one node, opened on first use and reopened after a failure.
#[derive(Debug, Default)]
pub struct Probe {
    conn: Option<ServerConn>,
}

impl Probe {
    /// Checks `node`: its role and WAL position, or its answer to `role_query` when given.
    /// Any failure closes the connection.
    pub async fn check(
        &mut self,
        node: &NodeAddr,
        login: &Login,
        timeout: Duration,
        role_query: Option<&str>,
    ) -> Observation {
        let check = async {
            match role_query {
                Some(sql) => self.ask_role(node, login, timeout, sql).await,
                None => self.check_inner(node, login, timeout).await,
            }
        };
        match tokio::time::timeout(timeout, check).await {
            Ok(Ok(observation)) => observation,
            Ok(Err(e)) => {
                self.conn = None;
                Observation::Failed(e.to_string())
            }
            Err(_) => {
                self.conn = None;
                Observation::Failed(ProbeError::Timeout(timeout).to_string())
            }
        }
    }

    async fn check_inner(
        &mut self,
        node: &NodeAddr,
        login: &Login,
        timeout: Duration,
    ) -> Result<Observation, ProbeError> {
        let rows = self.query(node, login, timeout, CHECK_SQL).await?;
        let row = rows.first().ok_or_else(|| ProbeError::Answer("no row".into()))?;
        let (Some(Some(in_recovery)), Some(lsn)) = (row.first(), row.get(1)) else {
            return Err(ProbeError::Answer(format!("{row:?}")));
        };
        // A standby that has replayed nothing yet reports no position: 0.
        let lsn = match lsn.as_deref() {
            None => 0,
            Some(text) => text
                .split('.')
                .next()
                .and_then(|n| n.parse::<u64>().ok())
                .ok_or_else(|| ProbeError::Answer(format!("WAL position {text:?}")))?,
        };
        match in_recovery.as_str() {
            "t" => Ok(Observation::Replica { replayed: lsn }),
            "f" => Ok(Observation::Primary { lsn }),
            other => Err(ProbeError::Answer(format!("pg_is_in_recovery() = {other:?}"))),
        }
    }

    /// Runs the `role_query` and reads its answer (see [`role_answer`]).
    async fn ask_role(
        &mut self,
        node: &NodeAddr,
        login: &Login,
        timeout: Duration,
        sql: &str,
    ) -> Result<Observation, ProbeError> {
        let rows = self.query(node, login, timeout, sql).await?;
        role_answer(&rows).map(Observation::Answered).map_err(ProbeError::Answer)
    }

    /// Runs `sql` (simple protocol) and returns its rows as text, logging in first if needed.
    pub async fn query(
        &mut self,
        node: &NodeAddr,
        login: &Login,
        timeout: Duration,
        sql: &str,
    ) -> Result<Vec<Vec<Option<String>>>, ProbeError> {
        let reusable = self.conn.take().and_then(|mut conn| conn.is_healthy().then_some(conn));
        let mut conn = match reusable {
            Some(conn) => conn,
            None => {
                let target = ServerTarget {
                    host: node.host.clone(),
                    port: node.port,
                    dbname: login.dbname.clone(),
                    user: login.user.clone(),
                };
                ServerConn::connect(&target, &login.credential, &login.tls, timeout, 1, login.cleartext).await?
            }
        };
        let result = query_rows(&mut conn, sql).await;
        if !matches!(result, Err(ProbeError::Server(_))) {
            self.conn = Some(conn);
        }
        result
    }
}

/// The answer to a `role_query`: exactly one row whose first column is `writer`,
/// `replica` or `none` (any case, spaces around ignored).
fn role_answer(rows: &[Vec<Option<String>>]) -> Result<Answer, String> {
    let [row] = rows else {
        return Err(format!("role_query returned {} rows; it must return one", rows.len()));
    };
    match row.first() {
        Some(Some(text)) => match text.trim().to_ascii_lowercase().as_str() {
            "writer" => Ok(Answer::Writer),
            "replica" => Ok(Answer::Replica),
            "none" => Ok(Answer::None),
            _ => Err(format!("role_query answered {text:?}; it must answer writer, replica or none")),
        },
        Some(None) => Err("role_query answered NULL; it must answer writer, replica or none".into()),
        None => Err("role_query returned a row with no column".into()),
    }
}

/// Runs `sql` on an idle connection and collects the text of its rows; the connection is
/// idle again afterwards unless a server error is returned.
async fn query_rows(conn: &mut ServerConn, sql: &str) -> Result<Vec<Vec<Option<String>>>, ProbeError> {
    let mut out = BytesMut::new();
    messages::encode_query(sql, &mut out);
    conn.stream.write_all(&out).await.map_err(ServerError::from)?;
    let mut rows = Vec::new();
    let mut error = None;
    loop {
        let frame = conn.read_frame().await?;
        match frame.tag() {
            tag::DATA_ROW => {
                let row = messages::parse_data_row(frame.body()).map_err(ServerError::from)?;
                rows.push(row.iter().map(|v| v.map(|v| String::from_utf8_lossy(v).into_owned())).collect());
            }
            tag::ERROR_RESPONSE => {
                error = Some(ErrorResponse::parse(frame.body()).map_err(ServerError::from)?);
            }
            tag::PARAMETER_STATUS => conn.note_parameter(&frame)?,
            tag::READY_FOR_QUERY => {
                return match error {
                    Some(e) => Err(ProbeError::Query(e)),
                    None => Ok(rows),
                }
            }
            tag::COPY_IN_RESPONSE | tag::COPY_OUT_RESPONSE | tag::COPY_BOTH_RESPONSE => {
                return Err(ServerError::Unexpected(frame.tag() as char).into())
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(cells: &[&[Option<&str>]]) -> Vec<Vec<Option<String>>> {
        cells.iter().map(|row| row.iter().map(|c| c.map(str::to_owned)).collect()).collect()
    }

    #[test]
    fn a_role_answer_is_one_row_naming_a_role() {
        assert_eq!(role_answer(&rows(&[&[Some("writer")]])), Ok(Answer::Writer));
        assert_eq!(role_answer(&rows(&[&[Some(" Replica "), Some("ignored")]])), Ok(Answer::Replica));
        assert_eq!(role_answer(&rows(&[&[Some("none")]])), Ok(Answer::None));
        for (bad, says) in [
            (rows(&[]), "0 rows"),
            (rows(&[&[Some("writer")], &[Some("writer")]]), "2 rows"),
            (rows(&[&[Some("leader")]]), "\"leader\""),
            (rows(&[&[Some("t")]]), "\"t\""),
            (rows(&[&[None]]), "NULL"),
            (rows(&[&[]]), "no column"),
        ] {
            let err = role_answer(&bad).unwrap_err();
            assert!(err.contains(says), "{bad:?}: {err}");
        }
    }
}

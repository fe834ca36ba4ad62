//! `pgvane plugin test`: runs one plugin offline over a file of queries and prints its verdict on
//! each, so a policy author can check a new version against captured traffic before deploying
//! it. No server, no network: the same host, limits and verdict checks as the proxy.
//!
//! Input, detected line by line:
//! - a PostgreSQL log: `… user@db LOG:  statement: SQL` (simple protocol), `… LOG:  execute
//!   <name>: SQL` (extended protocol: the plugin sees a Parse), `duration: … statement: …`;
//!   continuation lines (starting with a tab) belong to the statement above; other log lines
//!   are skipped. The user and database come from a `user@db` word before `LOG:`
//!   (`log_line_prefix` with `%u@%d`, Debian's default).
//! - otherwise one query per line, optionally prefixed by `[user@database]`; lines starting
//!   with `--` are comments, except `-- pgvane: key=value …` which sets `user`, `database`,
//!   `application_name`, `client_addr`, `in_transaction` (true/false) or `message`
//!   (simple/parse) for the lines after it.
//!
//! Output: one line per query, `<n>\t<verdict>\t<query>`, tab-separated, with tabs, newlines
//! and backslashes in the SQL escaped (`\t`, `\n`, `\\`). Verdicts: `pass`, `route
//! database=<name>`, `route primary`, `route replica`, `rewrite <sql>`, `route … rewrite
//! <sql>`, `reject <sqlstate> <message>`. A plugin error shows as `reject 58000 policy plugin
//! … failed: …` (the test runs the plugin with `on_error = "reject"`). Saved output is an
//! expectation file: `--expect` compares each query's verdict with the line of the same `<n>`
//! (the query column is not compared).

use std::collections::BTreeMap;

use crate::policy::{Decision, Request, Route};

/// Who sends a query and how, as the plugin's context shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sender {
    pub user: String,
    pub database: String,
    pub application_name: String,
    pub client_addr: String,
    pub in_transaction: bool,
    /// `None`: a simple Query; `Some(name)`: a Parse of the statement `name`.
    pub parse: Option<String>,
}

impl Default for Sender {
    fn default() -> Self {
        Sender {
            user: "postgres".into(),
            database: "postgres".into(),
            application_name: String::new(),
            client_addr: "127.0.0.1".into(),
            in_transaction: false,
            parse: None,
        }
    }
}

/// One query to test.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    /// Where it came from (`file:line`), for messages.
    pub at: String,
    pub sender: Sender,
    pub sql: String,
}

impl Query {
    /// The request the chain gets; `session_id` is the query's number.
    pub fn request(&self, session_id: u32) -> Request<'_> {
        Request {
            user: &self.sender.user,
            database: &self.sender.database,
            application_name: &self.sender.application_name,
            client_addr: self.sender.client_addr.clone(),
            session_id,
            sql: &self.sql,
            in_transaction: self.sender.in_transaction,
            parse: self.sender.parse.as_deref(),
        }
    }
}

/// Reads the queries of `text` (named `file` in messages); `defaults` is who sends them unless
/// the text says otherwise.
pub fn parse_queries(file: &str, text: &str, defaults: &Sender) -> Result<Vec<Query>, String> {
    let mut queries: Vec<Query> = Vec::new();
    let mut sender = defaults.clone();
    // Continuation lines extend the last statement of a log.
    let mut in_log_statement = false;
    for (i, line) in text.lines().enumerate() {
        let at = format!("{file}:{}", i + 1);
        if let Some(rest) = line.strip_prefix('\t') {
            if in_log_statement {
                if let Some(last) = queries.last_mut() {
                    last.sql.push('\n');
                    last.sql.push_str(rest);
                }
                continue;
            }
        }
        in_log_statement = false;
        if let Some(query) = log_statement(line, defaults) {
            queries.push(Query { at, ..query });
            in_log_statement = true;
            continue;
        }
        if is_log_line(line) {
            continue;
        }
        let trimmed = line.trim();
        if let Some(directive) = trimmed.strip_prefix("-- pgvane:") {
            apply_directive(&mut sender, directive).map_err(|e| format!("{at}: {e}"))?;
            continue;
        }
        if trimmed.is_empty() || trimmed.starts_with("--") {
            continue;
        }
        let (query_sender, sql) = match trimmed.strip_prefix('[').and_then(|r| r.split_once(']')) {
            Some((who, sql)) => {
                let (user, database) =
                    who.split_once('@').ok_or_else(|| format!("{at}: expected [user@database], found [{who}]"))?;
                (Sender { user: user.into(), database: database.into(), ..sender.clone() }, sql.trim())
            }
            None => (sender.clone(), trimmed),
        };
        queries.push(Query { at, sender: query_sender, sql: sql.to_owned() });
    }
    Ok(queries)
}

/// `-- pgvane: key=value …`.
fn apply_directive(sender: &mut Sender, directive: &str) -> Result<(), String> {
    for pair in directive.split_whitespace() {
        let (key, value) = pair.split_once('=').ok_or_else(|| format!("expected key=value, found {pair:?}"))?;
        match key {
            "user" => sender.user = value.into(),
            "database" => sender.database = value.into(),
            "application_name" => sender.application_name = value.into(),
            "client_addr" => sender.client_addr = value.into(),
            "in_transaction" => {
                sender.in_transaction =
                    value.parse().map_err(|_| format!("in_transaction: {value:?} is not true/false"))?
            }
            "message" => {
                sender.parse = match value {
                    "simple" => None,
                    "parse" => Some(String::new()),
                    _ => return Err(format!("message: {value:?} is not simple or parse")),
                }
            }
            _ => {
                return Err(format!(
                    "unknown key {key:?} (user, database, application_name, client_addr, in_transaction, message)"
                ))
            }
        }
    }
    Ok(())
}

/// True for a line of a PostgreSQL log (a severity followed by two spaces).
fn is_log_line(line: &str) -> bool {
    ["LOG:  ", "ERROR:  ", "STATEMENT:  ", "DETAIL:  ", "HINT:  ", "WARNING:  ", "FATAL:  ", "CONTEXT:  "]
        .iter()
        .any(|s| line.contains(s))
}

/// The statement a PostgreSQL log line records, if it records one.
fn log_statement(line: &str, defaults: &Sender) -> Option<Query> {
    let (prefix, message) = line.split_once("LOG:  ")?;
    // `duration: 0.1 ms  statement: …` when log_min_duration_statement logs it.
    let message = match message.split_once("  ") {
        Some((duration, rest)) if duration.starts_with("duration: ") => rest,
        _ => message,
    };
    let (parse, sql) = if let Some(sql) = message.strip_prefix("statement: ") {
        (None, sql)
    } else {
        let rest = message.strip_prefix("execute ")?;
        let (name, sql) = rest.split_once(": ")?;
        let name = if name == "<unnamed>" { "" } else { name };
        (Some(name.to_owned()), sql)
    };
    let mut sender = Sender { parse, ..defaults.clone() };
    if let Some((user, database)) = prefix.split_whitespace().rev().find_map(|w| w.split_once('@')) {
        if !user.is_empty() && !database.is_empty() && !user.starts_with('[') {
            sender.user = user.into();
            sender.database = database.into();
        }
    }
    Some(Query { at: String::new(), sender, sql: sql.to_owned() })
}

/// A decision as one line of output.
pub fn verdict(decision: &Decision) -> String {
    match decision {
        Decision::Run { route: None, sql: None } => "pass".into(),
        Decision::Run { route, sql } => {
            let mut words = Vec::new();
            match route {
                Some(Route::Database(name)) => words.push(format!("route database={name}")),
                Some(Route::Primary) => words.push("route primary".into()),
                Some(Route::Replica) => words.push("route replica".into()),
                None => {}
            }
            if let Some(sql) = sql {
                words.push(format!("rewrite {}", escape(sql)));
            }
            words.join(" ")
        }
        Decision::Reject(error) => format!("reject {} {}", error.code(), escape(error.message())),
    }
}

/// Tabs, newlines and backslashes escaped, so a query or verdict stays one field of one line.
pub fn escape(text: &str) -> String {
    text.replace('\\', "\\\\").replace('\t', "\\t").replace('\n', "\\n").replace('\r', "\\r")
}

/// The verdicts an expectation file holds, by query number.
pub fn parse_expectations(text: &str) -> Result<BTreeMap<usize, String>, String> {
    let mut expected = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        let mut fields = line.split('\t');
        let (Some(n), Some(verdict)) = (fields.next(), fields.next()) else {
            return Err(format!("line {}: expected <n><TAB><verdict>[<TAB><query>]", i + 1));
        };
        let n: usize = n.trim().parse().map_err(|_| format!("line {}: {n:?} is not a query number", i + 1))?;
        expected.insert(n, verdict.to_owned());
    }
    Ok(expected)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::messages::ErrorResponse;

    #[test]
    fn plain_lines_with_prefixes_directives_and_comments() {
        let text = "SELECT 1\n\n-- a comment\n[alice@sales] SELECT * FROM tableb\n\
                    -- pgvane: user=bob database=app in_transaction=true message=parse\nSELECT $1\n";
        let q = parse_queries("q.sql", text, &Sender::default()).unwrap();
        assert_eq!(q.len(), 3);
        assert_eq!(
            (q[0].sql.as_str(), q[0].sender.user.as_str(), q[0].at.as_str()),
            ("SELECT 1", "postgres", "q.sql:1")
        );
        assert_eq!((q[1].sender.user.as_str(), q[1].sender.database.as_str()), ("alice", "sales"));
        assert_eq!(q[1].sql, "SELECT * FROM tableb");
        assert_eq!((q[2].sender.user.as_str(), q[2].sender.in_transaction), ("bob", true));
        assert_eq!(q[2].sender.parse.as_deref(), Some(""));
        assert!(parse_queries("q", "-- pgvane: colour=red\n", &Sender::default()).unwrap_err().contains("colour"));
        assert!(parse_queries("q", "[nobody] SELECT 1\n", &Sender::default()).unwrap_err().contains("user@database"));
    }

    #[test]
    fn postgresql_log_statements_with_users_and_continuations() {
        let log = "2026-11-22 10:00:00.001 UTC [41] alice@app LOG:  statement: SELECT *\n\
                   \tFROM tableb\n\
                   2026-11-22 10:00:00.002 UTC [42] bob@sales LOG:  execute <unnamed>: SELECT $1\n\
                   2026-11-22 10:00:00.003 UTC [42] bob@sales DETAIL:  parameters: $1 = '7'\n\
                   2026-11-22 10:00:00.004 UTC [43] carol@app LOG:  duration: 0.101 ms  statement: SELECT 2\n\
                   2026-11-22 10:00:00.005 UTC [44] LOG:  checkpoint starting: time\n\
                   2026-11-22 10:00:00.006 UTC [45] dave@app LOG:  execute s1: INSERT INTO t VALUES ($1)\n";
        let q = parse_queries("pg.log", log, &Sender::default()).unwrap();
        let got: Vec<(&str, &str, Option<&str>, &str)> = q
            .iter()
            .map(|q| (q.sender.user.as_str(), q.sender.database.as_str(), q.sender.parse.as_deref(), q.sql.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                ("alice", "app", None, "SELECT *\nFROM tableb"),
                ("bob", "sales", Some(""), "SELECT $1"),
                ("carol", "app", None, "SELECT 2"),
                ("dave", "app", Some("s1"), "INSERT INTO t VALUES ($1)"),
            ]
        );
    }

    #[test]
    fn verdicts_print_on_one_line_and_read_back_as_expectations() {
        let run = |route, sql: Option<&str>| Decision::Run { route, sql: sql.map(str::to_owned) };
        assert_eq!(verdict(&run(None, None)), "pass");
        assert_eq!(verdict(&run(Some(Route::Database("dev.1".into())), None)), "route database=dev.1");
        assert_eq!(
            verdict(&run(Some(Route::Replica), Some("SELECT\t1\nFROM x"))),
            "route replica rewrite SELECT\\t1\\nFROM x"
        );
        assert_eq!(verdict(&Decision::Reject(ErrorResponse::error("42501", "no"))), "reject 42501 no");
        let expected = parse_expectations("# saved\n1\tpass\tSELECT 1\n2\treject 42501 no\n").unwrap();
        assert_eq!(expected.get(&1).map(String::as_str), Some("pass"));
        assert_eq!(expected.get(&2).map(String::as_str), Some("reject 42501 no"));
        assert!(parse_expectations("one\tpass\n").is_err());
    }
}

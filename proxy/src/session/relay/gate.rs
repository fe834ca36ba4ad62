//! The one gate: every client message that carries SQL, names a prepared statement or calls
//! a function passes here before anything of it reaches a server.
//!
//! - The SQL of a Query or Parse is decoded from the client's `client_encoding` (bytes that
//!   are not in it fail the message with 22021, as PostgreSQL does); plugins and the session
//!   tracker see UTF-8, and a rewrite goes back into the client encoding (22P05 when it has a
//!   character the encoding lacks). Statements nobody rewrote are forwarded byte for byte.
//! - A Query or Parse is judged by the policy chain in force; with plugins loaded, a
//!   statement longer than `policy_max_sql_bytes` is refused (54000) before any plugin runs,
//!   so padding cannot exhaust a plugin into letting it through.
//! - A Bind or Describe of a statement whose verdict an earlier chain took is judged again by
//!   the chain in force, once per statement and chain (a RELOAD reaches prepared statements).
//! - A FunctionCall is refused (42501) unless `function_calls` allows it.
//! - The router then places the message on a server.
//!
//! What a statement does to the session (settings, statements, state that cannot follow the
//! client) is tracked when it runs (a Query when it is sent, a prepared statement at each
//! Bind), by [`Relay::track_statement`], so that it is noted on the server it runs on.

use std::borrow::Cow;
use std::collections::BTreeMap;

use bytes::BytesMut;

use crate::policy::{Decision, Request, Route};
use crate::protocol::messages::{self, ErrorResponse};
use crate::protocol::{ClientEncoding, EncodedText, Frame, FrontendMessage, Parse, Target};

use super::super::pipeline::{Condition, Kind, Undo};
use super::super::router::Placement;
use super::super::sql::StateCommand;
use super::{Decided, End, Relay};

/// The chain's verdict on one statement.
enum Verdict {
    /// It runs: routed if `route` is set, rewritten if `sql` is.
    Run { route: Option<Route>, sql: Option<String> },
    /// Refused with this error.
    Refused(ErrorResponse),
}

impl Relay<'_> {
    /// The SQL of a Query or Parse as text, decoded from the client encoding (`None` for
    /// other messages). `Err`: it is not in the client encoding; the message failed as
    /// PostgreSQL fails it and the client has been answered.
    pub(super) fn statement_text<'m>(&mut self, message: &FrontendMessage<'m>) -> Result<Option<Cow<'m, str>>, ()> {
        let (kind, sql) = match message {
            FrontendMessage::Query(sql) => (Kind::Query, *sql),
            FrontendMessage::Parse(parse) => (Kind::Parse, parse.query),
            _ => return Ok(None),
        };
        match self.encoding.decode(sql) {
            Ok(text) => Ok(Some(text)),
            Err(error) => {
                tracing::debug!(%error, "statement not in the client encoding");
                self.fail(kind, error.to_error_response());
                Err(())
            }
        }
    }

    /// Where a Query, Parse, Bind, Describe, Close or FunctionCall runs (`text`: the SQL of a
    /// Query or Parse, decoded). `None`: it was refused and the client has been answered.
    pub(super) async fn gate(
        &mut self,
        message: &FrontendMessage<'_>,
        text: Option<&str>,
    ) -> Result<Option<Decided>, End> {
        let sql = text.unwrap_or_default();
        let decided = match message {
            FrontendMessage::Query(_) => self.judge_and_place(Kind::Query, sql, None).await,
            FrontendMessage::Parse(parse) => self.judge_and_place(Kind::Parse, sql, Some(parse.name)).await,
            FrontendMessage::Bind(bind) => self.recheck_statement(Kind::Bind, bind.statement).await,
            // pgvane answers a pooled client's Close of a named statement itself.
            FrontendMessage::Close(Target::Statement, name) if !self.pooled() || name.is_empty() => {
                Some(self.unchanged(self.router.statement(name)))
            }
            FrontendMessage::Describe(Target::Statement, name) => self.recheck_statement(Kind::Describe, name).await,
            FrontendMessage::FunctionCall { oid } => {
                let config = self.shared.config();
                let plugins = self.shared.policy().plugins().len();
                if config.settings.function_calls_allowed(plugins) {
                    Some(self.unchanged(self.router.here()))
                } else {
                    tracing::info!(oid, "fastpath function call refused");
                    let message = format!(
                        "fastpath function calls are not allowed (function OID {oid}): policy plugins cannot judge them; set function_calls = \"allow\" to permit them"
                    );
                    self.fail(Kind::FunctionCall, ErrorResponse::error("42501", message));
                    None
                }
            }
            _ => Some(self.unchanged(self.router.here())),
        };
        Ok(decided)
    }

    fn unchanged(&self, placement: Placement) -> Decided {
        Decided { placement, sql: None, judged_by: None }
    }

    /// Judges a statement by the chain in force and places it on a server. `None`: refused,
    /// and the client answered.
    async fn judge_and_place(&mut self, kind: Kind, sql: &str, parse: Option<&str>) -> Option<Decided> {
        let (verdict, generation) = self.judge(sql, parse).await;
        let (route, sql) = match verdict {
            Verdict::Run { route, sql } => (route, sql),
            Verdict::Refused(error) => {
                self.fail(kind, error);
                return None;
            }
        };
        let sql = match sql.map(|sql| EncodedText::new(sql, self.encoding)).transpose() {
            Ok(sql) => sql,
            Err(error) => {
                tracing::info!(%error, "rewritten statement not representable in the client encoding");
                self.fail(kind, error.to_error_response());
                return None;
            }
        };
        let in_transaction = self.in_transaction();
        let signals = self.handle.signals.clone();
        match self.router.place(self.shared, &signals, route.as_ref(), in_transaction).await {
            Ok(placement) => Some(Decided { placement, sql, judged_by: Some(generation) }),
            Err(error) => {
                self.fail(kind, error);
                None
            }
        }
    }

    /// The chain's verdict on a statement's SQL, and the generation of the chain that gave it.
    async fn judge(&self, sql: &str, parse: Option<&str>) -> (Verdict, u64) {
        let chain = self.shared.policy();
        let generation = chain.generation();
        if chain.is_empty() {
            return (Verdict::Run { route: None, sql: None }, generation);
        }
        let config = self.shared.config();
        let limit = config.settings.policy_max_sql_bytes;
        if sql.len() > limit {
            tracing::info!(bytes = sql.len(), limit, "statement refused: longer than policy_max_sql_bytes");
            let message = format!(
                "statement of {} bytes is longer than policy_max_sql_bytes ({limit}): the policy plugins cannot judge it",
                sql.len()
            );
            return (Verdict::Refused(ErrorResponse::error("54000", message)), generation);
        }
        let request = Request {
            user: &self.identity.user,
            database: &self.identity.database,
            application_name: &self.identity.application_name,
            client_addr: self.identity.client_addr.clone(),
            session_id: self.handle.pid,
            sql,
            in_transaction: self.in_transaction(),
            parse,
        };
        let verdict = match chain.decide(&request, |db| config.databases.contains_key(db)).await {
            Decision::Run { route, sql } => Verdict::Run { route, sql },
            Decision::Reject(error) => Verdict::Refused(error),
        };
        (verdict, generation)
    }

    /// A Bind or Describe of the client's statement `name`: it runs where the statement was
    /// prepared, unless the chain in force is not the one that decided it; then the statement
    /// is judged again (a rejection fails this message with the plugin's error) and placed
    /// where the new verdict says.
    async fn recheck_statement(&mut self, kind: Kind, name: &str) -> Option<Decided> {
        let generation = self.shared.policy().generation();
        let stale = match self.statements.get(name) {
            Some(statement) if statement.decided_by != generation => statement.parse.clone(),
            _ => return Some(self.unchanged(self.router.statement(name))),
        };
        let Some(parse) = recorded_parse(&stale) else {
            return Some(self.unchanged(self.router.statement(name)));
        };
        tracing::debug!(statement = name, "the policy changed since the statement was prepared; deciding it again");
        let sql = match self.encoding.decode(parse.query) {
            Ok(sql) => sql,
            Err(error) => {
                self.fail(kind, error.to_error_response());
                return None;
            }
        };
        self.judge_and_place(kind, &sql, Some(parse.name)).await
    }

    /// Notes what a statement about to run does to the session: in the pooled modes the
    /// settings it changes (read back once it has run), state that cannot follow the client
    /// (its server connection is then reset, or closed after a LOAD, before anyone else gets
    /// it), and the statements every server shares going stale (DEALLOCATE ALL, DISCARD ALL);
    /// in every mode, the prepared statements it deallocates.
    pub(super) fn track_statement(&mut self, commands: &[StateCommand]) {
        if self.pooled() {
            for command in commands {
                let condition = match command {
                    StateCommand::Pin(reason) => {
                        self.pin(*reason);
                        continue;
                    }
                    StateCommand::Listen(_) | StateCommand::Unlisten(_) | StateCommand::UnlistenAll => {
                        // The server connection listens too (reset before anyone else gets
                        // it); the client's notifications come from the pool's listener.
                        self.follow_channels(command);
                        Condition::NeedsReset
                    }
                    StateCommand::SessionState => Condition::NeedsReset,
                    StateCommand::Load => Condition::Unusable,
                    StateCommand::DeallocateAll | StateCommand::DiscardAll => {
                        // The client means to drop plans it thinks stale (psycopg does so after
                        // DDL): the shared copies are prepared again before their next use.
                        self.shared.pools.statement_epoch.invalidate_all();
                        if *command == StateCommand::DiscardAll {
                            self.follow_channels(&StateCommand::UnlistenAll);
                        }
                        self.settings.observe(command);
                        continue;
                    }
                    _ => {
                        self.settings.observe(command);
                        continue;
                    }
                };
                if self.pipeline.condition < condition {
                    tracing::debug!(
                        ?condition,
                        "client uses session state that cannot be carried; its server connection will be reset or closed"
                    );
                }
                self.pipeline.worsen(condition);
            }
        }
        for command in commands {
            match command {
                StateCommand::DeallocateAll | StateCommand::DiscardAll => {
                    self.statements.clear();
                    self.router.forget_statements();
                }
                StateCommand::Deallocate(name) => {
                    self.statements.remove(name);
                    self.router.forget_statement(name);
                }
                _ => {}
            }
        }
    }

    /// A pooled client's LISTEN or UNLISTEN, for the pool's listening connection.
    fn follow_channels(&mut self, command: &StateCommand) {
        let notifications = &self.shared.pools.notifications;
        let client = self.handle.pid;
        match (command, &self.notifications) {
            (StateCommand::Listen(channel), None) => {
                let (subscriber, receiver) = tokio::sync::mpsc::unbounded_channel();
                let pool = self.router.current().clone();
                self.listening.push(notifications.listen(&pool, client, channel, subscriber.clone()));
                self.notifications = Some((pool, subscriber, receiver));
            }
            (StateCommand::Listen(channel), Some((pool, subscriber, _))) => {
                self.listening.push(notifications.listen(pool, client, channel, subscriber.clone()))
            }
            (StateCommand::Unlisten(channel), Some((pool, _, _))) => notifications.unlisten(pool, client, channel),
            (StateCommand::UnlistenAll, Some((pool, _, _))) => notifications.unlisten_all(pool, client),
            _ => {}
        }
    }

    /// Waits (bounded by `server_connect_timeout_ms`) until the pool's listener listens on
    /// the channels of the LISTEN about to run.
    pub(super) async fn wait_for_listener(&mut self) {
        let timeout = self.shared.config().settings.server_connect_timeout();
        for listening in std::mem::take(&mut self.listening) {
            if tokio::time::timeout(timeout, listening).await.is_err() {
                tracing::warn!("the pool's listening connection did not listen in time; notifications may be missed");
            }
        }
    }

    /// A pooled client's Query made only of DEALLOCATE statements for its own statements is
    /// answered by pgvane: those statements live under other names on the servers.
    pub(super) fn answer_deallocates(&mut self, commands: &[StateCommand]) -> bool {
        let all_known = !commands.is_empty()
            && commands.iter().all(|c| match c {
                StateCommand::DeallocateAll => true,
                StateCommand::Deallocate(name) => self.statements.contains(name),
                _ => false,
            });
        if !all_known {
            return false;
        }
        for command in commands {
            let command_tag = match command {
                StateCommand::Deallocate(name) => {
                    self.statements.remove(name);
                    self.router.forget_statement(name);
                    "DEALLOCATE"
                }
                _ => {
                    self.statements.clear();
                    self.router.forget_statements();
                    self.shared.pools.statement_epoch.invalidate_all();
                    "DEALLOCATE ALL"
                }
            };
            let mut message = BytesMut::new();
            messages::encode_command_complete(command_tag, &mut message);
            self.own(message, Undo::default());
        }
        self.own_ready_for_query();
        true
    }
}

/// The client encoding the client was told at login (UTF-8 when none was reported).
pub(super) fn reported_encoding(reported: &BTreeMap<String, String>) -> ClientEncoding {
    reported.get("client_encoding").and_then(|name| ClientEncoding::from_name(name)).unwrap_or_default()
}

/// The Parse a client statement was recorded from (always a valid one).
pub(super) fn recorded_parse(frame: &Frame) -> Option<Parse<'_>> {
    match FrontendMessage::decode(frame) {
        Ok(FrontendMessage::Parse(parse)) => Some(parse),
        _ => None,
    }
}

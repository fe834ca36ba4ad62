//! Running the messages that name SQL or a statement, once the gate let them through and
//! the router placed them: simple queries, the extended protocol's Parse, Bind, Describe and
//! Close, and fastpath calls.
//!
//! In transaction and statement modes a client's named statements never reach a server under
//! the client's name: each is prepared as `pgvane_<hash>` (see `session/statements.rs`) on
//! whichever server connection the client holds when it is used, and Bind and Describe are
//! re-encoded with that name. Every statement is recorded with the chain generation that
//! judged it, so that a Bind after a policy change is judged again (see `relay/gate.rs`).

use std::sync::Arc;

use bytes::BytesMut;

use crate::protocol::messages::{self, tag, ErrorResponse};
use crate::protocol::{encode_describe_or_close, Bind, EncodedText, Frame, Parse, Target};

use super::super::pipeline::{Condition, Kind, Purpose, Undo};
use super::super::sql::state_commands;
use super::super::statements::{ClientStatement, Statement};
use super::gate::recorded_parse;
use super::{Decided, End, Relay};

impl Relay<'_> {
    /// A simple Query: `sql` is its text (decoded), `rewritten` the policy's rewrite.
    pub(super) async fn on_query(
        &mut self,
        frame: &Frame,
        sql: &str,
        rewritten: Option<EncodedText>,
    ) -> Result<(), End> {
        let runs = rewritten.as_ref().map_or(sql, EncodedText::text);
        let commands = state_commands(runs);
        if self.pooled() && self.answer_deallocates(&commands) {
            return Ok(());
        }
        self.track_statement(runs, &commands);
        match rewritten {
            None => self.forward(frame, Kind::Query).await,
            Some(sql) => {
                let mut message = BytesMut::new();
                messages::encode_query(sql.bytes(), &mut message);
                if self.ensure_server(Kind::Query).await? {
                    self.send(&message, Kind::Query, frame);
                }
                Ok(())
            }
        }
    }

    pub(super) async fn on_parse(
        &mut self,
        frame: &Frame,
        original: &Parse<'_>,
        text: &str,
        rewritten: Option<EncodedText>,
        judged_by: u64,
    ) -> Result<(), End> {
        self.meter.client_parses += 1;
        let parse = Parse { query: rewritten.as_ref().map_or(original.query, EncodedText::bytes), ..original.clone() };
        let text = rewritten.as_ref().map_or(text, EncodedText::text);
        if !parse.name.is_empty() && !self.statements.contains(parse.name) {
            let max = self.shared.config().settings.max_client_prepared_statements;
            if self.statements.named() >= max {
                let message = format!(
                    "cannot prepare \"{}\": the client holds {max} prepared statements already (max_client_prepared_statements)",
                    parse.name
                );
                self.fail(Kind::Parse, ErrorResponse::error("53400", message));
                return Ok(());
            }
        }
        if self.pooled() {
            let commands = state_commands(text);
            self.track_statement(text, &commands);
        }
        let record = |server| ClientStatement { parse: frame.clone(), decided_by: judged_by, server };
        if !self.pooled() || parse.name.is_empty() {
            // The server keeps the statement under the client's name. A named one that exists
            // already is refused by the server (42P05): the one recorded stays.
            let recorded = parse.name.is_empty() || !self.statements.contains(parse.name);
            let undo = match recorded {
                true => {
                    self.statements.insert(parse.name, record(None));
                    Undo { client_statement: Some(parse.name.to_owned()), ..Undo::default() }
                }
                false => Undo::default(),
            };
            self.router.note_statement(parse.name);
            if !self.ensure_server(Kind::Parse).await? {
                if recorded {
                    self.statements.remove(parse.name);
                }
                return Ok(());
            }
            match rewritten {
                None => self.send_undoable(frame.raw(), Kind::Parse, frame, undo),
                Some(_) => {
                    let mut message = BytesMut::new();
                    parse.encode(&mut message);
                    self.send_undoable(&message, Kind::Parse, frame, undo);
                }
            }
            return Ok(());
        }
        if self.statements.contains(parse.name) {
            let message = format!("prepared statement \"{}\" already exists", parse.name);
            self.fail(Kind::Parse, ErrorResponse::error("42P05", message));
            return Ok(());
        }
        self.router.note_statement(parse.name);
        let statement = Arc::new(Statement::from_parse(&parse, self.encoding));
        let client_name = parse.name.to_owned();
        self.statements.insert(&client_name, record(Some(statement.clone())));
        let Some(server) = self.server.as_mut() else {
            // Holding no server connection, the statement is prepared on one when first used
            // (a mistake in it is reported then). Waiting for a server here would make a
            // client that prepares statements outside transactions (libpq's PQprepare, as
            // pgbench -M prepared does) wait for connections its own other sessions hold.
            let mut message = BytesMut::new();
            messages::encode_empty(tag::PARSE_COMPLETE, &mut message);
            self.own(message, Undo::default());
            return Ok(());
        };
        if server.conn().statements.touch(&statement.server_name) {
            let mut message = BytesMut::new();
            messages::encode_empty(tag::PARSE_COMPLETE, &mut message);
            self.pipeline.open();
            self.own(message, Undo { client_statement: Some(client_name), ..Undo::default() });
        } else {
            let undo = Undo {
                client_statement: Some(client_name),
                server_statement: Some(statement.server_name.clone()),
                ..Undo::default()
            };
            self.send_undoable(&statement.parse_message, Kind::Parse, frame, undo);
            self.remember_on_server(&statement.server_name);
        }
        Ok(())
    }

    /// Records that the server has `server_name`, closing the least recently used statement
    /// if the server's cache is full.
    fn remember_on_server(&mut self, server_name: &str) {
        let Some(server) = self.server.as_mut() else { return };
        if let Some(evicted) = server.conn().statements.insert(server_name.to_owned()) {
            encode_describe_or_close(tag::CLOSE, Target::Statement, &evicted, self.server_out.buf());
            let undo = Undo { closed_statement: Some(evicted), ..Undo::default() };
            self.pipeline.expect(Kind::Close, Purpose::Injected, undo, None);
        }
    }

    /// Makes sure the current server has the client's statement, preparing it if not.
    fn prepare_on_server(&mut self, statement: &Statement) {
        let Some(server) = self.server.as_mut() else { return };
        if server.conn().statements.touch(&statement.server_name) {
            return;
        }
        self.server_out.extend_from_slice(&statement.parse_message);
        self.meter.server_parses += 1;
        let undo = Undo { server_statement: Some(statement.server_name.clone()), ..Undo::default() };
        self.pipeline.expect(Kind::Parse, Purpose::Injected, undo, None);
        self.remember_on_server(&statement.server_name);
    }

    pub(super) async fn on_bind(&mut self, frame: &Frame, bind: &Bind<'_>, decided: &Decided) -> Result<(), End> {
        self.meter.binds += 1;
        let reprepare = self.refresh(bind.statement, decided);
        let statement = self.client_statement(bind.statement);
        self.send_using_statement(frame, Kind::Bind, statement, reprepare, |server_name, out| {
            bind.encode_renamed(server_name, out)
        })
        .await
    }

    pub(super) async fn on_describe(
        &mut self,
        frame: &Frame,
        target: Target,
        name: &str,
        decided: &Decided,
    ) -> Result<(), End> {
        let (statement, reprepare) = match target {
            Target::Statement => {
                let reprepare = self.refresh(name, decided);
                (self.client_statement(name), reprepare)
            }
            Target::Portal => (None, None),
        };
        self.send_using_statement(frame, Kind::Describe, statement, reprepare, |server_name, out| {
            encode_describe_or_close(tag::DESCRIBE, Target::Statement, server_name, out)
        })
        .await
    }

    /// The client's named statement `name`, when pgvane renames statements (pooled modes).
    fn client_statement(&self, name: &str) -> Option<Arc<Statement>> {
        match self.pooled() && !name.is_empty() {
            true => self.statements.get(name).and_then(|s| s.server.clone()),
            false => None,
        }
    }

    /// After the gate judged the client's statement `name` again (the chain changed since its
    /// Parse): the statement now carries the new verdict. Renamed statements get the server
    /// form of the new SQL, prepared where they are used next; a statement the server keeps
    /// under the client's name (session mode, the unnamed one) is prepared again on the
    /// server it now runs on: the messages that do so are returned, to go before the client's.
    fn refresh(&mut self, name: &str, decided: &Decided) -> Option<BytesMut> {
        let generation = decided.judged_by?;
        let statement = self.statements.get_mut(name)?;
        statement.decided_by = generation;
        let frame = statement.parse.clone();
        let parse = recorded_parse(&frame)?;
        let parse = Parse { query: decided.sql.as_ref().map_or(parse.query, EncodedText::bytes), ..parse };
        self.router.note_statement(name);
        if statement.server.is_some() {
            statement.server = Some(Arc::new(Statement::from_parse(&parse, self.encoding)));
            return None;
        }
        let mut messages = BytesMut::new();
        if !name.is_empty() {
            encode_describe_or_close(tag::CLOSE, Target::Statement, name, &mut messages);
        }
        parse.encode(&mut messages);
        Some(messages)
    }

    /// Sends a Bind or Describe naming a client's statement: the statement is prepared on
    /// the server if needed and the message re-encoded with the server's name for it by
    /// `rename`. Without a known statement the message goes as it came (the server answers
    /// an unknown name with the error PostgreSQL gives), after `reprepare` if the statement
    /// must be prepared again under the client's name.
    async fn send_using_statement(
        &mut self,
        frame: &Frame,
        kind: Kind,
        statement: Option<Arc<Statement>>,
        reprepare: Option<BytesMut>,
        rename: impl FnOnce(&str, &mut BytesMut),
    ) -> Result<(), End> {
        if !self.ensure_server(kind).await? {
            return Ok(());
        }
        if let Some(messages) = reprepare {
            let closes = messages.first() == Some(&tag::CLOSE);
            self.server_out.extend_from_slice(&messages);
            if closes {
                self.pipeline.expect(Kind::Close, Purpose::Injected, Undo::default(), None);
            }
            self.pipeline.expect(Kind::Parse, Purpose::Injected, Undo::default(), None);
            self.meter.server_parses += 1;
        }
        let Some(statement) = statement else {
            self.send(frame.raw(), kind, frame);
            return Ok(());
        };
        self.prepare_on_server(&statement);
        let mut renamed = BytesMut::new();
        rename(&statement.server_name, &mut renamed);
        self.send(&renamed, kind, frame);
        Ok(())
    }

    pub(super) async fn on_close(&mut self, frame: &Frame, target: Target, name: &str) -> Result<(), End> {
        if target == Target::Statement {
            self.router.forget_statement(name);
            self.statements.remove(name);
            if self.pooled() && !name.is_empty() {
                // The server keeps its copy for other clients (until evicted); the client's is
                // gone. Closing a statement that does not exist is not an error in PostgreSQL
                // either.
                let mut message = BytesMut::new();
                messages::encode_empty(tag::CLOSE_COMPLETE, &mut message);
                if self.server.is_some() {
                    self.pipeline.open();
                }
                self.own(message, Undo::default());
                return Ok(());
            }
        }
        self.forward(frame, Kind::Close).await
    }

    /// A fastpath call the gate allowed. In the pooled modes its effects on the session are
    /// unknown: the server connection is reset before another client gets it.
    pub(super) async fn on_function_call(&mut self, frame: &Frame) -> Result<(), End> {
        if self.ensure_server(Kind::FunctionCall).await? {
            self.send(frame.raw(), Kind::FunctionCall, frame);
            if self.pooled() {
                self.pipeline.worsen(Condition::NeedsReset);
            }
        }
        Ok(())
    }
}

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
use super::super::sql::{state_commands, StateCommand};
use super::super::statements::{is_server_name, ClientStatement, Statement};
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
        if self.pooled()
            && (self.refuse_foreign_deallocate(Kind::Query, &commands) || self.answer_deallocates(&commands))
        {
            return Ok(());
        }
        self.track_statement(&commands);
        self.wait_for_listener().await;
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

    /// A pooled client's `DEALLOCATE` of a name it did not prepare that is one of pgvane's own
    /// (`pgvane_…`): refused as PostgreSQL refuses an unknown name (26000), so the statement
    /// other clients share stays.
    fn refuse_foreign_deallocate(&mut self, kind: Kind, commands: &[StateCommand]) -> bool {
        let foreign = commands.iter().find_map(|c| match c {
            StateCommand::Deallocate(name) if is_server_name(name) && !self.statements.contains(name) => Some(name),
            _ => None,
        });
        let Some(name) = foreign else { return false };
        let error = ErrorResponse::error("26000", format!("prepared statement \"{name}\" does not exist"));
        self.fail(kind, error);
        true
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
        // What the statement does to the session is noted when it runs (at each Bind).
        let commands = state_commands(text);
        if self.pooled() && self.refuse_foreign_deallocate(Kind::Parse, &commands) {
            return Ok(());
        }
        let record =
            |server, commands| ClientStatement { parse: frame.clone(), decided_by: judged_by, server, commands };
        if !self.pooled() || parse.name.is_empty() {
            // The server keeps the statement under the client's name. A named one that exists
            // already is refused by the server (42P05): the one recorded stays.
            let recorded = parse.name.is_empty() || !self.statements.contains(parse.name);
            let undo = match recorded {
                true => {
                    self.statements.insert(parse.name, record(None, commands));
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
        let epoch = self.shared.pools.statement_epoch.current();
        let statement = Arc::new(Statement::from_parse(&parse, self.encoding, epoch));
        let client_name = parse.name.to_owned();
        self.statements.insert(&client_name, record(Some(statement.clone()), commands));
        let undo = Undo { client_statement: Some(client_name), ..Undo::default() };
        // Holding no server connection, one that is free at once is taken, so that the
        // server checks the statement now and an error reaches the client where PostgreSQL
        // sends it. With none free, pgvane answers and prepares the statement on a server
        // when it is first used (a mistake in it is reported then, and the name is freed):
        // waiting for a server here would make a client that prepares statements outside
        // transactions (libpq's PQprepare, as pgbench -M prepared does) wait for connections
        // its own other sessions hold.
        if self.server.is_none() && !self.try_take_server() {
            self.own_parse_complete(frame, undo);
            return Ok(());
        }
        let Some(server) = self.server.as_mut() else { return Ok(()) };
        if server.conn().statements.touch(&statement.server_name) {
            self.pipeline.open();
            self.own_parse_complete(frame, undo);
        } else {
            let undo = Undo { server_statement: Some(statement.server_name.clone()), ..undo };
            self.send_undoable(&statement.parse_message, Kind::Parse, frame, undo);
            self.remember_on_server(&statement.server_name);
        }
        Ok(())
    }

    /// Answers a client's Parse with pgvane's own ParseComplete. Sent at once, it is an echo
    /// a replay must not repeat, and the Parse runs again in the replay.
    fn own_parse_complete(&mut self, frame: &Frame, undo: Undo) {
        let mut message = BytesMut::new();
        messages::encode_empty(tag::PARSE_COMPLETE, &mut message);
        if self.pipeline.is_empty() && self.replayable() {
            self.pipeline.note_own_echo(frame.clone(), undo.clone());
        }
        self.own(message, undo);
    }

    /// Closes a statement pgvane prepared on the current server (evicted).
    fn close_on_server(&mut self, server_name: &str) {
        encode_describe_or_close(tag::CLOSE, Target::Statement, server_name, self.server_out.buf());
        let undo = Undo { closed_statement: Some(server_name.to_owned()), ..Undo::default() };
        self.pipeline.expect(Kind::Close, Purpose::Injected, undo, None);
    }

    /// Records that the server has `server_name`, closing the least recently used statement
    /// if the server's cache is full.
    fn remember_on_server(&mut self, server_name: &str) {
        let Some(server) = self.server.as_mut() else { return };
        if let Some(evicted) = server.conn().statements.insert(server_name.to_owned()) {
            self.close_on_server(&evicted);
        }
    }

    /// Makes sure the current server has the client's statement `client_name`, preparing it
    /// if not (or again, if the copy there is stale). If the server refuses it, the client's
    /// statement is forgotten with it: its SQL no longer runs, and the name is free again.
    fn prepare_on_server(&mut self, client_name: &str, statement: &Statement) {
        let Some(server) = self.server.as_mut() else { return };
        if server.conn().statements.touch(&statement.server_name) {
            return;
        }
        self.server_out.extend_from_slice(&statement.parse_message);
        self.meter.server_parses += 1;
        let undo = Undo {
            server_statement: Some(statement.server_name.clone()),
            failed_statement: Some(client_name.to_owned()),
            ..Undo::default()
        };
        self.pipeline.expect(Kind::Parse, Purpose::Injected, undo, None);
        self.remember_on_server(&statement.server_name);
    }

    pub(super) async fn on_bind(&mut self, frame: &Frame, bind: &Bind<'_>, decided: &Decided) -> Result<(), End> {
        self.meter.binds += 1;
        if self.refuse_unknown_statement(Kind::Bind, bind.statement) {
            return Ok(());
        }
        let reprepare = self.refresh(bind.statement, decided);
        let statement = self.client_statement(bind.statement);
        // The statement runs now, on this server: what it does to the session is noted here
        // (a prepared SET is carried each time it runs, read back once it has).
        if let Some(commands) = self.statements.get(bind.statement).map(|s| s.commands.clone()) {
            self.track_statement(&commands);
            self.wait_for_listener().await;
        }
        self.send_using_statement(frame, Kind::Bind, bind.statement, statement, reprepare, |server_name, out| {
            bind.encode_renamed(server_name, out)
        })
        .await
    }

    /// In the pooled modes a Bind or Describe of a named statement the client has not
    /// prepared is answered as PostgreSQL would (26000) without reaching a server, where
    /// other clients' statements live under pgvane's names.
    fn refuse_unknown_statement(&mut self, kind: Kind, name: &str) -> bool {
        if !self.pooled() || name.is_empty() || self.statements.contains(name) {
            return false;
        }
        self.fail(kind, ErrorResponse::error("26000", format!("prepared statement \"{name}\" does not exist")));
        true
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
                if self.refuse_unknown_statement(Kind::Describe, name) {
                    return Ok(());
                }
                let reprepare = self.refresh(name, decided);
                (self.client_statement(name), reprepare)
            }
            Target::Portal => (None, None),
        };
        self.send_using_statement(frame, Kind::Describe, name, statement, reprepare, |server_name, out| {
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
        statement.commands = match &decided.sql {
            Some(rewritten) => state_commands(rewritten.text()),
            None => self.encoding.decode(parse.query).map(|text| state_commands(&text)).unwrap_or_default(),
        };
        if statement.server.is_some() {
            let epoch = self.shared.pools.statement_epoch.current();
            statement.server = Some(Arc::new(Statement::from_parse(&parse, self.encoding, epoch)));
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
        client_name: &str,
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
        self.prepare_on_server(client_name, &statement);
        // Written into the session's scratch buffer, whose memory serves every Bind.
        let mut renamed = std::mem::take(&mut self.scratch);
        renamed.clear();
        rename(&statement.server_name, &mut renamed);
        self.send(&renamed, kind, frame);
        self.scratch = renamed;
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

//! Server → client: each server message is decoded once ([`BackendMessage`]), matched with
//! what the pipeline expects, and forwarded as it came unless it answers pgvane's own
//! messages. Parameter values are told to the client only when they differ from what it was
//! told; pgvane's own responses go out once everything before them is answered.

use bytes::BytesMut;

use crate::pool::{ServerError, MAX_SERVER_FRAME_BYTES};
use crate::protocol::messages::{self, tag, ErrorResponse, TransactionStatus};
use crate::protocol::{decode_frame, BackendMessage, Frame};

use super::super::pipeline::{is_echo, Condition, Expect, Purpose, Undo};
use super::{End, Relay};

impl Relay<'_> {
    pub(super) fn handle_server_frames(&mut self) -> Result<(), End> {
        loop {
            if !self.pass_server_message()? {
                return Ok(());
            }
            let Some(server) = self.server.as_mut() else { return Ok(()) };
            let frame = match decode_frame(&mut server.conn().read_buf, MAX_SERVER_FRAME_BYTES) {
                Ok(Some(frame)) => frame,
                Ok(None) => return Ok(()),
                Err(e) => return Err(End::Server(e.into())),
            };
            let message = BackendMessage::decode(&frame).map_err(|e| End::Server(e.into()))?;
            if let Some(lost) = self.going_away(&message) {
                return Err(End::Server(lost));
            }
            if let BackendMessage::ErrorResponse(error) = &message {
                if matches!(error.severity(), "FATAL" | "PANIC") {
                    // The server is ending the connection (pg_terminate_backend, shutdown): the
                    // client gets exactly its message, once, and the session ends with it.
                    return Err(End::Fatal(error.clone()));
                }
            }
            self.on_server_message(&frame, message)?;
        }
    }

    pub(super) fn send_to_client(&mut self, raw: &[u8]) {
        let Some(&response) = raw.first() else { return };
        if self.pipeline.passes(response) {
            self.meter.sent += raw.len() as u64;
            self.client.out.extend_from_slice(raw);
        }
    }

    fn on_server_message(&mut self, frame: &Frame, message: BackendMessage<'_>) -> Result<(), End> {
        let response = frame.tag();
        tracing::trace!(response = %(response as char), "from server");
        let for_client = self.pipeline.for_client();
        match message {
            BackendMessage::ParameterStatus { name, value } => {
                if let Some(server) = self.server.as_mut() {
                    server.conn().params.insert(name.to_owned(), value.to_owned());
                }
                // The client hears of a value only when it differs from what it was told;
                // values passing by while pgvane carries settings over are settled first.
                if for_client {
                    self.report_parameter(name, value);
                } else {
                    self.settling_parameters.insert(name.to_owned(), value.to_owned());
                }
                return Ok(());
            }
            BackendMessage::Other(tag::NOTIFICATION_RESPONSE) if self.pooled() => {
                // In the pooled modes notifications come from the pool's listener, once.
                return Ok(());
            }
            BackendMessage::Other(tag::NOTICE_RESPONSE | tag::NOTIFICATION_RESPONSE) => {
                if for_client {
                    self.pipeline.note_answer();
                    self.send_to_client(frame.raw());
                }
                return Ok(());
            }
            _ => {}
        }
        let Some((kind, purpose)) = self.pipeline.front() else {
            return Err(End::Server(ServerError::Unexpected(response as char)));
        };
        let from_client = *purpose == Purpose::Client;
        match &message {
            BackendMessage::ErrorResponse(error) => {
                if from_client {
                    self.note_refused_write(error);
                }
                if plan_went_stale(error) {
                    tracing::info!(
                        code = error.code(),
                        "a prepared statement went stale; every server prepares it again"
                    );
                    self.shared.pools.statement_epoch.invalidate_all();
                }
            }
            BackendMessage::CommandComplete(_) => {
                if changes_schema(frame.body()) {
                    self.shared.pools.statement_epoch.invalidate_all();
                }
                if let Some(server) = self.server.as_mut() {
                    server.conn().note_command_complete(frame.body());
                }
            }
            BackendMessage::DataRow(_) => {
                if let Some(values) = self.pipeline.capturing() {
                    let row = message.row_values().map_err(|e| End::Server(e.into()))?;
                    *values = row.iter().map(|v| v.map(|v| String::from_utf8_lossy(v).into_owned())).collect();
                }
            }
            _ => {}
        }
        match message {
            BackendMessage::ErrorResponse(error)
                if from_client && kind.is_extended() && self.retry_stale_plan(&error) =>
            {
                return Ok(());
            }
            BackendMessage::ErrorResponse(_) if kind.is_extended() => {
                // The client sees every error of an extended message, even of pgvane's own:
                // the messages it sent next depend on it.
                self.send_to_client(frame.raw());
                let mut undone = self.pipeline.skip_to_sync().into_iter();
                if let Some(name) = undone.next().and_then(|failed| {
                    let name = failed.failed_statement.clone();
                    self.undo(failed);
                    name
                }) {
                    self.statements.remove(&name);
                    self.router.forget_statement(&name);
                }
                for undo in undone {
                    self.undo(undo);
                }
                self.send_own_responses();
                return Ok(());
            }
            BackendMessage::ErrorResponse(error) if !from_client => {
                if let Some((_, Purpose::ApplySettings)) = self.pipeline.front() {
                    // The client's settings (startup parameters included) do not apply on this
                    // server connection: the session cannot go on as the client expects.
                    return Err(End::Fatal(ErrorResponse::fatal(error.code(), error.message())));
                }
                tracing::warn!(%error, "reading back the client's settings failed");
                self.pipeline.worsen(Condition::Unusable);
            }
            BackendMessage::ReadyForQuery(status) if from_client => {
                self.stale_retried = false;
                self.client_ready(status)?;
                self.pipeline.forget_answers();
            }
            _ => {}
        }
        // A simple Query's RowDescription comes before the statement runs; after a
        // CommandComplete it comes too late to matter.
        let echo = from_client && is_echo(response) && (kind.is_extended() || response == tag::ROW_DESCRIPTION);
        if for_client {
            match echo {
                true => self.pipeline.note_echo_sent(),
                false if response != tag::READY_FOR_QUERY => self.pipeline.note_answer(),
                false => {}
            }
            self.send_to_client(frame.raw());
        }
        if kind.ends_with(response) {
            match self.pipeline.answered(echo) {
                Some(Expect::Reply { purpose: Purpose::CaptureSettings(names, values), .. }) => {
                    if let Some(server) = self.server.as_mut() {
                        self.settings.captured(&names, &values, &mut server.conn().applied_settings);
                    }
                    self.report_settled_parameters();
                }
                Some(Expect::Reply { purpose: Purpose::ApplySettings, .. }) => self.report_settled_parameters(),
                Some(Expect::Reply { purpose: Purpose::CheckPins(counts), .. }) => self.pins_checked(&counts),
                _ => {}
            }
            self.send_own_responses();
        }
        Ok(())
    }

    /// Tells the client a parameter's value if it differs from what it was told.
    fn report_parameter(&mut self, name: &str, value: &str) {
        if self.reported_parameters.get(name).map(String::as_str) != Some(value) {
            if name == "client_encoding" {
                // The client's next statements are in this encoding.
                self.encoding = crate::protocol::ClientEncoding::from_name(value).unwrap_or_default();
            }
            self.reported_parameters.insert(name.to_owned(), value.to_owned());
            let mut message = BytesMut::new();
            messages::encode_parameter_status(name, value, &mut message);
            self.send_to_client(&message);
        }
    }

    fn report_settled_parameters(&mut self) {
        for (name, value) in std::mem::take(&mut self.settling_parameters) {
            self.report_parameter(&name, &value);
        }
    }

    /// The server answered a client's Query, Sync or FunctionCall with ReadyForQuery.
    fn client_ready(&mut self, status: TransactionStatus) -> Result<(), End> {
        let now = std::time::Instant::now();
        let stats = &self.router.current().stats;
        if let Some(started) = self.meter.query_start.take() {
            stats.record_query(now - started);
        }
        if status == TransactionStatus::Idle {
            if let Some(started) = self.meter.xact_start.take() {
                stats.record_xact(now - started);
            }
        }
        self.flush_stats();
        if status != TransactionStatus::Idle && !self.transaction_blocks_allowed() {
            return Err(End::Fatal(ErrorResponse::fatal(
                "0A000",
                "transaction blocks are not allowed in pool_mode = \"statement\"",
            )));
        }
        self.status = status;
        Ok(())
    }

    /// Transaction blocks are allowed: every mode but statement pooling.
    fn transaction_blocks_allowed(&self) -> bool {
        self.mode != crate::config::PoolMode::Statement
    }

    /// Undoes what a message the server skipped would have done.
    pub(super) fn undo(&mut self, undo: Undo) {
        if let Some(name) = undo.client_statement {
            self.statements.remove(&name);
            self.router.forget_statement(&name);
        }
        if let Some(server) = self.server.as_mut() {
            let statements = &mut server.conn().statements;
            if let Some(name) = undo.server_statement {
                statements.remove(&name);
            }
            if let Some(name) = undo.closed_statement {
                statements.insert(name);
            }
        }
    }

    /// Sends pgvane's own responses that are now at the front of the queue.
    pub(super) fn send_own_responses(&mut self) {
        for message in self.pipeline.own_ready() {
            self.send_to_client(&message);
        }
    }
}

/// True for the command tag of a statement that may change what prepared statements return
/// or refer to: ALTER and DROP of anything, and CREATE [OR REPLACE] VIEW or RULE.
fn changes_schema(command_tag: &[u8]) -> bool {
    const PREFIXES: [&[u8]; 4] = [b"ALTER ", b"DROP ", b"CREATE VIEW", b"CREATE RULE"];
    PREFIXES.iter().any(|prefix| command_tag.starts_with(prefix))
}

/// True for the errors a statement prepared before a schema change gets: PostgreSQL's
/// `0A000 cached plan must not change result type`, and the `cache lookup failed` of a plan
/// naming a type that was dropped.
pub(super) fn plan_went_stale(error: &ErrorResponse) -> bool {
    match error.code() {
        "0A000" => error.message().starts_with("cached plan must not change result type"),
        "XX000" => error.message().starts_with("cache lookup failed for type"),
        _ => false,
    }
}

//! The query loop of a logged-in client, for every pool mode: read, decode, gate, route,
//! write.
//!
//! Each client frame is decoded once into a [`FrontendMessage`]. Messages that carry SQL or
//! call a function pass the gate (`relay/gate.rs`: the policy chain, the statement size limit,
//! the fastpath rule); the [`Router`] says which server runs them; they are forwarded as they
//! came, except what transaction pooling must change (statement names, pgvane's own
//! responses: `relay/statements.rs`). The [`Pipeline`] keeps what each message sent to the
//! server expects back; `relay/responses.rs` hands the server's answers to the client in
//! protocol order, and `relay/server_loss.rs` survives a cluster node going away.
//!
//! In session mode the server connection is held to the end. In transaction and statement
//! modes it is taken when the client sends something and given back when the server is idle
//! again with nothing in flight: then the client's prepared statements and settings are
//! carried to whichever server connection it gets next.
//!
//! Reading and writing both sockets happen in one `select!`, with bounded output buffers, so
//! neither direction can block the other. Moving to another server waits until the current
//! one has answered everything in flight, so answers never interleave.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use tokio::sync::mpsc;

use crate::auth::scram::ScramKeys;
use crate::budget::Reservation;
use crate::clients::{ClientHandle, ClientState};
use crate::config::PoolMode;
use crate::pool::{Pool, PooledConn, ServerError, Subscriber};
use crate::protocol::messages::{self, ErrorResponse, TransactionStatus};
use crate::protocol::{decode_frame, ClientEncoding, EncodedText, Frame, FrontendMessage, ProtocolError};
use crate::shared::Shared;
use crate::tls::Progress;

use super::client::ClientConn;
use super::outbound::Outbound;
use super::pipeline::{Batch, Condition, Kind, Pipeline, Purpose, Undo};
use super::router::{Placement, Router};
use super::settings::ClientSettings;
use super::statements::ClientStatements;
use large::LargeMessages;

mod connection;
mod gate;
mod large;
mod pins;
mod responses;
mod server_loss;
mod stale;
mod statements;

/// Run on a server connection a pooled client left session state on, whatever
/// `server_reset_query` says: that state must not reach another client.
const SESSION_STATE_RESET: &str = "DISCARD ALL";

/// Output buffers above this size stop reading from the peer that fills them.
const HIGH_WATER_BYTES: usize = 256 * 1024;

/// How a session's query loop ended.
#[derive(Debug)]
pub enum End {
    /// The client sent Terminate.
    Terminated,
    /// The client's socket closed or failed.
    ClientGone,
    /// The client broke the protocol.
    ClientProtocol(ProtocolError),
    /// The server connection failed.
    Server(ServerError),
    /// The admin console killed the client.
    Killed,
    /// The session must end with this FATAL error.
    Fatal(ErrorResponse),
}

/// Where a client message runs, as decided when it arrived.
struct Decided {
    /// The pool of the server it runs on.
    placement: Placement,
    /// The SQL after the policy's rewrites (Query and Parse, or a statement decided again),
    /// with its bytes in the client encoding.
    sql: Option<EncodedText>,
    /// The generation of the chain that judged it: a Query or Parse, or a Bind or Describe
    /// of a statement decided again because the chain changed since its Parse.
    judged_by: Option<u64>,
}

/// A client message waiting for the current server to finish before it moves to another.
/// It is decoded again when it runs (only messages that move pay for that).
struct Deferred {
    frame: Frame,
    decided: Decided,
}

/// Who the client is, as the policy plugins are told.
#[derive(Debug, Clone)]
pub struct Identity {
    /// User.
    pub user: String,
    /// Database as the client named it.
    pub database: String,
    /// application_name from startup ("" if none).
    pub application_name: String,
    /// The client's IP address.
    pub client_addr: String,
}

/// What a client's query loop starts with.
pub struct Start {
    /// Who the client is.
    pub identity: Identity,
    /// The pool mode.
    pub mode: PoolMode,
    /// The server connection held from login (session mode), or none.
    pub server: Option<PooledConn>,
    /// The client's settings (its startup parameters).
    pub settings: ClientSettings,
    /// The parameter values reported to the client at login.
    pub reported_parameters: BTreeMap<String, String>,
    /// `max_packet_size_bytes`.
    pub max_packet_bytes: usize,
    /// `query_wait_timeout_ms`.
    pub query_wait: Duration,
    /// `idle_transaction_timeout_ms`, when set.
    pub idle_transaction_timeout: Option<Duration>,
    /// The SCRAM keys the client's proof yielded: pgvane logs in with them to the servers of
    /// other databases the policy routes to, when the configuration gives no password.
    pub scram_keys: Option<ScramKeys>,
}

/// Timing and traffic of the current transaction, for the pool's statistics.
#[derive(Debug, Default)]
struct Meter {
    xact_start: Option<Instant>,
    query_start: Option<Instant>,
    received: u64,
    sent: u64,
    /// Parse messages from the client, Parse messages sent to servers, Bind messages.
    client_parses: u64,
    server_parses: u64,
    binds: u64,
}

/// The per-client state of the query loop.
pub struct Relay<'a> {
    client: &'a mut ClientConn,
    handle: &'a ClientHandle,
    shared: &'a Shared,
    identity: Identity,
    mode: PoolMode,
    max_packet_bytes: usize,
    query_wait: Duration,
    idle_transaction_timeout: Option<Duration>,
    /// Which server runs each statement.
    router: Router,
    server: Option<PooledConn>,
    server_out: Outbound,
    /// What is in flight on the server, and the states around it.
    pipeline: Pipeline,
    /// A message waiting to move to another server.
    deferred: Option<Deferred>,
    /// Client messages to run again, before any new ones: statements a cluster node lost
    /// before answering them (see `relay/server_loss.rs`).
    replay: VecDeque<Frame>,
    status: TransactionStatus,
    statements: ClientStatements,
    settings: ClientSettings,
    /// Parameter values the client has been told (ParameterStatus).
    reported_parameters: BTreeMap<String, String>,
    /// The client's `client_encoding`, as the server last reported it to the client.
    encoding: ClientEncoding,
    /// Values reported by the server while pgvane's own queries ran, not yet told.
    settling_parameters: BTreeMap<String, String>,
    meter: Meter,
    /// Large messages in either direction (`relay/large.rs`).
    large: LargeMessages,
    /// Where a client message pgvane changes (a Bind renamed for its server) is written
    /// before it is queued: kept so the steady state allocates nothing.
    scratch: BytesMut,
    /// The client sent a cancel while waiting for a server connection: delivered once its
    /// statement runs.
    held_cancel: bool,
    /// The client's batch in flight already ran again after a stale plan (`relay/stale.rs`).
    stale_retried: bool,
    /// Session state that keeps the client on its server connection (`relay/pins.rs`).
    pinned: pins::Pinned,
    /// Notifications for the channels the client listens on, in the pooled modes (from its
    /// pool's listening connection, `pool/notifications.rs`), once it has listened.
    /// The pool it listens through is the one its first LISTEN ran on.
    notifications: Option<(Arc<Pool>, Subscriber, mpsc::UnboundedReceiver<bytes::Bytes>)>,
    /// The pool's listener has yet to listen on channels of a LISTEN about to run: the
    /// LISTEN waits for it, so notifications sent once it completed reach the client.
    listening: Vec<tokio::sync::oneshot::Receiver<()>>,
}

impl<'a> Relay<'a> {
    /// A query loop for a client that has just logged in.
    pub fn new(
        client: &'a mut ClientConn,
        handle: &'a ClientHandle,
        shared: &'a Shared,
        pool: Arc<Pool>,
        start: Start,
    ) -> Self {
        let Start {
            identity,
            mode,
            server,
            settings,
            reported_parameters,
            max_packet_bytes,
            query_wait,
            idle_transaction_timeout,
            scram_keys,
        } = start;
        Relay {
            client,
            handle,
            shared,
            router: Router::new(&identity.user, &identity.database, scram_keys, pool),
            identity,
            mode,
            max_packet_bytes,
            query_wait,
            idle_transaction_timeout,
            server,
            server_out: Outbound::with_capacity(16 * 1024),
            pipeline: Pipeline::default(),
            deferred: None,
            replay: VecDeque::new(),
            status: TransactionStatus::Idle,
            statements: ClientStatements::default(),
            settings,
            encoding: gate::reported_encoding(&reported_parameters),
            reported_parameters,
            settling_parameters: BTreeMap::new(),
            meter: Meter::default(),
            large: LargeMessages::default(),
            scratch: BytesMut::new(),
            held_cancel: false,
            stale_retried: false,
            pinned: pins::Pinned::default(),
            notifications: None,
            listening: Vec::new(),
        }
    }

    /// Runs until the session ends, then gives back or closes the server connection.
    pub async fn run(mut self) -> End {
        let end = self.run_loop().await;
        self.flush_stats();
        if let Some((pool, _, _)) = &self.notifications {
            self.shared.pools.notifications.unlisten_all(pool, self.handle.pid);
        }
        for server in self.router.take_parked() {
            server.release_after_session();
        }
        if let Some(server) = self.server.take() {
            let idle = self.server_is_idle(&server) && self.pipeline.condition != Condition::Unusable;
            self.handle.set_state(ClientState::Idle, None);
            match (idle, self.mode) {
                (true, PoolMode::Session) => server.release_after_session(),
                (true, _) if self.pipeline.condition == Condition::NeedsReset => {
                    server.release_after(SESSION_STATE_RESET.to_owned())
                }
                (true, _) => server.release(),
                (false, _) => {
                    tracing::debug!("server connection not idle at session end; cancelling and closing it");
                    server.discard();
                }
            }
        }
        end
    }

    /// True when nothing is in flight on the server and it is outside any transaction.
    fn server_is_idle(&self, server: &PooledConn) -> bool {
        self.pipeline.is_empty()
            && self.pipeline.batch == Batch::Synced
            && self.status == TransactionStatus::Idle
            && self.server_out.is_empty()
            && server.conn_ref().read_buf.is_empty()
    }

    async fn run_loop(&mut self) -> End {
        loop {
            if let Err(end) = self.handle_client_frames().await {
                return end;
            }
            if let Err(end) = self.handle_server_frames() {
                if let Err(end) = self.survive_server_loss(end) {
                    return end;
                }
            }
            self.deliver_held_cancel();
            self.maybe_release();
            self.release_budget();
            let can_move = match self.deferred {
                Some(_) => !self.in_flight(), // the waiting message can move now
                None => !self.replay.is_empty(),
            };
            if can_move {
                continue;
            }
            if let Err(end) = self.wait_for_io().await {
                // A cluster node lost outside a transaction block: what was in flight runs
                // again elsewhere or fails, and the session goes on (see `survive_server_loss`).
                if let Err(end) = self.survive_server_loss(end) {
                    return end;
                }
            }
        }
    }

    /// Waits until a socket can make progress and makes it.
    async fn wait_for_io(&mut self) -> Result<(), End> {
        enum Io {
            Notification(Option<bytes::Bytes>),
            ClientRead(std::io::Result<usize>),
            ClientWrote(std::io::Result<usize>),
            ServerRead(std::io::Result<usize>),
            ServerWrote(std::io::Result<usize>),
            Budget(Option<Reservation>),
            IdleInTransaction,
            Killed,
            Drained,
        }
        self.reserve_client_read();
        self.reserve_server_read();
        let client_out = &self.client.out;
        let server_out = &self.server_out;
        let kill = self.handle.signals.kill.raised();
        // Draining: the client leaves at a point between transactions (see `shutdown`).
        let drain = self.handle.signals.drain.raised();
        let drain_point = self.at_drain_point();
        // A long client message is read once the budget has room for it.
        let wanted = self.large.wanted_budget();
        let budget = self.shared.message_budget.reserve(wanted.unwrap_or_default());
        let can_read_client = server_out.len() < HIGH_WATER_BYTES && wanted.is_none();
        // Idle inside a transaction: nothing in flight, the server waits for the client.
        let idle_limit =
            match self.status != TransactionStatus::Idle && self.pipeline.is_empty() && server_out.is_empty() {
                true => self.idle_transaction_timeout,
                false => None,
            };
        // Lazy: the timer exists only when the branch is enabled and polled.
        let idle = async { tokio::time::sleep(idle_limit.unwrap_or_default()).await };
        let can_read_server = client_out.len() < HIGH_WATER_BYTES;
        // Notifications reach a client between its transactions, as PostgreSQL sends them.
        let between_transactions = self.status == TransactionStatus::Idle && self.pipeline.is_empty();
        let notifications = self.notifications.as_mut().map(|(_, _, receiver)| receiver);
        let notified = async {
            match notifications {
                Some(receiver) if between_transactions && client_out.len() < HIGH_WATER_BYTES => receiver.recv().await,
                _ => std::future::pending().await,
            }
        };
        // Each stream reads and writes in one future (a TLS stream cannot be split without a lock).
        let client_io = self.client.stream.progress(can_read_client.then_some(&mut self.client.read_buf), client_out);
        let client = |p| match p {
            Progress::Read(r) => Io::ClientRead(r),
            Progress::Wrote(r) => Io::ClientWrote(r),
        };
        let io = match self.server.as_mut() {
            Some(server) => {
                let conn = server.conn();
                let server_io = conn.stream.progress(can_read_server.then_some(&mut conn.read_buf), server_out.front());
                // In order, without select!'s random start (it costs on every wait): the
                // high-water marks above already keep one busy socket from starving the other.
                tokio::select! {
                    biased;
                    () = kill => Io::Killed,
                    p = client_io => client(p),
                    p = server_io => match p {
                        Progress::Read(r) => Io::ServerRead(r),
                        Progress::Wrote(r) => Io::ServerWrote(r),
                    },
                    r = budget, if wanted.is_some() => Io::Budget(r),
                    () = idle, if idle_limit.is_some() => Io::IdleInTransaction,
                    n = notified => Io::Notification(n),
                    () = drain, if drain_point => Io::Drained,
                }
            }
            None => tokio::select! {
                biased;
                () = kill => Io::Killed,
                p = client_io => client(p),
                r = budget, if wanted.is_some() => Io::Budget(r),
                () = idle, if idle_limit.is_some() => Io::IdleInTransaction,
                n = notified => Io::Notification(n),
                () = drain, if drain_point => Io::Drained,
            },
        };
        match io {
            Io::ClientRead(Ok(0) | Err(_)) | Io::ClientWrote(Ok(0) | Err(_)) => Err(End::ClientGone),
            Io::ClientRead(Ok(_)) => Ok(()),
            Io::ClientWrote(Ok(n)) => {
                self.client.out.advance(n);
                Ok(())
            }
            Io::ServerRead(Ok(0)) => Err(End::Server(ServerError::Closed)),
            Io::ServerRead(Err(e)) | Io::ServerWrote(Err(e)) => Err(End::Server(e.into())),
            Io::ServerRead(Ok(_)) => Ok(()),
            Io::ServerWrote(Ok(n)) => {
                self.server_out.advance(n);
                Ok(())
            }
            Io::Budget(Some(reservation)) => {
                self.budget_reserved(reservation);
                Ok(())
            }
            Io::Budget(None) => Err(End::Fatal(ErrorResponse::fatal("54000", "client message larger than the budget"))),
            Io::IdleInTransaction => {
                tracing::info!("client idle in transaction longer than idle_transaction_timeout_ms; disconnecting it");
                // Its server connection is closed at the end of the session: that rolls back.
                Err(End::Fatal(ErrorResponse::fatal(
                    "25P03",
                    "terminating connection due to idle-in-transaction timeout (idle_transaction_timeout_ms)",
                )))
            }
            Io::Killed => Err(End::Killed),
            Io::Notification(Some(message)) => {
                self.meter.sent += message.len() as u64;
                self.client.out.extend_from_slice(&message);
                Ok(())
            }
            Io::Notification(None) => Ok(()), // no sender left: the listener is gone
            Io::Drained => {
                tracing::info!("draining: disconnecting the client between transactions");
                Err(End::Killed)
            }
        }
    }

    /// True between transactions with nothing in flight nor half-read, where a drain may
    /// disconnect the client: in session mode only when the shutdown waits for servers.
    fn at_drain_point(&self) -> bool {
        self.status == TransactionStatus::Idle
            && self.pipeline.is_empty()
            && self.pipeline.batch == Batch::Synced
            && self.server_out.is_empty()
            && self.deferred.is_none()
            && self.replay.is_empty()
            && self.client.read_buf.is_empty()
            && (self.pooled()
                || (self.handle.signals.drain.is_raised()
                    && self.shared.shutdown_mode() == Some(crate::shared::ShutdownMode::WaitForServers)))
    }

    // ----- client → server -----

    async fn handle_client_frames(&mut self) -> Result<(), End> {
        if let Some(Deferred { frame, decided }) = self.deferred.take() {
            let message = FrontendMessage::decode(&frame).map_err(End::ClientProtocol)?;
            if let Ok(text) = self.statement_text(&message) {
                if let Some(decided) = self.dispatch(&frame, &message, text.as_deref(), decided).await? {
                    self.deferred = Some(Deferred { frame, decided });
                }
            }
        }
        while self.deferred.is_none() {
            let Some(frame) = self.replay.pop_front() else { break };
            self.on_client_frame(frame).await?;
        }
        while self.deferred.is_none()
            && self.replay.is_empty()
            && self.server_out.len() < HIGH_WATER_BYTES
            && self.client.out.len() < HIGH_WATER_BYTES
        {
            if !self.check_client_message()? {
                return Ok(());
            }
            let frame = match decode_frame(&mut self.client.read_buf, self.max_packet_bytes) {
                Ok(Some(frame)) => frame,
                Ok(None) => return Ok(()),
                Err(e) => return Err(End::ClientProtocol(e)),
            };
            self.meter.received += frame.raw().len() as u64;
            self.on_client_frame(frame).await?;
        }
        Ok(())
    }

    fn pooled(&self) -> bool {
        self.mode != PoolMode::Session
    }

    /// Decodes a client message and runs it: through the gate and the router for the
    /// messages that name SQL, a statement or a function, straight on otherwise.
    async fn on_client_frame(&mut self, frame: Frame) -> Result<(), End> {
        let message = FrontendMessage::decode(&frame).map_err(End::ClientProtocol)?;
        tracing::trace!(?message, batch = ?self.pipeline.batch, "from client");
        if self.pipeline.batch == Batch::Skipping {
            // As PostgreSQL after an error: everything up to Sync is ignored.
            return match message {
                FrontendMessage::Sync => {
                    self.pipeline.batch = Batch::Synced;
                    self.on_sync(&frame).await
                }
                FrontendMessage::Terminate => Err(End::Terminated),
                _ => Ok(()),
            };
        }
        match message {
            FrontendMessage::Terminate => Err(End::Terminated),
            FrontendMessage::Sync => self.on_sync(&frame).await,
            FrontendMessage::Flush => {
                if self.server.is_some() {
                    self.server_out.extend_from_slice(frame.raw());
                    self.pipeline.note_answer(); // a replay without it could leave the client waiting
                }
                Ok(())
            }
            FrontendMessage::CopyData | FrontendMessage::CopyDone | FrontendMessage::CopyFail => {
                // Outside COPY the server ignores these; with no server there is no COPY.
                if self.server.is_some() {
                    self.server_out.extend_from_slice(frame.raw());
                }
                Ok(())
            }
            FrontendMessage::Execute { .. } => self.forward(&frame, Kind::Execute).await,
            FrontendMessage::Password(_) => {
                Err(End::ClientProtocol(ProtocolError::malformed("password", "not expected after authentication")))
            }
            FrontendMessage::Query(_)
            | FrontendMessage::Parse(_)
            | FrontendMessage::Bind(_)
            | FrontendMessage::Describe(..)
            | FrontendMessage::Close(..)
            | FrontendMessage::FunctionCall { .. } => {
                let Ok(text) = self.statement_text(&message) else {
                    return Ok(()); // not in the client encoding; the client has its error
                };
                let Some(decided) = self.gate(&message, text.as_deref()).await? else {
                    return Ok(()); // refused; the client has its error
                };
                if let Some(decided) = self.dispatch(&frame, &message, text.as_deref(), decided).await? {
                    self.deferred = Some(Deferred { frame, decided });
                }
                Ok(())
            }
        }
    }

    /// Runs a decided message once it can run on its server (`text`: the SQL of a Query or
    /// Parse, decoded). Returns the decision back when the message must wait for the current
    /// server to finish first.
    async fn dispatch(
        &mut self,
        frame: &Frame,
        message: &FrontendMessage<'_>,
        text: Option<&str>,
        decided: Decided,
    ) -> Result<Option<Decided>, End> {
        if !self.switch_to(&decided.placement) {
            return Ok(Some(decided));
        }
        match message {
            FrontendMessage::Query(_) => self.on_query(frame, text.unwrap_or_default(), decided.sql).await?,
            FrontendMessage::Parse(parse) => {
                let judged_by = decided.judged_by.unwrap_or_default();
                self.on_parse(frame, parse, text.unwrap_or_default(), decided.sql, judged_by).await?
            }
            FrontendMessage::Bind(bind) => self.on_bind(frame, bind, &decided).await?,
            FrontendMessage::Describe(target, name) => self.on_describe(frame, *target, name, &decided).await?,
            FrontendMessage::Close(target, name) => self.on_close(frame, *target, name).await?,
            FrontendMessage::FunctionCall { .. } => self.on_function_call(frame).await?,
            _ => {}
        }
        Ok(None)
    }

    /// Forwards a client message unchanged.
    async fn forward(&mut self, frame: &Frame, kind: Kind) -> Result<(), End> {
        if self.ensure_server(kind).await? {
            self.send(frame.raw(), kind, frame);
        }
        Ok(())
    }

    /// Queues a client message (as sent: `raw`) for the server and expects its answers;
    /// `frame` is the message as the client sent it, kept in case it must run again.
    fn send(&mut self, raw: &[u8], kind: Kind, frame: &Frame) {
        self.send_undoable(raw, kind, frame, Undo::default());
    }

    /// [`Relay::send`], with what undoes the message's effect if the server skips it.
    fn send_undoable(&mut self, raw: &[u8], kind: Kind, frame: &Frame, undo: Undo) {
        if raw.as_ptr() == frame.raw().as_ptr() && raw.len() == frame.raw().len() {
            self.server_out.push(frame.raw()); // as the client sent it: queued without a copy
        } else {
            self.server_out.extend_from_slice(raw);
        }
        if kind == Kind::Parse {
            self.meter.server_parses += 1;
        }
        // A large message is not kept to run again: it would hold memory its budget
        // reservation no longer covers once it has been written.
        let small = frame.raw().len() <= crate::budget::UNRESERVED_MESSAGE_BYTES;
        let replay = (small && self.replayable()).then(|| frame.clone());
        self.pipeline.expect(kind, Purpose::Client, undo, replay);
        self.pins_may_have_changed();
        self.started(kind);
    }

    fn started(&mut self, kind: Kind) {
        let now = Instant::now();
        self.meter.xact_start.get_or_insert(now);
        if kind != Kind::Sync {
            self.meter.query_start.get_or_insert(now);
        }
    }

    /// Queues a response pgvane makes itself, in protocol order.
    fn own(&mut self, message: BytesMut, undo: Undo) {
        if let Some(now) = self.pipeline.own(message.freeze(), undo) {
            self.send_to_client(&now);
        }
    }

    /// Answers a client message with an error pgvane makes, as PostgreSQL would: an extended
    /// message makes the rest up to Sync ignored, a Query or Sync ends with ReadyForQuery.
    fn fail(&mut self, kind: Kind, error: ErrorResponse) {
        let mut message = BytesMut::new();
        error.encode(&mut message);
        self.own(message, Undo::default());
        if kind.is_extended() {
            self.pipeline.batch = Batch::Skipping;
        } else {
            self.own_ready_for_query();
        }
    }

    fn own_ready_for_query(&mut self) {
        let mut message = BytesMut::new();
        messages::encode_ready_for_query(self.status, &mut message);
        self.own(message, Undo::default());
    }

    async fn on_sync(&mut self, frame: &Frame) -> Result<(), End> {
        if self.server.is_none() && self.pipeline.is_empty() {
            self.own_ready_for_query();
            return Ok(());
        }
        self.forward(frame, Kind::Sync).await
    }

    /// Inside a transaction block, or an extended batch not synced yet (an implicit one).
    fn in_transaction(&self) -> bool {
        self.status != TransactionStatus::Idle || self.pipeline.batch != Batch::Synced
    }

    /// Messages are on their way to the server or answers on their way back.
    fn in_flight(&self) -> bool {
        !self.pipeline.is_empty() || !self.server_out.is_empty()
    }
}

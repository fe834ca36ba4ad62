//! The query loop of a logged-in client, for every pool mode.
//!
//! Client messages are forwarded to a server connection as they came, except what
//! transaction pooling must change (statement names, pgvane's own responses). For every
//! message sent to the server, an entry in `queue` says which server responses answer it
//! and whether they go to the client (pgvane's own injected messages are answered to
//! pgvane). Responses pgvane makes itself wait in the same queue, so the client always gets
//! them in protocol order.
//!
//! In session mode the server connection is held to the end. In transaction and statement
//! modes it is taken when the client sends something and given back when the server is idle
//! again with nothing in flight: then the client's prepared statements and settings are
//! carried to whichever server connection it gets next.
//!
//! Reading and writing both sockets happen in one `select!`, with bounded output buffers, so
//! neither direction can block the other.
//!
//! Routing: each Query and Parse runs where the policy chain says (another `[databases]`
//! entry) or else on the client's own database; Bind, Describe and Close of a named statement
//! follow its Parse, everything else the current server. Inside a transaction (or an unsynced
//! extended batch) the client stays on its transaction's server. Moving to another server
//! waits until the current one has answered everything in flight, so answers never
//! interleave. In session mode the client keeps one server connection per database it used
//! until it leaves; in the pooled modes it simply takes its next one from the other pool.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};

use crate::auth::scram::ScramKeys;
use crate::clients::{ClientHandle, ClientState};
use crate::config::PoolMode;
use crate::policy::{Decision, Request, Route};
use crate::pool::{Pool, PoolError, PooledConn, ServerError, MAX_SERVER_FRAME_BYTES};
use crate::protocol::messages::{self, tag, ErrorResponse, Parse, Target, TransactionStatus};
use crate::protocol::{decode_frame, Frame, ProtocolError};
use crate::shared::Shared;
use crate::tls::Progress;

use super::client::ClientConn;
use super::settings::{sync_sql, ClientSettings};
use super::sql::{calls_session_state_function, state_commands, StateCommand};
use super::statements::{ClientStatements, Statement};

mod cluster;
use cluster::ClusterRoute;

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

/// Undo actions for a queued entry that the server never answers because an earlier
/// message failed (PostgreSQL then skips everything up to Sync).
#[derive(Debug, Default)]
struct Undo {
    /// The client's statement was never created.
    client_statement: Option<String>,
    /// The server statement was never created.
    server_statement: Option<String>,
    /// The server statement was never closed.
    closed_statement: Option<String>,
}

/// What answers a message sent to the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Parse,
    Bind,
    Describe,
    Execute,
    Close,
    Sync,
    Query,
    FunctionCall,
}

impl Kind {
    /// Extended-protocol messages: after an error in one, the server skips to Sync.
    fn is_extended(self) -> bool {
        matches!(self, Kind::Parse | Kind::Bind | Kind::Describe | Kind::Execute | Kind::Close)
    }

    /// True if a response with this tag is the last one for the message.
    fn ends_with(self, response: u8) -> bool {
        match self {
            Kind::Parse => response == tag::PARSE_COMPLETE,
            Kind::Bind => response == tag::BIND_COMPLETE,
            Kind::Close => response == tag::CLOSE_COMPLETE,
            Kind::Describe => matches!(response, tag::ROW_DESCRIPTION | tag::NO_DATA),
            Kind::Execute => {
                matches!(response, tag::COMMAND_COMPLETE | tag::EMPTY_QUERY_RESPONSE | tag::PORTAL_SUSPENDED)
            }
            Kind::Sync | Kind::Query | Kind::FunctionCall => response == tag::READY_FOR_QUERY,
        }
    }
}

/// Who gets the answers to a message sent to the server.
#[derive(Debug)]
enum Purpose {
    /// The client's own message: answers go to the client.
    Client,
    /// pgvane's own extended message (re-Parse, Close): answered to pgvane, but errors go to
    /// the client, whose next message depends on it.
    Injected,
    /// pgvane's own query applying settings: answered to pgvane.
    ApplySettings,
    /// pgvane's own query reading settings back: its row is captured.
    CaptureSettings(Vec<String>, Vec<Option<String>>),
}

/// Where a client message runs, as decided when it arrived.
struct Decided {
    /// The pool of the server it runs on.
    pool: Arc<Pool>,
    /// The SQL after the policy's rewrites (Query and Parse), if any.
    sql: Option<String>,
    /// A policy routed it (rather than it following the client's database or statement).
    routed: bool,
}

/// A client message waiting for the current server to finish before it moves to another.
struct Deferred {
    frame: Frame,
    decided: Decided,
}

#[derive(Debug)]
enum Expect {
    /// Answers to a message sent to the server. `replay`: the client's message as it came,
    /// when it may run again elsewhere if the server goes away before answering it (see
    /// `Relay::survive_server_loss`).
    Reply { kind: Kind, purpose: Purpose, undo: Undo, replay: Option<Frame> },
    /// A response pgvane makes itself, sent once everything before it is answered.
    Own { message: Bytes, undo: Undo },
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
    /// The SCRAM keys the client's proof yielded: pgvane logs in with them to the servers of
    /// other databases the policy routes to, when the configuration gives no password.
    pub scram_keys: Option<ScramKeys>,
}

/// The per-client state of the query loop.
pub struct Relay<'a> {
    client: &'a mut ClientConn,
    handle: &'a ClientHandle,
    shared: &'a Shared,
    identity: Identity,
    scram_keys: Option<ScramKeys>,
    /// The pool of the client's own database.
    home: Arc<Pool>,
    /// The pool of the current server connection, or of the next one taken.
    pool: Arc<Pool>,
    /// Session mode: server connections of other databases the client used, kept for it.
    parked: Vec<PooledConn>,
    /// Pools of the other databases the policy routed to, by name.
    routes: HashMap<String, Arc<Pool>>,
    /// Named statements prepared away from the client's own database, and where.
    statement_pools: HashMap<String, Arc<Pool>>,
    /// A message waiting to move to another server.
    deferred: Option<Deferred>,
    /// Client messages to run again, before any new ones: statements a cluster node lost
    /// before answering them (see `survive_server_loss`).
    replay: VecDeque<Frame>,
    /// Part of an answer that is more than an echo (ParseComplete, BindComplete, a
    /// description, ...) reached the client since the last ReadyForQuery, or it asked for a
    /// Flush: what is in flight can no longer be replayed.
    answered: bool,
    /// The client messages since the last ReadyForQuery that were answered with echoes only,
    /// with what undoes them: a replay runs them again and skips the echoes.
    echoed: Vec<(Frame, Undo)>,
    /// Echoes the client got since the last ReadyForQuery.
    echoes_sent: usize,
    /// Echoes to leave out of what the client gets: it had them before a replay.
    skip_echoes: usize,
    /// The client message being run, for `expect` to keep for a replay.
    current_frame: Option<Frame>,
    mode: PoolMode,
    max_packet_bytes: usize,
    query_wait: Duration,
    server: Option<PooledConn>,
    server_out: BytesMut,
    queue: VecDeque<Expect>,
    /// Extended messages were sent since the last Sync.
    unsynced: bool,
    /// Dropping client messages up to the next Sync, after an error.
    skipping: bool,
    /// The client left state in the server session that cannot follow it (temporary
    /// tables, LISTEN…): the connection is reset before anyone else gets it.
    session_state: bool,
    /// A query pgvane ran to carry settings failed: the server's settings are unknown, so
    /// the connection is closed instead of being given back.
    server_tainted: bool,
    status: TransactionStatus,
    statements: ClientStatements,
    settings: ClientSettings,
    /// Parameter values the client has been told (ParameterStatus).
    reported_parameters: BTreeMap<String, String>,
    /// Values reported by the server while pgvane's own queries ran, not yet told.
    settling_parameters: BTreeMap<String, String>,
    xact_start: Option<Instant>,
    query_start: Option<Instant>,
    received: u64,
    sent: u64,
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
        let Start { identity, mode, server, settings, reported_parameters, max_packet_bytes, query_wait, scram_keys } =
            start;
        Relay {
            client,
            handle,
            shared,
            identity,
            scram_keys,
            home: pool.clone(),
            pool,
            parked: Vec::new(),
            routes: HashMap::new(),
            statement_pools: HashMap::new(),
            deferred: None,
            replay: VecDeque::new(),
            answered: false,
            echoed: Vec::new(),
            echoes_sent: 0,
            skip_echoes: 0,
            current_frame: None,
            mode,
            max_packet_bytes,
            query_wait,
            server,
            server_out: BytesMut::with_capacity(16 * 1024),
            queue: VecDeque::new(),
            unsynced: false,
            skipping: false,
            server_tainted: false,
            session_state: false,
            status: TransactionStatus::Idle,
            statements: ClientStatements::default(),
            settings,
            reported_parameters,
            settling_parameters: BTreeMap::new(),
            xact_start: None,
            query_start: None,
            received: 0,
            sent: 0,
        }
    }

    /// Runs until the session ends, then gives back or closes the server connection.
    pub async fn run(mut self) -> End {
        let end = self.run_loop().await;
        self.flush_stats();
        for server in std::mem::take(&mut self.parked) {
            server.release_after_session();
        }
        if let Some(server) = self.server.take() {
            let idle = self.server_is_idle(&server) && !self.server_tainted;
            self.handle.set_state(ClientState::Idle, None);
            match (idle, self.mode) {
                (true, PoolMode::Session) => server.release_after_session(),
                (true, _) if self.session_state => server.release_after(SESSION_STATE_RESET.to_owned()),
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
        self.queue.is_empty()
            && !self.unsynced
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
            self.maybe_release();
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
            ClientRead(std::io::Result<usize>),
            ClientWrote(std::io::Result<usize>),
            ServerRead(std::io::Result<usize>),
            ServerWrote(std::io::Result<usize>),
            Killed,
        }
        reserve_for_partial(&mut self.client.read_buf);
        let client_out = &self.client.out;
        let server_out = &self.server_out;
        let kill = self.handle.signals.kill.raised();
        let can_read_client = server_out.len() < HIGH_WATER_BYTES;
        let can_read_server = client_out.len() < HIGH_WATER_BYTES;
        // Each stream reads and writes in one future (a TLS stream cannot be split without a lock).
        let client_io = self.client.stream.progress(can_read_client.then_some(&mut self.client.read_buf), client_out);
        let client = |p| match p {
            Progress::Read(r) => Io::ClientRead(r),
            Progress::Wrote(r) => Io::ClientWrote(r),
        };
        let io = match self.server.as_mut() {
            Some(server) => {
                let conn = server.conn();
                reserve_for_partial(&mut conn.read_buf);
                let server_io = conn.stream.progress(can_read_server.then_some(&mut conn.read_buf), server_out);
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
                }
            }
            None => tokio::select! {
                biased;
                () = kill => Io::Killed,
                p = client_io => client(p),
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
            Io::Killed => Err(End::Killed),
        }
    }

    // ----- client → server -----

    async fn handle_client_frames(&mut self) -> Result<(), End> {
        if let Some(Deferred { frame, decided }) = self.deferred.take() {
            self.current_frame = Some(frame.clone());
            self.dispatch(frame, decided).await?;
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
            let frame = match decode_frame(&mut self.client.read_buf, self.max_packet_bytes) {
                Ok(Some(frame)) => frame,
                Ok(None) => return Ok(()),
                Err(e) => return Err(End::ClientProtocol(e)),
            };
            self.received += frame.raw().len() as u64;
            self.on_client_frame(frame).await?;
        }
        Ok(())
    }

    fn pooled(&self) -> bool {
        self.mode != PoolMode::Session
    }

    async fn on_client_frame(&mut self, frame: Frame) -> Result<(), End> {
        self.current_frame = Some(frame.clone());
        let message = frame.tag();
        tracing::trace!(message = %(message as char), len = frame.raw().len(), skipping = self.skipping, "from client");
        if self.skipping {
            return match message {
                tag::SYNC => {
                    self.skipping = false;
                    self.on_sync(&frame).await
                }
                tag::TERMINATE => Err(End::Terminated),
                _ => Ok(()), // as PostgreSQL after an error: ignored up to Sync
            };
        }
        match message {
            tag::TERMINATE => Err(End::Terminated),
            tag::SYNC => self.on_sync(&frame).await,
            tag::FLUSH => {
                if self.server.is_some() {
                    self.server_out.extend_from_slice(frame.raw());
                    self.answered = true; // a replay without it could leave the client waiting
                }
                Ok(())
            }
            tag::COPY_DATA | tag::COPY_DONE | tag::COPY_FAIL => {
                // Outside COPY the server ignores these; with no server there is no COPY.
                if self.server.is_some() {
                    self.server_out.extend_from_slice(frame.raw());
                }
                Ok(())
            }
            tag::QUERY | tag::PARSE | tag::BIND | tag::DESCRIBE | tag::CLOSE => match self.decide(&frame).await? {
                Some(decided) => self.dispatch(frame, decided).await,
                None => Ok(()), // refused by the policy; the client has its error
            },
            tag::EXECUTE => self.forward(&frame, Kind::Execute).await,
            tag::FUNCTION_CALL => self.forward(&frame, Kind::FunctionCall).await,
            // Anything else: the server answers it as it would directly (typically FATAL).
            _ => {
                if self.ensure_server(Kind::Query).await? {
                    self.server_out.extend_from_slice(frame.raw());
                }
                Ok(())
            }
        }
    }

    /// Forwards a client message unchanged.
    async fn forward(&mut self, frame: &Frame, kind: Kind) -> Result<(), End> {
        if self.ensure_server(kind).await? {
            self.send(frame.raw(), kind);
        }
        Ok(())
    }

    /// Queues a client message for the server and expects its answers.
    fn send(&mut self, raw: &[u8], kind: Kind) {
        self.server_out.extend_from_slice(raw);
        self.expect(kind, Purpose::Client, Undo::default());
        self.started(kind);
    }

    fn expect(&mut self, kind: Kind, purpose: Purpose, undo: Undo) {
        match kind {
            // A simple Query (or FunctionCall) ends the implicit transaction of unsynced
            // extended messages before it, as a Sync does.
            Kind::Sync | Kind::Query | Kind::FunctionCall => self.unsynced = false,
            k if k.is_extended() => self.unsynced = true,
            _ => {}
        }
        let replay = match purpose {
            Purpose::Client if self.replayable() => self.current_frame.take(),
            _ => None,
        };
        self.queue.push_back(Expect::Reply { kind, purpose, undo, replay });
    }

    fn started(&mut self, kind: Kind) {
        let now = Instant::now();
        self.xact_start.get_or_insert(now);
        if kind != Kind::Sync {
            self.query_start.get_or_insert(now);
        }
    }

    /// Queues a response pgvane makes itself, in protocol order.
    fn own(&mut self, message: Bytes, undo: Undo) {
        if self.queue.is_empty() {
            self.send_to_client(&message);
        } else {
            self.queue.push_back(Expect::Own { message, undo });
        }
    }

    /// Answers a client message with an error pgvane makes, as PostgreSQL would: an extended
    /// message makes the rest up to Sync ignored, a Query or Sync ends with ReadyForQuery.
    fn fail(&mut self, kind: Kind, error: ErrorResponse) {
        let mut message = BytesMut::new();
        error.encode(&mut message);
        self.own(message.freeze(), Undo::default());
        if kind.is_extended() {
            self.skipping = true;
        } else {
            self.own_ready_for_query();
        }
    }

    fn own_ready_for_query(&mut self) {
        let mut message = BytesMut::new();
        messages::encode_ready_for_query(self.status, &mut message);
        self.own(message.freeze(), Undo::default());
    }

    async fn on_sync(&mut self, frame: &Frame) -> Result<(), End> {
        if self.server.is_none() && self.queue.is_empty() {
            self.own_ready_for_query();
            return Ok(());
        }
        self.forward(frame, Kind::Sync).await
    }

    // ----- where a message runs -----

    /// Where a Query, Parse, Bind, Describe or Close runs. `None`: the policy refused it and
    /// the client has been answered.
    async fn decide(&mut self, frame: &Frame) -> Result<Option<Decided>, End> {
        let here = |pool: &Arc<Pool>| Some(Decided { pool: pool.clone(), sql: None, routed: false });
        Ok(match frame.tag() {
            tag::QUERY => {
                let sql = messages::parse_query(frame.body()).map_err(End::ClientProtocol)?;
                self.consult_policy(Kind::Query, sql, None).await
            }
            tag::PARSE => {
                let parse = Parse::decode(frame.body()).map_err(End::ClientProtocol)?;
                self.consult_policy(Kind::Parse, parse.query, Some(parse.name)).await
            }
            tag::BIND => {
                let (_, name, _) = messages::parse_bind_names(frame.body()).map_err(End::ClientProtocol)?;
                here(&self.statement_pool(name))
            }
            _ => match messages::parse_describe_or_close(frame.body()).map_err(End::ClientProtocol)? {
                // pgvane answers a pooled client's Close of a statement itself.
                (Target::Statement, name) if !(self.pooled() && frame.tag() == tag::CLOSE) => {
                    here(&self.statement_pool(name))
                }
                _ => here(&self.pool),
            },
        })
    }

    /// Where the client's statement `name` lives: the unnamed one on the current server, a
    /// named one where its Parse ran.
    fn statement_pool(&self, name: &str) -> Arc<Pool> {
        if name.is_empty() {
            return self.pool.clone();
        }
        self.statement_pools.get(name).unwrap_or(&self.home).clone()
    }

    /// Records where the client's named statement `name` was prepared.
    fn note_statement_pool(&mut self, name: &str) {
        if name.is_empty() {
            return;
        }
        if Arc::ptr_eq(&self.pool, &self.home) {
            self.statement_pools.remove(name);
        } else {
            self.statement_pools.insert(name.to_owned(), self.pool.clone());
        }
    }

    /// Runs a decided message, once it can run on its server.
    async fn dispatch(&mut self, frame: Frame, decided: Decided) -> Result<(), End> {
        if !self.switch_to(&decided) {
            self.deferred = Some(Deferred { frame, decided });
            return Ok(());
        }
        match frame.tag() {
            tag::QUERY => self.on_query(&frame, decided.sql).await,
            tag::PARSE => self.on_parse(&frame, decided.sql).await,
            tag::BIND => self.on_bind(&frame).await,
            tag::DESCRIBE => self.on_describe(&frame).await,
            _ => self.on_close(&frame).await,
        }
    }

    /// Inside a transaction block, or an extended batch not synced yet (an implicit one).
    fn in_transaction(&self) -> bool {
        self.status != TransactionStatus::Idle || self.unsynced
    }

    /// Messages are on their way to the server or answers on their way back.
    fn in_flight(&self) -> bool {
        !self.queue.is_empty() || !self.server_out.is_empty()
    }

    /// Makes `decided.pool` the client's current one. False when the move must wait for the
    /// current server to answer what is in flight first.
    fn switch_to(&mut self, decided: &Decided) -> bool {
        let target = &decided.pool;
        if Arc::ptr_eq(target, &self.pool) {
            return true;
        }
        if self.in_transaction() {
            // The transaction's server keeps the statement (pgbouncer-rr's rule).
            if decided.routed {
                tracing::info!(route = %target.database, transaction_on = %self.pool.database, "route ignored inside a transaction");
            }
            return true;
        }
        if self.in_flight() {
            return false;
        }
        if let Some(server) = self.server.take() {
            if !self.pooled() {
                self.parked.push(server);
            } else if self.settings.needs_work() {
                self.server = Some(server);
                self.carry_settings();
                if self.in_flight() {
                    return false;
                }
                if let Some(server) = self.server.take() {
                    self.give_back(server);
                }
            } else {
                self.give_back(server);
            }
        }
        tracing::debug!(from = %self.pool.database, to = %target.database, "client moves to another database");
        self.pool = target.clone();
        if let Some(i) = self.parked.iter().position(|s| Arc::ptr_eq(s.pool(), target)) {
            let server = self.parked.swap_remove(i);
            self.handle.set_state(ClientState::Active, Some(server.conn_ref().cancel_target()));
            self.server = Some(server);
        }
        true
    }

    /// The pool of `[databases]` entry `database` for this client's user.
    fn pool_of(&mut self, database: &str) -> Option<Arc<Pool>> {
        if database == self.identity.database {
            return Some(self.home.clone());
        }
        if let Some(pool) = self.routes.get(database).filter(|p| !p.is_removed()) {
            return Some(pool.clone());
        }
        let pool = super::pool_for(self.shared, database, &self.identity.user, self.scram_keys.as_ref())?;
        self.routes.insert(database.to_owned(), pool.clone());
        Some(pool)
    }

    // ----- statements -----

    async fn on_query(&mut self, frame: &Frame, rewritten: Option<String>) -> Result<(), End> {
        let original = messages::parse_query(frame.body()).map_err(End::ClientProtocol)?;
        let sql = rewritten.as_deref().unwrap_or(original);
        if self.pooled() {
            let commands = state_commands(sql);
            if self.only_deallocates(&commands) {
                return Ok(());
            }
            self.note_session_state(sql, &commands);
            for command in &commands {
                self.settings.observe(command);
                match command {
                    StateCommand::DeallocateAll | StateCommand::DiscardAll => {
                        self.statements.clear();
                        self.statement_pools.clear();
                    }
                    StateCommand::Deallocate(name) => {
                        self.statements.remove(name);
                        self.statement_pools.remove(name);
                    }
                    _ => {}
                }
            }
        }
        match rewritten {
            None => self.forward(frame, Kind::Query).await,
            Some(sql) => {
                let mut message = BytesMut::new();
                messages::encode_query(&sql, &mut message);
                if self.ensure_server(Kind::Query).await? {
                    self.send(&message, Kind::Query);
                }
                Ok(())
            }
        }
    }

    /// Asks the plugin chain about a statement: where it runs and its SQL after rewrites.
    /// `None`: the statement was refused and the client answered.
    async fn consult_policy(&mut self, kind: Kind, sql: &str, parse: Option<&str>) -> Option<Decided> {
        let chain = self.shared.policy();
        if chain.is_empty() {
            return match self.cluster_route(kind, None).await {
                ClusterRoute::Pool(pool) => Some(Decided { pool, sql: None, routed: false }),
                ClusterRoute::Failed => None,
                ClusterRoute::NotACluster => Some(Decided { pool: self.home.clone(), sql: None, routed: false }),
            };
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
        let config = self.shared.config();
        let decision = chain.decide(&request, |db| config.databases.contains_key(db)).await;
        // A cluster database (the client's own, or the one routed to) picks a node.
        if let Decision::Run { route, sql } = &decision {
            match self.cluster_route(kind, route.as_ref()).await {
                ClusterRoute::Pool(pool) => return Some(Decided { pool, sql: sql.clone(), routed: route.is_some() }),
                ClusterRoute::Failed => return None,
                ClusterRoute::NotACluster => {}
            }
        }
        match decision {
            Decision::Reject(error) => {
                self.fail(kind, error);
                None
            }
            Decision::Run { route: Some(Route::Database(target)), sql } => match self.pool_of(&target) {
                Some(pool) => Some(Decided { pool, sql, routed: true }),
                None => {
                    // Removed by a RELOAD since the chain checked it.
                    self.fail(kind, ErrorResponse::error("3D000", format!("database \"{target}\" does not exist")));
                    None
                }
            },
            // Primary and replica are the client's own database until clusters arrive.
            Decision::Run { route, sql } => Some(Decided { pool: self.home.clone(), sql, routed: route.is_some() }),
        }
    }

    /// Notes statements whose effect stays in the server session (transaction and statement
    /// modes): that connection is reset before it serves another client.
    fn note_session_state(&mut self, sql: &str, commands: &[StateCommand]) {
        if !self.session_state && (commands.contains(&StateCommand::SessionState) || calls_session_state_function(sql))
        {
            tracing::debug!("client uses session state that cannot be carried; its server connection will be reset");
            self.session_state = true;
        }
    }

    /// A Query made only of DEALLOCATE statements for the client's own statements is
    /// answered by pgvane: those statements live under other names on the servers.
    fn only_deallocates(&mut self, commands: &[StateCommand]) -> bool {
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
                    self.statement_pools.remove(name);
                    "DEALLOCATE"
                }
                _ => {
                    self.statements.clear();
                    self.statement_pools.clear();
                    "DEALLOCATE ALL"
                }
            };
            let mut message = BytesMut::new();
            messages::encode_command_complete(command_tag, &mut message);
            self.own(message.freeze(), Undo::default());
        }
        self.own_ready_for_query();
        true
    }

    async fn on_parse(&mut self, frame: &Frame, rewritten: Option<String>) -> Result<(), End> {
        let original = Parse::decode(frame.body()).map_err(End::ClientProtocol)?;
        let parse = Parse { query: rewritten.as_deref().unwrap_or(original.query), ..original.clone() };
        let rewritten_frame = rewritten.as_ref().map(|_| {
            let mut message = BytesMut::new();
            parse.encode(&mut message);
            message
        });
        if self.pooled() {
            let commands = state_commands(parse.query);
            self.note_session_state(parse.query, &commands);
            for command in commands {
                self.settings.observe(&command);
            }
        }
        if !self.pooled() || parse.name.is_empty() {
            self.note_statement_pool(parse.name);
            return match rewritten_frame {
                None => self.forward(frame, Kind::Parse).await,
                Some(message) => {
                    if self.ensure_server(Kind::Parse).await? {
                        self.send(&message, Kind::Parse);
                    }
                    Ok(())
                }
            };
        }
        if self.statements.contains(parse.name) {
            let message = format!("prepared statement \"{}\" already exists", parse.name);
            self.fail(Kind::Parse, ErrorResponse::error("42P05", message));
            return Ok(());
        }
        self.note_statement_pool(parse.name);
        let statement = Arc::new(Statement::from_parse(&parse));
        let client_name = parse.name.to_owned();
        self.statements.insert(&client_name, statement.clone());
        let Some(server) = self.server.as_mut() else {
            // Holding no server connection, the statement is prepared on one when first used
            // (a mistake in it is reported then). Waiting for a server here would make a
            // client that prepares statements outside transactions (libpq's PQprepare, as
            // pgbench -M prepared does) wait for connections its own other sessions hold.
            let mut message = BytesMut::new();
            messages::encode_empty(tag::PARSE_COMPLETE, &mut message);
            self.own(message.freeze(), Undo::default());
            return Ok(());
        };
        if server.conn().statements.touch(&statement.server_name) {
            let mut message = BytesMut::new();
            messages::encode_empty(tag::PARSE_COMPLETE, &mut message);
            self.unsynced = true;
            self.own(message.freeze(), Undo { client_statement: Some(client_name), ..Undo::default() });
        } else {
            self.server_out.extend_from_slice(&statement.parse_message);
            let undo = Undo {
                client_statement: Some(client_name),
                server_statement: Some(statement.server_name.clone()),
                ..Undo::default()
            };
            self.expect(Kind::Parse, Purpose::Client, undo);
            self.started(Kind::Parse);
            self.remember_on_server(&statement.server_name);
        }
        Ok(())
    }

    /// Records that the server has `server_name`, closing the least recently used statement
    /// if the server's cache is full.
    fn remember_on_server(&mut self, server_name: &str) {
        let Some(server) = self.server.as_mut() else { return };
        if let Some(evicted) = server.conn().statements.insert(server_name.to_owned()) {
            messages::encode_describe_or_close(tag::CLOSE, Target::Statement, &evicted, &mut self.server_out);
            let undo = Undo { closed_statement: Some(evicted), ..Undo::default() };
            self.expect(Kind::Close, Purpose::Injected, undo);
        }
    }

    /// Makes sure the current server has the client's statement, preparing it if not.
    fn prepare_on_server(&mut self, statement: &Statement) {
        let Some(server) = self.server.as_mut() else { return };
        if server.conn().statements.touch(&statement.server_name) {
            return;
        }
        self.server_out.extend_from_slice(&statement.parse_message);
        let undo = Undo { server_statement: Some(statement.server_name.clone()), ..Undo::default() };
        self.expect(Kind::Parse, Purpose::Injected, undo);
        self.remember_on_server(&statement.server_name);
    }

    async fn on_bind(&mut self, frame: &Frame) -> Result<(), End> {
        let (_, name, _) = messages::parse_bind_names(frame.body()).map_err(End::ClientProtocol)?;
        let statement = self.client_statement(name);
        self.send_using_statement(frame, Kind::Bind, statement, |server_name, out| {
            messages::encode_bind_renamed(frame.body(), server_name, out)
        })
        .await
    }

    async fn on_describe(&mut self, frame: &Frame) -> Result<(), End> {
        let (target, name) = messages::parse_describe_or_close(frame.body()).map_err(End::ClientProtocol)?;
        let statement = if target == Target::Statement { self.client_statement(name) } else { None };
        self.send_using_statement(frame, Kind::Describe, statement, |server_name, out| {
            messages::encode_describe_or_close(tag::DESCRIBE, Target::Statement, server_name, out);
            Ok(())
        })
        .await
    }

    /// The client's named statement `name`, when pgvane renames statements (pooled modes).
    fn client_statement(&self, name: &str) -> Option<Arc<Statement>> {
        match self.pooled() && !name.is_empty() {
            true => self.statements.get(name).cloned(),
            false => None,
        }
    }

    /// Sends a Bind or Describe naming a client's statement: the statement is prepared on
    /// the server if needed and the message re-encoded with the server's name for it by
    /// `rename`. Without a known statement the message goes as it came (the server answers
    /// an unknown name with the error PostgreSQL gives).
    async fn send_using_statement(
        &mut self,
        frame: &Frame,
        kind: Kind,
        statement: Option<Arc<Statement>>,
        rename: impl FnOnce(&str, &mut BytesMut) -> Result<(), ProtocolError>,
    ) -> Result<(), End> {
        let Some(statement) = statement else {
            return self.forward(frame, kind).await;
        };
        if !self.ensure_server(kind).await? {
            return Ok(());
        }
        self.prepare_on_server(&statement);
        let mut renamed = BytesMut::new();
        rename(&statement.server_name, &mut renamed).map_err(End::ClientProtocol)?;
        self.send(&renamed, kind);
        Ok(())
    }

    async fn on_close(&mut self, frame: &Frame) -> Result<(), End> {
        let (target, name) = messages::parse_describe_or_close(frame.body()).map_err(End::ClientProtocol)?;
        if target == Target::Statement {
            self.statement_pools.remove(name);
        }
        if self.pooled() && target == Target::Statement && !name.is_empty() {
            // The server keeps its copy for other clients (until evicted); the client's is gone.
            // Closing a statement that does not exist is not an error in PostgreSQL either.
            self.statements.remove(name);
            let mut message = BytesMut::new();
            messages::encode_empty(tag::CLOSE_COMPLETE, &mut message);
            if self.server.is_some() {
                self.unsynced = true;
            }
            self.own(message.freeze(), Undo::default());
            return Ok(());
        }
        self.forward(frame, Kind::Close).await
    }

    // ----- getting and giving back a server connection -----

    /// Makes sure a server connection is held. `Ok(false)` when none could be had: the
    /// client has been answered with an error for its message of `kind`.
    async fn ensure_server(&mut self, kind: Kind) -> Result<bool, End> {
        if self.server.is_some() {
            return Ok(true);
        }
        // An idle connection free at once (the common case) needs no waiting machinery.
        let checkout = match self.pool.try_checkout() {
            Some(server) => Some(Ok(server)),
            None => self.wait_for_server().await?,
        };
        match checkout {
            Some(Ok(mut server)) => {
                self.handle.set_state(ClientState::Active, Some(server.conn().cancel_target()));
                // The client's settings (in session mode: its startup parameters, for a
                // server of another database the policy routed to).
                if let Some(sql) = sync_sql(&self.settings.current, &mut server.conn().applied_settings) {
                    messages::encode_query(&sql, &mut self.server_out);
                    self.queue.push_back(Expect::Reply {
                        kind: Kind::Query,
                        purpose: Purpose::ApplySettings,
                        undo: Undo::default(),
                        replay: None,
                    });
                }
                self.server = Some(server);
                Ok(true)
            }
            Some(Err(e)) => {
                tracing::warn!(error = %e, "no server connection for client");
                self.handle.set_state(ClientState::Idle, None);
                let error = match e {
                    PoolError::WaitTimeout(_) => ErrorResponse::error(
                        "53300",
                        format!(
                            "no server connection became free within query_wait_timeout_ms ({} ms)",
                            self.query_wait.as_millis()
                        ),
                    ),
                    PoolError::Connect(ServerError::Server(server_error)) => {
                        ErrorResponse::error(server_error.code(), server_error.message())
                    }
                    PoolError::Connect(e) => {
                        ErrorResponse::error("08006", format!("could not connect to the server: {e}"))
                    }
                };
                self.fail(kind, error);
                Ok(false)
            }
            None => {
                self.handle.set_state(ClientState::Idle, None);
                self.fail(kind, ErrorResponse::error("57014", "canceling statement due to user request"));
                Ok(false)
            }
        }
    }

    /// Waits for a server connection of the current pool: `None` when the client cancelled
    /// the wait.
    async fn wait_for_server(&mut self) -> Result<Option<Result<PooledConn, PoolError>>, End> {
        // Whatever pgvane already owes the client goes out before a possibly long wait.
        self.client.flush().await.map_err(|_| End::ClientGone)?;
        self.handle.set_state(ClientState::Waiting, None);
        let started = Instant::now();
        let signals = self.handle.signals.clone();
        let checkout = tokio::select! {
            r = self.pool.checkout(self.query_wait) => Some(r),
            () = signals.cancel.notified() => None,
            () = signals.kill.raised() => return Err(End::Killed),
        };
        let checkout = match checkout {
            // A cluster node that cannot be reached: the statement may move to the writer.
            Some(Err(e)) => self.retry_checkout_elsewhere(e).await,
            other => other,
        };
        self.pool.stats.record_wait(started.elapsed());
        tracing::trace!(waited = ?started.elapsed(), "server connection wait over");
        Ok(checkout)
    }

    /// In transaction and statement modes, gives the server connection back once it is idle
    /// with nothing in flight, after carrying over any settings the client changed.
    fn maybe_release(&mut self) {
        if !self.pooled() {
            return;
        }
        let Some(server) = self.server.as_ref() else { return };
        // More client messages already here (and staying on this server): keep it for them.
        let more_here = !self.client.read_buf.is_empty() && self.deferred.is_none();
        if !self.server_is_idle(server) || more_here {
            return;
        }
        if self.settings.needs_work() {
            self.carry_settings();
            return;
        }
        if let Some(server) = self.server.take() {
            self.give_back(server);
        }
    }

    /// Gives an idle server connection back to its pool (transaction and statement modes),
    /// reset or closed if the client left state on it.
    fn give_back(&mut self, server: PooledConn) {
        tracing::trace!("server connection released");
        self.flush_stats();
        if std::mem::take(&mut self.server_tainted) {
            server.discard();
        } else if std::mem::take(&mut self.session_state) {
            server.release_after(SESSION_STATE_RESET.to_owned());
        } else {
            server.release();
        }
        self.handle.set_state(ClientState::Idle, None);
    }

    /// Queues the queries that restore or read back the settings the client changed.
    fn carry_settings(&mut self) {
        let Some(server) = self.server.as_mut() else { return };
        if let Some(sql) = self.settings.restore_startup(&mut server.conn().applied_settings) {
            messages::encode_query(&sql, &mut self.server_out);
            self.queue.push_back(Expect::Reply {
                kind: Kind::Query,
                purpose: Purpose::ApplySettings,
                undo: Undo::default(),
                replay: None,
            });
        }
        if let Some((sql, names)) = self.settings.capture_query() {
            messages::encode_query(&sql, &mut self.server_out);
            let purpose = Purpose::CaptureSettings(names, Vec::new());
            self.queue.push_back(Expect::Reply { kind: Kind::Query, purpose, undo: Undo::default(), replay: None });
        }
    }

    fn flush_stats(&mut self) {
        self.pool.stats.add_traffic(std::mem::take(&mut self.received), std::mem::take(&mut self.sent));
    }

    // ----- server → client -----

    fn handle_server_frames(&mut self) -> Result<(), End> {
        loop {
            let Some(server) = self.server.as_mut() else { return Ok(()) };
            let frame = match decode_frame(&mut server.conn().read_buf, MAX_SERVER_FRAME_BYTES) {
                Ok(Some(frame)) => frame,
                Ok(None) => return Ok(()),
                Err(e) => return Err(End::Server(e.into())),
            };
            if let Some(lost) = self.going_away(&frame) {
                return Err(End::Server(lost));
            }
            self.on_server_frame(&frame)?;
        }
    }

    fn send_to_client(&mut self, raw: &[u8]) {
        match raw.first() {
            Some(&t) if self.skip_echoes > 0 && is_echo(t) => {
                self.skip_echoes -= 1;
                return;
            }
            // The echoes of a replay come before its first ReadyForQuery.
            Some(&tag::READY_FOR_QUERY) => self.skip_echoes = 0,
            _ => {}
        }
        self.sent += raw.len() as u64;
        self.client.out.extend_from_slice(raw);
    }

    fn on_server_frame(&mut self, frame: &Frame) -> Result<(), End> {
        let response = frame.tag();
        tracing::trace!(response = %(response as char), queued = self.queue.len(), "from server");
        let for_client = matches!(self.queue.front(), None | Some(Expect::Reply { purpose: Purpose::Client, .. }));
        match response {
            tag::PARAMETER_STATUS => {
                let (name, value) =
                    messages::parse_parameter_status(frame.body()).map_err(|e| End::Server(e.into()))?;
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
            tag::NOTICE_RESPONSE | tag::NOTIFICATION_RESPONSE => {
                if for_client {
                    self.answered = true;
                    self.send_to_client(frame.raw());
                }
                return Ok(());
            }
            _ => {}
        }
        let (kind, from_client) = match self.queue.front() {
            Some(Expect::Reply { kind, purpose, .. }) => (*kind, matches!(purpose, Purpose::Client)),
            _ => return Err(End::Server(ServerError::Unexpected(response as char))),
        };
        if response == tag::ERROR_RESPONSE && from_client {
            self.note_refused_write(frame);
        }
        match response {
            tag::COMMAND_COMPLETE => {
                if let Some(server) = self.server.as_mut() {
                    server.conn().note_command_complete(frame.body());
                }
            }
            tag::DATA_ROW => {
                if let Some(Expect::Reply { purpose: Purpose::CaptureSettings(_, values), .. }) = self.queue.front_mut()
                {
                    let row = messages::parse_data_row(frame.body()).map_err(|e| End::Server(e.into()))?;
                    *values = row.iter().map(|v| v.map(|v| String::from_utf8_lossy(v).into_owned())).collect();
                }
            }
            tag::ERROR_RESPONSE if kind.is_extended() => {
                // The client sees every error of an extended message, even of pgvane's own:
                // the messages it sent next depend on it.
                self.send_to_client(frame.raw());
                self.skip_to_sync();
                self.send_own_responses();
                return Ok(());
            }
            tag::ERROR_RESPONSE if !from_client => {
                let error = ErrorResponse::parse(frame.body()).map_err(|e| End::Server(e.into()))?;
                if let Some(Expect::Reply { purpose: Purpose::ApplySettings, .. }) = self.queue.front() {
                    // The client's settings (startup parameters included) do not apply on this
                    // server connection: the session cannot go on as the client expects.
                    return Err(End::Fatal(ErrorResponse::fatal(error.code(), error.message())));
                }
                tracing::warn!(%error, "reading back the client's settings failed");
                self.server_tainted = true;
            }
            tag::READY_FOR_QUERY => {
                let status = messages::parse_ready_for_query(frame.body()).map_err(|e| End::Server(e.into()))?;
                if from_client {
                    self.client_ready(status)?;
                    self.forget_answers();
                }
            }
            _ => {}
        }
        // A simple Query's RowDescription comes before the statement runs; after a
        // CommandComplete it comes too late to matter.
        let echo = from_client && is_echo(response) && (kind.is_extended() || response == tag::ROW_DESCRIPTION);
        if for_client {
            match echo {
                true => self.echoes_sent += 1,
                false => self.answered |= response != tag::READY_FOR_QUERY,
            }
            self.send_to_client(frame.raw());
        }
        if kind.ends_with(response) {
            match self.queue.pop_front() {
                Some(Expect::Reply { purpose: Purpose::Client, undo, replay, .. }) if echo => match replay {
                    Some(frame) => self.echoed.push((frame, undo)),
                    None => self.answered = true, // a replay could not make this echo again
                },
                Some(Expect::Reply { purpose: Purpose::CaptureSettings(names, values), .. }) => {
                    if let Some(server) = self.server.as_mut() {
                        self.settings.captured(&names, &values, &mut server.conn().applied_settings);
                    }
                    self.report_settled_parameters();
                }
                Some(Expect::Reply { purpose: Purpose::ApplySettings, .. }) => self.report_settled_parameters(),
                _ => {}
            }
            self.send_own_responses();
        }
        Ok(())
    }

    /// A ReadyForQuery ended what the client had in flight: nothing since can be replayed
    /// from before it.
    fn forget_answers(&mut self) {
        self.answered = false;
        self.echoes_sent = 0;
        self.echoed.clear();
    }

    /// Tells the client a parameter's value if it differs from what it was told.
    fn report_parameter(&mut self, name: &str, value: &str) {
        if self.reported_parameters.get(name).map(String::as_str) != Some(value) {
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
        let now = Instant::now();
        if let Some(started) = self.query_start.take() {
            self.pool.stats.record_query(now - started);
        }
        self.flush_stats();
        if status == TransactionStatus::Idle {
            if let Some(started) = self.xact_start.take() {
                self.pool.stats.record_xact(now - started);
            }
        } else if self.mode == PoolMode::Statement {
            return Err(End::Fatal(ErrorResponse::fatal(
                "0A000",
                "transaction blocks are not allowed in pool_mode = \"statement\"",
            )));
        }
        self.status = status;
        Ok(())
    }

    /// After an error in an extended message the server skips everything up to Sync: drop
    /// what was expected from those messages, undoing what they would have done.
    fn skip_to_sync(&mut self) {
        while let Some(front) = self.queue.front() {
            if matches!(front, Expect::Reply { kind: Kind::Sync, .. }) {
                return;
            }
            if let Some(Expect::Reply { undo, .. } | Expect::Own { undo, .. }) = self.queue.pop_front() {
                self.undo(undo);
            }
        }
        // No Sync sent yet: ignore the client's messages up to it, as the server does.
        self.skipping = true;
    }

    fn undo(&mut self, undo: Undo) {
        if let Some(name) = undo.client_statement {
            self.statements.remove(&name);
            self.statement_pools.remove(&name);
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
    fn send_own_responses(&mut self) {
        while let Some(Expect::Own { .. }) = self.queue.front() {
            if let Some(Expect::Own { message, .. }) = self.queue.pop_front() {
                self.send_to_client(&message);
            }
        }
    }
}

/// A response that only confirms an extended message or describes a statement or portal:
/// running the message again makes the same one.
fn is_echo(response: u8) -> bool {
    matches!(
        response,
        tag::PARSE_COMPLETE
            | tag::BIND_COMPLETE
            | tag::CLOSE_COMPLETE
            | tag::PARAMETER_DESCRIPTION
            | tag::ROW_DESCRIPTION
            | tag::NO_DATA
    )
}

/// Makes sure a read can make progress on the partial frame at the front of `buf`.
fn reserve_for_partial(buf: &mut BytesMut) {
    const MIN_READ: usize = 8 * 1024;
    let wanted = match buf.get(1..5) {
        Some(l) => (u32::from_be_bytes([l[0], l[1], l[2], l[3]]) as usize + 1).saturating_sub(buf.len()),
        None => 0,
    };
    // Bounded: the frame length was already checked when decoding (or will be, before use).
    let wanted = wanted.clamp(MIN_READ, 64 * 1024 * 1024);
    if buf.capacity() - buf.len() < wanted {
        buf.reserve(wanted);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn response_kinds_end_where_the_protocol_says() {
        assert!(Kind::Parse.ends_with(b'1') && !Kind::Parse.ends_with(b'2'));
        assert!(Kind::Describe.ends_with(b'T') && Kind::Describe.ends_with(b'n') && !Kind::Describe.ends_with(b't'));
        assert!(Kind::Execute.ends_with(b'C') && Kind::Execute.ends_with(b's') && !Kind::Execute.ends_with(b'D'));
        assert!(Kind::Query.ends_with(b'Z') && !Kind::Query.ends_with(b'C'));
        assert!(Kind::Close.is_extended() && !Kind::Sync.is_extended() && !Kind::Query.is_extended());
    }

    #[test]
    fn partial_frames_get_room_bounded_by_their_length() {
        let mut buf = BytesMut::from(&b"D\0\x01\0\0abc"[..]);
        reserve_for_partial(&mut buf);
        assert!(buf.capacity() >= 0x1_0001);
        let mut huge = BytesMut::from(&b"Q\x7f\xff\xff\xff"[..]);
        reserve_for_partial(&mut huge);
        assert!(huge.capacity() <= 64 * 1024 * 1024 + 1024);
    }
}

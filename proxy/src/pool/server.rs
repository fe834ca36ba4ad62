//! One connection to a PostgreSQL server: connect (over TCP with TLS as `server_tls_sslmode`
//! says, or to a unix-domain socket when the host is a directory), log in, run pgvane's own
//! simple queries.

use std::collections::BTreeMap;
use std::io;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use thiserror::Error;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Notify;

use crate::auth::md5;
use crate::auth::scram::{ClientBinding, ClientCredential, ClientExchange, ScramError, ScramKeys, MECHANISM_PLUS};
use crate::endpoint::{self, ServerAddr};
use crate::protocol::messages::{self, tag, Authentication, ErrorResponse, TransactionStatus};
use crate::protocol::{decode_frame, Frame, ProtocolError};
use crate::tls::{ServerTls, ServerTlsMode, Stream, TlsConnectError};

/// Servers are trusted peers, but a frame still may not claim more than this.
pub const MAX_SERVER_FRAME_BYTES: usize = i32::MAX as usize;

/// What pgvane logs in to a server with.
#[derive(Clone)]
pub enum ServerCredential {
    /// No secret: only works if the server trusts pgvane.
    None,
    /// A clear-text password (from the auth file or the database entry).
    Password(String),
    /// An `md5…` hash from the auth file: good for MD5 authentication only.
    Md5Hash(String),
    /// SCRAM keys recovered from a client's proof: good for SCRAM when the server holds the same verifier.
    ScramKeys(ScramKeys),
}

impl std::fmt::Debug for ServerCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ServerCredential::None => "None",
            ServerCredential::Password(_) => "Password(..)",
            ServerCredential::Md5Hash(_) => "Md5Hash(..)",
            ServerCredential::ScramKeys(_) => "ScramKeys(..)",
        })
    }
}

/// Whether pgvane answers a server's AuthenticationCleartextPassword (`server_allow_cleartext_password`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Cleartext {
    /// Only over TLS (or a unix-domain socket, which has no path to listen on): on a plain TCP
    /// connection anyone on the path would read the password.
    #[default]
    OnlyOverTls,
    /// Over any connection.
    Allowed,
}

impl Cleartext {
    /// From the `server_allow_cleartext_password` setting.
    pub fn from_setting(allow: bool) -> Cleartext {
        if allow {
            Cleartext::Allowed
        } else {
            Cleartext::OnlyOverTls
        }
    }
}

/// Where and as whom to connect.
#[derive(Debug, Clone)]
pub struct ServerTarget {
    /// Host name or address, or a socket directory (starts with `/`).
    pub host: String,
    /// Port.
    pub port: u16,
    /// Database name on the server.
    pub dbname: String,
    /// User name on the server.
    pub user: String,
}

/// Why a server connection failed. Any of these means the connection is discarded.
#[derive(Debug, Error)]
pub enum ServerError {
    /// Network error.
    #[error("server connection: {0}")]
    Io(#[from] io::Error),
    /// Connect and login took longer than `server_connect_timeout_ms`.
    #[error("timed out connecting to the server")]
    ConnectTimeout,
    /// The server closed the connection.
    #[error("the server closed the connection")]
    Closed,
    /// The server broke the protocol.
    #[error("server sent invalid data: {0}")]
    Protocol(#[from] ProtocolError),
    /// The server sent an unexpected message.
    #[error("unexpected message {0:?} from the server")]
    Unexpected(char),
    /// The server refused the login or failed a statement; its error is kept for the client.
    #[error("server error: {0}")]
    Server(ErrorResponse),
    /// pgvane cannot answer the server's authentication request with the credential it has.
    #[error("cannot log in to the server: {0}")]
    Auth(String),
    /// The server asked for a clear-text password over a connection without TLS, and
    /// `server_allow_cleartext_password` is off: pgvane did not send it.
    #[error(
        "the server {server} asks for a clear-text password over a connection without TLS; pgvane does not send it \
         (use TLS to the server, another authentication method, or server_allow_cleartext_password = true)"
    )]
    CleartextRefused {
        /// The server, `host:port`.
        server: String,
    },
    /// SCRAM exchange with the server failed.
    #[error("SCRAM authentication with the server failed: {0}")]
    Scram(#[from] ScramError),
    /// The server does not offer TLS and `server_tls_sslmode` requires it.
    #[error("the server does not support TLS, and server_tls_sslmode = \"{0}\" requires it")]
    TlsRefused(&'static str),
    /// The TLS handshake failed (the certificate did not verify, for one).
    #[error(transparent)]
    Tls(#[from] TlsConnectError),
}

impl ServerError {
    /// The SQLSTATE a client gets when its login or statement cannot have a server
    /// connection because of this error (a server's own error keeps its code).
    pub fn sqlstate(&self) -> &str {
        match self {
            ServerError::Server(error) => error.code(),
            // pgvane itself refuses the login for the server's sake: "the server (pgvane)
            // rejected establishment of the connection".
            ServerError::CleartextRefused { .. } => "08004",
            _ => "08006",
        }
    }
}

/// A logged-in server connection, idle (ReadyForQuery seen) whenever it is outside a session.
#[derive(Debug)]
pub struct ServerConn {
    /// The connection.
    pub stream: Stream,
    /// Bytes read from the server and not yet handled.
    pub read_buf: BytesMut,
    /// Current values of the parameters the server reports (ParameterStatus).
    pub params: BTreeMap<String, String>,
    /// The server's BackendKeyData, for cancel requests.
    pub backend_key: (u32, u32),
    /// The server's address, for cancel requests.
    pub peer: ServerAddr,
    /// When it was opened.
    pub created: Instant,
    /// When it was last returned to the pool.
    pub last_used: Instant,
    /// Prepared statements pgvane created on it (transaction and statement modes).
    pub statements: ServerStatements,
    /// Settings pgvane applied on it for the client using it, beyond the connection's defaults.
    pub applied_settings: BTreeMap<String, String>,
    /// Cancel requests on their way to its backend.
    pub cancels: Arc<CancelsInFlight>,
}

/// Where and how to cancel what runs on a server connection.
#[derive(Debug, Clone)]
pub struct CancelTarget {
    /// The server's address.
    pub addr: ServerAddr,
    /// The server's process ID.
    pub pid: u32,
    /// The server's secret key.
    pub secret: u32,
    /// The connection's cancels in flight.
    pub in_flight: Arc<CancelsInFlight>,
}

impl CancelTarget {
    /// Sends a CancelRequest for it on a new connection, and waits until the server has
    /// closed that connection: by then the backend has been signalled.
    pub async fn send(&self) -> io::Result<()> {
        let mut stream = self.addr.connect().await?;
        let mut buf = BytesMut::new();
        messages::encode_cancel(self.pid, self.secret, &mut buf);
        stream.write_all(&buf).await?;
        stream.shutdown().await?;
        let mut rest = [0u8; 64];
        while stream.read(&mut rest).await? > 0 {}
        Ok(())
    }
}

/// Cancel requests on their way to a server connection's backend. The connection goes to no
/// other client until they have arrived (or been given up): a late cancel must not hit the
/// next client's query.
#[derive(Debug, Default)]
pub struct CancelsInFlight {
    count: AtomicUsize,
    settled: Notify,
}

/// One cancel in flight; dropping it marks it arrived or given up.
#[derive(Debug)]
pub struct CancelInFlight(Arc<CancelsInFlight>);

impl CancelsInFlight {
    /// Notes a cancel on its way.
    pub fn begin(self: &Arc<Self>) -> CancelInFlight {
        self.count.fetch_add(1, Ordering::SeqCst);
        CancelInFlight(self.clone())
    }

    /// True while a cancel is on its way.
    pub fn pending(&self) -> bool {
        self.count.load(Ordering::SeqCst) > 0
    }

    /// Completes once no cancel is on its way.
    pub async fn settled(&self) {
        loop {
            let notified = self.settled.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if !self.pending() {
                return;
            }
            notified.await;
        }
    }
}

impl Drop for CancelInFlight {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.settled.notify_waiters();
        }
    }
}

/// The prepared statements living on one server connection, least recently used first,
/// at most `capacity` of them.
#[derive(Debug, Default)]
pub struct ServerStatements {
    names: Vec<String>,
    capacity: usize,
}

impl ServerStatements {
    /// An empty set holding at most `capacity` names.
    pub fn new(capacity: usize) -> Self {
        ServerStatements { names: Vec::new(), capacity: capacity.max(1) }
    }

    /// True if `name` exists on the server; marks it recently used.
    pub fn touch(&mut self, name: &str) -> bool {
        match self.names.iter().position(|n| n == name) {
            Some(i) => {
                let n = self.names.remove(i);
                self.names.push(n);
                true
            }
            None => false,
        }
    }

    /// Records that `name` now exists; returns the name evicted to stay within capacity,
    /// which the caller must close on the server.
    pub fn insert(&mut self, name: String) -> Option<String> {
        if self.touch(&name) {
            return None;
        }
        self.names.push(name);
        (self.names.len() > self.capacity).then(|| self.names.remove(0))
    }

    /// Forgets `name` (its Parse failed, or it was closed).
    pub fn remove(&mut self, name: &str) {
        self.names.retain(|n| n != name);
    }

    /// Forgets everything (after DISCARD ALL / DEALLOCATE ALL).
    pub fn clear(&mut self) {
        self.names.clear();
    }

    /// Number of statements.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// True when there are none.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }
}

/// The schema generation statements are prepared for. pgvane names the statements it shares
/// between clients after their text, parameter types and the epoch of the client's Parse, so a
/// Parse after the epoch moved on never gets a plan made before. It moves on when the schema
/// may have changed (DDL run through pgvane, a server's `0A000 cached plan must not change
/// result type`, a client's `DEALLOCATE ALL` or `DISCARD ALL`). A statement a client prepared
/// before keeps its name, and its plan: PostgreSQL replans it, or refuses it with `0A000` as it
/// would on a direct connection, when its result type changed.
#[derive(Debug, Default)]
pub struct StatementEpoch(AtomicU64);

impl StatementEpoch {
    /// The current epoch.
    pub fn current(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }

    /// Statements parsed from now on are prepared afresh.
    pub fn invalidate_all(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

impl ServerConn {
    /// Connects and logs in, within `timeout`. A request for a clear-text password is
    /// answered over TLS or a unix-domain socket, or over plain TCP only when `cleartext`
    /// allows it.
    pub async fn connect(
        target: &ServerTarget,
        credential: &ServerCredential,
        tls: &ServerTls,
        timeout: Duration,
        max_prepared_statements: usize,
        cleartext: Cleartext,
    ) -> Result<ServerConn, ServerError> {
        tokio::time::timeout(timeout, Self::connect_inner(target, credential, tls, max_prepared_statements, cleartext))
            .await
            .map_err(|_| ServerError::ConnectTimeout)?
    }

    async fn connect_inner(
        target: &ServerTarget,
        credential: &ServerCredential,
        tls: &ServerTls,
        max_prepared_statements: usize,
        cleartext: Cleartext,
    ) -> Result<ServerConn, ServerError> {
        let (stream, peer) = endpoint::connect(&target.host, target.port).await?;
        let stream = start_tls(stream, &target.host, tls).await?;
        let now = Instant::now();
        let mut conn = ServerConn {
            stream,
            read_buf: BytesMut::with_capacity(16 * 1024),
            params: BTreeMap::new(),
            backend_key: (0, 0),
            peer,
            created: now,
            last_used: now,
            statements: ServerStatements::new(max_prepared_statements),
            applied_settings: BTreeMap::new(),
            cancels: Arc::default(),
        };
        let mut out = BytesMut::new();
        messages::encode_startup([("user", target.user.as_str()), ("database", target.dbname.as_str())], &mut out);
        conn.send(&out).await?;
        conn.login(target, credential, cleartext).await?;
        Ok(conn)
    }

    /// Answers the server's authentication requests, then reads up to the first ReadyForQuery.
    async fn login(
        &mut self,
        target: &ServerTarget,
        credential: &ServerCredential,
        cleartext: Cleartext,
    ) -> Result<(), ServerError> {
        let user = target.user.as_str();
        let mut scram: Option<ClientExchange> = None;
        let mut out = BytesMut::new();
        loop {
            let frame = self.read_frame().await?;
            match frame.tag() {
                tag::AUTHENTICATION => {
                    out.clear();
                    match Authentication::parse(frame.body())? {
                        Authentication::Ok => continue,
                        Authentication::CleartextPassword => match credential {
                            // No one is on the path of a unix-domain socket.
                            _ if !self.stream.is_tls()
                                && !self.stream.is_unix()
                                && cleartext == Cleartext::OnlyOverTls =>
                            {
                                let server = crate::config::NodeAddr { host: target.host.clone(), port: target.port };
                                tracing::warn!(
                                    server = %server,
                                    user,
                                    "server asks for a clear-text password over plain TCP; refused \
                                     (server_allow_cleartext_password = false)"
                                );
                                return Err(ServerError::CleartextRefused { server: server.to_string() });
                            }
                            ServerCredential::Password(p) => messages::encode_password(p, &mut out),
                            _ => return Err(no_secret("a clear-text password", credential)),
                        },
                        Authentication::Md5Password { salt } => {
                            let response = match credential {
                                ServerCredential::Password(p) => md5::md5_response_from_password(user, p, salt),
                                ServerCredential::Md5Hash(h) => md5::md5_response_from_hash(h, salt),
                                _ => return Err(no_secret("an MD5 password", credential)),
                            };
                            messages::encode_password(&response, &mut out);
                        }
                        Authentication::Sasl { mechanisms } => {
                            if !mechanisms.iter().any(|m| m == "SCRAM-SHA-256") {
                                return Err(ServerError::Auth(format!(
                                    "the server offers SASL mechanisms {mechanisms:?}, not SCRAM-SHA-256"
                                )));
                            }
                            // Over TLS, bind to the server's certificate when it offers -PLUS
                            // (libpq's channel_binding=prefer); "y" otherwise tells it we could.
                            let binding = match crate::tls::peer_channel_binding(&self.stream) {
                                Some(data) if mechanisms.iter().any(|m| m == MECHANISM_PLUS) => {
                                    ClientBinding::TlsServerEndPoint(data)
                                }
                                _ if self.stream.is_tls() => ClientBinding::NotOffered,
                                _ => ClientBinding::None,
                            };
                            let client_credential = match credential {
                                ServerCredential::Password(p) => ClientCredential::Password(p.clone()),
                                ServerCredential::ScramKeys(k) => ClientCredential::Keys(k.clone()),
                                _ => return Err(no_secret("SCRAM-SHA-256", credential)),
                            };
                            let mechanism = binding.mechanism();
                            let mut exchange = ClientExchange::new(client_credential).with_channel_binding(binding);
                            messages::encode_sasl_initial_response(mechanism, &exchange.client_first(), &mut out);
                            scram = Some(exchange);
                        }
                        Authentication::SaslContinue(data) => {
                            let exchange = scram.as_mut().ok_or(ServerError::Unexpected('R'))?;
                            messages::encode_sasl_response(&exchange.server_first(&data)?, &mut out);
                        }
                        Authentication::SaslFinal(data) => {
                            let exchange = scram.as_mut().ok_or(ServerError::Unexpected('R'))?;
                            exchange.server_final(&data)?;
                            continue;
                        }
                        Authentication::Unsupported(code) => {
                            return Err(ServerError::Auth(format!("unsupported authentication method {code}")))
                        }
                    }
                    self.send(&out).await?;
                }
                tag::PARAMETER_STATUS => self.note_parameter(&frame)?,
                tag::BACKEND_KEY_DATA => self.backend_key = messages::parse_backend_key_data(frame.body())?,
                tag::ERROR_RESPONSE => return Err(ServerError::Server(ErrorResponse::parse(frame.body())?)),
                tag::READY_FOR_QUERY => return Ok(()),
                tag::NOTICE_RESPONSE | tag::NEGOTIATE_PROTOCOL_VERSION => {}
                other => return Err(ServerError::Unexpected(other as char)),
            }
        }
    }

    /// Writes `bytes` and flushes them (TLS buffers).
    async fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes).await?;
        self.stream.flush().await
    }

    /// Records a ParameterStatus the server sent.
    pub fn note_parameter(&mut self, frame: &Frame) -> Result<(), ServerError> {
        let (name, value) = messages::parse_parameter_status(frame.body())?;
        self.params.insert(name.to_owned(), value.to_owned());
        Ok(())
    }

    /// Reads one whole frame.
    pub async fn read_frame(&mut self) -> Result<Frame, ServerError> {
        loop {
            if let Some(frame) = decode_frame(&mut self.read_buf, MAX_SERVER_FRAME_BYTES)? {
                return Ok(frame);
            }
            if self.stream.read_buf(&mut self.read_buf).await? == 0 {
                return Err(ServerError::Closed);
            }
        }
    }

    /// Sends `sql` with the simple protocol, without waiting for its answers.
    pub async fn send_query(&mut self, sql: &str) -> io::Result<()> {
        let mut out = BytesMut::new();
        messages::encode_query(sql, &mut out);
        self.send(&out).await
    }

    /// Runs `sql` with the simple protocol and waits for ReadyForQuery, discarding results.
    ///
    /// Returns the server's error if a statement failed (the connection is idle again then),
    /// and the transaction status at the end.
    pub async fn simple_query(&mut self, sql: &str) -> Result<Result<TransactionStatus, ErrorResponse>, ServerError> {
        let mut out = BytesMut::new();
        messages::encode_query(sql, &mut out);
        self.send(&out).await?;
        let mut error = None;
        loop {
            let frame = self.read_frame().await?;
            match frame.tag() {
                tag::ERROR_RESPONSE => error = Some(ErrorResponse::parse(frame.body())?),
                tag::PARAMETER_STATUS => self.note_parameter(&frame)?,
                tag::COMMAND_COMPLETE => self.note_command_complete(frame.body()),
                tag::READY_FOR_QUERY => {
                    let status = messages::parse_ready_for_query(frame.body())?;
                    return Ok(match error {
                        Some(e) => Err(e),
                        None => Ok(status),
                    });
                }
                tag::COPY_IN_RESPONSE | tag::COPY_OUT_RESPONSE | tag::COPY_BOTH_RESPONSE => {
                    return Err(ServerError::Unexpected(frame.tag() as char))
                }
                _ => {}
            }
        }
    }

    /// Keeps pgvane's view of the connection's session state right when a command wipes it:
    /// DISCARD ALL drops prepared statements and settings, DEALLOCATE ALL the statements.
    pub fn note_command_complete(&mut self, body: &[u8]) {
        match body {
            b"DISCARD ALL\0" => {
                self.statements.clear();
                self.applied_settings.clear();
            }
            b"DEALLOCATE ALL\0" => self.statements.clear(),
            _ => {}
        }
    }

    /// Where a cancel for this connection goes.
    pub fn cancel_target(&self) -> CancelTarget {
        CancelTarget {
            addr: self.peer.clone(),
            pid: self.backend_key.0,
            secret: self.backend_key.1,
            in_flight: self.cancels.clone(),
        }
    }

    /// Asks the server to cancel whatever this connection is running (a CancelRequest on a
    /// new connection), so a backend abandoned mid-query stops and rolls back instead of
    /// running on, holding locks, until it notices the closed socket.
    pub async fn cancel(&self) -> io::Result<()> {
        self.cancel_target().send().await
    }

    /// True if the idle connection looks usable: not closed by the server, nothing unread.
    ///
    /// An idle server sends nothing; bytes waiting mean it is shutting us down (a FATAL) or
    /// is confused, and either way the connection must not be handed out.
    pub fn is_healthy(&mut self) -> bool {
        self.read_buf.is_empty() && self.stream.is_idle_and_open()
    }
}

/// Asks the server for TLS (SSLRequest) unless `server_tls_sslmode = "disable"`, and runs the
/// handshake when it agrees. A server that declines gets a plain connection under `prefer`
/// only. A unix-domain socket stays plain whatever the mode says, as libpq does: TLS is not
/// used on it.
async fn start_tls(stream: Stream, host: &str, tls: &ServerTls) -> Result<Stream, ServerError> {
    let Stream::Plain(mut tcp) = stream else { return Ok(stream) };
    if !tls.enabled() {
        return Ok(Stream::Plain(tcp));
    }
    let mut out = BytesMut::new();
    messages::encode_ssl_request(&mut out);
    tcp.write_all(&out).await?;
    // Exactly one byte: anything after it belongs to the TLS handshake.
    let mut answer = [0u8; 1];
    tcp.read_exact(&mut answer).await?;
    match (answer[0], tls.mode) {
        (b'S', _) => Ok(tls.connect(host, tcp).await?),
        (b'N', ServerTlsMode::Prefer) => Ok(Stream::Plain(tcp)),
        (b'N', mode) => Err(ServerError::TlsRefused(server_mode_name(mode))),
        (other, _) => Err(ServerError::Unexpected(other as char)),
    }
}

fn server_mode_name(mode: ServerTlsMode) -> &'static str {
    match mode {
        ServerTlsMode::Disable => "disable",
        ServerTlsMode::Prefer => "prefer",
        ServerTlsMode::Require => "require",
        ServerTlsMode::VerifyCa => "verify-ca",
        ServerTlsMode::VerifyFull => "verify-full",
    }
}

fn no_secret(what: &str, credential: &ServerCredential) -> ServerError {
    let have = match credential {
        ServerCredential::None => "no password for this user",
        ServerCredential::Password(_) => "a password",
        ServerCredential::Md5Hash(_) => "only an MD5 hash for this user",
        ServerCredential::ScramKeys(_) => "only SCRAM keys for this user",
    };
    ServerError::Auth(format!("the server asks for {what}, but pgvane has {have}"))
}

//! One client, from the first byte to the last: startup, authentication, getting a server
//! connection, and the query loop.

mod auth;
pub(crate) mod client;
mod outbound;
mod pipeline;
mod relay;
pub(crate) mod router;
mod settings;
mod sql;
mod startup;
mod statements;

use std::future::Future;
use std::io;
use std::sync::Arc;

use thiserror::Error;
use tracing::Instrument;

use crate::clients::{ClientHandle, ClientState, Limits};
use crate::config::PoolMode;
use crate::endpoint::ClientAddr;
use crate::metrics::AuthFailure;
use crate::pool::{Pool, PoolError, PooledConn, ServerError};
use crate::protocol::messages::{self, Authentication, ErrorResponse, TransactionStatus};
use crate::protocol::ProtocolError;
use crate::shared::Shared;
use crate::tls::Stream;

pub use client::{ClientConn, TlsStart};
use relay::{End, Identity, Relay, Start};
use settings::{sync_sql, ClientSettings};
use startup::Login;

/// Why a session ended early. Client-side problems end the session; `Refused` carries the
/// error the client is sent before the connection closes.
#[derive(Debug, Error)]
pub enum SessionError {
    /// The client's socket failed.
    #[error("client connection: {0}")]
    ClientIo(#[source] io::Error),
    /// The client closed the connection.
    #[error("client closed the connection")]
    ClientGone,
    /// The client broke the protocol.
    #[error(transparent)]
    ClientProtocol(#[from] ProtocolError),
    /// The startup packet's length is out of bounds; the connection is closed without a reply.
    #[error("invalid length of startup packet: {0}")]
    StartupLength(#[source] ProtocolError),
    /// The client did not finish logging in within `client_login_timeout_ms`.
    #[error("client did not log in within client_login_timeout_ms")]
    LoginTimeout,
    /// The TLS handshake with the client failed (e.g. garbage instead of a ClientHello).
    #[error("TLS handshake with the client failed: {0}")]
    Tls(#[source] io::Error),
    /// pgvane refused the client with this error.
    #[error("{0}")]
    Refused(ErrorResponse),
}

/// What serves a client of the admin database (`pgvane`) once it has logged in and is known
/// to be in `admin_users`: the admin console. The listener hands it in, so that sessions do
/// not import the console, which sits above them.
pub trait Console: Send + Sync + 'static {
    /// Serves the admin client `user` until it leaves. AuthenticationOk has not been sent.
    fn serve<'a>(
        &'a self,
        client: &'a mut ClientConn,
        handle: &'a ClientHandle,
        shared: &'a Shared,
        user: &'a str,
    ) -> impl Future<Output = Result<(), SessionError>> + Send + 'a;
}

/// What a session noted for its metrics and its last log line.
#[derive(Debug, Default)]
struct Notes {
    /// The client logged in (not a cancel request, not refused).
    logged_in: bool,
    /// Its TLS handshake was counted.
    tls_counted: bool,
}

/// Why a login failed, for `pgvane_auth_failures_total`; `None` when the client just left.
fn login_failure(e: &SessionError) -> Option<AuthFailure> {
    match e {
        SessionError::ClientIo(_) | SessionError::ClientGone => None,
        SessionError::ClientProtocol(_) | SessionError::StartupLength(_) => Some(AuthFailure::Protocol),
        SessionError::LoginTimeout => Some(AuthFailure::Timeout),
        SessionError::Tls(_) => Some(AuthFailure::Tls),
        SessionError::Refused(error) if error.message().contains("TLS") => Some(AuthFailure::Tls),
        SessionError::Refused(error) => Some(AuthFailure::of_sqlstate(error.code())),
    }
}

/// Serves one accepted client connection (plain TCP or unix-domain) until it ends; `console`
/// serves it if it logs in to the admin database. Every log line of the session carries its
/// span: the connection id (`conn`, unique in the process), the client's address (`unix` on
/// the unix-domain socket), and once known its user and database.
pub async fn run(stream: Stream, peer: ClientAddr, shared: Arc<Shared>, console: impl Console) {
    let conn = shared.metrics.accepted();
    let span = tracing::info_span!(
        "session",
        conn,
        %peer,
        user = tracing::field::Empty,
        database = tracing::field::Empty
    );
    async move {
        let connected = std::time::Instant::now();
        if let Some(Err(e)) = stream.tcp().map(|tcp| tcp.set_nodelay(true)) {
            tracing::debug!(error = %e, "set_nodelay failed");
        }
        let mut client = ClientConn::new(stream);
        let settings = &shared.config().settings;
        let limits =
            Limits { max_client_conn: settings.max_client_conn, max_pending_logins: settings.max_pending_logins };
        let Some(handle) = shared.clients.admit(peer, limits) else {
            tracing::info!("client refused: every connection is taken by logged-in clients");
            let _ = client.send_error(&ErrorResponse::fatal("53300", "sorry, too many clients already")).await;
            return;
        };
        let mut notes = Notes::default();
        let result = serve(&mut client, &handle, peer, &shared, &console, &mut notes).await;
        match &result {
            Err(SessionError::Tls(_)) => shared.metrics.tls_handshake(false),
            _ if client.stream.is_tls() && !notes.tls_counted => shared.metrics.tls_handshake(true),
            _ => {}
        }
        if notes.logged_in && shared.config().settings.log_disconnections {
            let reason = match &result {
                Ok(()) => "client close request".to_owned(),
                Err(SessionError::Refused(error)) => error.message().to_owned(),
                Err(e) => e.to_string(),
            };
            let age_ms = u64::try_from(connected.elapsed().as_millis()).unwrap_or(u64::MAX);
            tracing::info!(age_ms, reason, "client disconnected");
        }
        match result {
            Ok(()) => tracing::debug!("session ended"),
            Err(SessionError::Refused(error)) => {
                tracing::info!(code = error.code(), message = error.message(), "client refused");
                let _ = client.send_error(&error).await;
                if error.code() == "57P01" {
                    client.linger(KILLED_LINGER).await;
                }
            }
            Err(SessionError::ClientProtocol(e)) => {
                tracing::info!(error = %e, "client protocol violation");
                let _ = client.send_error(&ClientConn::protocol_violation(&e)).await;
            }
            Err(SessionError::LoginTimeout) => {
                tracing::info!("client login timed out");
                let _ = client.send_error(&ErrorResponse::fatal("08006", "client login timeout")).await;
            }
            Err(e @ SessionError::Tls(_)) => tracing::info!(error = %e, "client refused"),
            Err(e) => tracing::debug!(error = %e, "session ended"),
        }
    }
    .instrument(span)
    .await
}

async fn serve(
    client: &mut ClientConn,
    handle: &ClientHandle,
    peer: ClientAddr,
    shared: &Shared,
    console: &impl Console,
    notes: &mut Notes,
) -> Result<(), SessionError> {
    let config = shared.config();
    let settings = &config.settings;
    let login = tokio::select! {
        login = tokio::time::timeout(settings.client_login_timeout(), startup::login(client, handle, shared, &config)) => {
            login.map_err(|_| SessionError::LoginTimeout).and_then(|login| login)
        }
        () = handle.signals.kill.raised() => {
            return Err(match handle.evicted() {
                true => SessionError::Refused(ErrorResponse::fatal(
                    "53300",
                    "too many connections are logging in (max_pending_logins): this one waited longest",
                )),
                false => killed(),
            });
        }
    };
    let login = match login {
        Ok(login) => login,
        Err(e) => {
            if let Some(reason) = login_failure(&e) {
                shared.metrics.auth_failed(reason);
            }
            return Err(e);
        }
    };
    let Some(Login { user, database, params, authenticated }) = login else {
        return Ok(()); // a cancel request: answered, nothing more to do
    };
    let span = tracing::Span::current();
    span.record("user", user.as_str());
    span.record("database", database.as_str());
    if client.stream.is_tls() {
        shared.metrics.tls_handshake(true);
        notes.tls_counted = true;
    }

    if database == crate::ADMIN_DATABASE {
        if !settings.admin_users.contains(&user) {
            shared.metrics.auth_failed(AuthFailure::NotAllowed);
            return Err(SessionError::Refused(ErrorResponse::fatal(
                "42501",
                format!("permission denied: \"{user}\" is not in admin_users"),
            )));
        }
        logged_in(shared, client, notes, &params);
        return console.serve(client, handle, shared, &user).await;
    }
    logged_in(shared, client, notes, &params);
    let scram_keys = authenticated.scram_keys;
    let pool = match router::home_pool(shared, &database, &user, scram_keys.as_ref()).await {
        Some(home) => home.map_err(|e| SessionError::Refused(as_fatal(e)))?,
        None => router::pool_for(shared, &database, &user, scram_keys.as_ref()).ok_or_else(|| {
            SessionError::Refused(ErrorResponse::fatal("3D000", format!("database \"{database}\" does not exist")))
        })?,
    };

    let mode = settings.pool_mode;
    let client_settings = ClientSettings::new(&params);
    let client_settings_application_name = client_settings.current.get("application_name").cloned().unwrap_or_default();
    let welcome = match mode {
        PoolMode::Session => None,
        PoolMode::Transaction | PoolMode::Statement => {
            pool.welcome().and_then(|welcome| welcome_parameters(welcome, &client_settings, &pool))
        }
    };
    let (server, reported) = match welcome {
        // Transaction and statement modes, once the pool has had a connection and knows how
        // the server reports the values the client set: the login needs none (all may be
        // busy, possibly with this client's own other sessions). The startup settings are
        // checked when the client first gets a server connection.
        Some(welcome) => (None, welcome),
        // Otherwise a server connection for the login itself: its parameters are the client's
        // welcome, and the startup settings are checked by the server as PostgreSQL would.
        None => {
            handle.set_state(ClientState::Waiting, None);
            let checkout = tokio::select! {
                checkout = pool.checkout(settings.query_wait_timeout()) => checkout,
                () = handle.signals.kill.raised() => return Err(killed()),
            };
            let mut server = checkout.map_err(|e| {
                tracing::warn!(error = %e, "no server connection for client");
                SessionError::Refused(pool_error_to_client(&database, settings.query_wait_timeout_ms, e))
            })?;
            if let Err(e) = apply_settings(&mut server, &client_settings).await {
                if let ApplyError::Setting(_) = e {
                    server.release();
                }
                return Err(SessionError::Refused(e.into_client_error()));
            }
            let reported = server.conn().params.clone();
            note_reported_values(&pool, &reported, &client_settings);
            match mode {
                PoolMode::Session => (Some(server), reported),
                PoolMode::Transaction | PoolMode::Statement => {
                    server.release();
                    (None, reported)
                }
            }
        }
    };
    match &server {
        Some(server) => handle.set_state(ClientState::Active, Some(server.conn_ref().cancel_target())),
        None => handle.set_state(ClientState::Idle, None),
    }

    Authentication::Ok.encode(&mut client.out);
    for (name, value) in &reported {
        messages::encode_parameter_status(name, value, &mut client.out);
    }
    messages::encode_backend_key_data(handle.pid, handle.secret, &mut client.out);
    messages::encode_ready_for_query(TransactionStatus::Idle, &mut client.out);
    client.flush().await?;
    tracing::debug!("client logged in");

    let start = Start {
        identity: Identity {
            user: user.clone(),
            database: database.clone(),
            application_name: client_settings_application_name,
            client_addr: peer.ip_text(),
        },
        mode,
        server,
        settings: client_settings,
        reported_parameters: reported,
        max_packet_bytes: settings.max_packet_size_bytes,
        query_wait: settings.query_wait_timeout(),
        idle_transaction_timeout: settings.idle_transaction_timeout(),
        scram_keys,
    };
    let end = Relay::new(client, handle, shared, pool, start).run().await;
    match end {
        End::Terminated | End::ClientGone => Ok(()),
        End::ClientProtocol(e) => Err(e.into()),
        End::Killed => Err(killed()),
        End::Fatal(error) => Err(SessionError::Refused(error)),
        End::Server(e) => {
            tracing::warn!(error = %e, "server connection lost during session");
            Err(SessionError::Refused(ErrorResponse::fatal("08006", "server closed the connection unexpectedly")))
        }
    }
}

/// Counts a login and, with `log_connections`, logs it (the span has the rest).
fn logged_in(shared: &Shared, client: &ClientConn, notes: &mut Notes, params: &[(String, String)]) {
    notes.logged_in = true;
    shared.metrics.logins.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    if shared.config().settings.log_connections {
        let application_name = params.iter().find(|(k, _)| k == "application_name").map_or("", |(_, v)| v.as_str());
        tracing::info!(tls = client.stream.is_tls(), application_name, "client logged in");
    }
}

/// The parameters to report to a client logging in without a server connection: a fresh
/// connection's, with the client's own settings where it gave them, as the server reports
/// them (`EUC_JP` for `euc-jp`). `None` when the pool has not seen a server report one of
/// those values yet: then a server connection must tell.
fn welcome_parameters(
    mut welcome: std::collections::BTreeMap<String, String>,
    settings: &ClientSettings,
    pool: &Pool,
) -> Option<std::collections::BTreeMap<String, String>> {
    for (name, value) in welcome.iter_mut() {
        let lower = name.to_ascii_lowercase();
        match settings.current.get(&lower) {
            // The server's own spelling is the one it reports back.
            Some(own) if own == value => {}
            Some(own) => *value = pool.reported_value(&lower, own)?,
            None => {}
        }
    }
    Some(welcome)
}

/// Remembers how the server reported the parameters the client set at login.
fn note_reported_values(pool: &Pool, reported: &std::collections::BTreeMap<String, String>, settings: &ClientSettings) {
    for (name, value) in reported {
        let lower = name.to_ascii_lowercase();
        if let Some(own) = settings.current.get(&lower) {
            pool.note_reported_value(&lower, own, value);
        }
    }
}

/// How long a client disconnected with 57P01 gets to read it and close (see
/// [`ClientConn::linger`]).
const KILLED_LINGER: std::time::Duration = std::time::Duration::from_secs(1);

/// What a client killed by the admin console (or shutdown) is told, as PostgreSQL words it.
fn killed() -> SessionError {
    SessionError::Refused(ErrorResponse::fatal("57P01", "terminating connection due to administrator command"))
}

fn pool_error_to_client(database: &str, wait_ms: u64, e: PoolError) -> ErrorResponse {
    match e {
        PoolError::WaitTimeout(_) => ErrorResponse::fatal(
            "53300",
            format!("no server connection for database \"{database}\" became free within query_wait_timeout_ms ({wait_ms} ms)"),
        ),
        PoolError::Connect(ServerError::Server(server_error)) => as_fatal(server_error),
        PoolError::Connect(e) => ErrorResponse::fatal(
            e.sqlstate(),
            format!("could not connect to the server for database \"{database}\": {e}"),
        ),
    }
}

/// A server's error re-sent to the client as FATAL, keeping its SQLSTATE and message.
fn as_fatal(error: ErrorResponse) -> ErrorResponse {
    ErrorResponse::fatal(error.code(), error.message())
}

#[derive(Debug)]
enum ApplyError {
    /// The server refused a setting; the connection is still fine.
    Setting(ErrorResponse),
    /// The server connection failed.
    Server(ServerError),
}

impl ApplyError {
    fn into_client_error(self) -> ErrorResponse {
        match self {
            ApplyError::Setting(e) => as_fatal(e),
            ApplyError::Server(e) => ErrorResponse::fatal(
                "08006",
                format!("server connection failed while applying startup parameters: {e}"),
            ),
        }
    }
}

/// Applies the client's settings to the server connection (those that differ from what is
/// applied there already).
async fn apply_settings(server: &mut PooledConn, settings: &ClientSettings) -> Result<(), ApplyError> {
    let conn = server.conn();
    let before = conn.applied_settings.clone();
    let Some(sql) = sync_sql(&settings.current, &mut conn.applied_settings) else {
        return Ok(());
    };
    match conn.simple_query(&sql).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => {
            // The statements ran as one implicit transaction: none of them took effect.
            conn.applied_settings = before;
            Err(ApplyError::Setting(e))
        }
        Err(e) => Err(ApplyError::Server(e)),
    }
}

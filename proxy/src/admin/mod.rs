//! The admin console: the virtual database `pgvane`, for users in `admin_users`.
//!
//! It speaks the simple query protocol only (as PgBouncer's): each Query holds one or more
//! commands (see [`commands`]), answered with result sets (see [`show`]) or a
//! CommandComplete named after the command. Extended-protocol messages get an ERROR and are
//! then ignored up to the next Sync, as PostgreSQL does after an error, so a driver that
//! tries them fails cleanly and the connection stays usable. docs/admin.md describes every
//! command.

pub mod commands;
mod control;
pub mod exporter;
pub mod show;

use std::future::Future;

use bytes::BytesMut;
use thiserror::Error;

use crate::clients::{ClientHandle, ClientState};
use crate::protocol::messages::{self, tag, Authentication, ErrorResponse, TransactionStatus};
use crate::protocol::FrontendMessage;
use crate::session::{self, ClientConn, SessionError};
use crate::shared::ReloadError;
use crate::shared::Shared;
use commands::{Command, Show};

/// Why a console command failed. Each becomes an ERROR for the console's client (the
/// session goes on), except `Terminated`, which ends it.
#[derive(Debug, Error)]
pub enum AdminError {
    /// The first word is no command.
    #[error("unknown command \"{0}\"")]
    UnknownCommand(String),
    /// SHOW of something that does not exist.
    #[error("unknown SHOW item \"{0}\"")]
    UnknownShow(String),
    /// A command with the wrong arguments, or unbalanced quotes.
    #[error("syntax error: {0}")]
    Syntax(String),
    /// A database name that is not configured.
    #[error("database \"{0}\" does not exist")]
    NoSuchDatabase(String),
    /// The console's own database given to PAUSE, RECONNECT or KILL.
    #[error("the admin console cannot be paused, reconnected or killed")]
    AdminDatabase,
    /// The command does not fit the current state (PAUSE twice, RESUME without PAUSE).
    #[error("{0}")]
    State(String),
    /// Like `State`, with a hint.
    #[error("{0}")]
    StateHint(String, &'static str),
    /// RELOAD found a bad configuration file; the old configuration stays in force.
    #[error("configuration not reloaded, the old one stays in force: {0}")]
    Reload(ReloadError),
    /// The settings could not be shown.
    #[error("cannot show the configuration: {0}")]
    ShowConfig(toml::ser::Error),
    /// A CancelRequest ended the command.
    #[error("canceling statement due to user request")]
    Canceled,
    /// The client is being disconnected (KILL, shutdown).
    #[error("terminating connection due to administrator command")]
    Terminated,
    /// An extended-protocol message.
    #[error("the admin console supports only the simple query protocol")]
    ExtendedProtocol,
}

impl AdminError {
    /// The SQLSTATE the client gets.
    pub fn code(&self) -> &'static str {
        match self {
            AdminError::UnknownCommand(_) | AdminError::UnknownShow(_) | AdminError::Syntax(_) => "42601",
            AdminError::NoSuchDatabase(_) => "3D000",
            AdminError::AdminDatabase => "42809",
            AdminError::State(_) | AdminError::StateHint(..) => "55000",
            AdminError::Reload(_) => "F0000",
            AdminError::ShowConfig(_) => "XX000",
            AdminError::Canceled => "57014",
            AdminError::Terminated => "57P01",
            AdminError::ExtendedProtocol => "0A000",
        }
    }

    /// The ErrorResponse (severity ERROR) for the client.
    pub fn response(&self) -> ErrorResponse {
        let error = ErrorResponse::error(self.code(), self.to_string());
        match self {
            AdminError::UnknownCommand(_) => error.with_hint(format!("commands: {}", commands::USAGE)),
            AdminError::UnknownShow(_) => {
                error.with_hint("SHOW HELP|POOLS|CLIENTS|SERVERS|DATABASES|STATS|CONFIG|VERSION|BACKENDS|PLUGINS")
            }
            AdminError::StateHint(_, hint) => error.with_hint(*hint),
            AdminError::ExtendedProtocol => error.with_hint("use a client that sends simple queries, e.g. psql"),
            _ => error,
        }
    }
}

/// Appends a NoticeResponse (severity NOTICE).
fn notice(message: &str, detail: Option<&str>, dst: &mut BytesMut) {
    let mut notice = ErrorResponse::notice(message);
    if let Some(detail) = detail {
        notice = notice.with_detail(detail);
    }
    notice.encode_notice(dst);
}

/// What the console loop does after a Query.
enum After {
    /// Wait for the next message.
    Continue,
    /// Ask the process to shut down, this way, once the reply is out.
    Shutdown(crate::shared::ShutdownMode),
    /// End the session with this FATAL error.
    Terminate(ErrorResponse),
}

/// The admin console as sessions see it: the listener hands it to each session.
#[derive(Debug, Clone, Copy)]
pub struct Console;

impl session::Console for Console {
    fn serve<'a>(
        &'a self,
        client: &'a mut ClientConn,
        handle: &'a ClientHandle,
        shared: &'a Shared,
        user: &'a str,
    ) -> impl Future<Output = Result<(), SessionError>> + Send + 'a {
        serve(client, handle, shared, user)
    }
}

/// Serves an authenticated admin client until it leaves. AuthenticationOk has not been sent.
pub async fn serve(
    client: &mut ClientConn,
    handle: &ClientHandle,
    shared: &Shared,
    user: &str,
) -> Result<(), SessionError> {
    handle.set_state(ClientState::Active, None);
    welcome(handle, &mut client.out);
    client.flush().await?;
    tracing::info!(user, "admin console session started");
    let max_len = shared.config().settings.max_packet_size_bytes;
    // After an extended-protocol message: ignore everything up to Sync.
    let mut skipping = false;
    loop {
        let frame = tokio::select! {
            frame = client.read_frame(max_len) => frame?,
            () = handle.signals.kill.raised() => return Err(SessionError::Refused(terminated_error())),
        };
        let message = FrontendMessage::decode(&frame)?;
        match message {
            FrontendMessage::Terminate => return Ok(()),
            FrontendMessage::Sync => {
                skipping = false;
                messages::encode_ready_for_query(TransactionStatus::Idle, &mut client.out);
            }
            _ if skipping => {}
            FrontendMessage::Query(sql) => {
                // Console commands are ASCII; bytes that are not UTF-8 just make no command.
                let sql = String::from_utf8_lossy(sql);
                tracing::info!(user, command = %sql, "admin command");
                let after = run_query(&sql, &mut client.out, handle, shared).await;
                messages::encode_ready_for_query(TransactionStatus::Idle, &mut client.out);
                match after {
                    After::Continue => {}
                    After::Shutdown(mode) => {
                        client.flush().await?;
                        shared.request_shutdown(mode);
                    }
                    After::Terminate(error) => return Err(SessionError::Refused(error)),
                }
            }
            FrontendMessage::Flush => {}
            FrontendMessage::Parse(_)
            | FrontendMessage::Bind(_)
            | FrontendMessage::Describe(..)
            | FrontendMessage::Execute { .. }
            | FrontendMessage::Close(..) => {
                AdminError::ExtendedProtocol.response().encode(&mut client.out);
                skipping = true;
            }
            FrontendMessage::FunctionCall { .. } => {
                AdminError::ExtendedProtocol.response().encode(&mut client.out);
                messages::encode_ready_for_query(TransactionStatus::Idle, &mut client.out);
            }
            // Outside COPY, PostgreSQL ignores these too.
            FrontendMessage::CopyData | FrontendMessage::CopyDone | FrontendMessage::CopyFail => {}
            FrontendMessage::Password(_) => {
                return Err(SessionError::Refused(ErrorResponse::fatal(
                    "08P01",
                    "invalid frontend message: password message after authentication",
                )))
            }
        }
        client.flush().await?;
    }
}

/// AuthenticationOk, the parameters clients such as psql need, BackendKeyData (so psql's
/// Ctrl-C can cancel a waiting PAUSE) and ReadyForQuery.
fn welcome(handle: &ClientHandle, out: &mut BytesMut) {
    Authentication::Ok.encode(out);
    let server_version = format!("15.0 (pgvane {})", crate::VERSION);
    for (name, value) in [
        ("server_version", server_version.as_str()),
        ("server_encoding", "UTF8"),
        ("client_encoding", "UTF8"),
        ("DateStyle", "ISO"),
        ("integer_datetimes", "on"),
        ("standard_conforming_strings", "on"),
        ("application_name", ""),
    ] {
        messages::encode_parameter_status(name, value, out);
    }
    messages::encode_backend_key_data(handle.pid, handle.secret, out);
    messages::encode_ready_for_query(TransactionStatus::Idle, out);
}

/// Runs every command of a Query, stopping at the first error.
async fn run_query(sql: &str, out: &mut BytesMut, handle: &ClientHandle, shared: &Shared) -> After {
    let commands = match commands::parse_script(sql) {
        Ok(commands) => commands,
        Err(e) => {
            e.response().encode(out);
            return After::Continue;
        }
    };
    if commands.is_empty() {
        messages::encode_empty(tag::EMPTY_QUERY_RESPONSE, out);
        return After::Continue;
    }
    let mut after = After::Continue;
    for command in commands {
        match execute(&command, out, handle, shared).await {
            Ok(()) => {
                if let Command::Shutdown(mode) = command {
                    after = After::Shutdown(mode);
                }
            }
            Err(AdminError::Terminated) => return After::Terminate(terminated_error()),
            Err(e) => {
                tracing::info!(error = %e, "admin command failed");
                e.response().encode(out);
                break;
            }
        }
    }
    after
}

/// The FATAL a killed console client gets, as PostgreSQL words it.
fn terminated_error() -> ErrorResponse {
    ErrorResponse::fatal(AdminError::Terminated.code(), AdminError::Terminated.to_string())
}

/// Runs one command, appending its answer to `out`.
async fn execute(
    command: &Command,
    out: &mut BytesMut,
    handle: &ClientHandle,
    shared: &Shared,
) -> Result<(), AdminError> {
    let complete = |tag: &str, out: &mut BytesMut| messages::encode_command_complete(tag, out);
    match command {
        Command::Show(Show::Help) => {
            notice("Console usage", Some(&commands::USAGE.replace("; ", "\n")), out);
            complete("SHOW", out);
        }
        Command::Show(Show::Pools) => show::pools(shared).encode(out),
        Command::Show(Show::Clients) => show::clients(shared).encode(out),
        Command::Show(Show::Servers) => show::servers(shared).encode(out),
        Command::Show(Show::Databases) => show::databases(shared).encode(out),
        Command::Show(Show::Stats) => show::stats(shared).encode(out),
        Command::Show(Show::StatsTotals) => show::stats_totals(shared).encode(out),
        Command::Show(Show::StatsAverages) => show::stats_averages(shared).encode(out),
        Command::Show(Show::Config) => show::config(shared)?.encode(out),
        Command::Show(Show::Version) => show::version().encode(out),
        Command::Show(Show::Backends) => show::backends(shared).encode(out),
        Command::Show(Show::Plugins) => show::plugins(shared).encode(out),
        Command::Pause(db) => {
            control::pause(shared, handle, db.as_deref()).await?;
            complete("PAUSE", out);
        }
        Command::Resume(db) => {
            control::resume(shared, db.as_deref())?;
            complete("RESUME", out);
        }
        Command::Reload => {
            control::reload(shared, out).await?;
            complete("RELOAD", out);
        }
        Command::Reconnect(db) => {
            control::reconnect(shared, db.as_deref())?;
            complete("RECONNECT", out);
        }
        Command::Kill(db) => {
            control::kill(shared, db.as_deref())?;
            complete("KILL", out);
        }
        Command::Shutdown(mode) => {
            tracing::info!(mode = mode.as_str(), "SHUTDOWN requested on the admin console");
            complete("SHUTDOWN", out);
        }
    }
    Ok(())
}

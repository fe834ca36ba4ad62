//! Stopping, on PgBouncer's signals and SHUTDOWN commands: the graceful drain and the
//! immediate shutdown (docs/deploy.md has the mapping).
//!
//! A drain: the listener stops accepting (and closes its socket), `/ready` answers 503, and
//! clients are asked to leave at their next point between transactions (see
//! `clients::DRAIN_GRACE`); the process exits once they have left, or after
//! `shutdown_timeout_ms`, disconnecting whoever is left with FATAL 57P01. Another signal
//! during a drain, SIGQUIT or a plain SHUTDOWN ends it at once.

use std::sync::Arc;
use std::time::Duration;

use tokio::signal::unix::{signal, Signal, SignalKind};

use crate::listener::Listener;
use crate::shared::{Shared, ShutdownMode};

/// How often a drain looks at who is left (and asks clients that logged in since to leave).
const DRAIN_POLL: Duration = Duration::from_millis(25);

/// How long an immediate shutdown waits for sessions to send their FATAL and end.
const DISCONNECT_GRACE: Duration = Duration::from_secs(2);

/// The shutdown signals, installed (so they no longer kill the process) before pgvane says it
/// is listening.
#[derive(Debug)]
pub struct Signals {
    term: Signal,
    int: Signal,
    quit: Signal,
}

impl Signals {
    /// Installs the handlers of SIGTERM, SIGINT and SIGQUIT.
    pub fn install() -> std::io::Result<Signals> {
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            quit: signal(SignalKind::quit())?,
        })
    }

    /// Turns every signal into a shutdown request: SIGTERM waits for clients, SIGINT for
    /// servers, SIGQUIT and any signal during a drain shut down at once.
    async fn forward(mut self, shared: Arc<Shared>) {
        loop {
            let (name, asked) = tokio::select! {
                _ = self.term.recv() => ("SIGTERM", ShutdownMode::WaitForClients),
                _ = self.int.recv() => ("SIGINT", ShutdownMode::WaitForServers),
                _ = self.quit.recv() => ("SIGQUIT", ShutdownMode::Immediate),
            };
            let mode = match shared.shutdown_mode() {
                Some(_) => ShutdownMode::Immediate,
                None => asked,
            };
            tracing::info!(signal = name, mode = mode.as_str(), "shutdown signal");
            shared.request_shutdown(mode);
        }
    }
}

/// Serves clients until a shutdown is asked for, then carries it out. Returns when pgvane may
/// exit.
pub async fn serve(listener: Listener, signals: Signals) {
    let shared = listener.shared();
    let forwarding = tokio::spawn(signals.forward(shared.clone()));
    let accepting = tokio::spawn(listener.run());
    let mode = shared.shutdown_requested(None).await;
    tracing::info!(mode = mode.as_str(), "shutting down: no longer accepting clients");
    shared.start_draining();
    // The listening socket is closed once this ends.
    if let Err(e) = accepting.await {
        tracing::warn!(error = %e, "the listener task failed");
    }
    if mode != ShutdownMode::Immediate {
        drain(&shared, mode).await;
    }
    disconnect_clients(&shared).await;
    forwarding.abort();
}

/// Waits until every client (the admin console's excepted) has left, `shutdown_timeout_ms`
/// has passed, or an immediate shutdown is asked for.
async fn drain(shared: &Shared, mode: ShutdownMode) {
    let timeout = shared.config().settings.shutdown_timeout();
    let deadline = tokio::time::Instant::now() + timeout;
    // WAIT_FOR_SERVERS after WAIT_FOR_CLIENTS goes on draining (sessions read the mode).
    let more_urgent = shared.shutdown_requested(Some(mode.max(ShutdownMode::WaitForServers)));
    tokio::pin!(more_urgent);
    loop {
        shared.clients.drain();
        let left = shared.clients.serving();
        if left == 0 {
            tracing::info!("drained: every client has left");
            return;
        }
        tokio::select! {
            _ = &mut more_urgent => {
                tracing::info!(clients = left, "immediate shutdown asked for during the drain");
                return;
            }
            () = tokio::time::sleep_until(deadline) => {
                let timeout_ms = timeout.as_millis();
                tracing::info!(clients = left, timeout_ms, "shutdown_timeout_ms reached: disconnecting the clients left");
                return;
            }
            () = tokio::time::sleep(DRAIN_POLL) => {}
        }
    }
}

/// Ends every session with FATAL 57P01 and gives them a moment to say so.
async fn disconnect_clients(shared: &Shared) {
    shared.clients.kill(None);
    let deadline = tokio::time::Instant::now() + DISCONNECT_GRACE;
    while !shared.clients.is_empty() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

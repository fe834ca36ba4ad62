//! Getting a server connection for the client's next message, and giving it back: in
//! transaction and statement modes once the server is idle with nothing in flight, after the
//! client's changed settings were read back (so they follow it to its next connection), and
//! reset or closed if the client left state on it that cannot follow it.

use std::time::Instant;

use crate::clients::ClientState;
use crate::pool::{PoolError, PooledConn, ServerError};
use crate::protocol::messages::{self, ErrorResponse};

use super::super::pipeline::{Condition, Kind, Purpose, Undo};
use super::super::router::Placement;
use super::super::settings::sync_sql;
use super::{End, Relay, SESSION_STATE_RESET};

impl Relay<'_> {
    /// Makes sure a server connection is held. `Ok(false)` when none could be had: the
    /// client has been answered with an error for its message of `kind`.
    pub(super) async fn ensure_server(&mut self, kind: Kind) -> Result<bool, End> {
        if self.server.is_some() {
            return Ok(true);
        }
        // An idle connection free at once (the common case) needs no waiting machinery.
        let mut checkout = match self.router.current().try_checkout() {
            Some(server) => Some(Ok(server)),
            None => self.wait_for_server().await?,
        };
        if matches!(checkout, Some(Ok(_))) && self.router.writer_moved(self.shared) {
            // Picked as the writer, but a new leader took over while the client waited: the
            // connection goes back unused and the statement goes to the writer of now.
            if let Some(Ok(server)) = checkout.take() {
                server.release();
            }
            let signals = self.handle.signals.clone();
            if let Err(error) = self.router.move_to_writer(self.shared, &signals).await {
                self.handle.set_state(ClientState::Idle, None);
                self.fail(kind, error);
                return Ok(false);
            }
            checkout = self.wait_for_server().await?;
        }
        let error = match checkout {
            Some(Ok(server)) => {
                self.take_server(server);
                return Ok(true);
            }
            Some(Err(e)) => {
                tracing::warn!(error = %e, "no server connection for client");
                match e {
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
                        ErrorResponse::error(e.sqlstate(), format!("could not connect to the server: {e}"))
                    }
                }
            }
            None => ErrorResponse::error("57014", "canceling statement due to user request"),
        };
        self.held_cancel = false; // the statement fails without running: nothing to cancel
        self.handle.set_state(ClientState::Idle, None);
        self.fail(kind, error);
        Ok(false)
    }

    /// Takes a server connection of the current pool if one is free at once.
    pub(super) fn try_take_server(&mut self) -> bool {
        match self.router.current().try_checkout() {
            Some(server) => {
                self.take_server(server);
                true
            }
            None => false,
        }
    }

    /// Makes `server` the client's, with the client's settings applied (in session mode: its
    /// startup parameters, for a server of another database the policy routed to).
    fn take_server(&mut self, mut server: PooledConn) {
        self.handle.set_state(ClientState::Active, Some(server.conn().cancel_target()));
        if let Some(sql) = sync_sql(&self.settings.current, &mut server.conn().applied_settings) {
            messages::encode_query(&sql, self.server_out.buf());
            self.pipeline.expect(Kind::Query, Purpose::ApplySettings, Undo::default(), None);
        }
        self.server = Some(server);
    }

    /// Sends the cancel the client asked for while it waited for a server connection, once
    /// its statement has been written to the server it got; dropped if the statement has
    /// already been answered. The server connection goes to no other client until the cancel
    /// has arrived.
    pub(super) fn deliver_held_cancel(&mut self) {
        if !self.held_cancel || !self.server_out.is_empty() {
            return;
        }
        self.held_cancel = false;
        let Some(server) = self.server.as_ref() else { return };
        if self.pipeline.is_empty() {
            return;
        }
        let target = server.conn_ref().cancel_target();
        let in_flight = target.in_flight.begin();
        let timeout = self.shared.config().settings.server_connect_timeout();
        tokio::spawn(async move {
            let _in_flight = in_flight;
            match tokio::time::timeout(timeout, target.send()).await {
                Ok(Ok(())) => tracing::debug!(server_pid = target.pid, "held cancel request delivered"),
                Ok(Err(e)) => tracing::warn!(error = %e, "could not deliver a held cancel request"),
                Err(_) => tracing::warn!("timed out delivering a held cancel request"),
            }
        });
    }

    /// Waits for a server connection of the current pool: `None` when the client cancelled
    /// a move to another node.
    async fn wait_for_server(&mut self) -> Result<Option<Result<PooledConn, PoolError>>, End> {
        // Whatever pgvane already owes the client goes out before a possibly long wait.
        self.client.flush().await.map_err(|_| End::ClientGone)?;
        self.handle.set_state(ClientState::Waiting, None);
        let started = Instant::now();
        let signals = self.handle.signals.clone();
        let pool = self.router.current().clone();
        // A cancel while waiting is held, as PostgreSQL would see it: the statement fails
        // with 57014 once it runs (see `deliver_held_cancel`), for every driver.
        let checkout = pool.checkout(self.query_wait);
        tokio::pin!(checkout);
        let checkout = loop {
            tokio::select! {
                r = &mut checkout => break Some(r),
                () = signals.cancel.notified(), if !self.held_cancel => {
                    tracing::debug!("cancel request while waiting for a server connection; held until the statement runs");
                    self.held_cancel = true;
                }
                () = signals.kill.raised() => return Err(End::Killed),
            }
        };
        let checkout = match checkout {
            // A cluster node that cannot be reached: the statement may move to the writer.
            Some(Err(e)) => {
                let in_transaction = self.in_transaction();
                self.router.retry_elsewhere(self.shared, &signals, e, in_transaction, self.query_wait).await
            }
            other => other,
        };
        pool.stats.record_wait(started.elapsed());
        tracing::trace!(waited = ?started.elapsed(), "server connection wait over");
        Ok(checkout)
    }

    /// In transaction and statement modes, gives the server connection back once it is idle
    /// with nothing in flight, after carrying over any settings the client changed.
    pub(super) fn maybe_release(&mut self) {
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
        if self.keeps_server() {
            return;
        }
        if let Some(server) = self.server.take() {
            self.give_back(server);
        }
    }

    /// Gives an idle server connection back to its pool (transaction and statement modes),
    /// reset or closed if the client left state on it.
    pub(super) fn give_back(&mut self, server: PooledConn) {
        tracing::trace!("server connection released");
        self.flush_stats();
        // First: from now on a cancel of this client no longer goes to this connection.
        self.handle.set_state(ClientState::Idle, None);
        match std::mem::replace(&mut self.pipeline.condition, Condition::Clean) {
            Condition::Unusable => server.discard(),
            Condition::NeedsReset => server.release_after(SESSION_STATE_RESET.to_owned()),
            Condition::Clean if self.shared.config().settings.server_reset_query_always => {
                server.release_after_session()
            }
            Condition::Clean => server.release(),
        }
    }

    /// Queues the queries that restore or read back the settings the client changed.
    pub(super) fn carry_settings(&mut self) {
        let Some(server) = self.server.as_mut() else { return };
        if let Some(sql) = self.settings.restore_startup(&mut server.conn().applied_settings) {
            messages::encode_query(&sql, self.server_out.buf());
            self.pipeline.expect(Kind::Query, Purpose::ApplySettings, Undo::default(), None);
        }
        if let Some((sql, names)) = self.settings.capture_query() {
            messages::encode_query(&sql, self.server_out.buf());
            let purpose = Purpose::CaptureSettings(names, Vec::new());
            self.pipeline.expect(Kind::Query, purpose, Undo::default(), None);
        }
    }

    pub(super) fn flush_stats(&mut self) {
        let (received, sent) = (std::mem::take(&mut self.meter.received), std::mem::take(&mut self.meter.sent));
        let stats = &self.router.current().stats;
        stats.add_traffic(received, sent);
        let statements = [&mut self.meter.client_parses, &mut self.meter.server_parses, &mut self.meter.binds];
        if statements.iter().any(|n| **n > 0) {
            stats.add_statements(statements.map(std::mem::take));
        }
    }

    /// Makes `placement`'s pool the client's current one. False when the move must wait for
    /// the current server to answer what is in flight first.
    pub(super) fn switch_to(&mut self, placement: &Placement) -> bool {
        let Some(target) = self.router.destination(placement, self.in_transaction()) else {
            return true;
        };
        if self.in_flight() {
            return false;
        }
        if let Some(server) = self.server.take() {
            if self.pooled() {
                self.unpin();
            }
            if !self.pooled() {
                self.router.park(server);
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
        if let Some(server) = self.router.move_to(target) {
            self.handle.set_state(ClientState::Active, Some(server.conn_ref().cancel_target()));
            self.server = Some(server);
        }
        true
    }
}

//! Statements of cluster databases: which node's pool runs them.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::BytesMut;

use crate::clients::ClientState;
use crate::cluster::Want;
use crate::policy::Route;
use crate::pool::{Pool, PoolError, PooledConn, ServerError};
use crate::protocol::messages::{self, tag, ErrorResponse, TransactionStatus};
use crate::protocol::Frame;
use crate::session::cluster_pool::pool_for_want;

use super::{End, Expect, Kind, Purpose, Relay};

/// Where [`Relay::cluster_route`] sends a statement.
pub(super) enum ClusterRoute {
    /// The database is not a cluster: the usual rules apply.
    NotACluster,
    /// This pool.
    Pool(Arc<Pool>),
    /// No node could be had; the client has its error.
    Failed,
}

impl Relay<'_> {
    /// For a statement of a cluster database (the client's own, or the one `route` names):
    /// the pool of the node the route picks, `Primary` the writer, `Replica` a replica that
    /// is up and not lagging (else the writer), no route the entry's `default_route`.
    /// Inside a transaction the statement stays on the transaction's server. Waiting for a
    /// writer (during a switchover) ends early on a cancel request or KILL.
    pub(super) async fn cluster_route(&mut self, kind: Kind, route: Option<&Route>) -> ClusterRoute {
        let own = self.identity.database.as_str();
        let (database, want) = match route {
            Some(Route::Database(name)) => (name.as_str(), None),
            Some(Route::Primary) => (own, Some(Want::Primary)),
            Some(Route::Replica) => (own, Some(Want::Replica)),
            None => (own, None),
        };
        let Some(cluster) = self.shared.clusters.get(database) else { return ClusterRoute::NotACluster };
        if self.in_transaction() {
            return ClusterRoute::Pool(self.pool.clone());
        }
        let want = want.unwrap_or_else(|| cluster.default_route());
        let signals = self.handle.signals.clone();
        let picked = tokio::select! {
            picked = pool_for_want(self.shared, &cluster, &self.identity.user, self.scram_keys.as_ref(), want) => picked,
            () = signals.cancel.notified() => Err(ErrorResponse::error("57014", "canceling statement due to user request")),
            // The flag stays raised: the query loop ends the session on it.
            () = signals.kill.raised() => Err(ErrorResponse::error("57P01", "terminating connection due to administrator command")),
        };
        match picked {
            Ok(pool) => ClusterRoute::Pool(pool),
            Err(error) => {
                tracing::warn!(database, code = error.code(), message = error.message(), "no server for the statement");
                self.fail(kind, error);
                ClusterRoute::Failed
            }
        }
    }

    /// A checkout from a cluster node's pool failed with `error`. When the node is
    /// unreachable (connection refused or lost, timed out, or the server refusing sessions
    /// because it is shutting down or starting up) and the client is between transactions,
    /// the statement moves on instead of failing: the node is reported down (if it was the
    /// writer, statements for the primary wait for the new one), and the checkout is tried
    /// again on the writer the cluster now has (a read whose replica went away included).
    /// Returns `None` when a cancel request or KILL ended the wait.
    pub(super) async fn retry_checkout_elsewhere(&mut self, error: PoolError) -> Option<Result<PooledConn, PoolError>> {
        let failed = self.pool.clone();
        let Some(node) = failed.node.clone() else { return Some(Err(error)) };
        let Some(cluster) = self.shared.clusters.get(&failed.database) else { return Some(Err(error)) };
        if !node_unreachable(&error) || self.in_transaction() {
            return Some(Err(error));
        }
        cluster.node_failed(&node, &error.to_string());
        let signals = self.handle.signals.clone();
        let user = self.identity.user.clone();
        let picked = tokio::select! {
            picked = pool_for_want(self.shared, &cluster, &user, self.scram_keys.as_ref(), Want::Primary) => picked,
            () = signals.cancel.notified() => return None,
            () = signals.kill.raised() => return None, // the query loop ends the session on it
        };
        let pool = match picked {
            Ok(pool) => pool,
            Err(no_writer) => {
                tracing::warn!(message = no_writer.message(), "no writer to move the statement to");
                return Some(Err(error));
            }
        };
        tracing::info!(from = %node, to = ?pool.node.as_ref().map(ToString::to_string), "server unreachable; the statement moves to the writer");
        if Arc::ptr_eq(&self.home, &failed) {
            self.home = pool.clone();
        }
        self.pool = pool;
        tokio::select! {
            r = self.pool.checkout(self.query_wait) => Some(r),
            () = signals.cancel.notified() => None,
            () = signals.kill.raised() => None, // the query loop ends the session on it
        }
    }

    /// A client message sent now could run again on another node if this one goes away
    /// before answering it: a pooled client, outside any transaction block, on a cluster
    /// node. (Within an extended batch not synced yet, the whole batch runs again.)
    pub(super) fn replayable(&self) -> bool {
        self.pooled() && self.status == TransactionStatus::Idle && self.pool.node.is_some()
    }

    /// The connection to a cluster node broke (`end`) while the client, in a pooled mode and
    /// outside any transaction block, had statements in flight on it; the node is reported
    /// down and the session goes on.
    ///
    /// When the server said it was terminating the session (FATAL 57P01 or 57P02, as in a
    /// fast shutdown) before anything but echoes (ParseComplete, BindComplete, descriptions)
    /// reached the client since its last ReadyForQuery, and everything in flight was sent
    /// outside a transaction block, nothing of it committed: the client's messages since
    /// that ReadyForQuery run again, on the node the cluster now picks (waiting for the new
    /// writer during a switchover), the echoes it already has are left out, and the client
    /// does not notice. Otherwise the server rolled back what
    /// it had not answered, but an answer may have been lost after a commit, so the client
    /// gets `ERROR 08006` for each statement in flight (an extended batch: one, up to its
    /// Sync) and a ReadyForQuery. Anything else (session mode, a transaction block, a plain
    /// database) ends the session as before: a client inside a transaction must not mistake
    /// a lost one for a live one.
    pub(super) fn survive_server_loss(&mut self, end: End) -> Result<(), End> {
        let End::Server(error) = &end else { return Err(end) };
        if !self.pooled() || self.status != TransactionStatus::Idle {
            return Err(end);
        }
        let Some(pool) = self.server.as_ref().map(|s| s.pool().clone()) else { return Err(end) };
        let Some(node) = pool.node.clone() else { return Err(end) };
        let Some(cluster) = self.shared.clusters.get(&pool.database) else { return Err(end) };
        cluster.node_failed(&node, &error.to_string());
        tracing::warn!(%node, %error, "server connection lost during a statement; the client gets an error and goes on");
        let terminated = matches!(error, ServerError::Server(e) if matches!(e.code(), "57P01" | "57P02"));
        let replay = terminated && !self.answered && self.queue_is_replayable();
        // The socket is dead: dropping the connection closes it and frees its slot.
        drop(self.server.take());
        self.server_out.clear();
        self.unsynced = false;
        self.session_state = false;
        self.server_tainted = false;
        self.query_start = None;
        self.xact_start = None;
        self.handle.set_state(ClientState::Idle, None);
        if replay {
            self.replay_in_flight();
            return Ok(());
        }
        let lost = ErrorResponse::error(
            "08006",
            format!("the connection to the server {node} was lost; the statement was rolled back: {error}"),
        );
        let mut failed_batch = false;
        for expect in std::mem::take(&mut self.queue) {
            match expect {
                Expect::Own { message, undo } => {
                    if failed_batch {
                        self.undo(undo);
                    } else {
                        self.send_to_client(&message);
                    }
                }
                Expect::Reply { kind, purpose: Purpose::Client, undo, .. } => {
                    self.undo(undo);
                    match kind {
                        Kind::Sync => {
                            // Unanswered, the batch's implicit transaction may not have
                            // committed: the client must not take it for a success.
                            if !failed_batch {
                                self.send_error(&lost);
                            }
                            self.send_ready_for_query();
                            failed_batch = false;
                        }
                        k if k.is_extended() => {
                            if !failed_batch {
                                self.send_error(&lost);
                                failed_batch = true;
                            }
                        }
                        _ => {
                            self.send_error(&lost);
                            self.send_ready_for_query();
                        }
                    }
                }
                Expect::Reply { undo, .. } => self.undo(undo),
            }
        }
        // A batch cut short before its Sync: the client's messages up to it are ignored.
        self.skipping = failed_batch;
        self.forget_answers();
        Ok(())
    }

    /// Everything in flight can run again: the client's messages, each recorded when sent
    /// (see [`Relay::replayable`]), and pgvane's own messages, which are made again.
    fn queue_is_replayable(&self) -> bool {
        let mut messages = self.echoed.len();
        for expect in &self.queue {
            match expect {
                Expect::Reply { purpose: Purpose::Client, replay: Some(_), .. } => messages += 1,
                Expect::Reply { purpose: Purpose::Client, replay: None, .. } | Expect::Own { .. } => return false,
                Expect::Reply { .. } => {}
            }
        }
        messages > 0
    }

    /// Queues the client's messages since its last ReadyForQuery to run again, ahead of a
    /// message waiting to move and of anything the client sent since, and leaves out the
    /// echoes the client already has.
    fn replay_in_flight(&mut self) {
        let mut frames = VecDeque::new();
        self.skip_echoes = std::mem::take(&mut self.echoes_sent);
        for (frame, undo) in std::mem::take(&mut self.echoed) {
            self.undo(undo);
            frames.push_back(frame);
        }
        for expect in std::mem::take(&mut self.queue) {
            if let Expect::Reply { undo, replay, .. } = expect {
                self.undo(undo);
                frames.extend(replay);
            }
        }
        tracing::info!(
            messages = frames.len(),
            "the server ended the session before answering; the messages run again"
        );
        if let Some(deferred) = self.deferred.take() {
            frames.push_back(deferred.frame);
        }
        frames.append(&mut self.replay);
        self.replay = frames;
    }

    /// A FATAL error from a cluster node the client could survive losing (see
    /// [`Relay::survive_server_loss`]): the server is ending the connection (shutdown,
    /// administrator command). It is not forwarded: the connection counts as lost now, so
    /// the client gets one error per statement in flight and nothing more is sent there.
    pub(super) fn going_away(&self, frame: &Frame) -> Option<ServerError> {
        if frame.tag() != tag::ERROR_RESPONSE || !self.pooled() || self.status != TransactionStatus::Idle {
            return None;
        }
        self.server.as_ref().and_then(|s| s.pool().node.as_ref())?;
        let error = ErrorResponse::parse(frame.body()).ok()?;
        matches!(error.severity(), "FATAL" | "PANIC").then_some(ServerError::Server(error))
    }

    /// A client statement outside any transaction block failed on a cluster node with
    /// SQLSTATE 25006 (read-only transaction): the writer may have been demoted, which the
    /// cluster then checks at once (see [`crate::cluster::Cluster::writer_refused_write`]).
    /// The statement's own error goes to the client.
    pub(super) fn note_refused_write(&self, frame: &Frame) {
        if self.status != TransactionStatus::Idle {
            return; // e.g. BEGIN READ ONLY: the client's own doing
        }
        let Some(pool) = self.server.as_ref().map(PooledConn::pool) else { return };
        let Some(node) = pool.node.as_ref() else { return };
        if ErrorResponse::parse(frame.body()).is_ok_and(|e| e.code() == "25006") {
            if let Some(cluster) = self.shared.clusters.get(&pool.database) {
                cluster.writer_refused_write(node);
            }
        }
    }

    fn send_error(&mut self, error: &ErrorResponse) {
        let mut message = BytesMut::new();
        error.encode(&mut message);
        self.send_to_client(&message);
    }

    fn send_ready_for_query(&mut self) {
        let mut message = BytesMut::new();
        messages::encode_ready_for_query(TransactionStatus::Idle, &mut message);
        self.send_to_client(&message);
    }
}

/// True when a checkout failed because the node cannot take sessions now (rather than, say,
/// refusing the client's password): connection refused or lost, timeout, or the server
/// saying it is shutting down or starting up.
fn node_unreachable(error: &PoolError) -> bool {
    match error {
        PoolError::WaitTimeout(_) => false,
        PoolError::Connect(ServerError::Server(refusal)) => matches!(refusal.code(), "57P01" | "57P02" | "57P03"),
        PoolError::Connect(ServerError::Auth(_) | ServerError::Scram(_)) => false,
        PoolError::Connect(_) => true,
    }
}

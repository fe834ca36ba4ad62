//! Surviving the loss of a cluster node's connection: what was in flight runs again on the
//! node the cluster now picks, or fails with one error per statement, and the session goes
//! on. Also: a write refused as read-only makes the cluster look for its writer.

use std::collections::VecDeque;

use bytes::BytesMut;

use crate::clients::ClientState;
use crate::pool::{PooledConn, ServerError};
use crate::protocol::messages::{self, ErrorResponse, TransactionStatus};
use crate::protocol::BackendMessage;

use super::super::pipeline::{Batch, Expect, Kind, Purpose};
use super::{End, Relay};

impl Relay<'_> {
    /// A client message sent now could run again if its server goes away before answering it
    /// (a cluster node) or its statement turns out stale (`relay/stale.rs`): a pooled client,
    /// outside any transaction block. (Within an extended batch not synced yet, the whole
    /// batch runs again.)
    pub(super) fn replayable(&self) -> bool {
        self.pooled() && self.status == TransactionStatus::Idle
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
    /// does not notice. Otherwise the server rolled back what it had not answered, but an
    /// answer may have been lost after a commit, so the client gets `ERROR 08006` for each
    /// statement in flight (an extended batch: one, up to its Sync) and a ReadyForQuery.
    /// Anything else (session mode, a transaction block, a plain database) ends the session
    /// as before: a client inside a transaction must not mistake a lost one for a live one.
    pub(super) fn survive_server_loss(&mut self, end: End) -> Result<(), End> {
        let End::Server(error) = &end else { return Err(end) };
        // Part of a message has reached the client: it cannot be taken back.
        if !self.pooled() || self.status != TransactionStatus::Idle || self.large.passing.is_some() {
            return Err(end);
        }
        let Some(pool) = self.server.as_ref().map(|s| s.pool().clone()) else { return Err(end) };
        let Some(node) = pool.node.clone() else { return Err(end) };
        let Some(cluster) = self.shared.clusters.get(&pool.database) else { return Err(end) };
        cluster.node_failed(&node, &error.to_string());
        tracing::warn!(%node, %error, "server connection lost during a statement; the client gets an error and goes on");
        let terminated = matches!(error, ServerError::Server(e) if matches!(e.code(), "57P01" | "57P02"));
        let replay = terminated && self.pipeline.replayable();
        // The socket is dead: dropping the connection closes it and frees its slot.
        drop(self.server.take());
        self.server_out.clear();
        self.meter.query_start = None;
        self.meter.xact_start = None;
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
        for expect in self.pipeline.take_lost() {
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
        if failed_batch {
            self.pipeline.batch = Batch::Skipping;
        }
        self.pipeline.forget_answers();
        Ok(())
    }

    /// Queues the client's messages since its last ReadyForQuery to run again, ahead of a
    /// message waiting to move and of anything the client sent since, and leaves out the
    /// echoes the client already has.
    pub(super) fn replay_in_flight(&mut self) {
        let (frames, undone) = self.pipeline.take_for_replay();
        for undo in undone {
            self.undo(undo);
        }
        let mut frames = VecDeque::from(frames);
        tracing::info!(messages = frames.len(), "the client's messages since its last ReadyForQuery run again");
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
    pub(super) fn going_away(&self, message: &BackendMessage<'_>) -> Option<ServerError> {
        let BackendMessage::ErrorResponse(error) = message else { return None };
        if !self.pooled() || self.status != TransactionStatus::Idle {
            return None;
        }
        self.server.as_ref().and_then(|s| s.pool().node.as_ref())?;
        matches!(error.severity(), "FATAL" | "PANIC").then(|| ServerError::Server(error.clone()))
    }

    /// A client statement outside any transaction block failed on a cluster node with
    /// SQLSTATE 25006 (read-only transaction): the writer may have been demoted, which the
    /// cluster then checks at once (see [`crate::cluster::Cluster::writer_refused_write`]).
    /// The statement's own error goes to the client.
    pub(super) fn note_refused_write(&self, error: &ErrorResponse) {
        if self.status != TransactionStatus::Idle {
            return; // e.g. BEGIN READ ONLY: the client's own doing
        }
        let Some(pool) = self.server.as_ref().map(PooledConn::pool) else { return };
        let Some(node) = pool.node.as_ref() else { return };
        if error.code() == "25006" {
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

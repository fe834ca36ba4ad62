//! A shared statement that went stale on its server (a schema change pgvane did not see, such
//! as DDL run on another connection): PostgreSQL refuses to run the old plan (`0A000 cached
//! plan must not change result type`). The statement epoch has moved on by then (see
//! `relay/responses.rs`), so every server prepares it again before its next use. The client's
//! messages since its last ReadyForQuery run again, and the client does not notice, when they
//! prepare a statement (its Parse runs again in the new epoch, so it gets a fresh plan, and
//! the client sees the new description), nothing but echoes (ParseComplete, descriptions)
//! has reached the client, it is outside a transaction block, and its batch ends at the Sync
//! in flight. Otherwise (a statement the client prepared before and described then), and for
//! a second stale error in the same batch, the error goes to the client as PostgreSQL sends
//! it: drivers prepare the statement again, and that Parse gets a fresh plan.

use crate::protocol::messages::{ErrorResponse, TransactionStatus};

use super::super::pipeline::{Kind, Purpose, Undo};
use super::Relay;

impl Relay<'_> {
    /// Runs the client's batch again after `error` from its extended message, if it is a
    /// stale plan and the batch can run again unnoticed. True when it will.
    pub(super) fn retry_stale_plan(&mut self, error: &ErrorResponse) -> bool {
        let retry = super::responses::plan_went_stale(error)
            && !self.stale_retried
            && self.pooled()
            && self.status == TransactionStatus::Idle
            && self.pipeline.replayable()
            && self.pipeline.ends_at_first_sync()
            && self.pipeline.replays_a_parse();
        if !retry {
            return false;
        }
        tracing::info!(
            code = error.code(),
            "prepared statement went stale on the server; the client's batch runs again"
        );
        self.stale_retried = true;
        let condition = self.pipeline.condition;
        self.replay_in_flight();
        self.pipeline.worsen(condition);
        // The server skips to the batch's Sync and answers it: that ReadyForQuery is pgvane's.
        self.pipeline.expect(Kind::Sync, Purpose::Discarded, Undo::default(), None);
        true
    }
}

//! Session state a pooled client keeps across transactions: session advisory locks,
//! temporary tables and cursors `WITH HOLD` (see [`PinReason`]). While it holds any, the
//! client keeps its server connection (it counts against the pool, and SHOW CLIENTS says
//! why); once the server is idle after one of its statements, pgvane asks the server whether
//! the state is still there, and gives the connection back (reset) when it is gone: locks
//! released, tables dropped (or `ON COMMIT DROP`), cursors closed. A client that leaves while
//! pinned has its connection reset (`DISCARD ALL`) before anyone else gets it.

use std::collections::BTreeSet;

use crate::protocol::messages;

use super::super::pipeline::{Condition, Kind, Purpose, Undo};
use super::super::sql::PinReason;
use super::Relay;

/// Asks the server which pinning state its session still holds, one count per reason in
/// [`CHECKED`]'s order.
const CHECK_QUERY: &str = "SELECT \
    (SELECT pg_catalog.count(*) FROM pg_catalog.pg_locks WHERE locktype = 'advisory' AND pid = pg_catalog.pg_backend_pid()), \
    (SELECT pg_catalog.count(*) FROM pg_catalog.pg_class WHERE relpersistence = 't' AND relnamespace = pg_catalog.pg_my_temp_schema()), \
    (SELECT pg_catalog.count(*) FROM pg_catalog.pg_cursors WHERE is_holdable)";

/// The reasons [`CHECK_QUERY`] counts, in its column order.
const CHECKED: [PinReason; 3] = [PinReason::AdvisoryLock, PinReason::TempTable, PinReason::HoldCursor];

/// Whether the client keeps its server connection, and where the check of that stands.
#[derive(Debug, Default)]
pub(super) enum Pinned {
    /// It does not.
    #[default]
    No,
    /// It holds state for these reasons.
    Yes { reasons: BTreeSet<PinReason>, check: Check },
}

/// Where asking the server whether the pinning state is still there stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Check {
    /// To ask once the server is idle: the client ran something since the last answer.
    Due,
    /// Asked; the answer is on its way. `again`: the client sent something after the
    /// question, so the answer may be out of date and the question is asked again.
    Asked { again: bool },
    /// The state is still there; asked again after the client's next message.
    Held,
}

impl Relay<'_> {
    /// A statement about to run makes pinning state.
    pub(super) fn pin(&mut self, reason: PinReason) {
        self.pins_may_have_changed();
        let newly = match &mut self.pinned {
            Pinned::Yes { reasons, .. } => reasons.insert(reason),
            Pinned::No => {
                self.pinned = Pinned::Yes { reasons: BTreeSet::from([reason]), check: Check::Due };
                true
            }
        };
        // It never reaches another client: reset when the client leaves or lets go of it.
        self.pipeline.worsen(Condition::NeedsReset);
        if newly {
            tracing::debug!(reason = reason.name(), "client keeps its server connection for session state");
            self.show_pins();
        }
    }

    /// The client sent a message to its server: whether it still holds pinning state is
    /// asked again once the server is idle.
    pub(super) fn pins_may_have_changed(&mut self) {
        if let Pinned::Yes { check, .. } = &mut self.pinned {
            *check = match check {
                Check::Asked { .. } => Check::Asked { again: true },
                Check::Due | Check::Held => Check::Due,
            };
        }
    }

    /// True while the client keeps its server connection between transactions. When the
    /// check is due, queues it (the caller then waits for the answer).
    pub(super) fn keeps_server(&mut self) -> bool {
        let Pinned::Yes { check, .. } = &mut self.pinned else { return false };
        if *check == Check::Due {
            *check = Check::Asked { again: false };
            messages::encode_query(CHECK_QUERY, self.server_out.buf());
            self.pipeline.expect(Kind::Query, Purpose::CheckPins(Vec::new()), Undo::default(), None);
        }
        true
    }

    /// The server answered [`CHECK_QUERY`] with `counts`: the client stays pinned for the
    /// reasons still counted, or lets go of its server connection.
    pub(super) fn pins_checked(&mut self, counts: &[Option<String>]) {
        tracing::trace!(?counts, "session state still held");
        let held: BTreeSet<PinReason> = CHECKED
            .iter()
            .zip(counts)
            .filter(|(_, count)| count.as_deref().is_some_and(|n| n != "0"))
            .map(|(reason, _)| *reason)
            .collect();
        self.pinned = match std::mem::take(&mut self.pinned) {
            // The client ran something since the question: ask again, keeping every reason.
            Pinned::Yes { mut reasons, check: Check::Asked { again: true } } => {
                reasons.extend(held);
                Pinned::Yes { reasons, check: Check::Due }
            }
            _ if held.is_empty() => {
                tracing::debug!("client holds no session state any more; its server connection goes back (reset)");
                Pinned::No
            }
            _ => Pinned::Yes { reasons: held, check: Check::Held },
        };
        self.show_pins();
    }

    /// The client's server connection goes back although it is pinned (it moves to another
    /// database): its session state there is reset.
    pub(super) fn unpin(&mut self) {
        if let Pinned::Yes { reasons, .. } = &self.pinned {
            let reasons: Vec<&str> = reasons.iter().map(|r| r.name()).collect();
            tracing::info!(?reasons, "client moves to another server; its session state there is reset");
            self.pinned = Pinned::No;
            self.show_pins();
        }
    }

    fn show_pins(&self) {
        let shown = match &self.pinned {
            Pinned::No => None,
            Pinned::Yes { reasons, .. } => Some(reasons.iter().map(|r| r.name()).collect::<Vec<_>>().join(", ")),
        };
        self.handle.set_pinned(shown);
    }
}

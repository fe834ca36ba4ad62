//! What a client has in flight on its server connection, and what the answers mean.
//!
//! For every message sent to the server an [`Expect`] entry says which responses answer it and
//! who gets them; responses pgvane makes itself wait in the same queue, so the client always
//! gets them in protocol order. Around the queue the pipeline keeps three small state machines:
//!
//! - [`Batch`]: where the client's extended-protocol batch stands (synced, open, or skipping to
//!   its Sync after an error, as PostgreSQL does);
//! - [`Condition`]: what must happen to the server connection before another client gets it;
//! - [`Progress`]: what the client has seen since its last ReadyForQuery, which decides whether
//!   what is in flight may run again elsewhere when a cluster node goes away (a replay), and
//!   [`Echoes`], the confirmations a replay must not repeat.
//!
//! No I/O here: the relay applies what the pipeline returns (messages to send, undo actions).

use std::collections::VecDeque;

use bytes::Bytes;

use crate::protocol::messages::tag;
use crate::protocol::Frame;

/// What answers a message sent to the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
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
    pub(super) fn is_extended(self) -> bool {
        matches!(self, Kind::Parse | Kind::Bind | Kind::Describe | Kind::Execute | Kind::Close)
    }

    /// True if a response with this tag is the last one for the message.
    pub(super) fn ends_with(self, response: u8) -> bool {
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

/// A response that only confirms an extended message or describes a statement or portal:
/// running the message again makes the same one.
pub(super) fn is_echo(response: u8) -> bool {
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

/// Undo actions for a queued entry that the server never answers because an earlier
/// message failed (PostgreSQL then skips everything up to Sync).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(super) struct Undo {
    /// The client's statement was never created.
    pub client_statement: Option<String>,
    /// The server statement was never created.
    pub server_statement: Option<String>,
    /// The server statement was never closed.
    pub closed_statement: Option<String>,
    /// The client's statement, when this (pgvane's own) Parse of it fails rather than being
    /// skipped: its SQL no longer runs on the server, and the client's name is freed.
    pub failed_statement: Option<String>,
}

/// Who gets the answers to a message sent to the server.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Purpose {
    /// The client's own message: answers go to the client.
    Client,
    /// pgvane's own extended message (re-Parse, Close): answered to pgvane, but errors go to
    /// the client, whose next message depends on it.
    Injected,
    /// pgvane's own query applying settings: answered to pgvane.
    ApplySettings,
    /// pgvane's own query reading settings back: its row is captured.
    CaptureSettings(Vec<String>, Vec<Option<String>>),
    /// A client's Sync whose batch failed and runs again: its answer is pgvane's, dropped.
    Discarded,
    /// pgvane's own query asking whether a pinned client still holds its session state: its
    /// row is captured.
    CheckPins(Vec<Option<String>>),
}

#[derive(Debug)]
pub(super) enum Expect {
    /// Answers to a message sent to the server. `replay`: the client's message as it came,
    /// when it may run again elsewhere if the server goes away before answering it.
    Reply { kind: Kind, purpose: Purpose, undo: Undo, replay: Option<Frame> },
    /// A response pgvane makes itself, sent once everything before it is answered.
    Own { message: Bytes, undo: Undo },
}

/// Where the client's extended-protocol batch stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Batch {
    /// No extended message since the last Sync (or simple Query).
    Synced,
    /// Extended messages were sent since the last Sync: an implicit transaction is open.
    Open,
    /// An extended message failed: the client's messages are dropped up to its Sync.
    Skipping,
}

/// What must happen to the server connection before another client may have it. Ordered: a
/// connection only ever gets worse until it is given back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Condition {
    /// It holds nothing but what pgvane tracks (settings, prepared statements).
    Clean,
    /// The client left state that cannot follow it (temporary tables, LISTEN, a fastpath
    /// call): the connection is reset before anyone else gets it.
    NeedsReset,
    /// A query pgvane ran to carry settings failed: its settings are unknown, so it is closed.
    Unusable,
}

/// What the client has seen since its last ReadyForQuery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Progress {
    /// Echoes only (or nothing): the messages answered so far are in `Pipeline::echoed`, so
    /// a replay can run them again.
    Echoed,
    /// More than echoes reached the client (or it asked for a Flush): no replay.
    Answered,
}

/// Echoes sent since the last ReadyForQuery, and those a replay must leave out.
#[derive(Debug, Default)]
pub(super) struct Echoes {
    sent: usize,
    to_skip: usize,
}

/// The client's messages in flight on its server, and the states around them.
#[derive(Debug)]
pub(super) struct Pipeline {
    queue: VecDeque<Expect>,
    /// Where the extended batch stands.
    pub batch: Batch,
    /// What the server connection needs before it is given back.
    pub condition: Condition,
    progress: Progress,
    /// While `progress` is `Echoed`: the client messages answered so far, with what undoes
    /// them. Cleared, not dropped, so that its memory serves the next transaction.
    echoed: Vec<(Frame, Undo)>,
    echoes: Echoes,
}

impl Default for Pipeline {
    fn default() -> Self {
        Pipeline {
            queue: VecDeque::new(),
            batch: Batch::Synced,
            condition: Condition::Clean,
            progress: Progress::Echoed,
            echoed: Vec::new(),
            echoes: Echoes::default(),
        }
    }
}

impl Pipeline {
    /// Nothing is waiting for an answer.
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// The server connection's condition becomes at least `condition`.
    pub fn worsen(&mut self, condition: Condition) {
        self.condition = self.condition.max(condition);
    }

    /// Expects the answers to a message just sent to the server.
    pub fn expect(&mut self, kind: Kind, purpose: Purpose, undo: Undo, replay: Option<Frame>) {
        match kind {
            // A simple Query (or FunctionCall) ends the implicit transaction of unsynced
            // extended messages before it, as a Sync does.
            Kind::Sync | Kind::Query | Kind::FunctionCall => self.batch = Batch::Synced,
            _ if self.batch == Batch::Synced => self.batch = Batch::Open,
            _ => {}
        }
        self.queue.push_back(Expect::Reply { kind, purpose, undo, replay });
    }

    /// pgvane answered an extended message itself while holding a server: the batch is open
    /// as if the message had been sent.
    pub fn open(&mut self) {
        if self.batch == Batch::Synced {
            self.batch = Batch::Open;
        }
    }

    /// A response pgvane makes itself: returned to be sent now when nothing is in flight,
    /// else queued behind what is.
    pub fn own(&mut self, message: Bytes, undo: Undo) -> Option<Bytes> {
        if self.queue.is_empty() {
            return Some(message);
        }
        self.queue.push_back(Expect::Own { message, undo });
        None
    }

    /// The message the next server response answers, and whether it is the client's own.
    pub fn front(&self) -> Option<(Kind, &Purpose)> {
        match self.queue.front() {
            Some(Expect::Reply { kind, purpose, .. }) => Some((*kind, purpose)),
            _ => None,
        }
    }

    /// The answers of the front entry go to the client (or nothing is expected: a notice).
    pub fn for_client(&self) -> bool {
        matches!(self.queue.front(), None | Some(Expect::Reply { purpose: Purpose::Client, .. }))
    }

    /// The front entry, when its row is being captured.
    pub fn capturing(&mut self) -> Option<&mut Vec<Option<String>>> {
        match self.queue.front_mut() {
            Some(Expect::Reply {
                purpose: Purpose::CaptureSettings(_, values) | Purpose::CheckPins(values), ..
            }) => Some(values),
            _ => None,
        }
    }

    /// The front entry got its last response: it leaves the queue. An echo of a client message
    /// is kept for a replay (or, without a frame to replay, ends the chance of one).
    pub fn answered(&mut self, echo: bool) -> Option<Expect> {
        let done = self.queue.pop_front()?;
        match done {
            Expect::Reply { purpose: Purpose::Client, undo, replay, .. } if echo => {
                match (replay, self.progress) {
                    (Some(frame), Progress::Echoed) => self.echoed.push((frame, undo)),
                    _ => self.note_answer(), // a replay could not make this echo again
                }
                None
            }
            other => Some(other),
        }
    }

    /// Responses pgvane made itself that are now at the front of the queue, in order.
    pub fn own_ready(&mut self) -> Vec<Bytes> {
        let mut ready = Vec::new();
        while let Some(Expect::Own { .. }) = self.queue.front() {
            if let Some(Expect::Own { message, .. }) = self.queue.pop_front() {
                ready.push(message);
            }
        }
        ready
    }

    /// After an error in an extended message the server skips everything up to Sync: what was
    /// expected from those messages is dropped, and returned to be undone (the failed message
    /// first). Without a Sync sent yet, the client's messages up to it are ignored, as the
    /// server does.
    pub fn skip_to_sync(&mut self) -> Vec<Undo> {
        let mut undone = Vec::new();
        while let Some(front) = self.queue.front() {
            if matches!(front, Expect::Reply { kind: Kind::Sync, .. }) {
                return undone;
            }
            if let Some(Expect::Reply { undo, .. } | Expect::Own { undo, .. }) = self.queue.pop_front() {
                undone.push(undo);
            }
        }
        self.batch = Batch::Skipping;
        undone
    }

    /// pgvane answered a client's message itself with an echo, sent at once: kept, with what
    /// undoes it, for a replay (which leaves the echo out).
    pub fn note_own_echo(&mut self, frame: Frame, undo: Undo) {
        if self.progress == Progress::Echoed {
            self.echoed.push((frame, undo));
        }
        self.echoes.sent += 1;
    }

    /// A message that the client sees as more than an echo reached it.
    pub fn note_answer(&mut self) {
        self.progress = Progress::Answered;
        self.echoed.clear();
    }

    /// An echo of a client message reached the client.
    pub fn note_echo_sent(&mut self) {
        self.echoes.sent += 1;
    }

    /// Whether a response with this tag goes out; an echo the client already had before a
    /// replay is left out. A ReadyForQuery ends the replay's echoes.
    pub fn passes(&mut self, response: u8) -> bool {
        if self.echoes.to_skip > 0 && is_echo(response) {
            self.echoes.to_skip -= 1;
            return false;
        }
        if response == tag::READY_FOR_QUERY {
            self.echoes.to_skip = 0;
        }
        true
    }

    /// A ReadyForQuery ended what the client had in flight: nothing since can be replayed
    /// from before it.
    pub fn forget_answers(&mut self) {
        self.progress = Progress::Echoed;
        self.echoed.clear();
        self.echoes.sent = 0;
    }

    /// Client messages answered with echoes only are kept for a replay.
    pub fn keeps_echoes(&self) -> bool {
        !self.echoed.is_empty()
    }

    /// Everything in flight can run again: nothing but echoes reached the client, every
    /// client message was recorded when sent, and no response of pgvane's own is queued.
    pub fn replayable(&self) -> bool {
        if self.progress != Progress::Echoed {
            return false;
        }
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

    /// True when the first Sync in flight is the last message in flight: the batch that
    /// failed is all there is, and it can run again without overtaking anything.
    pub fn ends_at_first_sync(&self) -> bool {
        let first_sync = self.queue.iter().position(|e| matches!(e, Expect::Reply { kind: Kind::Sync, .. }));
        first_sync.is_some_and(|i| i + 1 == self.queue.len())
    }

    /// True when a replay would run one of the client's Parse messages again.
    pub fn replays_a_parse(&self) -> bool {
        let is_parse = |frame: &Frame| frame.tag() == tag::PARSE;
        let echoed = self.echoed.iter().any(|(frame, _)| is_parse(frame));
        echoed || self.queue.iter().any(|e| matches!(e, Expect::Reply { replay: Some(frame), .. } if is_parse(frame)))
    }

    /// The client's messages since its last ReadyForQuery, to run again in order, with what
    /// undoes their effects so far; the echoes the client has are left out of the replay.
    pub fn take_for_replay(&mut self) -> (Vec<Frame>, Vec<Undo>) {
        let mut frames = Vec::new();
        let mut undone = Vec::new();
        self.echoes.to_skip = std::mem::take(&mut self.echoes.sent);
        for (frame, undo) in self.echoed.drain(..) {
            undone.push(undo);
            frames.push(frame);
        }
        self.progress = Progress::Echoed;
        for expect in std::mem::take(&mut self.queue) {
            if let Expect::Reply { undo, replay, .. } = expect {
                undone.push(undo);
                frames.extend(replay);
            }
        }
        self.batch = Batch::Synced;
        self.condition = Condition::Clean;
        (frames, undone)
    }

    /// The server connection is gone: everything queued, to be answered by pgvane.
    pub fn take_lost(&mut self) -> VecDeque<Expect> {
        self.batch = Batch::Synced;
        self.condition = Condition::Clean;
        std::mem::take(&mut self.queue)
    }
}

#[cfg(test)]
mod tests {
    use bytes::BytesMut;

    use super::*;
    use crate::protocol::decode_frame;
    use crate::protocol::messages::encode_sync;

    fn frame() -> Frame {
        let mut buf = BytesMut::new();
        encode_sync(&mut buf);
        decode_frame(&mut buf, 1024).unwrap().unwrap()
    }

    #[test]
    fn response_kinds_end_where_the_protocol_says() {
        assert!(Kind::Parse.ends_with(b'1') && !Kind::Parse.ends_with(b'2'));
        assert!(Kind::Describe.ends_with(b'T') && Kind::Describe.ends_with(b'n') && !Kind::Describe.ends_with(b't'));
        assert!(Kind::Execute.ends_with(b'C') && Kind::Execute.ends_with(b's') && !Kind::Execute.ends_with(b'D'));
        assert!(Kind::Query.ends_with(b'Z') && !Kind::Query.ends_with(b'C'));
        assert!(Kind::Close.is_extended() && !Kind::Sync.is_extended() && !Kind::Query.is_extended());
    }

    #[test]
    fn a_batch_opens_with_extended_messages_and_closes_at_sync_or_query() {
        let mut p = Pipeline::default();
        assert_eq!(p.batch, Batch::Synced);
        p.expect(Kind::Parse, Purpose::Client, Undo::default(), None);
        p.expect(Kind::Bind, Purpose::Client, Undo::default(), None);
        assert_eq!(p.batch, Batch::Open);
        p.expect(Kind::Sync, Purpose::Client, Undo::default(), None);
        assert_eq!(p.batch, Batch::Synced);
        p.expect(Kind::Execute, Purpose::Client, Undo::default(), None);
        p.expect(Kind::Query, Purpose::Client, Undo::default(), None);
        assert_eq!(p.batch, Batch::Synced, "a simple Query ends the implicit transaction");
    }

    #[test]
    fn an_error_skips_to_sync_and_returns_what_to_undo() {
        let mut p = Pipeline::default();
        let undo = |s: &str| Undo { client_statement: Some(s.into()), ..Undo::default() };
        p.expect(Kind::Parse, Purpose::Client, undo("a"), None);
        p.expect(Kind::Bind, Purpose::Client, Undo::default(), None);
        assert_eq!(p.own(Bytes::from_static(b"own"), undo("b")), None, "queued behind the Parse");
        p.expect(Kind::Sync, Purpose::Client, Undo::default(), None);
        // The Parse failed: the server skips the Bind; pgvane's own answer is dropped too.
        let undone = p.skip_to_sync();
        assert_eq!(undone, vec![undo("a"), Undo::default(), undo("b")]);
        assert_eq!(p.front().map(|(k, _)| k), Some(Kind::Sync));
        assert_eq!(p.batch, Batch::Synced, "the Sync was sent: the server ends the skip");
        // Without a Sync sent, the client's messages are skipped until it comes.
        let mut p = Pipeline::default();
        p.expect(Kind::Parse, Purpose::Client, Undo::default(), None);
        p.skip_to_sync();
        assert_eq!(p.batch, Batch::Skipping);
        assert!(p.is_empty());
    }

    #[test]
    fn own_responses_wait_for_what_is_in_flight() {
        let mut p = Pipeline::default();
        assert_eq!(p.own(Bytes::from_static(b"now"), Undo::default()), Some(Bytes::from_static(b"now")));
        p.expect(Kind::Query, Purpose::Client, Undo::default(), None);
        assert_eq!(p.own(Bytes::from_static(b"later"), Undo::default()), None);
        assert!(p.own_ready().is_empty(), "the Query is not answered yet");
        assert!(p.answered(false).is_some());
        assert_eq!(p.own_ready(), vec![Bytes::from_static(b"later")]);
    }

    #[test]
    fn conditions_only_get_worse_until_the_connection_is_lost() {
        let mut p = Pipeline::default();
        p.worsen(Condition::Unusable);
        p.worsen(Condition::NeedsReset);
        assert_eq!(p.condition, Condition::Unusable);
        p.take_lost();
        assert_eq!(p.condition, Condition::Clean);
    }

    #[test]
    fn replay_holds_while_only_echoes_reached_the_client() {
        let mut p = Pipeline::default();
        assert!(!p.replayable(), "nothing in flight: nothing to replay");
        p.expect(Kind::Parse, Purpose::Client, Undo::default(), Some(frame()));
        p.expect(Kind::Execute, Purpose::Client, Undo::default(), Some(frame()));
        p.note_echo_sent();
        assert!(p.answered(true).is_none(), "the ParseComplete echo is kept for a replay");
        assert!(p.replayable());
        let (frames, undone) = p.take_for_replay();
        assert_eq!((frames.len(), undone.len()), (2, 2));
        // The replay's ParseComplete is left out: the client has it.
        assert!(!p.passes(tag::PARSE_COMPLETE));
        assert!(p.passes(tag::DATA_ROW));

        // A row reached the client: no replay.
        let mut p = Pipeline::default();
        p.expect(Kind::Query, Purpose::Client, Undo::default(), Some(frame()));
        p.note_answer();
        assert!(!p.replayable());
        // A client message not recorded for replay (inside a transaction): no replay.
        let mut p = Pipeline::default();
        p.expect(Kind::Query, Purpose::Client, Undo::default(), None);
        assert!(!p.replayable());
        // An echo without a frame ends the chance of one.
        let mut p = Pipeline::default();
        p.expect(Kind::Bind, Purpose::Client, Undo::default(), None);
        p.answered(true);
        p.expect(Kind::Sync, Purpose::Client, Undo::default(), Some(frame()));
        assert!(!p.replayable());
        // A ReadyForQuery starts afresh.
        p.forget_answers();
        assert!(p.replayable());
    }
}

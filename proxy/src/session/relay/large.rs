//! Large messages, with bounded memory in both directions.
//!
//! - Client → server: a message longer than [`UNRESERVED_MESSAGE_BYTES`] is read only once
//!   its length is reserved from the shared budget (`client_message_budget_bytes`); until
//!   then the client is not read from, and every other client goes on. The reservation is
//!   held until the message has been written to the server. A message that can never be
//!   held (longer than the whole budget, or a statement longer than `policy_max_sql_bytes`
//!   with plugins loaded) is refused with 54000 and its bytes are dropped as they arrive, as
//!   are the messages PostgreSQL would skip after an error in an extended batch.
//! - Server → client: a long DataRow, CopyData or NoticeResponse that the client gets
//!   unchanged is passed on as it arrives, never held whole.

use bytes::Buf;

use crate::budget::{Reservation, UNRESERVED_MESSAGE_BYTES};
use crate::pool::MAX_SERVER_FRAME_BYTES;
use crate::protocol::messages::{tag, ErrorResponse};
use crate::protocol::{peek_header, reserve_read, READ_CHUNK};

use super::super::pipeline::{Batch, Kind};
use super::{End, Relay};

/// The least room a client read gets while frames of the read buffer are in flight (see
/// `reserve_client_read`).
const MIN_ROOM_WHILE_HELD: usize = 4 * 1024;

/// Where the client message at the front of the read buffer stands.
#[derive(Debug, Default)]
pub(super) enum Incoming {
    /// Small, complete, or not begun: decoded as usual.
    #[default]
    Plain,
    /// Long: waits for this many bytes of the budget before it is read further.
    Waiting(usize),
    /// Long, with its length reserved: being read.
    Reading(Reservation),
    /// Refused: `remaining` bytes of it are still to be dropped, then the refusal is sent.
    Dropping { remaining: usize, refusal: Refusal },
}

/// What a client gets for a message pgvane drops.
#[derive(Debug)]
pub(super) enum Refusal {
    /// An error for the statement; the session goes on.
    Statement(Kind, ErrorResponse),
    /// A FATAL error: the message was not part of a statement (e.g. CopyData).
    Fatal(ErrorResponse),
    /// Nothing: the message is one PostgreSQL would skip (an extended batch after an error).
    Silent,
}

/// A server message passing through as it arrives.
#[derive(Debug)]
pub(super) struct Passing {
    /// Bytes of it still to come.
    remaining: usize,
    /// To the client (false: dropped, it answers pgvane's own query).
    to_client: bool,
}

/// The large-message state of a session.
#[derive(Debug, Default)]
pub(super) struct LargeMessages {
    /// The client message being read.
    pub(super) incoming: Incoming,
    /// Budget held by large client messages still queued for the server.
    held: Option<Reservation>,
    /// The server message passing through.
    pub(super) passing: Option<Passing>,
}

impl LargeMessages {
    /// The budget the client message being read waits for, if any.
    pub(super) fn wanted_budget(&self) -> Option<usize> {
        match self.incoming {
            Incoming::Waiting(bytes) => Some(bytes),
            _ => None,
        }
    }
}

impl Relay<'_> {
    /// Looks at the client message at the front of the read buffer before it is decoded: true
    /// when it can be decoded (it is complete), false when more bytes (or budget) are needed.
    pub(super) fn check_client_message(&mut self) -> Result<bool, End> {
        loop {
            if let Incoming::Dropping { remaining, .. } = &mut self.large.incoming {
                let n = (*remaining).min(self.client.read_buf.len());
                self.client.read_buf.advance(n);
                self.meter.received += n as u64;
                *remaining -= n;
                if *remaining > 0 {
                    return Ok(false);
                }
                if let Incoming::Dropping { refusal, .. } = std::mem::take(&mut self.large.incoming) {
                    self.refuse(refusal)?;
                }
            }
            let Some((message_tag, total)) =
                peek_header(&self.client.read_buf, self.max_packet_bytes).map_err(End::ClientProtocol)?
            else {
                return Ok(false);
            };
            if self.client.read_buf.len() >= total || total <= UNRESERVED_MESSAGE_BYTES {
                if let Incoming::Reading(reservation) = std::mem::take(&mut self.large.incoming) {
                    // Complete: its bytes stay reserved until it has gone to the server.
                    match &mut self.large.held {
                        Some(held) => held.merge(reservation),
                        None => self.large.held = Some(reservation),
                    }
                }
                return Ok(self.client.read_buf.len() >= total);
            }
            match &self.large.incoming {
                Incoming::Reading(_) | Incoming::Waiting(_) => return Ok(false),
                Incoming::Plain | Incoming::Dropping { .. } => {}
            }
            match self.oversized(message_tag, total) {
                Some(refusal) => {
                    tracing::info!(bytes = total, tag = %(message_tag as char), "client message dropped as it arrives");
                    self.large.incoming = Incoming::Dropping { remaining: total, refusal };
                }
                None => {
                    self.large.incoming = Incoming::Waiting(total);
                    return Ok(false);
                }
            }
        }
    }

    /// Why a long client message cannot be held, if it cannot.
    fn oversized(&self, message_tag: u8, total: usize) -> Option<Refusal> {
        if self.pipeline.batch == Batch::Skipping && message_tag != b'S' {
            return Some(Refusal::Silent);
        }
        let kind = match message_tag {
            b'Q' => Some(Kind::Query),
            b'P' => Some(Kind::Parse),
            b'B' | b'D' | b'E' | b'C' => Some(Kind::Bind),
            b'F' => Some(Kind::FunctionCall),
            _ => None,
        };
        let refuse = |message: String| match kind {
            Some(kind) => Refusal::Statement(kind, ErrorResponse::error("54000", message)),
            None => Refusal::Fatal(ErrorResponse::fatal("54000", message)),
        };
        let limit = self.shared.config().settings.policy_max_sql_bytes;
        let statement = matches!(message_tag, b'Q' | b'P');
        if statement && total.saturating_sub(5) > limit && !self.shared.policy().plugins().is_empty() {
            return Some(refuse(format!(
                "statement message of {total} bytes is longer than policy_max_sql_bytes ({limit}): the policy plugins cannot judge it"
            )));
        }
        let budget = self.shared.message_budget.bytes();
        (total > budget)
            .then(|| refuse(format!("message of {total} bytes is larger than client_message_budget_bytes ({budget})")))
    }

    fn refuse(&mut self, refusal: Refusal) -> Result<(), End> {
        match refusal {
            Refusal::Statement(kind, error) => self.fail(kind, error),
            Refusal::Fatal(error) => return Err(End::Fatal(error)),
            Refusal::Silent => {}
        }
        Ok(())
    }

    /// The budget the client waited for is reserved: its message can be read.
    pub(super) fn budget_reserved(&mut self, reservation: Reservation) {
        if let Incoming::Waiting(total) = self.large.incoming {
            // Room for the whole message at once: one allocation, its pages filled as bytes arrive.
            let missing = total.saturating_sub(self.client.read_buf.len());
            reserve_read(&mut self.client.read_buf, missing);
            self.large.incoming = Incoming::Reading(reservation);
        }
    }

    /// Makes room for the next read from the client.
    pub(super) fn reserve_client_read(&mut self) {
        match self.large.incoming {
            Incoming::Dropping { .. } => reserve_read(&mut self.client.read_buf, READ_CHUNK),
            Incoming::Reading(_) => {} // reserved whole
            Incoming::Plain | Incoming::Waiting(_) => {
                // Client frames in flight (kept to run again) share the buffer's memory, so
                // growing it now would allocate another. While some room is left, the read
                // waits for them to be answered: then the buffer is topped up in place.
                let room = self.client.read_buf.capacity() - self.client.read_buf.len();
                if room >= MIN_ROOM_WHILE_HELD && self.holds_client_frames() {
                    return;
                }
                crate::protocol::reserve_for_partial(&mut self.client.read_buf)
            }
        }
    }

    /// Whether frames split off the client's read buffer may still be held (in flight, kept
    /// for a replay, deferred or to run again).
    fn holds_client_frames(&self) -> bool {
        !self.pipeline.is_empty() || self.pipeline.keeps_echoes() || self.deferred.is_some() || !self.replay.is_empty()
    }

    /// Gives back the budget of large messages once they have been written to the server,
    /// and the read buffer's room with it.
    pub(super) fn release_budget(&mut self) {
        if self.large.held.is_none()
            || !self.server_out.is_empty()
            || self.deferred.is_some()
            || !self.replay.is_empty()
        {
            return;
        }
        self.large.held = None;
        let buf = &mut self.client.read_buf;
        if matches!(self.large.incoming, Incoming::Plain) && buf.capacity() > 4 * READ_CHUNK {
            let mut fresh = bytes::BytesMut::with_capacity(READ_CHUNK.max(buf.len()));
            fresh.extend_from_slice(buf);
            *buf = fresh;
        }
    }

    /// Passes a long DataRow, CopyData or NoticeResponse from the server on as it arrives (or drops it when
    /// it answers pgvane's own query). True when the server's read buffer now starts with a
    /// message to decode as usual.
    pub(super) fn pass_server_message(&mut self) -> Result<bool, End> {
        let Some(server) = self.server.as_mut() else { return Ok(true) };
        let buf = &mut server.conn().read_buf;
        if let Some(passing) = &mut self.large.passing {
            let n = passing.remaining.min(buf.len());
            let bytes = buf.split_to(n);
            if passing.to_client {
                self.client.out.extend_from_slice(&bytes);
            }
            passing.remaining -= n;
            if passing.remaining > 0 {
                return Ok(false);
            }
            self.large.passing = None;
        }
        let Some((response, total)) = peek_header(buf, MAX_SERVER_FRAME_BYTES).map_err(|e| End::Server(e.into()))?
        else {
            return Ok(true);
        };
        let long = total > UNRESERVED_MESSAGE_BYTES && buf.len() < total;
        let streams = match response {
            tag::DATA_ROW | tag::COPY_DATA => self.pipeline.front().is_some(),
            tag::NOTICE_RESPONSE => true,
            _ => false,
        };
        if !long || !streams {
            return Ok(true);
        }
        if self.pipeline.capturing().is_some() {
            return Ok(true); // pgvane reads this row itself (its own short query)
        }
        let to_client = self.pipeline.for_client() && self.pipeline.passes(response);
        if to_client {
            self.pipeline.note_answer();
            self.meter.sent += total as u64;
        }
        self.large.passing = Some(Passing { remaining: total, to_client });
        self.pass_server_message()
    }

    /// Makes room for the next read from the server.
    pub(super) fn reserve_server_read(&mut self) {
        let passing = self.large.passing.is_some();
        if let Some(server) = self.server.as_mut() {
            match passing {
                true => reserve_read(&mut server.conn().read_buf, READ_CHUNK),
                false => crate::protocol::reserve_for_partial(&mut server.conn().read_buf),
            }
        }
    }
}

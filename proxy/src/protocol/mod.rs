//! PostgreSQL wire protocol (version 3.0): framing and the messages pgvane inspects or creates.
//!
//! No I/O here: decoders take a `&mut BytesMut` and return `Ok(None)` when they need more
//! bytes; encoders append to a caller's `BytesMut`. Frames that nobody inspects keep their raw
//! bytes and are forwarded unchanged.

pub(crate) mod frame;
pub mod messages;
mod startup;

pub use frame::{decode_frame, Frame};
pub use startup::{decode_startup, Startup, StartupParams, MAX_STARTUP_PACKET_BYTES};

use thiserror::Error;

/// The protocol version pgvane speaks: 3.0.
pub const PROTOCOL_3_0: u32 = 3 << 16;

/// Something a peer sent that does not follow the protocol.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ProtocolError {
    /// A length field below the 4 bytes of the length itself.
    #[error("invalid message length {0}")]
    LengthTooSmall(i64),
    /// A length field above the configured limit; nothing was reserved for it.
    #[error("message length {len} exceeds the limit of {limit} bytes")]
    LengthTooLarge {
        /// Declared length.
        len: u64,
        /// The limit in force.
        limit: u64,
    },
    /// A message whose body does not parse.
    #[error("malformed {what} message: {detail}")]
    Malformed {
        /// Which message.
        what: &'static str,
        /// What is wrong with it.
        detail: &'static str,
    },
}

impl ProtocolError {
    pub(crate) fn malformed(what: &'static str, detail: &'static str) -> Self {
        ProtocolError::Malformed { what, detail }
    }
}

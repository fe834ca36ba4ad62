//! PostgreSQL wire protocol (version 3.0): framing and the messages pgvane inspects or creates.
//!
//! No I/O here: decoders take a `&mut BytesMut` and return `Ok(None)` when they need more
//! bytes; encoders append to a caller's `BytesMut`. Frames that nobody inspects keep their raw
//! bytes and are forwarded unchanged.

mod backend;
mod codec;
mod encoding;
pub(crate) mod frame;
mod frontend;
pub mod messages;
mod startup;

pub use backend::BackendMessage;
pub use encoding::{ClientEncoding, EncodedText, EncodingError};
pub use frame::{decode_frame, peek_header, reserve_for_partial, reserve_read, Frame, READ_CHUNK};
pub use frontend::{encode_describe_or_close, Bind, FrontendMessage, Parse, Target};
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
    /// A message type byte the protocol does not define (for this direction).
    #[error("unknown message type {}", printable_tag(*.0))]
    UnknownMessage(u8),
}

fn printable_tag(tag: u8) -> String {
    match tag {
        0x21..=0x7e => format!("'{}'", tag as char),
        _ => format!("0x{tag:02x}"),
    }
}

impl ProtocolError {
    pub(crate) fn malformed(what: &'static str, detail: &'static str) -> Self {
        ProtocolError::Malformed { what, detail }
    }
}

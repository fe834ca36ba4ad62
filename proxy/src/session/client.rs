//! The client's socket with its read buffer and an output buffer for pgvane's own messages.

use std::io;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::protocol::messages::ErrorResponse;
use crate::protocol::{decode_frame, decode_startup, Frame, ProtocolError, Startup};

use super::SessionError;

/// One client connection.
#[derive(Debug)]
pub struct ClientConn {
    /// The socket.
    pub stream: TcpStream,
    /// Bytes read and not yet handled.
    pub read_buf: BytesMut,
    /// pgvane's own messages waiting to be flushed.
    pub out: BytesMut,
}

impl ClientConn {
    /// Wraps an accepted socket.
    pub fn new(stream: TcpStream) -> Self {
        ClientConn { stream, read_buf: BytesMut::with_capacity(16 * 1024), out: BytesMut::with_capacity(4 * 1024) }
    }

    async fn fill(&mut self) -> Result<(), SessionError> {
        match self.stream.read_buf(&mut self.read_buf).await {
            Ok(0) => Err(SessionError::ClientGone),
            Ok(_) => Ok(()),
            Err(e) => Err(SessionError::ClientIo(e)),
        }
    }

    /// Reads the untyped first packet (startup, SSL/GSS request or cancel).
    pub async fn read_startup(&mut self) -> Result<Startup, SessionError> {
        loop {
            match decode_startup(&mut self.read_buf) {
                Ok(Some(startup)) => return Ok(startup),
                Ok(None) => {}
                // As PostgreSQL: a bad length gets no answer, the peer may not speak protocol 3 at all.
                Err(e @ (ProtocolError::LengthTooSmall(_) | ProtocolError::LengthTooLarge { .. })) => {
                    return Err(SessionError::StartupLength(e))
                }
                Err(e) => return Err(e.into()),
            }
            self.fill().await?;
        }
    }

    /// Reads one typed message no longer than `max_len`.
    pub async fn read_frame(&mut self, max_len: usize) -> Result<Frame, SessionError> {
        loop {
            if let Some(frame) = decode_frame(&mut self.read_buf, max_len)? {
                return Ok(frame);
            }
            self.fill().await?;
        }
    }

    /// Writes out everything queued in `out`.
    pub async fn flush(&mut self) -> Result<(), SessionError> {
        self.stream.write_all(&self.out).await.map_err(SessionError::ClientIo)?;
        self.out.clear();
        Ok(())
    }

    /// Writes raw bytes (e.g. the `N` answer to SSLRequest).
    pub async fn write_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes).await
    }

    /// Sends an error and flushes. Used for FATAL errors right before closing.
    pub async fn send_error(&mut self, error: &ErrorResponse) -> Result<(), SessionError> {
        error.encode(&mut self.out);
        self.flush().await
    }

    /// The FATAL a protocol violation earns, as PostgreSQL words it.
    pub fn protocol_violation(err: &ProtocolError) -> ErrorResponse {
        ErrorResponse::fatal("08P01", format!("invalid frontend message: {err}"))
    }
}

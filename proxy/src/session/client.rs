//! The client's connection (plain or TLS) with its read buffer and an output buffer for
//! pgvane's own messages.

use std::io;
use std::sync::Arc;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::tls::{ClientTls, Stream};

use crate::protocol::messages::ErrorResponse;
use crate::protocol::{decode_frame, decode_startup, Frame, ProtocolError, Startup};

use super::SessionError;

/// One client connection.
#[derive(Debug)]
pub struct ClientConn {
    /// The connection.
    pub stream: Stream,
    /// Bytes read and not yet handled.
    pub read_buf: BytesMut,
    /// pgvane's own messages waiting to be flushed.
    pub out: BytesMut,
    /// Once TLS is up: the tls-server-end-point data of the certificate pgvane presented,
    /// when it has one (SCRAM-SHA-256-PLUS is offered then).
    pub channel_binding: Option<Arc<[u8]>>,
}

/// How a client started TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsStart {
    /// After an SSLRequest answered `S`.
    SslRequest,
    /// With a ClientHello as its first bytes (PostgreSQL 17's `sslnegotiation=direct`).
    Direct,
}

impl ClientConn {
    /// Wraps an accepted socket (plain TCP or unix-domain).
    pub fn new(stream: Stream) -> Self {
        ClientConn {
            stream,
            read_buf: BytesMut::with_capacity(16 * 1024),
            out: BytesMut::with_capacity(4 * 1024),
            channel_binding: None,
        }
    }

    /// The first byte the client sent, without consuming it (only before anything was read).
    pub async fn peek_first_byte(&mut self) -> Result<u8, SessionError> {
        let mut byte = [0u8; 1];
        match &self.stream {
            Stream::Plain(tcp) if self.read_buf.is_empty() => match tcp.peek(&mut byte).await {
                Ok(0) => Err(SessionError::ClientGone),
                Ok(_) => Ok(byte[0]),
                Err(e) => Err(SessionError::ClientIo(e)),
            },
            _ => Err(SessionError::ClientIo(io::Error::other("peek after the first read"))),
        }
    }

    /// Runs the TLS handshake on the plain connection. Nothing may be buffered: bytes the
    /// client sent before the handshake would otherwise be taken as encrypted ones
    /// (CVE-2021-23214), so the caller refuses those first.
    pub async fn start_tls(&mut self, tls: &ClientTls, how: TlsStart) -> Result<(), SessionError> {
        let Some(acceptor) = tls.acceptor() else {
            return Err(SessionError::Tls(io::Error::other("TLS is not configured")));
        };
        if !self.read_buf.is_empty() {
            return Err(SessionError::Tls(io::Error::other("unencrypted bytes before the TLS handshake")));
        }
        let Stream::Plain(tcp) = std::mem::replace(&mut self.stream, Stream::Closed) else {
            return Err(SessionError::Tls(io::Error::other("TLS is already in use")));
        };
        let tls_stream = acceptor.accept(tcp).await.map_err(SessionError::Tls)?;
        let alpn = tls_stream.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
        self.stream = Stream::Tls(Box::new(tokio_rustls::TlsStream::Server(tls_stream)));
        self.channel_binding = tls.channel_binding().cloned();
        // PostgreSQL 17 insists on ALPN with direct TLS, so that a TLS connection meant for
        // another protocol cannot be taken for a PostgreSQL one.
        if how == TlsStart::Direct && alpn.as_deref() != Some(crate::tls::ALPN_POSTGRESQL) {
            return Err(SessionError::Refused(ErrorResponse::fatal(
                "08P01",
                "received direct TLS connection request without ALPN protocol \"postgresql\"",
            )));
        }
        Ok(())
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

    /// After a FATAL sent to a client that may be about to send something (disconnected by a
    /// drain or KILL while idle): stops writing, then reads, discarding, until the client
    /// closes or `limit` passes. Closing at once would answer the client's next message with
    /// a reset, which can destroy the FATAL before the client reads it.
    pub async fn linger(&mut self, limit: std::time::Duration) {
        let discard = async {
            let _ = self.stream.shutdown().await;
            loop {
                self.read_buf.clear();
                match self.stream.read_buf(&mut self.read_buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        };
        let _ = tokio::time::timeout(limit, discard).await;
    }

    /// Writes out everything queued in `out`.
    pub async fn flush(&mut self) -> Result<(), SessionError> {
        self.stream.write_all(&self.out).await.map_err(SessionError::ClientIo)?;
        self.stream.flush().await.map_err(SessionError::ClientIo)?;
        self.out.clear();
        Ok(())
    }

    /// Writes raw bytes (e.g. the `N` answer to SSLRequest).
    pub async fn write_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes).await?;
        self.stream.flush().await
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

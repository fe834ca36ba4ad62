//! A connection that is plain TCP, a unix-domain socket, or TLS over TCP, used on both legs.
//! TLS is never run over a unix-domain socket (libpq does not either): the socket is local and
//! its file permissions decide who may connect.
//!
//! The relay reads and writes one connection at once. A TLS stream cannot be split into two
//! halves without a lock around the TLS state, so instead [`Stream::progress`] polls the read
//! and the write side of the one stream in a single future: no lock, and the plain-TCP case
//! costs what the borrowed `TcpStream::split` did.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::{pin, Pin};
use std::task::{Context, Poll, Waker};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::{TcpStream, UnixStream};
use tokio_rustls::TlsStream;

/// A plain, unix-domain or TLS connection.
#[derive(Debug)]
pub enum Stream {
    /// Plain TCP.
    Plain(TcpStream),
    /// A unix-domain socket (always plain).
    Unix(UnixStream),
    /// TLS over TCP (boxed: the TLS state is large).
    Tls(Box<TlsStream<TcpStream>>),
    /// The socket was handed to a TLS handshake that failed: every I/O fails.
    Closed,
}

/// What [`Stream::progress`] did.
#[derive(Debug)]
pub enum Progress {
    /// Read into the buffer: bytes read (0 at end of stream).
    Read(io::Result<usize>),
    /// Wrote from the output: bytes taken (the caller advances its output by them).
    Wrote(io::Result<usize>),
}

impl Stream {
    /// True when the connection is encrypted.
    pub fn is_tls(&self) -> bool {
        matches!(self, Stream::Tls(_))
    }

    /// True when the connection is a unix-domain socket.
    pub fn is_unix(&self) -> bool {
        matches!(self, Stream::Unix(_))
    }

    /// The TCP socket underneath (`None` on a unix-domain socket).
    pub fn tcp(&self) -> Option<&TcpStream> {
        match self {
            Stream::Plain(tcp) => Some(tcp),
            Stream::Tls(tls) => Some(tls.get_ref().0),
            Stream::Unix(_) | Stream::Closed => None,
        }
    }

    /// The local address of the TCP socket (an error on a unix-domain socket).
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        match self {
            Stream::Unix(_) => {
                Err(io::Error::new(io::ErrorKind::Unsupported, "a unix-domain socket has no IP address"))
            }
            _ => self.tcp().ok_or_else(closed)?.local_addr(),
        }
    }

    /// Waits until bytes can be read into `read_into` (when given) or some of `out` written,
    /// and does it. Bytes TLS still holds from an earlier write are flushed meanwhile. Never
    /// resolves when there is nothing to read or write. Cancel-safe.
    pub fn progress<'a>(
        &'a mut self,
        mut read_into: Option<&'a mut BytesMut>,
        out: &'a [u8],
    ) -> impl Future<Output = Progress> + 'a {
        std::future::poll_fn(move |cx| self.poll_progress(cx, read_into.as_deref_mut(), out))
    }

    fn poll_progress(&mut self, cx: &mut Context<'_>, read_into: Option<&mut BytesMut>, out: &[u8]) -> Poll<Progress> {
        if let Some(buf) = read_into {
            if let Poll::Ready(r) = pin!(self.read_buf(buf)).poll(cx) {
                return Poll::Ready(Progress::Read(r));
            }
        }
        if !out.is_empty() {
            if let Poll::Ready(r) = Pin::new(&mut *self).poll_write(cx, out) {
                return Poll::Ready(Progress::Wrote(r));
            }
        } else if let Stream::Tls(tls) = self {
            // rustls may have accepted bytes the socket could not take yet.
            if let Poll::Ready(Err(e)) = Pin::new(&mut **tls).poll_flush(cx) {
                return Poll::Ready(Progress::Wrote(Err(e)));
            }
        }
        Poll::Pending
    }

    /// True if nothing has arrived on an idle connection and it is still open. Never blocks.
    /// On TLS, records that carry no data (session tickets) are consumed and do not count.
    pub fn is_idle_and_open(&mut self) -> bool {
        let mut probe = [0u8; 1];
        match self {
            Stream::Plain(tcp) => matches!(tcp.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock),
            Stream::Unix(unix) => matches!(unix.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock),
            Stream::Tls(tls) => {
                let mut cx = Context::from_waker(Waker::noop());
                let mut buf = ReadBuf::new(&mut probe);
                Pin::new(&mut **tls).poll_read(&mut cx, &mut buf).is_pending()
            }
            Stream::Closed => false,
        }
    }

    /// Writes `bytes` if that can be done without waiting, best effort (a Terminate before
    /// closing an idle connection).
    pub fn try_write_now(&mut self, bytes: &[u8]) {
        let mut cx = Context::from_waker(Waker::noop());
        if Pin::new(&mut *self).poll_write(&mut cx, bytes).is_ready() {
            let _ = Pin::new(&mut *self).poll_flush(&mut cx);
        }
    }
}

fn closed() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "connection closed after a failed TLS handshake")
}

impl AsyncRead for Stream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(tcp) => Pin::new(tcp).poll_read(cx, buf),
            Stream::Unix(unix) => Pin::new(unix).poll_read(cx, buf),
            Stream::Tls(tls) => Pin::new(&mut **tls).poll_read(cx, buf),
            Stream::Closed => Poll::Ready(Err(closed())),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(tcp) => Pin::new(tcp).poll_write(cx, buf),
            Stream::Unix(unix) => Pin::new(unix).poll_write(cx, buf),
            Stream::Tls(tls) => Pin::new(&mut **tls).poll_write(cx, buf),
            Stream::Closed => Poll::Ready(Err(closed())),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(tcp) => Pin::new(tcp).poll_write_vectored(cx, bufs),
            Stream::Unix(unix) => Pin::new(unix).poll_write_vectored(cx, bufs),
            Stream::Tls(tls) => Pin::new(&mut **tls).poll_write_vectored(cx, bufs),
            Stream::Closed => Poll::Ready(Err(closed())),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Plain(tcp) => tcp.is_write_vectored(),
            Stream::Unix(unix) => unix.is_write_vectored(),
            Stream::Tls(tls) => tls.is_write_vectored(),
            Stream::Closed => false,
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(tcp) => Pin::new(tcp).poll_flush(cx),
            Stream::Unix(unix) => Pin::new(unix).poll_flush(cx),
            Stream::Tls(tls) => Pin::new(&mut **tls).poll_flush(cx),
            Stream::Closed => Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(tcp) => Pin::new(tcp).poll_shutdown(cx),
            Stream::Unix(unix) => Pin::new(unix).poll_shutdown(cx),
            Stream::Tls(tls) => Pin::new(&mut **tls).poll_shutdown(cx),
            Stream::Closed => Poll::Ready(Ok(())),
        }
    }
}

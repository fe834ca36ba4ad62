//! The query loop in session mode: frames flow both ways, forwarded as they came, while pgvane
//! tracks just enough to know whether the server is idle when the client leaves.
//!
//! The two directions run as two futures of one task, so neither blocks the other (a server
//! streaming results while the client still sends a pipeline cannot deadlock the proxy).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::pool::{ServerConn, ServerError};
use crate::protocol::frame::frame_len;
use crate::protocol::messages::{self, tag, TransactionStatus};
use crate::protocol::{Frame, ProtocolError};

use super::client::ClientConn;

/// How a relay ended.
#[derive(Debug)]
pub enum RelayEnd {
    /// The client sent Terminate.
    ClientTerminated,
    /// The client's socket closed or failed.
    ClientGone,
    /// The client broke the protocol.
    ClientProtocol(ProtocolError),
    /// The server connection failed.
    Server(ServerError),
}

/// What the server owes the client (one ReadyForQuery per Query, Sync and FunctionCall sent)
/// and whether the last ReadyForQuery said idle. Shared by the two directions; atomics only
/// because the session future must be `Send`, there is no contention.
#[derive(Debug, Default)]
struct Flow {
    ready_for_query_owed: AtomicUsize,
    in_transaction: AtomicBool,
}

/// Relays until either side ends. Returns how it ended and whether the server is left idle
/// (nothing in flight, outside any transaction, nothing unread), i.e. safe to reset and reuse.
pub async fn relay(client: &mut ClientConn, server: &mut ServerConn, max_packet_bytes: usize) -> (RelayEnd, bool) {
    let flow = Flow::default();
    let (mut client_rx, mut client_tx) = client.stream.split();
    let (mut server_rx, mut server_tx) = server.stream.split();
    let client_buf = &mut client.read_buf;
    let server_buf = &mut server.read_buf;
    let params = &mut server.params;

    let upstream = async {
        loop {
            let scan = scan(client_buf, max_packet_bytes, |frame_tag, _| {
                match frame_tag {
                    tag::TERMINATE => return Step::Stop,
                    tag::QUERY | tag::SYNC | tag::FUNCTION_CALL => {
                        flow.ready_for_query_owed.fetch_add(1, Relaxed);
                    }
                    _ => {}
                }
                Step::Forward
            });
            let (complete, stop) = match scan {
                Ok(s) => s,
                Err(e) => return RelayEnd::ClientProtocol(e),
            };
            if complete > 0 {
                let chunk = client_buf.split_to(complete);
                if let Err(e) = server_tx.write_all(&chunk).await {
                    return RelayEnd::Server(e.into());
                }
            }
            if stop {
                return RelayEnd::ClientTerminated;
            }
            match client_rx.read_buf(client_buf).await {
                Ok(0) | Err(_) => return RelayEnd::ClientGone,
                Ok(_) => {}
            }
        }
    };

    let downstream = async {
        loop {
            let scan = scan(server_buf, crate::pool::MAX_SERVER_FRAME_BYTES, |frame_tag, body| {
                match frame_tag {
                    tag::READY_FOR_QUERY => {
                        let _ = flow
                            .ready_for_query_owed
                            .fetch_update(Relaxed, Relaxed, |n| n.checked_sub(1));
                        let status = messages::parse_ready_for_query(body);
                        flow.in_transaction
                            .store(status != Ok(TransactionStatus::Idle), Relaxed);
                    }
                    tag::PARAMETER_STATUS => {
                        if let Ok((name, value)) = messages::parse_parameter_status(body) {
                            params.insert(name.to_owned(), value.to_owned());
                        }
                    }
                    _ => {}
                }
                Step::Forward
            });
            let complete = match scan {
                Ok((complete, _)) => complete,
                Err(e) => return RelayEnd::Server(e.into()),
            };
            if complete > 0 {
                let chunk = server_buf.split_to(complete);
                if client_tx.write_all(&chunk).await.is_err() {
                    return RelayEnd::ClientGone;
                }
            }
            match server_rx.read_buf(server_buf).await {
                Ok(0) => return RelayEnd::Server(ServerError::Closed),
                Err(e) => return RelayEnd::Server(e.into()),
                Ok(_) => {}
            }
        }
    };

    let end = tokio::select! {
        end = upstream => end,
        end = downstream => end,
    };
    let idle = matches!(end, RelayEnd::ClientTerminated | RelayEnd::ClientGone)
        && flow.ready_for_query_owed.load(Relaxed) == 0
        && !flow.in_transaction.load(Relaxed)
        && server.read_buf.is_empty();
    (end, idle)
}

/// What to do with a scanned frame.
enum Step {
    /// Forward it and go on.
    Forward,
    /// Stop before it (it is neither forwarded nor consumed).
    Stop,
}

/// Walks the complete frames at the front of `buf`, calling `inspect(tag, body)` on each.
///
/// Returns how many bytes of complete frames to forward and whether `inspect` asked to stop;
/// a stopping frame stays in `buf`. Reserves room for a partial frame at the end.
fn scan(
    buf: &mut BytesMut,
    max_len: usize,
    mut inspect: impl FnMut(u8, &[u8]) -> Step,
) -> Result<(usize, bool), ProtocolError> {
    let mut at = 0;
    while let Some(rest) = buf.get(at..) {
        let Some(len) = frame_len(rest, max_len)? else {
            break;
        };
        let frame_tag = rest[0];
        let body = &rest[Frame::HEADER_LEN..len];
        if let Step::Stop = inspect(frame_tag, body) {
            return Ok((at, true));
        }
        at += len;
    }
    reserve_for_partial(buf, at);
    Ok((at, false))
}

/// Makes sure a read can make progress on the partial frame starting at `at`.
fn reserve_for_partial(buf: &mut BytesMut, at: usize) {
    const MIN_READ: usize = 8 * 1024;
    let partial = buf.len() - at;
    let wanted = match buf.get(at + 1..at + 5) {
        Some(l) => (u32::from_be_bytes([l[0], l[1], l[2], l[3]]) as usize + 1).saturating_sub(partial),
        None => 0,
    };
    let wanted = wanted.max(MIN_READ);
    if buf.capacity() - buf.len() < wanted {
        buf.reserve(wanted);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scan_counts_complete_frames_and_stops_at_terminate() {
        let mut buf = BytesMut::from(&b"Q\0\0\0\x06a\0S\0\0\0\x04X\0\0\0\x04Q\0\0"[..]);
        let mut tags = Vec::new();
        let (complete, stop) = scan(&mut buf, 1024, |t, _| {
            tags.push(t);
            if t == b'X' {
                Step::Stop
            } else {
                Step::Forward
            }
        })
        .unwrap();
        assert_eq!((complete, stop), (12, true));
        assert_eq!(tags, b"QSX");
    }

    #[test]
    fn scan_leaves_partial_frames_and_reserves_for_them() {
        let mut buf = BytesMut::from(&b"D\0\x01\0\0abc"[..]);
        let (complete, stop) = scan(&mut buf, 1 << 20, |_, _| Step::Forward).unwrap();
        assert_eq!((complete, stop), (0, false));
        assert!(buf.capacity() >= 0x1_0001);
    }

    #[test]
    fn scan_rejects_oversized_frames() {
        let mut buf = BytesMut::from(&b"Q\0\x10\0\0"[..]);
        assert!(scan(&mut buf, 1024, |_, _| Step::Forward).is_err());
    }
}

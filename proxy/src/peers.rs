//! Cancels across instances, on PgBouncer's model (`peer_id` and `[peers]`, PgBouncer 1.19).
//!
//! A CancelRequest comes on a new connection, which a load balancer may hand to another
//! instance than the one the client is connected to. So every instance of a group has its own
//! `peer_id`, and writes it into the cancel keys it hands out, in PgBouncer's layout: the
//! BackendKeyData's eight bytes are `[r, id_lo, id_hi, r, r, r, r, r|ttl]`, where `r` is
//! random, the peer id takes bytes 1 and 2 (low byte first), the sign bit of the process ID is
//! clear, and the two lowest bits of the last byte say how many more times the key may be
//! forwarded. pgvane hands keys out with a TTL of 1: a cancel is forwarded at most once, to the
//! peer its key names, and a forwarded cancel (TTL 0) that still does not belong to the
//! instance that got it is dropped, so a cancel is never amplified nor loops. A cancel for a
//! peer id that `[peers]` does not list is dropped.
//!
//! The instance that owns the key applies the cancel as it would its own: only to the query
//! the client is running now (see `clients`).

use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::config::PeerConfig;
use crate::protocol::messages;

/// The bits of the secret (the last byte of the key) holding its time to live.
const TTL_MASK: u32 = 0x3;

/// The time to live pgvane's keys start with: one forward.
const TTL: u32 = 1;

/// How the cancel keys of one instance are made and read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KeyScheme {
    /// This instance's `peer_id`; 0: peering off (keys are all random).
    pub peer_id: u16,
}

/// What to do with a CancelRequest's key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// One of this instance's keys, as it was handed out: look the client up here.
    Local {
        /// Process ID part.
        pid: u32,
        /// Secret part.
        secret: u32,
    },
    /// Another instance's key: send this (its TTL spent by one) to that peer.
    Forward {
        /// The peer the key names.
        peer: u16,
        /// Process ID part.
        pid: u32,
        /// Secret part, TTL decremented.
        secret: u32,
    },
    /// Another instance's key that was forwarded already: dropped.
    Exhausted {
        /// The peer the key names.
        peer: u16,
    },
}

impl KeyScheme {
    /// Turns two random words into a key of this instance.
    pub fn key(self, random_pid: u32, random_secret: u32) -> (u32, u32) {
        // A positive process ID: some clients mishandle a negative one (as PgBouncer notes).
        let pid = random_pid & 0x7fff_ffff;
        if self.peer_id == 0 {
            return (pid, random_secret);
        }
        let [lo, hi] = self.peer_id.to_le_bytes();
        let pid = (pid & 0x7f00_00ff) | (u32::from(lo) << 16) | (u32::from(hi) << 8);
        (pid, (random_secret & !TTL_MASK) | TTL)
    }

    /// Where a CancelRequest for (`pid`, `secret`) goes.
    pub fn route(self, pid: u32, secret: u32) -> Route {
        if self.peer_id == 0 {
            return Route::Local { pid, secret };
        }
        let peer = peer_of(pid);
        if peer == self.peer_id {
            // Forwarded to us (TTL spent) or straight from the client: the key as handed out.
            return Route::Local { pid, secret: (secret & !TTL_MASK) | TTL };
        }
        match secret & TTL_MASK {
            0 => Route::Exhausted { peer },
            ttl => Route::Forward { peer, pid, secret: (secret & !TTL_MASK) | (ttl - 1) },
        }
    }
}

/// The peer id a key names (bytes 1 and 2 of the process ID, low byte first).
pub fn peer_of(pid: u32) -> u16 {
    let [_, lo, hi, _] = pid.to_be_bytes();
    u16::from_le_bytes([lo, hi])
}

/// Sends a CancelRequest for (`pid`, `secret`) to `peer`, and waits until the peer has
/// closed the connection: by then it has applied the cancel (or dropped it).
pub async fn forward(peer: &PeerConfig, pid: u32, secret: u32, timeout: Duration) -> std::io::Result<()> {
    let send = async {
        let (mut stream, _) = crate::endpoint::connect(&peer.host, peer.port).await?;
        let mut buf = BytesMut::with_capacity(16);
        messages::encode_cancel(pid, secret, &mut buf);
        stream.write_all(&buf).await?;
        stream.shutdown().await?;
        let mut rest = [0u8; 64];
        while stream.read(&mut rest).await? > 0 {}
        Ok(())
    };
    match tokio::time::timeout(timeout, send).await {
        Ok(result) => result,
        Err(_) => Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "timed out")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_without_peering_are_random_and_stay_here() {
        let scheme = KeyScheme { peer_id: 0 };
        let (pid, secret) = scheme.key(0xffff_ffff, 0xdead_beef);
        assert_eq!((pid, secret), (0x7fff_ffff, 0xdead_beef));
        assert_eq!(scheme.route(pid, secret), Route::Local { pid, secret });
    }

    #[test]
    fn a_key_names_its_peer_in_pgbouncers_layout() {
        let scheme = KeyScheme { peer_id: 0x1234 };
        let (pid, secret) = scheme.key(0xffff_ffff, 0xffff_ffff);
        // Bytes 1 and 2: the id, low byte first; sign bit clear; TTL 1 in the last bits.
        assert_eq!(pid.to_be_bytes(), [0x7f, 0x34, 0x12, 0xff]);
        assert_eq!(secret & TTL_MASK, 1);
        assert_eq!(peer_of(pid), 0x1234);
        assert_eq!(scheme.route(pid, secret), Route::Local { pid, secret });
    }

    #[test]
    fn another_peers_key_is_forwarded_once_then_dropped() {
        let (pid, secret) = KeyScheme { peer_id: 2 }.key(0x0102_0304, 0x0506_0709);
        let here = KeyScheme { peer_id: 1 };
        let Route::Forward { peer, pid: fpid, secret: fsecret } = here.route(pid, secret) else {
            panic!("not forwarded")
        };
        assert_eq!((peer, fpid), (2, pid));
        assert_eq!(fsecret & TTL_MASK, 0);
        // Arrived at its owner: the key as handed out again.
        assert_eq!(KeyScheme { peer_id: 2 }.route(fpid, fsecret), Route::Local { pid, secret });
        // Arrived at a third instance (a load balancer in between): not forwarded again.
        assert_eq!(KeyScheme { peer_id: 3 }.route(fpid, fsecret), Route::Exhausted { peer: 2 });
    }
}

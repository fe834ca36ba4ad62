//! Bytes queued for a socket, in order: small messages are copied into one buffer, large
//! ones are queued as the frames they arrived in, so a message of hundreds of MiB is held
//! once, not once as read and again as queued.

use std::collections::VecDeque;

use bytes::{Buf, Bytes, BytesMut};

/// Messages at least this long are queued without a copy.
const QUEUE_WHOLE_BYTES: usize = 64 * 1024;

/// An output queue: whole frames, then a buffer that small messages are written into.
#[derive(Debug, Default)]
pub struct Outbound {
    /// Queued frames, each before everything after it (including `tail`).
    frames: VecDeque<Bytes>,
    /// Bytes of `frames`.
    frames_len: usize,
    /// Small messages, after every queued frame.
    tail: BytesMut,
}

impl Outbound {
    /// An empty queue with room for `capacity` bytes of small messages.
    pub fn with_capacity(capacity: usize) -> Self {
        Outbound { frames: VecDeque::new(), frames_len: 0, tail: BytesMut::with_capacity(capacity) }
    }

    /// Queues a copy of `bytes`.
    pub fn extend_from_slice(&mut self, bytes: &[u8]) {
        self.tail.extend_from_slice(bytes);
    }

    /// Queues a frame; a large one is kept as it is, without a copy.
    pub fn push(&mut self, frame: &Bytes) {
        if frame.len() < QUEUE_WHOLE_BYTES {
            self.tail.extend_from_slice(frame);
            return;
        }
        if !self.tail.is_empty() {
            let before = self.tail.split().freeze();
            self.frames_len += before.len();
            self.frames.push_back(before);
        }
        self.frames_len += frame.len();
        self.frames.push_back(frame.clone());
    }

    /// The buffer at the end of the queue, for encoders that write into a `BytesMut`.
    pub fn buf(&mut self) -> &mut BytesMut {
        &mut self.tail
    }

    /// The bytes to write next.
    pub fn front(&self) -> &[u8] {
        match self.frames.front() {
            Some(frame) => frame,
            None => &self.tail,
        }
    }

    /// `n` bytes of [`Outbound::front`] were written.
    pub fn advance(&mut self, n: usize) {
        match self.frames.front_mut() {
            Some(frame) => {
                frame.advance(n);
                self.frames_len -= n;
                if frame.is_empty() {
                    self.frames.pop_front();
                }
            }
            None => self.tail.advance(n),
        }
    }

    /// Bytes queued.
    pub fn len(&self) -> usize {
        self.frames_len + self.tail.len()
    }

    /// Nothing queued.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Drops everything queued.
    pub fn clear(&mut self) {
        self.frames.clear();
        self.frames_len = 0;
        self.tail.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(out: &mut Outbound, step: usize) -> Vec<u8> {
        let mut written = Vec::new();
        while !out.is_empty() {
            let n = out.front().len().min(step);
            written.extend_from_slice(&out.front()[..n]);
            out.advance(n);
        }
        written
    }

    #[test]
    fn keeps_order_across_copied_and_queued_bytes() {
        let big = Bytes::from(vec![7u8; QUEUE_WHOLE_BYTES + 3]);
        let mut out = Outbound::with_capacity(16);
        out.extend_from_slice(b"ab");
        out.push(&big);
        out.push(&Bytes::from_static(b"cd"));
        out.buf().extend_from_slice(b"ef");
        assert_eq!(out.len(), big.len() + 6);
        let mut expected = b"ab".to_vec();
        expected.extend_from_slice(&big);
        expected.extend_from_slice(b"cdef");
        assert_eq!(drain(&mut out, 1000), expected);
        assert!(out.is_empty());
    }

    #[test]
    fn large_frames_are_queued_without_a_copy() {
        let big = Bytes::from(vec![1u8; QUEUE_WHOLE_BYTES]);
        let mut out = Outbound::default();
        out.push(&big);
        assert_eq!(out.front().as_ptr(), big.as_ptr());
        out.clear();
        assert!(out.is_empty());
    }
}

//! Framing of typed messages: one tag byte, a 4-byte big-endian length (counting itself), a body.

use bytes::{Bytes, BytesMut};

use super::ProtocolError;

/// One typed message, kept as the raw bytes it arrived in (tag, length and body).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    raw: Bytes,
}

impl Frame {
    /// Size of the tag and length header.
    pub const HEADER_LEN: usize = 5;

    /// The message type byte, e.g. `b'Q'`.
    pub fn tag(&self) -> u8 {
        self.raw.first().copied().unwrap_or(0)
    }

    /// The body after the header.
    pub fn body(&self) -> &[u8] {
        self.raw.get(Self::HEADER_LEN..).unwrap_or_default()
    }

    /// The whole frame as received, ready to forward.
    pub fn raw(&self) -> &Bytes {
        &self.raw
    }

    /// Consumes the frame, returning its raw bytes.
    pub fn into_raw(self) -> Bytes {
        self.raw
    }

    /// The frame copied into memory of its own, for a frame kept long after it was read
    /// (which would keep the whole read buffer it came in from being reused). `old`, a frame
    /// such a copy made before, lends its memory when nothing else holds it, so replacing
    /// one kept frame by another allocates nothing once warm.
    pub fn detached(&self, old: Option<Frame>) -> Frame {
        let mut copy = old.and_then(|old| old.raw.try_into_mut().ok()).unwrap_or_default();
        copy.clear();
        copy.extend_from_slice(&self.raw);
        Frame { raw: copy.freeze() }
    }
}

/// The type byte and total length (header included) of the frame starting `buf`, once its
/// header has arrived. The declared length is checked against `max_len`, so a peer cannot
/// make pgvane hold what it claims.
pub fn peek_header(buf: &[u8], max_len: usize) -> Result<Option<(u8, usize)>, ProtocolError> {
    let Some(header) = buf.get(..Frame::HEADER_LEN) else {
        return Ok(None);
    };
    let declared = u32::from_be_bytes([header[1], header[2], header[3], header[4]]);
    if declared < 4 {
        return Err(ProtocolError::LengthTooSmall(declared.into()));
    }
    let declared = declared as usize;
    if declared > max_len {
        return Err(ProtocolError::LengthTooLarge { len: declared as u64, limit: max_len as u64 });
    }
    Ok(Some((header[0], declared + 1)))
}

/// Length of the next complete frame at the start of `buf`, `None` if more bytes are needed.
fn frame_len(buf: &[u8], max_len: usize) -> Result<Option<usize>, ProtocolError> {
    Ok(peek_header(buf, max_len)?.and_then(|(_, total)| (buf.len() >= total).then_some(total)))
}

/// Splits the next complete frame off the front of `buf`, `Ok(None)` when it is not complete
/// yet. Nothing is reserved for the rest: buffers grow as bytes arrive.
pub fn decode_frame(buf: &mut BytesMut, max_len: usize) -> Result<Option<Frame>, ProtocolError> {
    Ok(frame_len(buf, max_len)?.map(|total| Frame { raw: buf.split_to(total).freeze() }))
}

/// Most bytes one read asks for.
pub const READ_CHUNK: usize = 64 * 1024;

/// Makes room for the next read into `buf`, whose front is the start of a frame (or empty):
/// what the partial frame still lacks, at least 8 KiB and at most [`READ_CHUNK`]. The room
/// follows the bytes that arrived, never the length a peer declared.
pub fn reserve_for_partial(buf: &mut BytesMut) {
    const MIN_READ: usize = 8 * 1024;
    let wanted = match buf.get(1..5) {
        Some(l) => (u32::from_be_bytes([l[0], l[1], l[2], l[3]]) as usize + 1).saturating_sub(buf.len()),
        None => 0,
    };
    reserve_read(buf, wanted.clamp(MIN_READ, READ_CHUNK));
}

/// Makes sure `buf` has room for a read of `wanted` bytes.
pub fn reserve_read(buf: &mut BytesMut, wanted: usize) {
    if buf.capacity() - buf.len() < wanted {
        buf.reserve(wanted);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_frames_get_room_bounded_by_their_length() {
        let mut buf = BytesMut::from(&b"D\0\x01\0\0abc"[..]);
        reserve_for_partial(&mut buf);
        assert!(buf.capacity() >= READ_CHUNK);
        let mut huge = BytesMut::from(&b"Q\x7f\xff\xff\xff"[..]);
        reserve_for_partial(&mut huge);
        assert!(huge.capacity() <= 2 * READ_CHUNK, "room follows arrivals, not the declared length");
    }

    #[test]
    fn splits_complete_frames_and_waits_for_partial_ones() {
        let mut buf = BytesMut::from(&b"Q\0\0\0\x09abcd\0Z\0\0"[..]);
        let frame = decode_frame(&mut buf, 1024).unwrap().unwrap();
        assert_eq!(frame.tag(), b'Q');
        assert_eq!(frame.body(), b"abcd\0");
        assert_eq!(frame.raw().len(), 10);
        assert_eq!(decode_frame(&mut buf, 1024).unwrap(), None);
        assert_eq!(&buf[..], b"Z\0\0");
        buf.extend_from_slice(b"\0\x05I");
        let frame = decode_frame(&mut buf, 1024).unwrap().unwrap();
        assert_eq!((frame.tag(), frame.body()), (b'Z', &b"I"[..]));
        assert!(buf.is_empty());
    }

    #[test]
    fn a_detached_frame_reuses_the_memory_of_the_one_it_replaces() {
        let mut buf = BytesMut::from(&b"Q\0\0\0\x09abcd\0Q\0\0\0\x09efgh\0"[..]);
        let first = decode_frame(&mut buf, 1024).unwrap().unwrap();
        let second = decode_frame(&mut buf, 1024).unwrap().unwrap();
        let kept = first.detached(None);
        assert_eq!(kept, first);
        let at = kept.raw().as_ptr();
        let replaced = second.detached(Some(kept));
        assert_eq!(replaced, second);
        assert_eq!(replaced.raw().as_ptr(), at, "the old copy's memory is reused");
        // Held elsewhere too: a fresh copy, the other holder's bytes untouched.
        let other = replaced.clone();
        let third = first.detached(Some(replaced));
        assert_eq!((third.body(), other.body()), (&b"abcd\0"[..], &b"efgh\0"[..]));
    }

    #[test]
    fn rejects_lengths_below_four() {
        let mut buf = BytesMut::from(&b"Q\0\0\0\x03"[..]);
        assert_eq!(decode_frame(&mut buf, 1024), Err(ProtocolError::LengthTooSmall(3)));
    }

    #[test]
    fn headers_are_checked_before_the_body_arrives() {
        assert_eq!(peek_header(b"Q\0\0", 1024), Ok(None));
        assert_eq!(peek_header(b"Q\0\0\x01\0", 1024), Ok(Some((b'Q', 257))));
        assert_eq!(peek_header(b"Q\0\0\0\x03", 1024), Err(ProtocolError::LengthTooSmall(3)));
        assert!(peek_header(b"Q\xff\xff\xff\xff", 1024).is_err());
    }

    #[test]
    fn an_incomplete_frame_reserves_nothing() {
        let mut buf = BytesMut::from(&b"Q\x3f\xff\xff\xffabc"[..]);
        let before = buf.capacity();
        assert_eq!(decode_frame(&mut buf, usize::MAX), Ok(None));
        assert_eq!(buf.capacity(), before);
    }

    #[test]
    fn rejects_lengths_above_the_limit_without_reserving() {
        let mut buf = BytesMut::from(&b"Q\x7f\xff\xff\xff"[..]);
        let before = buf.capacity();
        let err = decode_frame(&mut buf, 1 << 20).unwrap_err();
        assert!(matches!(err, ProtocolError::LengthTooLarge { len: 0x7fff_ffff, .. }));
        assert_eq!(buf.capacity(), before);
    }

    #[test]
    fn a_frame_exactly_at_the_limit_is_accepted() {
        let mut buf = BytesMut::from(&b"d\0\0\0\x08abcd"[..]);
        assert!(decode_frame(&mut buf, 8).unwrap().is_some());
        let mut buf = BytesMut::from(&b"d\0\0\0\x09abcde"[..]);
        assert!(decode_frame(&mut buf, 8).is_err());
    }
}

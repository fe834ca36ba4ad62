//! Framing of typed messages: one tag byte, a 4-byte big-endian length (counting itself), a body.

use bytes::{Buf, Bytes, BytesMut};

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
}

/// Length of the next complete frame at the start of `buf`, `None` if more bytes are needed.
///
/// The declared length is checked against `max_len` before anything is reserved, so a peer
/// cannot make pgvane allocate what it claims.
pub fn frame_len(buf: &[u8], max_len: usize) -> Result<Option<usize>, ProtocolError> {
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
    let total = declared + 1;
    Ok((buf.len() >= total).then_some(total))
}

/// Splits the next complete frame off the front of `buf`.
///
/// Returns `Ok(None)` when the frame is not complete yet; in that case `buf` is left as it was
/// but has room reserved for the rest of the frame.
pub fn decode_frame(buf: &mut BytesMut, max_len: usize) -> Result<Option<Frame>, ProtocolError> {
    match frame_len(buf, max_len)? {
        Some(total) => Ok(Some(Frame { raw: buf.split_to(total).freeze() })),
        None => {
            if buf.len() >= Frame::HEADER_LEN {
                let declared = (&buf[1..5]).get_u32() as usize;
                buf.reserve(declared + 1 - buf.len());
            }
            Ok(None)
        }
    }
}

/// Makes sure a read can make progress on the partial frame at the front of `buf`.
pub fn reserve_for_partial(buf: &mut BytesMut) {
    const MIN_READ: usize = 8 * 1024;
    let wanted = match buf.get(1..5) {
        Some(l) => (u32::from_be_bytes([l[0], l[1], l[2], l[3]]) as usize + 1).saturating_sub(buf.len()),
        None => 0,
    };
    // Bounded: the frame length was already checked when decoding (or will be, before use).
    let wanted = wanted.clamp(MIN_READ, 64 * 1024 * 1024);
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
        assert!(buf.capacity() >= 0x1_0001);
        let mut huge = BytesMut::from(&b"Q\x7f\xff\xff\xff"[..]);
        reserve_for_partial(&mut huge);
        assert!(huge.capacity() <= 64 * 1024 * 1024 + 1024);
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
    fn rejects_lengths_below_four() {
        let mut buf = BytesMut::from(&b"Q\0\0\0\x03"[..]);
        assert_eq!(decode_frame(&mut buf, 1024), Err(ProtocolError::LengthTooSmall(3)));
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

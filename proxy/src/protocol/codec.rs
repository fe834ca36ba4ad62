//! The building blocks of every message codec: a checked reader over a body, and an
//! encoder that writes the length after the body.

use bytes::{BufMut, BytesMut};

use super::ProtocolError;

/// Appends one message: tag, length (written afterwards), body.
pub(super) fn put_message(dst: &mut BytesMut, tag: u8, body: impl FnOnce(&mut BytesMut)) {
    dst.put_u8(tag);
    let len_at = dst.len();
    dst.put_u32(0);
    body(dst);
    let len = (dst.len() - len_at) as u32;
    dst[len_at..len_at + 4].copy_from_slice(&len.to_be_bytes());
}

pub(super) fn put_cstr(dst: &mut BytesMut, s: &str) {
    put_cstr_bytes(dst, s.as_bytes());
}

/// A string in whatever encoding the client uses (SQL text), NUL-terminated.
pub(super) fn put_cstr_bytes(dst: &mut BytesMut, s: &[u8]) {
    dst.put_slice(s);
    dst.put_u8(0);
}

/// A cursor over a message body with checked reads.
pub(super) struct Reader<'a> {
    what: &'static str,
    body: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(super) fn new(what: &'static str, body: &'a [u8]) -> Self {
        Reader { what, body }
    }

    pub(super) fn err(&self, detail: &'static str) -> ProtocolError {
        ProtocolError::malformed(self.what, detail)
    }

    pub(super) fn u8(&mut self) -> Result<u8, ProtocolError> {
        let (&b, rest) = self.body.split_first().ok_or(self.err("truncated"))?;
        self.body = rest;
        Ok(b)
    }

    pub(super) fn u32(&mut self) -> Result<u32, ProtocolError> {
        let bytes = self.bytes(4)?;
        Ok(u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
    }

    pub(super) fn bytes(&mut self, n: usize) -> Result<&'a [u8], ProtocolError> {
        if self.body.len() < n {
            return Err(self.err("truncated"));
        }
        let (head, rest) = self.body.split_at(n);
        self.body = rest;
        Ok(head)
    }

    /// A NUL-terminated string that must be UTF-8 (names, parameters, messages).
    pub(super) fn cstr(&mut self) -> Result<&'a str, ProtocolError> {
        let s = self.cstr_bytes()?;
        std::str::from_utf8(s).map_err(|_| self.err("invalid UTF-8"))
    }

    /// A NUL-terminated string in the client's encoding (SQL text): its bytes, undecoded.
    pub(super) fn cstr_bytes(&mut self) -> Result<&'a [u8], ProtocolError> {
        let end = self.body.iter().position(|&b| b == 0).ok_or(self.err("unterminated string"))?;
        let (s, rest) = self.body.split_at(end);
        self.body = rest.get(1..).unwrap_or_default();
        Ok(s)
    }

    pub(super) fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.body)
    }

    pub(super) fn finish(&self) -> Result<(), ProtocolError> {
        if self.body.is_empty() {
            Ok(())
        } else {
            Err(self.err("trailing bytes"))
        }
    }
}

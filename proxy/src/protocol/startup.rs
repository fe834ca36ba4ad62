//! The untyped packets a client sends first: StartupMessage, SSLRequest, GSSENCRequest and
//! CancelRequest (4-byte length, 4-byte code, body).

use bytes::{Buf, BufMut, BytesMut};

use super::{ProtocolError, PROTOCOL_3_0};

/// PostgreSQL's own limit on a startup packet (`MAX_STARTUP_PACKET_LENGTH`).
pub const MAX_STARTUP_PACKET_BYTES: usize = 10_000;

const SSL_REQUEST_CODE: u32 = 80_877_103;
const GSSENC_REQUEST_CODE: u32 = 80_877_104;
const CANCEL_REQUEST_CODE: u32 = 80_877_102;

/// The first packet of a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Startup {
    /// A StartupMessage: protocol version and parameters.
    Startup {
        /// Major version (3 for every client pgvane can serve).
        major: u16,
        /// Minor version requested.
        minor: u16,
        /// Parameters in the order sent.
        params: StartupParams,
    },
    /// The client asks for TLS.
    SslRequest,
    /// The client asks for GSSAPI encryption.
    GssEncRequest,
    /// Cancel the query running under this backend key.
    Cancel {
        /// Process ID from BackendKeyData.
        pid: u32,
        /// Secret key from BackendKeyData.
        secret: u32,
    },
}

/// Startup parameters, in the order the client sent them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StartupParams(Vec<(String, String)>);

impl StartupParams {
    /// Builds from name/value pairs.
    pub fn new(pairs: Vec<(String, String)>) -> Self {
        StartupParams(pairs)
    }

    /// The value of a parameter, if sent.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    /// All parameters in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }
}

/// Decodes the first packet of a connection.
///
/// Lengths outside 8..=[`MAX_STARTUP_PACKET_BYTES`] are refused before anything is reserved.
pub fn decode_startup(buf: &mut BytesMut) -> Result<Option<Startup>, ProtocolError> {
    let Some(header) = buf.get(..4) else {
        return Ok(None);
    };
    let len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize;
    if len < 8 {
        return Err(ProtocolError::LengthTooSmall(len as i64));
    }
    if len > MAX_STARTUP_PACKET_BYTES {
        return Err(ProtocolError::LengthTooLarge { len: len as u64, limit: MAX_STARTUP_PACKET_BYTES as u64 });
    }
    if buf.len() < len {
        buf.reserve(len - buf.len());
        return Ok(None);
    }
    let mut packet = buf.split_to(len);
    packet.advance(4);
    let code = packet.get_u32();
    let startup = match code {
        SSL_REQUEST_CODE if packet.is_empty() => Startup::SslRequest,
        GSSENC_REQUEST_CODE if packet.is_empty() => Startup::GssEncRequest,
        CANCEL_REQUEST_CODE if packet.len() == 8 => Startup::Cancel { pid: packet.get_u32(), secret: packet.get_u32() },
        SSL_REQUEST_CODE | GSSENC_REQUEST_CODE | CANCEL_REQUEST_CODE => {
            return Err(ProtocolError::malformed("startup", "unexpected length for request code"))
        }
        version => Startup::Startup {
            major: (version >> 16) as u16,
            minor: (version & 0xffff) as u16,
            params: parse_params(&packet)?,
        },
    };
    Ok(Some(startup))
}

/// Parameters are `name\0value\0` pairs ended by one more `\0`.
fn parse_params(mut body: &[u8]) -> Result<StartupParams, ProtocolError> {
    let mut pairs = Vec::new();
    loop {
        let name = take_cstr(&mut body)?;
        if name.is_empty() {
            break;
        }
        let value = take_cstr(&mut body)?;
        pairs.push((name, value));
    }
    if !body.is_empty() {
        return Err(ProtocolError::malformed("startup", "data after the parameter list"));
    }
    Ok(StartupParams(pairs))
}

fn take_cstr(body: &mut &[u8]) -> Result<String, ProtocolError> {
    let end = body.iter().position(|&b| b == 0).ok_or(ProtocolError::malformed("startup", "unterminated string"))?;
    let s = std::str::from_utf8(&body[..end])
        .map_err(|_| ProtocolError::malformed("startup", "parameter is not valid UTF-8"))?
        .to_owned();
    *body = &body[end + 1..];
    Ok(s)
}

/// Encodes a protocol 3.0 StartupMessage (what pgvane sends to servers).
pub fn encode_startup<'a>(params: impl IntoIterator<Item = (&'a str, &'a str)>, dst: &mut BytesMut) {
    let start = dst.len();
    dst.put_u32(0);
    dst.put_u32(PROTOCOL_3_0);
    for (name, value) in params {
        put_cstr(dst, name);
        put_cstr(dst, value);
    }
    dst.put_u8(0);
    write_len(dst, start);
}

/// Encodes a CancelRequest (what pgvane sends to a server to cancel a query).
pub fn encode_cancel(pid: u32, secret: u32, dst: &mut BytesMut) {
    dst.put_u32(16);
    dst.put_u32(CANCEL_REQUEST_CODE);
    dst.put_u32(pid);
    dst.put_u32(secret);
}

/// Encodes an SSLRequest (what pgvane sends to a server before TLS).
pub fn encode_ssl_request(dst: &mut BytesMut) {
    dst.put_u32(8);
    dst.put_u32(SSL_REQUEST_CODE);
}

fn put_cstr(dst: &mut BytesMut, s: &str) {
    dst.put_slice(s.as_bytes());
    dst.put_u8(0);
}

fn write_len(dst: &mut BytesMut, start: usize) {
    let len = (dst.len() - start) as u32;
    dst[start..start + 4].copy_from_slice(&len.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn startup_message_round_trips() {
        let mut buf = BytesMut::new();
        encode_startup([("user", "alice"), ("database", "app"), ("options", "-c a=b")], &mut buf);
        let Some(Startup::Startup { major, minor, params }) = decode_startup(&mut buf).unwrap() else {
            panic!("not a startup message");
        };
        assert_eq!((major, minor), (3, 0));
        assert_eq!(params.get("user"), Some("alice"));
        assert_eq!(params.get("options"), Some("-c a=b"));
        assert_eq!(params.iter().count(), 3);
        assert!(buf.is_empty());
    }

    #[test]
    fn ssl_request_round_trips() {
        let mut buf = BytesMut::new();
        encode_ssl_request(&mut buf);
        assert_eq!(decode_startup(&mut buf).unwrap(), Some(Startup::SslRequest));
        assert!(buf.is_empty());
    }

    #[test]
    fn cancel_request_round_trips() {
        let mut buf = BytesMut::new();
        encode_cancel(42, 0xdead_beef, &mut buf);
        assert_eq!(decode_startup(&mut buf).unwrap(), Some(Startup::Cancel { pid: 42, secret: 0xdead_beef }));
    }

    #[test]
    fn ssl_and_gss_requests() {
        let mut buf = BytesMut::from(&[0, 0, 0, 8, 4, 210, 22, 47, 0, 0, 0, 8, 4, 210, 22, 48][..]);
        assert_eq!(decode_startup(&mut buf).unwrap(), Some(Startup::SslRequest));
        assert_eq!(decode_startup(&mut buf).unwrap(), Some(Startup::GssEncRequest));
    }

    #[test]
    fn partial_packets_wait_for_more() {
        let mut full = BytesMut::new();
        encode_startup([("user", "bob")], &mut full);
        let mut buf = BytesMut::from(&full[..7]);
        assert_eq!(decode_startup(&mut buf).unwrap(), None);
        buf.extend_from_slice(&full[7..]);
        assert!(decode_startup(&mut buf).unwrap().is_some());
    }

    #[test]
    fn bad_lengths_are_refused_without_allocation() {
        let mut buf = BytesMut::from(&[0u8, 0, 0, 3][..]);
        assert_eq!(decode_startup(&mut buf), Err(ProtocolError::LengthTooSmall(3)));
        let mut buf = BytesMut::from(&[0x7fu8, 0xff, 0xff, 0xff][..]);
        let cap = buf.capacity();
        assert!(matches!(decode_startup(&mut buf), Err(ProtocolError::LengthTooLarge { .. })));
        assert_eq!(buf.capacity(), cap);
        let mut buf = BytesMut::new();
        buf.put_u32(10_001);
        assert!(decode_startup(&mut buf).is_err());
    }

    #[test]
    fn malformed_parameters_are_refused() {
        let mut buf = BytesMut::new();
        buf.put_u32(4 + 4 + 5);
        buf.put_u32(PROTOCOL_3_0);
        buf.put_slice(b"user\0"); // value missing
        assert!(matches!(decode_startup(&mut buf), Err(ProtocolError::Malformed { .. })));
        let mut buf = BytesMut::new();
        buf.put_u32(12);
        buf.put_u32(CANCEL_REQUEST_CODE);
        buf.put_u32(1);
        assert!(decode_startup(&mut buf).is_err());
    }
}

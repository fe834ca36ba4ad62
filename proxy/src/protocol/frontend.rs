//! Messages a client sends after startup (protocol 3.0), decoded once per frame.
//!
//! [`FrontendMessage::decode`] turns a frame into a typed message borrowing from the frame's
//! bytes; the frame itself is kept to be forwarded unchanged. A type byte the protocol does not
//! define is an error ([`ProtocolError::UnknownMessage`]): nothing unknown reaches a server.
//!
//! The SQL of a Query or Parse stays bytes here: it is in the client's `client_encoding`,
//! which the session knows ([`super::ClientEncoding`] decodes it). Names are UTF-8.

use bytes::{BufMut, BytesMut};

use super::codec::{put_cstr, put_cstr_bytes, put_message, Reader};
use super::messages::tag;
use super::{Frame, ProtocolError};

/// One message from a client after startup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrontendMessage<'a> {
    /// `Q`: a simple query, one or more statements, in the client encoding.
    Query(&'a [u8]),
    /// `P`: prepares a statement.
    Parse(Parse<'a>),
    /// `B`: binds a statement's parameters into a portal.
    Bind(Bind<'a>),
    /// `D`: describes a statement or portal.
    Describe(Target, &'a str),
    /// `E`: runs a portal.
    Execute {
        /// Portal name (empty: the unnamed portal).
        portal: &'a str,
        /// Rows to return at most (0: all).
        max_rows: u32,
    },
    /// `C`: closes a statement or portal.
    Close(Target, &'a str),
    /// `S`: ends an extended-protocol batch.
    Sync,
    /// `H`: asks for the answers so far.
    Flush,
    /// `F`: a fastpath function call.
    FunctionCall {
        /// The function's OID.
        oid: u32,
    },
    /// `d`: COPY data.
    CopyData,
    /// `c`: end of COPY data.
    CopyDone,
    /// `f`: the client aborts a COPY.
    CopyFail,
    /// `X`: the client leaves.
    Terminate,
    /// `p`: PasswordMessage, SASLInitialResponse or SASLResponse; which one depends on the
    /// authentication exchange in progress, so the body is left to it.
    Password(&'a [u8]),
}

impl<'a> FrontendMessage<'a> {
    /// Decodes a client frame. Unknown type bytes and bodies that do not parse are errors.
    pub fn decode(frame: &'a Frame) -> Result<Self, ProtocolError> {
        let body = frame.body();
        Ok(match frame.tag() {
            tag::QUERY => {
                let mut r = Reader::new("Query", body);
                let sql = r.cstr_bytes()?;
                r.finish()?;
                FrontendMessage::Query(sql)
            }
            tag::PARSE => FrontendMessage::Parse(Parse::decode(body)?),
            tag::BIND => FrontendMessage::Bind(Bind::decode(body)?),
            tag::DESCRIBE => {
                let (target, name) = target_and_name("Describe", body)?;
                FrontendMessage::Describe(target, name)
            }
            tag::CLOSE => {
                let (target, name) = target_and_name("Close", body)?;
                FrontendMessage::Close(target, name)
            }
            tag::EXECUTE => {
                let mut r = Reader::new("Execute", body);
                let portal = r.cstr()?;
                let max_rows = r.u32()?;
                r.finish()?;
                FrontendMessage::Execute { portal, max_rows }
            }
            tag::SYNC => empty("Sync", body, FrontendMessage::Sync)?,
            tag::FLUSH => empty("Flush", body, FrontendMessage::Flush)?,
            tag::FUNCTION_CALL => {
                let mut r = Reader::new("FunctionCall", body);
                FrontendMessage::FunctionCall { oid: r.u32()? }
            }
            tag::COPY_DATA => FrontendMessage::CopyData,
            tag::COPY_DONE => empty("CopyDone", body, FrontendMessage::CopyDone)?,
            tag::COPY_FAIL => FrontendMessage::CopyFail,
            tag::TERMINATE => empty("Terminate", body, FrontendMessage::Terminate)?,
            tag::PASSWORD => FrontendMessage::Password(body),
            other => return Err(ProtocolError::UnknownMessage(other)),
        })
    }
}

fn empty<'a>(
    what: &'static str,
    body: &[u8],
    message: FrontendMessage<'a>,
) -> Result<FrontendMessage<'a>, ProtocolError> {
    Reader::new(what, body).finish()?;
    Ok(message)
}

/// A Parse message: statement name, query text and the raw parameter-type list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parse<'a> {
    /// Statement name (empty: the unnamed statement).
    pub name: &'a str,
    /// SQL text, in the client encoding.
    pub query: &'a [u8],
    /// The parameter count and OIDs exactly as sent (int16 count, int32 each).
    pub param_types: &'a [u8],
}

impl<'a> Parse<'a> {
    /// Decodes a Parse body.
    pub fn decode(body: &'a [u8]) -> Result<Self, ProtocolError> {
        let mut r = Reader::new("Parse", body);
        let name = r.cstr()?;
        let query = r.cstr_bytes()?;
        let param_types = r.rest();
        let count = param_types.get(..2).map(|c| u16::from_be_bytes([c[0], c[1]]) as usize);
        if count.map(|n| 2 + 4 * n) != Some(param_types.len()) {
            return Err(ProtocolError::malformed("Parse", "parameter type list does not match its count"));
        }
        Ok(Parse { name, query, param_types })
    }

    /// Appends it as a Parse message.
    pub fn encode(&self, dst: &mut BytesMut) {
        put_message(dst, tag::PARSE, |dst| {
            put_cstr(dst, self.name);
            put_cstr_bytes(dst, self.query);
            dst.put_slice(self.param_types);
        });
    }
}

/// A Bind message: the portal, the statement, and the rest (formats and values) as sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bind<'a> {
    /// Portal name (empty: the unnamed portal).
    pub portal: &'a str,
    /// Statement name (empty: the unnamed statement).
    pub statement: &'a str,
    /// Parameter formats, values and result formats, exactly as sent.
    pub rest: &'a [u8],
}

impl<'a> Bind<'a> {
    /// Decodes a Bind body (the names; the rest is the server's to check).
    pub fn decode(body: &'a [u8]) -> Result<Self, ProtocolError> {
        let mut r = Reader::new("Bind", body);
        let portal = r.cstr()?;
        let statement = r.cstr()?;
        Ok(Bind { portal, statement, rest: r.rest() })
    }

    /// Appends it as a Bind message naming `statement` instead of its own.
    pub fn encode_renamed(&self, statement: &str, dst: &mut BytesMut) {
        put_message(dst, tag::BIND, |dst| {
            put_cstr(dst, self.portal);
            put_cstr(dst, statement);
            dst.put_slice(self.rest);
        });
    }
}

/// What a Describe or Close message targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// A prepared statement (`S`).
    Statement,
    /// A portal (`P`).
    Portal,
}

fn target_and_name<'a>(what: &'static str, body: &'a [u8]) -> Result<(Target, &'a str), ProtocolError> {
    let mut r = Reader::new(what, body);
    let target = match r.u8()? {
        b'S' => Target::Statement,
        b'P' => Target::Portal,
        _ => return Err(r.err("target must be S or P")),
    };
    let name = r.cstr()?;
    r.finish()?;
    Ok((target, name))
}

/// Encodes a Describe (`tag::DESCRIBE`) or Close (`tag::CLOSE`) message.
pub fn encode_describe_or_close(message_tag: u8, target: Target, name: &str, dst: &mut BytesMut) {
    put_message(dst, message_tag, |dst| {
        dst.put_u8(match target {
            Target::Statement => b'S',
            Target::Portal => b'P',
        });
        put_cstr(dst, name);
    });
}

#[cfg(test)]
mod tests {
    use super::super::decode_frame;
    use super::super::messages::{encode_query, encode_sync};
    use super::*;

    fn decoded(encode: impl FnOnce(&mut BytesMut)) -> Frame {
        let mut buf = BytesMut::new();
        encode(&mut buf);
        let frame = decode_frame(&mut buf, 1 << 20).unwrap().unwrap();
        assert!(buf.is_empty(), "encoder wrote a wrong length");
        frame
    }

    fn raw(tag: u8, body: &[u8]) -> Frame {
        decoded(|b| put_message(b, tag, |b| b.put_slice(body)))
    }

    #[test]
    fn queries_parses_and_binds_round_trip() {
        let f = decoded(|b| encode_query("select 1", b));
        assert_eq!(FrontendMessage::decode(&f).unwrap(), FrontendMessage::Query(b"select 1"));
        // SQL in another client encoding (LATIN9 here) stays bytes.
        let f = decoded(|b| encode_query(b"select '\xe9\xa4'", b));
        assert_eq!(FrontendMessage::decode(&f).unwrap(), FrontendMessage::Query(b"select '\xe9\xa4'"));

        let types = [0u8, 1, 0, 0, 0, 23];
        let parse = Parse { name: "s1", query: b"select $1", param_types: &types };
        let f = decoded(|b| parse.encode(b));
        assert_eq!(FrontendMessage::decode(&f).unwrap(), FrontendMessage::Parse(parse));

        let f = raw(tag::BIND, b"p\0s1\0\0\0\0\x01\0\0\0\x011\0\0");
        let FrontendMessage::Bind(bind) = FrontendMessage::decode(&f).unwrap() else { panic!("not a Bind") };
        assert_eq!((bind.portal, bind.statement), ("p", "s1"));
        let renamed = decoded(|b| bind.encode_renamed("pgvane_x", b));
        let FrontendMessage::Bind(again) = FrontendMessage::decode(&renamed).unwrap() else { panic!("not a Bind") };
        assert_eq!((again.portal, again.statement, again.rest), ("p", "pgvane_x", bind.rest));
    }

    #[test]
    fn describe_close_execute_and_empty_messages_decode() {
        let f = decoded(|b| encode_describe_or_close(tag::DESCRIBE, Target::Portal, "p", b));
        assert_eq!(FrontendMessage::decode(&f).unwrap(), FrontendMessage::Describe(Target::Portal, "p"));
        let f = decoded(|b| encode_describe_or_close(tag::CLOSE, Target::Statement, "s", b));
        assert_eq!(FrontendMessage::decode(&f).unwrap(), FrontendMessage::Close(Target::Statement, "s"));
        let f = raw(tag::EXECUTE, b"p\0\0\0\0\x05");
        assert_eq!(FrontendMessage::decode(&f).unwrap(), FrontendMessage::Execute { portal: "p", max_rows: 5 });
        assert_eq!(FrontendMessage::decode(&decoded(encode_sync)).unwrap(), FrontendMessage::Sync);
        assert_eq!(FrontendMessage::decode(&raw(tag::FLUSH, b"")).unwrap(), FrontendMessage::Flush);
        assert_eq!(FrontendMessage::decode(&raw(tag::TERMINATE, b"")).unwrap(), FrontendMessage::Terminate);
        assert_eq!(FrontendMessage::decode(&raw(tag::COPY_DONE, b"")).unwrap(), FrontendMessage::CopyDone);
        assert_eq!(FrontendMessage::decode(&raw(tag::COPY_DATA, b"1\t2\n")).unwrap(), FrontendMessage::CopyData);
        assert_eq!(
            FrontendMessage::decode(&raw(tag::FUNCTION_CALL, b"\0\0\x03\xe8\0\0")).unwrap(),
            FrontendMessage::FunctionCall { oid: 1000 }
        );
        assert_eq!(FrontendMessage::decode(&raw(tag::PASSWORD, b"pw\0")).unwrap(), FrontendMessage::Password(b"pw\0"));
    }

    #[test]
    fn unknown_and_malformed_messages_are_errors() {
        assert_eq!(FrontendMessage::decode(&raw(b'z', b"")), Err(ProtocolError::UnknownMessage(b'z')));
        assert_eq!(FrontendMessage::decode(&raw(0, b"")), Err(ProtocolError::UnknownMessage(0)));
        for (t, body) in [
            (tag::QUERY, &b"select 1"[..]),       // no terminator
            (tag::QUERY, b"select 1\0x"),         // trailing bytes
            (tag::PARSE, b"s\0select 1\0\0\x01"), // type count says 1, no type
            (tag::BIND, b"p\0"),                  // no statement name
            (tag::DESCRIBE, b"X\0"),              // bad target
            (tag::CLOSE, b"S"),                   // no name
            (tag::EXECUTE, b"p\0\0\0"),           // short row count
            (tag::SYNC, b"x"),                    // Sync has no body
            (tag::FUNCTION_CALL, b"\0\0"),        // short OID
            (tag::BIND, b"\xff\0s\0"),            // a name that is not UTF-8
        ] {
            assert!(
                matches!(FrontendMessage::decode(&raw(t, body)), Err(ProtocolError::Malformed { .. })),
                "{} {body:?} must not decode",
                t as char
            );
        }
    }
}

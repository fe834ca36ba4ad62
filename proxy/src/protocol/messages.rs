//! Typed messages pgvane creates or inspects. Each has an encoder that appends to a buffer and a
//! parser that reads a frame body; every pair round-trips (see the tests).

use bytes::{BufMut, BytesMut};

use super::codec::{put_cstr, put_cstr_bytes, put_message, Reader};
use super::ProtocolError;

pub use super::startup::{encode_cancel, encode_ssl_request, encode_startup};

/// Message tags pgvane acts on. Anything else is forwarded untouched.
pub mod tag {
    /// Authentication request (backend).
    pub const AUTHENTICATION: u8 = b'R';
    /// BackendKeyData (backend).
    pub const BACKEND_KEY_DATA: u8 = b'K';
    /// ErrorResponse (backend).
    pub const ERROR_RESPONSE: u8 = b'E';
    /// NoticeResponse (backend).
    pub const NOTICE_RESPONSE: u8 = b'N';
    /// ParameterStatus (backend).
    pub const PARAMETER_STATUS: u8 = b'S';
    /// ReadyForQuery (backend).
    pub const READY_FOR_QUERY: u8 = b'Z';
    /// NegotiateProtocolVersion (backend).
    pub const NEGOTIATE_PROTOCOL_VERSION: u8 = b'v';
    /// CommandComplete (backend).
    pub const COMMAND_COMPLETE: u8 = b'C';
    /// CopyInResponse (backend).
    pub const COPY_IN_RESPONSE: u8 = b'G';
    /// CopyOutResponse (backend).
    pub const COPY_OUT_RESPONSE: u8 = b'H';
    /// CopyBothResponse (backend).
    pub const COPY_BOTH_RESPONSE: u8 = b'W';
    /// DataRow (backend).
    pub const DATA_ROW: u8 = b'D';
    /// ParseComplete (backend).
    pub const PARSE_COMPLETE: u8 = b'1';
    /// BindComplete (backend).
    pub const BIND_COMPLETE: u8 = b'2';
    /// CloseComplete (backend).
    pub const CLOSE_COMPLETE: u8 = b'3';
    /// NotificationResponse (backend).
    pub const NOTIFICATION_RESPONSE: u8 = b'A';
    /// ParameterDescription (backend).
    pub const PARAMETER_DESCRIPTION: u8 = b't';
    /// RowDescription (backend).
    pub const ROW_DESCRIPTION: u8 = b'T';
    /// NoData (backend).
    pub const NO_DATA: u8 = b'n';
    /// EmptyQueryResponse (backend).
    pub const EMPTY_QUERY_RESPONSE: u8 = b'I';
    /// PortalSuspended (backend).
    pub const PORTAL_SUSPENDED: u8 = b's';
    /// Query (frontend).
    pub const QUERY: u8 = b'Q';
    /// Parse (frontend).
    pub const PARSE: u8 = b'P';
    /// Bind (frontend).
    pub const BIND: u8 = b'B';
    /// Describe (frontend). Shares its byte with DataRow; direction tells them apart.
    pub const DESCRIBE: u8 = b'D';
    /// Execute (frontend).
    pub const EXECUTE: u8 = b'E';
    /// Close (frontend). Shares its byte with CommandComplete.
    pub const CLOSE: u8 = b'C';
    /// Flush (frontend).
    pub const FLUSH: u8 = b'H';
    /// CopyData (both directions).
    pub const COPY_DATA: u8 = b'd';
    /// CopyDone (both directions).
    pub const COPY_DONE: u8 = b'c';
    /// CopyFail (frontend).
    pub const COPY_FAIL: u8 = b'f';
    /// Sync (frontend). Shares its byte with ParameterStatus; direction tells them apart.
    pub const SYNC: u8 = b'S';
    /// FunctionCall (frontend).
    pub const FUNCTION_CALL: u8 = b'F';
    /// Terminate (frontend).
    pub const TERMINATE: u8 = b'X';
    /// PasswordMessage, SASLInitialResponse and SASLResponse (frontend).
    pub const PASSWORD: u8 = b'p';
}

/// The Authentication message family (tag `R`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Authentication {
    /// Authentication succeeded.
    Ok,
    /// Send the password in clear text.
    CleartextPassword,
    /// Send an MD5 hash salted with these bytes.
    Md5Password {
        /// The salt.
        salt: [u8; 4],
    },
    /// Start SASL with one of these mechanisms.
    Sasl {
        /// Mechanism names, e.g. `SCRAM-SHA-256`.
        mechanisms: Vec<String>,
    },
    /// A SASL challenge.
    SaslContinue(Vec<u8>),
    /// The SASL outcome data.
    SaslFinal(Vec<u8>),
    /// A method pgvane does not implement (Kerberos, GSS, SSPI), by its code.
    Unsupported(u32),
}

impl Authentication {
    /// Appends the message.
    pub fn encode(&self, dst: &mut BytesMut) {
        put_message(dst, tag::AUTHENTICATION, |dst| match self {
            Authentication::Ok => dst.put_u32(0),
            Authentication::CleartextPassword => dst.put_u32(3),
            Authentication::Md5Password { salt } => {
                dst.put_u32(5);
                dst.put_slice(salt);
            }
            Authentication::Sasl { mechanisms } => {
                dst.put_u32(10);
                for m in mechanisms {
                    put_cstr(dst, m);
                }
                dst.put_u8(0);
            }
            Authentication::SaslContinue(data) => {
                dst.put_u32(11);
                dst.put_slice(data);
            }
            Authentication::SaslFinal(data) => {
                dst.put_u32(12);
                dst.put_slice(data);
            }
            Authentication::Unsupported(code) => dst.put_u32(*code),
        });
    }

    /// Parses the body of an `R` message.
    pub fn parse(body: &[u8]) -> Result<Self, ProtocolError> {
        let mut r = Reader::new("Authentication", body);
        let auth = match r.u32()? {
            0 => Authentication::Ok,
            3 => Authentication::CleartextPassword,
            5 => {
                let s = r.bytes(4)?;
                Authentication::Md5Password { salt: [s[0], s[1], s[2], s[3]] }
            }
            10 => {
                let mut mechanisms = Vec::new();
                loop {
                    let m = r.cstr()?;
                    if m.is_empty() {
                        break;
                    }
                    mechanisms.push(m.to_owned());
                }
                Authentication::Sasl { mechanisms }
            }
            11 => Authentication::SaslContinue(r.rest().to_vec()),
            12 => Authentication::SaslFinal(r.rest().to_vec()),
            code => {
                r.rest();
                Authentication::Unsupported(code)
            }
        };
        r.finish()?;
        Ok(auth)
    }
}

/// Encodes ParameterStatus (tag `S` from the backend).
pub fn encode_parameter_status(name: &str, value: &str, dst: &mut BytesMut) {
    put_message(dst, tag::PARAMETER_STATUS, |dst| {
        put_cstr(dst, name);
        put_cstr(dst, value);
    });
}

/// Parses a ParameterStatus body into (name, value).
pub fn parse_parameter_status(body: &[u8]) -> Result<(&str, &str), ProtocolError> {
    let mut r = Reader::new("ParameterStatus", body);
    let pair = (r.cstr()?, r.cstr()?);
    r.finish()?;
    Ok(pair)
}

/// Encodes BackendKeyData (tag `K`).
pub fn encode_backend_key_data(pid: u32, secret: u32, dst: &mut BytesMut) {
    put_message(dst, tag::BACKEND_KEY_DATA, |dst| {
        dst.put_u32(pid);
        dst.put_u32(secret);
    });
}

/// Parses a BackendKeyData body into (pid, secret).
pub fn parse_backend_key_data(body: &[u8]) -> Result<(u32, u32), ProtocolError> {
    let mut r = Reader::new("BackendKeyData", body);
    let key = (r.u32()?, r.u32()?);
    r.finish()?;
    Ok(key)
}

/// Transaction status carried by ReadyForQuery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransactionStatus {
    /// `I`: not in a transaction.
    Idle,
    /// `T`: in a transaction block.
    InTransaction,
    /// `E`: in a failed transaction block.
    Failed,
}

impl TransactionStatus {
    fn byte(self) -> u8 {
        match self {
            TransactionStatus::Idle => b'I',
            TransactionStatus::InTransaction => b'T',
            TransactionStatus::Failed => b'E',
        }
    }
}

/// Encodes ReadyForQuery (tag `Z`).
pub fn encode_ready_for_query(status: TransactionStatus, dst: &mut BytesMut) {
    put_message(dst, tag::READY_FOR_QUERY, |dst| dst.put_u8(status.byte()));
}

/// Parses a ReadyForQuery body.
pub fn parse_ready_for_query(body: &[u8]) -> Result<TransactionStatus, ProtocolError> {
    let mut r = Reader::new("ReadyForQuery", body);
    let status = match r.u8()? {
        b'I' => TransactionStatus::Idle,
        b'T' => TransactionStatus::InTransaction,
        b'E' => TransactionStatus::Failed,
        _ => return Err(r.err("unknown transaction status")),
    };
    r.finish()?;
    Ok(status)
}

/// Encodes NegotiateProtocolVersion (tag `v`): the newest minor version pgvane supports and the
/// protocol options (`_pq_.*`) it did not recognise.
pub fn encode_negotiate_protocol_version(newest_minor: u32, unrecognized: &[&str], dst: &mut BytesMut) {
    put_message(dst, tag::NEGOTIATE_PROTOCOL_VERSION, |dst| {
        dst.put_u32(newest_minor);
        dst.put_u32(unrecognized.len() as u32);
        for option in unrecognized {
            put_cstr(dst, option);
        }
    });
}

/// Parses NegotiateProtocolVersion into (newest minor, unrecognised options).
pub fn parse_negotiate_protocol_version(body: &[u8]) -> Result<(u32, Vec<String>), ProtocolError> {
    let mut r = Reader::new("NegotiateProtocolVersion", body);
    let minor = r.u32()?;
    let count = r.u32()?;
    let mut options = Vec::new();
    for _ in 0..count {
        options.push(r.cstr()?.to_owned());
    }
    r.finish()?;
    Ok((minor, options))
}

/// Encodes a simple Query (tag `Q`); `sql` is in the client encoding (pgvane's own SQL is
/// ASCII).
pub fn encode_query(sql: impl AsRef<[u8]>, dst: &mut BytesMut) {
    put_message(dst, tag::QUERY, |dst| put_cstr_bytes(dst, sql.as_ref()));
}

/// Encodes Terminate (tag `X`).
pub fn encode_terminate(dst: &mut BytesMut) {
    put_message(dst, tag::TERMINATE, |_| {});
}

/// Encodes a PasswordMessage (tag `p`) carrying a clear-text password or an MD5 response.
pub fn encode_password(password: &str, dst: &mut BytesMut) {
    put_message(dst, tag::PASSWORD, |dst| put_cstr(dst, password));
}

/// Parses a PasswordMessage body.
pub fn parse_password(body: &[u8]) -> Result<&str, ProtocolError> {
    let mut r = Reader::new("PasswordMessage", body);
    let password = r.cstr()?;
    r.finish()?;
    Ok(password)
}

/// Encodes SASLInitialResponse (tag `p`): mechanism and initial client data.
pub fn encode_sasl_initial_response(mechanism: &str, data: &[u8], dst: &mut BytesMut) {
    put_message(dst, tag::PASSWORD, |dst| {
        put_cstr(dst, mechanism);
        dst.put_u32(data.len() as u32);
        dst.put_slice(data);
    });
}

/// Parses SASLInitialResponse into (mechanism, data). A length of -1 means no data.
pub fn parse_sasl_initial_response(body: &[u8]) -> Result<(&str, &[u8]), ProtocolError> {
    let mut r = Reader::new("SASLInitialResponse", body);
    let mechanism = r.cstr()?;
    let len = r.u32()?;
    let data = if len == u32::MAX { &[][..] } else { r.bytes(len as usize)? };
    r.finish()?;
    Ok((mechanism, data))
}

/// Encodes SASLResponse (tag `p`).
pub fn encode_sasl_response(data: &[u8], dst: &mut BytesMut) {
    put_message(dst, tag::PASSWORD, |dst| dst.put_slice(data));
}

/// Encodes a message with an empty body: ParseComplete, BindComplete, CloseComplete, NoData…
pub fn encode_empty(tag: u8, dst: &mut BytesMut) {
    put_message(dst, tag, |_| {});
}

/// Encodes CommandComplete (tag `C` from the backend).
pub fn encode_command_complete(command_tag: &str, dst: &mut BytesMut) {
    put_message(dst, tag::COMMAND_COMPLETE, |dst| put_cstr(dst, command_tag));
}

/// Parses a CommandComplete body into its command tag.
pub fn parse_command_complete(body: &[u8]) -> Result<&str, ProtocolError> {
    let mut r = Reader::new("CommandComplete", body);
    let command_tag = r.cstr()?;
    r.finish()?;
    Ok(command_tag)
}

/// Encodes Sync (`S` from the frontend).
pub fn encode_sync(dst: &mut BytesMut) {
    put_message(dst, tag::SYNC, |_| {});
}

/// The text values of a DataRow body (`None` for NULL).
pub fn parse_data_row(body: &[u8]) -> Result<Vec<Option<&[u8]>>, ProtocolError> {
    let mut r = Reader::new("DataRow", body);
    let count = r.bytes(2).map(|c| u16::from_be_bytes([c[0], c[1]]))?;
    let mut values = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let len = r.u32()?;
        values.push(if len == u32::MAX { None } else { Some(r.bytes(len as usize)?) });
    }
    r.finish()?;
    Ok(values)
}

/// Encodes a DataRow of text values.
pub fn encode_data_row(values: &[Option<&[u8]>], dst: &mut BytesMut) {
    put_message(dst, tag::DATA_ROW, |dst| {
        dst.put_u16(values.len() as u16);
        for value in values {
            match value {
                Some(v) => {
                    dst.put_u32(v.len() as u32);
                    dst.put_slice(v);
                }
                None => dst.put_u32(u32::MAX),
            }
        }
    });
}

/// Encodes a RowDescription of text columns (type `text`, OID 25).
pub fn encode_text_row_description(columns: &[&str], dst: &mut BytesMut) {
    put_message(dst, tag::ROW_DESCRIPTION, |dst| {
        dst.put_u16(columns.len() as u16);
        for column in columns {
            put_cstr(dst, column);
            dst.put_u32(0); // table OID
            dst.put_u16(0); // column number
            dst.put_u32(25); // type OID: text
            dst.put_i16(-1); // type size
            dst.put_i32(-1); // type modifier
            dst.put_u16(0); // text format
        }
    });
}

/// ErrorResponse and NoticeResponse: a list of (field code, value).
///
/// pgvane builds its own errors with [`ErrorResponse::fatal`] / [`ErrorResponse::error`] and
/// reads servers' errors with [`ErrorResponse::parse`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorResponse {
    fields: Vec<(u8, String)>,
}

impl ErrorResponse {
    fn new(severity: &str, code: &str, message: impl Into<String>) -> Self {
        ErrorResponse {
            fields: vec![
                (b'S', severity.to_owned()),
                (b'V', severity.to_owned()),
                (b'C', code.to_owned()),
                (b'M', message.into()),
            ],
        }
    }

    /// A FATAL error: the connection ends after it.
    pub fn fatal(code: &str, message: impl Into<String>) -> Self {
        Self::new("FATAL", code, message)
    }

    /// A NOTICE (sent with [`ErrorResponse::encode_notice`]).
    pub fn notice(message: impl Into<String>) -> Self {
        Self::new("NOTICE", "00000", message)
    }

    /// An ERROR: the statement fails, the session goes on.
    pub fn error(code: &str, message: impl Into<String>) -> Self {
        Self::new("ERROR", code, message)
    }

    /// Adds a DETAIL line.
    pub fn with_detail(mut self, detail: impl Into<String>) -> Self {
        self.fields.push((b'D', detail.into()));
        self
    }

    /// Adds a HINT line.
    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.fields.push((b'H', hint.into()));
        self
    }

    fn field(&self, code: u8) -> Option<&str> {
        self.fields.iter().find(|(c, _)| *c == code).map(|(_, v)| v.as_str())
    }

    /// The SQLSTATE.
    pub fn code(&self) -> &str {
        self.field(b'C').unwrap_or("XX000")
    }

    /// The primary message.
    pub fn message(&self) -> &str {
        self.field(b'M').unwrap_or("")
    }

    /// The severity (non-localised when the server sent `V`).
    pub fn severity(&self) -> &str {
        self.field(b'V').or_else(|| self.field(b'S')).unwrap_or("ERROR")
    }

    /// Appends it as an ErrorResponse (`E`).
    pub fn encode(&self, dst: &mut BytesMut) {
        self.encode_as(tag::ERROR_RESPONSE, dst);
    }

    /// Appends it as a NoticeResponse (`N`).
    pub fn encode_notice(&self, dst: &mut BytesMut) {
        self.encode_as(tag::NOTICE_RESPONSE, dst);
    }

    fn encode_as(&self, tag: u8, dst: &mut BytesMut) {
        put_message(dst, tag, |dst| {
            for (code, value) in &self.fields {
                dst.put_u8(*code);
                put_cstr(dst, value);
            }
            dst.put_u8(0);
        });
    }

    /// Parses an ErrorResponse or NoticeResponse body. A server writes its messages in the
    /// client's encoding: fields that are not UTF-8 are read with U+FFFD for the bytes that
    /// are not (pgvane only inspects the codes; the frame itself is forwarded as it came).
    pub fn parse(body: &[u8]) -> Result<Self, ProtocolError> {
        let mut r = Reader::new("ErrorResponse", body);
        let mut fields = Vec::new();
        loop {
            let code = r.u8()?;
            if code == 0 {
                break;
            }
            fields.push((code, String::from_utf8_lossy(r.cstr_bytes()?).into_owned()));
        }
        r.finish()?;
        Ok(ErrorResponse { fields })
    }
}

impl std::fmt::Display for ErrorResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {} (SQLSTATE {})", self.severity(), self.message(), self.code())
    }
}

#[cfg(test)]
mod tests {
    use super::super::decode_frame;
    use super::*;

    /// Encodes with `encode`, frames it back and returns (tag, body).
    fn frame(encode: impl FnOnce(&mut BytesMut)) -> (u8, Vec<u8>) {
        let mut buf = BytesMut::new();
        encode(&mut buf);
        let frame = decode_frame(&mut buf, 1 << 20).unwrap().unwrap();
        assert!(buf.is_empty(), "encoder wrote a wrong length");
        (frame.tag(), frame.body().to_vec())
    }

    #[test]
    fn authentication_round_trips() {
        for auth in [
            Authentication::Ok,
            Authentication::CleartextPassword,
            Authentication::Md5Password { salt: [1, 2, 3, 4] },
            Authentication::Sasl { mechanisms: vec!["SCRAM-SHA-256".into(), "SCRAM-SHA-256-PLUS".into()] },
            Authentication::SaslContinue(b"r=abc,s=xyz,i=4096".to_vec()),
            Authentication::SaslFinal(b"v=sig".to_vec()),
            Authentication::Unsupported(7),
        ] {
            let (t, body) = frame(|b| auth.encode(b));
            assert_eq!(t, b'R');
            assert_eq!(Authentication::parse(&body).unwrap(), auth);
        }
    }

    #[test]
    fn parameter_status_round_trips() {
        let (t, body) = frame(|b| encode_parameter_status("TimeZone", "UTC", b));
        assert_eq!(t, b'S');
        assert_eq!(parse_parameter_status(&body).unwrap(), ("TimeZone", "UTC"));
    }

    #[test]
    fn backend_key_data_round_trips() {
        let (t, body) = frame(|b| encode_backend_key_data(7, u32::MAX, b));
        assert_eq!(t, b'K');
        assert_eq!(parse_backend_key_data(&body).unwrap(), (7, u32::MAX));
    }

    #[test]
    fn ready_for_query_round_trips() {
        for status in [TransactionStatus::Idle, TransactionStatus::InTransaction, TransactionStatus::Failed] {
            let (t, body) = frame(|b| encode_ready_for_query(status, b));
            assert_eq!(t, b'Z');
            assert_eq!(parse_ready_for_query(&body).unwrap(), status);
        }
        assert!(parse_ready_for_query(b"X").is_err());
    }

    #[test]
    fn negotiate_protocol_version_round_trips() {
        let (t, body) = frame(|b| encode_negotiate_protocol_version(0, &["_pq_.foo", "_pq_.bar"], b));
        assert_eq!(t, b'v');
        assert_eq!(
            parse_negotiate_protocol_version(&body).unwrap(),
            (0, vec!["_pq_.foo".to_owned(), "_pq_.bar".to_owned()])
        );
    }

    #[test]
    fn password_and_terminate_round_trip() {
        let (t, body) = frame(|b| encode_password("md5abc", b));
        assert_eq!((t, parse_password(&body).unwrap()), (b'p', "md5abc"));
        let (t, body) = frame(encode_terminate);
        assert_eq!((t, body.len()), (b'X', 0));
    }

    #[test]
    fn sasl_messages_round_trip() {
        let (t, body) = frame(|b| encode_sasl_initial_response("SCRAM-SHA-256", b"n,,n=,r=abc", b));
        assert_eq!(t, b'p');
        assert_eq!(parse_sasl_initial_response(&body).unwrap(), ("SCRAM-SHA-256", &b"n,,n=,r=abc"[..]));
        let (t, body) = frame(|b| encode_sasl_response(b"c=biws,r=abc,p=xyz", b));
        assert_eq!((t, &body[..]), (b'p', &b"c=biws,r=abc,p=xyz"[..]));
        // A length longer than the body is an error, not a panic.
        assert!(parse_sasl_initial_response(b"SCRAM-SHA-256\0\0\0\0\x10abc").is_err());
    }

    #[test]
    fn empty_and_command_complete_round_trip() {
        let (t, body) = frame(|b| encode_empty(tag::PARSE_COMPLETE, b));
        assert_eq!((t, body.len()), (b'1', 0));
        let (t, body) = frame(|b| encode_command_complete("SELECT 3", b));
        assert_eq!((t, parse_command_complete(&body).unwrap()), (b'C', "SELECT 3"));
        let (t, body) = frame(encode_sync);
        assert_eq!((t, body.len()), (b'S', 0));
    }

    #[test]
    fn data_row_round_trips() {
        let values: Vec<Option<&[u8]>> = vec![Some(b"a"), None, Some(b"")];
        let (t, body) = frame(|b| encode_data_row(&values, b));
        assert_eq!(t, b'D');
        assert_eq!(parse_data_row(&body).unwrap(), values);
        let (t, _) = frame(|b| encode_text_row_description(&["a", "b"], b));
        assert_eq!(t, b'T');
    }

    #[test]
    fn error_response_round_trips() {
        let err = ErrorResponse::fatal("28P01", "password authentication failed for user \"x\"")
            .with_detail("d")
            .with_hint("h");
        let (t, body) = frame(|b| err.encode(b));
        assert_eq!(t, b'E');
        let parsed = ErrorResponse::parse(&body).unwrap();
        assert_eq!(parsed, err);
        assert_eq!((parsed.code(), parsed.severity()), ("28P01", "FATAL"));
        let (t, _) = frame(|b| err.encode_notice(b));
        assert_eq!(t, b'N');
        assert!(ErrorResponse::parse(b"Cabc").is_err());
        // A message in another client encoding (LATIN9 here) still parses.
        let latin9 = ErrorResponse::parse(b"SERROR\0C42703\0Mcolumn \"\xe9\" does not exist\0\0").unwrap();
        assert_eq!((latin9.code(), latin9.message()), ("42703", "column \"\u{fffd}\" does not exist"));
    }
}

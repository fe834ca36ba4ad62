#![no_main]
//! Backend messages as pgvane reads them: `protocol::BackendMessage::decode` during a session,
//! and the startup replies it reads as a client of PostgreSQL (Authentication,
//! BackendKeyData, NegotiateProtocolVersion, ErrorResponse/NoticeResponse).
//!
//! Input: the type byte, then the body (framed by the target). Property: every message that
//! decodes re-encodes to the same bytes with pgvane's encoders.

use bytes::{BufMut, BytesMut};
use libfuzzer_sys::fuzz_target;
use pgvane::protocol::messages::{
    encode_backend_key_data, encode_command_complete, encode_data_row, encode_negotiate_protocol_version,
    encode_parameter_status, encode_ready_for_query, parse_backend_key_data, parse_negotiate_protocol_version, tag,
    Authentication, ErrorResponse,
};
use pgvane::protocol::{decode_frame, BackendMessage};

fuzz_target!(|data: &[u8]| {
    let [message_tag, body @ ..] = data else { return };
    let mut buf = BytesMut::with_capacity(data.len() + 4);
    buf.put_u8(*message_tag);
    buf.put_u32(body.len() as u32 + 4);
    buf.put_slice(body);
    let frame = decode_frame(&mut buf, 1 << 20).expect("a well-framed message").expect("a whole frame");
    let raw = &frame.raw()[..];
    let round_trip = |what: &str, encode: &dyn Fn(&mut BytesMut)| {
        let mut out = BytesMut::new();
        encode(&mut out);
        assert_eq!(&out[..], raw, "{what} round trip");
    };

    match BackendMessage::decode(&frame) {
        Ok(BackendMessage::ParameterStatus { name, value }) => {
            round_trip("ParameterStatus", &|out| encode_parameter_status(name, value, out))
        }
        Ok(BackendMessage::ReadyForQuery(status)) => {
            round_trip("ReadyForQuery", &|out| encode_ready_for_query(status, out))
        }
        Ok(BackendMessage::CommandComplete(command_tag)) => {
            round_trip("CommandComplete", &|out| encode_command_complete(command_tag, out))
        }
        Ok(BackendMessage::ErrorResponse(error)) => {
            let _ = (error.code(), error.message(), error.severity(), error.to_string());
            error_round_trip("ErrorResponse", &error, body, &|error, out| error.encode(out))
        }
        Ok(message @ BackendMessage::DataRow(_)) => {
            if let Ok(values) = message.row_values() {
                round_trip("DataRow", &|out| encode_data_row(&values, out))
            }
        }
        Ok(message @ BackendMessage::Other(t)) => {
            assert_eq!(t, *message_tag);
            assert_eq!(message.row_values(), Ok(Vec::new()));
        }
        Err(_) => {}
    }

    // What pgvane reads while logging in to a server.
    match *message_tag {
        tag::AUTHENTICATION => {
            if let Ok(auth) = Authentication::parse(body) {
                let mut out = BytesMut::new();
                auth.encode(&mut out);
                match auth {
                    // Unknown methods keep only their code.
                    Authentication::Unsupported(code) => {
                        assert!(![0, 3, 5, 10, 11, 12].contains(&code));
                        assert_eq!(&out[5..9], &body[..4]);
                    }
                    _ => assert_eq!(&out[..], raw, "Authentication round trip"),
                }
            }
        }
        tag::BACKEND_KEY_DATA => {
            if let Ok((pid, secret)) = parse_backend_key_data(body) {
                round_trip("BackendKeyData", &|out| encode_backend_key_data(pid, secret, out))
            }
        }
        tag::NEGOTIATE_PROTOCOL_VERSION => {
            if let Ok((minor, options)) = parse_negotiate_protocol_version(body) {
                let options: Vec<&str> = options.iter().map(String::as_str).collect();
                round_trip("NegotiateProtocolVersion", &|out| encode_negotiate_protocol_version(minor, &options, out))
            }
        }
        tag::NOTICE_RESPONSE => {
            if let Ok(notice) = ErrorResponse::parse(body) {
                error_round_trip("NoticeResponse", &notice, body, &|notice, out| notice.encode_notice(out))
            }
        }
        _ => {}
    }
});

/// Error and notice fields are read as UTF-8 with U+FFFD for bytes that are not (a server
/// writes them in the client's encoding; pgvane forwards the frame itself unchanged). So a body
/// whose values are UTF-8 re-encodes to the same bytes, and any other body re-encodes to one that parses
/// back to the same fields.
fn error_round_trip(what: &str, error: &ErrorResponse, body: &[u8], encode: &dyn Fn(&ErrorResponse, &mut BytesMut)) {
    let mut out = BytesMut::new();
    encode(error, &mut out);
    if values_are_utf8(body) {
        assert_eq!(&out[5..], body, "{what} round trip");
    } else {
        let again = ErrorResponse::parse(&out[5..]).expect("pgvane's own encoding parses");
        assert_eq!(&again, error, "{what} lossy round trip");
    }
}

/// Whether every field value of a well-formed error body (code byte, NUL-terminated value, …,
/// NUL) is UTF-8 on its own.
fn values_are_utf8(body: &[u8]) -> bool {
    let mut rest = body;
    while let [code, values @ ..] = rest {
        if *code == 0 {
            break;
        }
        let Some(end) = values.iter().position(|b| *b == 0) else { return false };
        if std::str::from_utf8(&values[..end]).is_err() {
            return false;
        }
        rest = &values[end + 1..];
    }
    true
}

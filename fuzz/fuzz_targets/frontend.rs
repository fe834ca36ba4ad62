#![no_main]
//! Frontend messages (`protocol::FrontendMessage::decode`), and the bodies of `p` messages
//! (PasswordMessage, SASLInitialResponse, SASLResponse) as the authentication exchange reads
//! them.
//!
//! Input: the type byte, then the body; the target frames it (so every input is one whole
//! frame). Property: every message pgvane decodes and can re-encode (Query, Parse, Bind,
//! Describe, Close, the empty ones, the `p` family) comes back byte for byte.

use bytes::{BufMut, BytesMut};
use libfuzzer_sys::fuzz_target;
use pgvane::protocol::messages::{
    encode_empty, encode_password, encode_query, encode_sasl_initial_response, encode_sasl_response, parse_password,
    parse_sasl_initial_response, tag,
};
use pgvane::protocol::{decode_frame, encode_describe_or_close, FrontendMessage};

fuzz_target!(|data: &[u8]| {
    let [message_tag, body @ ..] = data else { return };
    let mut buf = BytesMut::with_capacity(data.len() + 4);
    buf.put_u8(*message_tag);
    buf.put_u32(body.len() as u32 + 4);
    buf.put_slice(body);
    let frame = decode_frame(&mut buf, 1 << 20).expect("a well-framed message").expect("a whole frame");
    assert!(buf.is_empty());
    let raw = &frame.raw()[..];

    let mut again = BytesMut::new();
    match FrontendMessage::decode(&frame) {
        Ok(FrontendMessage::Query(sql)) => encode_query(sql, &mut again),
        Ok(FrontendMessage::Parse(parse)) => parse.encode(&mut again),
        Ok(FrontendMessage::Bind(bind)) => bind.encode_renamed(bind.statement, &mut again),
        Ok(FrontendMessage::Describe(target, name)) => {
            encode_describe_or_close(tag::DESCRIBE, target, name, &mut again)
        }
        Ok(FrontendMessage::Close(target, name)) => encode_describe_or_close(tag::CLOSE, target, name, &mut again),
        Ok(FrontendMessage::Sync | FrontendMessage::Flush | FrontendMessage::CopyDone | FrontendMessage::Terminate) => {
            encode_empty(*message_tag, &mut again)
        }
        Ok(FrontendMessage::Execute { portal, max_rows: _ }) => assert_eq!(body.len(), portal.len() + 1 + 4),
        Ok(FrontendMessage::Password(password_body)) => {
            assert_eq!(password_body, body);
            if let Ok(password) = parse_password(body) {
                let mut out = BytesMut::new();
                encode_password(password, &mut out);
                assert_eq!(&out[..], raw, "PasswordMessage round trip");
            }
            if let Ok((mechanism, initial)) = parse_sasl_initial_response(body) {
                let mut out = BytesMut::new();
                encode_sasl_initial_response(mechanism, initial, &mut out);
                // A length of -1 (no data) is re-encoded as 0.
                let no_data = body.get(mechanism.len() + 1..) == Some(&[0xff, 0xff, 0xff, 0xff][..]);
                assert!(&out[..] == raw || (no_data && initial.is_empty()), "SASLInitialResponse round trip");
            }
            encode_sasl_response(body, &mut again);
        }
        Ok(FrontendMessage::FunctionCall { .. } | FrontendMessage::CopyData | FrontendMessage::CopyFail) => {}
        Err(_) => {}
    }
    if !again.is_empty() {
        assert_eq!(&again[..], raw, "round trip of {:?}", *message_tag as char);
    }
});

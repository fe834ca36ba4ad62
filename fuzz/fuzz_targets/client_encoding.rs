#![no_main]
//! Client encodings (`protocol::ClientEncoding`): the SQL of a client's Query or Parse decoded
//! from its `client_encoding`, and a rewritten statement encoded back.
//!
//! Input: one byte choosing the encoding, then the bytes. Properties: decoding and encoding
//! never panic; text that encodes decodes back to the same text; for UTF-8 and the ISO 8859
//! encodings every decoded statement encodes back to the client's bytes; ASCII is borrowed.

use std::borrow::Cow;

use libfuzzer_sys::fuzz_target;
use pgvane::protocol::ClientEncoding;

/// One name per codec pgvane has, spelled as clients may spell them.
const NAMES: &[&str] = &[
    "UTF8", "SQL_ASCII", "LATIN1", "LATIN5", "latin9", "LATIN2", "ISO_8859_5", "ISO_8859_8", "WIN1252",
    "WIN1251", "WIN866", "WIN874", "KOI8U", "euc-jp", "SJIS", "EUC_KR", "GBK", "GB18030", "BIG5", "JOHAB",
];

/// Encodings where bytes and characters correspond one to one.
const EXACT: &[&str] = &["UTF8", "LATIN1", "LATIN5", "latin9", "LATIN2", "ISO_8859_5", "ISO_8859_8"];

fuzz_target!(|data: &[u8]| {
    let [choice, bytes @ ..] = data else { return };
    let name = NAMES[usize::from(*choice) % NAMES.len()];
    let encoding = ClientEncoding::from_name(name).expect("a known encoding");

    if let Ok(text) = encoding.decode(bytes) {
        if bytes.is_ascii() {
            assert!(matches!(text, Cow::Borrowed(_)), "{name}: ASCII must be borrowed");
        }
        if EXACT.contains(&name) {
            let again = encoding.encode(&text).expect("decoded text encodes back");
            assert_eq!(&again[..], bytes, "{name}: bytes round trip");
        }
    } else {
        assert!(!bytes.is_ascii(), "{name}: ASCII always decodes");
    }

    if let Ok(text) = std::str::from_utf8(bytes) {
        if let Ok(encoded) = encoding.encode(text) {
            let back = encoding.decode(&encoded).expect("encoded text decodes");
            assert_eq!(back, text, "{name}: text round trip");
        }
    }
});

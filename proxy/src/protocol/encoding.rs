//! Client encodings: the text of a client's statements in its `client_encoding`, as UTF-8 for
//! the policy chain and the session tracker, and a rewritten statement back into the client's
//! encoding.
//!
//! Every encoding PostgreSQL accepts from a client has a [`ClientEncoding`]; names are looked
//! up as PostgreSQL does (case, `-` and `_` ignored, its aliases: `unicode`, `latin9`,
//! `euc-jp`, `shift_jis`, `win1252`…). Decoding is done by `encoding_rs` (the WHATWG
//! definitions), except where WHATWG differs from PostgreSQL for bytes a client may send:
//!
//! - `UTF8`: validated and borrowed, no copy.
//! - `LATIN1` and `LATIN5`: WHATWG reads ISO 8859-1 and -9 as windows-1252 and -1254; they are
//!   decoded here exactly (0x80-0x9F are the C1 controls).
//! - `SQL_ASCII`: PostgreSQL does not interpret the bytes. Valid UTF-8 is borrowed as is;
//!   anything else is shown to plugins with U+FFFD where bytes are not UTF-8 (the statement
//!   itself still goes to the server byte for byte unless a plugin rewrites it).
//! - `JOHAB`, `EUC_TW` and `MULE_INTERNAL` (no decoder in `encoding_rs`): statements in ASCII
//!   pass, any other byte is refused with 0A000.
//! - `EUC_JIS_2004`, `SHIFT_JIS_2004`, `EUC_CN` and `EUC_KR` are read with their WHATWG
//!   supersets (EUC-JP, Shift_JIS, GBK, windows-949).
//!
//! Text that does not decode is an error as PostgreSQL words it (22021); a rewrite with a
//! character the client encoding lacks is 22P05.

use std::borrow::Cow;
use std::fmt::Write as _;

use encoding_rs::Encoding;
use thiserror::Error;

use super::messages::ErrorResponse;

/// A client encoding: its PostgreSQL name and how its bytes become text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientEncoding {
    name: &'static str,
    codec: Codec,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Codec {
    Utf8,
    SqlAscii,
    /// ISO 8859-1.
    Latin1,
    /// ISO 8859-9: Latin-1 with six Turkish letters.
    Latin5,
    Whatwg(&'static Encoding),
    /// No decoder: ASCII only.
    AsciiOnly,
}

/// The Turkish letters of ISO 8859-9 where ISO 8859-1 has others.
const LATIN5_LETTERS: [(u8, char); 6] = [(0xD0, 'Ğ'), (0xDD, 'İ'), (0xDE, 'Ş'), (0xF0, 'ğ'), (0xFD, 'ı'), (0xFE, 'ş')];

/// PostgreSQL's encoding names and aliases (`src/common/encnames.c`), cleaned as it cleans
/// them (lowercase, only letters and digits), with the canonical name and the codec.
const NAMES: &[(&str, &str, Codec)] = {
    use encoding_rs as e;
    use Codec::{AsciiOnly, Latin1, Latin5, SqlAscii, Utf8, Whatwg};
    &[
        ("utf8", "UTF8", Utf8),
        ("unicode", "UTF8", Utf8),
        ("sqlascii", "SQL_ASCII", SqlAscii),
        ("latin1", "LATIN1", Latin1),
        ("iso88591", "LATIN1", Latin1),
        ("latin2", "LATIN2", Whatwg(e::ISO_8859_2)),
        ("iso88592", "LATIN2", Whatwg(e::ISO_8859_2)),
        ("latin3", "LATIN3", Whatwg(e::ISO_8859_3)),
        ("iso88593", "LATIN3", Whatwg(e::ISO_8859_3)),
        ("latin4", "LATIN4", Whatwg(e::ISO_8859_4)),
        ("iso88594", "LATIN4", Whatwg(e::ISO_8859_4)),
        ("latin5", "LATIN5", Latin5),
        ("iso88599", "LATIN5", Latin5),
        ("latin6", "LATIN6", Whatwg(e::ISO_8859_10)),
        ("iso885910", "LATIN6", Whatwg(e::ISO_8859_10)),
        ("latin7", "LATIN7", Whatwg(e::ISO_8859_13)),
        ("iso885913", "LATIN7", Whatwg(e::ISO_8859_13)),
        ("latin8", "LATIN8", Whatwg(e::ISO_8859_14)),
        ("iso885914", "LATIN8", Whatwg(e::ISO_8859_14)),
        ("latin9", "LATIN9", Whatwg(e::ISO_8859_15)),
        ("iso885915", "LATIN9", Whatwg(e::ISO_8859_15)),
        ("latin10", "LATIN10", Whatwg(e::ISO_8859_16)),
        ("iso885916", "LATIN10", Whatwg(e::ISO_8859_16)),
        ("iso88595", "ISO_8859_5", Whatwg(e::ISO_8859_5)),
        ("iso88596", "ISO_8859_6", Whatwg(e::ISO_8859_6)),
        ("iso88597", "ISO_8859_7", Whatwg(e::ISO_8859_7)),
        ("iso88598", "ISO_8859_8", Whatwg(e::ISO_8859_8)),
        ("win866", "WIN866", Whatwg(e::IBM866)),
        ("windows866", "WIN866", Whatwg(e::IBM866)),
        ("alt", "WIN866", Whatwg(e::IBM866)),
        ("win874", "WIN874", Whatwg(e::WINDOWS_874)),
        ("windows874", "WIN874", Whatwg(e::WINDOWS_874)),
        ("win1250", "WIN1250", Whatwg(e::WINDOWS_1250)),
        ("windows1250", "WIN1250", Whatwg(e::WINDOWS_1250)),
        ("win1251", "WIN1251", Whatwg(e::WINDOWS_1251)),
        ("windows1251", "WIN1251", Whatwg(e::WINDOWS_1251)),
        ("win", "WIN1251", Whatwg(e::WINDOWS_1251)),
        ("win1252", "WIN1252", Whatwg(e::WINDOWS_1252)),
        ("windows1252", "WIN1252", Whatwg(e::WINDOWS_1252)),
        ("win1253", "WIN1253", Whatwg(e::WINDOWS_1253)),
        ("windows1253", "WIN1253", Whatwg(e::WINDOWS_1253)),
        ("win1254", "WIN1254", Whatwg(e::WINDOWS_1254)),
        ("windows1254", "WIN1254", Whatwg(e::WINDOWS_1254)),
        ("win1255", "WIN1255", Whatwg(e::WINDOWS_1255)),
        ("windows1255", "WIN1255", Whatwg(e::WINDOWS_1255)),
        ("win1256", "WIN1256", Whatwg(e::WINDOWS_1256)),
        ("windows1256", "WIN1256", Whatwg(e::WINDOWS_1256)),
        ("win1257", "WIN1257", Whatwg(e::WINDOWS_1257)),
        ("windows1257", "WIN1257", Whatwg(e::WINDOWS_1257)),
        ("win1258", "WIN1258", Whatwg(e::WINDOWS_1258)),
        ("windows1258", "WIN1258", Whatwg(e::WINDOWS_1258)),
        ("abc", "WIN1258", Whatwg(e::WINDOWS_1258)),
        ("tcvn", "WIN1258", Whatwg(e::WINDOWS_1258)),
        ("tcvn5712", "WIN1258", Whatwg(e::WINDOWS_1258)),
        ("vscii", "WIN1258", Whatwg(e::WINDOWS_1258)),
        ("koi8r", "KOI8R", Whatwg(e::KOI8_R)),
        ("koi8", "KOI8R", Whatwg(e::KOI8_R)),
        ("koi8u", "KOI8U", Whatwg(e::KOI8_U)),
        ("eucjp", "EUC_JP", Whatwg(e::EUC_JP)),
        ("eucjis2004", "EUC_JIS_2004", Whatwg(e::EUC_JP)),
        ("sjis", "SJIS", Whatwg(e::SHIFT_JIS)),
        ("shiftjis", "SJIS", Whatwg(e::SHIFT_JIS)),
        ("mskanji", "SJIS", Whatwg(e::SHIFT_JIS)),
        ("win932", "SJIS", Whatwg(e::SHIFT_JIS)),
        ("windows932", "SJIS", Whatwg(e::SHIFT_JIS)),
        ("shiftjis2004", "SHIFT_JIS_2004", Whatwg(e::SHIFT_JIS)),
        ("euckr", "EUC_KR", Whatwg(e::EUC_KR)),
        ("uhc", "UHC", Whatwg(e::EUC_KR)),
        ("win949", "UHC", Whatwg(e::EUC_KR)),
        ("windows949", "UHC", Whatwg(e::EUC_KR)),
        ("gbk", "GBK", Whatwg(e::GBK)),
        ("win936", "GBK", Whatwg(e::GBK)),
        ("windows936", "GBK", Whatwg(e::GBK)),
        ("gb18030", "GB18030", Whatwg(e::GB18030)),
        ("euccn", "EUC_CN", Whatwg(e::GBK)),
        ("big5", "BIG5", Whatwg(e::BIG5)),
        ("win950", "BIG5", Whatwg(e::BIG5)),
        ("windows950", "BIG5", Whatwg(e::BIG5)),
        ("johab", "JOHAB", AsciiOnly),
        ("euctw", "EUC_TW", AsciiOnly),
        ("muleinternal", "MULE_INTERNAL", AsciiOnly),
    ]
};

/// Text that is not in the client encoding, or cannot be put into it.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum EncodingError {
    /// Bytes that are not valid in the encoding (PostgreSQL's 22021).
    #[error("invalid byte sequence for encoding \"{encoding}\": {bytes}")]
    InvalidByteSequence {
        /// The encoding's name.
        encoding: &'static str,
        /// The offending bytes as PostgreSQL prints them (`0xc3 0x28`).
        bytes: String,
    },
    /// A character the encoding cannot represent (PostgreSQL's 22P05).
    #[error("character with byte sequence {utf8} in encoding \"UTF8\" has no equivalent in encoding \"{encoding}\"")]
    Untranslatable {
        /// The encoding's name.
        encoding: &'static str,
        /// The character's UTF-8 bytes as PostgreSQL prints them.
        utf8: String,
    },
    /// Non-ASCII text in an encoding pgvane cannot decode.
    #[error(
        "pgvane cannot read client_encoding \"{encoding}\" beyond ASCII: use another client encoding, such as UTF8"
    )]
    Unsupported {
        /// The encoding's name.
        encoding: &'static str,
    },
}

impl EncodingError {
    /// The SQLSTATE PostgreSQL gives.
    pub fn code(&self) -> &'static str {
        match self {
            EncodingError::InvalidByteSequence { .. } => "22021",
            EncodingError::Untranslatable { .. } => "22P05",
            EncodingError::Unsupported { .. } => "0A000",
        }
    }

    /// The error for the client: the statement fails, the session goes on.
    pub fn to_error_response(&self) -> ErrorResponse {
        ErrorResponse::error(self.code(), self.to_string())
    }
}

impl Default for ClientEncoding {
    fn default() -> Self {
        ClientEncoding::UTF8
    }
}

impl ClientEncoding {
    /// UTF-8, PostgreSQL's default client encoding.
    pub const UTF8: ClientEncoding = ClientEncoding { name: "UTF8", codec: Codec::Utf8 };

    /// The encoding named `name` as a client or server may spell it (`UTF8`, `unicode`,
    /// `latin9`, `euc-jp`, `ISO_8859_15`…); `None` for names PostgreSQL does not know.
    pub fn from_name(name: &str) -> Option<ClientEncoding> {
        let mut clean = String::with_capacity(name.len());
        clean.extend(name.chars().filter(char::is_ascii_alphanumeric).map(|c| c.to_ascii_lowercase()));
        NAMES.iter().find(|(alias, _, _)| *alias == clean).map(|&(_, name, codec)| ClientEncoding { name, codec })
    }

    /// PostgreSQL's name for it (`EUC_JP`).
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// True for UTF-8, where text and bytes are the same.
    pub fn is_utf8(&self) -> bool {
        self.codec == Codec::Utf8
    }

    /// The client's bytes as text: borrowed when they are UTF-8 already (UTF8 always, any
    /// encoding for ASCII).
    pub fn decode<'a>(&self, bytes: &'a [u8]) -> Result<Cow<'a, str>, EncodingError> {
        match self.codec {
            Codec::Utf8 => std::str::from_utf8(bytes).map(Cow::Borrowed).map_err(|e| {
                let at = e.valid_up_to();
                let len = bytes.get(at).map_or(1, |&b| utf8_sequence_len(b));
                self.invalid(bytes.get(at..).unwrap_or_default(), len)
            }),
            Codec::SqlAscii => Ok(String::from_utf8_lossy(bytes)),
            _ if bytes.is_ascii() => Ok(Cow::Borrowed(ascii(bytes))),
            Codec::Latin1 => Ok(Cow::Owned(bytes.iter().map(|&b| char::from(b)).collect())),
            Codec::Latin5 => Ok(Cow::Owned(bytes.iter().map(|&b| latin5_char(b)).collect())),
            Codec::AsciiOnly => Err(EncodingError::Unsupported { encoding: self.name }),
            Codec::Whatwg(encoding) => match encoding.decode_without_bom_handling_and_without_replacement(bytes) {
                Some(text) => Ok(text),
                None => Err(self.invalid_whatwg(encoding, bytes)),
            },
        }
    }

    /// Text in the client's encoding: borrowed when nothing changes (UTF8 and SQL_ASCII
    /// always, any encoding for ASCII).
    pub fn encode<'a>(&self, text: &'a str) -> Result<Cow<'a, [u8]>, EncodingError> {
        match self.codec {
            Codec::Utf8 | Codec::SqlAscii => Ok(Cow::Borrowed(text.as_bytes())),
            _ if text.is_ascii() => Ok(Cow::Borrowed(text.as_bytes())),
            Codec::Latin1 => text.chars().map(|c| u8::try_from(c).map_err(|_| self.untranslatable(c))).collect(),
            Codec::Latin5 => text.chars().map(|c| latin5_byte(c).ok_or_else(|| self.untranslatable(c))).collect(),
            Codec::AsciiOnly => Err(EncodingError::Unsupported { encoding: self.name }),
            Codec::Whatwg(encoding) => match encoding.encode(text) {
                (bytes, _, false) if round_trips(encoding, &bytes, text) => Ok(bytes),
                _ => {
                    // The first character the encoding lacks, for the message.
                    let mut utf8 = [0; 4];
                    let lacking = text.chars().find(|c| {
                        let one = c.encode_utf8(&mut utf8);
                        !matches!(encoding.encode(one), (bytes, _, false) if round_trips(encoding, &bytes, one))
                    });
                    Err(self.untranslatable(lacking.unwrap_or(char::REPLACEMENT_CHARACTER)))
                }
            },
        }
    }

    /// The error for bytes that do not decode, at the first bad sequence of `bytes`.
    fn invalid(&self, bad: &[u8], len: usize) -> EncodingError {
        let bytes = bad.iter().take(len.max(1)).map(|b| format!("0x{b:02x}")).collect::<Vec<_>>().join(" ");
        EncodingError::InvalidByteSequence { encoding: self.name, bytes }
    }

    fn invalid_whatwg(&self, encoding: &'static Encoding, bytes: &[u8]) -> EncodingError {
        let mut decoder = encoding.new_decoder_without_bom_handling();
        let capacity = decoder.max_utf8_buffer_length_without_replacement(bytes.len()).unwrap_or(usize::MAX);
        let mut text = String::with_capacity(capacity.min(bytes.len().saturating_mul(3)).saturating_add(16));
        let (result, read) = decoder.decode_to_string_without_replacement(bytes, &mut text, true);
        let (start, len) = match result {
            encoding_rs::DecoderResult::Malformed(bad, after) => {
                let end = read.saturating_sub(usize::from(after));
                (end.saturating_sub(usize::from(bad)), usize::from(bad))
            }
            _ => (read, 1),
        };
        self.invalid(bytes.get(start..).unwrap_or_default(), len)
    }

    fn untranslatable(&self, c: char) -> EncodingError {
        let mut utf8 = [0; 4];
        let bytes = c.encode_utf8(&mut utf8).bytes().fold(String::new(), |mut s, b| {
            if !s.is_empty() {
                s.push(' ');
            }
            let _ = write!(s, "0x{b:02x}");
            s
        });
        EncodingError::Untranslatable { encoding: self.name, utf8: bytes }
    }
}

/// ASCII bytes as text.
fn ascii(bytes: &[u8]) -> &str {
    // ASCII is UTF-8: this never fails; the empty fallback only keeps panics out.
    std::str::from_utf8(bytes).unwrap_or_default()
}

/// The length of the UTF-8 sequence a lead byte announces, as PostgreSQL's `pg_utf_mblen`.
fn utf8_sequence_len(lead: u8) -> usize {
    match lead {
        0xC0..=0xDF => 2,
        0xE0..=0xEF => 3,
        0xF0..=0xF7 => 4,
        _ => 1,
    }
}

fn latin5_char(b: u8) -> char {
    LATIN5_LETTERS.iter().find(|(byte, _)| *byte == b).map_or(char::from(b), |&(_, c)| c)
}

fn latin5_byte(c: char) -> Option<u8> {
    if let Some(&(byte, _)) = LATIN5_LETTERS.iter().find(|(_, letter)| *letter == c) {
        return Some(byte);
    }
    let b = u8::try_from(c).ok()?;
    // The Latin-1 letters whose places the Turkish ones took are not in LATIN5.
    (!LATIN5_LETTERS.iter().any(|(byte, _)| *byte == b)).then_some(b)
}

/// A rewritten statement in both forms: the text the plugins returned, and the bytes in the
/// client's encoding that go to the server (the same bytes for UTF-8 clients).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedText {
    text: String,
    /// Set only when the client encoding's bytes differ from the text's UTF-8.
    bytes: Option<Vec<u8>>,
}

impl EncodedText {
    /// `text` in `encoding`, or the error for a character it cannot represent.
    pub fn new(text: String, encoding: ClientEncoding) -> Result<Self, EncodingError> {
        let bytes = match encoding.encode(&text)? {
            Cow::Borrowed(_) => None,
            Cow::Owned(bytes) => Some(bytes),
        };
        Ok(EncodedText { text, bytes })
    }

    /// The text (UTF-8).
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The bytes in the client's encoding.
    pub fn bytes(&self) -> &[u8] {
        self.bytes.as_deref().unwrap_or(self.text.as_bytes())
    }
}

/// Whether `bytes` (the encoding of `text`) decode back to `text`. A few encoders are not the
/// inverse of their decoders: GB18030 writes some private-use characters (U+E832) as bytes
/// that read back as standard ones (U+9FB8). Such a character is untranslatable, as the
/// server would not see what the plugin wrote.
fn round_trips(encoding: &'static Encoding, bytes: &[u8], text: &str) -> bool {
    matches!(encoding.decode_without_bom_handling_and_without_replacement(bytes), Some(back) if back == text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoding(name: &str) -> ClientEncoding {
        ClientEncoding::from_name(name).unwrap_or_else(|| panic!("{name} unknown"))
    }

    #[test]
    fn names_are_looked_up_as_postgresql_does() {
        for (spelling, canonical) in [
            ("UTF8", "UTF8"),
            ("utf-8", "UTF8"),
            ("unicode", "UTF8"),
            ("latin9", "LATIN9"),
            ("ISO_8859_15", "LATIN9"),
            ("iso-8859-1", "LATIN1"),
            ("euc-jp", "EUC_JP"),
            ("EUC_JP", "EUC_JP"),
            ("Shift_JIS", "SJIS"),
            ("win1252", "WIN1252"),
            ("WINDOWS-1251", "WIN1251"),
            ("koi8", "KOI8R"),
            ("sql_ascii", "SQL_ASCII"),
            ("mule_internal", "MULE_INTERNAL"),
        ] {
            assert_eq!(encoding(spelling).name(), canonical, "{spelling}");
        }
        assert_eq!(ClientEncoding::from_name("klingon"), None);
        assert_eq!(ClientEncoding::default(), ClientEncoding::UTF8);
    }

    #[test]
    fn every_canonical_name_is_its_own_alias() {
        for (_, canonical, _) in NAMES {
            assert_eq!(encoding(canonical).name(), *canonical);
        }
    }

    #[test]
    fn utf8_and_ascii_are_borrowed() {
        let text = "select 'é€日本語'";
        assert!(matches!(ClientEncoding::UTF8.decode(text.as_bytes()), Ok(Cow::Borrowed(t)) if t == text));
        assert!(matches!(ClientEncoding::UTF8.encode(text), Ok(Cow::Borrowed(b)) if b == text.as_bytes()));
        for name in ["LATIN1", "LATIN9", "EUC_JP", "SJIS", "JOHAB", "LATIN5"] {
            let e = encoding(name);
            assert!(matches!(e.decode(b"select 1"), Ok(Cow::Borrowed("select 1"))), "{name}");
            assert!(matches!(e.encode("select 1"), Ok(Cow::Borrowed(b"select 1"))), "{name}");
        }
    }

    #[test]
    fn non_utf8_encodings_round_trip() {
        for (name, text, bytes) in [
            ("LATIN9", "é€", &b"\xe9\xa4"[..]),
            ("LATIN1", "é¤\u{80}", b"\xe9\xa4\x80"),
            ("LATIN5", "ğé", b"\xf0\xe9"),
            ("WIN1252", "é€", b"\xe9\x80"),
            ("WIN1251", "Ж", b"\xc6"),
            ("KOI8R", "Ж", b"\xf6"),
            ("EUC_JP", "日本語", b"\xc6\xfc\xcb\xdc\xb8\xec"),
            ("SJIS", "日本語", b"\x93\xfa\x96\x7b\x8c\xea"),
            ("EUC_KR", "한국어", b"\xc7\xd1\xb1\xb9\xbe\xee"),
            ("GBK", "中文", b"\xd6\xd0\xce\xc4"),
            ("BIG5", "中文", b"\xa4\xa4\xa4\xe5"),
        ] {
            let e = encoding(name);
            assert_eq!(e.decode(bytes).unwrap(), text, "{name} decodes");
            assert_eq!(&e.encode(text).unwrap()[..], bytes, "{name} encodes");
            let both = EncodedText::new(text.to_owned(), e).unwrap();
            assert_eq!((both.text(), both.bytes()), (text, bytes));
        }
    }

    #[test]
    fn invalid_bytes_are_22021_as_postgresql_words_it() {
        let err = ClientEncoding::UTF8.decode(b"select '\xc3\x28'").unwrap_err();
        assert_eq!(err.code(), "22021");
        assert_eq!(err.to_string(), "invalid byte sequence for encoding \"UTF8\": 0xc3 0x28");
        assert_eq!(
            ClientEncoding::UTF8.decode(b"x\xff").unwrap_err().to_string(),
            "invalid byte sequence for encoding \"UTF8\": 0xff"
        );
        let err = encoding("EUC_JP").decode(b"select '\xc6'").unwrap_err();
        assert_eq!(err.code(), "22021");
        assert!(err.to_string().starts_with("invalid byte sequence for encoding \"EUC_JP\": 0xc6"), "{err}");
        assert_eq!(encoding("JOHAB").decode(b"\x88\x61").unwrap_err().code(), "0A000");
        // SQL_ASCII takes any byte.
        assert_eq!(encoding("SQL_ASCII").decode(b"a\xffb").unwrap(), "a\u{fffd}b");
    }

    #[test]
    fn characters_the_encoding_lacks_are_22p05() {
        let err = encoding("LATIN1").encode("€").unwrap_err();
        assert_eq!(err.code(), "22P05");
        assert_eq!(
            err.to_string(),
            "character with byte sequence 0xe2 0x82 0xac in encoding \"UTF8\" has no equivalent in encoding \"LATIN1\""
        );
        assert_eq!(encoding("LATIN9").encode("é日").unwrap_err().code(), "22P05");
        assert_eq!(encoding("EUC_JP").encode("한").unwrap_err().code(), "22P05");
        // LATIN5 has ğ where LATIN1 has ð.
        assert_eq!(encoding("LATIN5").encode("ð").unwrap_err().code(), "22P05");
        assert_eq!(encoding("EUC_TW").encode("中").unwrap_err().code(), "0A000");
        // GB18030's encoder writes U+E832 as the bytes of U+9FB8: the server would read another
        // character, so it is untranslatable too (found by the client_encoding fuzz target).
        let err = encoding("GB18030").encode("a\u{e832}").unwrap_err();
        assert_eq!(err.code(), "22P05");
        assert!(err.to_string().contains("0xee 0xa0 0xb2"), "{err}");
        let standard = encoding("GB18030").encode("龸").unwrap();
        assert_eq!(encoding("GB18030").decode(&standard).unwrap(), "龸");
        assert!(EncodedText::new("€".to_owned(), encoding("LATIN1")).is_err());
    }

    #[test]
    fn errors_become_statement_errors() {
        let error = ClientEncoding::UTF8.decode(b"\xff").unwrap_err().to_error_response();
        assert_eq!((error.severity(), error.code()), ("ERROR", "22021"));
    }
}

#![no_main]
//! The SQL lexer (`pgvane-sql-lexer`): tokens, spans, statements, first keywords.
//!
//! Properties: spans are in order, do not overlap, lie on character boundaries, and hold the
//! token's text; `tokens` yields what `spanned_tokens` does; statements are trimmed, non-empty
//! slices of the input in order; identifiers' names and keyword checks agree.

use libfuzzer_sys::fuzz_target;
use pgvane_sql_lexer::{self as sql, Token};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let mut end = 0;
    let mut spanned = Vec::new();
    for (range, token) in sql::spanned_tokens(text) {
        assert!(range.start >= end && range.start < range.end && range.end <= text.len(), "{range:?}");
        let raw = text.get(range.clone()).expect("spans lie on character boundaries");
        match token {
            Token::Ident(ident) => {
                let name = ident.name();
                if !ident.is_quoted() {
                    assert_eq!(ident.raw(), raw);
                    assert!(ident.is_keyword(&name));
                    assert!(ident.is_terminated());
                } else {
                    // `U&"…"` spans its prefix; the identifier itself starts at the quote.
                    let quoted = raw.strip_prefix("U&").or_else(|| raw.strip_prefix("u&")).unwrap_or(raw);
                    assert_eq!(ident.raw(), quoted);
                    assert!(quoted.starts_with('"'));
                    assert!(!ident.is_terminated() || quoted.len() >= 2 && quoted.ends_with('"'));
                }
            }
            Token::Literal(s) | Token::Number(s) | Token::Param(s) => assert_eq!(s, raw),
            Token::Punct(c) => assert_eq!(raw.chars().collect::<Vec<_>>(), [c]),
        }
        end = range.end;
        spanned.push(token);
    }
    assert!(sql::tokens(text).eq(spanned.iter().copied()));

    let mut after = 0;
    for statement in sql::statements(text) {
        assert!(!statement.is_empty() && statement.trim() == statement);
        let offset = statement.as_ptr() as usize - text.as_ptr() as usize;
        assert!(offset >= after && offset + statement.len() <= text.len(), "statements are slices, in order");
        after = offset + statement.len();
        if let Some(keyword) = sql::first_keyword(statement) {
            assert!(sql::tokens(statement).next().is_some_and(|t| t.is_keyword(&keyword)));
        }
    }
});

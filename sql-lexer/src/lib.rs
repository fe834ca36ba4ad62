//! pgvane's one SQL lexer: enough to look at statements without being fooled by comments,
//! string literals or quoted identifiers. It is not a parser. The proxy (which session-state
//! commands a query runs), the admin console (its command language) and the plugin SDK
//! (`pgvane_sdk::sql`, which re-exports this crate for plugins) all lex with it. It has no
//! dependencies, so it builds for wasm32-wasip2 inside every plugin.
//!
//! It follows PostgreSQL's lexical rules: `--` and nested `/* */` comments, `'…'` strings with
//! `''`, `E'…'` strings with backslash escapes, `$tag$…$tag$` dollar quoting, `"…"` identifiers
//! with `""`, `$1` parameters, and unquoted identifiers folded to lower case.
//!
//! ```
//! use pgvane_sql_lexer::{self as sql, Token};
//! let stmts: Vec<&str> = sql::statements("SELECT ';' ; /* ; */ INSERT INTO t VALUES (1);").collect();
//! assert_eq!(stmts, ["SELECT ';'", "/* ; */ INSERT INTO t VALUES (1)"]);
//! assert_eq!(sql::first_keyword(stmts[1]).as_deref(), Some("insert"));
//! let names: Vec<String> = sql::tokens(r#"select "Weird""Name", nextval('s') from x"#)
//!     .filter_map(|t| t.ident().map(|i| i.name().into_owned()))
//!     .collect();
//! assert_eq!(names, ["select", "Weird\"Name", "nextval", "from", "x"]);
//! ```

use std::borrow::Cow;
use std::ops::Range;

/// An identifier or keyword.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ident<'a> {
    raw: &'a str,
    quoted: bool,
}

impl<'a> Ident<'a> {
    /// The name as PostgreSQL sees it: unquoted identifiers folded to lower case, quoted ones
    /// without their quotes and with `""` unescaped.
    pub fn name(&self) -> Cow<'a, str> {
        if self.quoted {
            let inner = self.raw.get(1..self.raw.len().saturating_sub(1)).unwrap_or("");
            if inner.contains("\"\"") {
                Cow::Owned(inner.replace("\"\"", "\""))
            } else {
                Cow::Borrowed(inner)
            }
        } else if self.raw.bytes().any(|b| b.is_ascii_uppercase()) {
            Cow::Owned(self.raw.to_ascii_lowercase())
        } else {
            Cow::Borrowed(self.raw)
        }
    }

    /// True for an unquoted identifier equal to `keyword`, ignoring ASCII case.
    pub fn is_keyword(&self, keyword: &str) -> bool {
        !self.quoted && self.raw.eq_ignore_ascii_case(keyword)
    }

    /// True when the identifier was written in double quotes.
    pub fn is_quoted(&self) -> bool {
        self.quoted
    }

    /// False for a quoted identifier whose closing quote is missing (the text ended first).
    pub fn is_terminated(&self) -> bool {
        // After the opening quote: `""` pairs, then the closing quote, an odd count in all.
        !self.quoted || self.raw.get(1..).is_some_and(|rest| rest.matches('"').count() % 2 == 1)
    }

    /// The text as written.
    pub fn raw(&self) -> &'a str {
        self.raw
    }
}

/// One token of SQL text. Comments and whitespace are skipped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Token<'a> {
    /// An identifier or keyword, quoted or not.
    Ident(Ident<'a>),
    /// A string literal of any kind (`'…'`, `E'…'`, `$$…$$`, `B'…'`, `X'…'`, `U&'…'`), as
    /// written, quotes included.
    Literal(&'a str),
    /// A numeric constant, as written.
    Number(&'a str),
    /// A positional parameter such as `$1`.
    Param(&'a str),
    /// Any other character: punctuation (`(`, `)`, `,`, `;`, `.`, `[`, `]`) and operator
    /// characters, one at a time.
    Punct(char),
}

impl<'a> Token<'a> {
    /// The identifier, if the token is one.
    pub fn ident(&self) -> Option<Ident<'a>> {
        match self {
            Token::Ident(i) => Some(*i),
            _ => None,
        }
    }

    /// True for an unquoted identifier equal to `keyword`, ignoring ASCII case.
    pub fn is_keyword(&self, keyword: &str) -> bool {
        matches!(self, Token::Ident(i) if i.is_keyword(keyword))
    }

    /// True for the punctuation character `c`.
    pub fn is_punct(&self, c: char) -> bool {
        matches!(self, Token::Punct(p) if *p == c)
    }
}

/// The tokens of `sql`, with comments and whitespace skipped.
pub fn tokens(sql: &str) -> Tokens<'_> {
    Tokens { sql, pos: 0 }
}

/// The tokens of `sql` with their byte ranges in `sql`.
pub fn spanned_tokens(sql: &str) -> impl Iterator<Item = (Range<usize>, Token<'_>)> {
    let mut lexer = Tokens { sql, pos: 0 };
    std::iter::from_fn(move || lexer.next_spanned())
}

/// The statements of a (simple-protocol) query string: split at semicolons outside literals,
/// comments and parentheses, trimmed, empty ones left out.
pub fn statements(sql: &str) -> impl Iterator<Item = &str> {
    let mut lexer = Tokens { sql, pos: 0 };
    let mut start = 0;
    let mut depth = 0usize;
    let mut done = false;
    std::iter::from_fn(move || loop {
        if done {
            return None;
        }
        let end = match lexer.next_spanned() {
            Some((range, Token::Punct(';'))) if depth == 0 => range,
            Some((_, Token::Punct('('))) => {
                depth += 1;
                continue;
            }
            Some((_, Token::Punct(')'))) => {
                depth = depth.saturating_sub(1);
                continue;
            }
            Some(_) => continue,
            None => {
                done = true;
                sql.len()..sql.len()
            }
        };
        let stmt = sql.get(start..end.start).unwrap_or("").trim();
        start = end.end;
        if !stmt.is_empty() && tokens(stmt).next().is_some() {
            return Some(stmt);
        }
    })
}

/// The first keyword of a statement, lower-cased (`select`, `insert`, `with`, …), if it starts
/// with one.
pub fn first_keyword(statement: &str) -> Option<String> {
    match tokens(statement).next()? {
        Token::Ident(i) if !i.is_quoted() => Some(i.raw().to_ascii_lowercase()),
        _ => None,
    }
}

/// Iterator over the tokens of SQL text; see [`tokens`].
#[derive(Debug, Clone)]
pub struct Tokens<'a> {
    sql: &'a str,
    pos: usize,
}

impl<'a> Iterator for Tokens<'a> {
    type Item = Token<'a>;

    fn next(&mut self) -> Option<Token<'a>> {
        self.next_spanned().map(|(_, t)| t)
    }
}

fn is_ident_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_' || !c.is_ascii()
}

fn is_ident_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '$' || !c.is_ascii()
}

impl<'a> Tokens<'a> {
    fn rest(&self) -> &'a str {
        self.sql.get(self.pos..).unwrap_or("")
    }

    /// Advances past whitespace and comments.
    fn skip_trivia(&mut self) {
        loop {
            let rest = self.rest();
            let trimmed = rest.trim_start();
            self.pos += rest.len() - trimmed.len();
            if trimmed.starts_with("--") {
                self.pos += trimmed.find('\n').map_or(trimmed.len(), |n| n + 1);
            } else if trimmed.starts_with("/*") {
                self.pos += block_comment_len(trimmed);
            } else {
                return;
            }
        }
    }

    fn next_spanned(&mut self) -> Option<(Range<usize>, Token<'a>)> {
        self.skip_trivia();
        let rest = self.rest();
        let start = self.pos;
        let c = rest.chars().next()?;
        let (len, kind) = match c {
            '\'' => (quoted_len(rest, '\'', false), Kind::Literal),
            '"' => (quoted_len(rest, '"', false), Kind::QuotedIdent),
            '$' => match dollar_tag_len(rest) {
                Some(tag) => (dollar_quoted_len(rest, tag), Kind::Literal),
                None => {
                    let digits = rest[1..].bytes().take_while(u8::is_ascii_digit).count();
                    if digits > 0 {
                        (1 + digits, Kind::Param)
                    } else {
                        (1, Kind::Punct)
                    }
                }
            },
            c if c.is_ascii_digit() || (c == '.' && rest[1..].starts_with(|d: char| d.is_ascii_digit())) => {
                (number_len(rest), Kind::Number)
            }
            c if is_ident_start(c) => {
                let word = rest.find(|c: char| !is_ident_char(c)).unwrap_or(rest.len());
                let after = &rest[word..];
                let prefix = &rest[..word];
                if after.starts_with('\'') && matches!(prefix, "e" | "E") {
                    (word + quoted_len(after, '\'', true), Kind::Literal)
                } else if after.starts_with('\'') && matches!(prefix, "b" | "B" | "x" | "X" | "n" | "N") {
                    (word + quoted_len(after, '\'', false), Kind::Literal)
                } else if matches!(prefix, "u" | "U") && after.starts_with("&'") {
                    (word + 1 + quoted_len(&after[1..], '\'', false), Kind::Literal)
                } else if matches!(prefix, "u" | "U") && after.starts_with("&\"") {
                    (word + 1 + quoted_len(&after[1..], '"', false), Kind::QuotedIdent)
                } else {
                    (word, Kind::Word)
                }
            }
            c => (c.len_utf8(), Kind::Punct),
        };
        let len = len.min(rest.len());
        self.pos += len;
        let text = &rest[..len];
        let token = match kind {
            Kind::Literal => Token::Literal(text),
            Kind::QuotedIdent => {
                // U&"…" keeps its prefix in `raw` for display but not in the name.
                let quoted = text.trim_start_matches(['u', 'U', '&']);
                Token::Ident(Ident { raw: quoted, quoted: true })
            }
            Kind::Word => Token::Ident(Ident { raw: text, quoted: false }),
            Kind::Number => Token::Number(text),
            Kind::Param => Token::Param(text),
            Kind::Punct => Token::Punct(c),
        };
        Some((start..start + len, token))
    }
}

enum Kind {
    Literal,
    QuotedIdent,
    Word,
    Number,
    Param,
    Punct,
}

/// Length of a nested `/* … */` comment at the start of `s` (to the end if unterminated).
fn block_comment_len(s: &str) -> usize {
    let bytes = s.as_bytes();
    let mut depth = 0usize;
    let mut i = 0;
    while i < bytes.len() {
        match (bytes[i], bytes.get(i + 1)) {
            (b'/', Some(b'*')) => {
                depth += 1;
                i += 2;
            }
            (b'*', Some(b'/')) => {
                depth -= 1;
                i += 2;
                if depth == 0 {
                    return i;
                }
            }
            _ => i += 1,
        }
    }
    s.len()
}

/// Length of a quoted token starting with `quote` at the start of `s`; a doubled quote is an
/// escaped one, and with `backslash` so is `\'`. Unterminated: to the end.
fn quoted_len(s: &str, quote: char, backslash: bool) -> usize {
    let q = quote as u8;
    let bytes = s.as_bytes();
    let mut i = 1;
    while i < bytes.len() {
        let b = bytes[i];
        if backslash && b == b'\\' {
            i += 2;
        } else if b == q {
            if bytes.get(i + 1) == Some(&q) {
                i += 2;
            } else {
                return i + 1;
            }
        } else {
            i += 1;
        }
    }
    s.len()
}

/// If `s` starts with a dollar-quote opening tag (`$$` or `$tag$`), its length.
fn dollar_tag_len(s: &str) -> Option<usize> {
    let body = s.get(1..)?;
    let mut chars = body.char_indices();
    match chars.next()? {
        (_, '$') => return Some(2),
        (_, c) if is_ident_start(c) => {}
        _ => return None,
    }
    for (i, c) in chars {
        if c == '$' {
            return Some(i + 2);
        }
        if !(c.is_ascii_alphanumeric() || c == '_' || !c.is_ascii()) {
            return None;
        }
    }
    None
}

/// Length of a dollar-quoted literal whose opening tag is `tag` bytes long.
fn dollar_quoted_len(s: &str, tag: usize) -> usize {
    let delimiter = &s[..tag];
    match s[tag..].find(delimiter) {
        Some(end) => tag + end + tag,
        None => s.len(),
    }
}

fn number_len(s: &str) -> usize {
    let bytes = s.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        let exponent_sign = (b == b'+' || b == b'-') && i > 0 && matches!(bytes[i - 1], b'e' | b'E');
        if b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || exponent_sign {
            i += 1;
        } else {
            break;
        }
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;

    fn idents(sql: &str) -> Vec<String> {
        tokens(sql).filter_map(|t| t.ident().map(|i| i.name().into_owned())).collect()
    }

    #[test]
    fn literals_and_comments_hide_their_content() {
        let sql = "SELECT 'a''b; tablea', E'x\\'; tableb', $$ tablec $$, $f$ $$ tabled $f$ -- tablee\n\
                   /* outer /* inner tablef */ still */ FROM t";
        assert_eq!(idents(sql), ["select", "from", "t"]);
        let literals: Vec<&str> =
            tokens(sql).filter_map(|t| if let Token::Literal(l) = t { Some(l) } else { None }).collect();
        assert_eq!(literals, ["'a''b; tablea'", "E'x\\'; tableb'", "$$ tablec $$", "$f$ $$ tabled $f$"]);
    }

    #[test]
    fn identifiers_fold_unless_quoted() {
        assert_eq!(
            idents(r#"SELECT "MiXed", MiXed, "a""b", U&"d\0061t", a$b"#),
            ["select", "MiXed", "mixed", "a\"b", "d\\0061t", "a$b"]
        );
        let t: Vec<Token> = tokens("$1 + 1.5e-3 ::int").collect();
        assert_eq!(
            t,
            [
                Token::Param("$1"),
                Token::Punct('+'),
                Token::Number("1.5e-3"),
                Token::Punct(':'),
                Token::Punct(':'),
                Token::Ident(Ident { raw: "int", quoted: false })
            ]
        );
    }

    #[test]
    fn statements_split_at_top_level_semicolons() {
        let s: Vec<&str> =
            statements("BEGIN READ ONLY; SELECT 1;;  ; CREATE RULE r AS ON INSERT TO t DO (SELECT 1; SELECT 2); --x\n")
                .collect();
        assert_eq!(s, ["BEGIN READ ONLY", "SELECT 1", "CREATE RULE r AS ON INSERT TO t DO (SELECT 1; SELECT 2)"]);
        assert_eq!(statements("  -- only a comment\n").count(), 0);
        assert_eq!(statements("SELECT 'unterminated; x").collect::<Vec<_>>(), ["SELECT 'unterminated; x"]);
    }

    #[test]
    fn first_keyword_skips_comments() {
        assert_eq!(first_keyword("/* hi */ -- x\n  Insert into t").as_deref(), Some("insert"));
        assert_eq!(first_keyword("(SELECT 1)"), None);
        assert_eq!(first_keyword(""), None);
    }

    #[test]
    fn semicolons_inside_literals_identifiers_and_comments_do_not_split() {
        for (sql, first) in [
            ("SELECT 'a;''b'", "SELECT 'a;''b'"),
            ("SELECT E'a\\';b\\\';c'", "SELECT E'a\\';b\\\';c'"),
            ("SELECT $$;$$, $f$ ; $$ ; $f$", "SELECT $$;$$, $f$ ; $$ ; $f$"),
            ("SELECT /* ; /* ; */ ; */ 1", "SELECT /* ; /* ; */ ; */ 1"),
            ("SELECT 1 -- ;\n + 1", "SELECT 1 -- ;\n + 1"),
            ("SELECT \"a;\"\";b\"", "SELECT \"a;\"\";b\""),
        ] {
            let sql = format!("{sql}; SELECT 2");
            assert_eq!(statements(&sql).collect::<Vec<_>>(), [first, "SELECT 2"], "{sql}");
        }
        // An E'' string's `\'` is an escaped quote; in a standard string `\` is just a character.
        assert_eq!(statements("SELECT E'\\'; x'; SELECT 'a\\'; SELECT 3").count(), 3);
    }

    #[test]
    fn quoted_identifiers_know_whether_they_are_closed() {
        fn ident(sql: &str) -> Option<Ident<'_>> {
            tokens(sql).next().and_then(|t| t.ident())
        }
        let closed = |sql: &str| ident(sql).is_some_and(|i| i.is_terminated());
        assert!(closed("\"a\"") && closed("\"a\"\"b\"") && closed("\"\"") && closed("\"a\"\"\"") && closed("plain"));
        assert!(!closed("\"a") && !closed("\"a\"\"") && !closed("\""));
        assert_eq!(ident("\"a\"\"b\"").map(|i| i.name().into_owned()).as_deref(), Some("a\"b"));
    }

    #[test]
    fn never_panics_on_odd_input() {
        for sql in ["'", "\"", "$", "$a", "$a$", "/*", "E'\\", "U&", "u&'", "1e+", "é$ü$", "$é$x$é$", "--", "..5", "x'"]
        {
            let _ = tokens(sql).count();
            let _ = statements(sql).count();
            let spanned: Vec<_> = spanned_tokens(sql).collect();
            for (r, _) in spanned {
                assert!(sql.get(r).is_some());
            }
        }
    }
}

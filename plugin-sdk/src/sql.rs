//! A small SQL lexer for policies: enough to look at statements without being fooled by
//! comments, string literals or quoted identifiers. It is not a parser.
//!
//! It follows PostgreSQL's lexical rules: `--` and nested `/* */` comments, `'…'` strings with
//! `''`, `E'…'` strings with backslash escapes, `$tag$…$tag$` dollar quoting, `"…"` identifiers
//! with `""`, `$1` parameters, and unquoted identifiers folded to lower case.
//!
//! It is the lexer the proxy itself uses (the `pgvane-sql-lexer` crate, re-exported here), so a
//! plugin splits and reads statements exactly as pgvane does.
//!
//! ```
//! use pgvane_sdk::sql::{self, Token};
//! let stmts: Vec<&str> = sql::statements("SELECT ';' ; /* ; */ INSERT INTO t VALUES (1);").collect();
//! assert_eq!(stmts, ["SELECT ';'", "/* ; */ INSERT INTO t VALUES (1)"]);
//! assert_eq!(sql::first_keyword(stmts[1]).as_deref(), Some("insert"));
//! let names: Vec<String> = sql::tokens(r#"select "Weird""Name", nextval('s') from x"#)
//!     .filter_map(|t| t.ident().map(|i| i.name().into_owned()))
//!     .collect();
//! assert_eq!(names, ["select", "Weird\"Name", "nextval", "from", "x"]);
//! ```

pub use pgvane_sql_lexer::{first_keyword, spanned_tokens, statements, tokens, Ident, Token, Tokens};

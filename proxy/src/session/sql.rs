//! Just enough SQL lexing to see which session-state commands a query runs: SET, RESET,
//! DISCARD, DEALLOCATE. Statements are split at top-level `;` by the lexer pgvane shares with
//! the admin console and the plugin SDK (`pgvane-sql-lexer`), which skips string literals,
//! dollar quotes, quoted identifiers and comments; only the first words of each statement
//! are looked at.

use pgvane_sql_lexer::{statements, tokens, Token};

/// A session-state command found in a query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StateCommand {
    /// `SET [SESSION] name …` (not `SET LOCAL`): the setting's value may change.
    Set(String),
    /// `RESET name`.
    Reset(String),
    /// `RESET ALL`.
    ResetAll,
    /// `DISCARD ALL`.
    DiscardAll,
    /// `DEALLOCATE [PREPARE] name`.
    Deallocate(String),
    /// `DEALLOCATE [PREPARE] ALL`.
    DeallocateAll,
    /// A statement leaving state in the server session that cannot follow the client to
    /// another server connection: temporary tables, LISTEN, SQL-level PREPARE, cursors
    /// (WITH HOLD ones outlive the transaction), session advisory locks.
    SessionState,
    /// Any other statement.
    Other,
}

/// How many words of a statement are kept: enough for `SET SESSION AUTHORIZATION`.
const WORDS: usize = 4;

/// The session-state command of each statement in `sql`, in order; empty when `sql` is one
/// statement that starts with no keyword of a session-state command (the common case, seen
/// without lexing or allocating).
pub fn state_commands(sql: &str) -> Vec<StateCommand> {
    if !may_hold_state_command(sql) {
        return Vec::new();
    }
    split_words(sql).into_iter().map(|words| classify(&words)).collect()
}

/// Every first word [`classify`] gives a meaning to.
const STATE_KEYWORDS: &[&str] = &["set", "reset", "discard", "deallocate", "create", "listen", "prepare", "declare"];

/// False only when `sql` is certainly one statement whose first word is none of
/// [`STATE_KEYWORDS`]: no `;` but at its end, and it starts (after white space) with a word
/// that is not one of them. Anything else (several statements, a leading comment or
/// parenthesis) needs the lexer.
fn may_hold_state_command(sql: &str) -> bool {
    let sql = sql.trim_matches(|c: char| c.is_ascii_whitespace() || c == ';');
    if sql.contains(';') {
        return true;
    }
    if !sql.starts_with(|c: char| c.is_ascii_alphabetic()) {
        return !sql.is_empty();
    }
    let word_end = sql.find(|c: char| !c.is_ascii_alphanumeric() && c != '_').unwrap_or(sql.len());
    let word = &sql[..word_end];
    STATE_KEYWORDS.iter().any(|k| k.eq_ignore_ascii_case(word))
}

/// True if `sql` calls a function that may leave state in the server session: a session
/// advisory lock (the `pg_advisory_xact_lock…` ones end with the transaction), or
/// `set_config`, whose effect pgvane does not track as it tracks `SET`. Any letter case,
/// anywhere in the text (a mention in a literal counts too: that only costs a reset).
pub fn calls_session_state_function(sql: &str) -> bool {
    // Each name holds a `_`: only the places around one are compared.
    const NAMES: [(&str, usize); 3] = [("pg_advisory_lock", 2), ("pg_try_advisory_lock", 2), ("set_config", 3)];
    let bytes = sql.as_bytes();
    bytes.iter().enumerate().filter(|(_, b)| **b == b'_').any(|(i, _)| {
        NAMES.iter().any(|(name, at)| {
            i.checked_sub(*at)
                .and_then(|start| bytes.get(start..start + name.len()))
                .is_some_and(|found| found.eq_ignore_ascii_case(name.as_bytes()))
        })
    })
}

fn classify(words: &[String]) -> StateCommand {
    let w = |i: usize| words.get(i).map(String::as_str).unwrap_or("");
    match (w(0), w(1)) {
        ("set", "local") | ("set", "transaction") | ("set", "constraints") => StateCommand::Other,
        ("set", "session") if w(2) == "characteristics" => StateCommand::Other,
        ("set", "session") if w(2) == "authorization" => StateCommand::Set("session_authorization".into()),
        ("set", "session") => special_name(w(2), w(3)).map_or(StateCommand::Other, StateCommand::Set),
        ("set", name) => special_name(name, w(2)).map_or(StateCommand::Other, StateCommand::Set),
        ("reset", "all") => StateCommand::ResetAll,
        ("reset", "session") if w(2) == "authorization" => StateCommand::Reset("session_authorization".into()),
        ("reset", name) => special_name(name, w(2)).map_or(StateCommand::Other, StateCommand::Reset),
        ("discard", "all") => StateCommand::DiscardAll,
        ("deallocate", "prepare") if w(2) == "all" => StateCommand::DeallocateAll,
        ("deallocate", "prepare") if !w(2).is_empty() => StateCommand::Deallocate(w(2).to_owned()),
        ("deallocate", "all") => StateCommand::DeallocateAll,
        ("deallocate", name) if !name.is_empty() => StateCommand::Deallocate(name.to_owned()),
        ("create", "temp" | "temporary") | ("listen", _) | ("prepare", _) | ("declare", _) => {
            StateCommand::SessionState
        }
        ("create", "global" | "local") if matches!(w(2), "temp" | "temporary") => StateCommand::SessionState,
        ("create", "or") if matches!(w(3), "temp" | "temporary") => StateCommand::SessionState,
        _ => StateCommand::Other,
    }
}

/// The setting a `SET`/`RESET` target names, with PostgreSQL's special forms.
fn special_name(word: &str, next: &str) -> Option<String> {
    let name = match (word, next) {
        ("time", "zone") => "timezone",
        ("schema", _) => "search_path",
        ("names", _) => "client_encoding",
        ("xml", "option") => "xmloption",
        ("", _) => return None,
        (name, _) => name,
    };
    Some(name.to_owned())
}

/// Splits `sql` into statements (with the shared lexer: at top-level `;` outside literals,
/// quoted identifiers and comments) and returns the first [`WORDS`] words of each: keywords and
/// unquoted identifiers lower-cased, quoted identifiers as written, `.`-joined names kept
/// whole, `'` for a string literal, `$` for a dollar-quoted one, other tokens as written.
fn split_words(sql: &str) -> Vec<Vec<String>> {
    statements(sql).map(first_words).filter(|words| !words.is_empty()).collect()
}

fn first_words(statement: &str) -> Vec<String> {
    let mut words: Vec<String> = Vec::new();
    let mut tokens = tokens(statement).peekable();
    // After `name.`: the next name continues the last word (e.g. `myapp.setting`).
    let mut continues_word = false;
    while let Some(token) = tokens.next() {
        let is_name = matches!(token, Token::Ident(_));
        let word = match token {
            Token::Ident(ident) => ident.name().into_owned(),
            Token::Literal(text) if text.starts_with('$') => "$".to_owned(),
            Token::Literal(_) => "'".to_owned(),
            Token::Number(text) | Token::Param(text) => text.to_owned(),
            Token::Punct(c) => c.to_string(),
        };
        if let (true, Some(last)) = (continues_word && is_name, words.last_mut()) {
            last.push('.');
            last.push_str(&word);
        } else if words.len() == WORDS {
            break;
        } else {
            words.push(word);
        }
        continues_word = is_name && tokens.next_if(|t| t.is_punct('.')).is_some();
    }
    words
}

#[cfg(test)]
mod tests {
    use super::StateCommand::*;
    use super::*;

    fn set(n: &str) -> StateCommand {
        Set(n.into())
    }

    #[test]
    fn finds_set_and_reset_targets() {
        assert_eq!(state_commands("SET work_mem = '8MB'"), [set("work_mem")]);
        assert_eq!(state_commands("set session Search_Path to a, b"), [set("search_path")]);
        assert_eq!(state_commands("SET TIME ZONE 'UTC'"), [set("timezone")]);
        assert_eq!(state_commands("SET SCHEMA 'x'"), [set("search_path")]);
        assert_eq!(state_commands("SET NAMES 'UTF8'"), [set("client_encoding")]);
        assert_eq!(state_commands("SET myapp.tenant = 42"), [set("myapp.tenant")]);
        assert_eq!(state_commands("SET \"DateStyle\" = 'ISO'"), [set("DateStyle")]);
        assert_eq!(state_commands("SET ROLE admin"), [set("role")]);
        assert_eq!(state_commands("SET SESSION AUTHORIZATION bob"), [set("session_authorization")]);
        assert_eq!(state_commands("RESET work_mem"), [Reset("work_mem".into())]);
        assert_eq!(state_commands("reset all"), [ResetAll]);
    }

    #[test]
    fn statements_without_a_state_keyword_are_skipped_without_lexing() {
        let queries = [
            "SELECT abalance FROM pgbench_accounts WHERE aid = 1",
            "select 1; select 2",
            "INSERT INTO t VALUES ('x'); UPDATE t SET a = 1",
            "/* SET x = 1 */ SELECT 1",
            "  select 1 ;  ",
            "(SELECT 1) UNION (SELECT 2)",
            "SELECT ';'",
            "reset work_mem;",
            "SET x = 1",
            "SeLeCt 1; dIsCaRd AlL",
            "CREATE TEMP TABLE t (a int)",
            "LISTEN chan; PREPARE p AS SELECT 1; DECLARE c CURSOR FOR SELECT 1",
            "",
        ];
        for q in queries {
            let lexed: Vec<StateCommand> = split_words(q).iter().map(|w| classify(w)).collect();
            let quick = state_commands(q);
            // Skipped only when lexing finds nothing but `Other`; otherwise the same answer.
            if quick.is_empty() {
                assert!(lexed.iter().all(|c| *c == Other), "{q}: {lexed:?}");
            } else {
                assert_eq!(quick, lexed, "{q}");
            }
        }
        assert!(state_commands("SELECT abalance FROM pgbench_accounts WHERE aid = 1").is_empty());
        assert_eq!(state_commands("SeLeCt 1; dIsCaRd AlL"), [Other, DiscardAll]);
        assert!(calls_session_state_function("SELECT PG_Advisory_Lock(1)"));
        assert!(!calls_session_state_function("SELECT pg_advisory_xact_lock(1)"));
    }

    #[test]
    fn transaction_scoped_and_other_statements_are_other() {
        assert_eq!(state_commands("SET LOCAL work_mem = '8MB'"), [Other]);
        assert_eq!(state_commands("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE"), [Other]);
        assert_eq!(state_commands("SET CONSTRAINTS ALL DEFERRED"), [Other]);
        assert_eq!(state_commands("select 'SET work_mem = 1'; select 2"), [Other, Other]);
        assert_eq!(state_commands("update settings set x = 1; select 1"), [Other, Other]);
        assert!(state_commands("update settings set x = 1").is_empty());
    }

    #[test]
    fn splits_statements_outside_quotes_and_comments() {
        let sql =
            "select ';' as a, $x$ ; SET y = 1 $x$; /* ; set z=1 */ SET a.b = 'x;y' -- ; set q = 1\n; DISCARD ALL;";
        assert_eq!(state_commands(sql), [Other, set("a.b"), DiscardAll]);
        assert_eq!(state_commands("select E'\\'; set x = 1'; set y to 2"), [Other, set("y")]);
        assert_eq!(state_commands("select \"a;b\"; reset  work_mem ;;"), [Other, Reset("work_mem".into())]);
        assert_eq!(state_commands("select $1; set w = 1"), [Other, set("w")]);
        assert!(state_commands("  ;  -- only a comment").is_empty());
    }

    #[test]
    fn finds_state_that_cannot_be_carried() {
        for sql in [
            "CREATE TEMP TABLE t(x int)",
            "create temporary table t as select 1",
            "CREATE GLOBAL TEMPORARY TABLE t(x int)",
            "create or replace temp view v as select 1",
            "LISTEN channel",
            "PREPARE q AS SELECT 1",
            "DECLARE c CURSOR WITH HOLD FOR SELECT 1",
        ] {
            assert_eq!(state_commands(sql), [SessionState], "{sql}");
        }
        assert_eq!(state_commands("create table t(x int)"), [Other]);
        assert!(calls_session_state_function("select PG_ADVISORY_LOCK(1)"));
        assert!(calls_session_state_function("select pg_try_advisory_lock_shared(1)"));
        assert!(calls_session_state_function("select set_config('work_mem', '8MB', false)"));
        assert!(!calls_session_state_function("select pg_advisory_xact_lock(1)"));
    }

    #[test]
    fn finds_deallocate() {
        assert_eq!(state_commands("DEALLOCATE s1"), [Deallocate("s1".into())]);
        assert_eq!(state_commands("deallocate prepare \"S1\""), [Deallocate("S1".into())]);
        assert_eq!(state_commands("DEALLOCATE ALL"), [DeallocateAll]);
        assert_eq!(state_commands("DEALLOCATE PREPARE ALL"), [DeallocateAll]);
    }
}

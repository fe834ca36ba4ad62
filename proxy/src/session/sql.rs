//! Just enough SQL lexing to see what a query does to the server session that must follow the
//! client, or must not reach the next client of its server connection: SET, RESET, DISCARD,
//! DEALLOCATE, and state that cannot follow the client (temporary tables, LISTEN, session
//! advisory locks, DO blocks, LOAD…). Statements are split at top-level `;` by the lexer pgvane
//! shares with the admin console and the plugin SDK (`pgvane-sql-lexer`), which skips string
//! literals, dollar quotes, quoted identifiers and comments. The first words of each statement
//! say what it is; a few function calls and `SELECT … INTO TEMP` are found anywhere in it.

use pgvane_sql_lexer::{statements, tokens, Token};

/// A session-state command found in a query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StateCommand {
    /// `SET [SESSION] name …` (not `SET LOCAL`), or `set_config('name', …, false)`: the
    /// setting's value may change.
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
    /// A statement making state that keeps the client on its server connection until the
    /// state is gone (see [`PinReason`]).
    Pin(PinReason),
    /// `LISTEN channel`.
    Listen(String),
    /// `UNLISTEN channel`.
    Unlisten(String),
    /// `UNLISTEN *`.
    UnlistenAll,
    /// A statement leaving state in the server session that cannot follow the client to
    /// another server connection and is not worth keeping it there for: SQL-level PREPARE, a
    /// DO block (whatever its body does), a `set_config` whose name or scope is not a
    /// constant. `DISCARD ALL` removes all of it.
    SessionState,
    /// `LOAD`: a library loaded into the server process, which nothing but closing the
    /// connection unloads.
    Load,
    /// Any other statement.
    Other,
}
/// Session state a client may keep across transactions in the pooled modes: while it holds
/// any, it keeps its server connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum PinReason {
    /// A session advisory lock (`pg_advisory_lock…`, `pg_try_advisory_lock…`).
    AdvisoryLock,
    /// A temporary table, view or sequence (`CREATE TEMP …`, `SELECT … INTO TEMP`).
    TempTable,
    /// A cursor `WITH HOLD`, which outlives its transaction.
    HoldCursor,
}

impl PinReason {
    /// The name SHOW CLIENTS and the logs use.
    pub fn name(self) -> &'static str {
        match self {
            PinReason::AdvisoryLock => "advisory lock",
            PinReason::TempTable => "temporary table",
            PinReason::HoldCursor => "cursor with hold",
        }
    }
}

/// How many words of a statement are kept: enough for `SET SESSION AUTHORIZATION`.
const WORDS: usize = 4;

/// The session-state command of each statement in `sql`, in order, then what was found inside
/// statements (`set_config`, session advisory locks, `SELECT … INTO TEMP`); empty when `sql`
/// holds none of these (the common case, seen without lexing or allocating).
pub fn state_commands(sql: &str) -> Vec<StateCommand> {
    let hidden = may_hide_state(sql);
    if !hidden && !may_hold_state_command(sql) {
        return Vec::new();
    }
    let mut commands: Vec<StateCommand> = statements(sql)
        .filter_map(|statement| {
            let words = first_words(statement);
            (!words.is_empty()).then(|| classify_statement(statement, &words))
        })
        .collect();
    if hidden {
        commands.extend(hidden_state(sql));
    }
    if commands.iter().all(|c| *c == StateCommand::Other) {
        commands.clear();
    }
    commands
}

/// Every first word [`classify`] gives a meaning to.
const STATE_KEYWORDS: &[&str] =
    &["set", "reset", "discard", "deallocate", "create", "listen", "unlisten", "prepare", "declare", "do", "load"];

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

/// Words that, found anywhere in a statement, may leave session state: `set_config`, the
/// session advisory locks (`pg_advisory_lock…`, `pg_try_advisory_lock…`; the `_xact_` ones end
/// with the transaction), and `into` (`SELECT … INTO TEMP`). Any letter case; a mention in a
/// literal or a longer name matches too, and the lexer then decides.
const HIDING_WORDS: [&str; 3] = ["set_config", "advisory_lock", "into"];

/// True if `sql` may hold one of [`HIDING_WORDS`]: a scan of its bytes, no lexing. It runs
/// on every simple Query, so it looks at each byte once and compares only where one of the
/// words' first letters is (`s`, `a`, `i`, any case).
fn may_hide_state(sql: &str) -> bool {
    let bytes = sql.as_bytes();
    bytes.iter().enumerate().any(|(i, byte)| {
        // ASCII letters only differ from their lower case in bit 0x20.
        matches!(byte | 0x20, b's' | b'a' | b'i')
            && HIDING_WORDS.iter().any(|word| {
                bytes.get(i..i + word.len()).is_some_and(|found| found.eq_ignore_ascii_case(word.as_bytes()))
            })
    })
}

/// What the statements of `sql` do to the session beyond their first words, with the lexer.
fn hidden_state(sql: &str) -> Vec<StateCommand> {
    let tokens: Vec<Token<'_>> = tokens(sql).collect();
    let mut found = Vec::new();
    for (i, token) in tokens.iter().enumerate() {
        let Some(ident) = token.ident().filter(|i| !i.is_quoted()) else { continue };
        let name = ident.name();
        let next = tokens.get(i + 1);
        let called = next.is_some_and(|t| t.is_punct('('));
        match &*name {
            "set_config" if called => match set_config_call(tokens.get(i + 2..).unwrap_or_default()) {
                StateCommand::Other => {}
                command => found.push(command),
            },
            "pg_advisory_lock" | "pg_advisory_lock_shared" | "pg_try_advisory_lock" | "pg_try_advisory_lock_shared"
                if called =>
            {
                found.push(StateCommand::Pin(PinReason::AdvisoryLock))
            }
            "into" => {
                let inserting = i
                    .checked_sub(1)
                    .and_then(|p| tokens.get(p))
                    .is_some_and(|t| t.is_keyword("insert") || t.is_keyword("merge"));
                if !inserting && next.is_some_and(|t| t.is_keyword("temp") || t.is_keyword("temporary")) {
                    found.push(StateCommand::Pin(PinReason::TempTable));
                }
            }
            _ => {}
        }
    }
    found
}

/// `set_config(name, value, is_local)` from the token after its `(`: a constant name with
/// `false` is carried like `SET name`, `true` ends with the transaction, anything else cannot
/// be followed (the connection is reset after it).
fn set_config_call(args: &[Token<'_>]) -> StateCommand {
    let mut arguments: Vec<&[Token<'_>]> = Vec::new();
    let (mut depth, mut start) = (0usize, 0usize);
    for (i, token) in args.iter().enumerate() {
        match token {
            Token::Punct('(' | '[') => depth += 1,
            Token::Punct(')') if depth == 0 => {
                arguments.push(&args[start..i]);
                break;
            }
            Token::Punct(')' | ']') => depth = depth.saturating_sub(1),
            Token::Punct(',') if depth == 0 => {
                arguments.push(&args[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    let [name, _, is_local] = arguments[..] else { return StateCommand::SessionState };
    let name = match name {
        [Token::Literal(text)] => plain_literal(text),
        _ => None,
    };
    let local = match is_local {
        [Token::Ident(word)] if !word.is_quoted() => bool_word(&word.name()),
        [Token::Literal(text)] => plain_literal(text).as_deref().and_then(bool_word),
        _ => None,
    };
    match (name, local) {
        (_, Some(true)) => StateCommand::Other,
        (Some(name), Some(false)) => StateCommand::Set(name.to_ascii_lowercase()),
        _ => StateCommand::SessionState,
    }
}

/// The value of a plain `'…'` literal (no escapes but `''`).
fn plain_literal(text: &str) -> Option<String> {
    let inner = text.strip_prefix('\'')?.strip_suffix('\'')?;
    Some(inner.replace("''", "'"))
}

/// A boolean as PostgreSQL reads one, for the spellings drivers use.
fn bool_word(word: &str) -> Option<bool> {
    match word.to_ascii_lowercase().as_str() {
        "true" | "t" | "on" | "yes" | "1" => Some(true),
        "false" | "f" | "off" | "no" | "0" => Some(false),
        _ => None,
    }
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
        ("create", "temp" | "temporary") => StateCommand::Pin(PinReason::TempTable),
        ("create", "global" | "local") if matches!(w(2), "temp" | "temporary") => {
            StateCommand::Pin(PinReason::TempTable)
        }
        ("create", "or") if matches!(w(3), "temp" | "temporary") => StateCommand::Pin(PinReason::TempTable),
        ("listen", channel) if !channel.is_empty() => StateCommand::Listen(channel.to_owned()),
        ("unlisten", "*") => StateCommand::UnlistenAll,
        ("unlisten", channel) if !channel.is_empty() => StateCommand::Unlisten(channel.to_owned()),
        ("prepare", _) => StateCommand::SessionState,
        ("do", _) => StateCommand::SessionState,
        ("load", _) => StateCommand::Load,
        _ => StateCommand::Other,
    }
}

/// [`classify`], and for `DECLARE` whether the cursor is held past its transaction.
fn classify_statement(statement: &str, words: &[String]) -> StateCommand {
    if words.first().map(String::as_str) != Some("declare") {
        return classify(words);
    }
    // DECLARE name … CURSOR [WITH | WITHOUT HOLD] FOR query: a plain cursor ends with its
    // transaction.
    let mut previous_with = false;
    for token in tokens(statement) {
        if token.is_keyword("for") {
            break;
        }
        if previous_with && token.is_keyword("hold") {
            return StateCommand::Pin(PinReason::HoldCursor);
        }
        previous_with = token.is_keyword("with");
    }
    StateCommand::Other
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
#[cfg(test)]
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
        assert_eq!(state_commands("SELECT PG_Advisory_Lock(1)"), [Other, Pin(PinReason::AdvisoryLock)]);
        assert!(state_commands("SELECT pg_advisory_xact_lock(1)").is_empty());
    }

    #[test]
    fn transaction_scoped_and_other_statements_are_other() {
        assert!(state_commands("SET LOCAL work_mem = '8MB'").is_empty());
        assert!(state_commands("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE").is_empty());
        assert!(state_commands("SET CONSTRAINTS ALL DEFERRED").is_empty());
        assert!(state_commands("select 'SET work_mem = 1'; select 2").is_empty());
        assert!(state_commands("update settings set x = 1; select 1").is_empty());
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
        let temp = Pin(PinReason::TempTable);
        for sql in [
            "CREATE TEMP TABLE t(x int)",
            "create temporary table t as select 1",
            "CREATE GLOBAL TEMPORARY TABLE t(x int)",
            "create or replace temp view v as select 1",
        ] {
            assert_eq!(state_commands(sql), std::slice::from_ref(&temp), "{sql}");
        }
        assert!(state_commands("SELECT 1 AS a INTO TEMP t").contains(&temp));
        assert!(state_commands("with x as (select 1) select * into temporary table t from x").contains(&temp));
        assert_eq!(state_commands("DECLARE c CURSOR WITH HOLD FOR SELECT 1"), [Pin(PinReason::HoldCursor)]);
        assert_eq!(
            state_commands("declare c no scroll cursor with hold for select 'with hold'"),
            [Pin(PinReason::HoldCursor)]
        );
        assert!(state_commands("DECLARE c CURSOR WITHOUT HOLD FOR SELECT 1 with hold").is_empty());
        assert!(state_commands("DECLARE c CURSOR FOR SELECT 1").is_empty(), "ends with its transaction");
        assert!(state_commands("select PG_ADVISORY_LOCK(1)").contains(&Pin(PinReason::AdvisoryLock)));
        assert!(
            state_commands("select pg_catalog.pg_try_advisory_lock_shared(1)").contains(&Pin(PinReason::AdvisoryLock))
        );
        assert_eq!(state_commands("LISTEN channel"), [Listen("channel".into())]);
        assert_eq!(
            state_commands("listen \"Chan\"; unlisten x; UNLISTEN *"),
            [Listen("Chan".into()), Unlisten("x".into()), UnlistenAll]
        );
        assert_eq!(state_commands("PREPARE q AS SELECT 1"), [SessionState]);
        assert!(state_commands("create table t(x int)").is_empty());
        for sql in [
            "DO $$ BEGIN SET search_path = x; END $$",
            "do language plpgsql $$ begin perform 1; end $$",
            "select set_config(current_user, 'x', false)",
            "select set_config('work_mem', '8MB', $1)",
        ] {
            assert!(state_commands(sql).contains(&SessionState), "{sql}");
        }
        assert_eq!(state_commands("LOAD 'auto_explain'"), [Load]);
        assert!(state_commands("select pg_advisory_xact_lock(1)").is_empty());
        assert!(state_commands("insert into temp values (1)").is_empty(), "a table named temp");
        assert!(state_commands("select 1 into t").is_empty(), "SELECT INTO a table is not session state");
    }

    #[test]
    fn set_config_is_carried_like_set() {
        assert_eq!(state_commands("select set_config('Work_Mem', '8MB', false)"), [Other, set("work_mem")]);
        assert_eq!(
            state_commands("SELECT 1, pg_catalog.set_config('search_path', 'a, b', 'off'), now()"),
            [Other, set("search_path")]
        );
        assert_eq!(
            state_commands("select set_config('a.b', f(1, 2), FALSE); set x = 1"),
            [Other, set("x"), set("a.b")]
        );
        assert!(state_commands("select set_config('work_mem', '8MB', true)").is_empty(), "local to the transaction");
        assert!(state_commands("select 'set_config(1)'").is_empty(), "a mention in a literal");
    }

    #[test]
    fn finds_deallocate() {
        assert_eq!(state_commands("DEALLOCATE s1"), [Deallocate("s1".into())]);
        assert_eq!(state_commands("deallocate prepare \"S1\""), [Deallocate("S1".into())]);
        assert_eq!(state_commands("DEALLOCATE ALL"), [DeallocateAll]);
        assert_eq!(state_commands("DEALLOCATE PREPARE ALL"), [DeallocateAll]);
    }
}

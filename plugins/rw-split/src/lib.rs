//! rw-split: read/write splitting. Statements that only read go to a replica; writes, and
//! transactions not declared READ ONLY, go to the primary.
//!
//! What the plugin can know is limited to the statement in front of it and the `in_transaction`
//! flag (see README.md): it classifies each statement lexically (with the SDK's SQL lexer, so
//! comments and literals cannot fool it), and inside a transaction it passes, because the
//! transaction already runs where its BEGIN was routed and pgvane ignores a differing route
//! there.

use pgvane_sdk::sql::{self, Token};
use pgvane_sdk::{host, Config, Context, Policy, Verdict};
use serde::Deserialize;

/// Functions that write or keep session state, so a `SELECT` calling them needs the primary.
pub const DEFAULT_WRITE_FUNCTIONS: &[&str] = &[
    // Sequences: nextval/setval write; currval/lastval read this session's last nextval.
    "nextval",
    "setval",
    "currval",
    "lastval",
    // Advisory locks are held by the server connection that took them.
    "pg_advisory_lock",
    "pg_advisory_lock_shared",
    "pg_advisory_unlock",
    "pg_advisory_unlock_shared",
    "pg_advisory_unlock_all",
    "pg_advisory_xact_lock",
    "pg_advisory_xact_lock_shared",
    "pg_try_advisory_lock",
    "pg_try_advisory_lock_shared",
    "pg_try_advisory_xact_lock",
    "pg_try_advisory_xact_lock_shared",
    // Session state, notifications, transaction IDs.
    "set_config",
    "pg_notify",
    "txid_current",
    "pg_current_xact_id",
    // Large objects.
    "lo_create",
    "lo_creat",
    "lo_import",
    "lo_unlink",
    "lo_put",
    "lo_from_bytea",
    "lo_open",
    "lowrite",
    "lo_truncate",
    "lo_truncate64",
];

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    /// More functions that write (`name` for any schema, `schema.name` for one).
    #[serde(default)]
    write_functions: Vec<String>,
    /// Whether [`DEFAULT_WRITE_FUNCTIONS`] count too.
    #[serde(default = "yes")]
    default_write_functions: bool,
    /// Where reads go: a `[databases]` entry; absent: a replica of the client's database.
    #[serde(default)]
    read_target: Option<String>,
    /// Where writes go: a `[databases]` entry; absent: the primary of the client's database.
    #[serde(default)]
    write_target: Option<String>,
}

fn yes() -> bool {
    true
}

/// What one statement needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Need {
    /// Session or transaction control that can run anywhere (SET, COMMIT, …).
    Anywhere,
    /// Only reads.
    Read,
    /// Writes, locks rows, or starts a read-write transaction.
    Write,
}

/// The policy.
#[derive(Debug)]
pub struct RwSplit {
    write_functions: Vec<String>,
    read: Verdict,
    write: Verdict,
}

impl Policy for RwSplit {
    fn init(config: Config) -> Result<Self, String> {
        let s: Settings = config.parse()?;
        let databases = host::databases();
        let target = |key: &str, t: &Option<String>, default: Verdict| match t {
            Some(db) if databases.iter().any(|d| d == db) => Ok(Verdict::route_to(db.as_str())),
            Some(db) => Err(format!("{key}: `{db}` is not a [databases] entry")),
            None => Ok(default),
        };
        let read = target("read_target", &s.read_target, Verdict::replica())?;
        let write = target("write_target", &s.write_target, Verdict::primary())?;
        let mut write_functions: Vec<String> = s.write_functions.iter().map(|f| f.to_lowercase()).collect();
        if s.default_write_functions {
            write_functions.extend(DEFAULT_WRITE_FUNCTIONS.iter().map(|f| (*f).to_owned()));
        }
        Ok(RwSplit { write_functions, read, write })
    }

    fn decide(&self, ctx: &Context) -> Verdict {
        if ctx.in_transaction {
            // The transaction runs where its first statement went; see the crate docs.
            return Verdict::pass();
        }
        match sql::statements(&ctx.sql).map(|s| self.classify(s)).max() {
            Some(Need::Write) => self.write.clone(),
            Some(Need::Read) => self.read.clone(),
            Some(Need::Anywhere) | None => Verdict::pass(),
        }
    }
}

impl RwSplit {
    /// What one statement needs, from its tokens.
    fn classify(&self, statement: &str) -> Need {
        let tokens: Vec<Token> = sql::tokens(statement).collect();
        let Some(first) = tokens.first().and_then(Token::ident).filter(|i| !i.is_quoted()) else {
            // `(SELECT …)` and other odd starts: be safe.
            return if tokens.first().is_some_and(|t| t.is_punct('(')) {
                self.read_unless_writes(&tokens)
            } else {
                Need::Write
            };
        };
        match first.name().as_ref() {
            "select" | "values" | "table" | "with" => self.read_unless_writes(&tokens),
            "show" => Need::Read,
            "explain" => {
                let analyze = tokens.iter().take(8).any(|t| t.is_keyword("analyze") || t.is_keyword("analyse"));
                if analyze {
                    self.read_unless_writes(&tokens)
                } else {
                    Need::Read
                }
            }
            "begin" | "start" => {
                if has_sequence(&tokens, &["read", "only"]) {
                    Need::Read
                } else {
                    Need::Write
                }
            }
            "copy" => {
                // COPY … TO reads, COPY … FROM writes; look outside parentheses only.
                if depth_zero(&tokens).any(|t| t.is_keyword("to")) {
                    self.read_unless_writes(&tokens)
                } else {
                    Need::Write
                }
            }
            "commit" | "end" | "rollback" | "abort" | "savepoint" | "release" | "set" | "reset" | "discard"
            | "close" | "fetch" | "move" | "listen" | "unlisten" | "deallocate" => Need::Anywhere,
            _ => Need::Write,
        }
    }

    /// Read, unless the tokens show a write: a data-modifying keyword (as in a data-modifying
    /// WITH, SELECT … INTO, or EXPLAIN ANALYZE of a write), a row lock (FOR UPDATE/SHARE), or a
    /// call to a write function.
    fn read_unless_writes(&self, tokens: &[Token]) -> Need {
        const WRITE_KEYWORDS: &[&str] =
            &["insert", "update", "delete", "merge", "into", "create", "drop", "alter", "truncate"];
        for (i, t) in tokens.iter().enumerate() {
            let Some(ident) = t.ident() else { continue };
            if ident.is_quoted() {
                if self.is_write_call(tokens, i) {
                    return Need::Write;
                }
                continue;
            }
            let word = ident.name();
            if WRITE_KEYWORDS.contains(&word.as_ref()) {
                // `FOR UPDATE` is caught here too; `ON CONFLICT … UPDATE` can only follow INSERT.
                return Need::Write;
            }
            if word == "for"
                && tokens.get(i + 1).is_some_and(|n| n.is_keyword("share") || n.is_keyword("no") || n.is_keyword("key"))
            {
                return Need::Write;
            }
            if self.is_write_call(tokens, i) {
                return Need::Write;
            }
        }
        Need::Read
    }

    /// True when `tokens[i]` is the name of a call `name(` or `schema.name(` to a write function.
    fn is_write_call(&self, tokens: &[Token], i: usize) -> bool {
        if !tokens.get(i + 1).is_some_and(|t| t.is_punct('(')) {
            return false;
        }
        let Some(name) = tokens.get(i).and_then(Token::ident).map(|n| n.name()) else { return false };
        let schema = match (i.checked_sub(2).and_then(|j| tokens.get(j)), i.checked_sub(1).and_then(|j| tokens.get(j)))
        {
            (Some(Token::Ident(s)), Some(dot)) if dot.is_punct('.') => Some(s.name()),
            _ => None,
        };
        self.write_functions.iter().any(|f| match f.split_once('.') {
            Some((fs, fname)) => fname == name && schema.as_deref() == Some(fs),
            None => *f == name,
        })
    }
}

/// True when the unquoted keywords `words` appear consecutively in `tokens`.
fn has_sequence(tokens: &[Token], words: &[&str]) -> bool {
    tokens.windows(words.len()).any(|w| w.iter().zip(words).all(|(t, k)| t.is_keyword(k)))
}

/// The tokens outside parentheses.
fn depth_zero<'t, 'a>(tokens: &'t [Token<'a>]) -> impl Iterator<Item = &'t Token<'a>> {
    let mut depth = 0usize;
    tokens.iter().filter(move |t| {
        if t.is_punct('(') {
            depth += 1;
        } else if t.is_punct(')') {
            depth = depth.saturating_sub(1);
        } else {
            return depth == 0;
        }
        false
    })
}

pgvane_sdk::export!(RwSplit);

#[cfg(test)]
mod tests {
    use super::*;
    use pgvane_sdk::testing::set_databases;

    fn policy(json: &str) -> RwSplit {
        set_databases(&["app", "app_ro", "app_rw"]);
        RwSplit::init(Config::from_json(json)).unwrap()
    }

    fn q(p: &RwSplit, sql: &str) -> Verdict {
        p.decide(&Context::query(sql).with_database("app"))
    }

    #[test]
    fn reads_go_to_a_replica_writes_to_the_primary() {
        let p = policy("{}");
        for read in [
            "SELECT * FROM t",
            "select count(*) from t where note = 'insert into x' -- update\n",
            "WITH r AS (SELECT 1) SELECT * FROM r",
            "VALUES (1), (2)",
            "TABLE t",
            "SHOW search_path",
            "EXPLAIN DELETE FROM t",
            "COPY (SELECT * FROM t) TO STDOUT",
            "(SELECT 1) UNION (SELECT 2)",
            "SELECT \"update\" FROM t",
        ] {
            assert_eq!(q(&p, read), Verdict::replica(), "{read}");
        }
        for write in [
            "INSERT INTO t VALUES (1)",
            "update t set a = 1",
            "DELETE FROM t",
            "MERGE INTO t USING s ON t.id = s.id WHEN MATCHED THEN DELETE",
            "WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d",
            "SELECT * INTO t2 FROM t",
            "SELECT * FROM t FOR UPDATE",
            "SELECT * FROM t FOR NO KEY UPDATE",
            "SELECT * FROM t FOR SHARE",
            "EXPLAIN ANALYZE INSERT INTO t VALUES (1)",
            "CREATE TABLE x (a int)",
            "COPY t FROM STDIN",
            "CALL proc()",
            "DO $$ BEGIN PERFORM 1; END $$",
            "LOCK TABLE t",
            "VACUUM t",
            "PREPARE p AS SELECT 1",
            "\"weird\"",
        ] {
            assert_eq!(q(&p, write), Verdict::primary(), "{write}");
        }
    }

    #[test]
    fn write_functions_send_selects_to_the_primary() {
        let p = policy(r#"{"write_functions": ["audit.log_access", "Touch"]}"#);
        assert_eq!(q(&p, "SELECT nextval('s')"), Verdict::primary());
        assert_eq!(q(&p, "SELECT pg_catalog.NEXTVAL('s')"), Verdict::primary());
        assert_eq!(q(&p, "SELECT pg_advisory_lock(1)"), Verdict::primary());
        assert_eq!(q(&p, "SELECT touch(id) FROM t"), Verdict::primary());
        assert_eq!(q(&p, "SELECT audit.log_access(1)"), Verdict::primary());
        assert_eq!(q(&p, "SELECT other.log_access(1)"), Verdict::replica(), "schema-qualified entry");
        assert_eq!(q(&p, "SELECT 'nextval(1)', nextval FROM t"), Verdict::replica(), "a literal and a column");
        let p = policy(r#"{"default_write_functions": false}"#);
        assert_eq!(q(&p, "SELECT nextval('s')"), Verdict::replica());
    }

    #[test]
    fn transactions() {
        let p = policy("{}");
        assert_eq!(q(&p, "BEGIN"), Verdict::primary());
        assert_eq!(q(&p, "START TRANSACTION ISOLATION LEVEL REPEATABLE READ"), Verdict::primary());
        assert_eq!(q(&p, "BEGIN READ WRITE"), Verdict::primary());
        assert_eq!(q(&p, "BEGIN ISOLATION LEVEL SERIALIZABLE, READ ONLY, DEFERRABLE"), Verdict::replica());
        assert_eq!(q(&p, "begin read only; select 1; commit"), Verdict::replica());
        assert_eq!(q(&p, "BEGIN; SELECT 1; COMMIT"), Verdict::primary());
        assert_eq!(q(&p, "SELECT 1; INSERT INTO t VALUES (1)"), Verdict::primary());
        // Inside a transaction: stay where the transaction runs.
        let inside = Context::query("SELECT 1").in_transaction(true);
        assert_eq!(p.decide(&inside), Verdict::pass());
        let inside = Context::query("INSERT INTO t VALUES (1)").in_transaction(true);
        assert_eq!(p.decide(&inside), Verdict::pass());
        // Transaction and session control has no preference.
        for sql in ["COMMIT", "ROLLBACK", "SET search_path = x", "RESET ALL", "DISCARD ALL", "", "  ;  "] {
            assert_eq!(q(&p, sql), Verdict::pass(), "{sql}");
        }
    }

    #[test]
    fn parse_messages_are_classified_too() {
        let p = policy("{}");
        assert_eq!(p.decide(&Context::parse("s1", "SELECT * FROM t WHERE id = $1")), Verdict::replica());
        assert_eq!(p.decide(&Context::parse("", "UPDATE t SET a = $1")), Verdict::primary());
    }

    #[test]
    fn named_targets() {
        let p = policy(r#"{"read_target": "app_ro", "write_target": "app_rw"}"#);
        assert_eq!(q(&p, "SELECT 1"), Verdict::route_to("app_ro"));
        assert_eq!(q(&p, "DELETE FROM t"), Verdict::route_to("app_rw"));
        set_databases(&["app"]);
        let e = RwSplit::init(Config::from_json(r#"{"read_target": "app_ro"}"#)).unwrap_err();
        assert_eq!(e, "read_target: `app_ro` is not a [databases] entry");
        let e = RwSplit::init(Config::from_json(r#"{"write_funcs": []}"#)).unwrap_err();
        assert!(e.starts_with("invalid config: write_funcs: unknown field"), "{e}");
    }
}

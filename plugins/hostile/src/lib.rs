//! TEST FIXTURE, NOT AN EXAMPLE. A pgvane plugin that misbehaves on demand, for the host's tests
//! of fuel, memory and time limits, traps, `on_error`, and verdict validation.
//!
//! The `[plugins.config]` table picks the misbehaviour; see README.md for the list:
//!
//! ```toml
//! [plugins.config]
//! behaviour = "loop"     # what to do
//! phase = "decide"       # in `decide` (default) or in `init`
//! after_calls = 0        # behave (pass) for this many decide calls of an instance first
//! ```

use pgvane_sdk::{log, Config, Context, Policy, Verdict};
use serde::Deserialize;
use std::cell::Cell;
use std::hint::black_box;

/// What the fixture does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Behaviour {
    /// Behave: pass every statement.
    Pass,
    /// Loop forever (runs out of fuel or hits the deadline).
    Loop,
    /// Allocate and touch memory 1 MiB at a time until allocation fails (traps).
    MemoryBomb,
    /// Panic (traps).
    Panic,
    /// Busy-loop for `slow_ms` milliseconds of wall-clock time, then pass.
    Slow,
    /// Refuse the config in `init` (`phase` is ignored).
    RefuseInit,
    /// Route to `database` (default `no_such_database`), which is not a `[databases]` entry.
    UnknownDatabase,
    /// Reject with the SQLSTATE `sqlstate` (default `XX0`, invalid).
    InvalidSqlstate,
    /// Rewrite to SQL containing a NUL character, which the protocol cannot carry.
    NulInSql,
    /// Reject with a message containing a NUL character.
    NulInMessage,
    /// Rewrite to the empty string.
    EmptyRewrite,
    /// Rewrite to `huge_bytes` bytes of SQL (default 4 MiB; about 2M fuel per MiB).
    HugeRewrite,
    /// Log a `huge_bytes` message with `huge_fields` fields (default 1000), then pass.
    HugeLog,
    /// Rewrite to `SELECT '<the context as JSON>' AS context` so a test can read what the
    /// host passed.
    Echo,
    /// Rewrite to `SELECT <n> AS calls`, n counting this instance's decide calls (1 for the
    /// first): shows whether the host reused or replaced an instance.
    Count,
}

/// Where the misbehaviour happens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    /// In `init`.
    Init,
    /// In `decide`.
    #[default]
    Decide,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    behaviour: Behaviour,
    #[serde(default)]
    phase: Phase,
    #[serde(default)]
    after_calls: u64,
    #[serde(default = "default_slow_ms")]
    slow_ms: u64,
    #[serde(default = "default_huge_bytes")]
    huge_bytes: usize,
    #[serde(default = "default_huge_fields")]
    huge_fields: usize,
    #[serde(default = "default_database")]
    database: String,
    #[serde(default = "default_sqlstate")]
    sqlstate: String,
}

fn default_slow_ms() -> u64 {
    50
}
fn default_huge_bytes() -> usize {
    4 << 20
}
fn default_huge_fields() -> usize {
    1000
}
fn default_database() -> String {
    "no_such_database".to_owned()
}
fn default_sqlstate() -> String {
    "XX0".to_owned()
}

/// The fixture.
#[derive(Debug)]
pub struct Hostile {
    settings: Settings,
    calls: Cell<u64>,
}

impl Policy for Hostile {
    fn init(config: Config) -> Result<Self, String> {
        let settings: Settings = config.parse()?;
        if settings.behaviour == Behaviour::RefuseInit {
            return Err("hostile fixture: config refused on purpose".to_owned());
        }
        let hostile = Hostile { settings, calls: Cell::new(0) };
        if hostile.settings.phase == Phase::Init {
            // Only what can happen in init: the verdict is dropped.
            let _ = hostile.misbehave(&Context::query(""));
        }
        Ok(hostile)
    }

    fn decide(&self, ctx: &Context) -> Verdict {
        let n = self.calls.get() + 1;
        self.calls.set(n);
        if self.settings.phase == Phase::Init || n <= self.settings.after_calls {
            return Verdict::pass();
        }
        self.misbehave(ctx)
    }
}

impl Hostile {
    #[allow(clippy::panic)]
    fn misbehave(&self, ctx: &Context) -> Verdict {
        let s = &self.settings;
        match s.behaviour {
            Behaviour::Pass | Behaviour::RefuseInit => Verdict::pass(),
            Behaviour::Loop => {
                let mut i: u64 = 0;
                loop {
                    i = black_box(i.wrapping_add(1));
                }
            }
            Behaviour::MemoryBomb => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![0xA5; 1 << 20]);
                    black_box(&hoard);
                }
            }
            Behaviour::Panic => panic!("hostile fixture: panic on purpose"),
            Behaviour::Slow => {
                let start = std::time::Instant::now();
                let deadline = std::time::Duration::from_millis(s.slow_ms);
                // Bounded, in case the host's clock does not move.
                let mut i: u64 = 0;
                while start.elapsed() < deadline && i < 4_000_000_000 {
                    i = black_box(i + 1);
                }
                Verdict::pass()
            }
            Behaviour::UnknownDatabase => Verdict::route_to(s.database.as_str()),
            Behaviour::InvalidSqlstate => Verdict::reject(s.sqlstate.as_str(), "hostile fixture: invalid SQLSTATE"),
            Behaviour::NulInSql => Verdict::rewrite("SELECT 1\0; DROP TABLE x"),
            Behaviour::NulInMessage => Verdict::reject("42501", "hostile\0fixture"),
            Behaviour::EmptyRewrite => Verdict::rewrite(""),
            Behaviour::HugeRewrite => {
                // One memset, so the fixture tests the host's size check, not its fuel limit.
                let mut sql = "SELECT 1".to_owned();
                sql.push_str(&" ".repeat(s.huge_bytes.saturating_sub(sql.len())));
                Verdict::rewrite(sql)
            }
            Behaviour::HugeLog => {
                let message = "x".repeat(s.huge_bytes);
                let fields: Vec<(String, String)> =
                    (0..s.huge_fields).map(|i| (format!("k{i}"), i.to_string())).collect();
                let refs: Vec<(&str, &dyn std::fmt::Display)> =
                    fields.iter().map(|(k, v)| (k.as_str(), v as &dyn std::fmt::Display)).collect();
                log::log(log::Level::Info, &message, &refs);
                Verdict::pass()
            }
            Behaviour::Echo => Verdict::rewrite(format!("SELECT '{}' AS context", echo_json(ctx).replace('\'', "''"))),
            Behaviour::Count => Verdict::rewrite(format!("SELECT {} AS calls", self.calls.get())),
        }
    }
}

/// The context as a JSON object, with the WIT field names.
fn echo_json(ctx: &Context) -> String {
    let message = match &ctx.message {
        pgvane_sdk::Message::SimpleQuery => serde_json::json!("simple-query"),
        pgvane_sdk::Message::Parse { statement } => serde_json::json!({ "parse": statement }),
    };
    serde_json::json!({
        "user": ctx.user,
        "database": ctx.database,
        "application-name": ctx.application_name,
        "client-addr": ctx.client_addr,
        "session-id": ctx.session_id,
        "sql": ctx.sql,
        "in-transaction": ctx.in_transaction,
        "message": message,
    })
    .to_string()
}

pgvane_sdk::export!(Hostile);

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(json: &str) -> Result<Hostile, String> {
        Hostile::init(Config::from_json(json))
    }

    #[test]
    fn invalid_verdicts() {
        let q = Context::query("SELECT 1");
        assert_eq!(
            fixture(r#"{"behaviour": "unknown-database"}"#).unwrap().decide(&q),
            Verdict::route_to("no_such_database")
        );
        let v = fixture(r#"{"behaviour": "invalid-sqlstate"}"#).unwrap().decide(&q);
        assert_eq!(v.rejection().map(|r| r.sqlstate.as_str()), Some("XX0"));
        assert!(fixture(r#"{"behaviour": "nul-in-sql"}"#).unwrap().decide(&q).sql().unwrap().contains('\0'));
        assert_eq!(fixture(r#"{"behaviour": "empty-rewrite"}"#).unwrap().decide(&q), Verdict::rewrite(""));
        let huge = fixture(r#"{"behaviour": "huge-rewrite", "huge_bytes": 1000}"#).unwrap().decide(&q);
        assert_eq!(huge.sql().map(str::len), Some(1000));
    }

    #[test]
    fn after_calls_and_count() {
        let f = fixture(r#"{"behaviour": "count", "after_calls": 1}"#).unwrap();
        let q = Context::query("SELECT 1");
        assert_eq!(f.decide(&q), Verdict::pass());
        assert_eq!(f.decide(&q), Verdict::rewrite("SELECT 2 AS calls"));
    }

    #[test]
    fn echo_quotes_the_context() {
        let f = fixture(r#"{"behaviour": "echo"}"#).unwrap();
        let v = f.decide(&Context::parse("s1", "SELECT 'x'").with_user("o'brien").with_session_id(7));
        let sql = v.sql().unwrap();
        assert!(sql.starts_with("SELECT '{") && sql.ends_with("}' AS context"), "{sql}");
        let json: serde_json::Value = serde_json::from_str(&sql[8..sql.len() - 12].replace("''", "'")).unwrap();
        assert_eq!(json["user"], "o'brien");
        assert_eq!(json["message"]["parse"], "s1");
        assert_eq!(json["session-id"], 7);
    }

    #[test]
    fn refuse_and_slow() {
        assert_eq!(
            fixture(r#"{"behaviour": "refuse-init"}"#).unwrap_err(),
            "hostile fixture: config refused on purpose"
        );
        assert!(fixture(r#"{"behaviour": "explode"}"#)
            .unwrap_err()
            .starts_with("invalid config: behaviour: unknown variant"));
        let t = std::time::Instant::now();
        assert_eq!(
            fixture(r#"{"behaviour": "slow", "slow_ms": 20}"#).unwrap().decide(&Context::query("")),
            Verdict::pass()
        );
        assert!(t.elapsed() >= std::time::Duration::from_millis(20));
    }
}

//! tenant-guard: rejects statements that touch forbidden tables or match forbidden patterns, per
//! user, with an ErrorResponse whose SQLSTATE is configurable (default `42501`,
//! insufficient_privilege).
//!
//! A lexical guard, not a security boundary: it sees the SQL text only (not views, functions or
//! SQL built at run time inside the server). Use it on top of PostgreSQL's GRANTs and row-level
//! security, never instead of them. See README.md.

use pgvane_sdk::sql::{self, Token};
use pgvane_sdk::{log, Config, Context, Pattern, Policy, Verdict};
use serde::Deserialize;

/// The default SQLSTATE: insufficient_privilege, what PostgreSQL itself sends.
pub const DEFAULT_SQLSTATE: &str = "42501";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleConfig {
    /// Whom the rule applies to; absent: every user.
    #[serde(rename = "usernameRegex", default)]
    username_regex: Option<Pattern>,
    /// Users the rule does not apply to, even if `usernameRegex` matches.
    #[serde(rename = "exceptUsernameRegex", default)]
    except_username_regex: Option<Pattern>,
    /// Forbidden tables: `table` (in any schema) or `schema.table`.
    #[serde(default)]
    tables: Vec<String>,
    /// Forbidden patterns, matched against the whole SQL text.
    #[serde(default)]
    patterns: Vec<Pattern>,
    /// SQLSTATE for this rule; absent: the top-level `sqlstate`.
    #[serde(default)]
    sqlstate: Option<String>,
    /// Message for this rule; `{user}` and `{table}` are replaced.
    #[serde(default)]
    message: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    #[serde(default)]
    rules: Vec<RuleConfig>,
    #[serde(default)]
    sqlstate: Option<String>,
}

/// A forbidden table name.
#[derive(Debug, Clone, PartialEq, Eq)]
struct TableName {
    schema: Option<String>,
    table: String,
}

#[derive(Debug)]
struct Rule {
    username_regex: Option<Pattern>,
    except_username_regex: Option<Pattern>,
    tables: Vec<TableName>,
    patterns: Vec<Pattern>,
    sqlstate: String,
    message: Option<String>,
}

/// The policy.
#[derive(Debug)]
pub struct TenantGuard {
    rules: Vec<Rule>,
}

fn check_sqlstate(key: &str, code: &str) -> Result<(), String> {
    if code.len() == 5 && code.bytes().all(|b| b.is_ascii_digit() || b.is_ascii_uppercase()) {
        Ok(())
    } else {
        Err(format!("{key}: `{code}` is not a SQLSTATE (five digits or upper-case letters)"))
    }
}

impl Policy for TenantGuard {
    fn init(config: Config) -> Result<Self, String> {
        let s: Settings = config.parse()?;
        let default_sqlstate = s.sqlstate.unwrap_or_else(|| DEFAULT_SQLSTATE.to_owned());
        check_sqlstate("sqlstate", &default_sqlstate)?;
        let mut rules = Vec::with_capacity(s.rules.len());
        for (i, r) in s.rules.into_iter().enumerate() {
            let sqlstate = r.sqlstate.unwrap_or_else(|| default_sqlstate.clone());
            check_sqlstate(&format!("rules[{i}].sqlstate"), &sqlstate)?;
            let mut tables = Vec::with_capacity(r.tables.len());
            for (j, t) in r.tables.iter().enumerate() {
                let parts: Vec<&str> = t.split('.').collect();
                let name = match parts.as_slice() {
                    [table] if !table.is_empty() => TableName { schema: None, table: (*table).to_owned() },
                    [schema, table] if !schema.is_empty() && !table.is_empty() => {
                        TableName { schema: Some((*schema).to_owned()), table: (*table).to_owned() }
                    }
                    _ => return Err(format!("rules[{i}].tables[{j}]: `{t}` is not `table` or `schema.table`")),
                };
                tables.push(name);
            }
            if tables.is_empty() && r.patterns.is_empty() {
                return Err(format!("rules[{i}]: needs `tables` or `patterns`"));
            }
            rules.push(Rule {
                username_regex: r.username_regex,
                except_username_regex: r.except_username_regex,
                tables,
                patterns: r.patterns,
                sqlstate,
                message: r.message,
            });
        }
        Ok(TenantGuard { rules })
    }

    fn decide(&self, ctx: &Context) -> Verdict {
        let applies = |r: &Rule| {
            r.username_regex.as_ref().is_none_or(|p| p.is_match(&ctx.user))
                && !r.except_username_regex.as_ref().is_some_and(|p| p.is_match(&ctx.user))
        };
        let mut references: Option<Vec<TableName>> = None;
        for (i, rule) in self.rules.iter().enumerate().filter(|(_, r)| applies(r)) {
            if let Some(p) = rule.patterns.iter().find(|p| p.is_match(&ctx.sql)) {
                log::warn!("statement rejected"; "rule" => i, "pattern" => p.as_str());
                let message = rule.message.as_deref().unwrap_or("statement not allowed for user {user}");
                return Verdict::reject(&rule.sqlstate, fill(message, &ctx.user, ""));
            }
            if rule.tables.is_empty() {
                continue;
            }
            let refs = references.get_or_insert_with(|| table_references(&ctx.sql));
            if let Some(hit) = refs.iter().find(|r| rule.tables.iter().any(|t| forbids(t, r))) {
                log::warn!("statement rejected"; "rule" => i, "table" => hit.table);
                let message = rule.message.as_deref().unwrap_or("permission denied for table {table}");
                return Verdict::reject(&rule.sqlstate, fill(message, &ctx.user, &hit.table));
            }
        }
        Verdict::pass()
    }
}

fn fill(template: &str, user: &str, table: &str) -> String {
    template.replace("{user}", user).replace("{table}", table)
}

/// True when the forbidden name `t` covers the reference `r`. An unqualified name on either side
/// matches any schema: the guard cannot know the search_path, so it errs on refusing.
fn forbids(t: &TableName, r: &TableName) -> bool {
    t.table == r.table && (t.schema.is_none() || r.schema.is_none() || t.schema == r.schema)
}

/// Every name in the SQL as `[schema.]name`: identifiers outside literals and comments, with
/// dotted chains (`a.b.c`) reduced to their last two parts.
fn table_references(sql_text: &str) -> Vec<TableName> {
    let mut out = Vec::new();
    let mut chain: Vec<String> = Vec::new();
    let mut after_dot = false;
    let flush = |chain: &mut Vec<String>, out: &mut Vec<TableName>| {
        if let Some(table) = chain.pop() {
            out.push(TableName { schema: chain.pop(), table });
        }
        chain.clear();
    };
    for t in sql::tokens(sql_text) {
        match t {
            Token::Ident(i) => {
                if !after_dot {
                    flush(&mut chain, &mut out);
                }
                chain.push(i.name().into_owned());
                after_dot = false;
            }
            Token::Punct('.') if !chain.is_empty() => after_dot = true,
            _ => {
                flush(&mut chain, &mut out);
                after_dot = false;
            }
        }
    }
    flush(&mut chain, &mut out);
    out
}

pgvane_sdk::export!(TenantGuard);

#[cfg(test)]
mod tests {
    use super::*;

    fn guard(json: &str) -> TenantGuard {
        TenantGuard::init(Config::from_json(json)).unwrap()
    }

    const CONFIG: &str = r#"{
        "rules": [
            {"usernameRegex": "^tenant_", "tables": ["billing.invoices", "pg_authid", "audit_log"],
             "patterns": ["(?i)\\bpg_read_file\\s*\\(", "(?i)^\\s*DO\\b"]},
            {"exceptUsernameRegex": "^admin$", "tables": ["secrets"], "sqlstate": "P0001",
             "message": "{table} is off limits for {user}"}
        ]
    }"#;

    #[test]
    fn forbidden_tables_are_rejected_for_matching_users() {
        let g = guard(CONFIG);
        let t = |sql: &str| g.decide(&Context::query(sql).with_user("tenant_42"));
        assert_eq!(
            t("SELECT * FROM billing.invoices"),
            Verdict::reject("42501", "permission denied for table invoices")
        );
        assert_eq!(
            t("select * from INVOICES i join x using (id)"),
            Verdict::reject("42501", "permission denied for table invoices")
        );
        assert_eq!(
            t(r#"SELECT * FROM "billing"."invoices""#),
            Verdict::reject("42501", "permission denied for table invoices")
        );
        assert_eq!(
            t("SELECT * FROM pg_catalog.pg_authid"),
            Verdict::reject("42501", "permission denied for table pg_authid")
        );
        assert_eq!(
            t("SELECT 1; DELETE FROM audit_log"),
            Verdict::reject("42501", "permission denied for table audit_log")
        );
        // Other schemas, literals, comments and quoted look-alikes are fine.
        assert_eq!(t("SELECT * FROM sales.invoices"), Verdict::pass());
        assert_eq!(t("SELECT 'billing.invoices' /* audit_log */ FROM t"), Verdict::pass());
        assert_eq!(t(r#"SELECT * FROM "Invoices""#), Verdict::pass());
        // Other users are not concerned by rule 0.
        assert_eq!(g.decide(&Context::query("SELECT * FROM billing.invoices").with_user("app")), Verdict::pass());
    }

    #[test]
    fn patterns_and_per_rule_sqlstate() {
        let g = guard(CONFIG);
        let t = |user: &str, sql: &str| g.decide(&Context::parse("", sql).with_user(user));
        assert_eq!(
            t("tenant_1", "SELECT pg_read_file ('/etc/passwd')"),
            Verdict::reject("42501", "statement not allowed for user tenant_1")
        );
        assert_eq!(
            t("tenant_1", "do $$ begin perform 1; end $$"),
            Verdict::reject("42501", "statement not allowed for user tenant_1")
        );
        assert_eq!(t("bob", "SELECT * FROM secrets"), Verdict::reject("P0001", "secrets is off limits for bob"));
        assert_eq!(t("admin", "SELECT * FROM secrets"), Verdict::pass());
    }

    #[test]
    fn global_sqlstate_and_bad_configs() {
        let g = guard(r#"{"sqlstate": "28000", "rules": [{"tables": ["t"]}]}"#);
        assert_eq!(g.decide(&Context::query("TABLE t")).rejection().map(|r| r.sqlstate.as_str()), Some("28000"));
        let bad = |json: &str| TenantGuard::init(Config::from_json(json)).unwrap_err();
        assert_eq!(
            bad(r#"{"sqlstate": "4250"}"#),
            "sqlstate: `4250` is not a SQLSTATE (five digits or upper-case letters)"
        );
        assert_eq!(
            bad(r#"{"rules": [{"tables": ["t"], "sqlstate": "abcde"}]}"#),
            "rules[0].sqlstate: `abcde` is not a SQLSTATE (five digits or upper-case letters)"
        );
        assert_eq!(
            bad(r#"{"rules": [{"tables": ["a.b.c"]}]}"#),
            "rules[0].tables[0]: `a.b.c` is not `table` or `schema.table`"
        );
        assert_eq!(bad(r#"{"rules": [{"usernameRegex": "x"}]}"#), "rules[0]: needs `tables` or `patterns`");
    }

    #[test]
    fn references_are_reduced_to_schema_and_table() {
        let names: Vec<String> = table_references("SELECT a.b.c, d . e, f FROM g")
            .into_iter()
            .map(|t| format!("{}.{}", t.schema.unwrap_or_default(), t.table))
            .collect();
        assert_eq!(
            names,
            ["select", "b.c", "d.e", "f", "from", "g"].map(|s| if s.contains('.') {
                s.to_owned()
            } else {
                format!(".{s}")
            })
        );
    }
}

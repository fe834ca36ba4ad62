//! regex-router: pgbouncer-rr's routing table as a pgvane policy.
//!
//! The config is a list of rules `{ usernameRegex, queryRegex, dbkey }` and an optional
//! `default` dbkey. For each statement the first rule whose `usernameRegex` matches the user and
//! whose `queryRegex` matches the SQL routes it to the `[databases]` entry `dbkey`; when no rule
//! matches, the statement goes to `default`, or passes unchanged when there is none. Patterns are
//! unanchored (Python's `re.search`), as in pgbouncer-rr. See README.md.

use pgvane_sdk::{host, log, Config, Context, Pattern, Policy, Verdict};
use serde::Deserialize;

/// One row of the routing table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Rule {
    /// Matches the user name; absent: any user.
    #[serde(rename = "usernameRegex", default)]
    username_regex: Option<Pattern>,
    /// Matches the SQL; absent: any statement.
    #[serde(rename = "queryRegex", default)]
    query_regex: Option<Pattern>,
    /// The `[databases]` entry to route to.
    dbkey: String,
}

/// The routing table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RoutingTable {
    /// The rules, first match wins (`route` is accepted too, pgbouncer-rr's name).
    #[serde(alias = "route", default)]
    rules: Vec<Rule>,
    /// Where unmatched statements go; absent or null: they pass unchanged.
    #[serde(default)]
    default: Option<String>,
}

/// The policy: the checked routing table.
#[derive(Debug)]
pub struct RegexRouter {
    table: RoutingTable,
}

impl Policy for RegexRouter {
    fn init(config: Config) -> Result<Self, String> {
        let table: RoutingTable = config.parse()?;
        let databases = host::databases();
        let unknown = |dbkey: &str| !databases.iter().any(|d| d == dbkey);
        for (i, rule) in table.rules.iter().enumerate() {
            if unknown(&rule.dbkey) {
                return Err(format!("rules[{i}].dbkey: `{}` is not a [databases] entry", rule.dbkey));
            }
        }
        if let Some(dbkey) = &table.default {
            if unknown(dbkey) {
                return Err(format!("default: `{dbkey}` is not a [databases] entry"));
            }
        }
        log::info!("routing table loaded"; "rules" => table.rules.len(), "default" => table.default.as_deref().unwrap_or("-"));
        Ok(RegexRouter { table })
    }

    fn decide(&self, ctx: &Context) -> Verdict {
        let matches = |p: &Option<Pattern>, text: &str| p.as_ref().is_none_or(|p| p.is_match(text));
        self.table
            .rules
            .iter()
            .find(|r| matches(&r.username_regex, &ctx.user) && matches(&r.query_regex, &ctx.sql))
            .map(|r| r.dbkey.as_str())
            .or(self.table.default.as_deref())
            .map_or(Verdict::Pass, Verdict::route_to)
    }
}

pgvane_sdk::export!(RegexRouter);

#[cfg(test)]
mod tests {
    use super::*;
    use pgvane_sdk::testing::set_databases;

    /// The seed's routing table: tablea on dev.1, tableb on dev.2, default None.
    const SEED: &str = r#"{
        "rules": [
            {"usernameRegex": ".*", "queryRegex": ".*tablea.*", "dbkey": "dev.1"},
            {"usernameRegex": ".*", "queryRegex": ".*tableb.*", "dbkey": "dev.2"}
        ],
        "default": null
    }"#;

    fn router(json: &str) -> Result<RegexRouter, String> {
        set_databases(&["dev", "dev.1", "dev.2"]);
        RegexRouter::init(Config::from_json(json))
    }

    #[test]
    fn seed_routing_table() {
        let r = router(SEED).unwrap();
        let q = |sql: &str| r.decide(&Context::query(sql).with_user("alice").with_database("dev"));
        assert_eq!(q("SELECT * FROM tablea"), Verdict::route_to("dev.1"));
        assert_eq!(q("SELECT * FROM tableb"), Verdict::route_to("dev.2"));
        // First match wins.
        assert_eq!(q("SELECT * FROM tablea JOIN tableb USING (id)"), Verdict::route_to("dev.1"));
        // No match, no default: the client stays where it is.
        assert_eq!(q("SELECT * FROM tablec"), Verdict::pass());
    }

    #[test]
    fn username_rules_and_default() {
        let r = router(
            r#"{"route": [{"usernameRegex": "^etl_", "dbkey": "dev.2"},
                          {"queryRegex": "(?i)\\bfrom\\s+reports\\.", "dbkey": "dev.1"}],
                "default": "dev"}"#,
        )
        .unwrap();
        assert_eq!(r.decide(&Context::query("SELECT 1").with_user("etl_nightly")), Verdict::route_to("dev.2"));
        assert_eq!(
            r.decide(&Context::query("select x FROM Reports.daily").with_user("bob")),
            Verdict::route_to("dev.1")
        );
        assert_eq!(r.decide(&Context::parse("s1", "SELECT 1").with_user("bob")), Verdict::route_to("dev"));
    }

    #[test]
    fn bad_configs_are_refused_with_the_key() {
        let e = router(r#"{"rules": [{"queryRegex": "x", "dbkey": "dev.9"}]}"#).unwrap_err();
        assert_eq!(e, "rules[0].dbkey: `dev.9` is not a [databases] entry");
        let e = router(r#"{"rules": [], "default": "nope"}"#).unwrap_err();
        assert_eq!(e, "default: `nope` is not a [databases] entry");
        let e = router(r#"{"rules": [{"queryRegex": "(", "dbkey": "dev"}]}"#).unwrap_err();
        assert!(e.starts_with("invalid config: rules[0].queryRegex: bad regular expression"), "{e}");
        let e = router(r#"{"rules": [{"queryregex": "x", "dbkey": "dev"}]}"#).unwrap_err();
        assert!(e.starts_with("invalid config: rules[0].queryregex: unknown field"), "{e}");
    }

    #[test]
    fn empty_config_passes_everything() {
        let r = router("{}").unwrap();
        assert_eq!(r.decide(&Context::query("SELECT 1")), Verdict::pass());
    }
}

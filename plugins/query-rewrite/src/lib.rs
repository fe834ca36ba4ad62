//! query-rewrite: regex match/replace rules that rewrite SQL on its way to the server, as in
//! pgbouncer-rr's `rewrite_query`.
//!
//! Config: `rules = [{ queryRegex, replace, usernameRegex? }]`. The first rule whose
//! `usernameRegex` (if any) matches the user and whose `queryRegex` matches the SQL rewrites it:
//! every match of `queryRegex` is replaced by `replace`, where `$1`, `${name}` refer to capture
//! groups and `$$` is a literal `$`. Unmatched statements pass. See README.md.

use pgvane_sdk::{log, Config, Context, Pattern, Policy, Verdict};
use serde::Deserialize;

/// One rewrite rule.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Rule {
    /// Matches the user name; absent: any user.
    #[serde(rename = "usernameRegex", default)]
    username_regex: Option<Pattern>,
    /// What to find in the SQL (`match` is accepted too).
    #[serde(rename = "queryRegex", alias = "match")]
    query_regex: Pattern,
    /// What to replace each match with.
    replace: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    #[serde(default)]
    rules: Vec<Rule>,
}

/// The policy: the compiled rules.
#[derive(Debug)]
pub struct QueryRewrite {
    rules: Vec<Rule>,
}

impl Policy for QueryRewrite {
    fn init(config: Config) -> Result<Self, String> {
        let Settings { rules } = config.parse()?;
        log::info!("rewrite rules loaded"; "rules" => rules.len());
        Ok(QueryRewrite { rules })
    }

    fn decide(&self, ctx: &Context) -> Verdict {
        let rule = self.rules.iter().find(|r| {
            r.username_regex.as_ref().is_none_or(|u| u.is_match(&ctx.user)) && r.query_regex.is_match(&ctx.sql)
        });
        match rule {
            Some(rule) => {
                let sql = rule.query_regex.regex().replace_all(&ctx.sql, rule.replace.as_str());
                if sql == ctx.sql {
                    Verdict::pass()
                } else {
                    Verdict::rewrite(sql)
                }
            }
            None => Verdict::pass(),
        }
    }
}

pgvane_sdk::export!(QueryRewrite);

#[cfg(test)]
mod tests {
    use super::*;

    /// The seed's star-schema example: the two join queries go to the pre-aggregated tables.
    const STAR_SCHEMA: &str = r#"{"rules": [
        {"queryRegex": "^\\s*SELECT storename, SUM\\(total\\) FROM sales JOIN store USING \\(storeid\\) GROUP BY storename ORDER BY storename\\s*;?\\s*$",
         "replace": "SELECT storename, SUM(total) FROM store_sales GROUP BY storename ORDER BY storename;"},
        {"queryRegex": "^\\s*SELECT prodname, SUM\\(total\\) FROM sales JOIN product USING \\(productid\\) GROUP BY prodname ORDER BY prodname\\s*;?\\s*$",
         "replace": "SELECT prodname, SUM(total) FROM product_sales GROUP BY prodname ORDER BY prodname;"}
    ]}"#;

    fn policy(json: &str) -> QueryRewrite {
        QueryRewrite::init(Config::from_json(json)).unwrap()
    }

    #[test]
    fn star_schema_queries_use_the_pre_aggregated_tables() {
        let p = policy(STAR_SCHEMA);
        let q1 =
            "SELECT storename, SUM(total) FROM sales JOIN store USING (storeid) GROUP BY storename ORDER BY storename";
        assert_eq!(
            p.decide(&Context::query(q1)),
            Verdict::rewrite("SELECT storename, SUM(total) FROM store_sales GROUP BY storename ORDER BY storename;")
        );
        let q2 = "SELECT prodname, SUM(total) FROM sales JOIN product USING (productid) GROUP BY prodname ORDER BY prodname;";
        assert_eq!(
            p.decide(&Context::parse("", q2)),
            Verdict::rewrite("SELECT prodname, SUM(total) FROM product_sales GROUP BY prodname ORDER BY prodname;")
        );
        // Anything else passes untouched.
        assert_eq!(p.decide(&Context::query("SELECT storename FROM store")), Verdict::pass());
        assert_eq!(p.decide(&Context::query(format!("{q1} LIMIT 1"))), Verdict::pass());
    }

    #[test]
    fn captures_user_filter_and_first_rule_wins() {
        let p = policy(
            r#"{"rules": [
                {"usernameRegex": "^analyst$", "match": "(?i)\\bFROM\\s+orders\\b", "replace": "FROM orders_recent"},
                {"queryRegex": "(?i)\\bv_all_sales\\b", "replace": "v_sales_30d"},
                {"queryRegex": "(\\w+)_v1\\b", "replace": "${1}_v2"}
            ]}"#,
        );
        let analyst = |sql: &str| p.decide(&Context::query(sql).with_user("analyst"));
        assert_eq!(analyst("select * from orders o"), Verdict::rewrite("select * FROM orders_recent o"));
        assert_eq!(
            p.decide(&Context::query("select * from orders").with_user("app")),
            Verdict::pass(),
            "the first rule is for analyst only"
        );
        assert_eq!(
            analyst("SELECT * FROM v_all_sales, V_ALL_SALES"),
            Verdict::rewrite("SELECT * FROM v_sales_30d, v_sales_30d")
        );
        assert_eq!(analyst("SELECT a_v1, b_v1 FROM t_v1"), Verdict::rewrite("SELECT a_v2, b_v2 FROM t_v2"));
    }

    #[test]
    fn bad_rules_are_refused() {
        let e = QueryRewrite::init(Config::from_json(r#"{"rules": [{"queryRegex": "x"}]}"#)).unwrap_err();
        assert_eq!(e, "invalid config: rules[0]: missing field `replace`");
        let e =
            QueryRewrite::init(Config::from_json(r#"{"rules": [{"queryRegex": "[", "replace": ""}]}"#)).unwrap_err();
        assert!(e.starts_with("invalid config: rules[0].queryRegex: bad regular expression"), "{e}");
    }
}

//! pgbench through pgvane: initialisation, then 10 clients for 5 s in the simple and extended
//! protocols with zero failed transactions.

use pgvane_tests::fixture::{Proxied, APP_DB, APP_PASSWORD, APP_USER};
use pgvane_tests::{describe_output, pgbench};

/// pgbench's summary line "number of failed transactions: N (…)", or the processed count.
fn field(output: &str, prefix: &str) -> Option<u64> {
    let line = output.lines().find(|l| l.starts_with(prefix))?;
    line[prefix.len()..].split_whitespace().next()?.split('/').next()?.parse().ok()
}

#[tokio::test]
async fn pgbench_runs_clean_in_simple_and_extended_mode() -> anyhow::Result<()> {
    let p = Proxied::default_setup().await?;
    let out = pgbench(p.port(), APP_USER, APP_PASSWORD, APP_DB, &["-i", "-s", "2", "-q"])?;
    assert!(out.status.success(), "pgbench -i: {}", describe_output(&out));
    for mode in ["simple", "extended"] {
        let out = pgbench(p.port(), APP_USER, APP_PASSWORD, APP_DB, &["-c", "10", "-j", "2", "-T", "5", "-M", mode])?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(out.status.success(), "pgbench -M {mode}: {}", describe_output(&out));
        let processed = field(&stdout, "number of transactions actually processed: ").expect("no processed count");
        let failed = field(&stdout, "number of failed transactions: ").expect("no failed count");
        assert!(processed > 100, "-M {mode}: only {processed} transactions\n{stdout}");
        assert_eq!(failed, 0, "-M {mode}: failed transactions\n{stdout}");
    }
    // The work really happened on the server.
    let direct = p.direct_superuser().await?;
    let n: i64 = direct.query_one("select count(*) from pgbench_history", &[]).await?.get(0);
    assert!(n > 200, "pgbench_history has {n} rows");
    Ok(())
}

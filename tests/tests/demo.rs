//! The README's demo command keeps working: `pgvane-demo --check` starts two PostgreSQL clusters
//! and pgvane with the example plugins, runs the demo's queries through pgvane and exits 0.

#[test]
fn demo_check_runs_a_query_through_pgvane() -> anyhow::Result<()> {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pgvane-demo")).arg("--check").output()?;
    assert!(out.status.success(), "{}", pgvane_tests::describe_output(&out));
    let stdout = String::from_utf8(out.stdout)?;
    assert!(stdout.contains("through pgvane = 5"), "{stdout}");
    assert!(stdout.contains("tableb is served by the cluster on port"), "routing:\n{stdout}");
    assert!(stdout.contains("rewritten to store_sales"), "rewrite:\n{stdout}");
    assert!(stdout.contains("refused with 42501"), "reject:\n{stdout}");
    assert!(stdout.contains("check: OK"), "{stdout}");
    assert!(stdout.contains("psql -h 127.0.0.1 -p"), "the demo must print the psql line:\n{stdout}");
    Ok(())
}

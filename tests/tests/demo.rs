//! The README's demo command keeps working: `pgvane-demo --check` starts PostgreSQL and pgvane,
//! runs a query through pgvane and exits 0.

#[test]
fn demo_check_runs_a_query_through_pgvane() -> anyhow::Result<()> {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pgvane-demo")).arg("--check").output()?;
    assert!(out.status.success(), "{}", pgvane_tests::describe_output(&out));
    let stdout = String::from_utf8(out.stdout)?;
    assert!(stdout.contains("through pgvane = 5"), "{stdout}");
    assert!(stdout.contains("psql -h 127.0.0.1 -p"), "the demo must print the psql line:\n{stdout}");
    Ok(())
}

//! The command line: `pgvane check` on good and bad configurations, `--help`.

use std::path::Path;
use std::process::Output;

use pgvane_tests::pgvane_bin;

fn pgvane(args: &[&str]) -> anyhow::Result<Output> {
    Ok(std::process::Command::new(pgvane_bin()?).args(args).output()?)
}

fn check(dir: &Path, config: &str) -> anyhow::Result<Output> {
    let path = dir.join("pgvane.toml");
    std::fs::write(&path, config)?;
    pgvane(&["check", "--config", path.to_str().unwrap()])
}

const GOOD: &str = r#"
[pgvane]
listen_port = 6543
auth_type = "scram-sha-256"
auth_file = "userlist.txt"

[databases.app]
host = "127.0.0.1"
port = 5432
"#;

#[test]
fn check_accepts_a_good_config() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    std::fs::write(dir.path().join("userlist.txt"), "\"app\" \"secret\"\n")?;
    let out = check(dir.path(), GOOD)?;
    assert!(out.status.success(), "{}", pgvane_tests::describe_output(&out));
    assert!(String::from_utf8(out.stdout)?.contains("valid"));
    Ok(())
}

#[test]
fn check_names_file_key_and_problem() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    std::fs::write(dir.path().join("userlist.txt"), "\"app\" \"secret\"\n")?;
    let cases: &[(&str, &[&str])] = &[
        // unknown key
        (&GOOD.replace("listen_port", "listen_prot"), &["listen_prot"]),
        // unknown key in a database
        (&format!("{GOOD}hots = \"x\"\n"), &["hots"]),
        // wrong type
        (&GOOD.replace("6543", "\"six\""), &["listen_port"]),
        // bad enum value
        (&GOOD.replace("scram-sha-256", "kerberos"), &["kerberos"]),
        // semantic check
        (&GOOD.replace("port = 5432", "port = 0"), &["databases.app.port"]),
        // missing auth file
        (&GOOD.replace("userlist.txt", "nope.txt"), &["auth_file", "nope.txt"]),
    ];
    for (config, expected) in cases {
        let out = check(dir.path(), config)?;
        let stderr = String::from_utf8(out.stderr.clone())?;
        assert!(!out.status.success(), "accepted:\n{config}");
        assert!(stderr.contains("pgvane.toml"), "no file name in: {stderr}");
        for word in *expected {
            assert!(stderr.contains(word), "{word:?} missing in: {stderr}");
        }
    }
    // A malformed auth file names its line.
    std::fs::write(dir.path().join("userlist.txt"), "\"app\" \"secret\"\n\"broken\n")?;
    let out = check(dir.path(), GOOD)?;
    assert!(!out.status.success());
    assert!(String::from_utf8(out.stderr)?.contains("line 2"));
    Ok(())
}

#[test]
fn check_on_a_missing_file_fails() -> anyhow::Result<()> {
    let out = pgvane(&["check", "--config", "/nonexistent/pgvane.toml"])?;
    assert!(!out.status.success());
    assert!(String::from_utf8(out.stderr)?.contains("/nonexistent/pgvane.toml"));
    Ok(())
}

#[test]
fn help_documents_every_subcommand() -> anyhow::Result<()> {
    let out = pgvane(&["--help"])?;
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout)?;
    for word in ["check", "--config"] {
        assert!(help.contains(word), "{word} missing in --help:\n{help}");
    }
    Ok(())
}

//! The database drivers applications use, run against pgvane: Python's psycopg 3 and asyncpg
//! (from PyPI into target/drivers/venv), Node.js's node-postgres (`pg`) and postgres.js
//! (`postgres`, from npm into target/drivers/node), all installed by tests/drivers/install.sh,
//! which `./dev test` runs; and PgJDBC (Debian's libpostgresql-jdbc-java, which `./dev test`
//! installs), run with the JDK's single-file source launcher.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use anyhow::{Context, Result};

/// Debian's PgJDBC jar (package libpostgresql-jdbc-java).
const PGJDBC_JAR: &str = "/usr/share/java/postgresql.jar";

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Runs tests/drivers/install.sh once per test process (it does nothing when all is installed).
fn install() -> Result<()> {
    static INSTALLED: std::sync::OnceLock<std::result::Result<(), String>> = std::sync::OnceLock::new();
    INSTALLED
        .get_or_init(|| {
            let status = Command::new("bash")
                .arg(root().join("tests/drivers/install.sh"))
                .stdin(Stdio::null())
                .status()
                .map_err(|e| e.to_string())?;
            match status.success() {
                true => Ok(()),
                false => Err(format!("tests/drivers/install.sh failed: {status}")),
            }
        })
        .clone()
        .map_err(anyhow::Error::msg)
}

/// The venv's Python interpreter, installing the drivers first if they are missing.
pub fn python() -> Result<PathBuf> {
    install()?;
    let python = root().join("target/drivers/venv/bin/python");
    anyhow::ensure!(python.exists(), "{} was not installed", python.display());
    Ok(python)
}

/// The directory whose node_modules holds `pg` and `postgres`, installing them first if missing.
pub fn node_dir() -> Result<PathBuf> {
    install()?;
    let dir = root().join("target/drivers/node");
    anyhow::ensure!(dir.join("node_modules/pg").exists(), "{}/node_modules was not installed", dir.display());
    Ok(dir)
}

/// Runs `command` (without blocking the async threads) and returns its output. The child is
/// killed if the future is dropped, so a `tokio::time::timeout` around a run bounds it.
async fn output(mut command: tokio::process::Command, what: &'static str) -> Result<Output> {
    command.stdin(Stdio::null()).kill_on_drop(true).output().await.context(what)
}

/// Runs a Python `script` (with the drivers importable) with `args` and returns its output.
pub async fn run_python(script: &str, args: Vec<String>) -> Result<Output> {
    let mut command = tokio::process::Command::new(python()?);
    command.arg("-c").arg(script).args(args);
    output(command, "running python").await
}

/// Runs a Node.js `script` with `args` (in `process.argv.slice(2)`) and returns its output. The script is an ES module (top-level `await` works) written to a
/// scratch directory beside the drivers' node_modules, so `import pg from 'pg'` and
/// `import postgres from 'postgres'` find them.
pub async fn run_node(script: &str, args: Vec<String>) -> Result<Output> {
    let dir = tempfile::Builder::new().prefix("script-").tempdir_in(node_dir()?)?;
    let path = dir.path().join("script.mjs");
    std::fs::write(&path, script)?;
    let mut command = tokio::process::Command::new("node");
    command.arg(&path).args(args);
    output(command, "running node").await
}

/// Runs a Java `source` file (its first class has `main`) with `args` and PgJDBC on the class
/// path, and returns its output.
pub async fn run_java(source: &str, args: Vec<String>) -> Result<Output> {
    anyhow::ensure!(
        Path::new(PGJDBC_JAR).exists(),
        "{PGJDBC_JAR} is missing: ./dev test installs libpostgresql-jdbc-java"
    );
    let dir = tempfile::Builder::new().prefix("pgvane-java-").tempdir_in(crate::scratch_dir())?;
    let path = dir.path().join("Main.java");
    std::fs::write(&path, source)?;
    let mut command = tokio::process::Command::new("java");
    command.arg("-cp").arg(PGJDBC_JAR).arg(&path).args(args);
    output(command, "running java").await
}

/// Waits for a script's `run` (at most `timeout`), requires it to succeed, and returns what it
/// printed on stdout, trimmed. `what` names the run in errors.
pub async fn observe(
    what: &str,
    timeout: std::time::Duration,
    run: impl std::future::Future<Output = Result<Output>>,
) -> Result<String> {
    let out = tokio::time::timeout(timeout, run).await.with_context(|| format!("{what}: timed out"))??;
    let stdout = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    anyhow::ensure!(
        out.status.success(),
        "{what} failed ({}): {stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(stdout)
}

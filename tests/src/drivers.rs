//! The database drivers applications use, run against pgvane: Python's psycopg 3 (installed
//! from PyPI into target/drivers/venv by tests/drivers/install.sh, which `./dev test` runs).

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

use anyhow::{Context, Result};

/// The venv's Python interpreter, installing the drivers first if they are missing.
pub fn python() -> Result<PathBuf> {
    static INSTALLED: std::sync::OnceLock<std::result::Result<(), String>> = std::sync::OnceLock::new();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let python = root.join("target/drivers/venv/bin/python");
    INSTALLED
        .get_or_init(|| {
            let status = Command::new("bash")
                .arg(root.join("tests/drivers/install.sh"))
                .stdin(Stdio::null())
                .status()
                .map_err(|e| e.to_string())?;
            match status.success() {
                true => Ok(()),
                false => Err(format!("tests/drivers/install.sh failed: {status}")),
            }
        })
        .clone()
        .map_err(anyhow::Error::msg)?;
    anyhow::ensure!(python.exists(), "{} was not installed", python.display());
    Ok(python)
}

/// Runs a Python `script` (with the drivers importable) with `args`, off the async threads,
/// and returns its output.
pub async fn run_python(script: &str, args: Vec<String>) -> Result<Output> {
    let python = python()?;
    let script = script.to_owned();
    tokio::task::spawn_blocking(move || {
        Command::new(python).arg("-c").arg(script).args(args).stdin(Stdio::null()).output()
    })
    .await?
    .context("running python")
}

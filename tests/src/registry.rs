//! A real OCI registry for the plugin distribution tests: Debian's `docker-registry` (the
//! CNCF distribution registry, v2 API) with filesystem storage in a temp dir, listening on a
//! free loopback port, killed on drop (and by a reaper if the test process dies).
//!
//! It can be stopped and started again on the same port with the same storage, to test
//! "registry down" with a warm cache, and its stored blobs can be damaged on purpose, to test
//! digest checking against a registry that serves wrong content.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tempfile::TempDir;

use crate::{describe_output, free_port, kill_reaper, pgvane_bin, scratch_dir, spawn_reaper, stop_child, HOST};

/// The registry program (`apt-get install docker-registry`; `./dev test` installs it).
pub const REGISTRY_BIN: &str = "/usr/bin/docker-registry";

/// How long [`Registry::start`] waits for the registry to answer.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// A running (or stopped) registry.
pub struct Registry {
    child: Option<Child>,
    reaper: Option<Child>,
    port: u16,
    dir: TempDir,
}

impl Registry {
    /// Starts a registry on a free port with empty storage.
    pub async fn start() -> Result<Registry> {
        if !Path::new(REGISTRY_BIN).exists() {
            bail!("{REGISTRY_BIN} is missing: `apt-get install docker-registry` (./dev test installs it)");
        }
        let dir = tempfile::Builder::new()
            .prefix("pgvane-registry-")
            .tempdir_in(scratch_dir())
            .context("creating the registry temp dir")?;
        let mut registry = Registry { child: None, reaper: None, port: 0, dir };
        // The port may be taken between finding and binding it: try a few.
        let mut last = None;
        for _ in 0..5 {
            registry.port = free_port()?;
            match registry.spawn().await {
                Ok(()) => return Ok(registry),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("registry did not start")))
    }

    /// `127.0.0.1:<port>`, as references name it.
    pub fn host(&self) -> String {
        format!("{HOST}:{}", self.port)
    }

    /// The registry's log (its stderr).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    fn config(&self) -> String {
        format!(
            "version: 0.1\nlog:\n  level: info\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\n\
             http:\n  addr: {}\n",
            self.storage().display(),
            self.host()
        )
    }

    /// Where it stores repositories and blobs.
    pub fn storage(&self) -> PathBuf {
        self.dir.path().join("storage")
    }

    /// The file holding blob `digest` (`sha256:<hex>`) in the registry's storage.
    pub fn blob_path(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
        self.storage().join("docker/registry/v2/blobs/sha256").join(&hex[..2]).join(hex).join("data")
    }

    async fn spawn(&mut self) -> Result<()> {
        let config_path = self.dir.path().join("config.yml");
        std::fs::write(&config_path, self.config()).context("writing the registry config")?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("registry.log"))
            .context("creating registry.log")?;
        let mut child = Command::new(REGISTRY_BIN)
            .arg("serve")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0)
            .spawn()
            .with_context(|| format!("spawning {REGISTRY_BIN}"))?;
        match spawn_reaper(child.id(), "KILL", self.dir.path()) {
            Ok(reaper) => self.reaper = Some(reaper),
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(e);
            }
        }
        self.child = Some(child);
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if self.api_ok() {
                return Ok(());
            }
            let exited = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten());
            if exited.is_some() || Instant::now() > deadline {
                self.stop();
                bail!(
                    "docker-registry on {} did not answer /v2/ ({}); its log:\n{}",
                    self.host(),
                    exited.map_or("timed out".to_owned(), |s| s.to_string()),
                    crate::tail(&self.log(), 30)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// True when `GET /v2/` answers 200.
    fn api_ok(&self) -> bool {
        let Ok(mut stream) = TcpStream::connect((HOST, self.port)) else { return false };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
        let request = format!("GET /v2/ HTTP/1.0\r\nHost: {}\r\n\r\n", self.host());
        if stream.write_all(request.as_bytes()).is_err() {
            return false;
        }
        let mut response = String::new();
        let _ = stream.read_to_string(&mut response);
        response.starts_with("HTTP/1.1 200") || response.starts_with("HTTP/1.0 200")
    }

    /// Stops it (nothing listens on its port until [`Registry::restart`]); the storage stays.
    pub fn stop(&mut self) {
        kill_reaper(&mut self.reaper);
        if let Some(mut child) = self.child.take() {
            stop_child(&mut child, "TERM", Duration::from_secs(5));
        }
    }

    /// Starts it again on the same port with the same storage.
    pub async fn restart(&mut self) -> Result<()> {
        self.stop();
        self.spawn().await
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Runs `pgvane <args>` (e.g. `plugin push …`) to completion, with `envs` added.
pub fn pgvane_cli(args: &[&str], envs: &[(&str, &str)]) -> Result<Output> {
    let bin = pgvane_bin()?;
    let mut cmd = Command::new(&bin);
    cmd.args(args).stdin(Stdio::null()).env("NO_COLOR", "1");
    for (key, value) in envs {
        cmd.env(key, value);
    }
    cmd.output().with_context(|| format!("running {} {}", bin.display(), args.join(" ")))
}

/// Runs `pgvane <args>`, which must succeed; returns its stdout, trimmed.
pub fn pgvane_cli_ok(args: &[&str]) -> Result<String> {
    let out = pgvane_cli(args, &[])?;
    if !out.status.success() {
        bail!("pgvane {} failed:\n{}", args.join(" "), describe_output(&out));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

//! A throw-away PgBouncer (Debian's `/usr/sbin/pgbouncer`) in front of a [`PgCluster`], configured
//! like the pgvane it is compared with: same pool mode, pool size, auth type and auth file.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use pgvane_tests::fixture::{APP_DB, APP_PASSWORD, APP_USER};
use pgvane_tests::{connect_via, free_port, scratch_dir, tail};
use tempfile::TempDir;

use crate::PoolMode;

/// Where Debian's package installs PgBouncer.
pub const PGBOUNCER: &str = "/usr/sbin/pgbouncer";

/// How long [`PgBouncer::start_at`] waits for PgBouncer to accept a login.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// A running PgBouncer with its own temp dir (`pgbouncer.ini`, `userlist.txt`, `pgbouncer.log`).
/// Dropping it kills the process and deletes the dir.
pub struct PgBouncer {
    child: Child,
    reaper: Option<Child>,
    port: u16,
    dir: TempDir,
}

impl PgBouncer {
    /// Starts PgBouncer for database `app` on the server at `server_host` (an address, or the
    /// directory of its unix-domain socket: `host=/dir`) and `server_port`, with `userlist` as
    /// its auth file, and waits until `app` can log in through it. PgBouncer refuses to run as
    /// root, so as root it runs as the `postgres` user (which may enter PostgreSQL's socket
    /// directory). Retries on another port if the chosen one was taken meanwhile.
    pub async fn start_at(
        server_host: &str,
        server_port: u16,
        mode: PoolMode,
        pool_size: u32,
        userlist: &str,
    ) -> Result<PgBouncer> {
        let mut last = None;
        for _attempt in 0..5 {
            let port = free_port()?;
            let mut bouncer = Self::launch(server_host, server_port, port, mode, pool_size, userlist)?;
            match bouncer.wait_ready().await {
                Ok(()) => return Ok(bouncer),
                Err(e) if bouncer.log().contains("in use") => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last
            .unwrap_or_else(|| anyhow::anyhow!("no start attempt made"))
            .context("PgBouncer kept hitting ports in use"))
    }

    fn launch(
        server_host: &str,
        server_port: u16,
        port: u16,
        mode: PoolMode,
        pool_size: u32,
        userlist: &str,
    ) -> Result<PgBouncer> {
        let dir = tempfile::Builder::new()
            .prefix("pgvane-bench-pgbouncer-")
            .tempdir_in(scratch_dir())
            .context("creating the PgBouncer temp dir")?;
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755))?;
        let ini = dir.path().join("pgbouncer.ini");
        let auth_file = dir.path().join("userlist.txt");
        fs::write(&ini, config(server_host, server_port, port, mode, pool_size, &auth_file))
            .context("writing pgbouncer.ini")?;
        fs::write(&auth_file, userlist).context("writing userlist.txt")?;
        let log = fs::File::create(dir.path().join("pgbouncer.log")).context("creating pgbouncer.log")?;
        let owner = postgres_owner()?;
        for path in [dir.path(), &ini, &auth_file, &dir.path().join("pgbouncer.log")] {
            if let Some((uid, gid)) = owner {
                std::os::unix::fs::chown(path, Some(uid), Some(gid))
                    .with_context(|| format!("chown {} to postgres", path.display()))?;
            }
        }
        let mut cmd = Command::new(PGBOUNCER);
        cmd.arg(&ini)
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0);
        if let Some((uid, gid)) = owner {
            cmd.uid(uid).gid(gid);
        }
        let mut child = cmd.spawn().with_context(|| format!("spawning {PGBOUNCER} (apt-get install pgbouncer)"))?;
        let reaper = match spawn_reaper(child.id(), dir.path()) {
            Ok(r) => r,
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(e);
            }
        };
        Ok(PgBouncer { child, reaper: Some(reaper), port, dir })
    }

    /// Polls until `app` can log in and run a query through PgBouncer.
    async fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!("PgBouncer exited ({status}) before accepting connections; log:\n{}", tail(&self.log(), 30));
            }
            let attempt = async {
                let (client, task) = connect_via(self.port, APP_USER, APP_PASSWORD, APP_DB).await?;
                client.simple_query("select 1").await?;
                drop(client);
                let _ = task.await;
                anyhow::Ok(())
            };
            let last_error = match attempt.await {
                Ok(()) => return Ok(()),
                Err(e) => e,
            };
            if Instant::now() > deadline {
                bail!(
                    "PgBouncer did not accept a login within {START_TIMEOUT:?} (last error: {last_error:#}); log:\n{}",
                    tail(&self.log(), 30)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The port PgBouncer listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// PID of the PgBouncer process.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its log (stdout and stderr).
    pub fn log(&self) -> String {
        fs::read(self.dir.path().join("pgbouncer.log"))
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }
}

impl Drop for PgBouncer {
    fn drop(&mut self) {
        if let Some(mut reaper) = self.reaper.take() {
            let _ = reaper.kill();
            let _ = reaper.wait();
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `PgBouncer --version`, first line (e.g. "PgBouncer 1.18.0").
pub fn version() -> String {
    Command::new(PGBOUNCER)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).lines().next().map(str::to_owned))
        .unwrap_or_else(|| "PgBouncer (version unknown)".to_owned())
}

/// The pgbouncer.ini: the settings that matter are the ones pgvane gets too (pool mode, pool
/// size, client limit, auth type, reset query); logging is reduced as pgvane's is
/// (`RUST_LOG=pgvane=warn`).
fn config(server_host: &str, server_port: u16, port: u16, mode: PoolMode, pool_size: u32, auth_file: &Path) -> String {
    format!(
        "[databases]\n\
         {APP_DB} = host={server_host} port={server_port} dbname={APP_DB}\n\
         \n\
         [pgbouncer]\n\
         listen_addr = 127.0.0.1\n\
         listen_port = {port}\n\
         unix_socket_dir =\n\
         auth_type = scram-sha-256\n\
         auth_file = {auth_file}\n\
         pool_mode = {mode}\n\
         default_pool_size = {pool_size}\n\
         max_client_conn = 1000\n\
         server_reset_query = DISCARD ALL\n\
         log_connections = 0\n\
         log_disconnections = 0\n\
         log_stats = 0\n",
        auth_file = auth_file.display(),
        mode = mode.name(),
    )
}

/// `Some((uid, gid))` of the `postgres` user when we are root (PgBouncer refuses to run as root),
/// `None` otherwise.
fn postgres_owner() -> Result<Option<(u32, u32)>> {
    let id = |args: &[&str]| -> Result<u32> {
        let out = Command::new("id").args(args).output().context("running id")?;
        if !out.status.success() {
            bail!("`id {}` failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().parse()?)
    };
    if id(&["-u"])? != 0 {
        return Ok(None);
    }
    Ok(Some((id(&["-u", "postgres"])?, id(&["-g", "postgres"])?)))
}

/// A shell that kills `pid` and deletes `dir` when this process dies without cleaning up (it
/// reads a pipe only we write to, which ends when we exit, however we exit). Same idea as the
/// harness's reaper for PostgreSQL and pgvane.
fn spawn_reaper(pid: u32, dir: &Path) -> Result<Child> {
    const SCRIPT: &str = r#"
        while read -r line; do :; done
        kill -s KILL "$1" 2>/dev/null
        sleep 0.2
        rm -rf -- "$2"
    "#;
    Command::new("sh")
        .arg("-c")
        .arg(SCRIPT)
        .arg("pgvane-bench-reaper")
        .arg(pid.to_string())
        .arg(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .context("spawning the reaper shell")
}

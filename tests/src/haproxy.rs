//! A real load balancer for the tests: Debian's HAProxy in TCP mode, round robin over
//! backends on loopback, each health-checked on its `/ready` when it has a metrics port (as a
//! deployment would), with connection retries that go to another backend (`redispatch`).
//! Installed by `./dev test` (`apt_install haproxy`).

use std::fs;
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tempfile::TempDir;

use crate::{free_port, kill_reaper, read_lossy, scratch_dir, spawn_reaper, tail, HOST};

/// Where Debian installs it.
pub const HAPROXY: &str = "/usr/sbin/haproxy";

/// How long HAProxy may take to listen.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// One backend server.
#[derive(Debug, Clone, Copy)]
pub struct Backend {
    /// Its port on 127.0.0.1.
    pub port: u16,
    /// The port of its `/ready` endpoint (pgvane's `metrics_addr`); `None`: no health check.
    pub ready_port: Option<u16>,
}

/// A running HAProxy, killed (and its directory removed) on drop.
pub struct Haproxy {
    child: Child,
    reaper: Option<Child>,
    port: u16,
    dir: TempDir,
}

impl Haproxy {
    /// Starts HAProxy on a free port in front of `backends`, and waits until it listens.
    pub fn start(backends: &[Backend]) -> Result<Haproxy> {
        let mut servers = String::new();
        for (i, backend) in backends.iter().enumerate() {
            let check = match backend.ready_port {
                Some(ready) => format!(" check port {ready}"),
                None => String::new(),
            };
            servers.push_str(&format!("    server pgvane{i} {HOST}:{}{check}\n", backend.port));
        }
        // Health checks every 100 ms: a draining pgvane (503 on /ready) or a stopped one is out
        // after one failed check, back after two good ones. A refused connection is retried,
        // on another server (redispatch on every retry).
        Self::run(|port| {
            format!(
                "global\n    maxconn 2000\n\n\
                 defaults\n    mode tcp\n    timeout connect 2s\n    timeout client 120s\n    timeout server 120s\n    \
                 retries 3\n    option redispatch 1\n\n\
                 listen pgvane\n    bind {HOST}:{port}\n    balance roundrobin\n    \
                 option httpchk GET /ready\n    http-check expect status 200\n    \
                 default-server inter 100ms fall 1 rise 2\n{servers}"
            )
        })
    }

    /// A plain TCP relay to one server on one thread: what relaying bytes costs with no
    /// protocol work, the floor the bench compares proxies with.
    pub fn relay(server_port: u16) -> Result<Haproxy> {
        Self::run(|port| {
            format!(
                "global\n    maxconn 2000\n    nbthread 1\n\n\
                 defaults\n    mode tcp\n    timeout connect 2s\n    timeout client 120s\n    timeout server 120s\n\n\
                 listen relay\n    bind {HOST}:{port}\n    server postgres {HOST}:{server_port}\n"
            )
        })
    }

    /// Starts HAProxy with the configuration `config` makes for a free port, and waits until
    /// it listens.
    fn run(config: impl FnOnce(u16) -> String) -> Result<Haproxy> {
        let port = free_port()?;
        let dir = tempfile::Builder::new().prefix("haproxy-").tempdir_in(scratch_dir())?;
        let config_path = dir.path().join("haproxy.cfg");
        fs::write(&config_path, config(port)).context("writing haproxy.cfg")?;
        let log = fs::File::create(dir.path().join("haproxy.log"))?;
        let child = Command::new(HAPROXY)
            .arg("-db")
            .arg("-f")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("spawning {HAPROXY} (installed by ./dev test)"))?;
        let reaper = spawn_reaper(child.id(), "KILL", dir.path())?;
        let haproxy = Haproxy { child, reaper: Some(reaper), port, dir };
        let deadline = Instant::now() + START_TIMEOUT;
        while TcpStream::connect((HOST, port)).is_err() {
            if Instant::now() > deadline {
                bail!("HAProxy did not listen within {START_TIMEOUT:?}:\n{}", tail(&haproxy.log(), 40));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(haproxy)
    }

    /// Its process ID (with `-db`, the process that relays).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The port clients connect to.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Its log (stdout and stderr).
    pub fn log(&self) -> String {
        read_lossy(&self.log_path())
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("haproxy.log")
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        kill_reaper(&mut self.reaper);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

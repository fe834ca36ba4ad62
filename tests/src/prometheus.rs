//! A real Prometheus server (Debian's `prometheus` package, installed by `./dev test`) scraping
//! one target every second, with its own config and storage in a temp dir and a free port;
//! and its HTTP API, spoken over a plain TCP socket (HTTP/1.0, one request per connection).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::{free_port, kill_reaper, scratch_dir, spawn_reaper, tail};

/// Where Debian installs it.
pub const PROMETHEUS: &str = "/usr/bin/prometheus";

/// How long Prometheus may take to be ready.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// One series of an instant query's answer: its labels and value.
pub type Sample = (BTreeMap<String, String>, f64);

/// A running Prometheus; dropping it kills it and deletes its dir.
pub struct Prometheus {
    child: Child,
    reaper: Option<Child>,
    port: u16,
    dir: TempDir,
}

impl Prometheus {
    /// Starts Prometheus scraping `target`'s `/metrics` every second (job `pgvane`) and waits
    /// until it is ready.
    pub async fn start(target: SocketAddr) -> Result<Prometheus> {
        if !Path::new(PROMETHEUS).exists() {
            bail!("{PROMETHEUS} is missing: `./dev test` installs Debian's prometheus package (apt-get install prometheus)");
        }
        let dir = tempfile::Builder::new().prefix("pgvane-prometheus-").tempdir_in(scratch_dir())?;
        let config = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
             scrape_configs:\n  - job_name: pgvane\n    static_configs:\n      - targets: ['{target}']\n"
        );
        let config_path = dir.path().join("prometheus.yml");
        std::fs::write(&config_path, config)?;
        let port = free_port()?;
        let log = std::fs::File::create(dir.path().join("prometheus.log"))?;
        let child = Command::new(PROMETHEUS)
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("spawning prometheus")?;
        let reaper = spawn_reaper(child.id(), "KILL", dir.path())?;
        let mut prometheus = Prometheus { child, reaper: Some(reaper), port, dir };
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok((200, _)) = prometheus.get("/-/ready").await {
                return Ok(prometheus);
            }
            if let Ok(Some(status)) = prometheus.child.try_wait() {
                bail!("prometheus exited ({status}):\n{}", prometheus.log());
            }
            if Instant::now() > deadline {
                bail!("prometheus was not ready within {START_TIMEOUT:?}:\n{}", prometheus.log());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The end of Prometheus's own log.
    pub fn log(&self) -> String {
        tail(&crate::read_lossy(&self.dir.path().join("prometheus.log")), 40)
    }

    /// `GET path` on the API: (status, body).
    pub async fn get(&self, path: &str) -> Result<(u16, String)> {
        http_get(SocketAddr::from(([127, 0, 0, 1], self.port)), path).await
    }

    /// An instant query: every series of the answer.
    pub async fn query(&self, promql: &str) -> Result<Vec<Sample>> {
        let (status, body) = self.get(&format!("/api/v1/query?query={}", percent_encode(promql))).await?;
        if status != 200 {
            bail!("query {promql}: HTTP {status}: {body}");
        }
        let answer: serde_json::Value =
            serde_json::from_str(&body).with_context(|| format!("query {promql}: {body}"))?;
        let result = answer["data"]["result"].as_array().with_context(|| format!("query {promql}: {body}"))?;
        result
            .iter()
            .map(|series| {
                let labels = series["metric"]
                    .as_object()
                    .map(|m| m.iter().map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned())).collect())
                    .unwrap_or_default();
                let value = series["value"][1].as_str().and_then(|v| v.parse().ok());
                Ok((labels, value.with_context(|| format!("query {promql}: no value in {series}"))?))
            })
            .collect()
    }

    /// The value of a query that must answer exactly one series.
    pub async fn value(&self, promql: &str) -> Result<f64> {
        match self.query(promql).await?.as_slice() {
            [(_, value)] => Ok(*value),
            other => bail!("query {promql}: expected one series, got {other:?}"),
        }
    }

    /// Waits until Prometheus holds a scrape of `job` taken after `after` (so it saw
    /// everything done before then); fails after `timeout`.
    pub async fn wait_for_scrape_after(&self, metric: &str, after: SystemTime, timeout: Duration) -> Result<()> {
        let after = after.duration_since(UNIX_EPOCH)?.as_secs_f64();
        let deadline = Instant::now() + timeout;
        loop {
            let latest = self.query(&format!("timestamp({metric})")).await?;
            if latest.iter().any(|(_, t)| *t > after) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("no scrape of {metric} after {after} within {timeout:?} (latest: {latest:?}):\n{}", self.log());
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        kill_reaper(&mut self.reaper);
    }
}

/// `GET path` over HTTP/1.0 (no chunked answers): (status, body).
pub async fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, String)> {
    let mut stream = TcpStream::connect(addr).await?;
    stream.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes()).await?;
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut response)).await??;
    let response = String::from_utf8_lossy(&response).into_owned();
    let (head, body) = response.split_once("\r\n\r\n").with_context(|| format!("GET {path}: no header end"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("GET {path}: no status in {head:?}"))?;
    Ok((status, body.to_owned()))
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
pub fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

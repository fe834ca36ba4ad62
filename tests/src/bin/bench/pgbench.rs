//! One pgbench run (`-S`, select-only) against one port, its parsed summary, the p99 latency from
//! pgbench's per-transaction log, and the CPU time a proxy process spent meanwhile.

use std::fs;
use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};
use pgvane_tests::fixture::{APP_DB, APP_PASSWORD, APP_USER};
use pgvane_tests::{client_command, scratch_dir, PGBENCH};

use crate::noise::{OtherLoad, Snapshot};
use crate::Protocol;

/// What one run measured.
#[derive(Debug, Clone)]
pub struct Sample {
    /// Transactions per second (pgbench's figure, without initial connection time).
    pub tps: f64,
    /// Average latency, ms (pgbench's figure).
    pub latency_avg_ms: f64,
    /// 99th percentile latency, ms (from the per-transaction log).
    pub latency_p99_ms: f64,
    /// Transactions processed (one `SELECT` each).
    pub transactions: u64,
    /// CPU time (user + system) of the proxy process per transaction, µs; `None` for direct runs.
    pub proxy_cpu_us_per_query: Option<f64>,
    /// What processes the bench did not start took of the machine meanwhile.
    pub other: OtherLoad,
}

/// A run either measured something or failed (pgbench errors, aborted clients, failed
/// transactions); the failure keeps pgbench's first error line.
pub type Outcome = std::result::Result<Sample, String>;

/// The pgbench invocation of one run.
pub struct Run {
    pub port: u16,
    pub protocol: Protocol,
    pub clients: u32,
    pub seconds: u32,
    /// The proxy process whose CPU time is measured, if any.
    pub proxy_pid: Option<u32>,
}

impl Run {
    /// Fraction of transactions pgbench logs for the p99: all of them at 1 client (few
    /// transactions, idle CPU), a tenth beyond (plenty of transactions; logging every one would
    /// add client CPU that competes with the servers on 2 cores).
    fn sampling_rate(&self) -> f64 {
        if self.clients <= 1 {
            1.0
        } else {
            0.1
        }
    }

    /// The pgbench arguments (without connection options and database), as documented in the
    /// results.
    pub fn args(&self, log_prefix: &str) -> Vec<String> {
        let jobs = self.clients.min(2);
        vec![
            "-S".into(),
            "-n".into(),
            "-T".into(),
            self.seconds.to_string(),
            "-c".into(),
            self.clients.to_string(),
            "-j".into(),
            jobs.to_string(),
            "-M".into(),
            self.protocol.name().into(),
            "--log".into(),
            format!("--log-prefix={log_prefix}"),
            format!("--sampling-rate={}", self.sampling_rate()),
        ]
    }

    /// Runs pgbench (blocking) and measures.
    pub fn execute(&self) -> Result<Outcome> {
        let logs = tempfile::Builder::new()
            .prefix("pgvane-bench-log-")
            .tempdir_in(scratch_dir())
            .context("creating the pgbench log dir")?;
        let prefix = logs.path().join("tx");
        let machine_before = Snapshot::take()?;
        let cpu_before = self.proxy_pid.map(cpu_ticks).transpose()?;
        let output = client_command(PGBENCH, self.port, APP_USER, APP_PASSWORD)
            .env("PGSSLMODE", "disable")
            .args(self.args(&prefix.display().to_string()))
            .arg(APP_DB)
            .output()
            .context("running pgbench")?;
        let cpu_after = self.proxy_pid.map(cpu_ticks).transpose()?;
        let other = machine_before.other_load(&Snapshot::take()?);
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);

        let failed = field(&stdout, "number of failed transactions: ").unwrap_or(0.0);
        let aborted = stdout.contains("aborted") || stderr.contains("aborted");
        if !output.status.success() || failed > 0.0 || aborted {
            return Ok(Err(first_error(&stderr, &stdout, output.status.code())));
        }
        let transactions = field(&stdout, "number of transactions actually processed: ")
            .context("no 'number of transactions actually processed' in pgbench's output")?
            as u64;
        let tps = field(&stdout, "tps = ").context("no tps in pgbench's output")?;
        let latency_avg_ms = field(&stdout, "latency average = ").context("no latency average in pgbench's output")?;
        let latency_p99_ms = p99_ms(logs.path())?;
        let proxy_cpu_us_per_query = match (cpu_before, cpu_after) {
            (Some(before), Some(after)) if transactions > 0 => {
                Some((after - before) as f64 * 1e6 / clock_ticks_per_second() as f64 / transactions as f64)
            }
            _ => None,
        };
        Ok(Ok(Sample { tps, latency_avg_ms, latency_p99_ms, transactions, proxy_cpu_us_per_query, other }))
    }
}

/// The number after `prefix` on the line starting with it (`"tps = 123.4 (…)"` → 123.4).
fn field(output: &str, prefix: &str) -> Option<f64> {
    let line = output.lines().find(|l| l.starts_with(prefix))?;
    line[prefix.len()..].split_whitespace().next()?.split('/').next()?.parse().ok()
}

/// The first line of pgbench's output that says what went wrong.
fn first_error(stderr: &str, stdout: &str, code: Option<i32>) -> String {
    let line = stderr
        .lines()
        .chain(stdout.lines())
        .find(|l| l.contains("ERROR") || l.contains("error") || l.contains("FATAL"))
        .or_else(|| stderr.lines().find(|l| !l.trim().is_empty()))
        .unwrap_or("no error message");
    let line = line.trim().trim_start_matches("pgbench: ").trim_start_matches("error: ");
    format!("{line} (exit status {})", code.map_or_else(|| "signal".to_owned(), |c| c.to_string()))
}

/// The 99th percentile of the latencies in pgbench's per-transaction logs in `dir` (one file per
/// thread; the third column is the latency in µs), in ms.
fn p99_ms(dir: &Path) -> Result<f64> {
    let mut latencies = Vec::new();
    for entry in fs::read_dir(dir)? {
        let text = fs::read_to_string(entry?.path())?;
        latencies.extend(text.lines().filter_map(|l| l.split_whitespace().nth(2)?.parse::<u64>().ok()));
    }
    if latencies.is_empty() {
        bail!("pgbench's transaction log is empty");
    }
    latencies.sort_unstable();
    let rank = ((latencies.len() as f64) * 0.99).ceil() as usize;
    let p99 = latencies[rank.clamp(1, latencies.len()) - 1];
    Ok(p99 as f64 / 1000.0)
}

/// utime + stime of process `pid` (all its threads), in clock ticks, from `/proc/<pid>/stat`.
pub fn cpu_ticks(pid: u32) -> Result<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).with_context(|| format!("reading /proc/{pid}/stat"))?;
    // The command name (field 2) is in parentheses and may hold spaces: count from after it.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).context("malformed /proc/<pid>/stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 (utime) and 15 (stime); `rest` starts at field 3.
    let get = |n: usize| -> Result<u64> {
        fields.get(n - 3).context("short /proc/<pid>/stat")?.parse::<u64>().context("parsing /proc/<pid>/stat")
    };
    Ok(get(14)? + get(15)?)
}

/// `getconf CLK_TCK` (100 on Linux unless told otherwise).
pub fn clock_ticks_per_second() -> u64 {
    static TICKS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(100)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_pgbench_summary_fields() {
        let out = "number of transactions actually processed: 12345\nnumber of failed transactions: 0 (0.000%)\n\
                   latency average = 0.081 ms\ntps = 12339.170466 (without initial connection time)\n";
        assert_eq!(field(out, "number of transactions actually processed: "), Some(12345.0));
        assert_eq!(field(out, "number of failed transactions: "), Some(0.0));
        assert_eq!(field(out, "latency average = "), Some(0.081));
        assert_eq!(field(out, "tps = "), Some(12339.170466));
        assert_eq!(field(out, "latency stddev = "), None);
    }

    #[test]
    fn p99_is_the_nearest_rank() {
        let dir = tempfile::tempdir().unwrap();
        let line = |i: u64| format!("0 {i} {} 0 1700000000 123456\n", i * 1000);
        fs::write(dir.path().join("tx.1"), (1..=100).map(line).collect::<String>()).unwrap();
        fs::write(dir.path().join("tx.1.1"), (101..=200).map(line).collect::<String>()).unwrap();
        // 200 latencies 1..=200 ms: the 198th is the 99th percentile (nearest rank).
        assert_eq!(p99_ms(dir.path()).unwrap(), 198.0);
    }

    #[test]
    fn reads_our_own_cpu_time() {
        assert!(cpu_ticks(std::process::id()).is_ok());
    }
}

//! `--perf`: where a proxy's time goes. For each proxy in transaction mode, while pgbench -M
//! simple -c 10 runs through it: `perf record -g` (a CPU profile, user and kernel), then
//! `strace -c -f` (system calls per query). Written to `bench/profile-<proxy>.txt`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use pgvane_tests::{describe_output, scratch_dir};

use crate::pgbench::{Outcome, Run};
use crate::{blocking, report, Kind, Plan, PoolMode, Protocol, Target};

/// Clients of the profiled pgbench runs.
const CLIENTS: u32 = 10;

/// Profiles each proxy in transaction mode (or the first mode measured) for `seconds`; returns
/// the files written into `dir`.
pub async fn profile(targets: &[Target], plan: &Plan, seconds: u32, dir: &Path) -> Result<Vec<PathBuf>> {
    let mode = if plan.modes.contains(&PoolMode::Transaction) { PoolMode::Transaction } else { plan.modes[0] };
    let mut written = Vec::new();
    for target in targets.iter().filter(|t| t.id.mode == Some(mode)) {
        let Some(pid) = target.pid else { continue };
        let name = match target.id.kind {
            Kind::PgBouncer => "pgbouncer",
            Kind::Pgvane => "pgvane",
            Kind::Direct
            | Kind::Relay
            | Kind::PgvanePlugin(_)
            | Kind::PgvaneMetrics
            | Kind::PgBouncerUnix
            | Kind::PgvaneUnix => continue,
        };
        let label = report::label(target.id);
        println!("Profiling {label} for {seconds} s (perf record -g, then strace -c) ...");
        let work = tempfile::Builder::new().prefix("pgvane-bench-perf-").tempdir_in(scratch_dir())?;

        let data = work.path().join("perf.data");
        let perf = Command::new("perf")
            .args(["record", "-F", "999", "-g", "-o"])
            .arg(&data)
            .args(["-p", &pid.to_string(), "--", "sleep", &seconds.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("running perf (apt-get install linux-perf)")?;
        let perf_run = load(target, seconds + 1).await?;
        let perf_out = blocking(move || perf.wait_with_output()).await??;
        if !perf_out.status.success() {
            bail!("perf record failed: {}", describe_output(&perf_out));
        }
        let report = |args: &[&str]| -> Result<String> {
            let out = Command::new("perf").arg("report").arg("-i").arg(&data).args(args).output()?;
            if !out.status.success() {
                bail!("perf report failed: {}", describe_output(&out));
            }
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        };
        let flat =
            report(&["--stdio", "--no-children", "-g", "none", "--sort", "dso,symbol", "--percent-limit", "0.5"])?;
        let inclusive = report(&["--stdio", "--children", "-g", "none", "--sort", "symbol", "--percent-limit", "3"])?;

        let strace_out = work.path().join("strace.txt");
        let strace = Command::new("strace")
            .args(["-c", "-f", "-o"])
            .arg(&strace_out)
            .args(["-p", &pid.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("running strace (apt-get install strace)")?;
        let strace_run = load(target, seconds).await?;
        stop_strace(strace).await?;
        let summary = std::fs::read_to_string(&strace_out).context("strace wrote no summary")?;
        let syscalls = syscalls_per_query(&summary, &strace_run);

        let text = format!(
            "# Profile of {label} (pid {pid}): pgbench -S -M simple -c {CLIENTS} -j 2 through it.\n\
             #\n\
             # 1. perf record -F 999 -g -p {pid} -- sleep {seconds}, during a {t} s run: {perf_run}\n\
             #\n\
             # ----- self time by dso and symbol (perf report --no-children --sort dso,symbol, >= 0.5%) -----\n\
             {flat}\n\
             #\n\
             # ----- inclusive time (perf report --children --sort symbol, >= 3%) -----\n\
             {inclusive}\n\
             #\n\
             # 2. strace -c -f -p {pid} during a {seconds} s run: {strace_run}\n\
             #    (strace slows the proxy down, which changes batching: counts are indicative)\n\
             #\n\
             {syscalls}",
            t = seconds + 1,
            perf_run = describe(&perf_run),
            strace_run = describe(&strace_run),
            flat = clean(&flat, 70),
            inclusive = clean(&inclusive, 45),
        );
        let path = dir.join(format!("profile-{name}.txt"));
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        println!("  wrote {}", path.display());
        written.push(path);
    }
    Ok(written)
}

/// pgbench -S -M simple -c 10 through `target` for `seconds`, after a moment for the profiler to
/// attach.
async fn load(target: &Target, seconds: u32) -> Result<Outcome> {
    tokio::time::sleep(Duration::from_millis(500)).await;
    let run = Run { port: target.port, protocol: Protocol::Simple, clients: CLIENTS, seconds, proxy_pid: target.pid };
    blocking(move || run.execute()).await?
}

/// Detaches strace (SIGINT makes it write its summary) and waits for it.
async fn stop_strace(strace: Child) -> Result<()> {
    let out = Command::new("kill").args(["-INT", &strace.id().to_string()]).output().context("running kill")?;
    if !out.status.success() {
        bail!("kill -INT strace failed: {}", describe_output(&out));
    }
    // strace re-raises the SIGINT after writing its summary: the exit status says nothing.
    blocking(move || strace.wait_with_output()).await??;
    Ok(())
}

fn describe(outcome: &Outcome) -> String {
    match outcome {
        Ok(s) => format!(
            "{:.0} tps, {} transactions, proxy CPU {:.1} µs/query",
            s.tps,
            s.transactions,
            s.proxy_cpu_us_per_query.unwrap_or(f64::NAN)
        ),
        Err(e) => format!("FAILED: {e}"),
    }
}

/// `strace -c` output as calls per query, most frequent first.
fn syscalls_per_query(strace: &str, run: &Outcome) -> String {
    let Ok(sample) = run else { return format!("(no numbers: the run failed)\n{strace}") };
    let queries = sample.transactions.max(1) as f64;
    let mut calls: BTreeMap<String, u64> = BTreeMap::new();
    for line in strace.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        // "% time  seconds  usecs/call  calls  [errors]  syscall"
        if fields.len() < 5 || fields[0].parse::<f64>().is_err() {
            continue;
        }
        let (Some(name), Ok(count)) = (fields.last(), fields[3].parse::<u64>()) else { continue };
        if *name != "total" {
            calls.insert((*name).to_owned(), count);
        }
    }
    let mut rows: Vec<(String, u64)> = calls.into_iter().collect();
    rows.sort_by_key(|r| std::cmp::Reverse(r.1));
    let total: u64 = rows.iter().map(|r| r.1).sum();
    let mut out = format!("{:>10}  {:>12}  syscall\n", "per query", "calls");
    for (name, count) in rows.iter().filter(|r| r.1 as f64 / queries >= 0.01) {
        let _ = writeln!(out, "{:>10.2}  {count:>12}  {name}", *count as f64 / queries);
    }
    let _ = writeln!(out, "{:>10.2}  {total:>12}  (all)", total as f64 / queries);
    out
}

/// `perf report` output without its comment header, blank lines and the empty columns at the end
/// of each line; at most `lines` lines.
fn clean(report: &str, lines: usize) -> String {
    report
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| l.trim_end_matches([' ', '-']))
        .take(lines)
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pgbench::Sample;

    #[test]
    fn syscalls_per_query_from_strace_summary() {
        let strace = "% time     seconds  usecs/call     calls    errors syscall\n\
                      ------ ----------- ----------- --------- --------- ----------------\n\
                       60.00    0.600000          10     20000           sendto\n\
                       30.00    0.300000           5     20000      1000 recvfrom\n\
                       10.00    0.100000          20      5000           epoll_wait\n\
                        0.00    0.000000           0         1           close\n\
                      ------ ----------- ----------- --------- --------- ----------------\n\
                      100.00    1.000000          22     45001      1000 total\n";
        let run = Ok(Sample {
            tps: 1.0,
            latency_avg_ms: 1.0,
            latency_p99_ms: 1.0,
            transactions: 10_000,
            proxy_cpu_us_per_query: None,
            other: Default::default(),
        });
        let table = syscalls_per_query(strace, &run);
        assert!(table.contains("      2.00         20000  sendto"), "{table}");
        assert!(table.contains("      2.00         20000  recvfrom"), "{table}");
        assert!(table.contains("      0.50          5000  epoll_wait"), "{table}");
        assert!(!table.contains("close"), "{table}");
        assert!(table.contains("      4.50         45001  (all)"), "{table}");
    }
}

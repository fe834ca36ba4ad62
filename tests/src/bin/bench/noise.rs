//! How much of the machine other work took during a run: the CPU time the whole machine was busy
//! (`/proc/stat`) minus the CPU time of this process and everything it started (pgbench,
//! PostgreSQL, the proxies: its process tree, reaped children included), as a share of the
//! machine's capacity over the run. A compile or a test suite running beside the bench shows up
//! here, and runs it disturbed can be repeated.

use std::collections::HashMap;
use std::fs;
use std::time::Instant;

use anyhow::{Context, Result};

use crate::pgbench::clock_ticks_per_second;

/// CPU counters at one moment.
pub struct Snapshot {
    at: Instant,
    /// Busy time of all CPUs (user, nice, system, irq, softirq), in clock ticks.
    busy: u64,
    /// Time the hypervisor gave our vCPUs to someone else, in clock ticks.
    steal: u64,
    /// CPU time of our process tree, in clock ticks.
    ours: u64,
    cpus: u64,
}

/// What other work took during a run, in % of the machine (all CPUs over the run's wall time).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct OtherLoad {
    /// CPU time of processes the bench did not start.
    pub other_pct: f64,
    /// Steal time (the hypervisor running other guests on our vCPUs).
    pub steal_pct: f64,
}

impl Snapshot {
    pub fn take() -> Result<Snapshot> {
        let stat = fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
        let (busy, steal, cpus) = parse_proc_stat(&stat).context("parsing /proc/stat")?;
        Ok(Snapshot { at: Instant::now(), busy, steal, ours: tree_ticks(std::process::id()), cpus })
    }

    /// Other work between `self` and `later`.
    pub fn other_load(&self, later: &Snapshot) -> OtherLoad {
        let capacity =
            later.at.duration_since(self.at).as_secs_f64() * clock_ticks_per_second() as f64 * self.cpus as f64;
        if capacity <= 0.0 {
            return OtherLoad { other_pct: 0.0, steal_pct: 0.0 };
        }
        let busy = later.busy.saturating_sub(self.busy) as f64;
        let ours = later.ours.saturating_sub(self.ours) as f64;
        let steal = later.steal.saturating_sub(self.steal) as f64;
        OtherLoad {
            other_pct: ((busy - ours).max(0.0) / capacity * 100.0).min(100.0),
            steal_pct: (steal / capacity * 100.0).min(100.0),
        }
    }
}

/// (busy, steal, number of CPUs) from the text of `/proc/stat`.
fn parse_proc_stat(stat: &str) -> Option<(u64, u64, u64)> {
    let total = stat.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = total.split_whitespace().skip(1).filter_map(|f| f.parse().ok()).collect();
    // user nice system idle iowait irq softirq steal (guest time is already in user).
    let field = |i: usize| v.get(i).copied().unwrap_or(0);
    let busy = field(0) + field(1) + field(2) + field(5) + field(6);
    let cpus = stat.lines().filter(|l| l.starts_with("cpu") && !l.starts_with("cpu ")).count() as u64;
    Some((busy, field(7), cpus.max(1)))
}

/// CPU time (utime + stime + cutime + cstime: its own and its reaped children's) of `root` and
/// every live descendant, in clock ticks. A child reaped between two calls moves from the live
/// sum into its parent's cutime, so differences stay right.
fn tree_ticks(root: u32) -> u64 {
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    let mut ticks: HashMap<u32, u64> = HashMap::new();
    let Ok(entries) = fs::read_dir("/proc") else { return 0 };
    for entry in entries.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        let Some((ppid, cpu)) = parse_pid_stat(&stat) else { continue };
        children.entry(ppid).or_default().push(pid);
        ticks.insert(pid, cpu);
    }
    let mut total = 0;
    let mut stack = vec![root];
    while let Some(pid) = stack.pop() {
        total += ticks.get(&pid).copied().unwrap_or(0);
        if let Some(kids) = children.get(&pid) {
            stack.extend(kids);
        }
    }
    total
}

/// (ppid, utime + stime + cutime + cstime) from the text of `/proc/<pid>/stat`.
fn parse_pid_stat(stat: &str) -> Option<(u32, u64)> {
    // The command name (field 2) is in parentheses and may hold spaces: count from after it.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
    let ppid = u32::try_from(field(4)?).ok()?;
    Some((ppid, field(14)? + field(15)? + field(16)? + field(17)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_stat() {
        let stat =
            "cpu  100 1 20 500 3 4 5 6 0 0\ncpu0 50 0 10 250 1 2 2 3 0 0\ncpu1 50 1 10 250 2 2 3 3 0 0\nintr 1\n";
        assert_eq!(parse_proc_stat(stat), Some((100 + 1 + 20 + 4 + 5, 6, 2)));
    }

    #[test]
    fn parses_a_pid_stat_with_spaces_in_the_name() {
        let stat = "42 (tokio-runtime w) S 7 42 42 0 -1 4194560 100 0 0 0 11 22 33 44 20 0 3 0 1 2 3";
        assert_eq!(parse_pid_stat(stat), Some((7, 11 + 22 + 33 + 44)));
    }

    #[test]
    fn our_tree_includes_us() {
        let before = Snapshot::take().unwrap();
        // Burn a little CPU so the counters move.
        let mut x = 0u64;
        for i in 0..20_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        assert_ne!(x, 1);
        let after = Snapshot::take().unwrap();
        assert!(after.ours >= before.ours);
        let load = before.other_load(&after);
        assert!((0.0..=100.0).contains(&load.other_pct) && (0.0..=100.0).contains(&load.steal_pct));
    }
}

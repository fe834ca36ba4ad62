//! `SHOW BACKENDS`: every node of every cluster database, with its role, health and lag,
//! the cluster's last switchover, and why statements for the primary wait when they do.

use std::time::Duration;

use crate::cluster::topology::{Health, Origin, Writer};
use crate::shared::Shared;

use super::{text, timestamp, ResultSet};

fn millis(d: Duration) -> Option<String> {
    text(d.as_millis())
}

/// `SHOW BACKENDS`.
pub fn backends(shared: &Shared) -> ResultSet {
    let mut set = ResultSet::new(&[
        "database",
        "host",
        "port",
        "origin",
        "role",
        "health",
        "writer",
        "reads",
        "lag_bytes",
        "lag_ms",
        "last_check",
        "error",
        "last_switchover",
        "switchover_ms",
        "switchover_from",
        "writer_wait",
    ]);
    for cluster in shared.clusters.list() {
        let report = cluster.report();
        let writer = match &report.writer {
            Writer::Known(addr) => Some(addr),
            Writer::Searching { .. } => None,
        };
        let switchover = report.last_switchover.as_ref();
        let waiting = report.writer.waiting_because();
        for node in &report.nodes {
            let error = match &node.health {
                Health::Down { error, .. } => Some(error.clone()),
                Health::Up | Health::Unchecked => None,
            };
            set.push(vec![
                text(&report.database),
                text(&node.addr.host),
                text(node.addr.port),
                text(match node.origin {
                    Origin::Configured => "configured",
                    Origin::Discovered => "discovered",
                }),
                text(node.role.as_str()),
                text(node.health.as_str()),
                text(u8::from(writer == Some(&node.addr))),
                text(u8::from(node.serves_reads(&report.limits))),
                node.lag.map(|l| l.bytes.to_string()),
                node.lag.and_then(|l| millis(l.time)),
                node.last_check.and_then(timestamp),
                error,
                switchover.and_then(|s| timestamp(s.at)),
                switchover.and_then(|s| millis(s.duration)),
                switchover.map(|s| s.from.to_string()),
                waiting.clone(),
            ]);
        }
    }
    set
}

//! A cluster's topology: its nodes with their role, health and lag, and who the writer is.
//!
//! Pure state, no I/O: the monitor feeds it the outcome of each round of checks
//! ([`Topology::observe`]) and the request path reads it. Every decision about roles,
//! failure, switchover and lag is made here, so it is unit-tested without servers.

use std::collections::VecDeque;
use std::time::{Duration, Instant, SystemTime};

use crate::config::NodeAddr;

/// What a node is, as its last successful check said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Never checked successfully.
    Unknown,
    /// `pg_is_in_recovery()` false, or the `role_query` answered `writer`: it takes writes.
    Primary,
    /// `pg_is_in_recovery()` true, or the `role_query` answered `replica`.
    Replica,
    /// The `role_query` answered `none`: up, but it gets no statements.
    None,
}

impl Role {
    /// As SHOW BACKENDS prints it.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Unknown => "unknown",
            Role::Primary => "primary",
            Role::Replica => "replica",
            Role::None => "none",
        }
    }
}

/// Whether a node answered its last check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    /// Not checked yet.
    Unchecked,
    /// The last check succeeded.
    Up,
    /// The last check failed: the node gets no statements, and is checked again at `retry_at`
    /// (or at every poll while the cluster looks for a writer).
    Down {
        /// Why.
        error: String,
        /// When the health check tries it again.
        retry_at: Instant,
    },
}

impl Health {
    /// As SHOW BACKENDS prints it.
    pub fn as_str(&self) -> &'static str {
        match self {
            Health::Unchecked => "unchecked",
            Health::Up => "up",
            Health::Down { .. } => "down",
        }
    }
}

/// Where pgvane learnt of a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// `hosts` (or `host`) of the database entry.
    Configured,
    /// A row of the `topology_query`.
    Discovered,
}

/// How far a replica is behind the writer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Lag {
    /// WAL bytes the writer has written that the replica has not replayed.
    pub bytes: u64,
    /// How long ago the writer was where the replica is now (0 when caught up), to the
    /// resolution of the health checks.
    pub time: Duration,
}

/// The replica lag limits beyond which a replica gets no reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LagLimits {
    /// `max_replica_lag_ms`.
    pub time: Duration,
    /// `max_replica_lag_bytes`; `None`: no limit in bytes.
    pub bytes: Option<u64>,
}

impl Lag {
    /// True if the lag is within `limits`.
    pub fn within(&self, limits: &LagLimits) -> bool {
        self.time <= limits.time && limits.bytes.is_none_or(|max| self.bytes <= max)
    }
}

/// One server of the cluster.
#[derive(Debug, Clone)]
pub struct Node {
    /// Its address.
    pub addr: NodeAddr,
    /// Configured or discovered.
    pub origin: Origin,
    /// Its role at the last successful check.
    pub role: Role,
    /// Its health.
    pub health: Health,
    /// A replica's lag at the last check that could measure it (kept while no writer is
    /// known, so reads go on during a switchover).
    pub lag: Option<Lag>,
    /// When it was last checked.
    pub last_check: Option<SystemTime>,
}

impl Node {
    fn new(addr: NodeAddr, origin: Origin) -> Self {
        Node { addr, origin, role: Role::Unknown, health: Health::Unchecked, lag: None, last_check: None }
    }

    /// True if reads may go here: an up replica whose measured lag is within `limits`.
    pub fn serves_reads(&self, limits: &LagLimits) -> bool {
        self.role == Role::Replica && self.health == Health::Up && self.lag.is_some_and(|lag| lag.within(limits))
    }
}

/// Who takes the writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Writer {
    /// This node.
    Known(NodeAddr),
    /// None known: at startup, or since `previous` failed, turned read-only or stepped down
    /// at `since`. Statements for the primary wait meanwhile.
    Searching {
        /// Since when.
        since: Instant,
        /// The writer that was lost, if any.
        previous: Option<NodeAddr>,
        /// The nodes that all answered `writer` to the `role_query` at the last round, when
        /// more than one did (a split view): pgvane waits for one of them to step down.
        split: Vec<NodeAddr>,
    },
}

impl Writer {
    /// Why statements for the primary wait, as SHOW BACKENDS prints it; `None` while a
    /// writer is known.
    pub fn waiting_because(&self) -> Option<String> {
        match self {
            Writer::Known(_) => None,
            Writer::Searching { split, .. } if split.len() > 1 => {
                let nodes: Vec<String> = split.iter().map(ToString::to_string).collect();
                Some(format!("split view: {} all answer writer", nodes.join(", ")))
            }
            Writer::Searching { .. } => Some("no node up answers as the writer".into()),
        }
    }
}

/// A completed change of writer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Switchover {
    /// The old writer.
    pub from: NodeAddr,
    /// The new one.
    pub to: NodeAddr,
    /// When the new writer was found.
    pub at: SystemTime,
    /// From losing the old writer to finding the new one.
    pub duration: Duration,
}

/// What one check of a node found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Observation {
    /// Not in recovery, at this WAL position (`pg_current_wal_lsn()`, in bytes).
    Primary {
        /// The position.
        lsn: u64,
    },
    /// In recovery, having replayed up to here (`pg_last_wal_replay_lsn()`).
    Replica {
        /// The position.
        replayed: u64,
    },
    /// The `role_query` answered (no WAL positions are read then).
    Answered(Answer),
    /// Could not connect, log in, or run the check; or the `role_query` answer was malformed.
    Failed(String),
}

/// A node's answer to the `role_query`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// `writer`: it takes the writes (a primary, or a multi-writer group's write leader).
    Writer,
    /// `replica`: it takes reads. pgvane measures no lag then: the query answers `none` for
    /// a replica too far behind.
    Replica,
    /// `none`: it gets no statements.
    None,
}

impl Observation {
    /// True if the node claims to take writes.
    fn claims_writer(&self) -> bool {
        matches!(self, Observation::Primary { .. } | Observation::Answered(Answer::Writer))
    }
}

/// What a round of checks changed about the writer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outcome {
    /// A new writer found after losing one.
    pub switchover: Option<Switchover>,
    /// The writer lost while still answering: it turned read-only, stepped down or is one
    /// of two claimants. Sessions still open on it must end (see `cluster::fence`).
    pub stepped_down: Option<NodeAddr>,
}

/// How long the writer's past WAL positions are kept to measure lag in time: lag beyond
/// this is reported as at least this much.
const HISTORY: Duration = Duration::from_secs(600);

/// A cluster's nodes and writer.
#[derive(Debug)]
pub struct Topology {
    nodes: Vec<Node>,
    writer: Writer,
    /// The writer's WAL position at past checks, oldest first.
    history: VecDeque<(Instant, u64)>,
    last_switchover: Option<Switchover>,
}

impl Topology {
    /// A topology of `configured` nodes, roles unknown, looking for its writer.
    pub fn new(configured: &[NodeAddr], now: Instant) -> Self {
        let nodes = configured.iter().map(|a| Node::new(a.clone(), Origin::Configured)).collect();
        Topology {
            nodes,
            writer: Writer::Searching { since: now, previous: None, split: Vec::new() },
            history: VecDeque::new(),
            last_switchover: None,
        }
    }

    /// The nodes, configured ones first.
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// The writer state.
    pub fn writer_state(&self) -> &Writer {
        &self.writer
    }

    /// The writer, if known.
    pub fn writer(&self) -> Option<&NodeAddr> {
        match &self.writer {
            Writer::Known(addr) => Some(addr),
            Writer::Searching { .. } => None,
        }
    }

    /// The last completed switchover.
    pub fn last_switchover(&self) -> Option<&Switchover> {
        self.last_switchover.as_ref()
    }

    /// Replicas that may take reads now, in node order.
    pub fn readable_replicas(&self, limits: &LagLimits) -> Vec<NodeAddr> {
        self.nodes.iter().filter(|n| n.serves_reads(limits)).map(|n| n.addr.clone()).collect()
    }

    /// After a RELOAD: the configured nodes become `configured`; nodes no longer configured
    /// (and not discovered) are dropped, new ones added unchecked. Returns true if the
    /// writer was among the dropped ones (it is then searched for again).
    pub fn set_configured(&mut self, configured: &[NodeAddr], now: Instant) -> bool {
        self.nodes.retain(|n| n.origin == Origin::Discovered || configured.contains(&n.addr));
        for addr in configured {
            match self.nodes.iter_mut().find(|n| &n.addr == addr) {
                Some(node) => node.origin = Origin::Configured,
                None => self.nodes.push(Node::new(addr.clone(), Origin::Configured)),
            }
        }
        let lost = self.writer().is_some_and(|w| !self.nodes.iter().any(|n| &n.addr == w));
        if lost {
            self.lose_writer(now);
        }
        lost
    }

    /// Adds a node a `topology_query` returned; false if it was known already.
    pub fn discover(&mut self, addr: NodeAddr) -> bool {
        if self.nodes.iter().any(|n| n.addr == addr) {
            return false;
        }
        self.nodes.push(Node::new(addr, Origin::Discovered));
        true
    }

    /// The nodes to check in a round at `now`: all while looking for a writer, otherwise
    /// those not resting after a failure.
    pub fn due(&self, now: Instant) -> Vec<NodeAddr> {
        let searching = self.writer().is_none();
        self.nodes
            .iter()
            .filter(|n| searching || !matches!(n.health, Health::Down { retry_at, .. } if retry_at > now))
            .map(|n| n.addr.clone())
            .collect()
    }

    /// The request path could not reach `addr`: it is down until `now + failed_delay` (or
    /// the next poll while searching), and no longer the writer if it was. True if it was.
    pub fn node_failed(&mut self, addr: &NodeAddr, error: &str, now: Instant, failed_delay: Duration) -> bool {
        if let Some(node) = self.nodes.iter_mut().find(|n| &n.addr == addr) {
            node.health = Health::Down { error: error.to_owned(), retry_at: now + failed_delay };
        }
        if self.writer() != Some(addr) {
            return false;
        }
        self.lose_writer(now);
        true
    }

    /// The writer `addr` refused a write (SQLSTATE 25006): it may have been demoted. It is
    /// no longer the writer until a round of checks finds one (itself again, if it still
    /// says it is a primary and no other node does). True if it was the writer.
    pub fn writer_refused(&mut self, addr: &NodeAddr, now: Instant) -> bool {
        if self.writer() != Some(addr) {
            return false;
        }
        self.lose_writer(now);
        true
    }

    fn lose_writer(&mut self, now: Instant) {
        let previous = self.writer().cloned();
        self.writer = Writer::Searching { since: now, previous, split: Vec::new() };
        self.history.clear();
    }

    /// Takes in a round of checks made at `now` (`wall`: the same instant on the clock).
    /// A failed node rests for `failed_delay`. Returns the completed switchover, if this
    /// round found a new writer after losing one, and the writer lost while still answering.
    ///
    /// With `pg_is_in_recovery()`, two primaries are settled by preferring the one that is
    /// not the writer just lost (it may still run after its replica was promoted). A
    /// `role_query` names the writer itself: two nodes answering `writer` are a split view
    /// (an election under way) that pgvane never settles; it waits for one to step down.
    pub fn observe(
        &mut self,
        results: &[(NodeAddr, Observation)],
        now: Instant,
        wall: SystemTime,
        failed_delay: Duration,
    ) -> Outcome {
        for (addr, observation) in results {
            let Some(node) = self.nodes.iter_mut().find(|n| &n.addr == addr) else { continue };
            node.last_check = Some(wall);
            let (role, lag) = match observation {
                Observation::Primary { .. } | Observation::Answered(Answer::Writer) => (Role::Primary, None),
                Observation::Replica { .. } => (Role::Replica, node.lag),
                Observation::Answered(Answer::Replica) => (Role::Replica, Some(Lag::default())),
                Observation::Answered(Answer::None) => (Role::None, None),
                Observation::Failed(error) => {
                    node.health = Health::Down { error: error.clone(), retry_at: now + failed_delay };
                    continue;
                }
            };
            (node.role, node.health, node.lag) = (role, Health::Up, lag);
        }
        let outcome = |addr: &NodeAddr| results.iter().find(|(a, _)| a == addr).map(|(_, o)| o);
        // In node order, whatever order the checks ended in.
        let claimants: Vec<NodeAddr> = self
            .nodes
            .iter()
            .filter(|n| outcome(&n.addr).is_some_and(Observation::claims_writer))
            .map(|n| n.addr.clone())
            .collect();
        let split =
            claimants.len() > 1 && results.iter().any(|(_, o)| matches!(o, Observation::Answered(Answer::Writer)));
        if claimants.len() > 1 {
            tracing::warn!(nodes = ?claimants.iter().map(ToString::to_string).collect::<Vec<_>>(), split, "several nodes claim the writer");
        }
        // The writer is lost when it failed, no longer claims the writes, or shares the claim.
        let mut stepped_down = None;
        if let Some(writer) = self.writer().cloned() {
            match outcome(&writer) {
                Some(Observation::Failed(_)) => self.lose_writer(now),
                Some(o) if !o.claims_writer() || split => {
                    self.lose_writer(now);
                    stepped_down = Some(writer);
                }
                _ => {}
            }
        }
        let mut switchover = None;
        if let Writer::Searching { since, previous, split: waiting_on } = &mut self.writer {
            let fresh: Vec<&NodeAddr> = claimants.iter().filter(|a| Some(*a) != previous.as_ref()).collect();
            let chosen = match (split, fresh.as_slice(), claimants.as_slice()) {
                (true, ..) => None,
                (false, [one], _) => Some((*one).clone()),
                (false, [], [one]) => Some(one.clone()),
                _ => None,
            };
            *waiting_on = if split { claimants.clone() } else { Vec::new() };
            if let Some(chosen) = chosen {
                if let Some(from) = previous.clone().filter(|from| from != &chosen) {
                    switchover =
                        Some(Switchover { from, to: chosen.clone(), at: wall, duration: now.duration_since(*since) });
                }
                self.writer = Writer::Known(chosen);
            }
        }
        if let Some(s) = &switchover {
            self.last_switchover = Some(s.clone());
        }
        self.measure_lag(results, now);
        Outcome { switchover, stepped_down }
    }

    /// Records the writer's position and measures each replica's lag against it.
    fn measure_lag(&mut self, results: &[(NodeAddr, Observation)], now: Instant) {
        let writer_lsn = self.writer().and_then(|w| {
            results.iter().find_map(|(a, o)| match o {
                Observation::Primary { lsn } if a == w => Some(*lsn),
                _ => None,
            })
        });
        let Some(writer_lsn) = writer_lsn else { return };
        if self.history.back().is_none_or(|(_, lsn)| *lsn != writer_lsn) {
            self.history.push_back((now, writer_lsn));
        }
        while self.history.front().is_some_and(|(t, _)| now.duration_since(*t) > HISTORY) && self.history.len() > 1 {
            self.history.pop_front();
        }
        for (addr, observation) in results {
            let Observation::Replica { replayed } = observation else { continue };
            let Some(node) = self.nodes.iter_mut().find(|n| &n.addr == addr) else { continue };
            let bytes = writer_lsn.saturating_sub(*replayed);
            let time = if bytes == 0 {
                Duration::ZERO
            } else {
                // The replica is where the writer was at the newest check whose position it
                // has replayed; the writer has moved on since the check after that one.
                let caught_up_to = self.history.iter().rev().find(|(_, lsn)| lsn <= replayed);
                let moved_on = match caught_up_to {
                    Some((at, _)) => self.history.iter().find(|(t, _)| t > at).map_or(*at, |(t, _)| *t),
                    None => self.history.front().map_or(now, |(t, _)| *t),
                };
                now.duration_since(moved_on)
            };
            node.lag = Some(Lag { bytes, time });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> NodeAddr {
        NodeAddr { host: "10.0.0.1".into(), port }
    }

    const DELAY: Duration = Duration::from_secs(5);
    const LIMITS: LagLimits = LagLimits { time: Duration::from_secs(1), bytes: None };

    fn primary(lsn: u64) -> Observation {
        Observation::Primary { lsn }
    }

    fn replica(replayed: u64) -> Observation {
        Observation::Replica { replayed }
    }

    fn failed() -> Observation {
        Observation::Failed("connection refused".into())
    }

    #[test]
    fn roles_are_discovered_and_a_caught_up_replica_serves_reads() {
        let t0 = Instant::now();
        let mut t = Topology::new(&[addr(1), addr(2)], t0);
        assert_eq!(t.writer(), None);
        assert_eq!(t.due(t0).len(), 2);
        let first = t.observe(&[(addr(1), replica(100)), (addr(2), primary(100))], t0, SystemTime::now(), DELAY);
        assert_eq!(first, Outcome::default(), "finding the first writer is not a switchover");
        assert_eq!(t.writer(), Some(&addr(2)));
        assert_eq!(t.nodes()[0].role, Role::Replica);
        assert_eq!(t.nodes()[0].lag, Some(Lag { bytes: 0, time: Duration::ZERO }));
        assert_eq!(t.readable_replicas(&LIMITS), [addr(1)]);
    }

    #[test]
    fn lag_in_time_counts_from_when_the_writer_moved_past_the_replica() {
        let t0 = Instant::now();
        let wall = SystemTime::now();
        let mut t = Topology::new(&[addr(1), addr(2)], t0);
        t.observe(&[(addr(1), primary(100)), (addr(2), replica(100))], t0, wall, DELAY);
        // The writer moves on at t0+1s; the replica stays at 100 (replay paused).
        let t1 = t0 + Duration::from_secs(1);
        t.observe(&[(addr(1), primary(500)), (addr(2), replica(100))], t1, wall, DELAY);
        assert_eq!(t.nodes()[1].lag, Some(Lag { bytes: 400, time: Duration::ZERO }));
        let t3 = t0 + Duration::from_secs(3);
        t.observe(&[(addr(1), primary(500)), (addr(2), replica(100))], t3, wall, DELAY);
        assert_eq!(t.nodes()[1].lag, Some(Lag { bytes: 400, time: Duration::from_secs(2) }));
        assert!(t.readable_replicas(&LIMITS).is_empty(), "2 s behind, limit 1 s");
        // A byte limit alone excludes it as well.
        let bytes_only = LagLimits { time: Duration::from_secs(60), bytes: Some(300) };
        assert!(t.readable_replicas(&bytes_only).is_empty());
        // Idle and caught up: no lag, however long since the last write.
        let t9 = t0 + Duration::from_secs(9);
        t.observe(&[(addr(1), primary(500)), (addr(2), replica(500))], t9, wall, DELAY);
        assert_eq!(t.nodes()[1].lag, Some(Lag::default()));
        assert_eq!(t.readable_replicas(&LIMITS), [addr(2)]);
    }

    #[test]
    fn a_down_node_rests_unless_a_writer_is_being_searched() {
        let t0 = Instant::now();
        let wall = SystemTime::now();
        let mut t = Topology::new(&[addr(1), addr(2)], t0);
        t.observe(&[(addr(1), primary(1)), (addr(2), failed())], t0, wall, DELAY);
        assert!(matches!(t.nodes()[1].health, Health::Down { .. }));
        assert_eq!(t.due(t0 + Duration::from_secs(1)), [addr(1)]);
        assert_eq!(t.due(t0 + DELAY), [addr(1), addr(2)]);
        assert!(t.readable_replicas(&LIMITS).is_empty());
        assert!(t.node_failed(&addr(1), "connection lost", t0, DELAY));
        assert!(matches!(t.nodes()[0].health, Health::Down { .. }));
        assert_eq!(t.due(t0), [addr(1), addr(2)], "every node is polled while searching");
        assert!(!t.node_failed(&addr(1), "connection lost", t0, DELAY), "already lost");
    }

    #[test]
    fn a_switchover_is_found_and_timed() {
        let t0 = Instant::now();
        let wall = SystemTime::now();
        let mut t = Topology::new(&[addr(1), addr(2)], t0);
        t.observe(&[(addr(1), primary(10)), (addr(2), replica(10))], t0, wall, DELAY);
        // The writer goes away; the replica is not promoted yet.
        let t1 = t0 + Duration::from_millis(100);
        assert_eq!(t.observe(&[(addr(1), failed()), (addr(2), replica(10))], t1, wall, DELAY), Outcome::default());
        assert_eq!(t.writer_state(), &Writer::Searching { since: t1, previous: Some(addr(1)), split: Vec::new() });
        assert_eq!(t.readable_replicas(&LIMITS), [addr(2)], "reads go on during the search");
        let t2 = t1 + Duration::from_millis(300);
        let s = t.observe(&[(addr(1), failed()), (addr(2), primary(20))], t2, wall, DELAY).switchover.unwrap();
        assert_eq!((s.from, s.to.clone(), s.duration), (addr(1), addr(2), Duration::from_millis(300)));
        assert_eq!(t.writer(), Some(&addr(2)));
        assert_eq!(t.last_switchover().map(|s| &s.to), Some(&addr(2)));
    }

    #[test]
    fn a_writer_turning_read_only_is_lost_and_a_lingering_old_primary_is_not_chosen() {
        let t0 = Instant::now();
        let wall = SystemTime::now();
        let mut t = Topology::new(&[addr(1), addr(2)], t0);
        t.observe(&[(addr(1), primary(10)), (addr(2), replica(10))], t0, wall, DELAY);
        t.observe(&[(addr(1), replica(10)), (addr(2), replica(10))], t0, wall, DELAY);
        assert_eq!(t.writer(), None);
        // The old writer claims to be primary again next to the promoted one: the new wins.
        t.observe(&[(addr(1), primary(10)), (addr(2), primary(11))], t0, wall, DELAY);
        assert_eq!(t.writer(), Some(&addr(2)));
        // With two fresh claimants, nothing is chosen.
        let mut u = Topology::new(&[addr(1), addr(2)], t0);
        u.observe(&[(addr(1), primary(10)), (addr(2), primary(11))], t0, wall, DELAY);
        assert_eq!(u.writer(), None);
    }

    fn answered(answer: Answer) -> Observation {
        Observation::Answered(answer)
    }

    #[test]
    fn a_role_query_names_the_writer_and_a_change_of_leader_is_a_switchover() {
        let t0 = Instant::now();
        let wall = SystemTime::now();
        let (w, r, n) = (answered(Answer::Writer), answered(Answer::Replica), answered(Answer::None));
        let mut t = Topology::new(&[addr(1), addr(2), addr(3)], t0);
        t.observe(&[(addr(1), w.clone()), (addr(2), r.clone()), (addr(3), n.clone())], t0, wall, DELAY);
        assert_eq!(t.writer(), Some(&addr(1)));
        let roles: Vec<Role> = t.nodes().iter().map(|n| n.role).collect();
        assert_eq!(roles, [Role::Primary, Role::Replica, Role::None]);
        assert_eq!(t.readable_replicas(&LIMITS), [addr(2)], "a named replica is taken as caught up");
        // The leader steps down (still up): lost at once, and its sessions must end.
        let t1 = t0 + Duration::from_millis(100);
        let out = t.observe(&[(addr(1), r.clone()), (addr(2), r.clone()), (addr(3), n.clone())], t1, wall, DELAY);
        assert_eq!(out, Outcome { switchover: None, stepped_down: Some(addr(1)) });
        assert_eq!(t.writer_state().waiting_because().as_deref(), Some("no node up answers as the writer"));
        // Node 3 is elected.
        let t2 = t1 + Duration::from_millis(100);
        let out = t.observe(&[(addr(1), r.clone()), (addr(2), r.clone()), (addr(3), w.clone())], t2, wall, DELAY);
        let s = out.switchover.unwrap();
        assert_eq!((s.from, s.to, s.duration), (addr(1), addr(3), Duration::from_millis(100)));
        assert_eq!((t.writer(), t.writer_state().waiting_because()), (Some(&addr(3)), None));
        assert_eq!(t.readable_replicas(&LIMITS), [addr(1), addr(2)]);
    }

    #[test]
    fn two_nodes_answering_writer_are_a_split_view_that_pauses_until_one_steps_down() {
        let t0 = Instant::now();
        let wall = SystemTime::now();
        let (w, r) = (answered(Answer::Writer), answered(Answer::Replica));
        let mut t = Topology::new(&[addr(1), addr(2), addr(3)], t0);
        t.observe(&[(addr(1), w.clone()), (addr(2), r.clone()), (addr(3), r.clone())], t0, wall, DELAY);
        // Node 2 claims the lead while node 1 still does: no writer, even the old one.
        let out = t.observe(&[(addr(1), w.clone()), (addr(2), w.clone()), (addr(3), r.clone())], t0, wall, DELAY);
        assert_eq!(out.stepped_down, Some(addr(1)));
        assert_eq!(t.writer(), None);
        assert_eq!(
            t.writer_state().waiting_because().as_deref(),
            Some("split view: 10.0.0.1:1, 10.0.0.1:2 all answer writer")
        );
        // Unlike two primaries by pg_is_in_recovery(), the newcomer is not preferred.
        t.observe(&[(addr(1), w.clone()), (addr(2), w.clone()), (addr(3), r.clone())], t0, wall, DELAY);
        assert_eq!(t.writer(), None);
        // Node 1 steps down: node 2 is the writer.
        let out = t.observe(&[(addr(1), r.clone()), (addr(2), w.clone()), (addr(3), r.clone())], t0, wall, DELAY);
        assert_eq!(out.switchover.map(|s| (s.from, s.to)), Some((addr(1), addr(2))));
        assert_eq!(t.writer(), Some(&addr(2)));
        // A split resolved the other way keeps the writer, and is no switchover.
        t.observe(&[(addr(1), w.clone()), (addr(2), w.clone()), (addr(3), r.clone())], t0, wall, DELAY);
        let out = t.observe(&[(addr(1), r.clone()), (addr(2), w.clone()), (addr(3), r.clone())], t0, wall, DELAY);
        assert_eq!((out.switchover, t.writer()), (None, Some(&addr(2))));
    }

    #[test]
    fn reload_and_discovery_change_the_node_list() {
        let t0 = Instant::now();
        let wall = SystemTime::now();
        let mut t = Topology::new(&[addr(1)], t0);
        assert!(t.discover(addr(2)) && !t.discover(addr(2)) && !t.discover(addr(1)));
        t.observe(&[(addr(1), primary(1)), (addr(2), replica(1))], t0, wall, DELAY);
        assert!(!t.set_configured(&[addr(1), addr(3)], t0));
        let nodes: Vec<(u16, Origin)> = t.nodes().iter().map(|n| (n.addr.port, n.origin)).collect();
        assert_eq!(nodes, [(1, Origin::Configured), (2, Origin::Discovered), (3, Origin::Configured)]);
        assert!(t.set_configured(&[addr(3)], t0), "the writer left the configuration");
        assert_eq!(t.writer(), None);
    }
}

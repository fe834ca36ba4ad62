//! A write load for switchover tests: each client inserts in autocommit as fast as it can,
//! half of them over the simple protocol and half over the extended one, and every statement's
//! start, end and error (if any) is recorded.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;

/// One statement of the load.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Which client ran it.
    pub client: usize,
    /// When it was sent, since the load started.
    pub start: Duration,
    /// When its answer came.
    pub end: Duration,
    /// `"<SQLSTATE> <message>"` (or the client error) if it failed.
    pub error: Option<String>,
}

/// How a client writes its `i`-th row: the simple-protocol SQL, and the extended-protocol SQL
/// with its integer parameters.
pub struct Writes {
    /// SQL for the simple protocol, given (client, i).
    pub simple: fn(usize, i32) -> String,
    /// SQL for the extended protocol (a statement prepared, bound, executed and closed each
    /// time), with `$n` parameters.
    pub extended: &'static str,
    /// The extended statement's parameters, given (client, i).
    pub params: fn(usize, i32) -> Vec<i32>,
}

/// The running load.
pub struct WriteLoad {
    /// When the load started: outcomes are timed from here.
    pub t0: Instant,
    stop: Arc<AtomicBool>,
    outcomes: Arc<Mutex<Vec<Outcome>>>,
    tasks: Vec<JoinHandle<()>>,
}

impl WriteLoad {
    /// Starts one writing task per client (even-numbered ones on the simple protocol).
    pub fn start(clients: Vec<tokio_postgres::Client>, writes: Writes) -> WriteLoad {
        let t0 = Instant::now();
        let stop = Arc::new(AtomicBool::new(false));
        let outcomes = Arc::new(Mutex::new(Vec::new()));
        let writes = Arc::new(writes);
        let mut tasks = Vec::new();
        for (client_id, client) in clients.into_iter().enumerate() {
            let (stop, outcomes, writes) = (stop.clone(), outcomes.clone(), writes.clone());
            tasks.push(tokio::spawn(async move {
                let mut i = 0i32;
                while !stop.load(Ordering::SeqCst) {
                    let start = t0.elapsed();
                    let result = match client_id % 2 {
                        0 => client.simple_query(&(writes.simple)(client_id, i)).await.map(drop),
                        _ => {
                            let params = (writes.params)(client_id, i);
                            let refs: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> =
                                params.iter().map(|p| p as &(dyn tokio_postgres::types::ToSql + Sync)).collect();
                            client.execute(writes.extended, &refs).await.map(drop)
                        }
                    };
                    let error = result.err().map(|e| match e.as_db_error() {
                        Some(d) => format!("{} {}", d.code().code(), d.message()),
                        None => format!("{e}"),
                    });
                    outcomes.lock().unwrap_or_else(|p| p.into_inner()).push(Outcome {
                        client: client_id,
                        start,
                        end: t0.elapsed(),
                        error,
                    });
                    i += 1;
                }
            }));
        }
        WriteLoad { t0, stop, outcomes, tasks }
    }

    /// Stops every client and returns the outcomes, in the order they were recorded.
    pub async fn stop(self) -> anyhow::Result<Vec<Outcome>> {
        self.stop.store(true, Ordering::SeqCst);
        for task in self.tasks {
            task.await?;
        }
        Ok(std::mem::take(&mut *self.outcomes.lock().unwrap_or_else(|p| p.into_inner())))
    }
}

//! The per-call cost of the policy chain: every example plugin, loaded through the public host
//! API from `[[plugins]]` settings like the docs' (`Chain::load`), asked about realistic
//! ~100-byte statements the way a session asks (`Chain::decide` in a tokio runtime), matching
//! and non-matching. The Python and JavaScript plugins (python-router, js-rewrite) are measured
//! too when their components exist (they are skipped, and said so, when not).
//!
//!     bash plugins/build.sh                      # the plugins, into target/plugins/
//!     cargo bench -p pgvane --bench policy       # all cases; append a filter to pick some
//!
//! Besides criterion's report, it prints a table per case: the median time per call (median of
//! criterion's samples, each a batch of calls), the fuel of a warm call, and the largest linear
//! memory of the plugin's instance (`PluginStats::memory_peak_bytes`), and per plugin the time
//! `Chain::load` took (compiling the component, instantiating it and running `init`).
//! docs/plugins.md has the figures and how to read them.

// A benchmark stops at the first surprise: a plugin that does not load, a verdict that is not
// the one the case is about.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout, clippy::print_stderr)]

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use criterion::Criterion;
use pgvane::policy::{Chain, Decision, Loadable, Origin, PluginSettings, Request, Route};

/// The `[databases]` entries of the bench's configuration (the seed's: dev, dev.1, dev.2).
const DATABASES: &[&str] = &["dev", "dev.1", "dev.2"];

/// One plugin with its `[[plugins]]` entry, as a user writes it in pgvane.toml.
struct Setup {
    /// Benchmark group name.
    name: &'static str,
    /// The component in target/plugins/.
    file: &'static str,
    /// The `[[plugins]]` entry's limits (keys before `[config]`).
    limits: &'static str,
    /// Its `[config]` table.
    config: &'static str,
    cases: &'static [Case],
}

/// One statement and what the plugin must answer.
struct Case {
    name: &'static str,
    sql: &'static str,
    expect: Expect,
}

#[derive(Debug)]
enum Expect {
    Pass,
    RouteTo(&'static str),
    Primary,
    Replica,
    Rewrite,
    Reject,
}

/// The seed's pgbouncer-rr routing table (plugins/regex-router/README.md), for regex-router and
/// python-router alike, so their rows compare.
const ROUTING_TABLE: &str = r#"rules = [
    { usernameRegex = '.*', queryRegex = '.*tablea.*', dbkey = "dev.1" },
    { usernameRegex = '.*', queryRegex = '.*tableb.*', dbkey = "dev.2" },
]
"#;

/// The seed's star-schema rewrite (tests/tests/policy.rs, plugins/query-rewrite), for
/// query-rewrite and js-rewrite alike.
const STAR_REWRITE: &str = r#"rules = [{ queryRegex = '^\s*SELECT storename, SUM\(total\) FROM sales JOIN store USING \(storeid\) GROUP BY storename ORDER BY storename\s*;?\s*$', replace = "SELECT storename, SUM(total) FROM store_sales GROUP BY storename ORDER BY storename" }]
"#;

/// The defaults, written out.
const RUST_LIMITS: &str = "fuel = 5_000_000\nmemory_limit_mb = 16\ntimeout_ms = 10\non_error = \"pass\"";

/// What the Python and JavaScript plugins' READMEs ask for.
const LANG_LIMITS: &str = "fuel = 5_000_000\nmemory_limit_mb = 32\ntimeout_ms = 50\non_error = \"pass\"";

/// The plugins written in other languages (plugins/build-lang.sh builds them; they need Python
/// and Node): measured when their components exist. The limits are the ones their READMEs ask
/// for; the configs are the Rust plugins' above, so the rows compare.
const LANG_SETUPS: &[Setup] = &[
    Setup {
        name: "python-router",
        file: "python_router",
        limits: LANG_LIMITS,
        config: ROUTING_TABLE,
        cases: REGEX_ROUTER_CASES,
    },
    Setup {
        name: "js-rewrite",
        file: "js_rewrite",
        limits: LANG_LIMITS,
        config: STAR_REWRITE,
        cases: QUERY_REWRITE_CASES,
    },
];

const REGEX_ROUTER_CASES: &[Case] = &[
    Case {
        name: "tablea (1st rule)",
        sql: "SELECT id, customer_id, total, created_at FROM tablea WHERE customer_id = 42 ORDER BY created_at",
        expect: Expect::RouteTo("dev.1"),
    },
    Case {
        name: "tableb (2nd rule)",
        sql: "SELECT id, customer_id, total, created_at FROM tableb WHERE customer_id = 42 ORDER BY created_at",
        expect: Expect::RouteTo("dev.2"),
    },
    Case {
        name: "no match",
        sql: "SELECT id, customer_id, total, created_at FROM orders WHERE customer_id = 42 ORDER BY created_at",
        expect: Expect::Pass,
    },
];

const QUERY_REWRITE_CASES: &[Case] = &[
    Case {
        name: "star join (rewritten)",
        sql: "SELECT storename, SUM(total) FROM sales JOIN store USING (storeid) GROUP BY storename ORDER BY storename",
        expect: Expect::Rewrite,
    },
    Case {
        name: "no match",
        sql:
            "SELECT prodname, SUM(total) FROM sales JOIN product USING (productid) GROUP BY prodname ORDER BY prodname",
        expect: Expect::Pass,
    },
];

const SETUPS: &[Setup] = &[
    Setup {
        name: "regex-router",
        file: "regex_router",
        limits: RUST_LIMITS,
        config: ROUTING_TABLE,
        cases: REGEX_ROUTER_CASES,
    },
    Setup {
        name: "query-rewrite",
        file: "query_rewrite",
        limits: "",
        config: STAR_REWRITE,
        cases: QUERY_REWRITE_CASES,
    },
    Setup {
        name: "rw-split",
        file: "rw_split",
        limits: "",
        config: "",
        cases: &[
            Case {
                name: "read",
                sql: "SELECT a.id, a.balance, b.name FROM accounts a JOIN branches b USING (branch_id) WHERE a.id = 42",
                expect: Expect::Replica,
            },
            Case {
                name: "write",
                sql: "UPDATE accounts SET balance = balance + 100, updated_at = now() WHERE id = 42 AND branch_id = 7",
                expect: Expect::Primary,
            },
            Case {
                name: "read calling nextval",
                sql: "SELECT nextval('orders_id_seq') AS id, customer_id FROM customers WHERE email = 'a@example.com'",
                expect: Expect::Primary,
            },
        ],
    },
    Setup {
        name: "tenant-guard",
        file: "tenant_guard",
        // tests/tests/policy.rs and docs/config.md.
        limits: "",
        config: r#"
rules = [{ usernameRegex = "^app$", tables = ["secrets"], sqlstate = "42501", message = "{user} may not read {table}" }]
"#,
        cases: &[
            Case {
                name: "allowed",
                sql: "SELECT o.id, o.total, c.name FROM orders o JOIN customers c ON c.id = o.customer_id WHERE o.id = 42",
                expect: Expect::Pass,
            },
            Case {
                name: "forbidden table",
                sql: "SELECT s.id, s.value, c.name FROM secrets s JOIN customers c ON c.id = s.customer_id WHERE s.id = 4",
                expect: Expect::Reject,
            },
        ],
    },
];

fn plugins_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/plugins")
}

fn settings(setup: &Setup) -> PluginSettings {
    let path = plugins_dir().join(format!("{}.wasm", setup.file));
    let text = format!(
        "name = \"{}\"\npath = {:?}\n{}\n[config]\n{}",
        setup.name,
        path.display().to_string(),
        setup.limits,
        setup.config
    );
    toml::from_str(&text).unwrap_or_else(|e| panic!("{}: bad [[plugins]] entry: {e}", setup.name))
}

/// The plugin's component, read from target/plugins/, ready for `Chain::load`.
fn loadable(setup: &Setup) -> Loadable {
    let settings = settings(setup);
    let path = plugins_dir().join(format!("{}.wasm", setup.file));
    let wasm = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let origin = Origin { source: path.display().to_string(), digest: String::new(), loaded_at: SystemTime::now() };
    Loadable { settings, origin, wasm }
}

fn check(setup: &Setup, case: &Case, decision: &Decision) {
    let ok = match (&case.expect, decision) {
        (Expect::Pass, Decision::Run { route: None, sql: None }) => true,
        (Expect::RouteTo(db), Decision::Run { route: Some(Route::Database(d)), sql: None }) => d == db,
        (Expect::Primary, Decision::Run { route: Some(Route::Primary), sql: None }) => true,
        (Expect::Replica, Decision::Run { route: Some(Route::Replica), sql: None }) => true,
        (Expect::Rewrite, Decision::Run { route: None, sql: Some(_) }) => true,
        (Expect::Reject, Decision::Reject(_)) => true,
        _ => false,
    };
    assert!(ok, "{} / {}: expected {:?}, got {decision:?}", setup.name, case.name, case.expect);
}

/// One row of the summary.
struct Row {
    plugin: &'static str,
    case: &'static str,
    bytes: usize,
    median: Option<Duration>,
    fuel: u64,
    memory_peak: u64,
}

fn main() {
    let missing: Vec<PathBuf> =
        SETUPS.iter().map(|s| plugins_dir().join(format!("{}.wasm", s.file))).filter(|p| !p.exists()).collect();
    if !missing.is_empty() {
        for p in &missing {
            eprintln!("policy bench: {} is missing", p.display());
        }
        eprintln!("policy bench: build the plugins first: bash plugins/build.sh");
        std::process::exit(2);
    }

    let mut setups: Vec<&Setup> = SETUPS.iter().collect();
    for setup in LANG_SETUPS {
        let path = plugins_dir().join(format!("{}.wasm", setup.file));
        if path.exists() {
            setups.push(setup);
        } else {
            eprintln!(
                "policy bench: {} is missing, {} is not measured (bash plugins/build.sh builds it)",
                path.display(),
                setup.name
            );
        }
    }

    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let databases: Vec<String> = DATABASES.iter().map(|d| (*d).to_owned()).collect();
    let mut criterion = Criterion::default().configure_from_args();
    let mut rows = Vec::new();
    let mut loads = Vec::new();

    for setup in setups {
        let wasm = loadable(setup);
        let bytes = wasm.wasm.len();
        let started = Instant::now();
        let chain =
            rt.block_on(Chain::load(vec![wasm], &databases, None)).unwrap_or_else(|e| panic!("{}: {e}", setup.name));
        loads.push((setup.name, bytes, started.elapsed()));
        let plugin = &chain.plugins()[0];
        let known = |db: &str| DATABASES.contains(&db);
        let mut group = criterion.benchmark_group(setup.name);
        for case in setup.cases {
            let request = Request {
                user: "app",
                database: "dev",
                application_name: "psql",
                client_addr: "192.0.2.7".to_owned(),
                session_id: 4242,
                sql: case.sql,
                in_transaction: false,
                parse: None,
            };
            // Check the verdict, then read the fuel of a warm call: the first calls of an
            // instance cost more (the regex crate fills its lazy DFA cache on first use).
            let decision = rt.block_on(chain.decide(&request, known));
            check(setup, case, &decision);
            let fuel = rt.block_on(async {
                for _ in 0..WARM_CALLS {
                    chain.decide(&request, known).await;
                }
                let before = plugin.stats.fuel_used.load(Relaxed);
                for _ in 0..FUEL_CALLS {
                    chain.decide(&request, known).await;
                }
                (plugin.stats.fuel_used.load(Relaxed) - before) / FUEL_CALLS
            });

            // Per-call time of each of criterion's samples; the last `sample_size` calls of the
            // routine are the measurement (the earlier ones are its warm-up).
            let samples: Arc<Mutex<Vec<Duration>>> = Arc::default();
            let recorded = samples.clone();
            group.bench_function(case.name, |b| {
                b.iter_custom(|iters| {
                    let elapsed = rt.block_on(async {
                        let started = Instant::now();
                        for _ in 0..iters {
                            black_box(chain.decide(black_box(&request), known).await);
                        }
                        started.elapsed()
                    });
                    if let Ok(mut s) = recorded.lock() {
                        s.push(elapsed / u32::try_from(iters.max(1)).unwrap_or(u32::MAX));
                    }
                    elapsed
                })
            });
            let median = samples.lock().ok().and_then(|s| {
                let mut last: Vec<Duration> = s.iter().rev().take(SAMPLE_SIZE).copied().collect();
                last.sort();
                last.get(last.len() / 2).copied()
            });
            let memory_peak = plugin.stats.memory_peak_bytes.load(Relaxed);
            rows.push(Row { plugin: setup.name, case: case.name, bytes: case.sql.len(), median, fuel, memory_peak });
        }
        group.finish();
    }
    criterion.final_summary();

    println!("\n| plugin | query | bytes | median per call | fuel per call | memory per instance |");
    println!("|---|---|---:|---:|---:|---:|");
    for r in &rows {
        let median = r.median.map_or("-".to_owned(), |m| format!("{:.2} µs", m.as_secs_f64() * 1e6));
        let memory = format!("{:.1} MiB", r.memory_peak as f64 / (1024.0 * 1024.0));
        println!("| {} | {} | {} | {} | {} | {} |", r.plugin, r.case, r.bytes, median, r.fuel, memory);
    }
    println!("\n| plugin | component | Chain::load (compile, instantiate, init) |");
    println!("|---|---:|---:|");
    for (name, bytes, took) in &loads {
        println!("| {name} | {:.1} MB | {:.2} s |", *bytes as f64 / 1e6, took.as_secs_f64());
    }
}

/// Calls before the fuel of a call is read, and calls it is averaged over.
const WARM_CALLS: u64 = 1000;
const FUEL_CALLS: u64 = 100;

/// criterion's default sample size (the bench does not change it).
const SAMPLE_SIZE: usize = 100;

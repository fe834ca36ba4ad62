//! The drivers applications use, through a transaction pool smaller than their number of
//! connections: psycopg 3, asyncpg, node-postgres, postgres.js and PgJDBC, each with 8 workers
//! on a pool of 4 running prepared statements, transactions, an error inside a transaction and
//! the recovery after it. Each script checks every answer itself and exits non-zero on the first
//! wrong one; the test then checks what the transactions left in the table.

use std::process::Output;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use pgvane_tests::drivers;
use pgvane_tests::fixture::{Proxied, ProxyOptions, APP_DB, APP_PASSWORD, APP_USER};

/// Workers per driver, and the transaction pool they share.
const WORKERS: usize = 8;
const POOL_SIZE: usize = 4;
/// Rounds each worker runs.
const ROUNDS: usize = 20;
/// The bound on one driver's whole run.
const RUN_TIMEOUT: Duration = Duration::from_secs(90);

/// pgvane in transaction mode with a pool of [`POOL_SIZE`] and the table `smoke(worker, i)`.
async fn transaction_pool() -> Result<Proxied> {
    let p = Proxied::start(ProxyOptions {
        settings: format!("pool_mode = \"transaction\"\ndefault_pool_size = {POOL_SIZE}"),
        ..ProxyOptions::default()
    })
    .await?;
    p.client().await?.batch_execute("create table smoke(worker int not null, i int not null)").await?;
    Ok(p)
}

/// The arguments every script takes: port, user, password, database, workers, rounds.
fn args(p: &Proxied) -> Vec<String> {
    [p.port().to_string(), APP_USER.into(), APP_PASSWORD.into(), APP_DB.into(), WORKERS.to_string(), ROUNDS.to_string()]
        .into()
}

/// Waits (bounded) for a driver's run, requires success and checks the table: every worker
/// committed one row per round, and no row of a rolled-back transaction is there.
async fn check(p: &Proxied, driver: &str, run: impl std::future::Future<Output = Result<Output>>) -> Result<()> {
    let out = tokio::time::timeout(RUN_TIMEOUT, run)
        .await
        .with_context(|| format!("{driver}: the run did not finish within {RUN_TIMEOUT:?}"))??;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(out.status.success(), "{driver} failed ({}): {stdout}\n{stderr}", out.status);
    ensure!(stdout.trim() == "ok", "{driver} printed: {stdout}\n{stderr}");
    let rows = p
        .direct_superuser()
        .await?
        .query("select worker, count(*), count(distinct i), min(i), max(i) from smoke group by worker order by 1", &[])
        .await?;
    let got: Vec<(i32, i64, i64, i32, i32)> =
        rows.iter().map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4))).collect();
    let rounds = ROUNDS as i64;
    let want: Vec<(i32, i64, i64, i32, i32)> =
        (0..WORKERS as i32).map(|w| (w, rounds, rounds, 0, ROUNDS as i32 - 1)).collect();
    assert_eq!(got, want, "{driver}: (worker, rows, distinct rounds, min, max) committed");
    Ok(())
}

/// Per worker `w` and round `i`: a prepared `select $1::int * 2`; a transaction inserting
/// `(w, i)` that sees its own row and commits; a transaction inserting `(w, -1 - i)` that fails
/// with 22012 and rolls back; a prepared `select $1::text` after it.
const PSYCOPG: &str = r#"
import sys, threading
import psycopg
port, user, password, db, workers, rounds = sys.argv[1:7]
errors = []
def worker(w):
    try:
        with psycopg.connect(host="127.0.0.1", port=port, user=user, password=password, dbname=db,
                             connect_timeout=10, prepare_threshold=0, autocommit=True,
                             options="-c statement_timeout=20000") as conn:
            for i in range(int(rounds)):
                got = conn.execute("select %s::int * 2", (i,), prepare=True).fetchone()[0]
                assert got == 2 * i, f"worker {w}: {got} for {i}"
                with conn.transaction():
                    conn.execute("insert into smoke values (%s, %s)", (w, i))
                    n = conn.execute("select count(*) from smoke where worker = %s", (w,)).fetchone()[0]
                    assert n == i + 1, f"worker {w} round {i}: sees {n} rows"
                try:
                    with conn.transaction():
                        conn.execute("insert into smoke values (%s, %s)", (w, -1 - i))
                        conn.execute("select 1 / (%s::int - %s::int)", (i, i))
                    raise AssertionError("1/0 did not fail")
                except psycopg.errors.DivisionByZero:
                    pass
                got = conn.execute("select %s::text", (f"ok {w}",), prepare=True).fetchone()[0]
                assert got == f"ok {w}", got
    except BaseException as e:
        errors.append(f"worker {w}: {e!r}")
threads = [threading.Thread(target=worker, args=(w,)) for w in range(int(workers))]
for t in threads: t.start()
for t in threads: t.join(80)
if any(t.is_alive() for t in threads): errors.append("a worker hung")
if errors: sys.exit("\n".join(errors))
print("ok")
"#;

#[tokio::test]
async fn psycopg_workers_share_a_small_transaction_pool() -> Result<()> {
    let p = transaction_pool().await?;
    check(&p, "psycopg", drivers::run_python(PSYCOPG, args(&p))).await
}

const ASYNCPG: &str = r#"
import sys, asyncio
import asyncpg
port, user, password, db, workers, rounds = sys.argv[1:7]
async def worker(w):
    conn = await asyncpg.connect(host="127.0.0.1", port=int(port), user=user, password=password,
                                 database=db, timeout=10, command_timeout=20)
    try:
        double = await conn.prepare("select $1::int * 2")
        text = await conn.prepare("select $1::text")
        for i in range(int(rounds)):
            got = await double.fetchval(i)
            assert got == 2 * i, f"worker {w}: {got} for {i}"
            async with conn.transaction():
                await conn.execute("insert into smoke values ($1, $2)", w, i)
                n = await conn.fetchval("select count(*) from smoke where worker = $1", w)
                assert n == i + 1, f"worker {w} round {i}: sees {n} rows"
            try:
                async with conn.transaction():
                    await conn.execute("insert into smoke values ($1, $2)", w, -1 - i)
                    await conn.fetchval("select 1 / ($1::int - $2::int)", i, i)
                raise AssertionError("1/0 did not fail")
            except asyncpg.exceptions.DivisionByZeroError:
                pass
            got = await text.fetchval(f"ok {w}")
            assert got == f"ok {w}", got
    finally:
        await conn.close()
async def main():
    results = await asyncio.wait_for(
        asyncio.gather(*(worker(w) for w in range(int(workers))), return_exceptions=True), 80)
    errors = [f"worker {w}: {r!r}" for w, r in enumerate(results) if isinstance(r, BaseException)]
    if errors: sys.exit("\n".join(errors))
    print("ok")
asyncio.run(main())
"#;

#[tokio::test]
async fn asyncpg_workers_share_a_small_transaction_pool() -> Result<()> {
    let p = transaction_pool().await?;
    check(&p, "asyncpg", drivers::run_python(ASYNCPG, args(&p))).await
}

/// node-postgres: named queries (`name:` makes them prepared statements).
const NODE_PG: &str = r#"
import pg from 'pg';
const [port, user, password, database, workers, rounds] = process.argv.slice(2);
const assert = (ok, what) => { if (!ok) throw new Error(what); };
async function worker(w) {
  const c = new pg.Client({ host: '127.0.0.1', port: +port, user, password, database,
                            connectionTimeoutMillis: 10000, statement_timeout: 20000 });
  await c.connect();
  try {
    for (let i = 0; i < +rounds; i++) {
      let r = await c.query({ name: 'double', text: 'select $1::int * 2 as v', values: [i] });
      assert(r.rows[0].v === 2 * i, `worker ${w}: ${r.rows[0].v} for ${i}`);
      await c.query('begin');
      await c.query({ name: 'insert', text: 'insert into smoke values ($1, $2)', values: [w, i] });
      r = await c.query({ name: 'count', text: 'select count(*)::int as n from smoke where worker = $1', values: [w] });
      assert(r.rows[0].n === i + 1, `worker ${w} round ${i}: sees ${r.rows[0].n} rows`);
      await c.query('commit');
      await c.query('begin');
      await c.query({ name: 'insert', text: 'insert into smoke values ($1, $2)', values: [w, -1 - i] });
      let code = null;
      try { await c.query({ name: 'div', text: 'select 1 / ($1::int - $2::int)', values: [i, i] }); }
      catch (e) { code = e.code; }
      assert(code === '22012', `1/0 gave ${code}`);
      await c.query('rollback');
      r = await c.query({ name: 'text', text: 'select $1::text as v', values: [`ok ${w}`] });
      assert(r.rows[0].v === `ok ${w}`, r.rows[0].v);
    }
  } finally {
    await c.end();
  }
}
const timer = setTimeout(() => { console.error('a worker hung'); process.exit(2); }, 80000);
const results = await Promise.allSettled([...Array(+workers).keys()].map(worker));
clearTimeout(timer);
const errors = results.flatMap((r, w) => r.status === 'rejected' ? [`worker ${w}: ${r.reason.stack}`] : []);
if (errors.length) { console.error(errors.join('\n')); process.exit(1); }
console.log('ok');
"#;

#[tokio::test]
async fn node_postgres_workers_share_a_small_transaction_pool() -> Result<()> {
    let p = transaction_pool().await?;
    check(&p, "node-postgres", drivers::run_node(NODE_PG, args(&p))).await
}

/// postgres.js: tagged queries are prepared statements by default; `sql.begin` runs a transaction.
const POSTGRES_JS: &str = r#"
import postgres from 'postgres';
const [port, user, password, database, workers, rounds] = process.argv.slice(2);
const assert = (ok, what) => { if (!ok) throw new Error(what); };
async function worker(w) {
  const sql = postgres({ host: '127.0.0.1', port: +port, user, password, database, max: 1,
                         connect_timeout: 10, prepare: true, onnotice: () => {},
                         connection: { statement_timeout: 20000 } });
  try {
    for (let i = 0; i < +rounds; i++) {
      let [r] = await sql`select ${i}::int * 2 as v`;
      assert(r.v === 2 * i, `worker ${w}: ${r.v} for ${i}`);
      await sql.begin(async tx => {
        await tx`insert into smoke values (${w}, ${i})`;
        const [c] = await tx`select count(*)::int as n from smoke where worker = ${w}`;
        assert(c.n === i + 1, `worker ${w} round ${i}: sees ${c.n} rows`);
      });
      let code = null;
      try {
        await sql.begin(async tx => {
          await tx`insert into smoke values (${w}, ${-1 - i})`;
          await tx`select 1 / (${i}::int - ${i}::int)`;
        });
      } catch (e) { code = e.code; }
      assert(code === '22012', `1/0 gave ${code}`);
      [r] = await sql`select ${`ok ${w}`}::text as v`;
      assert(r.v === `ok ${w}`, r.v);
    }
  } finally {
    await sql.end({ timeout: 5 });
  }
}
const timer = setTimeout(() => { console.error('a worker hung'); process.exit(2); }, 80000);
const results = await Promise.allSettled([...Array(+workers).keys()].map(worker));
clearTimeout(timer);
const errors = results.flatMap((r, w) => r.status === 'rejected' ? [`worker ${w}: ${r.reason.stack}`] : []);
if (errors.length) { console.error(errors.join('\n')); process.exit(1); }
console.log('ok');
"#;

#[tokio::test]
async fn postgres_js_workers_share_a_small_transaction_pool() -> Result<()> {
    let p = transaction_pool().await?;
    check(&p, "postgres.js", drivers::run_node(POSTGRES_JS, args(&p))).await
}

/// PgJDBC with `prepareThreshold=1`: each PreparedStatement is a server-side prepared statement
/// from its first execution.
const PGJDBC: &str = r#"
import java.sql.*;
import java.util.*;
import java.util.concurrent.*;

public class Main {
    static void check(boolean ok, String what) { if (!ok) throw new AssertionError(what); }

    static void worker(String url, String user, String password, int w, int rounds) throws Exception {
        try (Connection c = DriverManager.getConnection(url, user, password)) {
            try (PreparedStatement dbl = c.prepareStatement("select ?::int * 2");
                 PreparedStatement text = c.prepareStatement("select ?::text");
                 PreparedStatement insert = c.prepareStatement("insert into smoke values (?, ?)");
                 PreparedStatement count = c.prepareStatement("select count(*) from smoke where worker = ?");
                 PreparedStatement div = c.prepareStatement("select 1 / (?::int - ?::int)")) {
                for (int i = 0; i < rounds; i++) {
                    dbl.setInt(1, i);
                    try (ResultSet r = dbl.executeQuery()) { r.next(); check(r.getInt(1) == 2 * i, "worker " + w + ": double " + i); }
                    c.setAutoCommit(false);
                    insert.setInt(1, w); insert.setInt(2, i); insert.executeUpdate();
                    count.setInt(1, w);
                    try (ResultSet r = count.executeQuery()) { r.next(); check(r.getLong(1) == i + 1, "worker " + w + " round " + i + ": sees " + r.getLong(1)); }
                    c.commit();
                    insert.setInt(1, w); insert.setInt(2, -1 - i); insert.executeUpdate();
                    String code = null;
                    div.setInt(1, i); div.setInt(2, i);
                    try (ResultSet r = div.executeQuery()) { } catch (SQLException e) { code = e.getSQLState(); }
                    check("22012".equals(code), "1/0 gave " + code);
                    c.rollback();
                    c.setAutoCommit(true);
                    text.setString(1, "ok " + w);
                    try (ResultSet r = text.executeQuery()) { r.next(); check(r.getString(1).equals("ok " + w), r.getString(1)); }
                }
            }
        }
    }

    public static void main(String[] args) throws Exception {
        String url = "jdbc:postgresql://127.0.0.1:" + args[0] + "/" + args[3]
            + "?prepareThreshold=1&connectTimeout=10&socketTimeout=30&options=-c%20statement_timeout%3D20000";
        int workers = Integer.parseInt(args[4]), rounds = Integer.parseInt(args[5]);
        ExecutorService pool = Executors.newFixedThreadPool(workers);
        List<Future<?>> futures = new ArrayList<>();
        for (int w = 0; w < workers; w++) {
            final int id = w;
            futures.add(pool.submit(() -> { worker(url, args[1], args[2], id, rounds); return null; }));
        }
        List<String> errors = new ArrayList<>();
        for (int w = 0; w < workers; w++) {
            try { futures.get(w).get(80, TimeUnit.SECONDS); }
            catch (Exception e) { errors.add("worker " + w + ": " + (e.getCause() != null ? e.getCause() : e)); }
        }
        pool.shutdownNow();
        if (!errors.isEmpty()) { System.err.println(String.join("\n", errors)); System.exit(1); }
        System.out.println("ok");
        System.exit(0);
    }
}
"#;

#[tokio::test]
async fn pgjdbc_workers_share_a_small_transaction_pool() -> Result<()> {
    let p = transaction_pool().await?;
    check(&p, "PgJDBC", drivers::run_java(PGJDBC, args(&p))).await
}

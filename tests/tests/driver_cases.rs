//! The cases of issue 18 with the drivers applications use, each run twice: directly against
//! PostgreSQL and through pgvane's transaction pooling. A script prints what it observed
//! (rows, columns, SQLSTATEs) as JSON, and the two runs must print the same: a client cannot
//! tell pgvane from a direct connection. Where the direct run is the reference, only the
//! proxied run's difference would fail the test.

use std::time::Duration;

use anyhow::Result;
use pgvane_tests::drivers;
use pgvane_tests::fixture::{Proxied, ProxyOptions, APP_DB, APP_PASSWORD, APP_USER};
use pgvane_tests::{SUPERUSER, SUPERUSER_PASSWORD};

/// The bound on one script run.
const RUN_TIMEOUT: Duration = Duration::from_secs(90);

fn transaction_mode(pool_size: usize) -> ProxyOptions {
    ProxyOptions {
        settings: format!(
            "pool_mode = \"transaction\"\ndefault_pool_size = {pool_size}\nquery_wait_timeout_ms = 60000"
        ),
        ..ProxyOptions::default()
    }
}

/// Arguments every script takes: port, user, password, database, a suffix for its object
/// names, and the direct port with the superuser's name and password (for pg_terminate_backend).
fn args(p: &Proxied, port: u16, suffix: &str) -> Vec<String> {
    vec![
        port.to_string(),
        APP_USER.into(),
        APP_PASSWORD.into(),
        APP_DB.into(),
        suffix.into(),
        p.cluster.port().to_string(),
        SUPERUSER.into(),
        SUPERUSER_PASSWORD.into(),
    ]
}

/// Runs a script (bounded), requires success, and returns what it printed.
async fn observe(what: &str, run: impl std::future::Future<Output = Result<std::process::Output>>) -> Result<String> {
    drivers::observe(what, RUN_TIMEOUT, run).await
}

/// Runs `script` with `run` directly and through pgvane (a transaction pool of
/// `pool_size`), and requires the same observations.
async fn same_as_direct<F, Fut>(driver: &str, pool_size: usize, run: F) -> Result<()>
where
    F: Fn(Vec<String>) -> Fut,
    Fut: std::future::Future<Output = Result<std::process::Output>>,
{
    let p = Proxied::start(transaction_mode(pool_size)).await?;
    let direct = observe(&format!("{driver} direct"), run(args(&p, p.cluster.port(), "direct"))).await?;
    let proxied = observe(&format!("{driver} through pgvane"), run(args(&p, p.port(), "proxied"))).await?;
    println!("{driver}: {proxied}");
    // Object names carry the run's suffix.
    let proxied = proxied.replace("_proxied", "_direct");
    assert_eq!(proxied, direct, "{driver}: through pgvane (left) and directly (right) differ");
    Ok(())
}

/// Schema changes under prepared statements: a table gains a column (ALTER from another
/// connection, then from the same one) and a type is dropped and created again, each looked
/// at from the connection that prepared the query before and from a fresh one.
const PSYCOPG_SCHEMA: &str = r#"
import sys, json, psycopg
port, user, password, db, suffix = sys.argv[1:6]
def connect():
    return psycopg.connect(host="127.0.0.1", port=port, user=user, password=password, dbname=db,
                           autocommit=True, prepare_threshold=0, connect_timeout=10)
def attempt(conn, sql):
    try:
        cur = conn.execute(sql, prepare=True)
        return [[d.name for d in cur.description], [list(r) for r in cur.fetchall()]]
    except psycopg.Error as e:
        return e.sqlstate
t, mood = f"t_{suffix}", f"mood_{suffix}"
out = {}
with connect() as a, connect() as b:
    a.execute(f"create table {t}(a int)"); a.execute(f"insert into {t} values (1)")
    q = f"select * from {t}"
    out["1 before"] = attempt(a, q)
    b.execute(f"alter table {t} add column c int default 7")
    out["2 same, ddl elsewhere"] = attempt(a, q)
    out["3 same, again"] = attempt(a, q)
    with connect() as c: out["4 fresh"] = attempt(c, q)
    a.execute(f"alter table {t} add column d int default 8")
    out["5 same, own ddl"] = attempt(a, q)
    with connect() as c: out["6 fresh"] = attempt(c, q)
    a.execute(f"create type {mood} as enum ('sad', 'ok')")
    tq = f"select 'ok'::{mood}::text as m, pg_typeof('ok'::{mood})::text as t"
    out["7 type before"] = attempt(a, tq)
    b.execute(f"drop type {mood}"); b.execute(f"create type {mood} as enum ('ok', 'happy')")
    out["8 type same"] = attempt(a, tq)
    with connect() as c: out["9 type fresh"] = attempt(c, tq)
print(json.dumps(out, sort_keys=True))
"#;

const ASYNCPG_SCHEMA: &str = r#"
import sys, json, asyncio, asyncpg
port, user, password, db, suffix = sys.argv[1:6]
async def connect():
    return await asyncpg.connect(host="127.0.0.1", port=int(port), user=user, password=password,
                                 database=db, timeout=10)
async def attempt(conn, sql):
    try:
        rows = await conn.fetch(sql)
        return [list(rows[0].keys()) if rows else [], [list(r.values()) for r in rows]]
    except asyncpg.PostgresError as e:
        return e.sqlstate
    except asyncpg.InterfaceError as e:
        return type(e).__name__
async def main():
    t, mood = f"t_{suffix}", f"mood_{suffix}"
    out = {}
    a, b = await connect(), await connect()
    await a.execute(f"create table {t}(a int); insert into {t} values (1)")
    q = f"select * from {t}"
    out["1 before"] = await attempt(a, q)
    await b.execute(f"alter table {t} add column c int default 7")
    out["2 same, ddl elsewhere"] = await attempt(a, q)
    out["3 same, again"] = await attempt(a, q)
    c = await connect(); out["4 fresh"] = await attempt(c, q); await c.close()
    await a.execute(f"alter table {t} add column d int default 8")
    out["5 same, own ddl"] = await attempt(a, q)
    c = await connect(); out["6 fresh"] = await attempt(c, q); await c.close()
    await a.execute(f"create type {mood} as enum ('sad', 'ok')")
    tq = f"select 'ok'::{mood}::text as m, pg_typeof('ok'::{mood})::text as t"
    out["7 type before"] = await attempt(a, tq)
    await b.execute(f"drop type {mood}; create type {mood} as enum ('ok', 'happy')")
    out["8 type same"] = await attempt(a, tq)
    c = await connect(); out["9 type fresh"] = await attempt(c, tq); await c.close()
    await a.close(); await b.close()
    print(json.dumps(out, sort_keys=True))
asyncio.run(main())
"#;

const NODE_PG_SCHEMA: &str = r#"
import pg from 'pg';
const [port, user, password, database, suffix] = process.argv.slice(2);
const connect = async () => { const c = new pg.Client({ host: '127.0.0.1', port: +port, user, password, database }); await c.connect(); return c; };
const attempt = async (c, name, text) => {
  try { const r = await c.query({ name, text }); return [r.fields.map(f => f.name), r.rows.map(Object.values)]; }
  catch (e) { return e.code ?? e.message; }
};
const t = `t_${suffix}`, mood = `mood_${suffix}`, out = {};
const a = await connect(), b = await connect();
await a.query(`create table ${t}(a int); insert into ${t} values (1)`);
const q = `select * from ${t}`;
out['1 before'] = await attempt(a, 'q', q);
await b.query(`alter table ${t} add column c int default 7`);
out['2 same, ddl elsewhere'] = await attempt(a, 'q', q);
out['3 same, again'] = await attempt(a, 'q', q);
let c = await connect(); out['4 fresh'] = await attempt(c, 'q', q); await c.end();
await a.query(`alter table ${t} add column d int default 8`);
out['5 same, own ddl'] = await attempt(a, 'q', q);
c = await connect(); out['6 fresh'] = await attempt(c, 'q', q); await c.end();
await a.query(`create type ${mood} as enum ('sad', 'ok')`);
const tq = `select 'ok'::${mood}::text as m, pg_typeof('ok'::${mood})::text as t`;
out['7 type before'] = await attempt(a, 'tq', tq);
await b.query(`drop type ${mood}; create type ${mood} as enum ('ok', 'happy')`);
out['8 type same'] = await attempt(a, 'tq', tq);
c = await connect(); out['9 type fresh'] = await attempt(c, 'tq', tq); await c.end();
await a.end(); await b.end();
console.log(JSON.stringify(out, Object.keys(out).sort()));
"#;

const POSTGRES_JS_SCHEMA: &str = r#"
import postgres from 'postgres';
const [port, user, password, database, suffix] = process.argv.slice(2);
const connect = () => postgres({ host: '127.0.0.1', port: +port, user, password, database, max: 1, prepare: true, onnotice: () => {} });
const attempt = async (sql, text) => {
  try { const r = await sql.unsafe(text, [], { prepare: true }); return [r.columns.map(c => c.name), r.map(Object.values)]; }
  catch (e) { return e.code ?? e.message; }
};
const t = `t_${suffix}`, mood = `mood_${suffix}`, out = {};
const a = connect(), b = connect();
await a.unsafe(`create table ${t}(a int)`); await a.unsafe(`insert into ${t} values (1)`);
const q = `select * from ${t}`;
out['1 before'] = await attempt(a, q);
await b.unsafe(`alter table ${t} add column c int default 7`);
out['2 same, ddl elsewhere'] = await attempt(a, q);
out['3 same, again'] = await attempt(a, q);
let c = connect(); out['4 fresh'] = await attempt(c, q); await c.end();
await a.unsafe(`alter table ${t} add column d int default 8`);
out['5 same, own ddl'] = await attempt(a, q);
c = connect(); out['6 fresh'] = await attempt(c, q); await c.end();
await a.unsafe(`create type ${mood} as enum ('sad', 'ok')`);
const tq = `select 'ok'::${mood}::text as m, pg_typeof('ok'::${mood})::text as t`;
out['7 type before'] = await attempt(a, tq);
await b.unsafe(`drop type ${mood}`); await b.unsafe(`create type ${mood} as enum ('ok', 'happy')`);
out['8 type same'] = await attempt(a, tq);
c = connect(); out['9 type fresh'] = await attempt(c, tq); await c.end();
await a.end(); await b.end();
console.log(JSON.stringify(out, Object.keys(out).sort()));
"#;

const PGJDBC_SCHEMA: &str = r#"
import java.sql.*;
import java.util.*;

public class Main {
    static String url;
    static String[] a;
    static Connection connect() throws SQLException { return DriverManager.getConnection(url, a[1], a[2]); }
    static String attempt(Connection c, String sql) {
        try (PreparedStatement s = c.prepareStatement(sql); ResultSet r = s.executeQuery()) {
            ResultSetMetaData m = r.getMetaData();
            List<String> cols = new ArrayList<>(), rows = new ArrayList<>();
            for (int i = 1; i <= m.getColumnCount(); i++) cols.add(m.getColumnName(i));
            while (r.next()) { List<String> row = new ArrayList<>(); for (int i = 1; i <= m.getColumnCount(); i++) row.add(r.getString(i)); rows.add(row.toString()); }
            return cols + " " + rows;
        } catch (SQLException e) { return e.getSQLState(); }
    }
    public static void main(String[] args) throws Exception {
        a = args;
        url = "jdbc:postgresql://127.0.0.1:" + args[0] + "/" + args[3] + "?prepareThreshold=1&connectTimeout=10";
        String t = "t_" + args[4], mood = "mood_" + args[4];
        TreeMap<String, String> out = new TreeMap<>();
        try (Connection x = connect(); Connection y = connect(); Statement xs = x.createStatement(); Statement ys = y.createStatement()) {
            xs.execute("create table " + t + "(a int); insert into " + t + " values (1)");
            String q = "select * from " + t;
            out.put("1 before", attempt(x, q)); out.put("1 before, again", attempt(x, q));
            ys.execute("alter table " + t + " add column c int default 7");
            out.put("2 same, ddl elsewhere", attempt(x, q));
            out.put("3 same, again", attempt(x, q));
            try (Connection z = connect()) { out.put("4 fresh", attempt(z, q)); }
            xs.execute("alter table " + t + " add column d int default 8");
            out.put("5 same, own ddl", attempt(x, q));
            try (Connection z = connect()) { out.put("6 fresh", attempt(z, q)); }
            xs.execute("create type " + mood + " as enum ('sad', 'ok')");
            String tq = "select 'ok'::" + mood + "::text as m, pg_typeof('ok'::" + mood + ")::text as t";
            out.put("7 type before", attempt(x, tq)); attempt(x, tq);
            ys.execute("drop type " + mood + "; create type " + mood + " as enum ('ok', 'happy')");
            out.put("8 type same", attempt(x, tq));
            try (Connection z = connect()) { out.put("9 type fresh", attempt(z, tq)); }
        }
        System.out.println(out);
    }
}
"#;

/// A pool of one: the connection that prepared a query keeps its server connection's plan,
/// as on a direct connection (see docs/pooling.md for a client that moves).
#[tokio::test]
async fn schema_changes_under_prepared_statements_psycopg() -> Result<()> {
    same_as_direct("psycopg", 1, |args| drivers::run_python(PSYCOPG_SCHEMA, args)).await
}

#[tokio::test]
async fn schema_changes_under_prepared_statements_asyncpg() -> Result<()> {
    same_as_direct("asyncpg", 1, |args| drivers::run_python(ASYNCPG_SCHEMA, args)).await
}

#[tokio::test]
async fn schema_changes_under_prepared_statements_node_postgres() -> Result<()> {
    same_as_direct("node-postgres", 1, |args| drivers::run_node(NODE_PG_SCHEMA, args)).await
}

#[tokio::test]
async fn schema_changes_under_prepared_statements_postgres_js() -> Result<()> {
    same_as_direct("postgres.js", 1, |args| drivers::run_node(POSTGRES_JS_SCHEMA, args)).await
}

#[tokio::test]
async fn schema_changes_under_prepared_statements_pgjdbc() -> Result<()> {
    same_as_direct("PgJDBC", 1, |args| drivers::run_java(PGJDBC_SCHEMA, args)).await
}

/// psycopg prepares everything (prepare_threshold=0): a SET is sent as Parse+Sync, then
/// Bind/Execute+Sync. Its value must be the client's in later transactions on any server
/// connection, a SET rolled back must not be, and set_config(…, false) counts as a SET.
const PSYCOPG_PREPARED_SETS: &str = r#"
import sys, json, psycopg
port, user, password, db, suffix = sys.argv[1:6]
def connect():
    return psycopg.connect(host="127.0.0.1", port=port, user=user, password=password, dbname=db,
                           autocommit=True, prepare_threshold=0, connect_timeout=10)
out = {}
with connect() as a, connect() as other:
    a.execute("set application_name = 'prepared-set'", prepare=True)
    a.execute("set search_path = pg_catalog, public", prepare=True)
    with other.transaction():
        other.execute("select 1")
        out["1 read back"] = [a.execute("select current_setting('application_name'), current_setting('search_path')", prepare=True).fetchone() for _ in range(3)]
    a.execute("set application_name = 'second'", prepare=True)
    a.execute("set application_name = 'prepared-set'", prepare=True)
    out["2 again"] = a.execute("select current_setting('application_name')").fetchone()
    try:
        with a.transaction():
            a.execute("set application_name = 'rolled-back'", prepare=True)
            raise psycopg.Rollback()
    except psycopg.Rollback:
        pass
    out["3 after rollback"] = a.execute("select current_setting('application_name')", prepare=True).fetchone()
    a.execute("select set_config('search_path', 'public', false)", prepare=True)
    with other.transaction():
        other.execute("select 1")
        out["4 set_config"] = a.execute("select current_setting('search_path')", prepare=True).fetchone()
    out["5 other untouched"] = other.execute("select current_setting('application_name'), current_setting('search_path')").fetchone()
print(json.dumps(out, sort_keys=True))
"#;

#[tokio::test]
async fn prepared_sets_are_read_back_after_they_ran_psycopg() -> Result<()> {
    same_as_direct("psycopg prepared SETs", 2, |args| drivers::run_python(PSYCOPG_PREPARED_SETS, args)).await
}

/// node-postgres: a named statement whose Parse fails is gone, and the name can be prepared
/// again (node-postgres's own "named statement parse error cleans up and allows
/// re-preparation"); then a server connection terminated by the administrator reaches the
/// client as one error event.
const NODE_PG_PARSE_AND_TERMINATE: &str = r#"
import pg from 'pg';
const [port, user, password, database, suffix, directPort, su, suPassword] = process.argv.slice(2);
const out = {};
const c = new pg.Client({ host: '127.0.0.1', port: +port, user, password, database });
const events = [];
c.on('error', e => events.push(e.code ?? 'no code'));
await c.connect();
try { await c.query({ name: 'x', text: 'select * from no_such_table' }); out['1 bad parse'] = 'ok'; }
catch (e) { out['1 bad parse'] = e.code; }
out['2 name reused'] = (await c.query({ name: 'x', text: 'select 42 as v' })).rows;
// Pipelined: node-postgres sends the next query before the first one's answers arrive.
const both = await Promise.allSettled([
  c.query({ name: 'y', text: 'select * from no_such_table_either' }),
  c.query({ name: 'y', text: 'select 43 as v' }),
]);
out['3 pipelined'] = both.map(r => r.status === 'fulfilled' ? r.value.rows : r.reason.code);
await c.query('begin');
const pid = (await c.query('select pg_backend_pid() as p')).rows[0].p;
const admin = new pg.Client({ host: '127.0.0.1', port: +directPort, user: su, password: suPassword, database });
await admin.connect();
await admin.query('select pg_terminate_backend($1)', [pid]);
await admin.end();
await new Promise(r => setTimeout(r, 300));
try { await c.query('select 1'); out['4 after terminate'] = 'ok'; } catch (e) { out['4 after terminate'] = e.code ?? 'failed'; }
await new Promise(r => setTimeout(r, 300));
out['5 error events'] = events;
console.log(JSON.stringify(out, Object.keys(out).sort()));
process.exit(0);
"#;

#[tokio::test]
async fn failed_parses_and_terminated_servers_node_postgres() -> Result<()> {
    same_as_direct("node-postgres parse and terminate", 2, |args| drivers::run_node(NODE_PG_PARSE_AND_TERMINATE, args))
        .await
}

/// postgres.js cancels a query that waits for a server connection (the only one is held by
/// another client in a transaction): as on a direct connection, the query fails with 57014
/// while it runs, after the connection came free, rather than while it waits (postgres.js
/// retries errors that come before its Bind without telling the caller).
const POSTGRES_JS_CANCEL: &str = r#"
import postgres from 'postgres';
const [port, user, password, database] = process.argv.slice(2);
// cancel_timeout: postgres.js gives up on a connection whose cancelled query is not answered
// within it (5 s by default); here the answer comes once the holder commits, by design ~1.5 s
// after the cancel, later on a loaded machine.
const connect = () => postgres({ host: '127.0.0.1', port: +port, user, password, database, max: 1, prepare: true, cancel_timeout: 60, onnotice: () => {} });
const sql = connect(), holder = connect();
await sql`select 1`;
const sleep = ms => new Promise(r => setTimeout(r, ms));
let committed = null;
const held = holder.begin(async tx => { await tx`select 1`; await sleep(3000); committed = Date.now(); });
await sleep(500);
const started = Date.now();
const query = sql`select pg_sleep(20) as slept`;
const result = query.then(() => ['completed', Date.now()], e => [e.code ?? e.message, Date.now()]);
await sleep(1000);
query.cancel();
const [outcome, ended] = await result;
await held;
console.log(JSON.stringify({
  outcome,
  ended_after_the_connection_came_free: committed !== null && ended >= committed,
  ended_before_the_sleep: ended - started < 15000,
}));
await sql.end({ timeout: 5 }); await holder.end({ timeout: 5 });
"#;

#[tokio::test]
async fn a_cancel_while_waiting_for_a_server_postgres_js() -> Result<()> {
    let p = Proxied::start(transaction_mode(1)).await?;
    let output =
        observe("postgres.js cancel", drivers::run_node(POSTGRES_JS_CANCEL, args(&p, p.port(), "proxied"))).await?;
    assert_eq!(
        output,
        r#"{"outcome":"57014","ended_after_the_connection_came_free":true,"ended_before_the_sleep":true}"#
    );
    Ok(())
}
